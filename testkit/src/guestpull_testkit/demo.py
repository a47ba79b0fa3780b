"""The README demo: local HTTPS and HTTP registries, Init-Data for each, pulls over both.

Run with ``make demo`` (or ``python -m guestpull_testkit.demo``).  Everything happens on 127.0.0.1 in
a temporary directory (tmpfs when available) and every server is stopped at the end.  The
``guestpull`` commands are run as a user would run them, and printed before they run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from guestpull_testkit.certs import make_ca_chain
from guestpull_testkit.images import Dir, File, ImageSpec, LayerSpec, Symlink, push, write_layout
from guestpull_testkit.registry import start_registry

GUESTPULL = [sys.executable, "-m", "guestpull"]


def demo_image() -> ImageSpec:
    """A small two-layer image: a shell-script 'app' and its configuration."""
    app = b"#!/bin/sh\necho 'hello from a confidential guest'\n"
    return ImageSpec(
        layers=[
            LayerSpec([Dir("app"), File("app/hello.sh", app, mode=0o755),
                       Dir("etc"), File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n"),
                       File("etc/group", b"root:x:0:\napp:x:1000:\n")], compression="gzip"),
            LayerSpec([File("app/message.txt", b"pulled, verified and unpacked by guestpull\n"),
                       Symlink("app/current", "hello.sh")], compression="zstd"),
        ],
        config={"Entrypoint": ["/app/hello.sh"], "User": "app", "WorkingDir": "/app",
                "Env": ["PATH=/usr/bin:/bin"], "Labels": {"demo": "guestpull"}},
    )


def run(args: list[str], *, capture: bool = False) -> str:
    """Run a guestpull command, echoing it like a shell would; stop the demo if it fails.

    With ``capture`` the command's stdout is returned instead of shown.
    """
    shown = ["guestpull", *args]
    print(f"\n$ {shlex.join(shown)}", flush=True)
    result = subprocess.run([*GUESTPULL, *args], text=True, capture_output=capture)
    if capture:
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{shlex.join(shown)}` failed with exit code {result.returncode}")
    return result.stdout if capture else ""


def workspace() -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="guestpull-demo-", dir=base))


def main() -> int:
    root = workspace()
    try:
        return demo(root)
    finally:
        # Bundles may hold overlay mounts; undo them before removing the workspace.
        for bundle in root.glob("bundle-*"):
            subprocess.run([*GUESTPULL, "umount", str(bundle)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def demo(root: Path) -> int:
    print(f"guestpull demo — workspace {root}")
    chain = make_ca_chain(("127.0.0.1", "localhost"))
    certs = chain.write(root / "certs")
    layout = root / "layout"
    digests = write_layout(layout, demo_image(), tag="1.0")

    with start_registry(root / "reg-https", tls=chain) as https_reg, \
         start_registry(root / "reg-http") as http_reg:
        print(f"HTTPS registry (private CA): {https_reg.host}")
        print(f"HTTP registry (plain):       {http_reg.host}")
        https_image = f"{https_reg.host}/demo/hello:1.0"
        http_image = f"{http_reg.host}/demo/hello:1.0"
        push(layout, "1.0", https_image, tls_ca=certs.ca)
        push(layout, "1.0", http_image, tls_verify=False)
        print(f"pushed manifest {digests.manifest_digest} to both registries")

        https_initdata = root / "initdata-https.toml"
        http_initdata = root / "initdata-http.toml"
        run(["initdata", "build", "--registry-ca", str(certs.ca),
             "--kbs-url", "http://127.0.0.1:8080", "-o", str(https_initdata)])
        run(["initdata", "build", "--insecure-registry", http_reg.host,
             "--kbs-url", "http://127.0.0.1:8080", "-o", str(http_initdata)])
        run(["initdata", "check", str(https_initdata)])
        run(["initdata", "digest", str(https_initdata), "--platform", "tdx"])
        annotation = run(["initdata", "annotation", str(http_initdata)], capture=True).strip()
        print(f"{annotation[:60]}...")
        print(f"(annotation is {len(annotation)} characters of base64(gzip(initdata.toml)))")

        results = {}
        for scheme, image, initdata in (("https", https_image, https_initdata),
                                        ("http", http_image, http_initdata)):
            bundle = root / f"bundle-{scheme}"
            out = run(["pull", image, "--initdata", str(initdata), "--work-dir",
                       str(root / f"work-{scheme}"), "--bundle", str(bundle), "--json"],
                      capture=True)
            results[scheme] = json.loads(out)["result"]
            print(f"  manifest {results[scheme]['manifest_digest']},"
                  f" rootfs mode {results[scheme]['rootfs_mode']}")
            config = json.loads((bundle / "config.json").read_text())
            hello = (bundle / "rootfs" / "app" / "message.txt").read_text().strip()
            print(f"  rootfs/app/message.txt: {hello!r}; process.args={config['process']['args']}"
                  f" user={config['process']['user']}")
            run(["umount", str(bundle)])

    print("\nSummary")
    for scheme, result in results.items():
        print(f"  {scheme:5} pulled {result['reference']} manifest {result['manifest_digest']}"
              f" rootfs mode {result.get('rootfs_mode', '?')}")
    same = results["https"]["manifest_digest"] == results["http"]["manifest_digest"] == digests.manifest_digest
    print(f"  both pulls verified the pushed manifest {digests.manifest_digest}: {same}")
    print("registries stopped; demo done.")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

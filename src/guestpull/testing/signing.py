"""Signatures made by real tools, for tests: GPG keys (gpg), simple signing (skopeo), cosign
signatures in the layout containers/image writes, a static lookaside server, and skopeo's own
policy decision (``skopeo copy --policy``) as the reference.

Keys are generated at test time in a private GNUPGHOME; nothing secret is committed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guestpull.testing import HarnessError, require_binary
from guestpull.testing.images import _cert_dir, _skopeo_env, canonical_json, sha256_digest
from guestpull.testing.registry import RegistryProcess

COSIGN_LAYER_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_ANNOTATION = "dev.cosignproject.cosign/signature"


# --- GPG ----------------------------------------------------------------------------------------


class GpgHome:
    """A private GNUPGHOME with keys made by ``gpg --batch --quick-gen-key``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        argv = [require_binary("gpg"), "--batch", "--no-tty", "--pinentry-mode", "loopback",
                "--passphrase", "", *args]
        env = {**os.environ, "GNUPGHOME": str(self.path)}
        done = subprocess.run(argv, env=env, input=input, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise HarnessError(f"gpg {args[0]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def generate(self, name: str) -> str:
        """A new signing key for ``name``; its fingerprint."""
        uid = f"{name} <{name}@guestpull.test>"
        self._gpg("--quick-gen-key", uid, "default", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys", f"={uid}").decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def export(self, *fingerprints: str, armor: bool = False) -> bytes:
        """The public keys of ``fingerprints`` as one keyring."""
        return self._gpg("--export", *(["--armor"] if armor else []), *fingerprints)


def registries_d(directory: Path, lookaside: str) -> Path:
    """A registries.d with one ``default-docker`` lookaside (read and written by skopeo)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.yaml").write_text(f"default-docker:\n  sigstore: {lookaside}\n")
    return directory


def unwrap_compressed(message: bytes) -> bytes:
    """The packets inside gpgme's CompressedData packet (old format, indeterminate length,
    raw deflate): the same message without the compression wrapper."""
    if message[:2] != b"\xa3\x01":
        raise HarnessError("not an indeterminate-length ZIP CompressedData packet")
    return zlib.decompressobj(-15).decompress(message[2:])


# --- cosign ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CosignKey:
    """An ECDSA P-256 key pair as ``cosign generate-key-pair`` makes (the public half as PEM)."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> CosignKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, payload: bytes) -> str:
        """base64 of the DER ECDSA-SHA256 signature, as the layer annotation holds it."""
        return base64.b64encode(self.private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def cosign_payload(identity: str, digest: str, *, cosign_cli: bool = False) -> bytes:
    """The payload containers/image writes (or, ``cosign_cli``, the cosign CLI's: no tag in the
    identity is the caller's choice, ``optional`` is null)."""
    optional = None if cosign_cli else {"creator": "containers/image 5.23.1", "timestamp": 1700000000}
    doc = {"critical": {"identity": {"docker-reference": identity},
                        "image": {"docker-manifest-digest": digest},
                        "type": "cosign container image signature"},
           "optional": optional}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CosignLayer:
    payload: bytes
    signature: str  # the annotation value


def push_cosign_signatures(
    registry: RegistryProcess, repository: str, signed_digest: str, layers: list[CosignLayer]
) -> str:
    """Put the ``sha256-<hex>.sig`` manifest (and its blobs) into ``repository``; its tag."""
    config = canonical_json({"architecture": "", "os": "", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [sha256_digest(x.payload) for x in layers]}})
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": COSIGN_LAYER_TYPE, "digest": sha256_digest(x.payload),
                    "size": len(x.payload), "annotations": {COSIGN_ANNOTATION: x.signature}}
                   for x in layers],
    })
    api = _RegistryApi(registry, repository)
    for blob in [config, *(x.payload for x in layers)]:
        api.put_blob(blob)
    tag = signed_digest.replace(":", "-") + ".sig"
    api.put_manifest(tag, manifest, "application/vnd.oci.image.manifest.v1+json")
    return tag


class _RegistryApi:
    """The few distribution API writes a test needs (monolithic blob upload, manifest PUT)."""

    def __init__(self, registry: RegistryProcess, repository: str) -> None:
        self.base = f"{registry.url}/v2/{repository}"
        self.origin = registry.url
        self.context = registry.ssl_context()

    def _send(self, method: str, url: str, data: bytes = b"", headers: dict[str, str] | None = None) -> str:
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return str(response.headers.get("Location", ""))
        except urllib.error.HTTPError as err:
            raise HarnessError(f"{method} {url}: HTTP {err.code} {err.read()[:200]!r}") from None

    def put_blob(self, data: bytes) -> None:
        location = self._send("POST", f"{self.base}/blobs/uploads/")
        if location.startswith("/"):
            location = self.origin + location
        separator = "&" if "?" in location else "?"
        self._send("PUT", f"{location}{separator}digest={sha256_digest(data)}", data,
                   {"Content-Type": "application/octet-stream"})

    def put_manifest(self, tag: str, manifest: bytes, media_type: str) -> None:
        self._send("PUT", f"{self.base}/manifests/{tag}", manifest, {"Content-Type": media_type})


# --- a lookaside over HTTP ------------------------------------------------------------------------


@contextlib.contextmanager
def serve_directory(directory: Path, errors: dict[str, int] | None = None) -> Iterator[str]:
    """A static HTTP server for ``directory`` on 127.0.0.1; yields its base URL.  ``errors``
    maps request paths to the error status to answer instead."""
    failing = dict(errors or {})

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def send_head(self) -> Any:
            status = failing.get(urllib.parse.unquote(self.path))
            if status is not None:
                self.send_error(status)
                return None
            return super().send_head()

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- skopeo as the reference decision ---------------------------------------------------------------


def skopeo_policy_allows(
    ref: str, policy: Path, registries_dir: Path, *, tls_ca: Path | None = None,
    timeout: float = 60.0,
) -> bool:
    """Whether ``skopeo copy --policy POLICY docker://REF`` accepts the image (the reference
    implementation of containers-policy.json).  Failures other than a policy rejection raise."""
    skopeo = require_binary("skopeo")
    with tempfile.TemporaryDirectory(prefix="guestpull-skopeo-") as tmp:
        tmp_dir = Path(tmp)
        source = f"docker://{ref}"
        argv = [skopeo, "copy", "--quiet", "--retry-times", "0", "--policy", str(policy),
                "--registries.d", str(registries_dir), "--src-no-creds"]
        argv += (["--src-cert-dir", str(_cert_dir(tmp_dir / "certs", tls_ca, None))]
                 if tls_ca is not None else ["--src-tls-verify=false"])
        argv += [source, f"dir:{tmp_dir / 'out'}"]
        done = subprocess.run(argv, env=_skopeo_env(tmp_dir, source, None), capture_output=True,
                              timeout=timeout, check=False)
    if done.returncode == 0:
        return True
    stderr = done.stderr.decode(errors="replace")
    if "Source image rejected" in stderr:
        return False
    raise HarnessError(f"skopeo copy --policy failed for another reason: {stderr.strip()}")

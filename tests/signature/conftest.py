"""A signed-image world on a real registry, shared by the module's tests.

Keys are generated here (gpg in a private GNUPGHOME, ECDSA with ``cryptography``); images are
pushed and signed by skopeo (``--sign-by``, lookaside through a registries.d); cosign
signatures are written in the layout containers/image uses.  One world per registry (HTTPS and
plain HTTP); each image has its own content, so its own digest.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.cli import invoke
from support.config import Rule, write_cdh
from guestpull.oci import default_platform
from guestpull_testkit.images import File, ImageSpec, LayerSpec, LayoutDigests, Signing, push, write_layout
from guestpull_testkit.registry import RegistryProcess
from guestpull_testkit.signing import (
    CosignKey,
    CosignLayer,
    GpgHome,
    cosign_payload,
    push_cosign_signatures,
    registries_d,
    unwrap_compressed,
)

ACCEPT = {"type": "insecureAcceptAnything"}
REJECT = {"type": "reject"}


@dataclass
class World:
    registry: RegistryProcess
    root: Path
    gpg: GpgHome
    fingerprints: dict[str, str]  # "a", "b", "c" → fingerprint
    keyrings: dict[str, Path]  # "a", "ab", "c" → public keyring file
    lookaside: Path
    registries_d: Path
    cosign: dict[str, CosignKey] = field(default_factory=dict)
    cosign_pem: dict[str, Path] = field(default_factory=dict)
    images: dict[str, LayoutDigests] = field(default_factory=dict)
    contents: dict[str, str] = field(default_factory=dict)
    _counter: int = 0

    @property
    def host(self) -> str:
        return self.registry.host

    def ref(self, repo: str, tag: str = "v1") -> str:
        return f"{self.host}/sig/{repo}:{tag}"

    def digest_ref(self, repo: str, name: str | None = None) -> str:
        return f"{self.host}/sig/{repo}@{self.images[name or repo].manifest_digest}"

    # --- making images ---

    def push(self, repo: str, *, key: str | None = None, identity: str | None = None,
             name: str | None = None, content: str | None = None) -> LayoutDigests:
        """Push a new image (its own content) to sig/REPO:v1, signed by GPG key ``key``."""
        self._counter += 1
        text = content or f"{repo} {self._counter}"
        layout = self.root / "layouts" / f"{repo}-{self._counter}"
        digests = write_layout(layout, ImageSpec([LayerSpec([File("id.txt", text.encode())])]), "v1")
        signing = None
        if key is not None:
            signing = Signing(self.fingerprints[key], self.gpg.path, self.registries_d, identity)
        push(layout, "v1", self.ref(repo), tls_ca=self.registry.ca_path,
             tls_verify=self.registry.tls is not None, signing=signing)
        self.images[name or repo] = digests
        self.contents[name or repo] = text
        return digests

    def push_index(self, repo: str, *, key: str | None = None) -> LayoutDigests:
        """A two-platform index (this machine's architecture and another) at sig/REPO:v1;
        ``key`` signs the index and every platform manifest (skopeo --multi-arch all)."""
        here = default_platform().architecture
        arches = (here, "s390x" if here != "s390x" else "amd64")
        specs = [ImageSpec([LayerSpec([File("id.txt", f"{repo} {arch}".encode())])], architecture=arch)
                 for arch in arches]
        layout = self.root / "layouts" / repo
        digests = write_layout(layout, specs, "v1", index=True)
        signing = Signing(self.fingerprints[key], self.gpg.path, self.registries_d) if key else None
        push(layout, "v1", self.ref(repo), tls_ca=self.registry.ca_path,
             tls_verify=self.registry.tls is not None, all_platforms=True, signing=signing)
        self.images[repo] = digests
        return digests

    def platform_digest(self, repo: str) -> str:
        """The manifest a pull on this machine selects from sig/REPO's index."""
        here = default_platform().architecture
        return next(m.digest for m in self.images[repo].manifests if m.platform["architecture"] == here)

    def signature_path(self, repo: str, digest: str, number: int = 1) -> Path:
        algorithm, _, hex_part = digest.partition(":")
        return self.lookaside / f"sig/{repo}@{algorithm}={hex_part}" / f"signature-{number}"

    def cosign_sign(self, repo: str, key: str, *, identity: str | None = None,
                    digest: str | None = None, payload_digest: str | None = None,
                    tamper: str | None = None, cosign_cli: bool = False, wrap: bool = False) -> None:
        """Attach a cosign signature to sig/REPO's image (or ``digest``)."""
        digest = digest or self.images[repo].manifest_digest
        payload = cosign_payload(identity or self.ref(repo), payload_digest or digest, cosign_cli=cosign_cli)
        signature = self.cosign[key].sign(payload)
        if tamper == "payload":
            payload = payload.replace(b"containers/image", b"containers/imagf")
        elif tamper == "signature":
            raw = bytearray(base64.b64decode(signature))
            raw[-3] ^= 0x01
            signature = base64.b64encode(bytes(raw)).decode()
        if wrap:  # line breaks in the annotation, which readers strip
            signature = "\r\n".join(signature[i:i + 40] for i in range(0, len(signature), 40))
        push_cosign_signatures(self.registry, f"sig/{repo}", digest, [CosignLayer(payload, signature)])

    # --- policies and pulls ---

    def policy(self, default: list[dict[str, Any]], scopes: dict[str, list[dict[str, Any]]] | None = None) -> Path:
        self._counter += 1
        doc: dict[str, Any] = {"default": default}
        if scopes is not None:
            doc["transports"] = {"docker": scopes}
        path = self.root / f"policy-{self._counter}.json"
        path.write_text(json.dumps(doc, indent=1))
        return path

    def signed_by(self, keyring: str = "a", identity: dict[str, str] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(self.keyrings[keyring])}
        if identity:
            req["signedIdentity"] = identity
        return req

    def sigstore_signed(self, key: str = "k", identity: dict[str, str] | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"type": "sigstoreSigned", "keyPath": str(self.cosign_pem[key])}
        if identity:
            req["signedIdentity"] = identity
        return req

    def cdh(self, policy: Path, registries_dir: Path | None = None, remap: str | None = None,
            sigstore: bool = True) -> Path:
        """A cdh.toml with the policy and sigstore config; ``remap`` is a registry whose images
        come from this one (a rule with ``location``)."""
        self._counter += 1
        image = {"sigstore_config_uri": str((registries_dir or self.registries_d) / "default.yaml")} if sigstore else {}
        insecure = self.registry.tls is None
        rules = [Rule(self.host, insecure=insecure)]
        if remap is not None:
            rules.append(Rule(self.host, prefix=remap, insecure=insecure))
        roots = [self.registry.tls.ca_cert_pem] if self.registry.tls is not None else []
        return write_cdh(self.root / f"cdh-{self._counter}.toml", policy_file=policy, image=image,
                         roots=roots, rules=rules)

    def pull(self, image: str, policy: Path, *, work: Path | None = None, bundle: Path | None = None,
             registries_dir: Path | None = None, remap: str | None = None, sigstore: bool = True) -> Any:
        self._counter += 1
        args = ["pull", image, "--config", str(self.cdh(policy, registries_dir, remap, sigstore)), "--json",
                "--work-dir", str(work or self.root / f"work-{self._counter}")]
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        return invoke(*args)


def _build_world(registry: RegistryProcess, root: Path) -> World:
    gpg = GpgHome(root / "gnupg")
    fingerprints = {name: gpg.generate(f"signer-{name}") for name in ("a", "b", "c")}
    keyrings = {}
    for name, keys, armor in (("a", "a", False), ("ab", "ab", True), ("c", "c", False)):
        keyrings[name] = root / f"{name}.gpg"
        keyrings[name].write_bytes(gpg.export(*(fingerprints[k] for k in keys), armor=armor))
    lookaside = root / "lookaside"
    world = World(registry, root, gpg, fingerprints, keyrings, lookaside,
                  registries_d(root / "registries.d", f"file://{lookaside}"))
    for name in ("k", "other"):
        world.cosign[name] = CosignKey.generate()
        world.cosign_pem[name] = root / f"cosign-{name}.pub"
        world.cosign_pem[name].write_bytes(world.cosign[name].public_pem)
    _simple_signed_images(world)
    _cosign_signed_images(world)
    _multi_platform_images(world)
    return world


def _simple_signed_images(world: World) -> None:
    world.push("unsigned")
    world.push("signed", key="a")
    world.push("signed-b", key="b")
    world.push("untrusted", key="c")
    world.push("idtag", key="a", identity=world.ref("idtag", "other"))
    world.push("remap-copy", key="a", identity=world.ref("remap-origin"))
    # signature-1 by the untrusted key, signature-2 by a trusted one: any may satisfy.
    two = world.push("two", key="c")
    by_c = world.signature_path("two", two.manifest_digest).read_bytes()
    assert world.push("two", key="a", content=world.contents["two"]) == two  # signed again
    _rewrite_two(world, by_c)
    # The same message without gpgme's compression wrapper; then tampered copies of it.
    for repo in ("uncompressed", "tampered-payload", "tampered-signature"):
        digest = world.push(repo, key="a").manifest_digest
        path = world.signature_path(repo, digest)
        inner = unwrap_compressed(path.read_bytes())
        if repo == "tampered-payload":
            assert b'"creator":"atomic ' in inner
            inner = inner.replace(b'"creator":"atomic ', b'"creator":"atomiC ')
        elif repo == "tampered-signature":
            raw = bytearray(inner)
            raw[-5] ^= 0x01
            inner = bytes(raw)
        path.write_bytes(inner)
    # A valid signature of another image (same identity) replayed for this one.
    source = world.push("replay-src", key="a", identity=world.ref("replay"))
    target = world.push("replay")
    replayed = world.signature_path("replay", target.manifest_digest)
    replayed.parent.mkdir(parents=True)
    shutil.copyfile(world.signature_path("replay-src", source.manifest_digest), replayed)
    # The image of sig/signed again under another name, unsigned there.
    world.push("alias", content=world.contents["signed"])
    assert world.images["alias"].manifest_digest == world.images["signed"].manifest_digest


def _multi_platform_images(world: World) -> None:
    """Indexes: signed throughout; with the index's signature only; with the platform's only.
    (containers/image checks the platform manifest's signature, as guestpull does.)"""
    world.push_index("index-signed", key="a")
    index_only = world.push_index("index-signature-only", key="a")
    shutil.rmtree(world.signature_path("index-signature-only", world.platform_digest("index-signature-only")).parent)
    world.push_index("platform-signature-only", key="a")
    shutil.rmtree(world.signature_path("platform-signature-only",
                                       world.images["platform-signature-only"].digest).parent)
    assert index_only.is_index
    for repo in ("cosign-index", "cosign-platform", "cosign-other-platform"):
        world.push_index(repo)
    world.cosign_sign("cosign-index", "k", digest=world.images["cosign-index"].digest)
    world.cosign_sign("cosign-platform", "k", digest=world.platform_digest("cosign-platform"))
    other = next(m.digest for m in world.images["cosign-other-platform"].manifests
                 if m.digest != world.platform_digest("cosign-other-platform"))
    world.cosign_sign("cosign-other-platform", "k", digest=other)


def _rewrite_two(world: World, by_c: bytes) -> None:
    digest = world.images["two"].manifest_digest
    by_a = world.signature_path("two", digest).read_bytes()
    world.signature_path("two", digest, 1).write_bytes(by_c)
    world.signature_path("two", digest, 2).write_bytes(by_a)


def _cosign_signed_images(world: World) -> None:
    for repo in ("cosigned", "cosign-untrusted", "cosign-tampered-payload", "cosign-tampered-signature",
                 "cosign-replay", "cosign-cli", "cosign-unsigned", "cosign-wrapped"):
        world.push(repo)
    world.cosign_sign("cosigned", "k")
    world.cosign_sign("cosign-untrusted", "other")
    world.cosign_sign("cosign-wrapped", "k", wrap=True)
    world.cosign_sign("cosign-tampered-payload", "k", tamper="payload")
    world.cosign_sign("cosign-tampered-signature", "k", tamper="signature")
    # signed correctly, but for another image's digest
    world.cosign_sign("cosign-replay", "k", payload_digest=world.images["cosigned"].manifest_digest)
    world.cosign_sign("cosign-cli", "k", identity=f"{world.host}/sig/cosign-cli", cosign_cli=True)
    world.push("mixed", key="a")
    world.cosign_sign("mixed", "k")


def _world(request: pytest.FixtureRequest, fixture: str) -> Iterator[World]:
    registry = request.getfixturevalue(fixture)
    root = Path(tempfile.mkdtemp(prefix=f"guestpull-sig-{fixture}-", dir="/dev/shm"))
    try:
        yield _build_world(registry, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["https_registry", "http_registry"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The signed-image world on the HTTPS and on the plain-HTTP registry."""
    yield from _world(request, request.param)

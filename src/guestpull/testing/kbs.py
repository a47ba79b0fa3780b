"""A test KBS and attestation agent: the two ends of ``cc_kbc`` (coco-behaviour.md §9.2).

:class:`TestKbs` serves ``GET /kbs/v0/<plugin>/<path>`` on 127.0.0.1 (HTTP, or HTTPS with a
generated CA) the way Trustee does: it checks the bearer token's signature and ``exp``, answers
401 ``{"type", "detail"}`` for a bad token *and* for a resource it does not have or does not
release, 404 for an unknown plugin, and encrypts every resource to the TEE public key inside
the token, as a flattened JWE made by **joserfc** (the client decrypts with jwcrypto: a shared
misreading of the format cannot pass).  ``fault`` breaks a response on purpose.

:class:`TestAttestationAgent` is what the AA does for ``GetToken("kbs")``: make a TEE key
pair (EC P-256/P-521 or RSA), "attest" to the KBS with its public half (no evidence here) and
return ``{"token", "tee_keypair"}``.  Serve it over ttrpc with :mod:`guestpull.testing.aa`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from guestpull.testing.certs import CertChain
from guestpull.testing.webapp import ThreadedApp, server_ssl_context

Fault = Literal["wrong-tag", "wrong-aad", "wrong-key", "not-jwe", "oversize", "oversize-chunked", "slow"]
KeyType = Literal["ec-p256", "ec-p521", "rsa"]

_ALG_FOR_KEY: dict[str, str] = {"ec-p256": "ECDH-ES+A256KW", "ec-p521": "ECDH-ES+A256KW",
                                "rsa": "RSA-OAEP-256"}


@dataclass
class KbsRequest:
    """One resource request the KBS answered (no token kept)."""

    path: str
    had_token: bool
    status: int


@dataclass
class TestKbs:
    """Resources by ``repo/type/tag``; ``denied`` ones exist but are not released (401)."""

    __test__ = False  # not a pytest class

    tls: CertChain | None = None
    resources: dict[str, bytes] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    fault: Fault | None = None
    #: Seconds the "slow" fault waits before answering.
    delay: float = 30.0
    #: The RSA key-encryption algorithm used for RSA TEE keys (Trustee also serves RSA1_5).
    rsa_alg: str = "RSA-OAEP-256"
    requests: list[KbsRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._signing_key = ec.generate_private_key(ec.SECP256R1())
        self._server: ThreadedApp | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TestKbs:
        app = web.Application()
        app.router.add_get("/kbs/v0/{plugin}/{path:.+}", self._handle)
        ssl_context = server_ssl_context(self.tls) if self.tls is not None else None
        self._server = ThreadedApp(app, ssl_context, name="guestpull-test-kbs").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> TestKbs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the KBS first"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.port}"

    # -- attestation ----------------------------------------------------------------------

    def attest(self, tee_pubkey: dict[str, Any], *, ttl: float = 300.0) -> str:
        """A token for the TEE public key ``tee_pubkey`` (a JWK), valid ``ttl`` seconds."""
        from joserfc import jwt
        from joserfc.jwk import ECKey

        now = int(time.time())
        claims = {"iss": "guestpull-test-kbs", "iat": now, "exp": int(now + ttl),
                  "customized_claims": {"runtime_data": {"tee-pubkey": tee_pubkey}}}
        with self._lock:
            key = ECKey.import_key(self._signing_key)
        return jwt.encode({"alg": "ES256"}, claims, key)

    def revoke_tokens(self) -> None:
        """Change the token signing key: every token issued so far now gets a 401."""
        with self._lock:
            self._signing_key = ec.generate_private_key(ec.SECP256R1())

    # -- the resource endpoint ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        plugin, path = request.match_info["plugin"], request.match_info["path"]
        auth = request.headers.get("Authorization", "")
        status, response = await self._answer(plugin, path, auth)
        if status == 200 and self.fault == "oversize-chunked":
            response = await self._oversize_chunked(request)
        self.requests.append(KbsRequest(path, auth.startswith("Bearer "), status))
        return response

    async def _answer(self, plugin: str, path: str, auth: str) -> tuple[int, web.StreamResponse]:
        if plugin != "resource":
            return 404, _error(404, "PluginNotFound", f"plugin {plugin} not found")
        tee_pubkey = self._verify(auth.removeprefix("Bearer ").strip())
        if tee_pubkey is None:
            return 401, _error(401, "TokenVerifierError", "token verification failed")
        if path not in self.resources or path in self.denied:
            # Trustee does not tell "absent" from "denied".
            return 401, _error(401, "PolicyDeny", f"access to resource {path} denied by policy")
        if self.fault == "slow":
            await asyncio.sleep(self.delay)
        if self.fault == "oversize":
            return 200, web.Response(body=b"{" + b" " * (17 << 20) + b"}",
                                     content_type="application/json")
        body = self._encrypt(self.resources[path], tee_pubkey)
        return 200, web.Response(body=body, content_type="application/json")

    async def _oversize_chunked(self, request: web.Request) -> web.StreamResponse:
        """17 MiB without a Content-Length: only counting the bytes can stop it."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(17):
            await response.write(b" " * (1 << 20))
        await response.write_eof()
        return response

    def _verify(self, token: str) -> dict[str, Any] | None:
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import ECKey

        with self._lock:
            key = ECKey.import_key(self._signing_key.public_key())
        try:
            decoded = jwt.decode(token, key, algorithms=["ES256"])
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(decoded.claims)
        except (JoseError, ValueError):
            return None
        pubkey = decoded.claims.get("customized_claims", {}).get("runtime_data", {}).get("tee-pubkey")
        return pubkey if isinstance(pubkey, dict) else None

    def _encrypt(self, plaintext: bytes, tee_pubkey: dict[str, Any]) -> bytes:
        """Trustee's response: a flattened JWE whose protected header holds alg, enc and epk."""
        from joserfc import jwe
        from joserfc.jwk import import_key

        if self.fault == "wrong-key":
            tee_pubkey = _other_key_like(tee_pubkey)
        alg = "ECDH-ES+A256KW" if tee_pubkey["kty"] == "EC" else self.rsa_alg
        key = import_key({k: v for k, v in tee_pubkey.items() if k != "alg"})
        compact = jwe.encrypt_compact({"alg": alg, "enc": "A256GCM"}, plaintext, key,
                                      algorithms=[alg, "A256GCM"])
        protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
        if self.fault == "wrong-tag":
            tag = _flip_first_byte(tag)
        if self.fault == "wrong-aad":
            # The same header serialised differently: it decodes alike but is not the AAD used.
            header = json.loads(_unb64(protected))
            protected = _b64(json.dumps(header, indent=1).encode())
        doc = {"protected": protected, "encrypted_key": encrypted_key, "iv": iv,
               "ciphertext": ciphertext, "tag": tag}
        if self.fault == "not-jwe":
            doc = {"secret": _b64(plaintext)}
        return json.dumps(doc).encode()


def _error(status: int, kind: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": f"https://github.com/confidential-containers/kbs/errors/{kind}", "detail": detail},
        status=status)


def _other_key_like(jwk: dict[str, Any]) -> dict[str, Any]:
    kind = "rsa" if jwk["kty"] == "RSA" else ("ec-p521" if jwk.get("crv") == "P-521" else "ec-p256")
    return tee_public_jwk(new_tee_key(kind))  # type: ignore[arg-type]


def _flip_first_byte(text: str) -> str:
    raw = bytearray(_unb64(text))
    raw[0] ^= 0x01
    return _b64(bytes(raw))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the attestation agent's side -----------------------------------------------------------


TeePrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_tee_key(kind: KeyType) -> TeePrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP521R1() if kind == "ec-p521" else ec.SECP256R1())


def tee_key_pem(key: TeePrivateKey) -> str:
    """As the AA sends it: RSA as PKCS#1, EC as PKCS#8 (``kbs_protocol`` ``to_pem``)."""
    form = (serialization.PrivateFormat.TraditionalOpenSSL if isinstance(key, rsa.RSAPrivateKey)
            else serialization.PrivateFormat.PKCS8)
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode()


def tee_public_jwk(key: TeePrivateKey) -> dict[str, Any]:
    """The runtime-data ``tee-pubkey`` JWK the AA sends the KBS."""
    numbers = key.public_key().public_numbers()
    if isinstance(numbers, rsa.RSAPublicNumbers):
        return {"kty": "RSA", "alg": "RSA-OAEP-256", "n": _b64(_int_bytes(numbers.n)),
                "e": _b64(_int_bytes(numbers.e))}
    size = (numbers.curve.key_size + 7) // 8
    crv = "P-521" if numbers.curve.name == "secp521r1" else "P-256"
    return {"kty": "EC", "crv": crv, "alg": "ECDH-ES+A256KW",
            "x": _b64(numbers.x.to_bytes(size, "big")), "y": _b64(numbers.y.to_bytes(size, "big"))}


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


@dataclass
class TestAttestationAgent:
    """``GetToken("kbs")`` for a :class:`TestKbs`: a new TEE key per call, as the real AA."""

    __test__ = False

    kbs: TestKbs
    key_type: KeyType = "ec-p256"
    ttl: float = 300.0
    #: If set, GetToken fails with this message (an attestation the KBS refused).
    failure: str | None = None
    calls: int = 0

    def get_token(self) -> bytes:
        """The ``GetTokenResponse.Token`` bytes."""
        self.calls += 1
        if self.failure is not None:
            raise RuntimeError(self.failure)
        key = new_tee_key(self.key_type)
        token = self.kbs.attest(tee_public_jwk(key), ttl=self.ttl)
        return json.dumps({"token": token, "tee_keypair": tee_key_pem(key)}).encode()

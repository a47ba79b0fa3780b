"""A token server for distribution's ``auth: token``, on aiohttp.web in a background thread.

It speaks the Docker token protocol (``GET realm?service=…&scope=…`` with Basic credentials,
and the OAuth2 ``POST`` form), checks one user/password pair and grants ``pull``/``push`` on
the repositories asked for.  It runs its own event loop in a thread so that synchronous tests,
skopeo and the registry subprocess can all reach it.

The JWTs follow what distribution 2.8 (``registry/auth/token``) verifies: the ``x5c`` header
carries the signing certificate, which must chain to a certificate in the registry's
``rootcertbundle``; ``iss`` and ``aud`` must equal the configured issuer and service; ``alg`` is
ES256 with the raw r||s signature (libtrust).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from guestpull.testing import TEST_PASSWORD, TEST_USER, Stoppable
from guestpull.testing.certs import CertChain, make_ca_chain
from guestpull.testing.webapp import ThreadedApp, server_ssl_context

_GRANTABLE = ("pull", "push")


@dataclass
class TokenRequest:
    """One request the token server answered, for assertions (no password is kept)."""

    method: str
    service: str | None
    scopes: list[str]
    account: str | None
    user: str | None
    authorized: bool
    granted: list[dict[str, Any]] = field(default_factory=list)


class TokenServer(Stoppable):
    """Issues registry bearer tokens for one user.  Use as a context manager.

    ``tls``: serve HTTPS with this chain (clients then need its CA); plain HTTP without it.
    """

    def __init__(
        self,
        user: str = TEST_USER,
        password: str = TEST_PASSWORD,
        *,
        tls: CertChain | None = None,
        service: str = "guestpull-test-registry",
        issuer: str = "guestpull-test-token-issuer",
        ttl: int = 300,
    ) -> None:
        self.user = user
        self.password = password
        self._tls = tls
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.requests: list[TokenRequest] = []
        signer = make_ca_chain(hosts=("guestpull-token-signer",), common_name="token signer")
        self.rootcert_pem: bytes = signer.ca_cert_pem
        self._signing_cert_der = x509.load_pem_x509_certificates(signer.cert_pem)[0].public_bytes(
            serialization.Encoding.DER
        )
        key = serialization.load_pem_private_key(signer.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._signing_key = key
        self._server: ThreadedApp | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    @property
    def realm(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/token"

    def start(self) -> Self:
        if self._server is None:
            app = web.Application()
            app.router.add_get("/token", self._handle)
            app.router.add_post("/token", self._handle)
            tls = server_ssl_context(self._tls) if self._tls is not None else None
            self._server = ThreadedApp(app, tls, name="guestpull-token-server").start()
            self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    # -- protocol ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await request.post()
            service = _str_or_none(form.get("service"))
            scopes = str(form.get("scope", "")).split()
            account = _str_or_none(form.get("username"))
            user, password = account, _str_or_none(form.get("password"))
        else:
            service = request.query.get("service")
            scopes = [s for value in request.query.getall("scope", []) for s in value.split()]
            account = request.query.get("account")
            user, password = _basic_credentials(request.headers.get("Authorization", ""))
        record = TokenRequest(
            method=request.method,
            service=service,
            scopes=scopes,
            account=account,
            user=user,
            authorized=self._check(user, password),
        )
        self.requests.append(record)
        if not record.authorized:
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="guestpull test token server"'},
            )
        if service is not None and service != self.service:
            return web.json_response(
                {"errors": [{"code": "DENIED", "message": f"unknown service {service!r}"}]},
                status=400,
            )
        record.granted = _grant(scopes)
        token = self.issue(user or "", record.granted)
        now = time.time()
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.ttl,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            }
        )

    def _check(self, user: str | None, password: str | None) -> bool:
        if user is None or password is None:
            return False
        return hmac.compare_digest(user.encode(), self.user.encode()) and hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    def issue(self, subject: str, access: list[dict[str, Any]], *, ttl: int | None = None) -> str:
        """A signed token for ``access`` (also usable directly to forge tokens in tests)."""
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self._signing_cert_der).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + (self.ttl if ttl is None else ttl),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}"
        der = self._signing_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"


def _grant(scopes: list[str]) -> list[dict[str, Any]]:
    """``repository:NAME:ACTIONS`` → access entries with the grantable actions asked for."""
    access: list[dict[str, Any]] = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            continue
        wanted = actions.split(",")
        granted = [a for a in _GRANTABLE if a in wanted or "*" in wanted]
        if granted:
            access.append({"type": "repository", "name": name, "actions": granted})
    return access


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: object) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())

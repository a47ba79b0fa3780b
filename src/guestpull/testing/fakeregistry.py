"""A FAKE in-process registry (aiohttp.web) for fault injection in tests.

It is not a registry implementation and never stands in for one in a test of normal
behaviour: those use the real Debian ``docker-registry`` (:mod:`guestpull.testing.registry`).
It exists for what a real registry will not do on demand: fail once with 500 or 429, serve a
corrupted or truncated blob, reset the connection, redirect a blob to another host and record
what that host received, or speak a Bearer/Basic challenge under the test's control.

    async with FakeRegistry(auth="bearer") as fake:
        fake.add_image("app", "v1", ImageSpec([...]).build())
        fake.inject("/blobs/", Fault("status", status=500))
        ... pull from fake.host ...
        assert fake.requests_to("/blobs/")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

from aiohttp import web

from guestpull.testing import TEST_PASSWORD, TEST_USER

FaultKind = Literal["status", "corrupt", "truncate", "reset", "redirect", "slow"]


@dataclass
class Fault:
    """What to do, instead of the normal answer, to the next ``times`` matching requests.

    - ``status``: answer ``status`` with ``headers`` (e.g. ``{"Retry-After": "0"}``);
    - ``corrupt``: serve the content with its last byte changed (same length, and the
      ``Docker-Content-Digest`` of the real content);
    - ``truncate``: announce the full length, send half, close the connection;
    - ``reset``: send the headers and a few bytes, then abort the connection (RST);
    - ``redirect``: answer 307 to ``location``;
    - ``slow``: send the content correctly, but spread over ``seconds`` (in 16 pieces).
    """

    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    location: str = ""
    times: int = 1
    seconds: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


class FakeRegistry:
    """A fake registry serving blobs and manifests from memory, with injectable faults.

    ``auth``: ``"none"``, ``"basic"`` (user/password) or ``"bearer"`` (a token endpoint at
    ``/token`` on the same server; ``token_status`` forces its answer, e.g. 401).
    ``/storage/<digest>`` serves any blob without auth, to play blob storage for redirects.
    """

    def __init__(
        self,
        *,
        auth: Literal["none", "basic", "bearer"] = "none",
        username: str = TEST_USER,
        password: str = TEST_PASSWORD,
        token_ttl: int = 300,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.auth = auth
        self.username = username
        self.password = password
        self.token_ttl = token_ttl
        self.token_status: int | None = None
        self.ssl_context = ssl_context
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, dict[str, tuple[bytes, str]]] = {}  # repo -> ref -> (data, type)
        self.requests: list[RecordedRequest] = []
        self.tokens_issued = 0
        self._tokens: dict[str, float] = {}
        self._faults: list[tuple[str, Fault]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- content ---

    def add_blob(self, data: bytes) -> str:
        digest = _sha256(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repository: str, data: bytes, media_type: str, *, tag: str | None = None) -> str:
        digest = _sha256(data)
        refs = self.manifests.setdefault(repository, {})
        refs[digest] = (data, media_type)
        if tag:
            refs[tag] = (data, media_type)
        return digest

    def add_image(self, repository: str, tag: str | None, image: object) -> str:
        """Serve a ``testing.images.BuiltImage``: its blobs, and its manifest under ``tag``."""
        for layer in image.layers:  # type: ignore[attr-defined]
            self.add_blob(layer.blob)
        self.add_blob(image.config)  # type: ignore[attr-defined]
        return self.add_manifest(
            repository, image.manifest, "application/vnd.oci.image.manifest.v1+json", tag=tag  # type: ignore[attr-defined]
        )

    def inject(self, path_contains: str, fault: Fault) -> None:
        """Apply ``fault`` to the next requests whose path contains ``path_contains``."""
        self._faults.append((path_contains, fault))

    def requests_to(self, path_contains: str) -> list[RecordedRequest]:
        return [r for r in self.requests if path_contains in r.path]

    # --- lifecycle ---

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/token", self._token)
        app.router.add_get("/storage/{digest}", self._storage)
        app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self._blob)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[Self]:
        """Serve from a background thread with its own event loop, for synchronous tests
        (e.g. the CLI through click's CliRunner, which runs ``asyncio.run`` itself)."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-registry", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- handlers ---

    def _record(self, request: web.Request) -> Fault | None:
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers)))
        for i, (needle, fault) in enumerate(self._faults):
            if needle in request.path:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[i]
                return fault
        return None

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        fault = self._record(request)
        if fault is not None:
            return await self._apply(request, fault, b"{}")
        return self._check_auth(request) or web.json_response({})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.token_status is not None:
            return web.json_response({"errors": [{"code": "DENIED"}]}, status=self.token_status)
        header = request.headers.get("Authorization", "")
        if header and header != basic_header(self.username, self.password):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        token = secrets.token_urlsafe(16)
        self._tokens[token] = time.monotonic() + self.token_ttl
        self.tokens_issued += 1
        return web.json_response({"token": token, "expires_in": self.token_ttl})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        fault = self._record(request)
        data = self.blobs.get(request.match_info["digest"])
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if fault is not None:
            return await self._apply(request, fault, data)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        fault = self._record(request)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        found = self.manifests.get(request.match_info["name"], {}).get(request.match_info["ref"])
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        data, media_type = found
        if fault is not None:
            return await self._apply(request, fault, data)
        return web.Response(
            body=data,
            headers={"Content-Type": media_type, "Docker-Content-Digest": _sha256(data)},
        )

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        fault = self._record(request)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if fault is not None:
            return await self._apply(request, fault, data)
        return web.Response(
            body=data,
            headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest},
        )

    def _check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if self.auth == "none":
            return None
        if self.auth == "basic":
            if header == basic_header(self.username, self.password):
                return None
            challenge = 'Basic realm="fake-registry"'
        else:
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
            if token and self._tokens.get(token, 0) > time.monotonic():
                return None
            scope = ""
            if request.match_info.get("name"):
                scope = f',scope="repository:{request.match_info["name"]}:pull"'
            challenge = f'Bearer realm="{self.url}/token",service="fake-registry"{scope}'
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED"}]}, status=401, headers={"WWW-Authenticate": challenge}
        )

    async def _apply(self, request: web.Request, fault: Fault, data: bytes) -> web.StreamResponse:
        if fault.kind == "status":
            return web.json_response({"errors": [{"code": "FAKE"}]}, status=fault.status, headers=fault.headers)
        if fault.kind == "redirect":
            raise web.HTTPTemporaryRedirect(fault.location)
        if fault.kind == "corrupt":
            # Changed in transit: the header still names the digest of the real content.
            broken = data[:-1] + bytes([data[-1] ^ 0x01])
            return web.Response(
                body=broken,
                headers={"Content-Type": "application/octet-stream", "Docker-Content-Digest": _sha256(data)},
            )
        response = web.StreamResponse()
        response.content_length = len(data)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        if fault.kind == "slow":
            await _trickle(response, data, fault.seconds)
        elif fault.kind == "truncate":
            await response.write(data[: len(data) // 2])
            request.transport.close()  # type: ignore[union-attr]
        else:  # reset
            await response.write(data[: min(16, len(data) // 2)])
            request.transport.abort()  # type: ignore[union-attr]
        return response


async def _trickle(response: web.StreamResponse, data: bytes, seconds: float, pieces: int = 16) -> None:
    step = max(1, -(-len(data) // pieces))
    for offset in range(0, len(data), step):
        await asyncio.sleep(seconds / pieces)
        await response.write(data[offset : offset + step])
    await response.write_eof()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic_header(user: str, password: str) -> str:
    """The ``Authorization`` value a client sends for ``user``/``password``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

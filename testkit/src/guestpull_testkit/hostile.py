"""A HOSTILE in-process registry on raw asyncio sockets, for the attacker's side of the tests.

aiohttp.web will not send a 9 KiB header, a bad status line, a chunk size of ``zz`` or an
endless ``100 Continue`` stream; this server writes whatever bytes a scenario asks for.  It
serves one honest image (ping, manifest by tag and digest, blobs, a Basic or Bearer login)
and lets a :class:`Scenario` answer any request first.  Every request, on every port it
listens on, is recorded with its headers, so a test can check where credentials went.

    async with HostileRegistry(image, SCENARIOS["bad-status-line"]) as registry:
        ... pull f"{registry.host}/app:v1" ...
        assert not registry.credentials_sent_elsewhere()

:data:`SCENARIOS` is the catalogue; tests/test_hostile_registry.py runs each against the real
CLI in a subprocess.  The fake registry (fakeregistry.py) stays the tool for honest faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import zstandard

from guestpull_testkit import TEST_PASSWORD, TEST_USER
from guestpull_testkit.fakeregistry import basic_header
from guestpull_testkit.images import BuiltImage, BuiltLayer, sha256_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_MAX_REQUEST_HEAD = 64 << 10


@dataclass(frozen=True)
class RawRequest:
    port: int  # which of the server's ports received it
    method: str
    path: str
    headers: dict[str, str]


Respond = Callable[["HostileRegistry", RawRequest, asyncio.StreamWriter], Awaitable[bool]]


async def _honest(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    return False


@dataclass(frozen=True)
class Scenario:
    """One way to attack a client: ``respond`` answers a request first (True: handled).

    ``expect``: the categories a correct client may end with ("ok" for a successful pull).
    ``slow``: takes more than a few seconds with guestpull's default limits (reliability run).
    ``bundle``/``tmpfs_mib``: the pull also unpacks a bundle, in a work dir on a tmpfs of
    that size (decompression bombs).
    """

    name: str
    expect: frozenset[str]
    respond: Respond = _honest
    auth: str = "none"  # none | basic | bearer
    tls: bool = False  # the registry port speaks HTTPS (the test supplies the context)
    slow: bool = False
    bundle: bool = False
    tmpfs_mib: int = 0
    bomb: str = ""  # "gzip"/"zstd": serve the image with a decompression-bomb layer
    description: str = ""


class HostileRegistry:
    """Serves ``image`` (a testing.images.BuiltImage) as ``app:v1``, with ``scenario`` first.

    ``port`` is the registry; ``other_port`` a second listener (a "thief" for redirects and
    token realms); ``plain_port`` a third that answers HTTP only (a redirect target that does
    not speak TLS).
    """

    def __init__(
        self, image: Any, scenario: Scenario, *, repository: str = "app",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.image = image
        self.ssl_context = ssl_context
        self.scenario = scenario
        self.repository = repository
        self.requests: list[RawRequest] = []
        self.blobs: dict[str, bytes] = {layer.digest: layer.blob for layer in image.layers}
        self.blobs[image.config_digest] = image.config
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.add_manifest(image.manifest, OCI_MANIFEST, tag="v1")
        self._tokens: set[str] = set()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = self.other_port = self.plain_port = 0

    # --- content ---

    def add_manifest(self, data: bytes, media_type: str, *, tag: str | None = None) -> str:
        digest = sha256(data)
        self.manifests[digest] = (data, media_type)
        if tag:
            self.manifests[tag] = (data, media_type)
        return digest

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.repository}:v1"

    def credentials_sent_elsewhere(self, *, realm_path: str = "/token") -> list[RawRequest]:
        """Requests that carried an Authorization header to a port other than the registry's.

        A token realm is told the registry's credentials by design (docker and containerd
        do the same: the registry names its realm), so ``realm_path`` on the other port is
        not counted; a redirect target or anything else is.
        """
        return [
            r for r in self.requests
            if "authorization" in r.headers and r.port != self.port
            and not (r.port == self.other_port and r.path.startswith(realm_path))
        ]

    # --- lifecycle ---

    async def start(self) -> Self:
        for attr in ("port", "other_port", "plain_port"):
            tls = self.ssl_context if attr == "port" else None
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_REQUEST_HEAD, ssl=tls)
            self._servers.append(server)
            setattr(self, attr, server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the connection loop ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        port = writer.get_extra_info("sockname")[1]
        try:
            if port == self.plain_port:
                # A plain-HTTP server: a TLS ClientHello is garbage to it; answer 400 as Go does.
                await reader.read(4096)
                writer.write(response(400, {}, b"Client sent an HTTP request to an HTTPS server.\n"))
                await writer.drain()
                return
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = _parse_head(port, head)
                self.requests.append(request)
                if not await self.scenario.respond(self, request, writer):
                    await self._answer(request, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        """The honest registry."""
        path = request.path.split("?", 1)[0]
        if path == "/token":
            token = secrets.token_urlsafe(16)
            self._tokens.add(token)
            writer.write(response(200, {"Content-Type": "application/json"},
                                  json.dumps({"token": token, "expires_in": 300}).encode()))
            return
        denied = self._check_auth(request)
        if denied is not None:
            writer.write(denied)
            return
        if path == "/v2/":
            writer.write(response(200, {"Content-Type": "application/json"}, b"{}"))
            return
        kind, _, ref = path.removeprefix(f"/v2/{self.repository}/").partition("/")
        if kind == "manifests" and ref in self.manifests:
            data, media_type = self.manifests[ref]
            writer.write(response(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}, data))
        elif kind == "blobs" and ref in self.blobs:
            writer.write(response(200, {"Content-Type": "application/octet-stream"}, self.blobs[ref]))
        else:
            writer.write(response(404, {"Content-Type": "application/json"}, b'{"errors":[]}'))

    def _check_auth(self, request: RawRequest) -> bytes | None:
        header = request.headers.get("authorization", "")
        if self.scenario.auth == "none" or request.port != self.port:
            return None
        if self.scenario.auth == "basic":
            if header == basic_header(TEST_USER, TEST_PASSWORD):
                return None
            challenge = 'Basic realm="hostile"'
        else:
            if header.removeprefix("Bearer ") in self._tokens:
                return None
            challenge = f'Bearer realm="{self.url}/token",service="hostile"'
        return response(401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}, b"{}")


# --- bytes on the wire -------------------------------------------------------------------------


def response(status: int, headers: dict[str, str], body: bytes, *, reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


sha256 = sha256_digest


def _parse_head(port: int, head: bytes) -> RawRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return RawRequest(port, method, path, headers)


def is_manifest(request: RawRequest) -> bool:
    return "/manifests/" in request.path


def is_blob(request: RawRequest) -> bool:
    return "/blobs/" in request.path


def _manifest_doc(registry: HostileRegistry) -> dict[str, Any]:
    return json.loads(registry.image.manifest)


def _serve_document(
    match: Callable[[RawRequest], bool], make: Callable[[HostileRegistry], bytes], media_type: str = OCI_MANIFEST
) -> Respond:
    """Answer matching requests with ``make(registry)`` (its true digest in the header)."""

    async def respond(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if not match(request):
            return False
        data = make(registry)
        writer.write(response(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}, data))
        return True

    return respond


def _raw(match: Callable[[RawRequest], bool], data: bytes, *, close: bool = False) -> Respond:
    async def respond(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if not match(request):
            return False
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()
        return True

    return respond


# --- scenario bodies ---------------------------------------------------------------------------


async def _two_writes(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """An honest manifest whose body arrives in two TCP segments, 200 ms apart."""
    if not (is_manifest(request) and request.path.endswith("/v1")):
        return False
    data = registry.image.manifest
    whole = response(200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(data)}, data)
    cut = len(whole) - len(data) + 100
    writer.write(whole[:cut])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(whole[cut:])
    return True


def _big_index(registry: HostileRegistry) -> bytes:
    """An honest ~3 MB index: thousands of other platforms, then ours (served in pieces)."""
    ours = {"mediaType": OCI_MANIFEST, "digest": registry.image.digest, "size": len(registry.image.manifest),
            "platform": {"os": "linux", "architecture": "amd64"}}
    others = [{"mediaType": OCI_MANIFEST, "digest": sha256(str(i).encode()), "size": 1000,
               "platform": {"os": "linux", "architecture": f"other{i}"},
               "annotations": {"pad": "x" * 200}} for i in range(9000)]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*others, ours]}).encode()


async def _index_in_pieces(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    if not (is_manifest(request) and request.path.endswith("/v1")):
        return False
    data = _big_index(registry)
    whole = response(200, {"Content-Type": OCI_INDEX, "Docker-Content-Digest": sha256(data)}, data)
    for start in range(0, len(whole), 256 << 10):
        writer.write(whole[start:start + (256 << 10)])
        await writer.drain()
        await asyncio.sleep(0.01)
    return True


async def _slow_drip(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """A blob at one byte every 2 s: never silent long enough for a read timeout."""
    if not is_blob(request):
        return False
    data = registry.blobs.get(request.path.rsplit("/", 1)[1], b"")
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode())
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(2)
    return True


async def _continue_flood(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """``100 Continue`` forever, a few per second: an HTTP client skips every one of them."""
    if not is_manifest(request):
        return False
    while True:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


def _chunked_garbage() -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"


async def _garbage_after_body(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """An honest answer, then garbage on the kept-alive connection where the next response goes."""
    if request.path != "/v2/":
        return False
    writer.write(response(200, {"Content-Type": "application/json"}, b"{}") + b"GARBAGE\r\n\x00\xff" * 50)
    return True


def _redirect(location: Callable[[HostileRegistry], str]) -> Respond:
    async def respond(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.port != registry.port or not is_blob(request):
            return False
        writer.write(response(307, {"Location": location(registry)}, b""))
        return True

    return respond


async def _redirect_to_thief(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Blobs redirect to the other port, which serves them honestly (and records headers)."""
    if not is_blob(request):
        return False
    if request.port == registry.port:
        writer.write(response(307, {"Location": f"http://127.0.0.1:{registry.other_port}{request.path}"}, b""))
        return True
    return False  # the thief port answers honestly (no auth there)


async def _plain_port_for_tls(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Redirect blobs to https:// on a port that only speaks plain HTTP."""
    if not is_blob(request):
        return False
    writer.write(response(307, {"Location": f"https://127.0.0.1:{registry.plain_port}/storage"}, b""))
    return True


def _token_answer(token: str) -> Respond:
    async def respond(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if not request.path.startswith("/token"):
            return False
        body = json.dumps({"token": token}).encode()
        writer.write(response(200, {"Content-Type": "application/json"}, body))
        return True

    return respond


def _challenge(realm: Callable[[HostileRegistry], str]) -> Respond:
    async def respond(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.port != registry.port or "authorization" in request.headers:
            return False
        challenge = f'Bearer realm="{realm(registry)}",service="hostile"'
        writer.write(response(401, {"WWW-Authenticate": challenge}, b"{}"))
        return True

    return respond


def _with_manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[HostileRegistry], bytes]:
    def make(registry: HostileRegistry) -> bytes:
        doc = _manifest_doc(registry)
        result = change(doc)
        return json.dumps(result if result is not None else doc).encode()

    return make


def _big_layer_size(doc: dict[str, Any]) -> None:
    doc["layers"][0]["size"] = 2**62


def _big_config_size(doc: dict[str, Any]) -> None:
    doc["config"]["size"] = 256 << 20


def _both_shapes(doc: dict[str, Any]) -> None:
    doc.pop("mediaType", None)
    doc["manifests"] = []


def _duplicate_layers(registry: HostileRegistry) -> bytes:
    text = registry.image.manifest.decode()
    return text.replace('"layers":', '"layers":[],"layers":', 1).encode()


def _bomb_tar_header(size: int) -> bytes:
    """A ustar header for one regular file ``bomb`` of ``size`` bytes."""
    header = bytearray(512)
    header[0:4] = b"bomb"
    header[100:108] = b"0000644\0"
    header[108:116] = header[116:124] = b"0000000\0"
    header[124:136] = f"{size:011o}\0".encode()
    header[136:148] = b"00000000000\0"
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header)


def bomb_layer(compression: str, size: int) -> bytes:
    """A gzip or zstd layer whose tar holds one file of ``size`` zero bytes (~1000:1)."""
    if compression == "gzip":
        compressor: Any = zlib.compressobj(9, zlib.DEFLATED, 31)
    else:
        compressor = zstandard.ZstdCompressor(level=1).compressobj()
    parts = [compressor.compress(_bomb_tar_header(size))]
    zero = bytes(1 << 20)
    for _ in range(size >> 20):
        parts.append(compressor.compress(zero))
    parts.append(compressor.compress(bytes(-size % 512) + bytes(1024)))
    parts.append(compressor.flush())
    return b"".join(parts)


def bomb_image(image: BuiltImage, compression: str, size: int = 1 << 30) -> BuiltImage:
    """``image`` with its only layer replaced by a bomb (its diff_id is left as it was)."""
    media_type = f"application/vnd.oci.image.layer.v1.tar+{compression}"
    layer = BuiltLayer(tar=b"", blob=bomb_layer(compression, size), media_type=media_type)
    manifest = json.loads(image.manifest)
    manifest["layers"] = [layer.descriptor()]
    return BuiltImage(manifest=json.dumps(manifest).encode(), config=image.config, layers=[layer],
                      platform=image.platform)


async def _index_lies_about_entry(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """The tag is an index whose entry calls our OCI manifest a Docker one."""
    if not (is_manifest(request) and request.path.endswith("/v1")):
        return False
    entry = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": registry.image.digest, "size": len(registry.image.manifest),
             "platform": {"os": "linux", "architecture": "amd64"}}
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
    writer.write(response(200, {"Content-Type": OCI_INDEX, "Docker-Content-Digest": sha256(data)}, data))
    return True


async def _endless_manifest(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """A manifest without Content-Length that never ends (closed after 6 MiB)."""
    if not is_manifest(request):
        return False
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nConnection: close\r\n\r\n".encode())
    writer.write(b'{"schemaVersion":2,"pad":"')
    for _ in range(6 * 16):
        writer.write(b"a" * (64 << 10))
        await writer.drain()
    writer.close()
    return True


async def _blob_too_long(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Each blob with 1 MiB more than its descriptor says."""
    if not is_blob(request):
        return False
    data = registry.blobs.get(request.path.rsplit("/", 1)[1], b"") + bytes(1 << 20)
    writer.write(response(200, {"Content-Type": "application/octet-stream"}, data))
    return True


async def _huge_token(registry: HostileRegistry, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    if not request.path.startswith("/token"):
        return False
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    writer.write(b'{"token":"' + b"a" * (2 << 20) + b'"}')
    await writer.drain()
    writer.close()
    return True


def _cats(*names: str) -> frozenset[str]:
    return frozenset(names)


_TAG = is_manifest
_ALL_SCENARIOS: list[Scenario] = [
    Scenario("honest", _cats("ok"), description="the control: an honest registry"),
    Scenario("manifest-in-two-writes", _cats("ok"), _two_writes,
             description="an honest manifest sent in two TCP writes"),
    Scenario("index-3mb-in-pieces", _cats("ok"), _index_in_pieces,
             description="an honest 3 MB index sent in 256 KiB pieces"),
    Scenario("header-over-8k", _cats("network"),
             _raw(_TAG, b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n"),
             description="a 9,000-byte response header"),
    Scenario("too-many-headers", _cats("network"),
             _raw(_TAG, b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(2000))
                  + b"Content-Length: 0\r\n\r\n"),
             description="2,000 response headers"),
    Scenario("bad-status-line", _cats("network"), _raw(_TAG, b"HTTP/1.1 2x0 WHAT\r\n\r\n", close=True),
             description="a status line that is not HTTP (HTTP/1.1 2x0)"),
    Scenario("smuggled-framing", _cats("network"),
             _raw(_TAG, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n{}", close=True),
             description="a manifest framed both by Content-Length and chunked (request smuggling)"),
    Scenario("folded-header", _cats("network"),
             _raw(_TAG, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n X-Folded: on\r\n"
                  b"Content-Length: 2\r\n\r\n{}", close=True),
             description="an obsolete folded header line (RFC 9112 lets a client refuse it)"),
    Scenario("bad-chunk-size", _cats("network"), _raw(is_blob, _chunked_garbage()),
             description="a chunked blob whose chunk size is 'zz'"),
    Scenario("garbage-after-content-length", _cats("ok", "network"), _garbage_after_body,
             description="bytes after the announced body on a kept-alive connection"),
    Scenario("lying-content-length", _cats("network"),
             _raw(_TAG, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{\"schemaVersion\":2}", close=True),
             description="a manifest 4,981 bytes shorter than its Content-Length"),
    Scenario("deep-nesting", _cats("config"), _serve_document(_TAG, lambda r: b"[" * 5000 + b"]" * 5000),
             description="a manifest nested 5,000 arrays deep"),
    Scenario("duplicate-keys", _cats("config"), _serve_document(_TAG, _duplicate_layers),
             description="a manifest with two 'layers' keys"),
    Scenario("manifest-and-index", _cats("unsupported"),
             _serve_document(_TAG, _with_manifest(_both_shapes), OCI_INDEX),
             description="no mediaType, both 'manifests' and 'layers', Content-Type says index"),
    Scenario("content-type-mismatch", _cats("unsupported"),
             _serve_document(_TAG, lambda r: r.image.manifest, OCI_INDEX),
             description="an image manifest served as an index"),
    Scenario("utf16-manifest", _cats("config"),
             _serve_document(_TAG, lambda r: r.image.manifest.decode().encode("utf-16")),
             description="the manifest in UTF-16 with a BOM"),
    Scenario("absurd-layer-size", _cats("unsupported"), _serve_document(_TAG, _with_manifest(_big_layer_size)),
             description="a layer descriptor of 2^62 bytes"),
    Scenario("huge-config", _cats("unsupported"), _serve_document(_TAG, _with_manifest(_big_config_size)),
             description="a config descriptor of 256 MiB"),
    Scenario("index-entry-type-mismatch", _cats("unsupported"), _index_lies_about_entry,
             description="an index entry's mediaType contradicts the manifest it points at"),
    Scenario("endless-manifest", _cats("unsupported"), _endless_manifest,
             description="a manifest with no Content-Length that does not end"),
    Scenario("blob-longer-than-descriptor", _cats("digest"), _blob_too_long,
             description="blobs 1 MiB longer than their descriptors"),
    Scenario("huge-token-response", _cats("auth"), _huge_token, auth="bearer",
             description="a 2 MiB token response"),
    Scenario("realm-on-other-port", _cats("ok"),
             _challenge(lambda r: f"http://127.0.0.1:{r.other_port}/token"), auth="bearer",
             description="the token realm on another port (it gets the credentials, as with docker)"),
    Scenario("https-redirect-to-http", _cats("tls"), _redirect_to_thief, auth="basic", tls=True,
             description="an HTTPS registry redirects blobs to plain HTTP on another port"),
    Scenario("https-realm-over-http", _cats("auth"),
             _challenge(lambda r: f"http://127.0.0.1:{r.other_port}/token"), auth="bearer", tls=True,
             description="an HTTPS registry names a plain-HTTP token realm"),
    Scenario("redirect-to-file", _cats("network"), _redirect(lambda r: "file:///etc/passwd"),
             description="a blob redirected to file:///etc/passwd"),
    Scenario("redirect-loop", _cats("network"), _redirect(lambda r: f"http://{r.host}/v2/app/blobs/loop"),
             description="a blob redirected to a URL that redirects again, forever"),
    Scenario("redirect-to-other-port", _cats("ok"), _redirect_to_thief, auth="basic",
             description="blobs redirected to another port: it must not see the credentials"),
    Scenario("redirect-to-plain-port-as-tls", _cats("tls"), _plain_port_for_tls,
             description="a redirect to https:// on a port that speaks plain HTTP"),
    Scenario("token-with-crlf", _cats("auth"), _token_answer("abc\r\nX-Injected: 1"), auth="bearer",
             description="a Bearer token holding CR/LF"),
    Scenario("realm-with-controls", _cats("auth"), _challenge(lambda r: f"http://{r.host}/tok\ten"),
             auth="bearer", description="a realm holding a control character"),
    Scenario("realm-on-file-url", _cats("auth"), _challenge(lambda r: "file:///etc/shadow"), auth="bearer",
             description="a realm that is a file:// URL"),
    Scenario("slow-drip", _cats("timeout"), _slow_drip, slow=True,
             description="blobs at one byte every 2 s"),
    Scenario("continue-flood", _cats("timeout", "network"), _continue_flood, slow=True,
             description="an endless stream of 100 Continue before the manifest"),
    Scenario("gzip-bomb", _cats("no-space", "digest", "unpack"), slow=True, bundle=True, tmpfs_mib=48,
             bomb="gzip", description="a 1 MB gzip layer of 1 GiB of zeros, work dir on a 48 MiB tmpfs"),
    Scenario("zstd-bomb", _cats("no-space", "digest", "unpack"), slow=True, bundle=True, tmpfs_mib=48,
             bomb="zstd", description="a zstd layer of 1 GiB of zeros, work dir on a 48 MiB tmpfs"),
]

#: Every scenario by name, in the order the reliability report lists them.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in _ALL_SCENARIOS}

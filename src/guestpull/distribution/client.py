"""The OCI distribution API for one registry and scheme: ping, manifests and blobs.

A :class:`RegistryClient` talks to one ``registry`` over one scheme (an HTTPS candidate or an
HTTP one that a rule marks insecure) and never switches scheme.  Every byte it hands on is
verified: manifests against ``Docker-Content-Digest`` and the digest asked for, blobs against
the descriptor's digest and size while they stream in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from guestpull.url import URL

from guestpull import httpclient, oci
from guestpull.distribution import auth
from guestpull.distribution.transport import Transport, deadline, read_body, safe_url
from guestpull.errors import (
    AuthError,
    DigestError,
    GuestpullError,
    HTTPStatusError,
    NetworkError,
    NotFoundError,
    UnsupportedError,
    shown,
)

log = logging.getLogger(__name__)

# The order of coco-behaviour.md §7.2.
MANIFEST_ACCEPT = ", ".join(oci.MANIFEST_ACCEPT)

MAX_MANIFEST_SIZE = oci.MAX_MANIFEST_SIZE
BLOB_CHUNK = 1 << 20
_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}

T = TypeVar("T")


# --- digests -------------------------------------------------------------------------------


def new_hasher(digest: str) -> Any:
    """A hashlib object for ``digest``'s algorithm; DigestError if the digest is unusable."""
    algorithm, _ = oci.split_digest(digest)
    return _HASHES[algorithm]()


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{_HASHES[algorithm](data).hexdigest()}"


def verify_content_digest(data: bytes, expected: str, what: str) -> None:
    """DigestError unless ``data`` hashes to ``expected`` (its content, not its syntax)."""
    hasher = new_hasher(expected)
    hasher.update(data)
    actual = f"{hasher.name}:{hasher.hexdigest()}"
    if actual != expected:
        raise DigestError(f"{what}: content has digest {actual}, expected {expected}")


# --- what the client returns and writes into ------------------------------------------------


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index as the registry sent it, digest-verified."""

    digest: str
    media_type: str
    data: bytes
    #: ``data`` parsed (strictly) once: the manifest or index it is.
    document: oci.ImageManifest | oci.ImageIndex

    @property
    def is_index(self) -> bool:
        return self.media_type in oci.INDEX_TYPES


class BlobSink(Protocol):
    """Where a blob's bytes go: ``image.store.BlobWriter`` has this shape.

    ``commit()`` must verify the digest and size and raise DigestError on a mismatch: the
    client counts bytes but leaves hashing to the sink, so every byte is hashed once.
    """

    def write(self, data: bytes) -> None: ...
    def commit(self) -> Any: ...
    def abort(self) -> None: ...


class MemorySink:
    """A :class:`BlobSink` keeping a small blob in memory; ``commit()`` returns its bytes."""

    def __init__(self, blob: oci.Descriptor) -> None:
        self._blob = blob
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def commit(self) -> bytes:
        data = b"".join(self._chunks)
        if len(data) != self._blob.size:
            raise DigestError(f"got {len(data)} bytes, the descriptor says {self._blob.size}")
        verify_content_digest(data, self._blob.digest, f"blob {self._blob.digest}")
        return data

    def abort(self) -> None:
        self._chunks.clear()


class _PayloadBroken(Exception):
    """The connection broke while a body streamed in: worth another try."""


# --- the client ----------------------------------------------------------------------------


class RegistryClient:
    """The distribution API of one registry over one scheme, with its authentication."""

    def __init__(
        self,
        transport: Transport,
        registry: str,
        *,
        scheme: str = "https",
        credentials: auth.Credentials | None = None,
        tokens: auth.TokenCache | None = None,
    ) -> None:
        if scheme not in ("https", "http"):
            raise ValueError(f"scheme must be https or http, not {scheme!r}")
        self.transport = transport
        self.registry = registry
        self.scheme = scheme
        self._credentials = credentials
        self._tokens = tokens or auth.TokenCache()
        self._challenge: auth.Challenge | None = None
        self._pinged = False
        self._ping_lock = asyncio.Lock()
        self.base = URL(f"{scheme}://{registry}")

    # --- API ---

    async def ping(self) -> None:
        """``GET /v2/`` without credentials, once: learn how the registry wants us to log in."""
        async with self._ping_lock:
            if self._pinged:
                return
            url = self.base / "v2" / ""
            async with deadline(self.transport.settings.document_timeout, f"registry check GET {safe_url(url)}"), \
                    self.transport.request(url) as response:
                if response.status == 401:
                    challenges = auth.parse_challenges(response.headers.get("WWW-Authenticate", ""))
                    self._challenge = auth.pick_challenge(challenges)
                elif response.status == 404:
                    raise NotFoundError(
                        f"{self.registry} does not serve the registry API (GET /v2/ gave HTTP 404)"
                    )
                elif response.status >= 400:
                    raise _status_error(response.status, f"registry check GET {safe_url(url)}")
            self._pinged = True

    @property
    def challenge(self) -> auth.Challenge | None:
        """How the registry asked to be logged in to at ``ping`` (None: it did not ask)."""
        return self._challenge

    async def check_login(self, repository: str) -> None:
        """Log in as a pull of ``repository`` would, then ``GET /v2/`` with the result.

        Returns when the registry accepts the request (or asks for no login); AuthError when
        it, or its token realm, refuses the configured credentials (or their absence).
        """
        await self.ping()
        authorization = await self._authorization(repository, self._challenge, refresh=True)
        url = self.base / "v2" / ""
        async with self.transport.request(url, authorization=authorization) as response:
            if response.status in (401, 403):
                raise auth.auth_failure(self.registry, repository, self._challenge,
                                        status=response.status,
                                        had_credentials=self._credentials is not None)
            if response.status >= 400:
                raise _status_error(response.status, f"registry check GET {safe_url(url)}")

    async def get_manifest(
        self,
        repository: str,
        ref: str,
        *,
        expected_digest: str | None = None,
        expected_media_type: str = "",
    ) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest and verify it (at most 4 MiB).

        ``expected_media_type``: what the descriptor pointing here says (an index entry's);
        the document, its Content-Type and that must agree (oci.document_media_type).
        """
        url = self._url(repository, "manifests", ref)
        what = f"manifest {self.registry}/{repository}:{ref}" if ":" not in ref else (
            f"manifest {self.registry}/{repository}@{ref}"
        )
        headers = {"Accept": MANIFEST_ACCEPT}
        async with deadline(self.transport.settings.document_timeout, what):
            data, response_headers = await self._with_auth(
                repository, url, headers, what, lambda r: _read_manifest(r, what)
            )
        header_digest = response_headers.get("Docker-Content-Digest", "").strip()
        if header_digest:
            verify_content_digest(data, header_digest, f"{what} (against Docker-Content-Digest)")
        if expected_digest:
            verify_content_digest(data, expected_digest, what)
        document = oci.parse_manifest_document(
            data, response_headers.get("Content-Type", ""), what, expected_media_type=expected_media_type
        )
        digest = header_digest or expected_digest or digest_of(data)
        return FetchedManifest(digest=digest, media_type=document.media_type, data=data, document=document)

    async def fetch_blob(
        self, repository: str, blob: oci.Descriptor, open_sink: Callable[[], BlobSink]
    ) -> Any:
        """Stream a blob into a fresh sink, verifying size and digest; return ``sink.commit()``.

        A broken connection mid-body restarts the download (bounded); a digest or size
        mismatch aborts the sink (nothing partial is kept) and raises DigestError.  When the
        registry cannot serve the blob, the descriptor's foreign ``urls`` are tried, without
        credentials.
        """
        new_hasher(blob.digest)  # refuse an unusable digest before any I/O
        what = f"blob {blob.digest} of {self.registry}/{repository}"
        # A floor on the transfer rate: a registry dripping one byte at a time cannot hold
        # the pull for longer than this blob deserves.
        async with deadline(self.transport.settings.blob_deadline(blob.size), what):
            return await self._fetch_blob_anywhere(repository, blob, open_sink, what)

    async def _fetch_blob_anywhere(
        self, repository: str, blob: oci.Descriptor, open_sink: Callable[[], BlobSink], what: str
    ) -> Any:
        try:
            return await self._fetch_from_registry(repository, blob, open_sink, what)
        except (NotFoundError, HTTPStatusError, NetworkError) as err:
            foreign = self._foreign_urls(blob)
            if not foreign:
                raise
            log.info("%s: %s; trying its foreign URLs", what, err)
            last: GuestpullError = err
        for url in foreign:
            try:
                return await self._fetch_url(url, None, blob, open_sink, f"{what} from {safe_url(url)}")
            except (NotFoundError, HTTPStatusError, NetworkError) as err:
                last = err
            except _Unauthorized as refused:
                last = HTTPStatusError(
                    f"{what} from {safe_url(url)}: HTTP {refused.status}", status=refused.status
                )
        raise last

    async def fetch_blob_bytes(self, repository: str, blob: oci.Descriptor, max_size: int) -> bytes:
        """A small blob (a signature payload) into memory, verified; UnsupportedError when the
        descriptor says it is larger than ``max_size``."""
        if blob.size > max_size:
            raise UnsupportedError(
                f"blob {blob.digest} of {self.registry}/{repository} is {blob.size} bytes; "
                f"at most {max_size} are read into memory"
            )
        return await self.fetch_blob(repository, blob, lambda: MemorySink(blob))  # type: ignore[no-any-return,unused-ignore]

    # --- internals ---

    def _url(self, repository: str, kind: str, ref: str) -> URL:
        return self.base.joinpath("v2", *repository.split("/"), kind, ref)

    def _foreign_urls(self, blob: oci.Descriptor) -> list[URL]:
        # Digest-verified either way; still, an HTTPS candidate does not fetch over plain HTTP.
        allowed = ("https",) if self.scheme == "https" else ("https", "http")
        urls = []
        for text in blob.urls:
            try:
                url = URL(text)
                usable = url.scheme in allowed and bool(url.host) and url.port is not None
            except ValueError:  # from the manifest: "http://[::1", a port of 99999, ...
                usable = False
            if usable:
                urls.append(url)
            else:
                log.info("ignoring the foreign URL %s of %s", shown(text), blob.digest)
        return urls

    async def _fetch_from_registry(
        self, repository: str, blob: oci.Descriptor, open_sink: Callable[[], BlobSink], what: str
    ) -> Any:
        url = self._url(repository, "blobs", blob.digest)

        async def attempt(authorization: str | None) -> Any:
            return await self._fetch_url(url, authorization, blob, open_sink, what)

        return await self._authorized(repository, attempt, what)

    async def _fetch_url(
        self,
        url: URL,
        authorization: str | None,
        blob: oci.Descriptor,
        open_sink: Callable[[], BlobSink],
        what: str,
    ) -> Any:
        tries = self.transport.settings.retry.attempts
        for attempt in range(1, tries + 1):
            try:
                async with self.transport.request(url, authorization=authorization) as response:
                    if response.status == 401 or response.status == 403:
                        raise _Unauthorized(response.status, response.headers.get("WWW-Authenticate", ""))
                    if response.status != 200:
                        raise _status_error(response.status, what)
                    return await _stream_into(response, blob, open_sink, what)
            except _PayloadBroken as err:
                if attempt == tries:
                    raise NetworkError(f"{what}: the connection broke {tries} times: {err}") from None
                log.debug("%s: %s; downloading again", what, err)
                await asyncio.sleep(self.transport.settings.retry.delay(attempt))
        raise AssertionError("unreachable")

    async def _with_auth(
        self,
        repository: str,
        url: URL,
        headers: Mapping[str, str],
        what: str,
        read: Callable[[httpclient.Response], Any],
    ) -> Any:
        async def attempt(authorization: str | None) -> Any:
            async with self.transport.request(url, headers=headers, authorization=authorization) as r:
                if r.status in (401, 403):
                    raise _Unauthorized(r.status, r.headers.get("WWW-Authenticate", ""))
                if r.status != 200:
                    raise _status_error(r.status, what)
                return await read(r), r.headers

        return await self._authorized(repository, attempt, what)

    async def _authorized(
        self, repository: str, attempt: Callable[[str | None], Any], what: str
    ) -> Any:
        """Run ``attempt(authorization)``; on a 401, answer the new challenge and try once more."""
        await self.ping()
        authorization = await self._authorization(repository, self._challenge, refresh=False)
        try:
            return await attempt(authorization)
        except _Unauthorized as refused:
            challenge = auth.pick_challenge(auth.parse_challenges(refused.header)) or self._challenge
            if refused.status == 401 and challenge is not None and self._can_answer(challenge, authorization):
                # Remember how to log in, but not the scope: it belongs to this one request.
                params = {k: v for k, v in challenge.params.items() if k != "scope"}
                self._challenge = auth.Challenge(challenge.scheme, params)
                retry_auth = await self._authorization(
                    repository, challenge, refresh=True, scope=challenge.params.get("scope")
                )
                try:
                    return await attempt(retry_auth)
                except _Unauthorized as again:
                    refused = again
            raise auth.auth_failure(
                self.registry,
                repository,
                challenge,
                status=refused.status,
                had_credentials=self._credentials is not None,
            ) from None

    def _can_answer(self, challenge: auth.Challenge, sent: str | None) -> bool:
        if challenge.scheme == "bearer":
            return True  # a token may have expired or need another scope: ask again
        if challenge.scheme == "basic":
            return self._credentials is not None and sent is None
        return False

    async def _authorization(
        self,
        repository: str,
        challenge: auth.Challenge | None,
        *,
        refresh: bool,
        scope: str | None = None,
    ) -> str | None:
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return auth.basic_authorization(self._credentials) if self._credentials else None
        if challenge.scheme == "bearer":
            scope = scope or auth.pull_scope(repository)
            token = None if refresh else self._tokens.get(self.registry, repository, scope)
            if token is None:
                token = await self._fetch_token(challenge, scope)
                self._tokens.put(self.registry, repository, scope, token)
            return token.authorization
        return None

    async def _fetch_token(self, challenge: auth.Challenge, scope: str) -> auth.Token:
        url = auth.token_url(challenge, scope)
        realm = auth.realm_for_message(challenge)
        basic = auth.basic_authorization(self._credentials) if self._credentials else None
        if basic and self.scheme == "https" and url.scheme != "https":
            raise AuthError(
                f"refusing to send the credentials for {self.registry} to the plain-HTTP "
                f"token realm {realm}: the registry itself is HTTPS"
            )
        try:
            # The realm is another origin: the Basic credentials go to it explicitly.
            async with deadline(self.transport.settings.document_timeout, f"token request to realm {realm}"), \
                    self.transport.request(url, authorization=basic) as response:
                if response.status != 200:
                    how = "with the credentials from the auth file" if basic else "anonymously"
                    raise AuthError(
                        f"token request to realm {realm} for {self.registry} failed {how}: "
                        f"HTTP {response.status}",
                        hint=None if basic else "add credentials for this registry to the auth file",
                    )
                body = await read_body(response, auth.MAX_TOKEN_RESPONSE, f"token response from realm {realm}")
        except NetworkError as err:
            raise NetworkError(f"token request to realm {realm} failed: {err.message}") from None
        if len(body) > auth.MAX_TOKEN_RESPONSE:
            raise AuthError(f"the token response from realm {realm} is larger than 1 MiB")
        return auth.token_from_response(body, now=self._tokens.now())


class _Unauthorized(Exception):
    def __init__(self, status: int, header: str) -> None:
        super().__init__(status)
        self.status = status
        self.header = header


def _status_error(status: int, what: str) -> GuestpullError:
    if status == 404:
        return NotFoundError(f"{what}: not found (HTTP 404)")
    return HTTPStatusError(f"{what}: HTTP {status}", status=status)


async def _read_manifest(response: httpclient.Response, what: str) -> bytes:
    length = response.content_length
    if length is not None and length > MAX_MANIFEST_SIZE:
        raise UnsupportedError(f"{what} is {length} bytes; manifests are limited to 4 MiB")
    data = await read_body(response, MAX_MANIFEST_SIZE, what)
    if len(data) > MAX_MANIFEST_SIZE:
        raise UnsupportedError(f"{what} is larger than 4 MiB; manifests are limited to 4 MiB")
    return data


async def _stream_into(
    response: httpclient.Response, blob: oci.Descriptor, open_sink: Callable[[], BlobSink], what: str
) -> Any:
    length = response.content_length
    if length is not None and length != blob.size:
        raise DigestError(f"{what}: the registry sends {length} bytes, the descriptor says {blob.size}")
    received = 0
    sink = open_sink()
    try:
        try:
            async for chunk in response.chunks(BLOB_CHUNK):
                received += len(chunk)
                if received > blob.size:
                    raise DigestError(f"{what}: more than the {blob.size} bytes the descriptor says")
                # The sink hashes and writes on the event loop (~1 ms a MiB on tmpfs): a
                # thread hop per chunk cost more than it overlapped, 0.12 s of CPU and 9 MiB
                # of peak RSS (thread arenas) for 4 × 44 MiB blobs (issue 15).
                sink.write(chunk)
        except (httpclient.BodyError, TimeoutError) as err:
            raise _PayloadBroken(f"{type(err).__name__}: {err}") from None
        if received != blob.size:
            raise _PayloadBroken(f"got {received} of {blob.size} bytes")
        # The sink, not this client, decides: commit() refuses content whose digest differs
        # (containerd's "ingest, then commit with the expected digest").
        try:
            return await asyncio.to_thread(sink.commit)
        except DigestError as err:
            raise DigestError(f"{what}: {err.message}") from None
    except BaseException:
        sink.abort()
        raise

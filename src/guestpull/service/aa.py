"""The Attestation Agent, as the CDH calls it: ``ExtendRuntimeMeasurement`` after each pull.

The request is upstream's exactly (reference/cdh-service.md §4, guest-components hub.rs):
Domain ``github.com/confidential-containers``, Operation ``PullImage``, Content
``{"image":"<image>", "digest":"<digest>"}`` formatted by hand, RegisterIndex unset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import DecodeError

from guestpull.errors import GuestpullError
from guestpull import protos as proto
from guestpull.protos import AA_SERVICE
from guestpull.ttrpc import RpcConnectionError, RpcError, TtrpcClient, unix_socket_path

log = logging.getLogger(__name__)

AA_DOMAIN = "github.com/confidential-containers"
AA_OPERATION = "PullImage"
AA_TIMEOUT = 10.0


class AttestationAgentError(GuestpullError):
    """The Attestation Agent could not be reached, or refused the runtime measurement."""


# --- the AA -------------------------------------------------------------------------------------


def measurement_event(image: str, manifest_digest: str) -> Any:
    """The ExtendRuntimeMeasurementRequest the CDH sends: the image exactly as requested, no
    JSON escaping (upstream formats the string by hand), and RegisterIndex unset."""
    content = '{"image":"' + image + '", "digest":"' + manifest_digest + '"}'
    return proto.ExtendRuntimeMeasurementRequest(Domain=AA_DOMAIN, Operation=AA_OPERATION, Content=content)


Connector = Callable[[str], Awaitable[TtrpcClient]]


class RuntimeMeasurer:
    """Records each pulled image in the AA's event log, as the CDH does after every pull.

    The client is made on first use.  If the socket file does not exist then, measurement is
    off for the life of this object (upstream caches "no AA" in a OnceCell).  A connection that
    is lost is made again on the next pull.
    """

    def __init__(self, aa_socket: str, *, connect: Connector = TtrpcClient.connect) -> None:
        self._address = aa_socket
        self._path = unix_socket_path(aa_socket)  # a bad address stops the start, not a pull
        self._connect = connect
        self._client: TtrpcClient | None = None
        self._absent = False
        self._lock = asyncio.Lock()

    async def extend(self, image: str, manifest_digest: str) -> None:
        client = await self._get_client()
        if client is None:
            return
        request = measurement_event(image, manifest_digest).SerializeToString()
        try:
            reply = await client.call(AA_SERVICE, "ExtendRuntimeMeasurement", request, AA_TIMEOUT)
        except RpcConnectionError as err:
            self._client = None  # made again on the next pull
            await client.close()
            raise AttestationAgentError(f"failed to extend runtime measurement: {err.message}") from None
        except RpcError as err:
            raise AttestationAgentError(f"failed to extend runtime measurement: {err.message}") from None
        self._log_result(image, reply)

    async def _get_client(self) -> TtrpcClient | None:
        async with self._lock:
            if self._client is not None and self._client.closed:
                # The AA restarted since the last pull: nothing was sent on the dead connection.
                await self._client.close()
                self._client = None
            if self._absent or self._client is not None:
                return self._client
            if not self._path.exists():
                log.info("no Attestation Agent socket at %s: pulled images are not measured", self._path)
                self._absent = True
                return None
            try:
                self._client = await self._connect(self._address)
            except GuestpullError as err:
                raise AttestationAgentError(f"failed to connect to the Attestation Agent: {err.message}") from None
            return self._client

    def _log_result(self, image: str, reply: bytes) -> None:
        response = proto.ExtendRuntimeMeasurementResponse()
        try:
            response.ParseFromString(reply)
        except DecodeError:
            raise AttestationAgentError("failed to extend runtime measurement: undecodable answer") from None
        if response.Result == proto.MEASUREMENT_OK:
            log.info("runtime measurement extended for %s", image)
        else:
            name = "NOT_SUPPORTED" if response.Result == proto.MEASUREMENT_NOT_SUPPORTED else "NOT_ENABLED"
            log.warning("runtime measurement for %s not recorded: the Attestation Agent answered %s", image, name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

"""The Confidential Data Hub's ttrpc services, answered the way the real CDH answers them.

- ``api.ImagePullService/PullImage``: pull into ``bundle_path``, reply the manifest digest, then
  tell the Attestation Agent (:class:`guestpull.service.aa.RuntimeMeasurer`);
- ``api.GetResourceService/GetResource``: a ``kbs://`` resource through the configured KBC;
- SealedSecret, SecureMount and KeyProvider: registered (so the service exists, as on the real
  CDH's socket) but answered NOT_FOUND "/<service>/<method> is not supported", the answer of
  ttrpc-rust's generated default for a method the server does not implement.

Failures are INTERNAL with ``"[CDH] [ERROR]: "`` and the CDH's top-level error text, followed
by guestpull's category and message on one line (reference/cdh-service.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from guestpull.config import KbsCredential
from guestpull.errors import ConfigError, GuestpullError, Location, UsageError
from guestpull.resources import is_kbs_uri
from guestpull import protos as proto
from guestpull.service.aa import AttestationAgentError, RuntimeMeasurer
from guestpull.ttrpc import CallContext, Code, Handler, RpcError

log = logging.getLogger(__name__)

IMAGE_PULL_SERVICE = "api.ImagePullService"
GET_RESOURCE_SERVICE = "api.GetResourceService"

#: Services on the CDH socket that guestpull answers "not supported": service → (method → request type).
UNSUPPORTED: dict[str, dict[str, str]] = {
    "api.SealedSecretService": {"UnsealSecret": "api.UnsealSecretInput"},
    "api.SecureMountService": {"SecureMount": "api.SecureMountRequest"},
    "keyprovider.KeyProviderService": {
        "WrapKey": "keyprovider.KeyProviderKeyWrapProtocolInput",
        "UnWrapKey": "keyprovider.KeyProviderKeyWrapProtocolInput",
    },
}


class PulledImage(Protocol):
    @property
    def manifest_digest(self) -> str: ...


class ImagePuller(Protocol):
    """What the service needs of the long-lived puller (guestpull.pull.Puller)."""

    async def pull(self, image: str, *, bundle: Path | None = None) -> PulledImage: ...

    async def get_resource(self, uri: str) -> bytes: ...

    async def remove_bundle(self, bundle: Path) -> None: ...

    async def warm_up(self) -> None: ...


# --- start-up ---------------------------------------------------------------------------------------


async def write_kbs_credentials(credentials: Sequence[KbsCredential], puller: ImagePuller, *,
                                root: Path = Path("/")) -> None:
    """What the CDH does at start: fetch each ``[[credentials]]`` resource and write it to its
    ``path`` (under /run/confidential-containers/cdh/kbs, checked by the config model).

    A failure stops the start, as upstream.  Files are written 0600 and replaced whole.
    """
    for credential in credentials:
        if not is_kbs_uri(credential.resource_uri):
            raise ConfigError(f"credentials resource_uri {credential.resource_uri!r} is not a kbs:// URI",
                              location=Location(field="credentials.resource_uri"))
        data = await puller.get_resource(credential.resource_uri)
        target = root / credential.path.lstrip("/")
        await asyncio.to_thread(_write_private, target, data)
        log.info("wrote %s from %s", credential.path, credential.resource_uri)


def _write_private(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(partial, target)


# --- the CDH services ----------------------------------------------------------------------------


def one_line(err: GuestpullError) -> str:
    """``<category>: <message>`` on one line (a multi-line list of attempts is joined)."""
    text = "; ".join(part.strip(" -") for part in str(err).splitlines() if part.strip(" -"))
    return f"{err.category}: {text}"


def _decode(payload: bytes, type_name: str) -> Any:
    message = proto.message_class(type_name)()
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise RpcError(Code.INVALID_ARGUMENT, f"failed to decode {type_name}: {err}") from None
    return message


def _internal(text: str) -> RpcError:
    return RpcError(Code.INTERNAL, f"[CDH] [ERROR]: {text}")


class ConfidentialDataHub:
    """The handlers behind the CDH socket, over an :class:`ImagePuller` and a measurer."""

    def __init__(self, puller: ImagePuller, measurer: RuntimeMeasurer | None) -> None:
        self._puller = puller
        self._measurer = measurer

    def services(self) -> dict[str, Mapping[str, Handler]]:
        services: dict[str, Mapping[str, Handler]] = {
            IMAGE_PULL_SERVICE: {"PullImage": self.pull_image},
            GET_RESOURCE_SERVICE: {"GetResource": self.get_resource},
        }
        for service, methods in UNSUPPORTED.items():
            services[service] = {name: _not_supported(service, name, type_name) for name, type_name in methods.items()}
        return services

    async def pull_image(self, context: CallContext, payload: bytes) -> bytes:
        request = _decode(payload, "api.ImagePullRequest")
        context.log_fields.update(image=request.image_url, bundle=request.bundle_path)
        try:
            bundle = _bundle_path(request.bundle_path)
            result = await self._puller.pull(request.image_url, bundle=bundle)
        except GuestpullError as err:
            raise _internal(f"Image Pull error: {one_line(err)}") from None
        context.log_fields["digest"] = result.manifest_digest
        try:
            await self._measure(request.image_url, result.manifest_digest)
        except BaseException:
            # The call fails (AA error, deadline, client gone) after the bundle was built: a
            # container that will not run must not leave a mounted rootfs behind.
            await self._puller.remove_bundle(bundle)
            raise
        return proto.ImagePullResponse(manifest_digest=result.manifest_digest).SerializeToString()

    async def _measure(self, image: str, manifest_digest: str) -> None:
        if self._measurer is None:
            return
        try:
            await self._measurer.extend(image, manifest_digest)
        except AttestationAgentError as err:
            raise _internal(f"Attestation Agent client error: {err.message}") from None

    async def get_resource(self, context: CallContext, payload: bytes) -> bytes:
        request = _decode(payload, "api.GetResourceRequest")
        uri = request.ResourcePath
        context.log_fields["resource"] = uri
        try:
            if not is_kbs_uri(uri):
                # The socket serves KBS resources only: never local files.
                raise UsageError(f"resource URI {uri!r} is not a kbs:// URI")
            resource = await self._puller.get_resource(uri)
        except GuestpullError as err:
            raise _internal(f"Get Resource failed: {one_line(err)}") from None
        return proto.GetResourceResponse(Resource=resource).SerializeToString()


def _bundle_path(text: str) -> Path:
    # kata-agent always sends /run/kata-containers/<container-id>; anything else is refused
    # rather than resolved against the service's working directory.
    if not text:
        raise UsageError("bundle_path is empty")
    path = Path(text)
    if not path.is_absolute():
        raise UsageError(f"bundle_path {text!r} is not an absolute path")
    return path


def _not_supported(service: str, method: str, type_name: str) -> Handler:
    async def handler(context: CallContext, payload: bytes) -> bytes:
        _decode(payload, type_name)  # ttrpc-rust decodes the request before calling the method
        raise RpcError(Code.NOT_FOUND, f"/{service}/{method} is not supported")

    return handler

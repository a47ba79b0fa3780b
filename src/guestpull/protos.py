"""The protobuf messages the service speaks, built from descriptors in code (no protoc step).

Three files, as upstream declares them (../shared/reference/cdh-service.md §1, §2):

- ``ttrpc``: the frame payloads (Request, Response, Status, KeyValue);
- ``api`` and ``keyprovider``: the Confidential Data Hub's services;
- ``attestation_agent``: the Attestation Agent's ExtendRuntimeMeasurement and GetToken.

Only field names, numbers and types matter on the wire.  ``Status.details`` is
``repeated google.protobuf.Any`` upstream; an ``Any`` is ``{string type_url = 1; bytes value = 2}``
on the wire, so a local message with those two fields stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

#: The attestation agent's ttrpc service: runtime measurements (the CDH) and KBS tokens.
AA_SERVICE = "attestation_agent.AttestationAgentService"

_F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, INT64, UINT64, INT32, ENUM, MESSAGE = (
    _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_INT64, _F.TYPE_UINT64, _F.TYPE_INT32, _F.TYPE_ENUM, _F.TYPE_MESSAGE,
)


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    type: int
    type_name: str = ""  # ".package.Message" for MESSAGE and ENUM fields
    repeated: bool = False
    optional: bool = False  # proto3 ``optional``: the field has presence


def _message(name: str, *fields: Field, map_entry: bool = False) -> descriptor_pb2.DescriptorProto:
    msg = descriptor_pb2.DescriptorProto(name=name)
    if map_entry:
        msg.options.map_entry = True
    for f in fields:
        proto = msg.field.add(name=f.name, number=f.number, type=f.type, json_name=f.name)
        proto.label = _F.LABEL_REPEATED if f.repeated else _F.LABEL_OPTIONAL
        if f.type_name:
            proto.type_name = f.type_name
        if f.optional:
            # proto3 optional = a synthetic one-field oneof named "_<field>" (what protoc emits).
            proto.proto3_optional = True
            proto.oneof_index = len(msg.oneof_decl)
            msg.oneof_decl.add(name=f"_{f.name}")
    return msg


def _file(name: str, package: str, messages: list[descriptor_pb2.DescriptorProto],
          enums: dict[str, list[str]] | None = None) -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    file.message_type.extend(messages)
    for enum_name, values in (enums or {}).items():
        enum = file.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    return file


def _files() -> list[descriptor_pb2.FileDescriptorProto]:
    ttrpc = _file("ttrpc.proto", "ttrpc", [
        _message("KeyValue", Field("key", 1, STRING), Field("value", 2, STRING)),
        _message("Request", Field("service", 1, STRING), Field("method", 2, STRING),
                 Field("payload", 3, BYTES), Field("timeout_nano", 4, INT64),
                 Field("metadata", 5, MESSAGE, ".ttrpc.KeyValue", repeated=True)),
        _message("Any", Field("type_url", 1, STRING), Field("value", 2, BYTES)),
        _message("Status", Field("code", 1, INT32), Field("message", 2, STRING),
                 Field("details", 3, MESSAGE, ".ttrpc.Any", repeated=True)),
        _message("Response", Field("status", 1, MESSAGE, ".ttrpc.Status"), Field("payload", 2, BYTES)),
    ])
    options_entry = _message("OptionsEntry", Field("key", 1, STRING), Field("value", 2, STRING), map_entry=True)
    secure_mount = _message(
        "SecureMountRequest", Field("volume_type", 1, STRING),
        Field("options", 2, MESSAGE, ".api.SecureMountRequest.OptionsEntry", repeated=True),
        Field("flags", 3, STRING, repeated=True), Field("mount_point", 4, STRING),
    )
    secure_mount.nested_type.append(options_entry)
    api = _file("confidential-data-hub/api.proto", "api", [
        _message("GetResourceRequest", Field("ResourcePath", 1, STRING)),
        _message("GetResourceResponse", Field("Resource", 1, BYTES)),
        _message("ImagePullRequest", Field("image_url", 1, STRING), Field("bundle_path", 2, STRING)),
        _message("ImagePullResponse", Field("manifest_digest", 1, STRING)),
        _message("UnsealSecretInput", Field("secret", 1, BYTES)),
        _message("UnsealSecretOutput", Field("plaintext", 1, BYTES)),
        secure_mount,
        _message("SecureMountResponse"),
    ])
    keyprovider = _file("confidential-data-hub/keyprovider.proto", "keyprovider", [
        _message("KeyProviderKeyWrapProtocolInput", Field("KeyProviderKeyWrapProtocolInput", 1, BYTES)),
        _message("KeyProviderKeyWrapProtocolOutput", Field("KeyProviderKeyWrapProtocolOutput", 1, BYTES)),
    ])
    attestation_agent = _file("attestation-agent/attestation-agent.proto", "attestation_agent", [
        _message("ExtendRuntimeMeasurementRequest", Field("Domain", 1, STRING), Field("Operation", 2, STRING),
                 Field("Content", 3, STRING), Field("RegisterIndex", 4, UINT64, optional=True)),
        _message("ExtendRuntimeMeasurementResponse",
                 Field("Result", 1, ENUM, ".attestation_agent.RuntimeMeasurementResult")),
        _message("GetTokenRequest", Field("TokenType", 1, STRING)),
        _message("GetTokenResponse", Field("Token", 1, BYTES)),
    ], enums={"RuntimeMeasurementResult": ["OK", "NOT_SUPPORTED", "NOT_ENABLED"]})
    return [ttrpc, api, keyprovider, attestation_agent]


def _build_pool() -> descriptor_pool.DescriptorPool:
    # A private pool: these names cannot clash with another library's generated descriptors.
    pool = descriptor_pool.DescriptorPool()
    for file in _files():
        pool.Add(file)
    return pool


_POOL = _build_pool()


def message_class(full_name: str) -> Any:
    """The message class for e.g. ``"api.ImagePullRequest"``."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


# ttrpc frame payloads
Request = message_class("ttrpc.Request")
Response = message_class("ttrpc.Response")
Status = message_class("ttrpc.Status")
KeyValue = message_class("ttrpc.KeyValue")

# Confidential Data Hub
GetResourceRequest = message_class("api.GetResourceRequest")
GetResourceResponse = message_class("api.GetResourceResponse")
ImagePullRequest = message_class("api.ImagePullRequest")
ImagePullResponse = message_class("api.ImagePullResponse")
UnsealSecretInput = message_class("api.UnsealSecretInput")
SecureMountRequest = message_class("api.SecureMountRequest")
KeyWrapInput = message_class("keyprovider.KeyProviderKeyWrapProtocolInput")

# Attestation Agent
ExtendRuntimeMeasurementRequest = message_class("attestation_agent.ExtendRuntimeMeasurementRequest")
ExtendRuntimeMeasurementResponse = message_class("attestation_agent.ExtendRuntimeMeasurementResponse")
GetTokenRequest = message_class("attestation_agent.GetTokenRequest")
GetTokenResponse = message_class("attestation_agent.GetTokenResponse")

#: RuntimeMeasurementResult values.
MEASUREMENT_OK, MEASUREMENT_NOT_SUPPORTED, MEASUREMENT_NOT_ENABLED = 0, 1, 2

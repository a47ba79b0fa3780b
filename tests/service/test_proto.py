"""The messages guestpull builds in code (protos.py) are the ones protoc reads from the
.proto text (tests/service/protos/, copied from upstream): same names, numbers, types, labels
and presence.  protoc is Debian's protobuf-compiler (scripts/setup.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from google.protobuf import descriptor_pb2

from guestpull import protos as proto

PROTOS = Path(__file__).parent / "protos"


def protoc_messages(tmp: Path) -> dict[str, descriptor_pb2.DescriptorProto]:
    protoc = shutil.which("protoc")
    assert protoc, "protoc is missing: bash scripts/setup.sh (protobuf-compiler)"
    out = tmp / "set.pb"
    subprocess.run([protoc, f"-I{PROTOS}", "-I/usr/include", f"--descriptor_set_out={out}",
                    *sorted(p.name for p in PROTOS.glob("*.proto"))], check=True, timeout=60)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    messages = {}
    for file in files.file:
        for message in file.message_type:
            messages[f"{file.package}.{message.name}"] = message
            for nested in message.nested_type:
                messages[f"{file.package}.{message.name}.{nested.name}"] = nested
    return messages


def shape(message: descriptor_pb2.DescriptorProto) -> list[tuple[object, ...]]:
    # Message-typed fields compare by the type's own name: ttrpc.Status.details is
    # google.protobuf.Any upstream and a same-shaped local message here.
    return sorted(
        (f.name, f.number, f.type, f.label, f.type_name.rsplit(".", 1)[-1], f.proto3_optional)
        for f in message.field
    )


def ours() -> dict[str, descriptor_pb2.DescriptorProto]:
    out = {}
    for file in proto._files():  # noqa: SLF001 - the descriptors are what is under test
        for message in file.message_type:
            out[f"{file.package}.{message.name}"] = message
            for nested in message.nested_type:
                out[f"{file.package}.{message.name}.{nested.name}"] = nested
    return out


def test_every_message_matches_protoc(shm_path: Path) -> None:
    upstream = protoc_messages(shm_path)
    built = ours()
    assert set(built) - {"ttrpc.Any"} <= set(upstream)
    assert set(upstream) <= set(built), set(upstream) - set(built)
    for name in sorted(set(built) & set(upstream)):
        assert shape(built[name]) == shape(upstream[name]), name


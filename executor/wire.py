"""Request decoding that turns malformed bytes into field-level errors.

gRPC's default deserializer fails a request with invalid UTF-8 in a string field as INTERNAL
("Exception deserializing request"), which blames the server and names no field. The executor's
methods therefore receive raw bytes and decode them here. When protobuf rejects the bytes, they
are parsed again against a mirror of the message in which every `string` field is `bytes`; each
field that is not valid UTF-8 is then reported by its path (e.g. `files[2].path`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

__all__ = ["MalformedRequest", "decode"]

M = TypeVar("M", bound=Message)


class MalformedRequest(Exception):
    """The request bytes are not a valid message; `violations` are (field, description) pairs."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {desc}" for field, desc in violations))
        self.violations = violations


def decode[M: Message](message_type: type[M], data: bytes) -> M:
    """Parse `data` as `message_type`, raising `MalformedRequest` with field paths on failure."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        pass
    violations = _utf8_violations(message_type.DESCRIPTOR, data)
    raise MalformedRequest(violations or [("request", "is not a valid protobuf message")])


_mirrors: dict[str, type[Message]] = {}


def _mirror_class(descriptor: Any) -> type[Message]:
    """A class for `descriptor`'s message with every string field turned into bytes."""
    cached = _mirrors.get(descriptor.full_name)
    if cached is not None:
        return cached
    file_proto = descriptor_pb2.FileDescriptorProto()
    descriptor.file.CopyToProto(file_proto)
    file_proto.name = "sandboxd_wire_mirror/" + file_proto.name
    file_proto.package = "sandboxd_wire_mirror." + file_proto.package
    del file_proto.service[:]
    for message in file_proto.message_type:
        _strings_to_bytes(message, descriptor.file.package, file_proto.package)
    pool = descriptor_pool.DescriptorPool()
    for dependency in descriptor.file.dependencies:
        dependency_proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(dependency_proto)
        pool.Add(dependency_proto)
    pool.Add(file_proto)
    mirror_name = descriptor.full_name.replace(
        descriptor.file.package, file_proto.package, 1
    )
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(mirror_name))
    _mirrors[descriptor.full_name] = cls
    return cls


def _strings_to_bytes(
    message: descriptor_pb2.DescriptorProto, old_package: str, new_package: str
) -> None:
    for field in message.field:
        if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        if field.type_name.startswith(f".{old_package}."):
            field.type_name = f".{new_package}." + field.type_name[len(old_package) + 2 :]
    for nested in message.nested_type:
        # Map keys cannot be bytes; parse map entries as the repeated messages they are on
        # the wire instead.
        nested.options.ClearField("map_entry")
        _strings_to_bytes(nested, old_package, new_package)


def _utf8_violations(descriptor: Any, data: bytes) -> list[tuple[str, str]]:
    try:
        mirror = _mirror_class(descriptor).FromString(data)
    except DecodeError:
        return []
    violations: list[tuple[str, str]] = []
    _walk(descriptor, mirror, "", violations)
    return violations


def _walk(
    descriptor: Any, mirror: Any, prefix: str, out: list[tuple[str, str]]
) -> None:
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        value = getattr(mirror, field.name)
        is_map = (
            field.message_type is not None and field.message_type.GetOptions().map_entry
        )
        if is_map:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for entry in value:
                key, item = entry.key, entry.value
                if key_field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(key):
                    out.append((f"{path} key", "is not valid UTF-8"))
                if value_field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(item):
                    label = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
                    out.append((f"{path}[{label!r}]", "is not valid UTF-8"))
            continue
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if repeated else path
            if field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(item):
                out.append((item_path, "is not valid UTF-8"))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(field.message_type, item, item_path + ".", out)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

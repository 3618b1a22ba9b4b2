"""Checks of the SDK's arguments, refusing a wrong type or sign by the argument's name.

Every SDK call checks what it can tell without the server before anything is sent (a number
given as a string, a bare string where a list belongs, a negative size) and raises
`InvalidArgumentError` whose one `FieldViolation` names the argument. Left to protobuf or gRPC,
the same mistakes surface as a `TypeError` naming no field, or as "Exception iterating
requests!" from a streaming call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sandboxd._errors import FieldViolation, InvalidArgumentError

__all__ = [
    "byte_count",
    "bytes_or_text",
    "checked",
    "contents",
    "milliseconds",
    "optional_text",
    "refuse",
    "seconds",
    "strings",
    "text",
    "text_mapping",
]

BYTES_LIKE = (bytes, bytearray, memoryview)
_INTEGER_TYPES = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
})
_UNSIGNED_TYPES = frozenset({
    FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
})


def refuse(argument: str, description: str) -> InvalidArgumentError:
    """The error for `argument`, which `description` says is wrong."""
    return InvalidArgumentError(f"{argument} {description}",
                                field_violations=[FieldViolation(argument, description)])


def _type_name(value: object) -> str:
    return type(value).__name__


def text(argument: str, value: object) -> str:
    if not isinstance(value, str):
        raise refuse(argument, f"must be a string, not {_type_name(value)}")
    return value


def optional_text(argument: str, value: object) -> str:
    """`value`, or "" (the wire's "not set") for None."""
    return "" if value is None else text(argument, value)


def seconds(argument: str, value: object) -> float | None:
    """A positive, finite number of seconds, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(argument, f"must be a number of seconds, not {_type_name(value)}")
    if not math.isfinite(value) or value <= 0:
        raise refuse(argument, f"must be a positive number of seconds, not {value}")
    return float(value)


def milliseconds(argument: str, value: object) -> int:
    """`seconds` on the wire: whole milliseconds, rounded up (0, the default, for None)."""
    given = seconds(argument, value)
    # Rounded up: a sub-millisecond limit must not become 0, which means "the default".
    return math.ceil(given * 1000) if given is not None else 0


def byte_count(argument: str, value: object) -> int:
    """A size in bytes (0 for None: the server's default)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(argument, f"must be a whole number of bytes, not {_type_name(value)}")
    if value < 0:
        raise refuse(argument, f"must not be negative, not {value}")
    return value


def strings(argument: str, value: object) -> list[str]:
    """A list of strings ([] for None); a bare string is refused, not split into characters."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise refuse(argument, f"must be a list of strings, not {_type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise refuse(f"{argument}[{index}]", f"must be a string, not {_type_name(item)}")
    return list(value)


def text_mapping(argument: str, value: object) -> dict[str, str]:
    """A mapping of strings to strings ({} for None)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise refuse(argument, f"must be a mapping of names to strings, not {_type_name(value)}")
    for name, item in value.items():
        if not isinstance(name, str):
            raise refuse(argument, f"names must be strings, not {_type_name(name)}")
        if not isinstance(item, str):
            raise refuse(f"{argument}[{name!r}]", f"must be a string, not {_type_name(item)}")
    return dict(value)


def bytes_or_text(argument: str, value: object) -> bytes:
    """Bytes as given, text encoded as UTF-8 (b"" for None)."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, BYTES_LIKE):
        return bytes(value)
    raise refuse(argument, f"must be bytes or str, not {_type_name(value)}")


def contents(argument: str, value: object) -> list[tuple[str, bytes]]:
    """Files given as {path: bytes or str}, as (path, bytes) pairs ([] for None)."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise refuse(argument, f"must be a mapping of paths to contents, not {_type_name(value)}")
    pairs = []
    for path, content in value.items():
        if not isinstance(path, str):
            raise refuse(argument, f"paths must be strings, not {_type_name(path)}")
        pairs.append((path, bytes_or_text(f"{argument}[{path!r}]", content)))
    return pairs


def permission_bits(argument: str, value: object, paths: Sequence[str]) -> dict[str, int]:
    """Modes given as {path: 0o755} for some of `paths`, checked ({} for None)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise refuse(argument, f"must be a mapping of paths to modes, not {_type_name(value)}")
    modes = {}
    for path, mode in value.items():
        if path not in paths:
            raise refuse(f"{argument}[{path!r}]", "names no file given in files")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise refuse(f"{argument}[{path!r}]",
                         f"must be permission bits such as 0o755, not {mode!r}")
        modes[path] = mode
    return modes


def checked[M: Message](cls: type[M], **fields: Any) -> M:
    """`cls(**fields)`, after checking each scalar field's type against the message's schema.

    The SDK's argument names are the wire's field names wherever this is used, so the error
    names the argument the caller got wrong.
    """
    descriptors = cls.DESCRIPTOR.fields_by_name
    for name, value in fields.items():
        field = descriptors[name]
        if field.is_repeated or field.message_type is not None:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            text(name, value)
        elif field.type == FieldDescriptor.TYPE_BOOL and not isinstance(value, bool):
            raise refuse(name, f"must be True or False, not {_type_name(value)}")
        elif field.type in _INTEGER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int):
                raise refuse(name, f"must be a whole number, not {_type_name(value)}")
            if value < 0 and field.type in _UNSIGNED_TYPES:
                raise refuse(name, f"must not be negative, not {value}")
    return cls(**fields)

"""`run_code`'s arguments checked and turned into an `ExecuteRequest` (shared by both clients).

What the SDK can tell without the server (a type, a sign, a bare string where a list belongs)
is refused here with `InvalidArgumentError` naming the argument, before anything is sent; limits
that depend on the server's settings are the server's to check, and its `BadRequest` names the
wire field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sandboxd._errors import FieldViolation, InvalidArgumentError
from sandboxd.v1 import executor_pb2 as pb

__all__ = ["FilesArg", "build_request", "call_deadline"]

DEADLINE_SLACK_S = 30.0
"""Added to the execution timeout to form the call deadline (queueing, transfer)."""

LANGUAGES = {
    "python": pb.LANGUAGE_PYTHON,
    "javascript": pb.LANGUAGE_JAVASCRIPT,
    "js": pb.LANGUAGE_JAVASCRIPT,
    "wasi": pb.LANGUAGE_WASI,
    "shell": pb.LANGUAGE_SHELL,
    "bash": pb.LANGUAGE_SHELL,
    "command": pb.LANGUAGE_COMMAND,
}
ISOLATES = {"auto": pb.ISOLATE_KIND_AUTO, "wasm": pb.ISOLATE_KIND_WASM,
            "jail": pb.ISOLATE_KIND_JAIL}
_BYTES_LIKE = (bytes, bytearray, memoryview)

FilesArg = Mapping[str, bytes | bytearray | memoryview | str] | None


def _refuse(argument: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{argument} {description}",
                                field_violations=[FieldViolation(argument, description)])


def _type_name(value: object) -> str:
    return type(value).__name__


def _optional_str(argument: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _refuse(argument, f"must be a string, not {_type_name(value)}")
    return value


def _seconds(argument: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(argument, f"must be a number of seconds, not {_type_name(value)}")
    if not math.isfinite(value) or value <= 0:
        raise _refuse(argument, f"must be a positive number of seconds, not {value}")
    return float(value)


def _byte_count(argument: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(argument, f"must be a whole number of bytes, not {_type_name(value)}")
    if value < 0:
        raise _refuse(argument, f"must not be negative, not {value}")
    return value


def _strings(argument: str, value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        # A bare string would be taken apart character by character.
        raise _refuse(argument, f"must be a list of strings, not {_type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _refuse(f"{argument}[{index}]", f"must be a string, not {_type_name(item)}")
    return list(value)


def _env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _refuse("env", f"must be a mapping of names to strings, not {_type_name(value)}")
    for name, text in value.items():
        if not isinstance(name, str):
            raise _refuse("env", f"names must be strings, not {_type_name(name)}")
        if not isinstance(text, str):
            raise _refuse(f"env[{name!r}]", f"must be a string, not {_type_name(text)}")
    return dict(value)


def _files(value: object) -> list[pb.File]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _refuse("files", f"must be a mapping of paths to contents, not {_type_name(value)}")
    files = []
    for path, content in value.items():
        if not isinstance(path, str):
            raise _refuse("files", f"paths must be strings, not {_type_name(path)}")
        if isinstance(content, str):
            data = content.encode()
        elif isinstance(content, _BYTES_LIKE):
            data = bytes(content)
        else:
            raise _refuse(f"files[{path!r}]", f"must be bytes or str, not {_type_name(content)}")
        files.append(pb.File(path=path, content=data))
    return files


def _bytes_or_text(argument: str, value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    raise _refuse(argument, f"must be bytes or str, not {_type_name(value)}")


def build_request(
    code: str,
    language: str,
    *,
    timeout: float | None,
    files: FilesArg,
    env: Mapping[str, str] | None,
    stdin: bytes | str | None,
    isolate: str,
    memory: int | None,
    output_limit: int | None,
    output_paths: Sequence[str] | None,
    argv: Sequence[str] | None,
    module: bytes | bytearray | None,
    facet: str | None,
    output_repo: str | None,
    output_branch: str | None,
) -> pb.ExecuteRequest:
    """The request `run_code` sends, or `InvalidArgumentError` naming the argument at fault."""
    if not isinstance(code, str):
        raise _refuse("code", f"must be a string, not {_type_name(code)}")
    if language not in LANGUAGES:
        raise _refuse("language", f"must be one of {', '.join(sorted(LANGUAGES))}, "
                                  f"not {language!r}")
    if isolate not in ISOLATES:
        raise _refuse("isolate", f"must be auto, wasm or jail, not {isolate!r}")
    seconds = _seconds("timeout", timeout)
    if module is not None and not isinstance(module, _BYTES_LIKE):
        raise _refuse("module", f"must be bytes, not {_type_name(module)}")
    request: dict[str, Any] = {
        "language": LANGUAGES[language],
        "code": code,
        "module": bytes(module) if module else b"",
        "argv": _strings("argv", argv),
        "stdin": _bytes_or_text("stdin", stdin),
        "env": _env(env),
        "files": _files(files),
        "isolate": ISOLATES[isolate],
        "limits": pb.Limits(
            timeout_ms=math.ceil(seconds * 1000) if seconds else 0,
            memory_bytes=_byte_count("memory", memory),
            output_bytes=_byte_count("output_limit", output_limit),
        ),
        "output_paths": _strings("output_paths", output_paths),
        "facet": _optional_str("facet", facet),
        "output_repo": _optional_str("output_repo", output_repo),
        "output_branch": _optional_str("output_branch", output_branch),
    }
    return pb.ExecuteRequest(**request)


def call_deadline(timeout: float | None, request_timeout: float | None) -> float | None:
    """The gRPC deadline of a `run_code` call: `request_timeout`, or the timeout plus slack."""
    if request_timeout is not None:
        return _seconds("request_timeout", request_timeout)
    return (timeout or 300.0) + DEADLINE_SLACK_S

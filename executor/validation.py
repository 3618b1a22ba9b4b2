"""Validation of ExecuteRequest: wire message in, trusted `ExecutionRequest` out.

Every check reports the field by its path and the limit it broke; all violations of a request
are collected so the caller can fix them at once. Limits are never read as "unlimited": zero
means the server default, anything above the configured maximum is refused.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from executor.config import Settings
from isolates.base import (
    ExecutionRequest,
    InputFile,
    IsolateKind,
    Language,
    Limits,
    bytes_text,
    validate_relative_path,
)
from sandboxd.v1 import executor_pb2 as pb

__all__ = ["FACET_NAME", "ValidatedExecute", "ValidationFailed", "validate_execute"]

FACET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
MAX_ARGV = 4096
MAX_OUTPUT_PATHS = 256

_LANGUAGES = {
    pb.LANGUAGE_PYTHON: Language.PYTHON,
    pb.LANGUAGE_JAVASCRIPT: Language.JAVASCRIPT,
    pb.LANGUAGE_WASI: Language.WASI,
    pb.LANGUAGE_SHELL: Language.SHELL,
    pb.LANGUAGE_COMMAND: Language.COMMAND,
}
_KINDS = {
    pb.ISOLATE_KIND_AUTO: None,
    pb.ISOLATE_KIND_WASM: IsolateKind.WASM,
    pb.ISOLATE_KIND_JAIL: IsolateKind.JAIL,
}


class ValidationFailed(Exception):
    """The request broke one or more rules; `violations` are (field, description) pairs."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {desc}" for field, desc in violations))
        self.violations = violations


@dataclass(frozen=True)
class ValidatedExecute:
    """A request that passed validation, with what the executor needs beyond the isolate."""

    request: ExecutionRequest
    requested_kind: IsolateKind | None
    output_repo: str
    output_branch: str


def validate_execute(message: pb.ExecuteRequest, settings: Settings) -> ValidatedExecute:
    """Check `message` against `settings` and build the isolate request.

    Raises:
        ValidationFailed: with every violated field.
    """
    errors: list[tuple[str, str]] = []

    language = _LANGUAGES.get(message.language)
    if message.language == pb.LANGUAGE_UNSPECIFIED:
        errors.append(("language", "is required (python, javascript, wasi, shell, command)"))
    elif language is None:
        errors.append(("language", f"unknown value {message.language}"))

    if message.isolate not in _KINDS:
        errors.append(("isolate", f"unknown value {message.isolate}"))
    requested_kind = _KINDS.get(message.isolate)

    _check_code(message, language, settings, errors)
    # Fields left empty skip their checks: most requests set few, and each check costs tens of
    # microseconds of a call after an idle pause (0.21 -> 0.10 ms for a bare `print(1)`).
    if message.argv or language is Language.COMMAND:
        _check_argv(message, language, errors)
    if len(message.stdin) > settings.max_stdin_bytes:
        errors.append(("stdin", f"is {len(message.stdin)} bytes; the limit is "
                       f"{settings.max_stdin_bytes}"))
    if message.env:
        _check_env(message, settings, errors)
    files = _check_files(message, settings, errors) if message.files else []
    if message.output_paths:
        _check_output_paths(message, errors)
    limits = _check_limits(message, settings, errors)

    if message.facet:
        if not FACET_NAME.match(message.facet):
            errors.append(("facet", "must match [a-z0-9][a-z0-9_-]{0,62}"))
        elif language is Language.JAVASCRIPT:
            errors.append(("facet", "javascript isolates cannot open a facet (no SQLite)"))
        elif language is Language.WASI:
            errors.append(("facet", "wasi modules cannot open a facet"))
    if message.output_branch and not message.output_repo:
        errors.append(("output_branch", "needs output_repo"))
    if message.output_repo and not message.output_paths:
        errors.append(("output_repo", "needs output_paths naming the files to commit"))

    if errors or language is None or limits is None:
        raise ValidationFailed(errors)

    request = ExecutionRequest(
        execution_id=_new_execution_id(),
        language=language,
        code=message.code,
        module=message.module,
        argv=tuple(message.argv),
        stdin=message.stdin,
        env=dict(message.env),
        files=tuple(files),
        output_paths=tuple(message.output_paths),
        limits=limits,
        facet=message.facet,
    )
    return ValidatedExecute(
        request=request,
        requested_kind=requested_kind,
        output_repo=message.output_repo,
        output_branch=message.output_branch or "main",
    )


def _check_code(
    message: pb.ExecuteRequest,
    language: Language | None,
    settings: Settings,
    errors: list[tuple[str, str]],
) -> None:
    code_bytes = len(message.code.encode())
    if code_bytes > settings.max_code_bytes:
        errors.append(("code", f"is {code_bytes} bytes; the limit is {settings.max_code_bytes}"))
    if "\x00" in message.code:
        errors.append(("code", "contains a NUL byte"))
    if language in (Language.PYTHON, Language.JAVASCRIPT, Language.SHELL) and not message.code:
        errors.append(("code", f"is required for language {language.value}"))
    if language is Language.WASI:
        if not message.module:
            errors.append(("module", "is required for language wasi"))
        elif len(message.module) > settings.max_module_bytes:
            errors.append(("module", f"is {len(message.module)} bytes; the limit is "
                           f"{settings.max_module_bytes}"))
    elif message.module:
        errors.append(("module", "is only used with language wasi"))


def _check_argv(
    message: pb.ExecuteRequest, language: Language | None, errors: list[tuple[str, str]]
) -> None:
    if len(message.argv) > MAX_ARGV:
        errors.append(("argv", f"has {len(message.argv)} items; the limit is {MAX_ARGV}"))
    for index, arg in enumerate(message.argv):
        if "\x00" in arg:
            errors.append((f"argv[{index}]", "contains a NUL byte"))
    if language is Language.COMMAND and (not message.argv or not message.argv[0]):
        errors.append(("argv", "is required for language command (argv[0] is the program)"))


def _check_env(
    message: pb.ExecuteRequest, settings: Settings, errors: list[tuple[str, str]]
) -> None:
    if len(message.env) > settings.max_env_vars:
        errors.append(("env", f"has {len(message.env)} variables; the limit is "
                       f"{settings.max_env_vars}"))
    for name, value in message.env.items():
        if not ENV_NAME.match(name):
            errors.append((f"env[{name!r}]", "name must match [A-Za-z_][A-Za-z0-9_]*"))
        if "\x00" in value:
            errors.append((f"env[{name!r}]", "value contains a NUL byte"))


def _check_files(
    message: pb.ExecuteRequest, settings: Settings, errors: list[tuple[str, str]]
) -> list[InputFile]:
    if len(message.files) > settings.max_files:
        errors.append(("files", f"has {len(message.files)} files; the limit is "
                       f"{settings.max_files}"))
        return []
    total = sum(len(f.content) for f in message.files)
    if total > settings.max_files_bytes:
        errors.append(("files", f"hold {total} bytes; the limit is {settings.max_files_bytes}"))
    files: list[InputFile] = []
    seen: set[str] = set()
    for index, file in enumerate(message.files):
        problem = validate_relative_path(file.path)
        if problem:
            errors.append((f"files[{index}].path", problem))
            continue
        if file.path in seen:
            errors.append((f"files[{index}].path", f"duplicates {file.path!r}"))
            continue
        if file.mode > 0o777:
            errors.append((f"files[{index}].mode", "must be permission bits (at most 0o777)"))
            continue
        seen.add(file.path)
        files.append(InputFile(path=file.path, content=file.content, mode=file.mode or 0o644))
    return files


def _check_output_paths(message: pb.ExecuteRequest, errors: list[tuple[str, str]]) -> None:
    if len(message.output_paths) > MAX_OUTPUT_PATHS:
        errors.append(("output_paths", f"has {len(message.output_paths)} paths; the limit is "
                       f"{MAX_OUTPUT_PATHS}"))
        return
    seen: set[str] = set()
    for index, path in enumerate(message.output_paths):
        problem = validate_relative_path(path)
        if problem:
            errors.append((f"output_paths[{index}]", problem))
        elif path in seen:
            errors.append((f"output_paths[{index}]", f"duplicates {path!r}"))
        seen.add(path)


def _check_limits(
    message: pb.ExecuteRequest, settings: Settings, errors: list[tuple[str, str]]
) -> Limits | None:
    limits = message.limits
    before = len(errors)
    max_timeout_ms = int(settings.max_timeout_s * 1000)
    # Units spelled out: SDKs take seconds, the wire carries milliseconds.
    if limits.timeout_ms > max_timeout_ms:
        errors.append(("limits.timeout_ms", f"is {limits.timeout_ms} ms; the limit is "
                       f"{max_timeout_ms} ms ({settings.max_timeout_s:g} s)"))
    if limits.memory_bytes > settings.max_memory_bytes:
        errors.append(("limits.memory_bytes", f"is {limits.memory_bytes} bytes; the limit is "
                       f"{bytes_text(settings.max_memory_bytes)}"))
    elif 0 < limits.memory_bytes < 16 * 1024**2:
        errors.append(("limits.memory_bytes", "must be at least 16777216 bytes (16 MiB)"))
    if limits.output_bytes > settings.max_output_bytes:
        errors.append(("limits.output_bytes", f"is {limits.output_bytes} bytes; the limit is "
                       f"{bytes_text(settings.max_output_bytes)}"))
    if limits.cpu_ms > max_timeout_ms:
        errors.append(("limits.cpu_ms", f"is {limits.cpu_ms} ms; the limit is {max_timeout_ms} ms "
                       f"({settings.max_timeout_s:g} s)"))
    if len(errors) > before:
        return None
    if not (limits.timeout_ms or limits.memory_bytes or limits.output_bytes or limits.cpu_ms):
        return _default_limits(settings.default_timeout_s, settings.default_memory_bytes,
                               settings.default_output_bytes)
    return Limits(
        timeout_s=limits.timeout_ms / 1000 if limits.timeout_ms else settings.default_timeout_s,
        memory_bytes=limits.memory_bytes or settings.default_memory_bytes,
        output_bytes=limits.output_bytes or settings.default_output_bytes,
        cpu_s=limits.cpu_ms / 1000 if limits.cpu_ms else None,
    )


_IDS_PER_DRAW = 256
_unused_ids: list[str] = []
# A forked child must not hand out the ids its parent still holds.
os.register_at_fork(after_in_child=_unused_ids.clear)


def _new_execution_id() -> str:
    """A random execution id: 32 hex digits, like a uuid4's hex, from the OS's random source.

    Drawn 256 at a time: one `getrandom` call per id took 0.02 ms of a call after an idle
    pause, most of the id's cost. `list.pop` hands each out once, whichever thread asks.
    """
    try:
        return _unused_ids.pop()
    except IndexError:
        digits = os.urandom(16 * _IDS_PER_DRAW).hex()
        _unused_ids.extend(digits[i:i + 32] for i in range(32, len(digits), 32))
        return digits[:32]


@functools.cache
def _default_limits(timeout_s: float, memory_bytes: int, output_bytes: int) -> Limits:
    """The limits of a request that sets none: one (frozen) instance per server's defaults.

    Building a model costs 0.1 ms of a call after an idle pause; most requests set no limit.
    """
    return Limits(timeout_s=timeout_s, memory_bytes=memory_bytes, output_bytes=output_bytes)

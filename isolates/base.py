"""The isolate contract shared by every isolate kind, the pool and the executor.

An isolate runs exactly one `ExecutionRequest` and is then destroyed. Each kind (wasm/, jail/)
provides an `IsolateFactory` per runtime; the pool keeps warm isolates of each runtime ready.
Nothing here knows about gRPC: the executor translates the wire messages into these models.

The models are validated once, at the edge (executor/validation.py); isolates trust them.
`Limits`, which carries constraints, is a pydantic model; the request and the result are plain
dataclasses, built once or twice on every execution's path: a pydantic model took 0.05 ms to
build after an idle pause, a dataclass 0.02 ms.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Language(enum.StrEnum):
    """What the request's code is written in."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    WASI = "wasi"
    SHELL = "shell"
    COMMAND = "command"


class IsolateKind(enum.StrEnum):
    """The isolation mechanism."""

    WASM = "wasm"
    JAIL = "jail"


class Status(enum.StrEnum):
    """How an execution ended. Every user-caused ending is a status, never an exception."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SECURITY_VIOLATION = "security_violation"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class Limits(BaseModel):
    """Resource limits of one execution, already clamped to the configured maxima."""

    model_config = ConfigDict(frozen=True)

    timeout_s: float = Field(default=10.0, gt=0)
    """Wall-clock limit of the user code, in seconds."""
    memory_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Memory limit of the isolate (wasm linear memory, jail cgroup memory)."""
    output_bytes: int = Field(default=1024 * 1024, gt=0)
    """Bytes kept of stdout and of stderr each; more is counted and dropped."""
    cpu_s: float | None = Field(default=None, gt=0)
    """CPU-time limit (jail only); None means the wall limit applies alone."""


def seconds_text(seconds: float) -> str:
    """A limit in seconds for messages: at most millisecond precision ("0.107", "10")."""
    # A limit capped by the call's deadline is whatever time was left, e.g. 0.106985 s.
    return f"{round(seconds, 3):g}"


def bytes_text(n: int) -> str:
    """A size in bytes for messages, with its MiB: "1073741824 bytes (1024 MiB)"."""
    return f"{n} bytes ({n / 1024**2:g} MiB)"


def wall_time_message(timeout_s: float) -> str:
    """The message of a TIMEOUT result, in the same words from every isolate kind."""
    return f"wall-time limit of {seconds_text(timeout_s)} s reached"


def memory_message(memory_bytes: int) -> str:
    """The message of a MEMORY_LIMIT result, in the same words from every isolate kind."""
    return f"memory limit of {memory_bytes} bytes reached"


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFile:
    """A file placed in the working directory before the code runs."""

    path: str
    """Relative POSIX path inside the working directory (validated: no `..`, not absolute)."""
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputFile:
    """A file the code left at one of the requested output paths."""

    path: str
    content: bytes
    truncated: bool = False
    size: int = 0
    """The file's full size on disk (content may be cut at the output cap)."""
    error: str = ""
    """Why the file could not be returned (missing, a symlink, a directory, too large)."""
    executable: bool = False
    """An execute bit is set (JAIL isolates; WASI has no permission bits, so never in WASM)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionRequest:
    """One unit of work for one isolate."""

    execution_id: str
    language: Language
    code: str = ""
    """Source code (python, javascript, shell)."""
    module: bytes = b""
    """The wasm module bytes (language WASI)."""
    argv: tuple[str, ...] = ()
    """argv for WASI modules and COMMAND executions (argv[0] is the program)."""
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    files: tuple[InputFile, ...] = ()
    output_paths: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    facet: str = ""
    """Name of the facet database visible at /facet/db.sqlite, or empty for none."""


@dataclass(slots=True, kw_only=True)
class Timings:
    """Where the time of one execution went, in microseconds."""

    queued_us: int = 0
    acquire_us: int = 0
    run_us: int = 0
    total_us: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResult:
    """What an isolate reports after running a request."""

    status: Status
    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_total_bytes: int = 0
    stderr_total_bytes: int = 0
    files: tuple[OutputFile, ...] = ()
    message: str = ""
    """A human-readable explanation of a non-OK status (e.g. which limit was hit)."""
    run_us: int = 0


OutputSink = Callable[[str, bytes], None]
"""Called with ("stdout" | "stderr", chunk) as output is produced, from a worker thread."""


def validate_relative_path(path: str) -> str | None:
    """Return why `path` is not a safe relative POSIX path, or None when it is.

    Shared by the executor's request validation and by the isolates' own defensive checks.
    """
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL byte"
    if path.startswith("/"):
        return "is absolute"
    if "\\" in path:
        return "contains a backslash"
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".") for part in path.split("/")):
        return "contains '.' or '..' components"
    if not parts or any(part == "" for part in path.split("/")):
        return "has an empty component"
    if len(path.encode()) > 4096:
        return "is longer than 4096 bytes"
    return None


class InvalidRequest(ValueError):
    """The request cannot run in this isolate, through no fault of sandboxd.

    For example a module that is not valid wasm. The executor answers INVALID_ARGUMENT naming
    `field`.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class CancelToken:
    """Set by the caller to ask a running isolate to stop (a cancelled or expired call)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Request cancellation and run the registered callbacks once."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested."""
        return self._event.is_set()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when cancelled (immediately if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()


class Isolate(ABC):
    """One single-use sandbox. Created warm by a factory, run once, then destroyed."""

    kind: IsolateKind
    runtime: str

    @abstractmethod
    def run(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ExecutionResult:
        """Run `request` to completion (blocking; call it off the event loop).

        Must never raise for anything the user's code does: limits, crashes and hostile
        behaviour end in a result status. Raises only for faults of sandboxd itself.
        """

    async def run_on_loop(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
        spare_cpu: bool = False,
    ) -> ExecutionResult:
        """Run `request` awaiting on the running event loop instead of blocking a thread.

        Only isolates of factories with `runs_on_loop` have it: those whose run, on the host,
        is waiting on pipes. Same contract as `run`. With `spare_cpu` (`WarmPool.take_warm`
        says when), the isolate may spend CPU that would otherwise sit idle to answer sooner.
        """
        raise NotImplementedError(f"{type(self).__name__} runs on a worker thread only")

    @abstractmethod
    def destroy(self) -> None:
        """Release every resource (processes, files, memory). Idempotent."""


class IsolateFactory(ABC):
    """Creates warm isolates of one runtime (e.g. wasm/python, jail/python)."""

    kind: IsolateKind
    runtime: str
    runs_on_loop: ClassVar[bool] = False
    """Whether its isolates have `Isolate.run_on_loop`: a run that waits on pipes (a jail's)
    can be awaited on the event loop, sparing the hand-offs to and from a worker thread. A run
    that computes on the host's CPU (wasm) must block a thread, never the loop."""

    @property
    def key(self) -> str:
        """The pool key: "<kind>/<runtime>"."""
        return f"{self.kind.value}/{self.runtime}"

    @abstractmethod
    def create(self, *, facet_dir: Path | None = None) -> Isolate:
        """Create one isolate, ready to run (blocking).

        Args:
            facet_dir: a host directory holding a facet database (db.sqlite) to show to the
                guest read-write at /facet. Pooled isolates are created without one; an
                execution with a facet gets an isolate created for it on the spot, because
                WASI preopens and jail mounts are fixed when the isolate is created.
        """

    def create_for_immediate_use(self, *, facet_dir: Path | None = None) -> Isolate:
        """Create an isolate that runs at once (a pool miss, a facet execution).

        Kinds whose `create()` does work only a pooled isolate benefits from (pre-touching
        memory for a faster first run) skip it here; the default is `create()`.
        """
        return self.create(facet_dir=facet_dir)

    def check(self, request: ExecutionRequest) -> None:  # noqa: B027 - optional hook
        """Refuse a request this runtime cannot run, before an isolate is spent on it.

        Raises:
            InvalidRequest: naming the field at fault.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources (engines, caches) at shutdown."""

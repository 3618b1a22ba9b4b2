"""What the three wasm runtimes share: guest paths, WASI set-up, classifying how a call ended.

A guest call ends normally, or with a wasmtime error. The error's cause is decided from what the
host itself observed, never from the guest's say-so: the store's `Watch` (timeout, cancel), the
`OutputCapture` (output cap), a WASI exit (`ExitTrap`), or the memory limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import wasmtime

from isolates.base import (
    ExecutionRequest,
    OutputFile,
    Status,
    memory_message,
    wall_time_message,
)
from isolates.wasm.engine import Watch
from isolates.wasm.output import OutputCapture
from isolates.wasm.scratch import ScratchDir

GUEST_CWD = "/workspace"
"""Where the scratch directory appears inside the guest (also its working directory)."""
GUEST_FACET = "/facet"
"""Where a facet directory appears inside the guest."""


def wasi_config(
    scratch: ScratchDir,
    facet_dir: Path | None,
    *,
    readonly_dirs: tuple[tuple[Path, str], ...] = (),
) -> wasmtime.WasiConfig:
    """Return a WasiConfig that shows the guest its scratch dir (and facet dir) and nothing else.

    No stdio is inherited: stdin is empty unless the caller sets it, stdout and stderr go
    nowhere unless intercepted (wasi_core.py) or captured in the guest (Python).
    """
    config = wasmtime.WasiConfig()
    config.preopen_dir(str(scratch.path), GUEST_CWD)
    for host_dir, guest_dir in readonly_dirs:
        config.preopen_dir(str(host_dir), guest_dir, fs_mutable=False)
    if facet_dir is not None:
        config.preopen_dir(str(facet_dir), GUEST_FACET)
    return config


@dataclass
class Ending:
    """How a guest call ended, as the parts of an ExecutionResult."""

    status: Status
    exit_code: int
    message: str = ""


def drop_traceback(exc: BaseException) -> None:
    """Forget where a guest trap was raised, so its Store is freed now, not at the next GC.

    wasmtime-py raises traps from a frame that keeps the exception in a local variable: the
    exception, its traceback and that frame form a reference cycle, and the traceback's other
    frames hold the Store, whose linear memory and preopened descriptors would then live until
    the cyclic garbage collector runs.
    """
    exc.__traceback__ = None


def classify_error(
    exc: Exception, watch: Watch, capture: OutputCapture, request: ExecutionRequest
) -> Ending:
    """Turn a wasmtime error raised by a guest call into a status and message."""
    if isinstance(exc, wasmtime.ExitTrap):
        code = exc.code
        return Ending(Status.OK if code == 0 else Status.ERROR, code)
    decided = ending_for_reason(watch.reason, capture, request)
    if decided is not None:
        return decided
    text = str(exc)
    if _looks_like_memory_exhaustion(text):
        return Ending(Status.MEMORY_LIMIT, 137,
                      memory_message(request.limits.memory_bytes))
    first = _cause_line(text)
    return Ending(Status.ERROR, 1, f"the guest trapped: {first}")


def ending_for_reason(
    reason: str, capture: OutputCapture, request: ExecutionRequest
) -> Ending | None:
    """The ending for a stop the host decided (timeout, cancel, output cap), if any."""
    if reason == "cancelled":
        return Ending(Status.CANCELLED, 130, "execution cancelled")
    if reason == "timeout":
        limit = request.limits.timeout_s
        return Ending(Status.TIMEOUT, 124, wall_time_message(limit))
    if reason == "output" or capture.overflowed is not None:
        return Ending(Status.OUTPUT_LIMIT, 1, capture.message())
    if reason == "descriptors":
        return Ending(Status.ERROR, 1, "stopped: the server ran short of file descriptors "
                                       "(too many files open in WebAssembly isolates)")
    return None


def _looks_like_memory_exhaustion(text: str) -> bool:
    lowered = text.lower()
    return any(
        hint in lowered
        for hint in ("memory limit", "out of memory", "forcing trap when growing memory")
    )


def _cause_line(text: str) -> str:
    # wasmtime errors read "error while executing at wasm backtrace: ... Caused by: <why>".
    if "Caused by:" in text:
        tail = text.split("Caused by:", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else text
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:500] if lines else "unknown error"


def collect_outputs(scratch: ScratchDir, request: ExecutionRequest) -> tuple[OutputFile, ...]:
    """Read the requested output files back from the scratch directory (links not followed)."""
    cap = request.limits.output_bytes
    return tuple(scratch.read_output(path, cap) for path in request.output_paths)

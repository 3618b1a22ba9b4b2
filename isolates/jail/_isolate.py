"""One warm jail: an nsjail process whose driver waits for a single request.

`run()` sends the request, relays streamed output, waits for the driver's report with a
backstop deadline, reads the cgroup's OOM counter and classifies the outcome. `destroy()` sends
SIGTERM to nsjail (which kills the jail), SIGKILL only after a grace period, then removes
the jail's cgroups and the jail's state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    Isolate,
    IsolateKind,
    Language,
    Limits,
    OutputFile,
    OutputSink,
    Status,
    validate_relative_path,
)
from isolates.jail._cgroups import JailCgroup
from isolates.jail._classify import classify
from isolates.jail._protocol import (
    FrameEOF,
    FrameReader,
    FrameTimeout,
    b64,
    encode_request,
    wait_readable,
)
from isolates.jail._settings import JailSettings

LANGUAGES = frozenset({Language.PYTHON, Language.SHELL, Language.COMMAND})
"""What a JAIL isolate runs."""
MIN_MEMORY_BYTES = 32 * 1024 * 1024
"""Lowest memory limit applied: below it the warm driver alone would not fit."""
SPARE_CPU_POLL_S = 0.001
"""How long the driver polls for the program's end, from the request, when the host has CPU
to spare. Sleeping instead, the driver was woken 0.06-0.1 ms after `print(1)` ended: an idle
vCPU halts, and waking it takes that long on the development VM. Polling covers a short
program's whole run and costs at most this much CPU per execution (docs/jail.md)."""


def clamp_memory(memory_bytes: int, settings: JailSettings) -> int:
    """The memory limit a request gets: its own, within [MIN_MEMORY_BYTES, the factory's max]."""
    return max(MIN_MEMORY_BYTES, min(memory_bytes, settings.max_memory_bytes))


def initial_memory_limit(settings: JailSettings) -> int:
    """The memory limit a warm jail waits under: what a request with default limits gets.

    Set when the jail is created, so the common request needs no cgroup write on its path;
    `run()` changes it only for requests that ask for another limit.
    """
    return clamp_memory(Limits().memory_bytes, settings)


def wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until `process` exits and reap it; return False if it still runs after `timeout_s`.

    Waits on a pidfd: `Popen.wait(timeout)` polls with growing sleeps, which added milliseconds
    to every teardown (and executors destroy a jail before they answer).
    """
    if process.returncode is not None:
        return True  # already reaped: its pid may belong to another process by now
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # a kernel without pidfds
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        # An unreaped child keeps its pid, so the pidfd is this process's; it becomes readable
        # when the process exits (at once if it is already a zombie).
        readable = wait_readable(pidfd, timeout_s)
    finally:
        os.close(pidfd)
    if not readable:
        return False
    process.wait()
    return True


class _Begun(NamedTuple):
    """A request accepted by `JailIsolate._begin`: its clamped limits, frame and deadline."""

    limits: Limits
    frame: bytes
    deadline: float
    """time.monotonic() by which the report must be in: the wall-time limit plus a grace."""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _write_on_loop(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    """Write all of `data` to the pipe `fd`, awaiting room on `loop` when it is full.

    Leaves `fd` non-blocking: a jail's request pipe carries one request.
    """
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, _resolve, writable)
            try:
                await writable
            finally:
                loop.remove_writer(fd)


class JailIsolate(Isolate):
    """A warm, single-use jail made by `JailFactory.create()`."""

    kind = IsolateKind.JAIL

    def __init__(
        self,
        *,
        runtime: str,
        jail_id: str,
        state_dir: Path,
        process: subprocess.Popen[bytes],
        reader: FrameReader,
        cgroup: JailCgroup,
        settings: JailSettings,
    ) -> None:
        self.runtime = runtime
        self.jail_id = jail_id
        self._state_dir = state_dir
        self._process = process
        self._reader = reader
        self._cgroup = cgroup
        self._settings = settings
        self._lock = threading.Lock()
        self._used = False
        self._running = False
        self._destroyed = False
        self._cancelled = threading.Event()

    @property
    def pid(self) -> int:
        """The host pid of this jail's nsjail process."""
        return self._process.pid

    def memory_usage(self) -> int:
        """Bytes charged to this jail's memory cgroup (driver, page cache, tmpfs)."""
        return self._cgroup.memory_usage()

    def _clamp(self, limits: Limits) -> Limits:
        timeout_s = min(limits.timeout_s, self._settings.max_timeout_s)
        memory_bytes = clamp_memory(limits.memory_bytes, self._settings)
        if timeout_s == limits.timeout_s and memory_bytes == limits.memory_bytes:
            # The common case; a model copy costs 0.1 ms of a call after an idle pause.
            return limits
        return limits.model_copy(update={"timeout_s": timeout_s, "memory_bytes": memory_bytes})

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._process.poll() is None:
                self._process.send_signal(signum)

    def _on_cancel(self) -> None:
        self._cancelled.set()
        # nsjail answers SIGTERM by SIGKILLing everything in the jail.
        self._signal(signal.SIGTERM)

    def run(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ExecutionResult:
        """Run `request` in this jail (blocking). See `Isolate.run`.

        Raises:
            ValueError: the language is not one a jail runs (a routing fault of the caller).
            RuntimeError: the isolate was already used or destroyed.
        """
        self._claim(request)
        try:
            started = time.monotonic()
            begun = self._begin(request, on_output is not None, cancel, poll_s=0.0)
            if isinstance(begun, ExecutionResult):
                return begun
            report, host_timeout = self._exchange(begun, on_output)
            return self._conclude(request, begun, report, host_timeout, started)
        finally:
            self._unclaim()

    async def run_on_loop(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
        spare_cpu: bool = False,
    ) -> ExecutionResult:
        """Run `request` in this jail, awaiting its pipes on the running event loop.

        The same run as `run()`: on the host a jail's run is writing the request and waiting
        for frames, so it needs no thread. Only the rare end without a report (a killed jail,
        the host's backstop deadline) waits for nsjail's exit, on a thread. A cancelled await
        stops the jail, as a cancelled token does. With `spare_cpu`, the driver polls for the
        program's end for up to `SPARE_CPU_POLL_S` instead of sleeping until it.
        """
        self._claim(request)
        try:
            started = time.monotonic()
            begun = self._begin(request, on_output is not None, cancel,
                                poll_s=SPARE_CPU_POLL_S if spare_cpu else 0.0)
            if isinstance(begun, ExecutionResult):
                return begun
            try:
                report, host_timeout = await self._exchange_on_loop(begun, on_output)
            except asyncio.CancelledError:
                self._on_cancel()
                raise
            if report is None:
                return await asyncio.to_thread(
                    self._conclude, request, begun, report, host_timeout, started)
            return self._conclude(request, begun, report, host_timeout, started)
        finally:
            self._unclaim()

    def _claim(self, request: ExecutionRequest) -> None:
        if request.language not in LANGUAGES:
            raise ValueError(f"JAIL isolates do not run {request.language.value!r}")
        with self._lock:
            if self._used or self._destroyed:
                raise RuntimeError(f"jail {self.jail_id} is single-use and was already used")
            self._used = True
            self._running = True

    def _unclaim(self) -> None:
        with self._lock:
            self._running = False
            destroyed_meanwhile = self._destroyed
        if destroyed_meanwhile:
            # destroy() ran on another thread while this run read from the jail's pipes;
            # it left the descriptors and cleanup to this thread, so that no descriptor
            # number could be closed (and reused) under a read in progress.
            self._release()

    def _begin(
        self,
        request: ExecutionRequest,
        stream: bool,
        cancel: CancelToken | None,
        *,
        poll_s: float,
    ) -> _Begun | ExecutionResult:
        """Check the request, apply its memory limit and encode it; a result if refused.

        `poll_s`: how long the driver polls for the program's end before it sleeps.
        """
        limits = self._clamp(request.limits)
        for path in [f.path for f in request.files] + list(request.output_paths):
            problem = validate_relative_path(path)
            if problem is not None:
                # Validated at the edge already; refuse here too rather than trust it.
                return ExecutionResult(status=Status.ERROR, exit_code=-1,
                                       message=f"file path {path!r} {problem}")
        self._cgroup.set_memory_limit(limits.memory_bytes)
        if cancel is not None:
            cancel.on_cancel(self._on_cancel)
        return _Begun(
            limits=limits,
            frame=encode_request(request, limits, stream, poll_s),
            deadline=time.monotonic() + limits.timeout_s + self._settings.result_grace_s,
        )

    def _exchange(
        self, begun: _Begun, on_output: OutputSink | None
    ) -> tuple[dict[str, Any] | None, bool]:
        """Send the request and read frames until the report: (report or None, host timeout)."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            if not self._cancelled.is_set():
                stdin.write(begun.frame)
                stdin.flush()
                while True:
                    frame = self._reader.read(begun.deadline)
                    if self._take_frame(frame, on_output):
                        return frame, False
        except (BrokenPipeError, FrameEOF):
            pass
        except FrameTimeout:
            self._signal(signal.SIGTERM)
            return None, True
        return None, False

    async def _exchange_on_loop(
        self, begun: _Begun, on_output: OutputSink | None
    ) -> tuple[dict[str, Any] | None, bool]:
        """`_exchange` on the running event loop: the pipes are watched, never waited on."""
        if self._cancelled.is_set():
            return None, False
        loop = asyncio.get_running_loop()
        stdin = self._process.stdin
        assert stdin is not None
        try:
            await _write_on_loop(loop, stdin.fileno(), begun.frame)
        except BrokenPipeError:
            return None, False
        report: asyncio.Future[dict[str, Any] | None] = loop.create_future()

        def on_readable() -> None:
            if report.done():
                return
            try:
                # One read of the pipe per call, then the frames it completed: a jail streaming
                # output as fast as it can must not hold the loop.
                frame = self._reader.read_nowait()
                while frame is not None:
                    if self._take_frame(frame, on_output):
                        report.set_result(frame)
                        return
                    frame = self._reader.read_buffered()
            except FrameEOF:
                report.set_result(None)
            except ValueError as exc:
                report.set_exception(exc)

        def on_deadline() -> None:
            if not report.done():
                report.set_exception(TimeoutError())

        loop.add_reader(self._reader.fd, on_readable)
        # A timer of the loop's own rather than `asyncio.timeout_at`, whose context manager
        # took 0.02 ms more of a call after an idle pause. loop.time() is time.monotonic(),
        # the clock of the deadline.
        deadline = loop.call_at(begun.deadline, on_deadline)
        try:
            return await report, False
        except TimeoutError:
            self._signal(signal.SIGTERM)
            return None, True
        finally:
            deadline.cancel()
            loop.remove_reader(self._reader.fd)

    @staticmethod
    def _take_frame(frame: dict[str, Any], on_output: OutputSink | None) -> bool:
        """Relay an output frame; True for the report, which ends the exchange."""
        if frame.get("t") == "out" and on_output is not None:
            on_output(str(frame.get("s")), b64(frame, "d"))
        return frame.get("t") == "result"

    def _conclude(
        self,
        request: ExecutionRequest,
        begun: _Begun,
        report: dict[str, Any] | None,
        host_timeout: bool,
        started: float,
    ) -> ExecutionResult:
        """Classify the outcome and build the result (waits for nsjail's exit without a report)."""
        oom_kills = self._cgroup.oom_kills()
        nsjail_log = ""
        if report is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(self._settings.kill_grace_s)
            nsjail_log = self._read_log()
        verdict = classify(
            report=report,
            limits=begun.limits,
            cancelled=self._cancelled.is_set(),
            host_timeout=host_timeout,
            oom_kills=oom_kills,
            nsjail_log=nsjail_log,
        )
        report = report or {}
        stdout, stderr = b64(report, "stdout"), b64(report, "stderr")
        out_total = int(report.get("stdout_total", len(stdout)))
        err_total = int(report.get("stderr_total", len(stderr)))
        files = tuple(
            OutputFile(
                path=str(f["path"]),
                content=b64(f, "content"),
                truncated=bool(f.get("truncated")),
                size=int(f.get("size", 0)),
                error=str(f.get("error", "")),
                executable=f.get("executable") is True,
            )
            for f in report.get("files", [])
            if isinstance(f, dict) and f.get("path") in request.output_paths
        )
        return ExecutionResult(
            status=verdict.status,
            exit_code=verdict.exit_code,
            stdout=stdout,
            stderr=stderr,
            stdout_truncated=out_total > len(stdout),
            stderr_truncated=err_total > len(stderr),
            stdout_total_bytes=out_total,
            stderr_total_bytes=err_total,
            files=files,
            message=verdict.message,
            run_us=int((time.monotonic() - started) * 1e6),
        )

    def _read_log(self) -> str:
        try:
            with (self._state_dir / "nsjail.log").open("rb") as log:
                return log.read()[-65536:].decode(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        """Kill the jail and remove its cgroups and state directory. Idempotent.

        A run in progress on another thread ends CANCELLED and finishes the cleanup itself.
        """
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            running = self._running
        self._cancelled.set()
        self._signal(signal.SIGTERM)
        if not wait_for_exit(self._process, self._settings.kill_grace_s):
            self._signal(signal.SIGKILL)
            self._process.wait()
        if not running:
            self._release()

    def _release(self) -> None:
        """Close the pipes and remove the cgroups and state directory (the jail is dead)."""
        for stream in (self._process.stdin, self._process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._cgroup.remove()
        shutil.rmtree(self._state_dir, ignore_errors=True)

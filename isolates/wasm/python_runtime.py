"""Python isolates: one pre-initialized componentize-py component instance per execution.

`PythonFactory` loads the serialized component once (`Component.deserialize_file`: memory-
mapped, shared by every isolate) and builds one component Linker with WASI p2 and the host
functions of guest/wit/world.wit. `create()` does all the per-isolate work up front: a fresh
Store with a memory limit and an epoch watchdog, a WASI context showing only the scratch
directory (at /workspace, also the working directory), the standard library read-only at
/python and an optional facet directory at /facet; instantiation; and the guest's `prepare()`
(reseeding `random`, pre-touching memory). `run()` then makes one guest call.

Output is captured inside the guest (see guest/app.py) and streamed to the host's `write`
import as it is produced (chunks of up to 64 KiB, at least every 50 ms while the program
writes, and on every explicit flush), so `on_output` sees it live; what is still pending when
the code ends comes back with `run`'s result and reaches `on_output` then. The kept bytes are
bounded by the output cap.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime
import wasmtime.component as wc
from wasmtime import _ffi as ffi
from wasmtime.component._enter import enter_wasm

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
    memory_message,
)
from isolates.wasm.build import RuntimePaths, load_built
from isolates.wasm.common import (
    GUEST_CWD,
    Ending,
    classify_error,
    collect_outputs,
    drop_traceback,
    wasi_config,
)
from isolates.wasm.engine import Watch, get_engine, limit_memory, new_store, running
from isolates.wasm.output import OutputCapture
from isolates.wasm.scratch import ScratchDir, instance_scratch_root

_HOST_INTERFACE = "sandboxd:guest/host@0.2.0"


class _Current(threading.local):
    """The capture of the guest call running on this thread (host imports are synchronous)."""

    capture: OutputCapture | None = None


_current = _Current()


def _host_write(_store: Any, fd: int, data: str) -> None:
    capture = _current.capture
    if capture is not None and fd in (1, 2):
        # The guest already counted and capped these bytes; the host keeps and streams them.
        capture.add(fd, data.encode("latin-1", "replace"), counted=False)


def _host_overflow(_store: Any, fd: int, total: int) -> None:
    capture = _current.capture
    if capture is not None and fd in (1, 2):
        capture.overflow(fd, total)
    # A WasmtimeError traps the guest without going through wasmtime-py's process-wide
    # "last exception" slot, which another thread's call could pick up.
    raise wasmtime.WasmtimeError("sandboxd: output limit")


_Signature = tuple[list[Any], Any]
"""(parameter types, result type) of a component export."""


_Lowerer = Callable[[wasmtime.Store, Any, Any], None]
"""Writes one Python value into a `wasmtime_component_val_t` slot."""

_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_BYTES = ctypes.POINTER(ctypes.c_ubyte)


def _copy_into(vec: Any, data: bytes) -> None:
    """Fill an empty `wasm_byte_vec_t` with a copy of `data` (one C call)."""
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), ctypes.cast(ctypes.c_char_p(data), _BYTES))


def _lower_string(_store: wasmtime.Store, value: str, slot: Any) -> None:
    data = value.encode()
    slot.kind = _STRING
    _copy_into(slot.of.string, data)


def _lower_string_list(_store: wasmtime.Store, values: list[str], slot: Any) -> None:
    encoded = [value.encode() for value in values]  # may raise before anything is allocated
    items = slot.of.list
    if not encoded:
        ffi.wasmtime_component_vallist_new_empty(ctypes.byref(items))
    else:
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(items), len(encoded))
        for i, data in enumerate(encoded):
            item = items.data[i]
            item.kind = _STRING
            _copy_into(item.of.string, data)
    slot.kind = _LIST


def _lift_string(slot: Any) -> str:
    """The string in a result slot, freed here.

    wasmtime-py's `convert_from_c` builds a ctypes array type for each length; this copies once.
    """
    vec = slot.of.string
    try:
        return ctypes.string_at(vec.data, vec.size).decode() if vec.size else ""
    finally:
        ffi.wasm_byte_vec_delete(ctypes.byref(vec))


def _lowerer(ty: Any) -> _Lowerer:
    """A direct lowering for the types `run` takes; wasmtime-py's generic one for the rest.

    wasmtime-py's `convert_to_c` looks the element type of a list up through the C API on
    every call and copies strings twice; for `run`'s six parameters that cost more than the
    guest's `print(1)`.
    """
    if isinstance(ty, wc.String):
        return _lower_string
    if isinstance(ty, wc.ListType) and isinstance(ty.element, wc.String):
        return _lower_string_list

    def generic(store: wasmtime.Store, value: Any, slot: Any) -> None:
        ty.convert_to_c(store, value, ctypes.pointer(slot))

    return generic


class _ComponentCall:
    """A component export with its parameter and result types looked up once.

    `wasmtime.component.Func.__call__` asks for the function's type on every call, which costs
    about as much as a small guest call; create() pays for it here instead, and parameters are
    lowered by `_lowerer`s chosen once.
    """

    def __init__(self, func: wc.Func, signature: _Signature) -> None:
        self._func = func
        params, result = signature
        self._lowerers = [_lowerer(ty) for ty in params]
        self._lift: Callable[[Any], Any] | None = (
            None if result is None
            else _lift_string if isinstance(result, wc.String)
            else result.convert_from_c
        )

    @staticmethod
    def signature(func: wc.Func, store: wasmtime.Store) -> _Signature:
        """Look up the parameter and result types of `func` (slow: about a millisecond).

        The types describe the component, not the instance, so a factory looks them up once
        and shares them between its isolates.
        """
        func_type = func.type(store)
        return [ty for _name, ty in func_type.params], func_type.result

    def __call__(self, store: wasmtime.Store, *params: Any) -> Any:
        param_capi = (ffi.wasmtime_component_val_t * len(params))()
        lowered = 0
        try:
            for lower, value in zip(self._lowerers, params, strict=True):
                lower(store, value, param_capi[lowered])
                lowered += 1
            result = ffi.wasmtime_component_val_t()
            has_result = self._lift is not None

            def call() -> Any:
                return ffi.wasmtime_component_func_call(
                    ctypes.byref(self._func._func),
                    store._context(),
                    param_capi,
                    lowered,
                    ctypes.byref(result) if has_result else None,
                    1 if has_result else 0,
                )

            enter_wasm(call)
            return self._lift(result) if self._lift is not None else None
        finally:
            for i in range(lowered):
                ffi.wasmtime_component_val_delete(ctypes.byref(param_capi[i]))


class PythonFactory(IsolateFactory):
    """Creates Python isolates (kind wasm, runtime "python")."""

    kind = IsolateKind.WASM
    runtime = "python"

    def __init__(
        self, data_dir: Path, *, limits: Limits | None = None, build: bool = True
    ) -> None:
        """Load the Python component of `data_dir` (building it first when `build` is set).

        Args:
            data_dir: the sandboxd data directory.
            limits: default limits applied at create() (each run sets its own).
            build: run `ensure_runtimes` (a no-op when up to date).
        """
        self.data_dir = Path(data_dir).resolve()
        self.limits = limits or Limits()
        self.engine = get_engine()
        self.paths: RuntimePaths
        self.paths, self.component = load_built(
            self.data_dir, build,
            lambda paths: wc.Component.deserialize_file(self.engine, str(paths.python_component)),
        )
        self.linker = wc.Linker(self.engine)
        self.linker.add_wasip2()
        with self.linker.root() as root, root.add_instance(_HOST_INTERFACE) as host:
            host.add_func("write", _host_write)
            host.add_func("overflow", _host_overflow)
        self.scratch_root = instance_scratch_root(self.data_dir)
        self._signature_lock = threading.Lock()
        self._signatures: tuple[_Signature, _Signature] | None = None
        # Export indexes describe the component: looked up once, not by name per instance.
        run_index = self.component.get_export_index("run")
        prepare_index = self.component.get_export_index("prepare")
        if run_index is None or prepare_index is None:
            raise RuntimeError("the Python component lacks its exports")
        self.run_index: wc.ExportIndex = run_index
        self.prepare_index: wc.ExportIndex = prepare_index

    def create(self, *, facet_dir: Path | None = None) -> PythonIsolate:
        """Create one Python isolate, instantiated, prepared and warmed (blocking, ~4 ms)."""
        return PythonIsolate(self, facet_dir, warm=True)

    def create_for_immediate_use(self, *, facet_dir: Path | None = None) -> PythonIsolate:
        """Create one Python isolate without the warm-up run its own run makes redundant."""
        return PythonIsolate(self, facet_dir, warm=False)

    def signatures(
        self, run: wc.Func, prepare: wc.Func, store: wasmtime.Store
    ) -> tuple[_Signature, _Signature]:
        """The types of the `run` and `prepare` exports, looked up by the first isolate."""
        with self._signature_lock:
            if self._signatures is None:
                self._signatures = (_ComponentCall.signature(run, store),
                                    _ComponentCall.signature(prepare, store))
            return self._signatures


class PythonIsolate(Isolate):
    """One instance of the Python component in its own Store; single use."""

    kind = IsolateKind.WASM
    runtime = "python"

    def __init__(self, factory: PythonFactory, facet_dir: Path | None, *, warm: bool) -> None:
        self._lock = threading.Lock()
        self._used = False
        self._scratch: ScratchDir | None = ScratchDir(factory.scratch_root)
        try:
            store, watch = new_store(factory.engine, factory.limits.memory_bytes)
            self._store: wasmtime.Store | None = store
            self._watch: Watch = watch
            store.set_wasi(
                wasi_config(
                    self._scratch,
                    facet_dir,
                    readonly_dirs=((factory.paths.python_stdlib, "/python"),),
                )
            )
            instance = factory.linker.instantiate(store, factory.component)
            run_func = instance.get_func(store, factory.run_index)
            prepare_func = instance.get_func(store, factory.prepare_index)
            if run_func is None or prepare_func is None:
                raise RuntimeError("the Python component lacks its exports")
            run_signature, prepare_signature = factory.signatures(run_func, prepare_func, store)
            self._run_func: _ComponentCall | None = _ComponentCall(run_func, run_signature)
            prepare = _ComponentCall(prepare_func, prepare_signature)
            with running():
                prepare(store, warm)
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
        store, scratch = self._store, self._scratch
        started = time.perf_counter()
        capture = OutputCapture(request.limits.output_bytes, on_output)
        if cancel is not None and cancel.cancelled:
            return ExecutionResult(status=Status.CANCELLED, exit_code=130, message="cancelled")
        try:
            scratch.write_inputs(request.files)
        except (ValueError, OSError) as exc:
            return ExecutionResult(status=Status.ERROR, exit_code=1, message=str(exc))
        limit_memory(store, self._watch, request.limits.memory_bytes)
        ending = self._call(request, capture, cancel)
        files = collect_outputs(scratch, request)
        return ExecutionResult(
            status=ending.status,
            exit_code=ending.exit_code,
            message=ending.message,
            files=files,
            run_us=int((time.perf_counter() - started) * 1e6),
            **capture.result_fields(),  # type: ignore[arg-type]
        )

    def _call(
        self, request: ExecutionRequest, capture: OutputCapture, cancel: CancelToken | None
    ) -> Ending:
        store, watch = self._store, self._watch
        assert store is not None
        watch.deadline = time.monotonic() + request.limits.timeout_s
        if cancel is not None:
            cancel.on_cancel(lambda: setattr(watch, "cancelled", True))
        assert self._run_func is not None
        _current.capture = capture
        try:
            with running():
                outcome = self._run_func(
                    store,
                    request.code,
                    request.stdin.decode("latin-1"),
                    [f"{name}={value}" for name, value in request.env.items()],
                    list(request.argv),
                    GUEST_CWD,
                    request.limits.output_bytes,
                )
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            drop_traceback(exc)
            return classify_error(exc, watch, capture, request)
        except UnicodeEncodeError as exc:
            return Ending(Status.ERROR, 1, f"the request is not valid Unicode: {exc.reason}")
        finally:
            _current.capture = None
            watch.deadline = float("inf")
        # "<ending> <exit> <out-total> <err-total> <out-tail-len> <err-tail-len>\n<out-tail>
        # <err-tail><message>" (guest/wit/world.wit)
        header, rest = str(outcome).split("\n", 1)
        kind, exit_text, out_total, err_total, out_len, err_len = header.split(" ")
        out_end = int(out_len)
        err_end = out_end + int(err_len)
        capture.add(1, rest[:out_end].encode("latin-1", "replace"), counted=False)
        capture.add(2, rest[out_end:err_end].encode("latin-1", "replace"), counted=False)
        message = rest[err_end:]
        capture.set_total(1, int(out_total))
        capture.set_total(2, int(err_total))
        exit_code = int(exit_text)
        if kind == "ok":
            return Ending(Status.OK, 0)
        if kind == "exit":
            return Ending(Status.OK if exit_code == 0 else Status.ERROR, exit_code)
        if kind == "memory":
            return Ending(Status.MEMORY_LIMIT, 1,
                          memory_message(request.limits.memory_bytes))
        return Ending(Status.ERROR, exit_code or 1, message)

    def destroy(self) -> None:
        """Drop the store and delete the scratch directory. Idempotent.

        A guest still running on another thread is stopped at the next epoch tick.
        """
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancelled = True
        self._run_func = None
        self._store = None
        if self._scratch is not None:
            self._scratch.remove()
            self._scratch = None

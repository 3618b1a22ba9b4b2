"""WASI preview 1 for core modules (QuickJS and raw WASI modules), with three host overrides.

wasmtime's own WASI implementation serves every call except three, which this module shadows
with host functions written in Python:

- `fd_write` on fds 1 and 2: the bytes go to the execution's `OutputCapture` (capped, counted,
  streamed to `on_output` as written), never to a file or a pipe. Passing the cap stops the
  guest at the next epoch tick; writes after that fail with EIO and are not counted. Writes to
  other fds go to wasmtime's implementation (through a shim, see `bind_originals`).
- `fd_read` on fd 0: the request's stdin bytes, set per run (the WASI context is fixed when
  the isolate is created, before the request is known). A runtime may also serve one more fd
  from the host (`CoreContext.control_fd`, e.g. to hand the guest its request): reads of
  it call `CoreContext.control`, which may block.
- `poll_oneoff` with clock subscriptions (sleeps, timers): the host sleeps in short slices and
  checks the execution's deadline and cancellation between them. wasmtime's own sleep blocks
  inside the host call, where epoch interruption cannot reach, so `sleep(1e9)` would hold a
  worker thread forever. An absolute deadline is turned into a wait from now on the guest's own
  clock (wasmtime's `clock_time_get`). Subscriptions on fds are answered as ready at once
  (stdin and files never block).

The overrides never raise to stop a guest: wasmtime-py parks an exception raised by a host
function in a process-wide slot, where a concurrent call on another thread could pick it up.
They mark the execution's `Watch` instead, and the watchdog traps the guest at the next tick.

`WasiConfig.stdout_custom` is not used: its callbacks run on wasmtime's own threads and panic
at exit.

The host functions are shared by every store of the Linker; they find the running execution
through a thread-local, since a host call always runs on the thread that called into the guest.
They are defined through wasmtime's "unchecked" C API, with raw i32 arguments and raw access to
the caller's memory: wasmtime-py's generic trampoline looks types up and wraps every argument,
which cost more than the work of a `console.log`.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from isolates.wasm.engine import Watch
from isolates.wasm.output import OutputCapture

_WASI = "wasi_snapshot_preview1"
_SLICE_SECONDS = 0.02
_ERRNO_SUCCESS = 0
_ERRNO_INVAL = 28
_ERRNO_FAULT = 21
_ERRNO_IO = 29
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value
_MEMORY_NAME = ctypes.create_string_buffer(b"memory")

log = logging.getLogger(__name__)


@dataclass
class CoreContext:
    """What the overrides need about the execution running on this thread."""

    capture: OutputCapture
    watch: Watch
    fd_write: Any = None
    """wasmtime's own fd_write of this store, for fds other than 1 and 2."""
    poll_oneoff: Any = None
    clock_time_get: Any = None
    fd_read: Any = None
    stdin: bytes = b""
    """What the guest reads from fd 0."""
    stdin_pos: int = 0
    bind: Callable[[wasmtime.Caller], None] | None = None
    """Set by `bind_originals(lazy=True)`: binds the three originals on first use."""
    control_fd: int = -1
    """An fd served by `control` instead of wasmtime (-1: none)."""
    control: Callable[[int], bytes] | None = None
    """Returns up to n bytes for `control_fd` (b"" at its end); may block."""


class _Current(threading.local):
    ctx: CoreContext | None = None


current = _Current()


def new_linker(engine: wasmtime.Engine) -> tuple[wasmtime.Linker, wasmtime.Linker]:
    """Return (linker, base): WASI with the overrides, and plain WASI for the originals."""
    base = wasmtime.Linker(engine)
    base.define_wasi()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    signature = wasmtime.FuncType([i32, i32, i32, i32], [i32])
    for name, callback in _CALLBACKS.items():
        module = ctypes.create_string_buffer(_WASI.encode())
        raw_name = ctypes.create_string_buffer(name.encode())
        error = ffi.wasmtime_linker_define_func_unchecked(
            linker.ptr(), module, len(_WASI), raw_name, len(name), signature.ptr(), callback,
            None, _NO_FINALIZER,
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    linker.allow_shadowing = False
    return linker, base


# wasmtime's WASI functions read the guest's memory from the *calling instance's* "memory"
# export, so a host function cannot call them directly. This shim, instantiated per store with
# the guest's memory, re-exports that memory and forwards to the originals.
_SHIM_WAT = """
(module
  (import "env" "memory" (memory 0))
  (import "wasi" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (export "memory" (memory 0))
  (func (export "fd_write") (param i32 i32 i32 i32) (result i32)
    (call $fd_write (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "fd_read") (param i32 i32 i32 i32) (result i32)
    (call $fd_read (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32)
    (call $poll_oneoff (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "clock_time_get") (param i32 i64 i32) (result i32)
    (call $clock_time_get (local.get 0) (local.get 1) (local.get 2))))
"""
_shims: dict[int, wasmtime.Module] = {}
_shim_lock = threading.Lock()


def _shim(engine: wasmtime.Engine) -> wasmtime.Module:
    with _shim_lock:
        module = _shims.get(id(engine))
        if module is None:
            module = wasmtime.Module(engine, bytes(wasmtime.wat2wasm(_SHIM_WAT)))
            _shims[id(engine)] = module
        return module


def bind_originals(
    base: wasmtime.Linker,
    store: wasmtime.Store,
    instance: wasmtime.Instance,
    ctx: CoreContext,
    *,
    lazy: bool = False,
) -> None:
    """Give `ctx` wasmtime's own fd_write / fd_read / poll_oneoff for `store`'s guest.

    Call after `store.set_wasi(...)` and instantiation; a guest without a "memory" export
    gets no originals (its calls on other fds fail with EINVAL). With `lazy`, the shim is
    instantiated only when the guest first needs an original (a file read or write, an
    absolute-time poll), inside that host call: guests that never do skip its cost.
    """
    memory = instance.exports(store).get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return
    engine = store.engine

    def bind(context: wasmtime.Store | wasmtime.Caller) -> None:
        names = ("fd_write", "fd_read", "poll_oneoff", "clock_time_get")
        originals = [base.get(context, _WASI, name) for name in names]
        shim = wasmtime.Instance(context, _shim(engine), [memory, *originals])
        exports = shim.exports(context)
        ctx.fd_write = exports["fd_write"]
        ctx.fd_read = exports["fd_read"]
        ctx.poll_oneoff = exports["poll_oneoff"]
        ctx.clock_time_get = exports["clock_time_get"]
        ctx.bind = None

    if lazy:
        ctx.bind = bind
    else:
        bind(store)


class _Fault(Exception):
    """A guest pointer outside its memory (EFAULT)."""


class _GuestMemory:
    """The calling instance's "memory" export, read and written by address, bounds-checked.

    Valid during one host call only: the guest may grow (move) its memory afterwards.
    """

    __slots__ = ("base", "size")

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.size = size

    @staticmethod
    def of(caller: Any) -> _GuestMemory | None:
        extern = ffi.wasmtime_extern_t()
        if not ffi.wasmtime_caller_export_get(caller, _MEMORY_NAME, 6, ctypes.byref(extern)):
            return None
        if extern.kind != _EXTERN_MEMORY:
            return None
        context = ffi.wasmtime_caller_context(caller)
        memory = ctypes.byref(extern.of.memory)
        base = ctypes.cast(ffi.wasmtime_memory_data(context, memory), ctypes.c_void_p).value
        return _GuestMemory(base or 0, int(ffi.wasmtime_memory_data_size(context, memory)))

    def read(self, address: int, length: int) -> bytes:
        if address < 0 or length < 0 or address + length > self.size:
            raise _Fault
        return ctypes.string_at(self.base + address, length)

    def write(self, address: int, data: bytes) -> None:
        if address < 0 or address + len(data) > self.size:
            raise _Fault
        ctypes.memmove(self.base + address, data, len(data))


def _original(ctx: CoreContext, caller: Any, name: str) -> Any:
    """Return wasmtime's own `name` and a wasmtime-py Caller to call it with."""
    wrapped = wasmtime.Caller(caller)
    if ctx.bind is not None:
        ctx.bind(wrapped)
    return getattr(ctx, name), wrapped


def _call_original(ctx: CoreContext, caller: Any, name: str, *args: int) -> int:
    original, wrapped = _original(ctx, caller, name)
    try:
        if original is None:
            return _ERRNO_INVAL
        return int(original(wrapped, *args))
    finally:
        wrapped._invalidate()


def _fd_write(caller: Any, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    ctx = current.ctx
    if ctx is None:
        return _ERRNO_INVAL
    if fd not in (1, 2):
        return _call_original(ctx, caller, "fd_write", fd, iovs, iovs_len, nwritten)
    if ctx.capture.overflowed is not None:
        return _ERRNO_IO  # stopped at the next tick; later writes are not counted
    memory = _GuestMemory.of(caller)
    if memory is None or iovs_len < 0 or iovs_len > 1024:
        return _ERRNO_INVAL
    try:
        raw = memory.read(iovs, 8 * iovs_len)
        chunks = []
        for i in range(iovs_len):
            ptr, length = struct.unpack_from("<II", raw, 8 * i)
            if length:
                chunks.append(memory.read(ptr, length))
        data = b"".join(chunks)
        memory.write(nwritten, struct.pack("<I", len(data)))
    except _Fault:
        return _ERRNO_FAULT
    if not ctx.capture.add(fd, data):
        _stop(ctx, "output")
        return _ERRNO_IO
    return _ERRNO_SUCCESS


def _fd_read(caller: Any, fd: int, iovs: int, iovs_len: int, nread: int) -> int:
    ctx = current.ctx
    if ctx is None:
        return _ERRNO_INVAL
    control = ctx.control if fd == ctx.control_fd else None
    if fd != 0 and control is None:
        return _call_original(ctx, caller, "fd_read", fd, iovs, iovs_len, nread)
    memory = _GuestMemory.of(caller)
    if memory is None or iovs_len < 0 or iovs_len > 1024:
        return _ERRNO_INVAL
    try:
        raw = memory.read(iovs, 8 * iovs_len)
        total = 0
        for i in range(iovs_len):
            ptr, length = struct.unpack_from("<II", raw, 8 * i)
            if not length:
                continue
            if control is not None:
                chunk = control(length)
            else:
                chunk = ctx.stdin[ctx.stdin_pos : ctx.stdin_pos + length]
                ctx.stdin_pos += len(chunk)
            if not chunk:
                break
            memory.write(ptr, chunk)
            total += len(chunk)
            if len(chunk) < length:
                break
        memory.write(nread, struct.pack("<I", total))
    except _Fault:
        return _ERRNO_FAULT
    return _ERRNO_SUCCESS


def _stop(ctx: CoreContext, reason: str) -> None:
    # See the module docstring: mark the watch, the watchdog traps at the next tick.
    ctx.watch.reason = ctx.watch.reason or reason
    ctx.watch.stop_now = True


def stopped_ending_reason(ctx: CoreContext) -> str:
    """Why a host override asked the guest to stop ("" if it did not).

    A guest can return before the next tick traps it (e.g. right after an interrupted sleep);
    the caller then still reports the limit that stopped it.
    """
    return ctx.watch.reason if ctx.watch.stop_now else ""


def _expired(ctx: CoreContext) -> bool:
    watch = ctx.watch
    if watch.cancelled:
        _stop(ctx, "cancelled")
        return True
    if time.monotonic() >= watch.deadline:
        _stop(ctx, "timeout")
        return True
    return False


def _poll_oneoff(caller: Any, in_: int, out: int, nsubs: int, nevents: int) -> int:
    ctx = current.ctx
    memory = _GuestMemory.of(caller)
    if ctx is None or memory is None or nsubs <= 0 or nsubs > 4096:
        return _ERRNO_INVAL
    try:
        raw = memory.read(in_, 48 * nsubs)
    except _Fault:
        return _ERRNO_FAULT
    subs = []
    for i in range(nsubs):
        userdata, tag = struct.unpack_from("<QB", raw, 48 * i)
        if tag == 0:
            clock, timeout, _precision, flags = struct.unpack_from("<IxxxxQQH", raw, 48 * i + 16)
            if flags & 1:
                # An absolute deadline: the wait left on the guest's own clock.
                now = _guest_clock(ctx, caller, memory, clock, out)
                if now is None:
                    return _ERRNO_INVAL
                timeout = max(0, timeout - now)
            subs.append((userdata, tag, timeout))
        else:
            subs.append((userdata, tag, 0))
    events = [s for s in subs if s[1] != 0]
    if not events:
        # Only clocks: sleep until the earliest one, in slices, watching the deadline.
        wait = min(s[2] for s in subs) / 1e9
        end = time.monotonic() + wait
        while not _expired(ctx):
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, _SLICE_SECONDS))
        earliest = min(s[2] for s in subs)
        events = [s for s in subs if s[2] == earliest]
    out_bytes = b"".join(
        struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, tag, 0, 0)
        for userdata, tag, _timeout in events
    )
    # The guest is suspended in this call, so its memory has not moved while the host slept.
    try:
        memory.write(out, out_bytes)
        memory.write(nevents, struct.pack("<I", len(events)))
    except _Fault:
        return _ERRNO_FAULT
    return _ERRNO_SUCCESS


def _guest_clock(
    ctx: CoreContext, caller: Any, memory: _GuestMemory, clock: int, scratch: int
) -> int | None:
    """Now on the guest's `clock`, in nanoseconds, or None if wasmtime refuses the clock.

    wasmtime writes the time to guest memory: to `scratch`, the start of the events buffer,
    which the poll overwrites with its events anyway.
    """
    errno = _call_original(ctx, caller, "clock_time_get", clock, 1, scratch)
    if errno != _ERRNO_SUCCESS:
        return None
    try:
        (now,) = struct.unpack("<Q", memory.read(scratch, 8))
    except _Fault:
        return None
    return int(now)


def _raw_callback(handler: Callable[[Any, int, int, int, int], int]) -> Any:
    """Wrap `handler(caller, a, b, c, d) -> errno` as an unchecked wasmtime host function."""

    @ffi.wasmtime_func_unchecked_callback_t  # type: ignore[untyped-decorator]
    def callback(_env: Any, caller: Any, args: Any, _count: int) -> int:
        try:
            args[0].i32 = handler(caller, args[0].i32, args[1].i32, args[2].i32, args[3].i32)
        except Exception:
            # Nothing may cross into wasm (see the module docstring): the guest gets EIO.
            log.exception("WASI host function %s failed", handler.__name__)
            args[0].i32 = _ERRNO_IO
        return 0

    return callback


_CALLBACKS: dict[str, Any] = {
    "fd_write": _raw_callback(_fd_write),
    "fd_read": _raw_callback(_fd_read),
    "poll_oneoff": _raw_callback(_poll_oneoff),
}
"""Module-level, so the C function pointers live as long as any Linker that holds them."""

_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()
"""A NULL finalizer: the callbacks carry no per-definition data to free."""

"""The one wasmtime Engine of the process, its epoch ticker, and the per-store watchdog.

Every wasm runtime (Python component, QuickJS, raw WASI modules) shares one Engine: serialized
artifacts are only valid for an Engine with the same settings, so `ENGINE_SETTINGS` is part of
the build manifest. Wall time and cancellation use epoch interruption: one shared ticker thread
increments the epoch every `TICK_SECONDS`, and every store has an epoch-deadline callback that
runs on the store's own thread at each tick, checking the execution's deadline and its
`CancelToken`. When either fires, the callback returns an error, which traps the guest; the
isolate records why (`Watch.reason`) so the result gets the right status.

The ticker also guards the process's file descriptors. A WASM guest's open files are host
descriptors of this process (wasmtime opens them for it), and nothing in wasmtime bounds how
many one store holds: a guest opening files in a loop would take every descriptor the server
has, and with them its connections, other isolates, jails and artifact packs. So while guests
run, the ticker counts the process's descriptors every `DESCRIPTOR_CHECK_TICKS` ticks, and
while more than `DESCRIPTOR_ALARM` of the limit (at most `DESCRIPTOR_ALARM_MAX`) are open it
stops every running guest (reason "descriptors"). Which store holds them cannot be told (a
guest can open the shared, read-only standard library again and again), so all are stopped;
an honest workload never gets near.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import wasmtime
from wasmtime import _ffi as ffi

TICK_SECONDS: Final = 0.005
"""Epoch period: the resolution of timeouts and the latency of cancellation."""
TABLE_ELEMENTS: Final = 1_000_000
"""Most elements one table of a store may hold (8 bytes each, host memory)."""
TABLES: Final = 16
INSTANCES: Final = 64
MEMORIES: Final = 4
"""Most tables, instances and linear memories one store may create.

A table lives in the host's memory, outside the guest's memory limit: unbounded, one
`table.grow` loop took gigabytes of the server's memory within seconds. The Python component
needs 2 tables of under 10,000 elements and 16 instances; these bounds leave room for large raw
modules while capping what a store can take beside its memory at 16 tables of 8 MB.
"""
DESCRIPTOR_CHECK_TICKS: Final = 10
"""Ticks between two counts of the process's open descriptors (50 ms)."""
DESCRIPTOR_ALARM: Final = 0.5
"""Fraction of RLIMIT_NOFILE open at which running guests are stopped..."""
DESCRIPTOR_ALARM_MAX: Final = 65_536
"""...or this many, when the limit is higher: each open file also costs kernel memory."""

ENGINE_SETTINGS: Final[dict[str, Any]] = {
    "epoch_interruption": True,
    "consume_fuel": False,
    "cranelift_opt_level": "speed",
    "memory_init_cow": True,
    "wasm_component_model": True,
}
"""Settings baked into serialized artifacts; a change invalidates them (see build.py)."""

_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def get_engine() -> wasmtime.Engine:
    """Return the process-wide Engine, creating it (and starting its ticker) on first use."""
    global _engine
    with _lock:
        if _engine is None:
            _engine = wasmtime.Engine(engine_config())
            _Ticker(_engine).start()
        return _engine


def engine_config() -> wasmtime.Config:
    """A Config with `ENGINE_SETTINGS`: what every Engine compiling for this process uses."""
    config = wasmtime.Config()
    config.epoch_interruption = ENGINE_SETTINGS["epoch_interruption"]
    config.consume_fuel = ENGINE_SETTINGS["consume_fuel"]
    config.cranelift_opt_level = ENGINE_SETTINGS["cranelift_opt_level"]
    config.memory_init_cow = ENGINE_SETTINGS["memory_init_cow"]
    config.wasm_component_model = ENGINE_SETTINGS["wasm_component_model"]
    return config


class _Ticker(threading.Thread):
    """The single thread advancing the engine's epoch while any store is being watched."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        super().__init__(name="sandboxd-wasm-epoch", daemon=True)
        self._engine = engine

    def run(self) -> None:
        since_check = DESCRIPTOR_CHECK_TICKS
        while True:
            if not _active.is_set():
                # Idle when nothing runs: no wake-ups on an idle server. The descriptors are
                # counted again before the first tick: a verdict from before the pause is stale.
                _active.wait()
                since_check = DESCRIPTOR_CHECK_TICKS
            time.sleep(TICK_SECONDS)
            # While short, count every tick: the stopped guests' descriptors go with their stores.
            if since_check >= DESCRIPTOR_CHECK_TICKS or _descriptors.short:
                _descriptors.check()
                since_check = 0
            since_check += 1
            self._engine.increment_epoch()


class _DescriptorGuard:
    """Whether the process holds more than `DESCRIPTOR_ALARM` of its descriptor limit."""

    def __init__(self) -> None:
        self.short = False

    def check(self) -> None:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            # O(open descriptors): about 50 µs for a server's usual hundred.
            count = len(os.listdir("/proc/self/fd"))
        except OSError as exc:
            # EMFILE itself: the listing needs a descriptor. Short by definition.
            count = soft if exc.errno == errno.EMFILE else 0
        self.short = count > min(soft * DESCRIPTOR_ALARM, DESCRIPTOR_ALARM_MAX)


_descriptors = _DescriptorGuard()


_active = threading.Event()
_active_count = 0
_active_lock = threading.Lock()


@dataclass
class Watch:
    """What the host keeps for one store: what the epoch callback checks, and its limit."""

    deadline: float = float("inf")
    """time.monotonic() after which the guest is stopped."""
    cancelled: bool = False
    reason: str = ""
    """Why the guest was stopped: "timeout", "cancelled", or a host-set reason."""
    stop_now: bool = False
    """Set by host code (e.g. an output cap) to stop the guest at the next tick."""
    memory_bytes: int = 0
    """The store's memory limit now (see `limit_memory`)."""
    _id: int = field(default=0, repr=False)


_watches: dict[int, Watch] = {}
_ids = itertools.count(1)

_CallbackType = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_FinalizerType = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _error(message: str) -> int:
    err = ffi.wasmtime_error_new(message.encode())
    return ctypes.cast(err, ctypes.c_void_p).value or 0


@_CallbackType  # type: ignore[untyped-decorator]
def _on_deadline(_ctx: Any, data: int | None, delta: Any, kind: Any) -> int:
    watch = _watches.get(data or 0)
    if watch is not None:
        if watch.cancelled:
            watch.reason = watch.reason or "cancelled"
            return _error("sandboxd: execution cancelled")
        if watch.stop_now:
            return _error(f"sandboxd: execution stopped ({watch.reason})")
        if _descriptors.short:
            watch.reason = watch.reason or "descriptors"
            return _error("sandboxd: the server is short of file descriptors")
        if time.monotonic() >= watch.deadline:
            watch.reason = watch.reason or "timeout"
            return _error("sandboxd: wall-time limit reached")
    delta[0] = 1
    kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
    return 0


@_FinalizerType  # type: ignore[untyped-decorator]
def _on_store_dropped(data: int | None) -> None:
    _watches.pop(data or 0, None)


def new_store(engine: wasmtime.Engine, memory_bytes: int) -> tuple[wasmtime.Store, Watch]:
    """Create a Store with a memory limit and an epoch watchdog.

    Args:
        engine: the shared engine.
        memory_bytes: the largest size any linear memory of the store may grow to.

    Returns:
        The store and its `Watch`; arm the watch with `running()` around guest calls.
    """
    store = wasmtime.Store(engine)
    set_store_limits(store, memory_bytes)
    watch = Watch(memory_bytes=memory_bytes)
    watch._id = next(_ids)
    _watches[watch._id] = watch
    ffi.wasmtime_store_epoch_deadline_callback(
        store.ptr(), _on_deadline, ctypes.c_void_p(watch._id), _on_store_dropped
    )
    store.set_epoch_deadline(1)
    return store, watch


def set_store_limits(store: wasmtime.Store, memory_bytes: int) -> None:
    """Limit `store`'s linear memory to `memory_bytes`, and its tables and instances.

    Every call replaces all of the store's limits, so this is the only way they are set.
    """
    store.set_limits(memory_size=memory_bytes, table_elements=TABLE_ELEMENTS,
                     instances=INSTANCES, tables=TABLES, memories=MEMORIES)


def limit_memory(store: wasmtime.Store, watch: Watch, memory_bytes: int) -> None:
    """Give `store` (watched by `watch`) a run's memory limit.

    A pooled store was created with the server's default limit, which most runs ask for: they
    then cost no call into wasmtime.
    """
    if memory_bytes != watch.memory_bytes:
        set_store_limits(store, memory_bytes)
        watch.memory_bytes = memory_bytes


class running:
    """Context manager: keep the ticker going while a guest call runs."""

    def __enter__(self) -> None:
        global _active_count
        with _active_lock:
            _active_count += 1
            _active.set()

    def __exit__(self, *_exc: object) -> None:
        global _active_count
        with _active_lock:
            _active_count -= 1
            if _active_count == 0:
                _active.clear()

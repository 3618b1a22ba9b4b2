"""The warm pool: pre-created, single-use isolates per runtime, refilled in the background.

The executor asks for an isolate of a runtime key ("wasm/python", "jail/native", ...). A warm
one is handed over under a lock in microseconds (a *hit*); the refill thread of that key is
woken to replace it, so creation cost never lands on the request's path. When the pool is empty
the caller creates one on the spot (a *miss*). Isolates are never returned: the executor
destroys each one after its single execution.

Idle isolates older than `idle_ttl_s` are destroyed and replaced, so a quiet server does not
hold stale instances (clock, randomness and memory pages age) forever.

Each key has one refill thread, plus a second one that only works while the pool is below half
its target (a burst drained it): creation runs mostly outside the GIL (guest code), so two
creators fill a drained pool about twice as fast on two cores, while a pool that is nearly full
is topped up by one thread and leaves the other core to the requests.

A refill waits until the execution that took the isolate has handed it back, for at most
`refill_defer_s`: creating a jail or a Python isolate takes several milliseconds of CPU, and on
a small machine starting it at the moment of the hit slowed that very execution down. When
callers pause between calls (the hit came `PACED_GAP_S` or more after the previous hand-back),
the refill also waits `PACED_REFILL_PAUSE_S` after the hand-back, so that it does not compete
with the result on its way out; back-to-back callers get no pause, since the refill would then
land under their next call instead. Both hold from half the target down. Above half, the warm
isolates still cover the callers, and the refill waits until they pause (`PACED_GAP_S` without
a hand-back): the calls of a burst are then not slowed by refills at all (on 2 cores a refill
under a call made it about a third slower). A pool drained below half refills at once, with
every refill thread.

A hit also says whether the host has CPU to spare for its run (`take_warm`): the callers
pause between calls, no other isolate of the key is out and none is being created. A jail's
driver then polls for the program's end instead of sleeping (docs/jail.md).

Used isolates are handed back with `discard()` and destroyed by a background thread, so tearing
a store or a jail down (a millisecond or more) happens after the result has left, not before.
When callers pause between calls, the teardown also waits `PACED_REFILL_PAUSE_S` after the
hand-back, as the refill does: run at once, it competed with the result on its way out. The
queue is bounded: when destruction falls behind, `discard()` destroys inline, which slows
callers down instead of letting dead isolates pile up.

The pool reports what it does to a `PoolObserver` (the executor plugs Prometheus in there);
isolates/ itself knows nothing of metrics exporters.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from isolates.base import Isolate, IsolateFactory

__all__ = ["PoolConfig", "PoolObserver", "UnknownRuntime", "WarmPool"]

log = logging.getLogger(__name__)

REFILL_THREADS = 2
"""Refill threads per key; every one but the first works only below half the target."""
PACED_GAP_S = 0.05
"""A hit at least this long after the previous hand-back means callers pause between calls;
a burst's refill starts this long after its last hand-back."""
PACED_REFILL_PAUSE_S = 0.01
"""Pause between a hand-back and its refill, and its teardown, when callers pause between calls.
Measured on 2 cores, paced calls over gRPC: for the refill, wasm Python 6.6-8.3 -> 5.7-5.9 ms
and a warm jail 8.4-8.8 -> 7.3 ms; back-to-back wasm calls with a pause got slower
(5.9 -> 7.0 ms). For the teardown, 3 interleaved rounds of 60 paced calls each: wasm Python
6.5-7.2 -> 5.5-5.7 ms, JavaScript 5.3-6.5 -> 5.1-5.5 ms, a warm jail 6.9-7.1 -> 5.6-6.4 ms;
back-to-back calls are not affected (their teardown does not wait)."""


class UnknownRuntime(KeyError):
    """No factory is registered for the requested runtime key."""


class PoolObserver(Protocol):
    """Receives the pool's events; every method must be cheap and thread-safe."""

    def acquired(self, key: str, hit: bool) -> None:
        """An isolate of `key` was handed out (hit) or created on the spot (miss)."""

    def refilled(self, key: str, seconds: float) -> None:
        """One isolate of `key` was created in the background in `seconds`."""

    def refill_failed(self, key: str) -> None:
        """Creating an isolate of `key` in the background failed."""


class _NullObserver:
    def acquired(self, key: str, hit: bool) -> None:
        pass

    def refilled(self, key: str, seconds: float) -> None:
        pass

    def refill_failed(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class PoolConfig:
    """How many warm isolates to keep per runtime key, and for how long."""

    targets: dict[str, int] = field(default_factory=dict)
    """Warm isolates to keep per key; keys not listed keep `default_target`."""
    default_target: int = 4
    idle_ttl_s: float = 300.0
    """Warm isolates idle longer than this are destroyed and replaced."""
    refill_backoff_s: float = 1.0
    """Pause after a failed creation, doubled per consecutive failure up to 30 s."""
    max_pending_discards: int = 64
    """Used isolates waiting for background destruction before `discard()` destroys inline."""
    refill_defer_s: float = 0.02
    """Longest wait after a hit for its execution to end before the refill starts anyway."""


@dataclass
class _Slot:
    isolate: Isolate
    created: float


class _RuntimePool:
    """The warm isolates of one runtime key and the thread that keeps them topped up."""

    def __init__(
        self, factory: IsolateFactory, target: int, config: PoolConfig, observer: PoolObserver
    ) -> None:
        self.factory = factory
        self.key = factory.key
        self.target = target
        self._config = config
        self._observer = observer
        self._warm: deque[_Slot] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._creating = 0
        """Isolates being created right now by the refill threads."""
        self._lent = 0
        """Isolates handed out by `take()` and not yet handed back with `returned()`."""
        self._defer_until = 0.0
        """time.monotonic() until which a refill waits for the lent isolates to come back."""
        self._returned_at = -math.inf
        """time.monotonic() of the last hand-back."""
        self._paced = True
        """Whether the last hit came after a pause of the callers (see PACED_GAP_S)."""
        self._threads = [
            threading.Thread(
                target=self._refill_loop, args=(i,), name=f"pool-refill-{self.key}-{i}",
                daemon=True,
            )
            for i in range(REFILL_THREADS if target > 1 else 1)
        ]

    def start(self) -> None:
        if self.target > 0:
            for thread in self._threads:
                thread.start()

    def take(self) -> tuple[Isolate, bool] | None:
        """A warm isolate and whether the host has CPU to spare (see `WarmPool.take_warm`)."""
        with self._cond:
            if not self._warm:
                return None
            slot = self._warm.popleft()
            self._lent += 1
            now = time.monotonic()
            self._defer_until = now + self._config.refill_defer_s
            self._paced = now - self._returned_at >= PACED_GAP_S
            spare_cpu = self._paced and self._lent == 1 and self._creating == 0
            # Wakes the refill threads: a drained pool refills now, else the first one starts
            # waiting for the isolate to come back (see `_deferred_locked`).
            self._cond.notify_all()
        return slot.isolate, spare_cpu

    def returned(self) -> float:
        """An isolate handed out by `take()` finished its execution: refill may start.

        Returns the time.monotonic() before which the used isolate is not torn down: when
        callers pause between calls, the teardown waits as the refill does.
        """
        with self._cond:
            self._lent = max(0, self._lent - 1)
            self._returned_at = time.monotonic()
            if self._lent == 0:
                self._cond.notify_all()
            return self._returned_at + PACED_REFILL_PAUSE_S if self._paced else 0.0

    def size(self) -> int:
        with self._cond:
            return len(self._warm)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            slots = list(self._warm)
            self._warm.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=30)
        for slot in slots:
            _destroy_quietly(slot.isolate)

    def _drained_locked(self) -> bool:
        return len(self._warm) < self.target // 2

    def _deferred_locked(self) -> float:
        """Seconds the refill still waits (for lent isolates, then the pause); 0: it may run."""
        if self._drained_locked():
            return 0.0
        if self._lent:
            until = self._defer_until
        elif len(self._warm) > self.target // 2:
            # The warm isolates still cover the callers: refill once they pause, rather than
            # under the next calls of a burst.
            until = self._returned_at + PACED_GAP_S
        elif self._paced:
            until = self._returned_at + PACED_REFILL_PAUSE_S
        else:
            until = self._returned_at
        return max(0.0, until - time.monotonic())

    def _wanted_locked(self, index: int) -> bool:
        """Whether refill thread `index` should create one more isolate now (lock held)."""
        upcoming = len(self._warm) + self._creating
        if upcoming >= self.target:
            return False
        if index == 0:
            return self._deferred_locked() == 0.0
        # Helpers only catch up after a burst, never top up a nearly full pool.
        return self._drained_locked()

    def _refill_loop(self, index: int) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closed and not self._wanted_locked(index):
                    # Wake up periodically to recycle idle isolates even when nothing is taken,
                    # and when a deferred refill is due.
                    deferred = self._deferred_locked() if index == 0 else 0.0
                    self._cond.wait(timeout=deferred or min(self._config.idle_ttl_s, 60.0))
                    if index == 0 and self._expire_idle_locked():
                        break
                if self._closed:
                    return
                self._creating += 1
            started = time.perf_counter()
            try:
                isolate = self.factory.create()
            except Exception:
                with self._cond:
                    self._creating -= 1
                failures += 1
                self._observer.refill_failed(self.key)
                delay = min(self._config.refill_backoff_s * 2 ** (failures - 1), 30.0)
                log.exception("creating a warm %s isolate failed; retrying in %.1fs",
                              self.key, delay)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, timeout=delay)
                continue
            failures = 0
            self._observer.refilled(self.key, time.perf_counter() - started)
            with self._cond:
                self._creating -= 1
                if self._closed:
                    closed = True
                else:
                    closed = False
                    self._warm.append(_Slot(isolate, time.monotonic()))
            if closed:
                _destroy_quietly(isolate)
                return

    def _expire_idle_locked(self) -> bool:
        """Destroy isolates idle past the TTL; True when any was removed (caller holds lock)."""
        deadline = time.monotonic() - self._config.idle_ttl_s
        expired = [slot for slot in self._warm if slot.created < deadline]
        if not expired:
            return False
        for slot in expired:
            self._warm.remove(slot)
        # Destroy outside the hot lock would be nicer, but expiry is rare and destroy is quick;
        # doing it here keeps the count consistent with what the refill loop sees.
        for slot in expired:
            _destroy_quietly(slot.isolate)
        return True


class _Disposer:
    """Destroys used isolates on a background thread, off the request's path."""

    def __init__(self, max_pending: int) -> None:
        # (isolate, time.monotonic() before which it is not destroyed); None stops the thread.
        self._queue: queue.Queue[tuple[Isolate, float] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._loop, name="pool-dispose", daemon=True)
        self._thread.start()

    def put(self, isolate: Isolate, not_before: float = 0.0) -> bool:
        """Destroy `isolate` in the background, not before `not_before` (time.monotonic()).

        Returns False when the queue is full and the isolate was not taken.
        """
        if not self._thread.is_alive():
            # Closed: an execution abandoned while blocked came back after shutdown.
            return False
        try:
            self._queue.put_nowait((isolate, not_before))
        except queue.Full:
            return False
        return True

    def join(self) -> None:
        """Block until every discarded isolate is destroyed."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                isolate, not_before = item
                wait = not_before - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                _destroy_quietly(isolate)
            finally:
                self._queue.task_done()


class WarmPool:
    """Warm isolates for every registered runtime, each refilled by its own thread."""

    def __init__(
        self,
        factories: Iterable[IsolateFactory],
        config: PoolConfig | None = None,
        observer: PoolObserver | None = None,
    ) -> None:
        self._config = config or PoolConfig()
        self._disposer = _Disposer(self._config.max_pending_discards)
        self._observer: PoolObserver = observer or _NullObserver()
        self._pools: dict[str, _RuntimePool] = {}
        self._lent: dict[int, _RuntimePool] = {}
        """Pool hits not yet discarded, by id() of the isolate."""
        self._lent_lock = threading.Lock()
        for factory in factories:
            target = self._config.targets.get(factory.key, self._config.default_target)
            self._pools[factory.key] = _RuntimePool(factory, target, self._config, self._observer)

    def start(self) -> None:
        """Start the refill threads; warm isolates appear in the background."""
        for pool in self._pools.values():
            pool.start()

    def factory(self, key: str) -> IsolateFactory:
        """The factory registered for `key`."""
        try:
            return self._pools[key].factory
        except KeyError:
            raise UnknownRuntime(key) from None

    def acquire(self, key: str, *, facet_dir: Path | None = None) -> tuple[Isolate, bool]:
        """Hand out an isolate of `key`; returns (isolate, pool_hit). Blocking on a miss.

        An execution with a facet always gets a new isolate, because the facet's directory is
        mounted when the isolate is created.
        """
        if facet_dir is None:
            hit = self.take_warm(key)
            if hit is not None:
                return hit[0], True
        isolate = self.factory(key).create_for_immediate_use(facet_dir=facet_dir)
        self._observer.acquired(key, False)
        return isolate, False

    def take_warm(self, key: str) -> tuple[Isolate, bool] | None:
        """Hand out a warm isolate of `key`, or None on a miss (never blocks on a creation).

        With the isolate comes whether the host has CPU to spare for its run: the callers
        pause between calls, no other isolate of `key` is out and none is being created. An
        isolate may then spend some to answer sooner (`Isolate.run_on_loop`'s `spare_cpu`).
        """
        pool = self._pools.get(key)
        if pool is None:
            raise UnknownRuntime(key)
        hit = pool.take()
        if hit is None:
            return None
        isolate = hit[0]
        with self._lent_lock:
            self._lent[id(isolate)] = pool
        self._observer.acquired(key, True)
        return hit

    def discard(self, isolate: Isolate) -> None:
        """Hand back a used isolate; it is destroyed in the background (never reused).

        When the teardowns already waiting fill the queue, it is destroyed at once, here.
        """
        if not self.try_discard(isolate):
            _destroy_quietly(isolate)

    def try_discard(self, isolate: Isolate) -> bool:
        """`discard` for callers that must not block, such as the event loop.

        Returns False when the queue is full; the caller then destroys the isolate (`discard`
        does so at once).
        """
        with self._lent_lock:
            pool = self._lent.pop(id(isolate), None)
        return self._disposer.put(isolate, pool.returned() if pool is not None else 0.0)

    def wait_discarded(self) -> None:
        """Block until every discarded isolate has been destroyed (shutdown and tests)."""
        self._disposer.join()

    def sizes(self) -> dict[str, int]:
        """Warm isolates available now, per key."""
        return {key: pool.size() for key, pool in self._pools.items()}

    def size(self, key: str) -> int:
        """Warm isolates of `key` available now."""
        return self._pools[key].size()

    def targets(self) -> dict[str, int]:
        """Configured warm targets, per key."""
        return {key: pool.target for key, pool in self._pools.items()}

    def wait_warm(self, timeout: float) -> bool:
        """Block until every key holds its target (for start-up and tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(pool.size() >= pool.target for pool in self._pools.values()):
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Stop refilling, destroy every warm and discarded isolate, close the factories."""
        self._disposer.close()
        for pool in self._pools.values():
            pool.close()
        for pool in self._pools.values():
            try:
                pool.factory.close()
            except Exception:
                log.exception("closing the %s factory failed", pool.key)


def _destroy_quietly(isolate: Isolate) -> None:
    try:
        isolate.destroy()
    except Exception:
        log.exception("destroying an isolate failed")

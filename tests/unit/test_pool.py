"""The warm pool's contract, with a small in-process isolate kind.

The pool is generic over isolate kinds; these tests use a trivial kind so they can count
creations and destructions exactly. The real kinds are exercised through the server in
tests/integration/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import isolates.pool as pool_module
from isolates.base import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    Isolate,
    IsolateFactory,
    IsolateKind,
    OutputSink,
    Status,
)
from isolates.pool import PoolConfig, WarmPool
from tests.conftest import wait_for


class CountingIsolate(Isolate):
    kind = IsolateKind.WASM
    runtime = "counting"

    def __init__(self, factory: CountingFactory, facet_dir: Path | None) -> None:
        self.factory = factory
        self.facet_dir = facet_dir
        self.destroyed = False

    def run(self, request: ExecutionRequest, *, on_output: OutputSink | None = None,
            cancel: CancelToken | None = None) -> ExecutionResult:
        return ExecutionResult(status=Status.OK)

    def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            with self.factory.lock:
                self.factory.destroyed += 1


class CountingFactory(IsolateFactory):
    kind = IsolateKind.WASM
    runtime = "counting"

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.created = 0
        self.destroyed = 0
        self.fail_first = fail_first
        self.delay = delay
        self.creator_threads: set[str] = set()

    def create(self, *, facet_dir: Path | None = None) -> Isolate:
        time.sleep(self.delay)
        with self.lock:
            self.creator_threads.add(threading.current_thread().name)
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("creation failed")
            self.created += 1
        return CountingIsolate(self, facet_dir)


def test_pool_fills_to_target_in_the_background_and_hands_out_hits() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=3))
    pool.start()
    try:
        assert pool.wait_warm(10)
        assert pool.sizes() == {"wasm/counting": 3}
        isolate, hit = pool.acquire("wasm/counting")
        assert hit
        isolate.destroy()
        assert pool.wait_warm(10)
        assert factory.created == 4
        assert all(name.startswith("pool-refill") for name in factory.creator_threads)
    finally:
        pool.close()
    assert factory.destroyed == factory.created


def test_empty_pool_creates_on_the_spot_as_a_miss() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=0))
    pool.start()
    try:
        isolate, hit = pool.acquire("wasm/counting")
        assert not hit
        isolate.destroy()
    finally:
        pool.close()


def test_facet_executions_always_get_a_new_isolate_with_the_facet() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=2))
    pool.start()
    try:
        assert pool.wait_warm(10)
        isolate, hit = pool.acquire("wasm/counting", facet_dir=Path("/facets/a"))
        assert not hit
        assert isinstance(isolate, CountingIsolate)
        assert isolate.facet_dir == Path("/facets/a")
        assert pool.sizes()["wasm/counting"] == 2
        isolate.destroy()
    finally:
        pool.close()


def test_refill_failures_back_off_and_recover() -> None:
    factory = CountingFactory(fail_first=2)
    pool = WarmPool([factory], PoolConfig(default_target=1, refill_backoff_s=0.01))
    pool.start()
    try:
        assert pool.wait_warm(10)
        assert factory.fail_first == 0
    finally:
        pool.close()


def test_idle_isolates_are_recycled() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=1, idle_ttl_s=0.05))
    pool.start()
    try:
        deadline = time.monotonic() + 10
        while factory.destroyed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert factory.destroyed >= 2
        assert pool.wait_warm(10)
    finally:
        pool.close()
    assert factory.destroyed == factory.created


def test_unknown_runtime_is_a_clear_error() -> None:
    pool = WarmPool([CountingFactory()], PoolConfig(default_target=0))
    try:
        pool.acquire("wasm/nope")
    except KeyError as error:
        assert "wasm/nope" in str(error)
    else:
        raise AssertionError("acquire of an unknown runtime must fail")
    finally:
        pool.close()


def test_discarded_isolates_are_destroyed_in_the_background() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=0))
    pool.start()
    try:
        used = [pool.acquire("wasm/counting")[0] for _ in range(10)]
        for isolate in used:
            pool.discard(isolate)
        pool.wait_discarded()
        assert all(isinstance(i, CountingIsolate) and i.destroyed for i in used)
    finally:
        pool.close()
    assert factory.destroyed == factory.created == 10


def test_close_destroys_isolates_still_waiting_for_disposal() -> None:
    factory = CountingFactory()
    pool = WarmPool([factory], PoolConfig(default_target=0, max_pending_discards=1000))
    pool.start()
    for _ in range(50):
        pool.discard(pool.acquire("wasm/counting")[0])
    pool.close()
    assert factory.destroyed == factory.created == 50


@contextmanager
def _full_pool(factory: CountingFactory, **config: Any) -> Iterator[WarmPool]:
    """A started pool of `factory` with `config`, full to its target; closed afterwards."""
    pool = WarmPool([factory], PoolConfig(**config))
    pool.start()
    try:
        assert pool.wait_warm(10)
        yield pool
    finally:
        pool.close()


def test_refill_after_a_hit_waits_for_its_execution_to_end() -> None:
    factory = CountingFactory()
    with _full_pool(factory, default_target=4, refill_defer_s=30.0) as pool:
        isolate, hit = pool.acquire("wasm/counting")
        assert hit
        time.sleep(0.2)
        assert factory.created == 4, "the refill competed with the running execution"
        pool.discard(isolate)
        assert wait_for(lambda: factory.created == 5)
        assert pool.wait_warm(10)


def test_refill_starts_after_the_deferral_even_when_the_execution_runs_on() -> None:
    factory = CountingFactory()
    with _full_pool(factory, default_target=4, refill_defer_s=0.05) as pool:
        isolate, _ = pool.acquire("wasm/counting")
        assert wait_for(lambda: factory.created == 5)
        assert pool.sizes() == {"wasm/counting": 4}
        pool.discard(isolate)


def test_a_drained_pool_refills_to_half_at_once_while_its_isolates_still_run() -> None:
    factory = CountingFactory()
    with _full_pool(factory, default_target=4, refill_defer_s=30.0) as pool:
        running = [pool.acquire("wasm/counting")[0] for _ in range(3)]
        assert wait_for(lambda: pool.sizes()["wasm/counting"] >= 2)
        for isolate in running:
            pool.discard(isolate)
        assert pool.wait_warm(10)


def test_a_paced_hit_refills_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "PACED_REFILL_PAUSE_S", 0.5)
    factory = CountingFactory()
    with _full_pool(factory, default_target=2, refill_defer_s=30.0) as pool:
        # The first hit follows no hand-back: the callers count as pausing between calls. It
        # leaves half the target warm, where the refill no longer waits for a burst to end.
        isolate, _ = pool.acquire("wasm/counting")
        handed_back = time.monotonic()
        pool.discard(isolate)
        assert wait_for(lambda: factory.created == 3)
        assert time.monotonic() - handed_back >= 0.5


def test_a_burst_the_pool_covers_refills_when_the_callers_pause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "PACED_GAP_S", 1.0)
    factory = CountingFactory()
    with _full_pool(factory, default_target=8, refill_defer_s=30.0) as pool:
        # Three calls back to back leave 5 of 8 warm: more than half, no refill yet.
        for _ in range(3):
            pool.discard(pool.acquire("wasm/counting")[0])
        handed_back = time.monotonic()
        time.sleep(0.5)
        assert factory.created == 8, "a refill ran under the burst"
        assert wait_for(lambda: factory.created == 11)
        assert time.monotonic() - handed_back >= 1.0
        assert pool.wait_warm(10)


def test_back_to_back_hits_at_half_the_target_refill_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "PACED_GAP_S", 5.0)
    factory = CountingFactory()
    with _full_pool(factory, default_target=4, refill_defer_s=30.0) as pool:
        # The first call leaves 3 of 4 (the refill waits for a pause); the second, back to
        # back, 2 of 4, half the target: the refill starts without waiting for a pause.
        pool.discard(pool.acquire("wasm/counting")[0])
        pool.discard(pool.acquire("wasm/counting")[0])
        handed_back = time.monotonic()
        assert wait_for(lambda: factory.created >= 5)
        assert time.monotonic() - handed_back < 2.5


def test_a_paced_hit_is_torn_down_after_a_pause_and_back_to_back_ones_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "PACED_REFILL_PAUSE_S", 0.5)
    monkeypatch.setattr(pool_module, "PACED_GAP_S", 5.0)
    factory = CountingFactory()
    with _full_pool(factory, default_target=4, refill_defer_s=30.0) as pool:
        # The first hit follows no hand-back: the callers count as pausing between calls.
        paced, _ = pool.acquire("wasm/counting")
        pool.discard(paced)
        handed_back = time.monotonic()
        assert wait_for(lambda: factory.destroyed == 1)
        assert time.monotonic() - handed_back >= 0.5
        # A hit right after that hand-back is back to back: its teardown does not wait.
        back_to_back, _ = pool.acquire("wasm/counting")
        pool.discard(back_to_back)
        handed_back = time.monotonic()
        assert wait_for(lambda: factory.destroyed == 2)
        assert time.monotonic() - handed_back < 0.25


def test_a_lone_hit_after_a_pause_says_the_host_has_cpu_to_spare(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "PACED_GAP_S", 0.2)
    factory = CountingFactory()
    with _full_pool(factory, default_target=8, refill_defer_s=30.0) as pool:
        # The first hit follows no hand-back: the callers count as pausing between calls.
        first = pool.take_warm("wasm/counting")
        alongside = pool.take_warm("wasm/counting")
        assert first is not None and alongside is not None
        assert first[1], "a lone hit after a pause"
        assert not alongside[1], "another isolate of the key is out"
        pool.discard(first[0])
        pool.discard(alongside[0])
        back_to_back = pool.take_warm("wasm/counting")
        assert back_to_back is not None
        assert not back_to_back[1], "the callers do not pause"
        pool.discard(back_to_back[0])
        # The refill starts once the callers pause, so a full pool means they did.
        assert pool.wait_warm(10)
        after_a_pause = pool.take_warm("wasm/counting")
        assert after_a_pause is not None and after_a_pause[1]
        pool.discard(after_a_pause[0])

"""Facet grants: one holder at a time, FIFO, timeouts, threads and asyncio mixed."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from isolates.facets import DB_FILE, FacetBusy, FacetStore

WRITERS = 16
ROWS_EACH = 40


@pytest.fixture
def store(tmp_path: Path) -> FacetStore:
    return FacetStore(tmp_path / "data")


def _queued(store: FacetStore, name: str) -> int:
    return len(store._lock_for(name)._waiters)


def _wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    event = threading.Event()
    for _ in range(int(timeout / 0.001)):
        if predicate():
            return
        event.wait(0.001)
    raise AssertionError("condition not reached")


def _lockless_write(facet_dir: Path, writer: int) -> None:
    """Write like a WASM guest: SQLite without file locks (nolock=1), row by row."""
    uri = f"file:{quote(str(facet_dir / DB_FILE))}?nolock=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    # Durability is not what this checks; skipping fsync keeps 640 commits fast.
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE IF NOT EXISTS w (writer INTEGER, seq INTEGER)")
    for seq in range(ROWS_EACH):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO w VALUES (?, ?)", (writer, seq))
        conn.execute("COMMIT")
    conn.close()


def test_many_lockless_writers_in_threads_lose_nothing(store: FacetStore) -> None:
    holders = 0
    max_holders = 0
    counter = threading.Lock()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        nonlocal holders, max_holders
        try:
            with store.grant("shared", timeout=60) as facet_dir:
                with counter:
                    holders += 1
                    max_holders = max(max_holders, holders)
                _lockless_write(facet_dir, index)
                with counter:
                    holders -= 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert max_holders == 1
    result = store.query("shared", "SELECT count(*), count(DISTINCT writer) FROM w")
    assert result.rows == [(WRITERS * ROWS_EACH, WRITERS)]
    assert store.query("shared", "PRAGMA integrity_check").rows == [("ok",)]


def test_grants_are_fifo(store: FacetStore) -> None:
    order: list[int] = []
    blocker = store.grant("app")
    blocker.__enter__()
    threads = []
    for index in range(6):

        def take(i: int = index) -> None:
            with store.grant("app", timeout=60):
                order.append(i)

        thread = threading.Thread(target=take)
        thread.start()
        threads.append(thread)
        _wait_until(lambda n=index + 1: _queued(store, "app") == n)
    blocker.__exit__(None, None, None)
    for thread in threads:
        thread.join()
    assert order == list(range(6))


def test_timeout_raises_busy_and_leaves_no_trace(store: FacetStore) -> None:
    holder = store.grant("app")
    holder.__enter__()
    with pytest.raises(FacetBusy, match="busy"), store.grant("app", timeout=0.05):
        pass
    with pytest.raises(FacetBusy), store.grant("app", timeout=0):
        pass
    assert _queued(store, "app") == 0
    holder.__exit__(None, None, None)
    with store.grant("app", timeout=0) as facet_dir:  # free again, immediately
        assert facet_dir.is_dir()


def test_different_facets_never_block_each_other(store: FacetStore) -> None:
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.grant("a"):
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    try:
        with store.grant("b", timeout=0):
            pass
        store.query("b", "SELECT 1", timeout=0)
        with pytest.raises(FacetBusy):
            store.query("a", "SELECT 1", timeout=0)
    finally:
        release.set()
        thread.join()


def test_host_queries_wait_for_the_execution_holding_the_facet(store: FacetStore) -> None:
    results: list[object] = []
    holder = store.grant("app")
    facet_dir = holder.__enter__()
    _lockless_write(facet_dir, 0)
    thread = threading.Thread(
        target=lambda: results.append(store.query("app", "SELECT count(*) FROM w", timeout=60))
    )
    thread.start()
    _wait_until(lambda: _queued(store, "app") == 1)
    assert results == []  # still waiting while the execution holds the facet
    _lockless_write(facet_dir, 1)
    holder.__exit__(None, None, None)
    thread.join()
    assert results[0].rows == [(2 * ROWS_EACH,)]  # type: ignore[attr-defined]


def test_async_and_thread_waiters_share_one_fifo_queue(store: FacetStore) -> None:
    async def scenario() -> None:
        order: list[str] = []
        holder = store.grant("app")
        holder.__enter__()

        async def async_waiter(tag: str) -> None:
            async with store.grant("app", timeout=60):
                order.append(tag)
                await asyncio.sleep(0)

        def thread_waiter(tag: str) -> None:
            with store.grant("app", timeout=60):
                order.append(tag)

        first = asyncio.create_task(async_waiter("async-1"))
        await asyncio.to_thread(_wait_until, lambda: _queued(store, "app") == 1)
        thread = threading.Thread(target=thread_waiter, args=("thread-2",))
        thread.start()
        await asyncio.to_thread(_wait_until, lambda: _queued(store, "app") == 2)
        third = asyncio.create_task(async_waiter("async-3"))
        await asyncio.to_thread(_wait_until, lambda: _queued(store, "app") == 3)
        holder.__exit__(None, None, None)
        await asyncio.gather(first, third)
        await asyncio.to_thread(thread.join)
        assert order == ["async-1", "thread-2", "async-3"]

    asyncio.run(scenario())


def test_async_timeout_and_cancellation_leave_the_queue_clean(store: FacetStore) -> None:
    async def scenario() -> None:
        holder = store.grant("app")
        holder.__enter__()
        with pytest.raises(FacetBusy):
            async with store.grant("app", timeout=0.05):
                pass
        waiter = asyncio.create_task(store.aquery("app", "SELECT 1", timeout=60))
        await asyncio.to_thread(_wait_until, lambda: _queued(store, "app") == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert _queued(store, "app") == 0
        holder.__exit__(None, None, None)
        async with store.grant("app", timeout=0):
            pass

    asyncio.run(scenario())


def test_cancelling_a_running_async_query_stops_it_and_frees_the_facet(
    store: FacetStore,
) -> None:
    endless = (
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT count(*) FROM c"
    )

    async def scenario() -> None:
        with store.grant("app"):
            pass
        task = asyncio.create_task(store.aquery("app", endless, time_s=60))
        await asyncio.to_thread(_wait_until, lambda: store._lock_for("app").held)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker thread finished before the grant was released.
        assert not store._lock_for("app").held
        async with store.grant("app", timeout=0):
            pass

    asyncio.run(scenario())

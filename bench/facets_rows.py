"""Facet rows of `sandboxd bench`: host-side work through the store vs plain sqlite3.

Each store row names its baseline, the same SQL run by plain `sqlite3` in the same run with the
same durability settings (journal mode DELETE, synchronous=FULL) and a connection opened per
operation as the store does; the harness reports the ratio. What the difference buys: the
facet's grant, the symlink checks of the facet directory, the hardened connection (defensive
mode, authorizer, progress handler) and the row and byte caps.

The rows for executions that insert and read rows inside isolates join once Execute takes a
facet.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

from bench.stats import Row, summarize, time_calls
from isolates.facets import DB_FILE, FacetStore

__all__ = [
    "grant_overhead",
    "plain_insert_rows",
    "plain_read_rows",
    "plain_single_insert",
    "rows",
    "store_insert_rows",
    "store_read_rows",
    "store_single_insert",
]

GROUP = "facets"
ROWS = 1000
SCHEMA = "CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, s TEXT)"
# One statement inserts all rows from a JSON array: identical SQL for the store and sqlite3.
INSERT_MANY = "INSERT INTO t (i, s) SELECT value, 'row ' || value FROM json_each(?)"
READ_ALL = "SELECT i, s FROM t ORDER BY i"
INSERT_ONE = "INSERT INTO t (s) VALUES (?)"
PAYLOAD = json.dumps(list(range(ROWS)))

NAMES = {
    "store_insert": f"facet insert {ROWS:,} rows, one statement (store)",
    "plain_insert": f"facet insert {ROWS:,} rows, one statement (plain sqlite3)",
    "store_read": f"facet read {ROWS:,} rows (store)",
    "plain_read": f"facet read {ROWS:,} rows (plain sqlite3)",
    "store_one": "facet insert 1 row, autocommit (store)",
    "plain_one": "facet insert 1 row, autocommit (plain sqlite3)",
    "grant": "facet grant acquire+release, uncontended",
}


def _plain_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _plain_run(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = _plain_connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def store_insert_rows(store: FacetStore, rounds: int) -> Row:
    """Insert 1,000 rows in one statement through `FacetStore.query` (table emptied between)."""
    store.query("bench", SCHEMA)
    samples = time_calls(
        lambda: store.query("bench", INSERT_MANY, [PAYLOAD]),
        rounds,
        setup=lambda: store.query("bench", "DELETE FROM t"),
    )
    return summarize(GROUP, NAMES["store_insert"], samples, baseline=NAMES["plain_insert"])


def plain_insert_rows(path: Path, rounds: int) -> Row:
    """The same insert with plain sqlite3 (a connection per operation)."""
    _plain_run(path, SCHEMA)
    samples = time_calls(
        lambda: _plain_run(path, INSERT_MANY, (PAYLOAD,)),
        rounds,
        setup=lambda: _plain_run(path, "DELETE FROM t"),
    )
    return summarize(GROUP, NAMES["plain_insert"], samples)


def store_read_rows(store: FacetStore, rounds: int) -> Row:
    """Read the 1,000 rows back through `FacetStore.query`."""
    store.query("bench", "DELETE FROM t")
    store.query("bench", INSERT_MANY, [PAYLOAD])
    samples = time_calls(lambda: store.query("bench", READ_ALL), rounds)
    assert len(store.query("bench", READ_ALL).rows) == ROWS
    return summarize(GROUP, NAMES["store_read"], samples, baseline=NAMES["plain_read"])


def plain_read_rows(path: Path, rounds: int) -> Row:
    """The same read with plain sqlite3."""
    _plain_run(path, "DELETE FROM t")
    _plain_run(path, INSERT_MANY, (PAYLOAD,))
    samples = time_calls(lambda: _plain_run(path, READ_ALL), rounds)
    return summarize(GROUP, NAMES["plain_read"], samples)


def store_single_insert(store: FacetStore, rounds: int) -> Row:
    """One autocommitted single-row insert per call: the per-statement cost of the store."""
    samples = time_calls(lambda: store.query("bench", INSERT_ONE, ["x"]), rounds)
    return summarize(GROUP, NAMES["store_one"], samples, baseline=NAMES["plain_one"])


def plain_single_insert(path: Path, rounds: int) -> Row:
    """The same single-row insert with plain sqlite3."""
    samples = time_calls(lambda: _plain_run(path, INSERT_ONE, ("x",)), rounds)
    return summarize(GROUP, NAMES["plain_one"], samples)


def grant_overhead(store: FacetStore, rounds: int) -> Row:
    """Taking and releasing an uncontended grant (what every facet execution pays)."""

    def take() -> None:
        with store.grant("bench", timeout=0):
            pass

    return summarize(GROUP, NAMES["grant"], time_calls(take, rounds))


def rows(data_dir: Path, quick: bool = False) -> list[Row]:
    """Every facet row, measured in a scratch directory under `data_dir`."""
    rounds = 5 if quick else 25
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-facets-", dir=data_dir))
    try:
        store = FacetStore(scratch / "store")
        with store.grant("bench"):
            pass
        plain = scratch / "plain"
        plain.mkdir()
        plain_db = plain / DB_FILE
        # Interleave store and baseline so drifting machine load hits both alike.
        return [
            plain_insert_rows(plain_db, rounds),
            store_insert_rows(store, rounds),
            plain_read_rows(plain_db, rounds),
            store_read_rows(store, rounds),
            plain_single_insert(plain_db, rounds * 4),
            store_single_insert(store, rounds * 4),
            grant_overhead(store, rounds * 40),
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    for row in rows(Path(tempfile.gettempdir()) / "sandboxd-bench", quick=False):
        print(
            f"{row['name']:<55} p50 {row['p50_ms']:8.3f} ms  p90 {row['p90_ms']:8.3f} ms"
            f"  n={row['n']}"
        )

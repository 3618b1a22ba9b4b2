"""Facet rows of `sandboxd bench`: host-side store work and executions vs plain sqlite3.

Each store row names its baseline, the same SQL run by plain `sqlite3` in the same run with the
same durability settings (journal mode DELETE, synchronous=FULL) and a connection opened per
operation as the store does; the harness reports the ratio. What the difference buys: the
facet's grant, the symlink checks of the facet directory, the hardened connection (defensive
mode, authorizer, progress handler) and the row and byte caps.

Execution rows go through a real server process (`bench.grpc_rows.served`): an Execute of
Python code that inserts 1,000 rows into /facet/db.sqlite in one transaction, and one that
reads them back, in a WASM and in a JAIL isolate. Their baselines are the same statements run
by plain host-side sqlite3 in the same run, measured while that server idles. The difference is
everything an execution adds around the SQL: the gRPC call, the facet's grant, a fresh isolate
(with its own `import sqlite3`) and, in WASM, SQLite compiled to wasm32 over WASI file calls.
An execution of `pass` with the facet shows that fixed part on its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.grpc_rows import served
from bench.stats import Row, summarize, time_calls, unavailable
from isolates.facets import DB_FILE, GUEST_DB_PATH, FacetStore
from sandboxd import Client, SandboxdError

__all__ = [
    "execution_rows",
    "grant_overhead",
    "plain_insert_rows",
    "plain_read_rows",
    "plain_single_insert",
    "plain_transaction_rows",
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
    "plain_tx": f"facet insert {ROWS:,} rows, one transaction (plain sqlite3)",
}

# What the executions run, and what the plain baseline runs on the host: the same statements.
# The transaction empties the table first so every round inserts into the same state.
TX_STATEMENTS = ("BEGIN", "DELETE FROM t")
TX_INSERT = "INSERT INTO t (i, s) VALUES (?, ?)"
GUEST_SETUP = f"""\
import sqlite3
db = sqlite3.connect({GUEST_DB_PATH!r}, isolation_level=None)
db.execute({SCHEMA!r})
db.close()
"""
GUEST_INSERT = f"""\
import sqlite3
db = sqlite3.connect({GUEST_DB_PATH!r}, isolation_level=None)
db.execute("PRAGMA synchronous=FULL")
for statement in {TX_STATEMENTS!r}:
    db.execute(statement)
db.executemany({TX_INSERT!r}, [(i, "row " + str(i)) for i in range({ROWS})])
db.execute("COMMIT")
db.close()
"""
GUEST_READ = f"""\
import sqlite3
db = sqlite3.connect({GUEST_DB_PATH!r})
rows = db.execute({READ_ALL!r}).fetchall()
db.close()
print(len(rows))
"""
GUEST_NOOP = "pass"


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


def _plain_transaction(path: Path) -> None:
    """What GUEST_INSERT does, with plain sqlite3 on the host (connection included)."""
    conn = _plain_connect(path)
    try:
        for statement in TX_STATEMENTS:
            conn.execute(statement)
        conn.executemany(TX_INSERT, [(i, "row " + str(i)) for i in range(ROWS)])
        conn.execute("COMMIT")
    finally:
        conn.close()


def plain_transaction_rows(path: Path, rounds: int) -> Row:
    """The baseline of the insert executions: the same transaction by plain sqlite3."""
    _plain_run(path, SCHEMA)
    samples = time_calls(lambda: _plain_transaction(path), rounds)
    assert _plain_run(path, "SELECT count(*) FROM t") == [(ROWS,)]
    return summarize(GROUP, NAMES["plain_tx"], samples)


def _executor(
    client: Client, code: str, facet: str | None, isolate: str
) -> Callable[[], str]:
    """A call that runs `code` with `facet` and fails loudly unless the execution succeeded."""

    def call() -> str:
        execution = client.run_code(code, facet=facet, isolate=isolate, timeout=30)
        if not execution.ok:
            raise RuntimeError(
                f"benchmark execution failed in {isolate}: {execution.status} "
                f"{execution.message} {execution.stderr}"
            )
        return execution.stdout

    return call


def execution_rows(client: Client, isolate: str, rounds: int) -> list[Row]:
    """Executions with a facet in `isolate`: `pass`, the 1,000-row transaction, the read.

    `pass` without a facet is the baseline of `pass` with one: an execution with a facet needs
    an isolate created around the facet's directory, so it cannot come from the warm pool.
    Each kind gets its own facet, deleted afterwards.
    """
    facet = f"bench-{isolate}-{uuid.uuid4().hex[:8]}"
    label = f"{isolate} python"
    try:
        _executor(client, GUEST_SETUP, facet, isolate)()
        bare = time_calls(_executor(client, GUEST_NOOP, None, isolate), rounds)
        noop = time_calls(_executor(client, GUEST_NOOP, facet, isolate), rounds)
        insert = time_calls(_executor(client, GUEST_INSERT, facet, isolate), rounds)
        read_call = _executor(client, GUEST_READ, facet, isolate)
        read = time_calls(read_call, rounds)
        if read_call().strip() != str(ROWS):
            raise RuntimeError(f"the {isolate} read did not see {ROWS} rows")
        if client.facets.query(facet, "SELECT count(*) FROM t").rows != [(ROWS,)]:
            raise RuntimeError(f"the {isolate} inserts did not leave {ROWS} rows")
    finally:
        # NotFound when the first execution failed before the facet existed.
        with contextlib.suppress(SandboxdError):
            client.facets.delete(facet, timeout=30)
    bare_name = f"facet Execute `pass` without a facet ({label})"
    return [
        summarize(GROUP, bare_name, bare),
        summarize(GROUP, f"facet Execute `pass` with a facet ({label})", noop, baseline=bare_name),
        summarize(
            GROUP,
            f"facet Execute insert {ROWS:,} rows, one transaction ({label})",
            insert,
            baseline=NAMES["plain_tx"],
        ),
        summarize(
            GROUP,
            f"facet Execute read {ROWS:,} rows ({label})",
            read,
            baseline=NAMES["plain_read"],
        ),
    ]


def grant_overhead(store: FacetStore, rounds: int) -> Row:
    """Taking and releasing an uncontended grant (what every facet execution pays)."""

    def take() -> None:
        with store.grant("bench", timeout=0):
            pass

    return summarize(GROUP, NAMES["grant"], time_calls(take, rounds))


def rows(data_dir: Path, quick: bool = False) -> list[Row]:
    """Every facet row, measured in a scratch directory under `data_dir`.

    The execution rows need a server on `data_dir` (it holds the built runtimes); the host-side
    baselines of those rows are measured while that server is up and idle.
    """
    rounds = 5 if quick else 25
    exec_rounds = 5 if quick else 30
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
        out = [
            plain_insert_rows(plain_db, rounds),
            store_insert_rows(store, rounds),
            plain_read_rows(plain_db, rounds),
            store_read_rows(store, rounds),
            plain_single_insert(plain_db, rounds * 4),
            store_single_insert(store, rounds * 4),
            grant_overhead(store, rounds * 40),
        ]
        tx_db = plain / "tx.sqlite"
        with served(data_dir) as (target, _pid, _ready), Client(target) as client:
            time.sleep(0.5)  # let the warm pools fill, as the gRPC rows do
            out.append(plain_transaction_rows(tx_db, exec_rounds))
            for isolate in ("wasm", "jail"):
                try:
                    out.extend(execution_rows(client, isolate, exec_rounds))
                except (SandboxdError, RuntimeError) as exc:
                    out.append(unavailable(GROUP, f"facet Execute rows ({isolate} python)", exc))
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    for row in rows(Path(tempfile.gettempdir()) / "sandboxd-bench", quick=False):
        print(
            f"{row['name']:<55} p50 {row['p50_ms']:8.3f} ms  p90 {row['p90_ms']:8.3f} ms"
            f"  n={row['n']}"
        )

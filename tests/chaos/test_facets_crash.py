"""kill -9 of a process writing to a facet loses no committed row and leaves a sound database.

The writer is a real subprocess using the store the server uses (host queries with journal mode
DELETE and synchronous=FULL). It prints each row id only after the statement committed; the
test kills it at several points, mid-transaction as likely as not (every tenth statement
rewrites many pages), and then opens the data directory with a new store, as a restarted server
would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from isolates.facets import DB_FILE, FacetStore

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys
from pathlib import Path
from isolates.facets import FacetStore

store = FacetStore(Path(sys.argv[1]))
with store.grant("crash"):
    pass
store.query("crash", "CREATE TABLE IF NOT EXISTS w (i INTEGER PRIMARY KEY, pad BLOB)")
start = store.query("crash", "SELECT coalesce(max(i) + 1, 0) FROM w").rows[0][0]
i = start
while True:
    store.query("crash", "INSERT INTO w VALUES (?, randomblob(3000))", [i])
    print(i, flush=True)
    if i % 10 == 0:
        # A transaction spanning many pages keeps a rollback journal alive for a while.
        store.query("crash", "UPDATE w SET pad = randomblob(3000) WHERE i % 3 = ?", [i % 3])
    i += 1
"""


def _run_and_kill(data_dir: Path, commits: int) -> list[int]:
    """Start the writer, SIGKILL it after `commits` reported commits; return all it reported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_dir)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert child.stdout is not None
    reported: list[int] = []
    try:
        while len(reported) < commits:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.wait()}"
            reported.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        # Ids printed between the decision and the kill were committed too.
        reported.extend(int(line) for line in child.stdout.read().split())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return reported


def test_kill_9_mid_write_loses_no_committed_row(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    committed: set[int] = set()
    for commits in (40, 95, 150):
        reported = _run_and_kill(data_dir, commits)
        committed.update(reported)
        store = FacetStore(data_dir)  # a restart
        assert store.query("crash", "PRAGMA integrity_check").rows == [("ok",)]
        rows = store.query("crash", "SELECT i FROM w", max_rows=10**6).rows
        present = {row[0] for row in rows if isinstance(row[0], int)}
        assert committed <= present
        # At most the one statement in flight at the kill committed without being reported.
        assert len(present - committed) <= 1
        committed = present
    store = FacetStore(data_dir)
    journal = store.facet_dir("crash") / f"{DB_FILE}-journal"
    # No hot journal is left: rolled back and deleted, or killed before its header was written
    # (a zeroed first byte, which SQLite ignores and the next transaction replaces).
    assert not journal.exists() or journal.read_bytes()[:1] == b"\0"
    store.query("crash", "INSERT INTO w VALUES (-1, zeroblob(10))")
    assert not journal.exists()  # the next write commits and removes it (journal mode DELETE)
    assert store.query("crash", "SELECT count(*) FROM w WHERE i = -1").rows == [(1,)]

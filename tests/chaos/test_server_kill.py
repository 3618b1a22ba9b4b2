"""kill -9 of a whole server: nothing committed is lost (artifacts commits, facet rows)."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandboxd import Client, SandboxdError
from tests.conftest import private_data_dir

WRITER = (
    "import sqlite3\n"
    "db = sqlite3.connect('/facet/db.sqlite')\n"
    "db.execute('CREATE TABLE IF NOT EXISTS t (n INTEGER)')\n"
    "db.commit()\n"
    "for n in range(100000):\n"
    "    db.execute('INSERT INTO t VALUES (?)', (n,))\n"
    "    db.commit()\n"
    "    print(n, flush=True)\n"
)


@contextmanager
def serve(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--port", "0", "--metrics-port", "-1",
         "--git-port", "0", "--data-dir", str(data_dir), "--no-jail",
         "--pool-wasm-python", "1", "--pool-wasm-javascript", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        match = re.search(r"serving on \S+:(\d+)", process.stdout.readline())
        assert match, "server did not start"
        yield process, f"127.0.0.1:{match.group(1)}"
    finally:
        # A server the test did not kill stops the normal way, which also unmounts its
        # scratch tmpfs (a killed one's is reaped by the next server on the data directory).
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()


@pytest.fixture
def own_dir(data_dir: Path, tmp_path: Path) -> Path:
    return private_data_dir(data_dir, tmp_path)


def test_kill_9_mid_write_loses_no_committed_row_or_commit(own_dir: Path) -> None:
    reported: list[int] = []
    with serve(own_dir) as (process, target), Client(target) as client:
        client.artifacts.create_repo("kept")
        commit = client.artifacts.commit("kept", {"a.txt": b"safe"}, message="before the kill")

        def write() -> None:
            def on_stdout(chunk: str) -> None:
                reported.extend(int(n) for n in chunk.split())

            # The server dies under the call, as intended.
            with contextlib.suppress(SandboxdError):
                client.run_code(WRITER, facet="kill9", timeout=60, on_stdout=on_stdout)

        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 30
        while len(reported) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        writer.join(timeout=30)
    assert len(reported) >= 50, "the writer never got going"

    with serve(own_dir) as (_process, target), Client(target) as client:
        rows = client.facets.query("kill9", "SELECT n FROM t ORDER BY n").rows
        assert client.facets.query("kill9", "PRAGMA integrity_check").rows == [("ok",)]
        stored = {row[0] for row in rows}
        # Every row the guest printed after its COMMIT returned survived the kill.
        assert set(reported) <= stored
        assert client.artifacts.read("kept", "a.txt") == b"safe"
        assert [c.id for c in client.artifacts.log("kept")] == [commit]

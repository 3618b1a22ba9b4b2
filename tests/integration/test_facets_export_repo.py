"""ExportToRepo on the real server: a facet's database committed to an artifacts repo.

Every test reads the committed file back through the Artifacts service, writes it to a
temporary file and opens it with the standard sqlite3 module, so what is checked is what a
`git clone` of the repo would hand to a user.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandboxd import AsyncClient, Client
from sandboxd._errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def client(target: str) -> Iterator[Client]:
    with Client(target) as c:
        yield c


@pytest.fixture
def repo(client: Client) -> str:
    name = unique("exp-")
    client.artifacts.create_repo(name)
    return name


def create(client: Client, facet: str, schema: str) -> None:
    """Create `facet` from the host: import a fresh database that holds `schema`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "new.sqlite"
        db = sqlite3.connect(path)
        db.execute(schema)
        db.commit()
        db.close()
        client.facets.import_(facet, path)


def fill(client: Client, facet: str, rows: int) -> None:
    create(client, facet, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    client.facets.query(
        facet,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
        "INSERT INTO t (v) SELECT 'row ' || i FROM c",
        [rows],
    )


def open_committed(client: Client, repo: str, path: str, ref: str, tmp_path: Path) -> list[object]:
    """Read `path` at `ref`, check it is a sound database, and return its rows of `t`."""
    data = client.artifacts.read(repo, path, ref)
    copy = tmp_path / f"{uuid.uuid4().hex}.sqlite"
    copy.write_bytes(data)
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        db.close()


def test_export_commits_a_sound_database_with_every_row(
    client: Client, repo: str, tmp_path: Path
) -> None:
    facet = unique("f")
    fill(client, facet, 500)
    commit = client.facets.export_to_repo(facet, repo)
    assert len(commit) == 40
    rows = open_committed(client, repo, f"{facet}.sqlite", commit, tmp_path)
    assert rows == [(i, f"row {i}") for i in range(1, 501)]
    (head,) = client.artifacts.log(repo, "main")
    assert head.id == commit
    assert head.message.strip() == f"Export facet {facet}"


def test_rows_written_by_an_execution_are_in_the_export(
    client: Client, repo: str, tmp_path: Path
) -> None:
    facet = unique("f")
    code = (
        "import sqlite3\n"
        "db = sqlite3.connect('/facet/db.sqlite')\n"
        "db.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)')\n"
        "db.executemany('INSERT INTO t (v) VALUES (?)', [(f'w{i}',) for i in range(50)])\n"
        "db.commit()\n"
    )
    execution = client.run_code(code, facet=facet, isolate="wasm")
    assert execution.ok, execution.stderr
    commit = client.facets.export_to_repo(facet, repo, path="db/app.sqlite")
    rows = open_committed(client, repo, "db/app.sqlite", commit, tmp_path)
    assert rows == [(i + 1, f"w{i}") for i in range(50)]


def test_each_export_is_a_snapshot_on_top_of_the_branch(
    client: Client, repo: str, tmp_path: Path
) -> None:
    facet = unique("f")
    fill(client, facet, 3)
    client.artifacts.commit(repo, {"README.md": b"backups\n"}, message="start", branch="snap")
    first = client.facets.export_to_repo(facet, repo, branch="snap", message="three rows")
    client.facets.query(facet, "DELETE FROM t WHERE id = 2")
    second = client.facets.export_to_repo(facet, repo, branch="snap", message="two rows")

    assert open_committed(client, repo, f"{facet}.sqlite", first, tmp_path) == [
        (1, "row 1"), (2, "row 2"), (3, "row 3"),
    ]
    assert open_committed(client, repo, f"{facet}.sqlite", "snap", tmp_path) == [
        (1, "row 1"), (3, "row 3"),
    ]
    log = client.artifacts.log(repo, "snap")
    assert [c.id for c in log[:2]] == [second, first]
    assert [c.message.strip() for c in log] == ["two rows", "three rows", "start"]
    # The file is laid over the branch: what was there stays.
    assert client.artifacts.read(repo, "README.md", "snap") == b"backups\n"


def test_a_database_above_the_streaming_threshold_round_trips(
    client: Client, repo: str, tmp_path: Path
) -> None:
    # Over 8 MiB the artifact store streams the spool file instead of reading it whole.
    facet = unique("f")
    create(client, facet, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    for _ in range(10):
        client.facets.query(facet, "INSERT INTO t (v) VALUES (randomblob(1048576))")
    digest = "SELECT id, length(v), hex(substr(v, 1, 64)), hex(substr(v, -64)) FROM t ORDER BY id"
    expected = client.facets.query(facet, digest).rows
    commit = client.facets.export_to_repo(facet, repo)
    data = client.artifacts.read(repo, f"{facet}.sqlite", commit)
    assert len(data) > 10 * 1024 * 1024
    copy = tmp_path / "big.sqlite"
    copy.write_bytes(data)
    db = sqlite3.connect(copy)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute(digest).fetchall() == expected
    finally:
        db.close()


def test_an_export_waits_for_the_execution_holding_the_facet(
    client: Client, repo: str, tmp_path: Path
) -> None:
    # The snapshot takes the facet's grant, so it sees an execution's transaction whole or not
    # at all; this one holds the grant until after its COMMIT.
    facet = unique("f")
    create(client, facet, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    code = (
        "import sqlite3, time\n"
        "db = sqlite3.connect('/facet/db.sqlite', isolation_level=None)\n"
        "db.execute('BEGIN')\n"
        "for i in range(1, 101):\n"
        "    db.execute('INSERT INTO t VALUES (?, ?)', (i, 'x'))\n"
        "time.sleep(1.0)\n"
        "db.execute('COMMIT')\n"
        "time.sleep(0.5)\n"
    )
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.run_code, code, facet=facet, isolate="wasm", timeout=30)
        held = False
        while not held and not running.done():
            try:
                client.facets.query(facet, "SELECT 1", timeout=0.5)
            except ResourceExhaustedError:
                held = True  # the execution holds the grant
        assert held, "the execution ended before it was seen holding the facet"
        commit = client.facets.export_to_repo(facet, repo, timeout=30)
        assert running.result().ok
    rows = open_committed(client, repo, f"{facet}.sqlite", commit, tmp_path)
    assert rows == [(i, "x") for i in range(1, 101)]


def test_unknown_facet_and_unknown_repo_are_not_found(client: Client, repo: str) -> None:
    facet = unique("f")
    with pytest.raises(NotFoundError, match=facet):
        client.facets.export_to_repo(facet, repo)
    fill(client, facet, 1)
    missing = unique("nope-")
    with pytest.raises(NotFoundError, match=f"repo.*{missing}"):
        client.facets.export_to_repo(facet, missing)


@pytest.mark.parametrize(
    ("facet", "repo_name", "path", "branch", "message", "field"),
    [
        ("Bad/Name", None, None, "main", None, "facet"),
        (None, "", None, "main", None, "repo"),
        (None, "Upper Case", None, "main", None, "repo"),
        (None, None, "../escape.sqlite", "main", None, "path"),
        (None, None, "/abs.sqlite", "main", None, "path"),
        (None, None, "sub/.git/config", "main", None, "path"),
        (None, None, None, "a..b", None, "branch"),
        (None, None, None, "main", "nul\x00inside", "message"),
    ],
)
def test_bad_arguments_name_the_field(
    client: Client,
    repo: str,
    facet: str | None,
    repo_name: str | None,
    path: str | None,
    branch: str,
    message: str | None,
    field: str,
) -> None:
    good = unique("f")
    fill(client, good, 1)
    with pytest.raises(InvalidArgumentError) as caught:
        client.facets.export_to_repo(
            facet or good,
            repo if repo_name is None else repo_name,
            path=path,
            branch=branch,
            message=message,
        )
    assert [v.field for v in caught.value.field_violations] == [field]
    # A refused export commits nothing: the repo still has no branch at all.
    with pytest.raises(NotFoundError):
        client.artifacts.log(repo, branch if field != "branch" else "main")


def test_async_client_exports(target: str, repo: str, client: Client, tmp_path: Path) -> None:
    facet = unique("f")
    fill(client, facet, 7)

    async def export() -> str:
        async with AsyncClient(target) as async_client:
            return await async_client.facets.export_to_repo(facet, repo, path="a.sqlite")

    commit = asyncio.run(export())
    rows = open_committed(client, repo, "a.sqlite", commit, tmp_path)
    assert rows == [(i, f"row {i}") for i in range(1, 8)]

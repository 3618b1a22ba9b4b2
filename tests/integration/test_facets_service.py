"""The Facets service on a real grpc.aio server (port 0), driven through the SDK and raw stubs.

The server hosts only the Facets service over a `FacetStore` in a temporary data directory,
so this runs without isolate runtimes; the same store object lets tests hold a facet's grant
the way a running execution would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

from executor import facets_service
from isolates.facets import DB_FILE, FacetStore
from sandboxd._errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from sandboxd._facets import AsyncFacets, Facets
from sandboxd.v1 import facets_pb2 as pb
from sandboxd.v1 import facets_pb2_grpc

BUSY_WAIT_S = 0.3
ENDLESS = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT count(*) FROM c"


class FacetsServer:
    """A grpc.aio server with the Facets service, on its own loop in a thread."""

    def __init__(self, store: FacetStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def _start(self) -> None:
        self.server = grpc.aio.server()
        facets_service.add_to_server(self.server, self.store, max_wait_s=BUSY_WAIT_S)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FacetsServer]:
    running = FacetsServer(FacetStore(tmp_path_factory.mktemp("facets-data")))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def channel(server: FacetsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture
def facets(channel: grpc.Channel) -> Facets:
    return Facets(channel)


def _fresh(server: FacetsServer, name: str) -> str:
    if server.store.exists(name):
        server.store.delete(name)
    with server.store.grant(name):
        pass
    return name


def test_query_round_trips_every_type(server: FacetsServer, facets: Facets) -> None:
    name = _fresh(server, "types")
    facets.query(name, "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)")
    inserted = facets.query(
        name, "INSERT INTO t VALUES (?, ?, ?, ?, ?)", [-(2**63), 2.5, "ünï", b"\x00\x01", None]
    )
    assert inserted.rows_changed == 1 and inserted.rows == []
    result = facets.query(name, "SELECT * FROM t WHERE s = :s", {"s": "ünï"})
    assert result.columns == ("i", "r", "s", "b", "n")
    assert result.rows == [(-(2**63), 2.5, "ünï", b"\x00\x01", None)]
    assert result.dicts()[0]["s"] == "ünï"
    empty = facets.query(name, "SELECT * FROM t WHERE 0")
    assert empty.columns == ("i", "r", "s", "b", "n") and empty.rows == []


def test_large_results_stream_in_order_within_caps(server: FacetsServer, facets: Facets) -> None:
    name = _fresh(server, "large")
    facets.query(name, "CREATE TABLE t (i INTEGER PRIMARY KEY, pad TEXT)")
    facets.query(
        name,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000) "
        "INSERT INTO t SELECT i, printf('%.1000c', 'x') FROM c",
    )
    everything = facets.query(name, "SELECT i, pad FROM t ORDER BY i", max_rows=10_000)
    assert [row[0] for row in everything.rows] == list(range(1, 5001))
    assert not everything.truncated
    capped = facets.query(name, "SELECT i FROM t ORDER BY i", max_rows=100)
    assert len(capped.rows) == 100 and capped.truncated
    by_bytes = facets.query(name, "SELECT pad FROM t", max_bytes=10_000)
    assert len(by_bytes.rows) == 10 and by_bytes.truncated


def test_list_export_import_delete(server: FacetsServer, facets: Facets, tmp_path: Path) -> None:
    name = _fresh(server, "notes")
    facets.query(name, "CREATE TABLE notes (body TEXT)")
    facets.query(name, "INSERT INTO notes VALUES ('kept')")
    listed = {f.name: f for f in facets.list()}
    assert listed[name].size_bytes > 0

    data = facets.export(name)
    copy = tmp_path / "notes.sqlite"
    assert facets.export_to(name, copy) == len(data) == copy.stat().st_size
    conn = sqlite3.connect(copy)
    assert conn.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    conn.close()

    if server.store.exists("notes-copy"):
        server.store.delete("notes-copy")
    info = facets.import_("notes-copy", copy)
    assert info.name == "notes-copy" and info.size_bytes == len(data)
    assert facets.query("notes-copy", "SELECT body FROM notes").rows == [("kept",)]
    with pytest.raises(AlreadyExistsError):
        facets.import_("notes-copy", data)
    facets.query("notes-copy", "DELETE FROM notes")
    facets.import_("notes-copy", data, replace=True)
    assert facets.query("notes-copy", "SELECT count(*) FROM notes").rows == [(1,)]

    facets.delete("notes-copy")
    assert "notes-copy" not in {f.name for f in facets.list()}
    with pytest.raises(NotFoundError):
        facets.query("notes-copy", "SELECT 1")
    with pytest.raises(NotFoundError):
        facets.delete("notes-copy")
    with pytest.raises(NotFoundError):
        facets.export("notes-copy")


def test_invalid_input_names_the_field(server: FacetsServer, facets: Facets) -> None:
    name = _fresh(server, "fields")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: facets.query("../etc", "SELECT 1"), "facet"),
        (lambda: facets.query("Bad Name", "SELECT 1"), "facet"),
        (lambda: facets.query(name, "   "), "sql"),
        (lambda: facets.query(name, "SELEC 1"), "sql"),
        (lambda: facets.query(name, "SELECT ?", [1, 2]), "params"),
        (lambda: facets.export("a\x00b"), "facet"),
        (lambda: facets.delete("/etc"), "facet"),
        (lambda: facets.import_("x", b"not a database" * 50), "data"),
        (lambda: facets.import_("../x", b""), "facet"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgumentError) as raised:
            call()
        assert [v.field for v in raised.value.field_violations] == [field]
    assert not server.store.exists("x")


def test_denied_sql_is_permission_denied_with_error_info(
    server: FacetsServer, facets: Facets, channel: grpc.Channel, tmp_path: Path
) -> None:
    name = _fresh(server, "denied")
    for sql in (
        f"ATTACH DATABASE '{tmp_path / 'x.sqlite'}' AS x",
        "SELECT load_extension('libc.so.6')",
        "PRAGMA writable_schema = ON",
    ):
        with pytest.raises(PermissionDeniedError, match="not allowed"):
            facets.query(name, sql)
    assert not (tmp_path / "x.sqlite").exists()
    stub = facets_pb2_grpc.FacetsStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.Query(pb.QueryFacetRequest(facet=name, sql="ATTACH 'y' AS y")))
    status = rpc_status.from_call(raised.value)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details) and info.reason == "SQL_DENIED"


def test_runaway_query_is_stopped(server: FacetsServer, facets: Facets) -> None:
    name = _fresh(server, "runaway")
    with pytest.raises(ResourceExhaustedError, match="time budget"):
        facets.query(name, ENDLESS, time_budget=0.2)
    assert facets.query(name, "SELECT 42").rows == [(42,)]


def test_busy_facet_answers_resource_exhausted_with_retry_info(
    server: FacetsServer, facets: Facets
) -> None:
    name = _fresh(server, "busy")
    with server.store.grant(name):  # as an execution holding the facet would
        with pytest.raises(ResourceExhaustedError, match="busy") as raised:
            facets.query(name, "SELECT 1")
        assert raised.value.retry_after > 0
        with pytest.raises(ResourceExhaustedError):
            facets.delete(name)
        other = _fresh(server, "not-busy")
        assert facets.query(other, "SELECT 1").rows == [(1,)]
    assert facets.query(name, "SELECT 1").rows == [(1,)]


async def test_async_sdk(server: FacetsServer) -> None:
    name = _fresh(server, "async")
    async with grpc.aio.insecure_channel(server.target) as channel:
        facets = AsyncFacets(channel)
        await facets.query(name, "CREATE TABLE t (x)")
        await facets.query(name, "INSERT INTO t VALUES (?), (?)", [1, "two"])
        result = await facets.query(name, "SELECT x FROM t ORDER BY rowid")
        assert result.rows == [(1,), ("two",)]
        data = await facets.export(name)
        assert data[:16] == b"SQLite format 3\x00"
        if server.store.exists("async-copy"):
            server.store.delete("async-copy")
        info = await facets.import_("async-copy", data)
        assert info.size_bytes == len(data)
        copied = await facets.query("async-copy", "SELECT x FROM t ORDER BY rowid")
        assert copied.rows == [(1,), ("two",)]
        assert "async-copy" in {f.name for f in await facets.list()}
        with pytest.raises(PermissionDeniedError):
            await facets.query(name, "ATTACH ':memory:' AS m")
        with pytest.raises(InvalidArgumentError) as raised:
            await facets.query("../x", "SELECT 1")
        assert raised.value.field_violations[0].field == "facet"
        await facets.delete("async-copy")
        with pytest.raises(NotFoundError):
            await facets.query("async-copy", "SELECT 1")


def test_rows_written_by_a_grant_holder_are_read_by_the_sdk(
    server: FacetsServer, facets: Facets
) -> None:
    name = _fresh(server, "shared")
    with server.store.grant(name) as facet_dir:  # what an execution's guest would do
        conn = sqlite3.connect(facet_dir / DB_FILE)
        conn.execute("CREATE TABLE visits (n)")
        conn.executemany("INSERT INTO visits VALUES (?)", [(i,) for i in range(10)])
        conn.commit()
        conn.close()
    assert facets.query(name, "SELECT sum(n) FROM visits").rows == [(45,)]

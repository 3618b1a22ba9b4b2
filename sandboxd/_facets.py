"""`client.facets`: host-side access to facets, the private SQLite databases of executions.

An execution with ``facet="NAME"`` sees the database at ``/facet/db.sqlite``; these methods
read and manage the same database from outside. `Facets` (sync) and `AsyncFacets` mirror each
other and share the request building and result decoding below.

    rows = client.facets.query("todo", "SELECT id, title FROM items WHERE done = ?", [0])
    for item_id, title in rows.rows:
        ...
    data = client.facets.export("todo")          # the database file, a consistent copy
    client.facets.import_("todo-copy", data)     # validated on the server
    commit = client.facets.export_to_repo("todo", "backups")  # todo.sqlite on backups@main

Errors are `sandboxd.SandboxdError` subclasses: `InvalidArgumentError` (bad name, SQL or
parameters; `field_violations` names the field), `NotFoundError`, `PermissionDeniedError`
(SQL denied: ATTACH, extensions, forbidden pragmas), `ResourceExhaustedError` (the facet stayed
busy with executions, or the statement ran past its time budget), `AlreadyExistsError`,
`ConflictError` (export_to_repo: the branch moved meanwhile; retry).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from pydantic import BaseModel, ConfigDict

from sandboxd._arguments import checked, milliseconds, optional_text, seconds, text
from sandboxd._errors import InvalidArgumentError, from_rpc_error
from sandboxd.v1 import facets_pb2 as pb
from sandboxd.v1 import facets_pb2_grpc

__all__ = ["AsyncFacets", "FacetInfo", "Facets", "QueryResult"]

Value = None | int | float | str | bytes
"""A SQLite value: NULL, INTEGER, REAL, TEXT or BLOB."""
Params = Sequence[Any] | Mapping[str, Any]
DataSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
"""What `import_` accepts: the bytes, a path to a file, or an open binary file."""

_CHUNK = 1024 * 1024
_INT64 = (-(2**63), 2**63 - 1)


class FacetInfo(BaseModel):
    """One facet as listed by the server."""

    model_config = ConfigDict(frozen=True)

    name: str
    size_bytes: int
    """Size of the database file."""
    modified: datetime
    """Last modification of the database file (UTC)."""


class QueryResult(BaseModel):
    """The answer to one SQL statement."""

    model_config = ConfigDict(frozen=True)

    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = []
    truncated: bool = False
    """More rows existed than `max_rows` or `max_bytes` let through."""
    rows_changed: int = 0
    """Rows inserted, updated or deleted by the statement."""

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as dictionaries keyed by column name."""
        return [dict(zip(self.columns, row, strict=False)) for row in self.rows]


def _to_value(value: Any, where: str) -> pb.FacetValue:
    if value is None:
        return pb.FacetValue(null=True)
    if isinstance(value, bool | int):
        if not _INT64[0] <= int(value) <= _INT64[1]:
            raise InvalidArgumentError(
                f"{where}: integer {value} does not fit SQLite's 64-bit INTEGER"
            )
        return pb.FacetValue(integer=int(value))
    if isinstance(value, float):
        return pb.FacetValue(real=value)
    if isinstance(value, str):
        return pb.FacetValue(text=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.FacetValue(blob=bytes(value))
    raise InvalidArgumentError(
        f"{where}: type {type(value).__name__} cannot be bound (use None, int, float, str, bytes)"
    )


def _from_value(value: pb.FacetValue) -> Value:
    kind = value.WhichOneof("kind")
    if kind == "integer":
        return value.integer
    if kind == "real":
        return value.real
    if kind == "text":
        return value.text
    if kind == "blob":
        return value.blob
    return None


def _query_request(
    name: str,
    sql: str,
    params: Params,
    max_rows: int,
    max_bytes: int,
    read_only: bool,
    time_budget: float | None,
) -> pb.QueryFacetRequest:
    request = checked(
        pb.QueryFacetRequest,
        facet=text("name", name),
        sql=sql,
        max_rows=max_rows,
        max_bytes=max_bytes,
        read_only=read_only,
        time_budget_ms=milliseconds("time_budget", time_budget),
    )
    if isinstance(params, Mapping):
        for key, value in params.items():
            request.named_params[key.lstrip(":")].CopyFrom(_to_value(value, f"params[{key!r}]"))
    elif isinstance(params, str | bytes):
        raise InvalidArgumentError("params: must be a sequence or a mapping of values")
    else:
        request.params.extend(_to_value(v, f"params[{i}]") for i, v in enumerate(params))
    return request


class _Collector:
    """Folds the streamed query responses into one `QueryResult`."""

    def __init__(self) -> None:
        self.columns: tuple[str, ...] = ()
        self.rows: list[tuple[Any, ...]] = []
        self.truncated = False
        self.rows_changed = 0

    def add(self, response: pb.QueryFacetResponse) -> None:
        if response.columns:
            self.columns = tuple(response.columns)
        self.rows.extend(tuple(_from_value(v) for v in row.values) for row in response.rows)
        if response.done:
            self.truncated = response.truncated
            self.rows_changed = response.rows_changed

    def result(self) -> QueryResult:
        return QueryResult(
            columns=self.columns,
            rows=self.rows,
            truncated=self.truncated,
            rows_changed=self.rows_changed,
        )


def _info(message: pb.FacetInfo) -> FacetInfo:
    return FacetInfo(
        name=message.name,
        size_bytes=message.size_bytes,
        modified=message.modified.ToDatetime(tzinfo=UTC),
    )


def _chunks_of(data: DataSource) -> Iterator[bytes]:
    """Chunks of an import's data, read lazily from a file when given one."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            yield bytes(view[start : start + _CHUNK])
        return
    if isinstance(data, str | os.PathLike):
        with open(data, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
        return
    while chunk := data.read(_CHUNK):
        yield chunk


def _export_to_repo_request(
    name: str, repo: str, path: str | None, branch: str, message: str | None
) -> pb.ExportFacetToRepoRequest:
    # Empty fields take the server's defaults: "<name>.sqlite" and "Export facet <name>".
    return checked(
        pb.ExportFacetToRepoRequest,
        facet=text("name", name),
        repo=repo,
        path=optional_text("path", path),
        branch=branch,
        message=optional_text("message", message),
    )


def _import_requests(name: str, data: DataSource, replace: bool) -> Iterator[pb.ImportFacetRequest]:
    """The request stream of an import, its arguments checked before the stream starts."""
    first = checked(pb.ImportFacetRequest, facet=text("name", name), replace=replace)
    return _import_stream(first, data)


def _import_stream(
    first: pb.ImportFacetRequest, data: DataSource
) -> Iterator[pb.ImportFacetRequest]:
    yield first
    for chunk in _chunks_of(data):
        yield pb.ImportFacetRequest(data=chunk)


class Facets:
    """Facets over a synchronous channel (``client.facets``).

    Args:
        channel: a grpc channel to a sandboxd server.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = facets_pb2_grpc.FacetsStub(channel)

    def query(
        self,
        name: str,
        sql: str,
        params: Params = (),
        *,
        max_rows: int = 0,
        max_bytes: int = 0,
        read_only: bool = False,
        time_budget: float | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one SQL statement on facet `name`.

        Args:
            name: the facet.
            sql: exactly one statement with `?` (sequence params) or `:name` (mapping params)
                placeholders.
            params: the values to bind: None, int, float, str or bytes.
            max_rows: rows to return at most (0: the server's default).
            max_bytes: bytes of row data to return at most (0: the server's default).
            read_only: refuse writes.
            time_budget: seconds the statement may run (None: the server's default).
            timeout: the call's deadline in seconds, including waiting for a busy facet.

        Returns:
            The columns, rows (tuples), whether rows were cut off, and rows changed.

        Raises:
            InvalidArgumentError, NotFoundError, PermissionDeniedError, ResourceExhaustedError.
        """
        request = _query_request(name, sql, params, max_rows, max_bytes, read_only, time_budget)
        collector = _Collector()
        try:
            for response in self._stub.Query(request, timeout=seconds("timeout", timeout)):
                collector.add(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return collector.result()

    def list(self, *, timeout: float | None = None) -> list[FacetInfo]:
        """Every facet on the server, sorted by name."""
        try:
            response = self._stub.List(pb.ListFacetsRequest(), timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [_info(f) for f in response.facets]

    def iter_export(self, name: str, *, timeout: float | None = None) -> Iterator[bytes]:
        """Stream a consistent copy of facet `name`'s database file in chunks."""
        try:
            request = pb.ExportFacetRequest(facet=text("name", name))
            for response in self._stub.Export(request, timeout=seconds("timeout", timeout)):
                yield response.data
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def export(self, name: str, *, timeout: float | None = None) -> bytes:
        """A consistent copy of facet `name`'s database file."""
        return b"".join(self.iter_export(name, timeout=timeout))

    def export_to(
        self, name: str, path: str | os.PathLike[str], *, timeout: float | None = None
    ) -> int:
        """Write a consistent copy of facet `name` to `path`; returns the bytes written.

        The file appears complete or not at all (written aside, then renamed).
        """
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        written = 0
        try:
            with open(partial, "wb") as handle:
                for chunk in self.iter_export(name, timeout=timeout):
                    handle.write(chunk)
                    written += len(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    def export_to_repo(
        self,
        name: str,
        repo: str,
        path: str | None = None,
        branch: str = "main",
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """Commit a consistent copy of facet `name`'s database file to an artifacts repo.

        The file is laid over the head of `branch`: other files there stay as they are.

        Args:
            name: the facet.
            repo: an existing artifacts repo.
            path: the file's path in the repo (None: ``"<name>.sqlite"``).
            branch: the branch to advance (created when missing).
            message: the commit message (None: ``"Export facet <name>"``).
            timeout: the call's deadline in seconds, including waiting for a busy facet.

        Returns:
            The new commit's id; read the file back with ``client.artifacts.read(repo, path)``.

        Raises:
            NotFoundError: no such facet or repo (the message says which).
            InvalidArgumentError: a bad name, path, branch or message (`field_violations`).
            ConflictError: the branch moved during the commit; retrying is safe.
        """
        request = _export_to_repo_request(name, repo, path, branch, message)
        try:
            response = self._stub.ExportToRepo(request, timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return str(response.commit_id)

    def import_(
        self, name: str, data: DataSource, *, replace: bool = False, timeout: float | None = None
    ) -> FacetInfo:
        """Upload a SQLite database file as facet `name`.

        Args:
            name: the facet to create (or replace).
            data: the file's bytes, a path, or an open binary file.
            replace: overwrite an existing facet instead of failing with AlreadyExistsError.
            timeout: the call's deadline in seconds.

        Raises:
            InvalidArgumentError: the data is not a sound SQLite database (field "data").
            AlreadyExistsError: the facet exists and `replace` is False.
        """
        try:
            requests = _import_requests(name, data, replace)
            response = self._stub.Import(requests, timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return _info(response.facet)

    def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Delete facet `name` (waits for an execution holding it to finish)."""
        try:
            request = pb.DeleteFacetRequest(facet=text("name", name))
            self._stub.Delete(request, timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


class AsyncFacets:
    """Facets over a grpc.aio channel (``async_client.facets``); mirrors `Facets`.

    Args:
        channel: a grpc.aio channel to a sandboxd server.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = facets_pb2_grpc.FacetsStub(channel)

    async def query(
        self,
        name: str,
        sql: str,
        params: Params = (),
        *,
        max_rows: int = 0,
        max_bytes: int = 0,
        read_only: bool = False,
        time_budget: float | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one SQL statement on facet `name` (see `Facets.query`)."""
        request = _query_request(name, sql, params, max_rows, max_bytes, read_only, time_budget)
        collector = _Collector()
        try:
            async for response in self._stub.Query(request, timeout=seconds("timeout", timeout)):
                collector.add(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return collector.result()

    async def list(self, *, timeout: float | None = None) -> list[FacetInfo]:
        """Every facet on the server, sorted by name."""
        try:
            deadline = seconds("timeout", timeout)
            response = await self._stub.List(pb.ListFacetsRequest(), timeout=deadline)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [_info(f) for f in response.facets]

    async def iter_export(self, name: str, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Stream a consistent copy of facet `name`'s database file in chunks."""
        try:
            async for response in self._stub.Export(
                pb.ExportFacetRequest(facet=text("name", name)), timeout=seconds("timeout", timeout)
            ):
                yield response.data
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def export(self, name: str, *, timeout: float | None = None) -> bytes:
        """A consistent copy of facet `name`'s database file."""
        return b"".join([chunk async for chunk in self.iter_export(name, timeout=timeout)])

    async def export_to(
        self, name: str, path: str | os.PathLike[str], *, timeout: float | None = None
    ) -> int:
        """Write a consistent copy of facet `name` to `path`; returns the bytes written."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        written = 0
        try:
            with open(partial, "wb") as handle:
                async for chunk in self.iter_export(name, timeout=timeout):
                    handle.write(chunk)
                    written += len(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return written

    async def export_to_repo(
        self,
        name: str,
        repo: str,
        path: str | None = None,
        branch: str = "main",
        message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """Commit a copy of facet `name` to an artifacts repo (see `Facets.export_to_repo`)."""
        request = _export_to_repo_request(name, repo, path, branch, message)
        try:
            response = await self._stub.ExportToRepo(request, timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return str(response.commit_id)

    async def import_(
        self, name: str, data: DataSource, *, replace: bool = False, timeout: float | None = None
    ) -> FacetInfo:
        """Upload a SQLite database file as facet `name` (see `Facets.import_`)."""
        checked_requests = _import_requests(name, data, replace)
        deadline = seconds("timeout", timeout)

        async def requests() -> AsyncIterator[pb.ImportFacetRequest]:
            for request in checked_requests:
                yield request

        try:
            response = await self._stub.Import(requests(), timeout=deadline)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return _info(response.facet)

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Delete facet `name` (waits for an execution holding it to finish)."""
        try:
            request = pb.DeleteFacetRequest(facet=text("name", name))
            await self._stub.Delete(request, timeout=seconds("timeout", timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

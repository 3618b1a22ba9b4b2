"""The Facets gRPC service: host-side Query, List, Export, Import, Delete and ExportToRepo.

Translates between proto/sandboxd/v1/facets.proto and `isolates.facets.FacetStore`; all policy
(grants, the SQL guard, import validation) lives in the store. Every call that touches a
database takes the facet's grant, so it may wait for an execution holding the facet: the wait is
bounded by the call's deadline and by `max_wait_s`, and a facet that stays busy answers
RESOURCE_EXHAUSTED with RetryInfo and ErrorInfo reason "FACET_BUSY".

Error mapping: invalid names, SQL and parameters -> INVALID_ARGUMENT with a BadRequest naming
the field; denied SQL -> PERMISSION_DENIED; over-budget statements -> RESOURCE_EXHAUSTED
(reason "QUERY_BUDGET_EXCEEDED"); unknown facet -> NOT_FOUND; import onto an existing facet
without `replace` -> ALREADY_EXISTS; a damaged database file -> DATA_LOSS.

ExportToRepo commits a snapshot of a facet to an artifacts repo. isolates/ never imports
artifacts/, and this module does not either: the composition root (isolate_setup.py) passes a
`RepoFileCommitter` (executor/output_commits.py implements it over the artifact store), which
reports its refusals with the `ExportTarget*` errors below. Unknown repo -> NOT_FOUND naming the
repo; bad repo, path, branch or message -> INVALID_ARGUMENT naming the field; a branch that
moved during the commit -> ABORTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from executor.rpc_errors import abort_invalid, abort_status
from isolates.facets import (
    FacetBusy,
    FacetCorrupt,
    FacetError,
    FacetExists,
    FacetInfo,
    FacetNotFound,
    FacetQueryAborted,
    FacetQueryDenied,
    FacetQueryError,
    FacetStore,
    InvalidFacetImport,
    InvalidFacetName,
    QueryResult,
    SqlValue,
    validate_facet_name,
)
from sandboxd.v1 import facets_pb2 as pb
from sandboxd.v1 import facets_pb2_grpc

__all__ = [
    "SERVICE_NAME",
    "ExportTargetConflict",
    "ExportTargetError",
    "ExportTargetInvalid",
    "ExportTargetMissing",
    "FacetsService",
    "RepoFileCommitter",
    "add_to_server",
]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Facets"].full_name
_ERROR_DOMAIN = "sandboxd"
# Rows are sent in messages of about this many bytes, well under gRPC's message limits.
_MESSAGE_BYTES = 1024 * 1024
_BUSY_RETRY_S = 1.0


class _BadField(Exception):
    """A request field broke a rule found while streaming (e.g. a changed facet name)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field} {description}")
        self.field = field
        self.description = description


class ExportTargetError(Exception):
    """The repo side of ExportToRepo refused; `field` names the request field at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class ExportTargetInvalid(ExportTargetError):
    """A repo name, path, branch or message that the artifact store does not accept."""


class ExportTargetMissing(ExportTargetError):
    """The repo does not exist."""


class ExportTargetConflict(ExportTargetError):
    """The branch moved while the commit was being made; retrying is safe."""


class RepoFileCommitter(Protocol):
    """Commits one file to an artifacts repo (the composition root provides it).

    Both methods block; the servicer calls them in worker threads. They raise the
    `ExportTarget*` errors for the caller's mistakes and let anything else propagate.
    """

    def check_file_target(self, repo: str, path: str, branch: str, message: str) -> None:
        """Raise ExportTargetInvalid or ExportTargetMissing when the commit could not be made."""

    def commit_file(
        self, repo: str, path: str, branch: str, message: str, write: Callable[[Path], int]
    ) -> str:
        """Commit the file that `write(dest)` produces at `path` and return the commit id.

        `write` receives a fresh path in a private spool directory, writes the file there and
        returns its size; the spool is removed afterwards. Errors of `write` propagate.
        """


def value_from_proto(value: pb.FacetValue) -> SqlValue:
    """Convert a wire value to the SQLite value it names (unset is NULL)."""
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


def value_to_proto(value: SqlValue) -> pb.FacetValue:
    """Convert a SQLite value to its wire form."""
    if value is None:
        return pb.FacetValue(null=True)
    if isinstance(value, bool | int):
        return pb.FacetValue(integer=int(value))
    if isinstance(value, float):
        return pb.FacetValue(real=value)
    if isinstance(value, str):
        return pb.FacetValue(text=value)
    return pb.FacetValue(blob=bytes(value))


def info_to_proto(info: FacetInfo) -> pb.FacetInfo:
    """Convert the store's facet description to its wire form."""
    modified = timestamp_pb2.Timestamp()
    modified.FromNanoseconds(int(info.modified * 1e9))
    return pb.FacetInfo(name=info.name, size_bytes=info.size_bytes, modified=modified)


def _row_bytes(row: Sequence[SqlValue]) -> int:
    return sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)


class FacetsService(facets_pb2_grpc.FacetsServicer):
    """The Facets servicer over one `FacetStore`.

    Args:
        store: the node's facet store.
        max_wait_s: the longest a call waits for a busy facet, whatever its deadline.
        repo_committer: commits exports to artifacts repos; None answers ExportToRepo with
            UNIMPLEMENTED (a node without an artifact store).
    """

    def __init__(
        self,
        store: FacetStore,
        *,
        max_wait_s: float = 30.0,
        repo_committer: RepoFileCommitter | None = None,
    ) -> None:
        self._store = store
        self._max_wait_s = max_wait_s
        self._repo_committer = repo_committer

    def _wait(self, context: grpc.aio.ServicerContext) -> float:
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self._max_wait_s
        # Give up a little before the deadline so the caller hears "busy", not a bare
        # DEADLINE_EXCEEDED.
        return max(0.0, min(self._max_wait_s, remaining - min(0.25, remaining / 4)))

    async def Query(
        self, request: pb.QueryFacetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QueryFacetResponse]:
        """Run one statement and stream its rows (columns first, the summary last)."""
        violations = _facet_violations(request.facet)
        if not request.sql.strip():
            violations.append(("sql", "is empty"))
        if request.params and request.named_params:
            violations.append(("params", "give params or named_params, not both"))
        if violations:
            await abort_invalid(context, violations)
        params: Sequence[SqlValue] | Mapping[str, SqlValue]
        if request.named_params:
            params = {k: value_from_proto(v) for k, v in request.named_params.items()}
        else:
            params = [value_from_proto(v) for v in request.params]
        wait = self._wait(context)
        remaining: float | None = context.time_remaining()
        budget = request.time_budget_ms / 1000 if request.time_budget_ms else None
        if remaining is not None:
            # The statement must end before the caller stops listening.
            budget = min(budget or self._store.limits.default_query_time_s, remaining)
        summary = QueryResult()
        columns_sent = False
        pending: list[pb.FacetRow] = []
        pending_bytes = 0
        try:
            async for batch in self._store.aiter_query(
                request.facet,
                request.sql,
                params,
                max_rows=request.max_rows,
                max_bytes=request.max_bytes,
                time_s=budget,
                read_only=request.read_only,
                timeout=wait,
                outcome=summary,
            ):
                for row in batch.rows:
                    pending.append(pb.FacetRow(values=[value_to_proto(v) for v in row]))
                    pending_bytes += _row_bytes(row)
                    if pending_bytes >= _MESSAGE_BYTES:
                        yield pb.QueryFacetResponse(
                            columns=[] if columns_sent else batch.columns, rows=pending
                        )
                        columns_sent, pending, pending_bytes = True, [], 0
                summary.columns = batch.columns
        except FacetError as error:
            await _abort_facet_error(context, error)
        yield pb.QueryFacetResponse(
            columns=[] if columns_sent else summary.columns,
            rows=pending,
            done=True,
            truncated=summary.truncated,
            rows_changed=max(0, summary.rows_changed),
        )

    async def List(
        self, request: pb.ListFacetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFacetsResponse:
        """List every facet."""
        infos = await asyncio.to_thread(self._store.list)
        return pb.ListFacetsResponse(facets=[info_to_proto(i) for i in infos])

    async def Export(
        self, request: pb.ExportFacetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportFacetResponse]:
        """Stream a consistent copy of the database file."""
        violations = _facet_violations(request.facet)
        if violations:
            await abort_invalid(context, violations)
        try:
            async for chunk in self._store.aiter_export(request.facet, timeout=self._wait(context)):
                yield pb.ExportFacetResponse(data=chunk)
        except FacetError as error:
            await _abort_facet_error(context, error)

    async def Import(
        self,
        request_iterator: AsyncIterable[pb.ImportFacetRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ImportFacetResponse:
        """Receive a database file, validate it and install it."""
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            await abort_invalid(context, [("facet", "is required (the stream was empty)")])
        violations = _facet_violations(first.facet)
        if violations:
            await abort_invalid(context, violations)
        name = first.facet

        async def chunks() -> AsyncIterator[bytes]:
            if first.data:
                yield first.data
            async for message in messages:
                if message.facet and message.facet != name:
                    raise _BadField("facet", "changed in the middle of the upload")
                if message.data:
                    yield message.data

        try:
            info = await self._store.aimport_chunks(
                name, chunks(), replace=first.replace, timeout=self._wait(context)
            )
        except _BadField as error:
            await abort_invalid(context, [(error.field, error.description)])
        except FacetError as error:
            await _abort_facet_error(context, error)
        return pb.ImportFacetResponse(facet=info_to_proto(info))

    async def Delete(
        self, request: pb.DeleteFacetRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteFacetResponse:
        """Delete a facet once no execution holds it."""
        violations = _facet_violations(request.facet)
        if violations:
            await abort_invalid(context, violations)
        try:
            await self._store.adelete(request.facet, timeout=self._wait(context))
        except FacetError as error:
            await _abort_facet_error(context, error)
        return pb.DeleteFacetResponse()

    async def ExportToRepo(
        self, request: pb.ExportFacetToRepoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportFacetToRepoResponse:
        """Commit a consistent copy of a facet's database file to a branch of a repo."""
        committer = self._repo_committer
        if committer is None:
            await abort_status(
                context, code_pb2.UNIMPLEMENTED, "this server has no artifact store to export to"
            )
        violations = _facet_violations(request.facet)
        if not request.repo:
            violations.append(("repo", "is required"))
        if violations:
            await abort_invalid(context, violations)
        name = request.facet
        path = request.path or f"{name}.sqlite"
        branch = request.branch or "main"
        message = request.message or f"Export facet {name}"
        wait = self._wait(context)
        size = 0

        def write(dest: Path) -> int:
            # Runs in the committer's worker thread; the grant is held only for the snapshot
            # (SQLite's backup API), not while the artifact store hashes and packs the copy.
            nonlocal size
            size = self._store.export_to(name, dest, timeout=wait)
            return size

        try:
            # Check the target before the snapshot: a typo in the repo costs no grant.
            await asyncio.to_thread(
                committer.check_file_target, request.repo, path, branch, message
            )
            commit_id = await asyncio.to_thread(
                committer.commit_file, request.repo, path, branch, message, write
            )
        except ExportTargetError as error:
            await _abort_target_error(context, error)
        except FacetError as error:
            await _abort_facet_error(context, error)
        return pb.ExportFacetToRepoResponse(commit_id=commit_id, size_bytes=size, path=path)


async def _abort_target_error(
    context: grpc.aio.ServicerContext, error: ExportTargetError
) -> NoReturn:
    """Abort the call with the status that matches a refusal of the repo side."""
    if isinstance(error, ExportTargetMissing):
        await abort_status(context, code_pb2.NOT_FOUND, f"{error.field}: {error.reason}")
    if isinstance(error, ExportTargetConflict):
        await abort_status(context, code_pb2.ABORTED, f"{error.field}: {error.reason}")
    await abort_invalid(context, [(error.field, error.reason)])


def _facet_violations(name: str) -> list[tuple[str, str]]:
    reason = validate_facet_name(name)
    return [] if reason is None else [("facet", reason)]


def _error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=_ERROR_DOMAIN, metadata=metadata)


async def _abort_facet_error(context: grpc.aio.ServicerContext, error: FacetError) -> NoReturn:
    """Abort the call with the status that matches a store error."""
    message = str(error)
    if isinstance(error, InvalidFacetName):
        await abort_invalid(context, [("facet", message)])
    if isinstance(error, FacetQueryError):
        await abort_invalid(context, [(error.field, message)])
    if isinstance(error, InvalidFacetImport):
        await abort_invalid(context, [("data", message)])
    if isinstance(error, FacetNotFound):
        await abort_status(context, code_pb2.NOT_FOUND, message)
    if isinstance(error, FacetExists):
        await abort_status(context, code_pb2.ALREADY_EXISTS, message)
    if isinstance(error, FacetQueryDenied):
        await abort_status(context, code_pb2.PERMISSION_DENIED, message, _error_info("SQL_DENIED"))
    if isinstance(error, FacetQueryAborted):
        await abort_status(
            context, code_pb2.RESOURCE_EXHAUSTED, message, _error_info("QUERY_BUDGET_EXCEEDED")
        )
    if isinstance(error, FacetBusy):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(_BUSY_RETRY_S * 1e9))
        await abort_status(
            context,
            code_pb2.RESOURCE_EXHAUSTED,
            message,
            error_details_pb2.RetryInfo(retry_delay=delay),
            _error_info("FACET_BUSY"),
        )
    if isinstance(error, FacetCorrupt):
        await abort_status(context, code_pb2.DATA_LOSS, message)
    await abort_status(context, code_pb2.INTERNAL, f"facet store error: {message}")


def add_to_server(
    server: grpc.aio.Server,
    store: FacetStore,
    *,
    max_wait_s: float = 30.0,
    repo_committer: RepoFileCommitter | None = None,
) -> str:
    """Register the Facets service on `server`.

    Args:
        server: the grpc.aio server, not started yet.
        store: the node's facet store (the same one the executor takes grants from).
        max_wait_s: the longest a call waits for a busy facet.
        repo_committer: what ExportToRepo commits through; None disables that call.

    Returns:
        The service's full name (for reflection and health).
    """
    facets_pb2_grpc.add_FacetsServicer_to_server(
        FacetsService(store, max_wait_s=max_wait_s, repo_committer=repo_committer), server
    )
    return SERVICE_NAME

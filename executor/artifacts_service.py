"""The Artifacts gRPC service: translates proto/sandboxd/v1/artifacts.proto <-> `artifacts`.

All store work is blocking and runs in `asyncio.to_thread`. A Commit upload is spooled file by
file into ``DATA_DIR/artifacts/tmp/`` (bounded by the store's limits as it arrives), so large
files never sit whole in memory; the spool is removed when the call ends.

Error mapping: `artifacts.InvalidArgumentError` (and `LimitExceededError`) -> INVALID_ARGUMENT
with a google.rpc.BadRequest naming the field; `NotFoundError` -> NOT_FOUND;
`AlreadyExistsError` -> ALREADY_EXISTS; `ConflictError` -> ABORTED (retry the commit).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2  # type: ignore[import-untyped, unused-ignore]

from artifacts import (
    AlreadyExistsError,
    ArtifactsError,
    ArtifactStore,
    Author,
    CommitInfo,
    ConflictError,
    FileInput,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
    RepoInfo,
)
from executor.rpc_errors import abort_invalid, abort_status
from sandboxd.v1 import artifacts_pb2 as pb
from sandboxd.v1 import artifacts_pb2_grpc

__all__ = ["SERVICE_NAME", "ArtifactsService", "add_to_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Artifacts"].full_name
T = TypeVar("T")


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _repo_pb(info: RepoInfo) -> pb.RepoInfo:
    return pb.RepoInfo(
        name=info.name,
        created_at=_ts(info.created_at),
        clone_url=info.clone_url,
        branches=info.branches,
    )


def _commit_pb(c: CommitInfo) -> pb.CommitInfo:
    return pb.CommitInfo(
        id=c.id,
        tree=c.tree,
        parents=c.parents,
        author=pb.Identity(name=c.author.name, email=c.author.email),
        author_time=_ts(c.author_time),
        committer=pb.Identity(name=c.committer.name, email=c.committer.email),
        commit_time=_ts(c.commit_time),
        message=c.message,
    )


async def _abort(context: grpc.aio.ServicerContext, error: ArtifactsError) -> NoReturn:
    if isinstance(error, InvalidArgumentError):
        await abort_invalid(context, [(error.field or "request", error.reason)])
    code = code_pb2.INTERNAL
    if isinstance(error, NotFoundError):
        code = code_pb2.NOT_FOUND
    elif isinstance(error, AlreadyExistsError):
        code = code_pb2.ALREADY_EXISTS
    elif isinstance(error, ConflictError):
        code = code_pb2.ABORTED
    await abort_status(context, code, str(error))


class ArtifactsService(artifacts_pb2_grpc.ArtifactsServicer):
    """gRPC face of one `ArtifactStore`."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def _call(
        self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any, **kw: Any
    ) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except ArtifactsError as e:
            await _abort(context, e)

    async def CreateRepo(  # noqa: D102
        self, request: pb.CreateRepoRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateRepoResponse:
        info = await self._call(context, self.store.create_repo, request.name)
        return pb.CreateRepoResponse(repo=_repo_pb(info), token=info.token or "")

    async def ListRepos(  # noqa: D102
        self, request: pb.ListReposRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReposResponse:
        repos = await self._call(context, self.store.list_repos)
        return pb.ListReposResponse(repos=[_repo_pb(r) for r in repos])

    async def DeleteRepo(  # noqa: D102
        self, request: pb.DeleteRepoRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRepoResponse:
        await self._call(context, self.store.delete_repo, request.name)
        return pb.DeleteRepoResponse()

    async def Commit(
        self, request_iterator: AsyncIterable[pb.CommitRequest], context: grpc.aio.ServicerContext
    ) -> pb.CommitResponse:
        """Spool the streamed files, then commit them in one store call."""
        try:
            commit_id = await self._spool_and_commit(request_iterator)
        except ArtifactsError as e:
            await _abort(context, e)
        return pb.CommitResponse(commit_id=commit_id)

    async def _spool_and_commit(self, requests: AsyncIterable[pb.CommitRequest]) -> str:
        """The commit's id; the spool is gone by the time it returns or raises.

        Removed before the call is answered, refused or not: aborting a call sends its status
        at once, and a caller that saw the error could otherwise still find the upload's files.
        """
        spool = Path(tempfile.mkdtemp(prefix="upload-", dir=self.store.tmp_dir))
        try:
            header, files = await self._spool(requests, spool)
            author = Author(
                name=header.author.name or "sandboxd",
                email=header.author.email or "sandboxd@localhost",
            )
            return await asyncio.to_thread(
                self.store.commit,
                header.repo,
                files,
                header.message,
                branch=header.branch or "main",
                author=author,
                parents=list(header.parents) or None,
                replace=header.replace,
                delete=list(header.delete_paths),
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, spool, True)

    async def _spool(
        self, requests: AsyncIterable[pb.CommitRequest], spool: Path
    ) -> tuple[pb.CommitHeader, list[FileInput]]:
        limits = self.store.limits
        header: pb.CommitHeader | None = None
        files: list[FileInput] = []
        out = None
        size = total = 0
        try:
            async for req in requests:
                part = req.WhichOneof("part")
                if part == "header":
                    if header is not None:
                        raise InvalidArgumentError("header", "sent twice")
                    header = req.header
                elif header is None:
                    raise InvalidArgumentError("header", "must be the first message")
                elif part == "file":
                    if len(files) >= limits.max_commit_files:
                        raise LimitExceededError("files", "too many files")
                    if out is not None:
                        out.close()
                    path = spool / str(len(files))
                    out = open(path, "wb")  # noqa: SIM115 - closed when the next file starts
                    size = 0
                    files.append(
                        FileInput(path=req.file.path, source=path, mode=req.file.mode or 0o100644)
                    )
                elif part == "chunk":
                    if out is None:
                        raise InvalidArgumentError("chunk", "content before any file")
                    size += len(req.chunk)
                    total += len(req.chunk)
                    # Limits checked per chunk: an oversized upload is refused as it arrives.
                    if size > limits.max_object_bytes:
                        raise LimitExceededError(
                            f"files[{len(files) - 1}].content", "file larger than the limit"
                        )
                    if total > limits.max_commit_bytes:
                        raise LimitExceededError("files", "commit larger than the limit")
                    await asyncio.to_thread(out.write, req.chunk)
        finally:
            if out is not None:
                out.close()
        if header is None:
            raise InvalidArgumentError("header", "missing")
        return header, files

    async def ListTree(  # noqa: D102
        self, request: pb.ListTreeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTreeResponse:
        entries = await self._call(
            context,
            self.store.list_tree,
            request.repo,
            request.ref or "main",
            request.path,
            recursive=request.recursive,
        )
        return pb.ListTreeResponse(
            entries=[
                pb.TreeEntry(path=e.path, mode=e.mode, kind=e.kind, id=e.id, size=e.size or 0)
                for e in entries
            ]
        )

    async def ReadBlob(  # noqa: D102
        self, request: pb.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadBlobResponse]:
        chunks = await self._call(
            context, self.store.open_blob, request.repo, request.path, request.ref or "main"
        )
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            yield pb.ReadBlobResponse(chunk=chunk)

    async def Log(  # noqa: D102
        self, request: pb.LogRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogResponse:
        commits = await self._call(
            context, self.store.log, request.repo, request.ref or "main", limit=request.limit or 100
        )
        return pb.LogResponse(commits=[_commit_pb(c) for c in commits])

    async def Diff(  # noqa: D102
        self, request: pb.DiffRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiffResponse:
        changes = await self._call(context, self.store.diff, request.repo, request.a, request.b)
        return pb.DiffResponse(
            changes=[
                pb.FileChange(
                    path=c.path,
                    kind=c.kind,
                    old_id=c.old_id or "",
                    new_id=c.new_id or "",
                    old_mode=c.old_mode or 0,
                    new_mode=c.new_mode or 0,
                )
                for c in changes
            ]
        )


def add_to_server(server: grpc.aio.Server, store: ArtifactStore) -> None:
    """Register the Artifacts service for ``store`` on ``server``."""
    artifacts_pb2_grpc.add_ArtifactsServicer_to_server(ArtifactsService(store), server)

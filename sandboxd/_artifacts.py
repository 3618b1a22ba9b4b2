"""`client.artifacts`: git-compatible repos stored by sandboxd.

`Artifacts` (sync) and `AsyncArtifacts` mirror each other and share the request building and
result decoding below. A repo created here can also be cloned and pushed with stock git at
``repo.clone_url`` using ``repo.token`` as the HTTP password.

    repo = client.artifacts.create_repo("results")
    commit_id = client.artifacts.commit("results", {"out/report.md": b"# done"}, message="run 1")
    client.artifacts.read("results", "out/report.md")      # b"# done"
    [c.message for c in client.artifacts.log("results")]   # ["run 1"]

Errors are `sandboxd.SandboxdError` subclasses: `InvalidArgumentError` (bad name, path, mode
or size; ``field_violations`` names the field), `NotFoundError`, `AlreadyExistsError`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime

import grpc
from pydantic import BaseModel, ConfigDict

from sandboxd._arguments import checked, contents, refuse, strings, text
from sandboxd._errors import from_rpc_error
from sandboxd.v1 import artifacts_pb2 as pb
from sandboxd.v1 import artifacts_pb2_grpc

__all__ = [
    "ArtifactCommit",
    "ArtifactFileChange",
    "ArtifactTreeEntry",
    "Artifacts",
    "AsyncArtifacts",
    "Repo",
]

_CHUNK = 1024 * 1024
Files = Mapping[str, bytes | bytearray | memoryview | str]
"""Path -> content of the files to commit (text is stored as UTF-8)."""


class Repo(BaseModel):
    """A repo; ``token`` is set only in the answer to `create_repo`."""

    model_config = ConfigDict(frozen=True)

    name: str
    clone_url: str = ""
    token: str | None = None
    created_at: datetime | None = None
    branches: dict[str, str] = {}


class ArtifactCommit(BaseModel):
    """One commit of a repo's history."""

    model_config = ConfigDict(frozen=True)

    id: str
    tree: str
    parents: list[str]
    author_name: str
    author_email: str
    author_time: datetime
    message: str


class ArtifactTreeEntry(BaseModel):
    """One entry of a directory listing."""

    model_config = ConfigDict(frozen=True)

    path: str
    mode: int
    kind: str
    id: str
    size: int | None = None


class ArtifactFileChange(BaseModel):
    """One path that differs between two commits."""

    model_config = ConfigDict(frozen=True)

    path: str
    kind: str
    old_id: str | None = None
    new_id: str | None = None


def _repo(info: pb.RepoInfo, token: str | None = None) -> Repo:
    return Repo(
        name=info.name,
        clone_url=info.clone_url,
        token=token,
        created_at=info.created_at.ToDatetime(tzinfo=UTC) if info.HasField("created_at") else None,
        branches=dict(info.branches),
    )


def _commit(c: pb.CommitInfo) -> ArtifactCommit:
    return ArtifactCommit(
        id=c.id,
        tree=c.tree,
        parents=list(c.parents),
        author_name=c.author.name,
        author_email=c.author.email,
        author_time=c.author_time.ToDatetime(tzinfo=UTC),
        message=c.message,
    )


def _entry(e: pb.TreeEntry) -> ArtifactTreeEntry:
    return ArtifactTreeEntry(
        path=e.path, mode=e.mode, kind=e.kind, id=e.id, size=e.size if e.kind == "blob" else None
    )


def _change(c: pb.FileChange) -> ArtifactFileChange:
    return ArtifactFileChange(
        path=c.path, kind=c.kind, old_id=c.old_id or None, new_id=c.new_id or None
    )


def _commit_requests(
    repo: str,
    files: Files,
    commit_message: str,
    branch: str,
    author: tuple[str, str] | None,
    parents: Sequence[str] | None,
    replace: bool,
    delete: Sequence[str],
    modes: Mapping[str, int] | None,
) -> Iterator[pb.CommitRequest]:
    """The request stream of a commit, its arguments checked before the stream starts.

    (A mistake found while gRPC consumes the stream would surface only as "Exception iterating
    requests!".)
    """
    header = checked(pb.CommitHeader, repo=repo, branch=branch, message=commit_message,
                     replace=replace)
    header.parents.extend(strings("parents", parents))
    header.delete_paths.extend(strings("delete", delete))
    if author is not None:
        if not (isinstance(author, tuple | list) and len(author) == 2):
            raise refuse("author", "must be a (name, email) pair")
        header.author.name = text("author[0]", author[0])
        header.author.email = text("author[1]", author[1])
    pairs = contents("files", files)
    file_modes = {} if modes is None else modes
    if not isinstance(file_modes, Mapping):
        raise refuse("modes", f"must be a mapping of paths to modes, not {type(modes).__name__}")
    for path, mode in file_modes.items():
        if isinstance(mode, bool) or not isinstance(mode, int) or mode < 0:
            raise refuse(f"modes[{path!r}]", f"must be a file mode such as 0o100755, not {mode!r}")
    starts = [pb.FileStart(path=path, mode=file_modes.get(path, 0)) for path, _ in pairs]
    return _commit_stream(header, starts, [data for _, data in pairs])


def _commit_stream(
    header: pb.CommitHeader, starts: list[pb.FileStart], datas: list[bytes]
) -> Iterator[pb.CommitRequest]:
    yield pb.CommitRequest(header=header)
    for start, data in zip(starts, datas, strict=True):
        yield pb.CommitRequest(file=start)
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            yield pb.CommitRequest(chunk=bytes(view[i : i + _CHUNK]))


class Artifacts:
    """Synchronous artifact repos over a `grpc.Channel`."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = artifacts_pb2_grpc.ArtifactsStub(channel)

    def create_repo(self, name: str) -> Repo:
        """Create a repo; the answer carries its clone URL and token (shown only once)."""
        try:
            resp = self._stub.CreateRepo(checked(pb.CreateRepoRequest, name=name))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return _repo(resp.repo, resp.token)

    def list_repos(self) -> builtins.list[Repo]:
        """Every repo (without tokens)."""
        try:
            resp = self._stub.ListRepos(pb.ListReposRequest())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_repo(r) for r in resp.repos]

    def delete_repo(self, name: str) -> None:
        """Delete a repo (its refs; shared objects stay for the repos that use them)."""
        try:
            self._stub.DeleteRepo(checked(pb.DeleteRepoRequest, name=name))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def commit(
        self,
        repo: str,
        files: Files,
        *,
        message: str,
        branch: str = "main",
        author: tuple[str, str] | None = None,
        parents: Sequence[str] | None = None,
        replace: bool = False,
        delete: Sequence[str] = (),
        modes: Mapping[str, int] | None = None,
    ) -> str:
        """Commit files (streamed in 1 MiB chunks) and return the new commit id.

        Args:
            repo: Repo name.
            files: Path -> content.
            message: Commit message.
            branch: Branch to advance (created when missing).
            author: (name, email); the server's default identity when None.
            parents: Explicit parent commit ids; None means the branch head.
            replace: True makes ``files`` the whole tree instead of laying them over it.
            delete: Paths to remove.
            modes: Path -> mode (0o100755 for executables, 0o120000 for symlinks).
        """
        requests = _commit_requests(
            repo, files, message, branch, author, parents, replace, delete, modes
        )
        try:
            return str(self._stub.Commit(requests).commit_id)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def read(self, repo: str, path: str, ref: str = "main") -> bytes:
        """The content of one file at ``ref`` (a branch, tag or commit id)."""
        try:
            request = checked(pb.ReadBlobRequest, repo=repo, ref=ref, path=path)
            return b"".join(r.chunk for r in self._stub.ReadBlob(request))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def list(
        self, repo: str, ref: str = "main", path: str = "", *, recursive: bool = False
    ) -> builtins.list[ArtifactTreeEntry]:
        """Entries of a directory at ``ref`` (every file below it when ``recursive``)."""
        request = checked(pb.ListTreeRequest, repo=repo, ref=ref, path=path,
                          recursive=recursive)
        try:
            resp = self._stub.ListTree(request)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_entry(e) for e in resp.entries]

    def log(
        self, repo: str, ref: str = "main", *, limit: int = 100
    ) -> builtins.list[ArtifactCommit]:
        """Commits reachable from ``ref``, newest first."""
        try:
            resp = self._stub.Log(checked(pb.LogRequest, repo=repo, ref=ref, limit=limit))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_commit(c) for c in resp.commits]

    def diff(self, repo: str, a: str, b: str) -> builtins.list[ArtifactFileChange]:
        """Paths that changed from ``a`` to ``b`` (commits or refs)."""
        try:
            resp = self._stub.Diff(checked(pb.DiffRequest, repo=repo, a=a, b=b))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_change(c) for c in resp.changes]


class AsyncArtifacts:
    """Asynchronous artifact repos over a `grpc.aio.Channel`; mirrors `Artifacts`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = artifacts_pb2_grpc.ArtifactsStub(channel)

    async def create_repo(self, name: str) -> Repo:
        """Create a repo; the answer carries its clone URL and token (shown only once)."""
        try:
            resp = await self._stub.CreateRepo(checked(pb.CreateRepoRequest, name=name))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return _repo(resp.repo, resp.token)

    async def list_repos(self) -> builtins.list[Repo]:
        """Every repo (without tokens)."""
        try:
            resp = await self._stub.ListRepos(pb.ListReposRequest())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_repo(r) for r in resp.repos]

    async def delete_repo(self, name: str) -> None:
        """Delete a repo (its refs; shared objects stay for the repos that use them)."""
        try:
            await self._stub.DeleteRepo(checked(pb.DeleteRepoRequest, name=name))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def commit(
        self,
        repo: str,
        files: Files,
        *,
        message: str,
        branch: str = "main",
        author: tuple[str, str] | None = None,
        parents: Sequence[str] | None = None,
        replace: bool = False,
        delete: Sequence[str] = (),
        modes: Mapping[str, int] | None = None,
    ) -> str:
        """Commit files (streamed in 1 MiB chunks) and return the new commit id."""
        requests = _commit_requests(
            repo, files, message, branch, author, parents, replace, delete, modes
        )

        async def stream() -> AsyncIterator[pb.CommitRequest]:
            for request in requests:
                yield request

        try:
            resp = await self._stub.Commit(stream())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return str(resp.commit_id)

    async def read(self, repo: str, path: str, ref: str = "main") -> bytes:
        """The content of one file at ``ref``."""
        chunks: builtins.list[bytes] = []
        try:
            request = checked(pb.ReadBlobRequest, repo=repo, ref=ref, path=path)
            async for r in self._stub.ReadBlob(request):
                chunks.append(r.chunk)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return b"".join(chunks)

    async def list(
        self, repo: str, ref: str = "main", path: str = "", *, recursive: bool = False
    ) -> builtins.list[ArtifactTreeEntry]:
        """Entries of a directory at ``ref``."""
        request = checked(pb.ListTreeRequest, repo=repo, ref=ref, path=path,
                          recursive=recursive)
        try:
            resp = await self._stub.ListTree(request)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_entry(e) for e in resp.entries]

    async def log(
        self, repo: str, ref: str = "main", *, limit: int = 100
    ) -> builtins.list[ArtifactCommit]:
        """Commits reachable from ``ref``, newest first."""
        try:
            resp = await self._stub.Log(checked(pb.LogRequest, repo=repo, ref=ref, limit=limit))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_commit(c) for c in resp.commits]

    async def diff(self, repo: str, a: str, b: str) -> builtins.list[ArtifactFileChange]:
        """Paths that changed from ``a`` to ``b``."""
        try:
            resp = await self._stub.Diff(checked(pb.DiffRequest, repo=repo, a=a, b=b))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return [_change(c) for c in resp.changes]

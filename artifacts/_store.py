"""`ArtifactStore`: repos, commits, trees, logs and diffs over the shared object store.

Layout under ``DATA_DIR/artifacts/`` (see docs/artifacts.md)::

    objects/        the one shared git object store (packs only) -- `SharedObjectStore`
    repos/<name>/   per-repo metadata and refs -- `RepoRegistry`
    tmp/            quarantined pushes, upload spools, repos being created or deleted;
                    emptied when a store opens

All methods are blocking and thread-safe within one process (the gRPC servicer calls them via
`asyncio.to_thread`, the smart-HTTP server from its own threads). One process owns a data dir.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dulwich.diff_tree import tree_changes
from dulwich.objects import Commit, ObjectID
from dulwich.refs import Ref
from dulwich.walk import Walker

from artifacts._errors import (
    ConflictError,
    InvalidArgumentError,
    LimitExceededError,
    NotFoundError,
)
from artifacts._limits import StoreLimits
from artifacts._models import (
    Author,
    ChangeKind,
    CommitInfo,
    FileChange,
    FileInput,
    ObjectKind,
    RepoInfo,
    TreeEntry,
)
from artifacts._objects import RawObject, SharedObjectStore
from artifacts._packwrite import OBJ_BLOB, OBJ_COMMIT, OBJ_TAG, PackWriter
from artifacts._reach import Reachability
from artifacts._repos import RepoRecord, RepoRegistry
from artifacts._tree import TreeBuilder
from artifacts._validate import (
    MODE_BLOB,
    MODE_EXEC,
    MODE_GITLINK,
    MODE_LINK,
    MODE_TREE,
    check_author,
    check_message,
    check_ref_name,
    split_path,
)

__all__ = ["ArtifactStore"]

_KIND: dict[int, ObjectKind] = {MODE_TREE: "tree", MODE_GITLINK: "commit"}
_CHANGE: dict[str, ChangeKind] = {"add": "added", "delete": "deleted"}
_CHUNK = 1 << 20
_HEX = frozenset(b"0123456789abcdef")


def _is_hex_id(raw: bytes) -> bool:
    return len(raw) == 40 and set(raw) <= _HEX


class ArtifactStore:
    """Git-compatible artifact store rooted at ``data_dir/artifacts``.

    Args:
        data_dir: The sandboxd data directory; the store uses ``data_dir/artifacts``.
        limits: Size and count limits applied on every way in.
        clone_base_url: Prefix of clone URLs (``http://host:port/git``); the smart-HTTP server
            sets it when started if left empty.
    """

    def __init__(
        self,
        data_dir: Path | str,
        limits: StoreLimits | None = None,
        clone_base_url: str = "",
    ) -> None:
        self.root = Path(data_dir) / "artifacts"
        self.limits = limits or StoreLimits()
        self.clone_base_url = clone_base_url.rstrip("/")
        tmp = self.root / "tmp"
        # Leftovers of a crash (half-received pushes, spools) are never referenced: drop them.
        shutil.rmtree(tmp, ignore_errors=True)
        self.objects = SharedObjectStore.open(self.root / "objects", tmp, self.limits)
        self.repos = RepoRegistry(self.root / "repos", tmp)
        self.tmp_dir = tmp
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def close(self) -> None:
        """Release open pack files."""
        self.objects.close()

    def repo_lock(self, name: str) -> threading.Lock:
        """The lock serializing ref updates of one repo within this process."""
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    # -- repos ------------------------------------------------------------------------------

    def clone_url(self, name: str) -> str:
        """The smart-HTTP clone URL of a repo ("" when no HTTP server is configured)."""
        return f"{self.clone_base_url}/{name}" if self.clone_base_url else ""

    def _info(self, rec: RepoRecord, token: str | None = None) -> RepoInfo:
        return RepoInfo(
            name=rec.name,
            created_at=rec.created_at,
            clone_url=self.clone_url(rec.name),
            token=token,
            branches=rec.branches(),
        )

    def create_repo(self, name: str) -> RepoInfo:
        """Create an empty repo; the answer carries its token, shown only this once.

        Raises:
            InvalidArgumentError: For a bad name.
            AlreadyExistsError: When the name is taken.
        """
        rec, token = self.repos.create(name)
        return self._info(rec, token)

    def get_repo(self, name: str) -> RepoInfo:
        """Describe one repo (without its token).

        Raises:
            NotFoundError: When it does not exist.
        """
        return self._info(self.repos.open(name))

    def list_repos(self) -> list[RepoInfo]:
        """Every repo, sorted by name."""
        out = []
        for name in self.repos.names():
            try:
                out.append(self._info(self.repos.open(name)))
            except NotFoundError:
                continue  # deleted meanwhile
        return out

    def delete_repo(self, name: str) -> None:
        """Delete a repo's refs. Objects stay in the shared store (other repos may use them).

        Raises:
            NotFoundError: When it does not exist.
        """
        with self.repo_lock(name):
            self.repos.delete(name)

    def check_token(self, name: str, token: str) -> bool:
        """Whether ``token`` opens repo ``name``; False for unknown repos too."""
        try:
            return self.repos.open(name).check_token(token)
        except NotFoundError:
            return False

    def open_repo(self, name: str) -> RepoRecord:
        """Open a repo's record (metadata and refs) for the smart-HTTP backend.

        Raises:
            NotFoundError: When it does not exist.
        """
        return self.repos.open(name)

    def visibility(self, rec: RepoRecord) -> Reachability:
        """The objects repo ``rec`` may see: those reachable from its refs."""
        tips = [sha for ref, sha in rec.refs.as_dict().items() if ref != b"HEAD"]
        return Reachability(self.objects, tips)

    # -- writing ----------------------------------------------------------------------------

    def commit(
        self,
        repo: str,
        files: Iterable[FileInput],
        message: str,
        *,
        branch: str = "main",
        author: Author | None = None,
        parents: Sequence[str] | None = None,
        replace: bool = False,
        delete: Sequence[str] = (),
    ) -> str:
        """Commit files to a branch and return the new commit's id.

        By default the files are laid over the tree of the first parent (the branch head):
        files not named stay as they are. ``replace=True`` makes the files the whole tree.

        Args:
            repo: Repo name.
            files: Files to write; content in memory (``data``) or in a file (``source``).
            message: Commit message.
            branch: Branch to advance (created when missing).
            author: Author and committer; a default identity when None.
            parents: Explicit parent ids; None means the branch head (if any).
            replace: Whether the files replace the whole tree.
            delete: Paths to remove from the base tree.

        Returns:
            The new commit id (hex).

        Raises:
            InvalidArgumentError: For bad paths, modes, identities, parents or sizes.
            NotFoundError: When the repo does not exist.
            ConflictError: When the branch moved during the commit.
        """
        author = author or Author()
        check_author(author.name, author.email)
        check_message(message, self.limits.max_message_bytes)
        ref = b"refs/heads/" + branch.encode("utf-8", "surrogateescape")
        check_ref_name(ref, "branch")
        rec = self.repos.open(repo)
        with self.repo_lock(repo):
            old = rec.refs.as_dict().get(Ref(ref))
            parent_ids = self._parents(rec, old, parents)
            base_tree = None
            if parent_ids and not replace:
                base_tree = self._commit_of(parent_ids[0]).tree
            builder = TreeBuilder(self.objects, base_tree)
            for i, path in enumerate(delete):
                builder.delete(split_path(path, f"delete[{i}]"), f"delete[{i}]")
            writer = self.objects.new_pack_writer()
            try:
                self._write_files(files, builder, writer)
                tree = builder.write(writer)
                stamp = int(time.time())
                c = Commit()
                c.tree = tree
                c.parents = [ObjectID(p) for p in parent_ids]
                c.author = c.committer = f"{author.name} <{author.email}>".encode()
                c.author_time = c.commit_time = stamp
                c.author_timezone = c.commit_timezone = 0
                c.message = message.encode("utf-8", "surrogateescape")
                new = writer.add(OBJ_COMMIT, c.as_raw_string()).hex().encode()
                self.objects.land(writer)
            except BaseException:
                writer.abort()
                raise
            if old is None:
                ok = rec.refs.add_if_new(Ref(ref), ObjectID(new))
            else:
                ok = rec.refs.set_if_equals(Ref(ref), old, ObjectID(new))
            if not ok:
                raise ConflictError(f"branch {branch!r} moved during the commit")
            return new.decode()

    def _parents(
        self, rec: RepoRecord, old: bytes | None, parents: Sequence[str] | None
    ) -> list[bytes]:
        if parents is None:
            return [old] if old else []
        out = []
        seen = self.visibility(rec)
        for i, p in enumerate(parents):
            raw = p.encode()
            # Only commits of this repo: an id from another tenant's repo grants nothing.
            if not _is_hex_id(raw) or not seen.contains(raw):
                raise InvalidArgumentError(f"parents[{i}]", f"unknown commit {p!r}")
            self._commit_of(raw)
            out.append(raw)
        return out

    def _write_files(
        self, files: Iterable[FileInput], builder: TreeBuilder, writer: PackWriter
    ) -> None:
        small: list[tuple[list[str], int, str, FileInput]] = []
        total = 0
        limits = self.limits
        for i, f in enumerate(files):
            field = f"files[{i}]"
            if i >= limits.max_commit_files:
                raise LimitExceededError("files", f"more than {limits.max_commit_files} files")
            parts = split_path(f.path, f"{field}.path")
            mode = f.mode or MODE_BLOB
            if mode not in (MODE_BLOB, MODE_EXEC, MODE_LINK):
                raise InvalidArgumentError(f"{field}.mode", f"mode {mode:o} is not allowed")
            if f.data is not None and f.source is None:
                size = len(f.data)
            elif f.source is not None and f.data is None:
                size = f.source.stat().st_size
            else:
                raise InvalidArgumentError(field, "exactly one of data and source is required")
            if size > limits.max_object_bytes:
                raise LimitExceededError(f"{field}.content", "file larger than the limit")
            total += size
            if total > limits.max_commit_bytes:
                raise LimitExceededError("files", "commit larger than the limit")
            if f.source is not None and size > limits.stream_threshold:
                sha = writer.add_stream(OBJ_BLOB, size, _read_chunks(f.source))
                builder.set(parts, mode, sha, f"{field}.path")
            else:
                small.append((parts, mode, field, f))

        def contents() -> Iterator[tuple[int, bytes]]:
            for _, _, _, f in small:
                if f.data is not None:
                    yield OBJ_BLOB, f.data
                elif f.source is not None:
                    yield OBJ_BLOB, f.source.read_bytes()

        for (parts, mode, field, _), sha in zip(small, writer.add_many(contents()), strict=True):
            builder.set(parts, mode, sha, f"{field}.path")

    def commit_directory(
        self,
        repo: str,
        directory: Path,
        message: str,
        *,
        branch: str = "main",
        author: Author | None = None,
    ) -> str:
        """Commit a directory's content as the whole tree of a new commit on ``branch``.

        Symlinks are stored as links (their target as content), never followed; other
        non-regular files are skipped.

        Returns:
            The new commit id (hex).
        """
        files: list[FileInput] = []
        root = directory.resolve()
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = str(path.readlink()).encode()
                files.append(FileInput(path=rel, data=target, mode=MODE_LINK))
            elif path.is_file():
                mode = MODE_EXEC if path.stat().st_mode & 0o111 else MODE_BLOB
                files.append(FileInput(path=rel, source=path, mode=mode))
        return self.commit(repo, files, message, branch=branch, author=author, replace=True)

    def ingest(self, objects: Iterable[RawObject]) -> list[str]:
        """Add raw git objects, checking that each id matches its bytes.

        Returns:
            The ids added.
        """
        return self.objects.ingest(objects)

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, repo: str, ref: str = "main") -> str:
        """Resolve a branch, tag, full ref or commit id of ``repo`` to a commit id.

        A commit id is accepted only when reachable from the repo's own refs.

        Raises:
            NotFoundError: When nothing of that name is visible in the repo.
        """
        rec = self.repos.open(repo)
        return self._resolve(rec, ref).decode()

    def _resolve(self, rec: RepoRecord, ref: str) -> bytes:
        refs = rec.refs.as_dict()
        raw = ref.encode("utf-8", "surrogateescape")
        if raw == b"HEAD":
            target = rec.refs.follow(Ref(b"HEAD"))[1]
            if target:
                return self._peel(target)
        for candidate in (raw, b"refs/heads/" + raw, b"refs/tags/" + raw):
            if candidate != b"HEAD" and Ref(candidate) in refs:
                return self._peel(refs[Ref(candidate)])
        if _is_hex_id(raw) and self.visibility(rec).contains(raw):
            return self._peel(raw)
        raise NotFoundError(f"ref {ref!r} not found in repo {rec.name!r}")

    def _peel(self, sha: bytes) -> bytes:
        type_num, raw = self.objects.get_raw(ObjectID(sha))
        while type_num == OBJ_TAG:
            sha = raw.split(b"\n", 1)[0][7:]
            type_num, raw = self.objects.get_raw(ObjectID(sha))
        if type_num != OBJ_COMMIT:
            raise NotFoundError(f"{sha.decode()} is not a commit")
        return sha

    def _commit_of(self, sha: bytes) -> Commit:
        try:
            obj = self.objects[ObjectID(sha)]
        except KeyError:
            raise NotFoundError(f"commit {sha.decode()} not found") from None
        if not isinstance(obj, Commit):
            raise InvalidArgumentError("ref", f"{sha.decode()} is not a commit")
        return obj

    def _lookup(self, rec: RepoRecord, ref: str, path: str) -> tuple[int, bytes]:
        """Return (mode, hex id) of ``path`` in ``ref``; the root tree for ""."""
        mode, sha = MODE_TREE, self._commit_of(self._resolve(rec, ref)).tree
        parts = split_path(path) if path else []
        for part in parts:
            if mode != MODE_TREE:
                raise NotFoundError(f"path {path!r} not found")
            found = None
            want = part.encode()
            for name, entry_mode, entry_sha in _tree_rows(self.objects.get_raw(sha)[1]):
                if name == want:
                    found = (entry_mode, entry_sha)
                    break
            if found is None:
                raise NotFoundError(f"path {path!r} not found")
            mode, sha = found
        return mode, sha

    def list_tree(
        self, repo: str, ref: str = "main", path: str = "", *, recursive: bool = False
    ) -> list[TreeEntry]:
        """List a directory of a commit (recursively: every file below it).

        Raises:
            NotFoundError: For an unknown repo, ref or path, or a path that is a file.
        """
        rec = self.repos.open(repo)
        prefix = path.strip("/")
        mode, sha = self._lookup(rec, ref, prefix)
        if mode != MODE_TREE:
            raise NotFoundError(f"path {path!r} is not a directory")
        out: list[TreeEntry] = []
        self._list(sha, prefix, recursive, out)
        return out

    def _list(self, tree: bytes, prefix: str, recursive: bool, out: list[TreeEntry]) -> None:
        for name_raw, mode, sha in _tree_rows(self.objects.get_raw(ObjectID(tree))[1]):
            name = name_raw.decode("utf-8", "surrogateescape")
            path = f"{prefix}/{name}" if prefix else name
            kind = _KIND.get(mode, "blob")
            if kind == "tree" and recursive:
                self._list(sha, path, True, out)
                continue
            size = len(self.objects.get_raw(ObjectID(sha))[1]) if kind == "blob" else None
            out.append(TreeEntry(path=path, mode=mode, kind=kind, id=sha.decode(), size=size))

    def read_blob(self, repo: str, path: str, ref: str = "main") -> bytes:
        """Read one file of a commit whole.

        Raises:
            NotFoundError: For an unknown repo, ref or path, or a directory.
        """
        return b"".join(self.open_blob(repo, path, ref))

    def open_blob(self, repo: str, path: str, ref: str = "main") -> Iterator[bytes]:
        """Read one file of a commit as chunks of at most 1 MiB.

        Raises:
            NotFoundError: For an unknown repo, ref or path, or a directory.
        """
        rec = self.repos.open(repo)
        mode, sha = self._lookup(rec, ref, path)
        if mode in (MODE_TREE, MODE_GITLINK):
            raise NotFoundError(f"path {path!r} is not a file")
        _, data = self.objects.get_raw(ObjectID(sha))
        view = memoryview(data)
        return (bytes(view[i : i + _CHUNK]) for i in range(0, len(data), _CHUNK))

    def log(self, repo: str, ref: str = "main", *, limit: int = 100) -> list[CommitInfo]:
        """Commits reachable from ``ref``, newest first.

        Raises:
            NotFoundError: For an unknown repo or ref.
        """
        rec = self.repos.open(repo)
        head = self._resolve(rec, ref)
        walker = Walker(
            self.objects, include=[ObjectID(head)], max_entries=max(1, min(limit, 10_000))
        )
        return [_commit_info(entry.commit) for entry in walker]

    def diff(self, repo: str, a: str, b: str) -> list[FileChange]:
        """Files that differ between commits (or refs) ``a`` and ``b`` of ``repo``.

        Raises:
            NotFoundError: For an unknown repo or ref.
        """
        rec = self.repos.open(repo)
        tree_a = self._commit_of(self._resolve(rec, a)).tree
        tree_b = self._commit_of(self._resolve(rec, b)).tree
        out: list[FileChange] = []
        for ch in tree_changes(self.objects, tree_a, tree_b):
            old, new = ch.old, ch.new
            path_raw = new.path if new is not None and new.path else (old.path if old else None)
            out.append(
                FileChange(
                    path=(path_raw or b"").decode("utf-8", "surrogateescape"),
                    kind=_CHANGE.get(ch.type, "modified"),
                    old_id=old.sha.decode() if old is not None and old.sha else None,
                    new_id=new.sha.decode() if new is not None and new.sha else None,
                    old_mode=old.mode if old is not None else None,
                    new_mode=new.mode if new is not None else None,
                )
            )
        return out

    # -- accounting -------------------------------------------------------------------------

    def storage_bytes(self) -> int:
        """Bytes the shared object store occupies on disk (packs and indexes)."""
        return sum(p.stat().st_size for p in self.objects.pack_path.iterdir() if p.is_file())


def _tree_rows(raw: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, mode, hex id) of each entry of a stored (already validated) tree."""
    pos = 0
    while pos < len(raw):
        space = raw.index(b" ", pos)
        nul = raw.index(b"\x00", space)
        yield raw[space + 1 : nul], int(raw[pos:space], 8), raw[nul + 1 : nul + 21].hex().encode()
        pos = nul + 21


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _ident(raw: bytes) -> Author:
    text = raw.decode("utf-8", "replace")
    name, _, rest = text.partition(" <")
    return Author(name=name, email=rest.rstrip(">"))


def _commit_info(c: Commit) -> CommitInfo:
    return CommitInfo(
        id=c.id.decode(),
        tree=c.tree.decode(),
        parents=[p.decode() for p in c.parents],
        author=_ident(c.author),
        author_time=datetime.fromtimestamp(c.author_time, UTC),
        committer=_ident(c.committer),
        commit_time=datetime.fromtimestamp(c.commit_time, UTC),
        message=c.message.decode("utf-8", "replace"),
    )

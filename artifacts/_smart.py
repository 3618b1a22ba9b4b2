"""dulwich's git protocol handlers bound to the shared store and one repo's refs.

`run_service` speaks upload-pack (clone, fetch) or receive-pack (push) for one repo over
stateless-RPC (smart HTTP). The pieces:

* `_BackendRepo`: a dulwich repo made of the shared object store and the repo's own refs.
* `_UploadPack`: dulwich's upload-pack with the pack written by `PackSender` (stored entries
  copied, not recompressed) and without partial-clone filters; it also serves a want that a
  branch moved past between the client's two requests, as git does in stateless mode.
* `_CompareAndSwapRefs`: the refs a push moves; an update whose old value is stale fails
  instead of being reported "ok" and lost.
* `_ReceiveObjects`: what receive-pack sees as the object store; its ``add_thin_pack`` runs the
  store's quarantined, validated ingest limited to what this repo may see.
* `_RefUpdateCheck`: dulwich's ``update`` hook, refusing ref names outside refs/heads and
  refs/tags and tips that are not commits the pusher sent or could already see.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from dulwich.config import ConfigFile
from dulwich.errors import HookError
from dulwich.hooks import Hook
from dulwich.objects import ObjectID
from dulwich.protocol import CAPABILITY_FILTER, CAPABILITY_NO_DONE, Protocol
from dulwich.refs import DiskRefsContainer, Ref
from dulwich.repo import BaseRepo
from dulwich.server import (
    Backend,
    ReceivePackHandler,
    UploadPackHandler,
    _ProtocolGraphWalker,
)

from artifacts._errors import InvalidArgumentError
from artifacts._objects import SharedObjectStore
from artifacts._packsend import PackSender
from artifacts._packwrite import OBJ_COMMIT, OBJ_TAG
from artifacts._reach import Reachability, ancestors_among
from artifacts._repos import RepoRecord
from artifacts._store import ArtifactStore
from artifacts._validate import check_ref_name

__all__ = ["SERVICES", "advertise", "run_service"]

SERVICES = ("git-upload-pack", "git-receive-pack")
_ZERO = b"0" * 40


class _ReceiveObjects:
    """The shared store as receive-pack sees it, with pushes confined to one repo's view."""

    def __init__(self, shared: SharedObjectStore, visible: Reachability) -> None:
        self._shared = shared
        self._visible = visible
        self.received: set[bytes] = set()

    def add_thin_pack(
        self,
        read_all: Callable[[int], bytes],
        read_some: Callable[[int], bytes] | None,
        progress: Callable[..., None] | None = None,
        **_: Any,
    ) -> None:
        self.received |= self._shared.receive_pack(
            read_all, read_some, self._visible.contains, progress
        )

    def __contains__(self, sha: bytes) -> bool:
        return ObjectID(sha) in self._shared

    def __getitem__(self, sha: bytes) -> Any:
        return self._shared[ObjectID(sha)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)


class _RefUpdateCheck(Hook):
    """dulwich ``update`` hook: the last word on each ref a push wants to move."""

    def __init__(self, objects: _ReceiveObjects, visible: Reachability) -> None:
        self._objects = objects
        self._visible = visible

    def execute(self, ref: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        # dulwich expects (stdout, stderr) back from an update hook that passes.
        try:
            check_ref_name(ref)
        except InvalidArgumentError as e:
            raise HookError(e.reason) from None
        if new == _ZERO:
            return b"", b""
        if new not in self._objects.received and not self._visible.contains(new):
            raise HookError("unknown object")
        type_num, _ = self._objects.get_raw(new)
        allowed = (OBJ_COMMIT,) if ref.startswith(b"refs/heads/") else (OBJ_COMMIT, OBJ_TAG)
        if type_num not in allowed:
            raise HookError("ref must point at a commit")
        return b"", b""


class _CompareAndSwapRefs(DiskRefsContainer):
    """A repo's refs as a push moves them: an update whose old value is stale fails.

    dulwich's receive-pack ignores the answer of ``set_if_equals``/``remove_if_equals``: a
    push that lost a race with another push or an API commit was reported "ok" while the ref
    stayed where the other writer had put it, and the pushed commits were silently dropped.
    An OSError makes dulwich report the ref as not written; git shows the push rejected, and
    a fetch and a new push succeed.
    """

    def set_if_equals(self, name: Ref, old_ref: ObjectID | None, new_ref: ObjectID,
                      *args: Any, **kwargs: Any) -> bool:
        if not super().set_if_equals(name, old_ref, new_ref, *args, **kwargs):
            raise OSError(f"{name.decode(errors='replace')} moved since it was read")
        return True

    def remove_if_equals(self, name: Ref, old_ref: ObjectID | None,
                         *args: Any, **kwargs: Any) -> bool:
        if not super().remove_if_equals(name, old_ref, *args, **kwargs):
            raise OSError(f"{name.decode(errors='replace')} moved since it was read")
        return True


class _BackendRepo(BaseRepo):
    """A dulwich repo: shared objects plus this repo's refs, no config, no working tree."""

    def __init__(
        self, objects: Any, rec: RepoRecord, refs: DiskRefsContainer | None = None
    ) -> None:
        super().__init__(objects, refs or rec.refs)

    def get_config(self) -> ConfigFile:
        return ConfigFile()

    def get_named_file(self, path: str, basedir: str | None = None) -> None:
        return None


class _Backend(Backend):
    """Hands dulwich's handlers the repo they were built for."""

    def __init__(self, repo: _BackendRepo) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Any:
        return self.repo


class _UploadPack(UploadPackHandler):
    """upload-pack whose pack comes from `PackSender`; partial clone is not offered."""

    sender: PackSender

    def capabilities(self) -> list[bytes]:
        return [c for c in super().capabilities() if c != CAPABILITY_FILTER]

    def handle(self) -> None:
        """Negotiate like dulwich, then stream the pack from stored entries."""
        self._processing_have_lines = True
        walker = _ProtocolGraphWalker(
            self, self.repo.object_store, self.repo.get_peeled, self.repo.refs.get_symrefs
        )
        wants: list[ObjectID] = []

        def determine_wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            if not self.advertise_refs:
                refs = self._with_moved_tips(walker, refs)
            wants.extend(walker.determine_wants(refs, depth))
            return wants

        missing = self.repo.find_missing_objects(
            determine_wants, walker, self.progress, get_tagged=self.get_tagged
        )
        if not wants or missing is None:
            return
        object_ids = [oid for oid, _hint in missing]
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE), self._done_received):
            return
        self._start_pack_send_phase()
        self.progress(f"counting objects: {len(object_ids)}, done.\n".encode("ascii"))
        for chunk in self.sender.pack_stream(object_ids):
            self.write_pack_data(chunk)
        self.proto.write_pkt_line(None)

    def _with_moved_tips(
        self, walker: _ProtocolGraphWalker, refs: Mapping[Ref, ObjectID]
    ) -> Mapping[Ref, ObjectID]:
        """``refs`` plus the wanted commits that a ref has since moved past.

        Over smart HTTP the client reads the refs in one request and asks for them in the
        next; a commit in between moves the branch, and dulwich refuses a want that is no
        longer a tip. Like git's upload-pack in stateless mode, a want that is an ancestor of
        a current tip of this repo is served (never an object only other repos reach).
        """
        lines: list[bytes | None] = []
        line = self.proto.read_pkt_line()
        while line is not None and line.startswith(b"want "):
            lines.append(line)
            line = self.proto.read_pkt_line()
        lines.append(line)
        walker.proto = cast(Protocol, _Replay(self.proto, lines))  # dulwich reads them again
        tips = set(refs.values())
        asked = {want[5:45] for want in lines[:-1] if want is not None} - tips
        if not asked:
            return refs
        # One bounded walk however many wants the client sends.
        moved = ancestors_among(self.repo.object_store, tips, asked)
        return {**refs, **{Ref(b"refs/sandboxd/moved/" + sha): ObjectID(sha) for sha in moved}}


class _Replay:
    """A dulwich `Protocol` that first hands back pkt-lines already read."""

    def __init__(self, proto: Protocol, lines: list[bytes | None]) -> None:
        self._proto = proto
        self._lines = lines

    def read_pkt_line(self) -> bytes | None:
        if self._lines:
            return self._lines.pop(0)
        return self._proto.read_pkt_line()

    def unread_pkt_line(self, data: bytes | None) -> None:
        self._lines.insert(0, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proto, name)


def _handler(
    store: ArtifactStore,
    sender: PackSender,
    rec: RepoRecord,
    service: str,
    proto: Protocol,
    advertise_refs: bool,
) -> Any:
    if service == "git-upload-pack":
        repo = _BackendRepo(store.objects, rec)
        handler = _UploadPack(
            _Backend(repo), [rec.name], proto, stateless_rpc=True, advertise_refs=advertise_refs
        )
        handler.sender = sender
        return handler
    visible = store.visibility(rec)
    objects = _ReceiveObjects(store.objects, visible)
    repo = _BackendRepo(objects, rec, _CompareAndSwapRefs(str(rec.path)))
    repo.hooks["update"] = _RefUpdateCheck(objects, visible)
    return ReceivePackHandler(
        _Backend(repo), [rec.name], proto, stateless_rpc=True, advertise_refs=advertise_refs
    )


def _returns_none(write: Callable[[bytes], object]) -> Callable[[bytes], None]:
    def wrapped(data: bytes) -> None:
        write(data)

    return wrapped


def advertise(
    store: ArtifactStore,
    sender: PackSender,
    rec: RepoRecord,
    service: str,
    write: Callable[[bytes], object],
) -> None:
    """Write the ``info/refs?service=...`` answer for one repo."""
    proto = Protocol(lambda n: b"", _returns_none(write))
    proto.write_pkt_line(f"# service={service}\n".encode("ascii"))
    proto.write_pkt_line(None)
    _handler(store, sender, rec, service, proto, advertise_refs=True).handle()


def run_service(
    store: ArtifactStore,
    sender: PackSender,
    rec: RepoRecord,
    service: str,
    read: Callable[[int], bytes],
    write: Callable[[bytes], object],
) -> None:
    """Serve one stateless-RPC POST of ``service`` for one repo.

    For a push, ref updates are serialized with the store's API commits by the repo lock.
    """
    proto = Protocol(read, _returns_none(write))
    handler = _handler(store, sender, rec, service, proto, advertise_refs=False)
    if service == "git-receive-pack":
        with store.repo_lock(rec.name):
            handler.handle()
    else:
        handler.handle()

"""The one content-addressed object store shared by every repo.

A dulwich `DiskObjectStore` under ``DATA_DIR/artifacts/objects``: an object is stored once
however many repos reference it. `SharedObjectStore` adds the store's ingest rules to it:

* a pushed pack is streamed through `PackGuard` (size, count, zlib-bomb and delta-bomb
  limits) into a *quarantine* store under ``artifacts/tmp/``, checked object by object (tree
  entry names, modes, order; commit and tag headers) and for connectivity (everything it
  references is in the pack or already in the store), and only then moved into the shared
  pack directory. A refused push leaves nothing behind.
* raw objects offered with an id (`ingest`) are rehashed; a mismatch is refused.

Invariant relied on by the ref checks: every object in the store has all the objects it
references in the store too (gitlinks excepted), so a ref pointing at a stored commit is
fully connected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from dulwich.errors import ObjectFormatException
from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID, RawObjectID
from dulwich.pack import Pack

from artifacts._consolidate import Consolidator
from artifacts._errors import ArtifactsError, InvalidArgumentError, LimitExceededError
from artifacts._limits import StoreLimits
from artifacts._packscan import PackGuard, guard_reads
from artifacts._packwrite import OBJ_BLOB, OBJ_COMMIT, OBJ_TAG, OBJ_TREE, TYPE_NAMES, PackWriter
from artifacts._validate import (
    MODE_GITLINK,
    check_commit_raw,
    check_tag_raw,
    parse_tree_strict,
)

__all__ = ["RawObject", "SharedObjectStore", "check_object"]

log = logging.getLogger(__name__)

RawObject = tuple[str, int, bytes]
"""(hex id claimed by the sender, type number, content without header)."""


def check_object(type_num: int, raw: bytes, field: str = "object") -> list[bytes]:
    """Validate one object's content and return the hex ids it references.

    Raises:
        InvalidArgumentError: When the content breaks a rule of `artifacts._validate`.
    """
    if type_num == OBJ_TREE:
        return [
            sha.hex().encode()
            for _, mode, sha in parse_tree_strict(raw, field)
            if mode != MODE_GITLINK
        ]
    if type_num == OBJ_COMMIT:
        tree, parents = check_commit_raw(raw, field)
        return [tree, *parents]
    if type_num == OBJ_TAG:
        return [check_tag_raw(raw, field)]
    if type_num == OBJ_BLOB:
        return []
    raise InvalidArgumentError(field, f"unknown object type {type_num}")


class SharedObjectStore(DiskObjectStore):
    """dulwich's disk store plus quarantined, validated ingest of packs and raw objects."""

    def __init__(self, path: Path, tmp_dir: Path, limits: StoreLimits) -> None:
        super().__init__(str(path), pack_compression_level=limits.compression_level)
        self.limits = limits
        self.tmp_dir = tmp_dir
        self._cache_lock = threading.RLock()
        self._retired: list[Any] = []
        """Merged-away packs still open because a reader may hold them."""
        self.consolidator = Consolidator(self)

    @classmethod
    def open(cls, path: Path, tmp_dir: Path, limits: StoreLimits) -> SharedObjectStore:
        """Open the store at ``path``, creating its directories on first use."""
        (path / "pack").mkdir(parents=True, exist_ok=True)
        (path / "info").mkdir(exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        store = cls(path, tmp_dir, limits)
        store._landed()  # a store left with many packs is merged without waiting for a commit
        return store

    @property
    def pack_path(self) -> Path:
        """Directory of the store's packs."""
        return Path(self.pack_dir)

    def new_pack_writer(self) -> PackWriter:
        """Start a pack that skips objects the store already holds."""
        return PackWriter(
            self.pack_path,
            self._has_packed,
            compression_level=self.limits.compression_level,
            threads=self.limits.threads,
        )

    def _has_packed(self, sha: bytes) -> bool:
        # Every object lives in a pack and this process lands every pack itself, so the
        # cached pack list is current: skip dulwich's directory rescan on each miss.
        for pack in self._iter_cached_packs():
            try:
                pack.index.object_offset(RawObjectID(sha))
            except KeyError:
                continue
            return True
        return False

    def land(self, writer: PackWriter) -> None:
        """Finish a pack started with `new_pack_writer` and make its objects visible."""
        writer.finish()
        self._landed()

    def _landed(self) -> None:
        """After packs appeared: pick them up, close what is released, merge when due."""
        self._update_pack_cache()
        self.close_released()
        if len(self._pack_cache) > self.limits.max_packs:
            self.consolidator.poke()

    # -- packs: the cache, merging, retiring --------------------------------------------------

    def _update_pack_cache(self) -> list[Any]:
        # Serialized with `retire`, so that a rescan never reopens a pack being retired.
        with self._cache_lock:
            new_packs = super()._update_pack_cache()
            for pack in new_packs:
                # dulwich opens a pack's files on first use, without a lock: two threads'
                # first lookups would each open them, and one pair would stay open until the
                # garbage collector found it. Opened here, once, under the lock.
                pack.index, pack.data  # noqa: B018
            return new_packs

    def update_pack_cache(self) -> None:
        """Pick up packs that appeared in the pack directory."""
        self._update_pack_cache()

    def cached_packs(self) -> list[Any]:
        """The packs known now, without rescanning the directory."""
        return list(self._iter_cached_packs())

    def current_packs(self) -> list[Any]:
        """The packs in the pack directory now."""
        self._update_pack_cache()
        return self.cached_packs()

    def retire(self, packs: Sequence[Any]) -> None:
        """Remove packs whose objects are all in another pack of the store.

        Each pack leaves the cache and its files are deleted, but it stays open (its files
        opened first) until no reader holds it any more: a lookup or clone that picked it
        up a moment ago finishes undisturbed.
        """
        with self._cache_lock:
            for pack in packs:
                pack.data, pack.index  # noqa: B018 (open both files before they are deleted)
                name = os.path.basename(pack._basename)
                self._pack_cache.pop(name, None)
                if name in self._pack_access_order:
                    self._pack_access_order.remove(name)
                self._retired.append(pack)
                for path in (pack._data_path, pack._idx_path):
                    Path(path).unlink(missing_ok=True)

    def close_released(self) -> None:
        """Close retired packs that nothing but this store refers to any more."""
        with self._cache_lock:
            keep = []
            for pack in self._retired:
                if _held_elsewhere(pack):
                    keep.append(pack)
                else:
                    pack.close()
            self._retired = keep

    def close(self) -> None:
        """Stop merging and close every pack."""
        self.consolidator.close()
        with self._cache_lock:
            for pack in self._retired:
                pack.close()
            self._retired = []
        super().close()

    # -- raw ingest -------------------------------------------------------------------------

    def ingest(self, objects: Iterable[RawObject]) -> list[str]:
        """Add raw objects after checking each id, content and connectivity.

        Args:
            objects: ``(claimed hex id, type number, content)`` triples.

        Returns:
            The ids added (or already present).

        Raises:
            InvalidArgumentError: On an id that does not match its bytes, invalid content or a
                reference to an object that is neither offered nor stored.
        """
        items: list[tuple[int, bytes]] = []
        ids: list[str] = []
        refs: list[tuple[int, bytes]] = []
        for i, (claimed, type_num, data) in enumerate(objects):
            field = f"objects[{i}]"
            if type_num not in TYPE_NAMES:
                raise InvalidArgumentError(field, f"unknown object type {type_num}")
            if len(data) > self.limits.max_object_bytes:
                raise LimitExceededError(field, "object larger than the limit")
            h = hashlib.sha1(TYPE_NAMES[type_num] + b" %d\x00" % len(data))
            h.update(data)
            if h.hexdigest() != claimed:
                raise InvalidArgumentError(
                    field, f"id {claimed} does not match its content ({h.hexdigest()})"
                )
            refs.extend((i, r) for r in check_object(type_num, data, field))
            items.append((type_num, data))
            ids.append(claimed)
        offered = {i.encode() for i in ids}
        for i, ref in refs:
            if ref not in offered and ObjectID(ref) not in self:
                raise InvalidArgumentError(f"objects[{i}]", f"references missing {ref.decode()}")
        writer = self.new_pack_writer()
        try:
            for type_num, data in items:
                writer.add(type_num, data)
        except BaseException:
            writer.abort()
            raise
        self.land(writer)
        return ids

    # -- git push ---------------------------------------------------------------------------

    def receive_pack(
        self,
        read_all: Callable[[int], bytes],
        read_some: Callable[[int], bytes] | None,
        visible: Callable[[bytes], bool],
        progress: Callable[..., None] | None = None,
    ) -> set[bytes]:
        """Receive a pushed pack: guard, quarantine, validate, then move in.

        Args:
            read_all: Reads exactly n bytes of the pack stream.
            read_some: Reads up to n bytes (None when unavailable).
            visible: Whether the pushing repo may use a stored object (hex id) as a delta base
                or a reference; objects of other repos must not be reachable through a push.
            progress: dulwich progress callback.

        Returns:
            The hex ids of the objects the pack brought.

        Raises:
            ObjectFormatException: dulwich's error type, so the client sees
                ``unpack <reason>`` and no ref moves.
        """
        guard = PackGuard(
            max_bytes=self.limits.max_pack_bytes,
            max_objects=self.limits.max_pack_objects,
            max_object_bytes=self.limits.max_object_bytes,
        )
        qdir = Path(tempfile.mkdtemp(prefix="incoming-", dir=self.tmp_dir))
        quarantine = None
        try:
            DiskObjectStore.init(str(qdir / "objects")).close()
            quarantine = _Quarantine(qdir / "objects", self, visible)
            r_all, r_some = guard_reads(guard, read_all, read_some)
            pack = quarantine.add_thin_pack(r_all, r_some, progress)
            received: set[bytes] = {bytes(sha) for sha in pack}
            self._check_quarantined(pack, received, visible)
            base = Path(pack._basename)
            pack.close()
            quarantine.close()
            target = self.pack_path / base.name
            os.replace(base.with_suffix(".pack"), target.with_suffix(".pack"))
            os.replace(base.with_suffix(".idx"), target.with_suffix(".idx"))
            self._landed()
            return received
        except ArtifactsError as e:
            log.info("push refused: %s", e)
            raise ObjectFormatException(str(e)) from None
        finally:
            if quarantine is not None:
                quarantine.close()
            shutil.rmtree(qdir, ignore_errors=True)

    def _check_quarantined(
        self, pack: Any, received: set[bytes], visible: Callable[[bytes], bool]
    ) -> None:
        for obj in pack.iterobjects():
            if obj.type_num == OBJ_BLOB:
                continue
            field = f"object {obj.id.decode()}"
            for ref in check_object(obj.type_num, obj.as_raw_string(), field):
                if ref not in received and not visible(ref):
                    raise InvalidArgumentError(field, f"references missing {ref.decode()}")


def _pack_self_references() -> int:
    """References a dulwich `Pack` holds to itself (its lazy loaders close over `self`)."""
    probe = Pack("/nonexistent/pack-probe", object_format=DEFAULT_OBJECT_FORMAT)  # opens nothing
    return sys.getrefcount(probe) - 2  # less `probe` and getrefcount's argument


_PACK_SELF_REFERENCES = _pack_self_references()


def _held_elsewhere(pack: Any) -> bool:
    """Whether anything besides the retired list refers to `pack` or its open files."""
    # Expected: the pack's own references, the retired list, the caller's loop variable,
    # this function's parameter and getrefcount's argument; for its data and index, the
    # pack's attribute and the argument.
    return (
        sys.getrefcount(pack) > _PACK_SELF_REFERENCES + 4
        or (pack._data is not None and sys.getrefcount(pack._data) > 2)
        or (pack._idx is not None and sys.getrefcount(pack._idx) > 2)
    )


class _Quarantine(DiskObjectStore):
    """A private store for one incoming pack; sees only the shared objects the pusher may."""

    def __init__(
        self, path: Path, main: SharedObjectStore, visible: Callable[[bytes], bool]
    ) -> None:
        super().__init__(str(path))
        self._main = main
        self._visible = visible

    def get_raw(self, name: ObjectID | RawObjectID) -> tuple[int, bytes]:
        """Resolve thin-pack delta bases from the shared store when the pusher may see them."""
        try:
            return super().get_raw(name)
        except KeyError:
            hex_id = ObjectID(name if len(name) == 40 else name.hex().encode())
            if self._visible(hex_id):
                return self._main.get_raw(hex_id)
            raise

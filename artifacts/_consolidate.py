"""Keeping the number of packs small: geometric roll-up of the store's packs.

Every API commit and every push lands a pack of its own, and each open pack costs file
descriptors and a step in every object lookup: at 3,000 packs a commit took 110 ms instead
of 10 and the server held 12,000 descriptors. `Consolidator` runs on a background thread and,
when the store holds more than `StoreLimits.max_packs` packs, merges the smaller ones into one,
the way `git repack --geometric=2` does: packs sorted by object count, the smallest are rolled
up until every remaining pack holds at least twice the objects of the next smaller one. The
pack count stays logarithmic in the number of objects and each object is rewritten a
logarithmic number of times over the store's life.

The merged pack is written by `PackSender` (stored entries copied, deltas kept when their base
travels along), indexed by dulwich in a private directory, fsynced, and renamed into the pack
directory before any merged pack is removed: a crash at any point leaves every object stored.
Readers never see a closed pack: `SharedObjectStore.retire` takes the merged packs out of the
cache before their files go, and closes each only once nothing else holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from dulwich.object_store import DiskObjectStore

from artifacts._limits import StoreLimits
from artifacts._packsend import PackSender
from artifacts._packwrite import fsync_path

__all__ = ["GEOMETRIC_FACTOR", "Consolidator", "choose_rollup"]

log = logging.getLogger(__name__)

GEOMETRIC_FACTOR = 2
"""Each pack kept must hold at least this many times the objects of the next smaller one."""


def choose_rollup(counts: Sequence[int]) -> int:
    """How many of the smallest packs to merge, given object counts sorted ascending.

    Returns 0 when the packs already form a geometric progression (nothing to merge), and
    never 1 (merging one pack into itself achieves nothing).
    """
    n = len(counts)
    if n < 2:
        return 0
    split = n - 1
    # The largest packs that already form a progression stay; everything below is rolled up.
    while split > 0 and counts[split] >= GEOMETRIC_FACTOR * counts[split - 1]:
        split -= 1
    if split == 0:
        return 0
    total = sum(counts[:split])
    # A larger pack that the roll-up would not dwarf joins it, as git does.
    while split < n and counts[split] < GEOMETRIC_FACTOR * total:
        total += counts[split]
        split += 1
    return split if split >= 2 else 0


class PackStore(Protocol):
    """What the consolidator needs of `SharedObjectStore`."""

    tmp_dir: Path
    limits: StoreLimits

    @property
    def pack_path(self) -> Path:
        """Directory of the store's packs."""

    def current_packs(self) -> list[Any]:
        """The store's packs now (dulwich `Pack` objects)."""

    def retire(self, packs: Sequence[Any]) -> None:
        """Remove merged packs from the store once their objects are in another pack."""

    def close_released(self) -> None:
        """Close retired packs that no reader holds any more."""

    def update_pack_cache(self) -> None:
        """Pick up packs that appeared in the pack directory."""


class _Abandoned(Exception):
    """The store closed during a merge."""


class Consolidator:
    """Background thread merging small packs whenever the store has too many."""

    def __init__(self, store: PackStore) -> None:
        self._store = store
        self._wake = threading.Condition()
        self._pending = False
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Note that a pack landed; a merge follows in the background if one is due."""
        with self._wake:
            if self._closed:
                return
            self._pending = True
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="artifacts-consolidate", daemon=True)
                self._thread.start()
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no merge is pending or running (tests and shutdown)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stop the thread; a merge in progress is abandoned (its packs stay as they were)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)

    def consolidate_now(self) -> int:
        """Merge until the packs form a progression or number at most `max_packs`.

        Returns the number of packs merged away.
        """
        merged = 0
        while True:
            packs = self._store.current_packs()
            if len(packs) <= self._store.limits.max_packs:
                return merged
            packs.sort(key=lambda pack: len(pack.index))
            take = choose_rollup([len(pack.index) for pack in packs])
            if take == 0:
                return merged
            self._merge(packs[:take])
            merged += take
            del packs  # the retired packs can only be closed once this list is gone
            self._store.close_released()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._idle.set()
                    self._wake.wait()
                if self._closed:
                    self._idle.set()
                    return
                self._pending = False
            try:
                self.consolidate_now()
            except _Abandoned:
                log.info("pack merge abandoned: the store is closing")
            except Exception:
                # Nothing is lost: the packs stay as they are and the next landing retries.
                log.exception("merging packs failed")

    def _merge(self, packs: Sequence[Any]) -> None:
        ids: dict[bytes, None] = {}
        for pack in packs:
            for raw_sha, _offset, _crc in pack.index.iterentries():
                ids.setdefault(raw_sha.hex().encode(), None)
        work = Path(tempfile.mkdtemp(prefix="consolidate-", dir=self._store.tmp_dir))
        try:
            base = self._write_merged(list(ids), work)
            if base is None:
                return
            target = self._store.pack_path / base.name
            # A merge can reproduce a stored pack byte for byte (the same packs merged once
            # more, say): that pack then stays, and only the others are retired.
            if not target.with_suffix(".idx").exists():
                for suffix in (".pack", ".idx"):
                    fsync_path(base.with_suffix(suffix))
                    os.replace(base.with_suffix(suffix), target.with_suffix(suffix))
                fsync_path(self._store.pack_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._store.update_pack_cache()
        self._store.retire([pack for pack in packs if Path(pack._basename).name != base.name])
        log.info("merged %d packs (%d objects) into %s", len(packs), len(ids), base.name)

    def _write_merged(self, ids: list[bytes], work: Path) -> Path | None:
        """Write and index a pack of `ids` under `work`; its path without suffix, or None."""
        staging = DiskObjectStore.init(str(work / "objects"))
        try:
            f, commit, abort = staging.add_pack()
            try:
                sender = PackSender(self._store, self._store.limits.compression_level)
                for chunk in sender.pack_stream(ids):
                    if self._closed:  # shutting down must not wait for a large merge
                        raise _Abandoned
                    f.write(chunk)
                merged = commit()
            except BaseException:
                with contextlib.suppress(OSError):  # the staging directory goes anyway
                    abort()
                raise
            if merged is None:
                return None
            merged.close()
            return Path(merged._basename)
        finally:
            staging.close()

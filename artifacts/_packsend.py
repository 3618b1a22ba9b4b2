"""Streaming the pack of a clone or fetch by copying stored pack entries.

dulwich's upload-pack inflates every non-delta object and compresses it again, which is
several times slower than stock git, which copies compressed entries straight from its packs.
`pack_stream` does what git does: a whole object's entry is copied byte for byte; a delta is
copied too (rewritten as a ref-delta naming its base) when its base is in the same pack
being sent; anything else is inflated by dulwich and compressed once.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from artifacts._packwrite import entry_header

__all__ = ["PackSender"]

_OFS_DELTA, _REF_DELTA = 6, 7
_BATCH = 256 * 1024


class _PackMap:
    """A stored pack mapped in memory with its entries' boundaries."""

    def __init__(self, pack: Any) -> None:
        # Mapped from the pack's open file, not its path: a merged-away pack's files are
        # deleted while clones that found it may still read it.
        self.mm = mmap.mmap(pack.data._file.fileno(), 0, access=mmap.ACCESS_READ)
        rows = sorted((off, sha) for sha, off, _crc in pack.index.iterentries())
        self.offsets = [off for off, _ in rows]
        self.sha_at = dict(rows)
        self.end = len(self.mm) - 20
        self.index = pack.index

    def entry_end(self, offset: int) -> int:
        i = bisect.bisect_right(self.offsets, offset)
        return self.offsets[i] if i < len(self.offsets) else self.end


class PackSender:
    """Builds pack streams from the packs of one object store; reusable across requests."""

    def __init__(self, store: Any, compression_level: int = 1) -> None:
        self._store = store
        self._level = compression_level
        self._maps: dict[str, _PackMap] = {}
        self._lock = threading.Lock()

    def _locate(self, raw_sha: bytes) -> tuple[_PackMap, int] | None:
        found = self._find(raw_sha, self._store.cached_packs())
        if found is None:
            # A pack may have landed since: rescan the directory once.
            found = self._find(raw_sha, self._store.current_packs())
        return found

    def _find(self, raw_sha: bytes, packs: list[Any]) -> tuple[_PackMap, int] | None:
        for pack in packs:
            try:
                offset = pack.index.object_offset(raw_sha)
            except KeyError:
                continue
            name = pack._data_path
            with self._lock:
                pm = self._maps.get(name)
                if pm is None:
                    pm = self._maps[name] = _PackMap(pack)
            return pm, offset
        return None

    def _forget_merged(self) -> None:
        """Drop the maps of packs merged away (a clone still using one keeps it alive)."""
        with self._lock:
            for name in [name for name in self._maps if not os.path.exists(name)]:
                del self._maps[name]

    def pack_stream(self, object_ids: Sequence[bytes]) -> Iterator[bytes]:
        """Yield a complete pack (header, entries, checksum) holding ``object_ids`` (hex)."""
        self._forget_merged()
        sending = {bytes.fromhex(s.decode()) for s in object_ids}
        checksum = hashlib.sha1()
        out = bytearray(b"PACK" + struct.pack(">LL", 2, len(object_ids)))
        for hex_id in object_ids:
            for piece in self._entry(bytes.fromhex(hex_id.decode()), hex_id, sending):
                out += piece
                if len(out) >= _BATCH:
                    checksum.update(out)
                    yield bytes(out)
                    out = bytearray()
        checksum.update(out)
        out += checksum.digest()
        yield bytes(out)

    def _entry(self, raw_sha: bytes, hex_id: bytes, sending: set[bytes]) -> Iterator[bytes]:
        found = self._locate(raw_sha)
        if found is not None:
            pm, offset = found
            mm = pm.mm
            c = mm[offset]
            type_num = (c >> 4) & 7
            size = c & 0x0F
            shift, i = 4, offset + 1
            while c & 0x80:
                c = mm[i]
                size |= (c & 0x7F) << shift
                shift += 7
                i += 1
            end = pm.entry_end(offset)
            if type_num in (1, 2, 3, 4):
                yield mm[offset:end]
                return
            if type_num == _OFS_DELTA:
                c = mm[i]
                i += 1
                rel = c & 0x7F
                while c & 0x80:
                    c = mm[i]
                    i += 1
                    rel = ((rel + 1) << 7) | (c & 0x7F)
                base = pm.sha_at.get(offset - rel)
            else:
                base = bytes(mm[i : i + 20])
                i += 20
            if base is not None and base in sending:
                # A ref-delta may name any base in the same pack; git resolves it on arrival.
                yield entry_header(_REF_DELTA, size) + base
                yield mm[i:end]
                return
        type_num, data = self._store.get_raw(hex_id)
        yield entry_header(type_num, len(data))
        yield zlib.compress(data, self._level)

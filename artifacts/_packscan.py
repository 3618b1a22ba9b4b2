"""A streaming guard in front of every pack the store receives.

dulwich inflates each incoming object whole in memory, so a zlib bomb (a few MB that inflate
to many GB), an object that claims 1 GB, or a delta whose copy instructions expand without end
would exhaust memory before any later check ran. `PackGuard` sees the bytes *before* dulwich
does: it parses entry headers, inflates each entry in bounded steps while counting, and
refuses the pack the moment anything exceeds its limit or its own declared size. dulwich
therefore never receives the bytes of an oversized object.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from artifacts._errors import LimitExceededError

__all__ = ["PackGuard", "guard_reads"]

_OFS_DELTA, _REF_DELTA = 6, 7
_STEP = 64 * 1024


class PackGuard:
    """Incremental checker of a pack stream; call `feed` with every byte in order.

    Limits:
        max_bytes: total pack size on the wire.
        max_objects: entries in the pack.
        max_object_bytes: inflated size of any object, and the result size of any delta.
    """

    def __init__(self, *, max_bytes: int, max_objects: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_objects = max_objects
        self.max_object_bytes = max_object_bytes
        self.total = 0
        self._buf = b""
        self._count: int | None = None
        self._seen = 0
        self._zobj: zlib._Decompress | None = None
        self._declared = 0
        self._inflated = 0
        self._is_delta = False
        self._delta = bytearray()
        self._trailer_left = 20

    def feed(self, data: bytes) -> None:
        """Check the next bytes of the stream.

        Raises:
            LimitExceededError: When any limit is exceeded or an entry lies about its size.
        """
        self.total += len(data)
        if self.total > self.max_bytes:
            raise LimitExceededError("pack", f"pack larger than {self.max_bytes} bytes")
        self._buf += data
        while self._buf and self._step():
            pass

    def _step(self) -> bool:
        """Consume what the buffer allows; return False when more input is needed."""
        if self._count is None:
            if len(self._buf) < 12:
                return False
            magic, version, count = self._buf[:4], *struct.unpack(">LL", self._buf[4:12])
            if magic != b"PACK" or version not in (2, 3):
                raise LimitExceededError("pack", "not a version 2/3 pack")
            if count > self.max_objects:
                raise LimitExceededError("pack", f"more than {self.max_objects} objects")
            self._count = count
            self._buf = self._buf[12:]
            return True
        if self._zobj is not None:
            return self._inflate()
        if self._seen == self._count:
            # Trailer (checked by dulwich); anything beyond it is dulwich's to reject.
            take = min(self._trailer_left, len(self._buf))
            self._trailer_left -= take
            self._buf = self._buf[take:]
            return False
        return self._header()

    def _header(self) -> bool:
        buf = self._buf
        i = 0
        if not buf:
            return False
        c = buf[0]
        type_num = (c >> 4) & 7
        size = c & 0x0F
        shift = 4
        i = 1
        while c & 0x80:
            if i >= len(buf):
                return False
            if shift > 60:
                raise LimitExceededError("pack", "entry size varint too long")
            c = buf[i]
            size |= (c & 0x7F) << shift
            shift += 7
            i += 1
        if type_num == _OFS_DELTA:
            while True:
                if i >= len(buf):
                    return False
                c = buf[i]
                i += 1
                if i > 12:
                    raise LimitExceededError("pack", "delta offset varint too long")
                if not c & 0x80:
                    break
        elif type_num == _REF_DELTA:
            if len(buf) < i + 20:
                return False
            i += 20
        elif type_num not in (1, 2, 3, 4):
            raise LimitExceededError("pack", f"bad object type {type_num}")
        if size > self.max_object_bytes:
            raise LimitExceededError(
                "pack", f"object of {size} bytes exceeds the {self.max_object_bytes}-byte limit"
            )
        self._declared = size
        self._inflated = 0
        self._is_delta = type_num in (_OFS_DELTA, _REF_DELTA)
        self._delta = bytearray()
        self._zobj = zlib.decompressobj()
        self._buf = buf[i:]
        return True

    def _inflate(self) -> bool:
        z = self._zobj
        assert z is not None
        data = self._buf
        self._buf = b""
        while True:
            # max_length bounds every step: a bomb never inflates more than one step past
            # the declared size before it is refused.
            try:
                out = z.decompress(data, _STEP)
            except zlib.error as e:
                raise LimitExceededError("pack", f"corrupt zlib data: {e}") from None
            self._inflated += len(out)
            if self._inflated > self._declared:
                raise LimitExceededError("pack", "object inflates beyond its declared size")
            if self._is_delta:
                self._delta += out
            data = z.unconsumed_tail
            if z.eof:
                if self._inflated != self._declared:
                    raise LimitExceededError("pack", "object shorter than its declared size")
                if self._is_delta:
                    _check_delta(bytes(self._delta), self.max_object_bytes)
                self._buf = z.unused_data
                self._zobj = None
                self._seen += 1
                return True
            if not data:
                return False


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise LimitExceededError("pack", "truncated delta header")
        c = buf[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return value, i


def _check_delta(delta: bytes, limit: int) -> None:
    """Refuse a delta whose instructions produce more than its declared (bounded) result."""
    _, i = _varint(delta, 0)
    target, i = _varint(delta, i)
    if target > limit:
        raise LimitExceededError("pack", f"delta result of {target} bytes exceeds the limit")
    produced = 0
    n = len(delta)
    while i < n:
        cmd = delta[i]
        i += 1
        if cmd & 0x80:
            size = 0
            for bit in range(4):
                if cmd & (1 << bit):
                    i += 1
            for bit in range(3):
                if cmd & (0x10 << bit):
                    if i >= n:
                        raise LimitExceededError("pack", "truncated delta copy")
                    size |= delta[i] << (8 * bit)
                    i += 1
            produced += size or 0x10000
        elif cmd:
            produced += cmd
            i += cmd
        else:
            raise LimitExceededError("pack", "delta opcode 0 is reserved")
        if produced > target:
            raise LimitExceededError("pack", "delta expands beyond its declared size")
    if produced != target:
        raise LimitExceededError("pack", "delta result differs from its declared size")


def guard_reads(
    guard: PackGuard,
    read_all: Callable[[int], bytes],
    read_some: Callable[[int], bytes] | None,
) -> tuple[Callable[[int], bytes], Callable[[int], bytes] | None]:
    """Wrap dulwich's pack read callbacks so every byte passes through ``guard`` first."""

    def checked_all(n: int) -> bytes:
        data = read_all(n)
        guard.feed(data)
        return data

    if read_some is None:
        return checked_all, None
    some = read_some

    def checked_some(n: int) -> bytes:
        data = some(n)
        guard.feed(data)
        return data

    return checked_all, checked_some

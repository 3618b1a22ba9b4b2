"""Pre-faulting the linear-memory pages a run writes, for isolates that wait in the pool.

A module's memory is mapped copy-on-write from its serialized snapshot (`memory_init_cow`), so
the first write to each page costs a fault and a page copy (several microseconds each on a VM).
A QuickJS `console.log(1)` writes about 50 pages, and those faults were a third of a pool hit.

`learn_written_pages` runs once per factory: after a sample run it reads /proc/self/pagemap for
the instance's memory and keeps the page ranges that became private copies (present and not
file-backed). `prefault` then breaks copy-on-write for those ranges of a pooled isolate with
`madvise(MADV_POPULATE_WRITE)`, which copies each page without changing a byte, at creation
time, off the request's path. Pages a run writes beyond the learned set still fault as before;
nothing depends on the set being complete. Where pagemap or MADV_POPULATE_WRITE (Linux 5.14)
is unavailable, nothing is pre-faulted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from collections.abc import Iterable

import wasmtime

log = logging.getLogger(__name__)

PAGE = os.sysconf("SC_PAGE_SIZE")
_MADV_POPULATE_WRITE = 23
_PRESENT = 1 << 63
_FILE_OR_SHARED = 1 << 61

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int

PageRanges = tuple[tuple[int, int], ...]
"""Half-open ranges of page numbers within a linear memory."""


def _span(memory: wasmtime.Memory, store: wasmtime.Store) -> tuple[int, int]:
    """(host address, byte length) of `memory` in `store`."""
    return ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)


def private_pages(memory: wasmtime.Memory, store: wasmtime.Store) -> set[int]:
    """Pages of `memory` that are this instance's own copies (written since instantiation)."""
    base, size = _span(memory, store)
    if base % PAGE:
        return set()
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(base // PAGE * 8)
        entries = pagemap.read(size // PAGE * 8)
    return {
        page for page, (entry,) in enumerate(struct.iter_unpack("<Q", entries))
        if entry & _PRESENT and not entry & _FILE_OR_SHARED
    }


def to_ranges(pages: Iterable[int]) -> PageRanges:
    """Sorted, merged half-open ranges covering `pages`."""
    ranges: list[list[int]] = []
    for page in sorted(pages):
        if ranges and ranges[-1][1] == page:
            ranges[-1][1] = page + 1
        else:
            ranges.append([page, page + 1])
    return tuple((start, end) for start, end in ranges)


def learn_written_pages(
    memory: wasmtime.Memory, store: wasmtime.Store, before: set[int]
) -> PageRanges:
    """The pages written since `before` was read with `private_pages` (after a sample run)."""
    return to_ranges(private_pages(memory, store) - before)


def prefault(memory: wasmtime.Memory, store: wasmtime.Store, ranges: PageRanges) -> None:
    """Make `ranges` of `memory` private copies now (where the kernel can; else on first use)."""
    base, size = _span(memory, store)
    last = size // PAGE
    for start, end in ranges:
        end = min(end, last)
        if start >= end:
            continue
        if _libc.madvise(base + start * PAGE, (end - start) * PAGE, _MADV_POPULATE_WRITE):
            log.debug("MADV_POPULATE_WRITE refused: %s", os.strerror(ctypes.get_errno()))
            return

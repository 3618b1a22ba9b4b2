"""The host's side of the driver protocol: frames in, limits held, any descriptor number."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import struct
import time
from collections.abc import Iterator

import pytest

from isolates.jail._protocol import FrameEOF, FrameReader, FrameTimeout, wait_readable

HIGH_FD = 1500
"""Above select()'s limit of 1024, which a busy server's descriptors reach."""


def _frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


@pytest.fixture
def high_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose read end is descriptor HIGH_FD."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    read_end, write_end = os.pipe()
    os.dup2(read_end, HIGH_FD)
    os.close(read_end)
    try:
        yield HIGH_FD, write_end
    finally:
        for fd in (HIGH_FD, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_frames_arrive_on_descriptors_beyond_select_limit(high_pipe: tuple[int, int]) -> None:
    read_end, write_end = high_pipe
    os.write(write_end, _frame({"t": "ready"}) + _frame({"t": "result", "exit_code": 0})[:5])
    reader = FrameReader(read_end, 4096)
    assert reader.read(time.monotonic() + 5) == {"t": "ready"}
    with pytest.raises(FrameTimeout):
        reader.read(time.monotonic() + 0.05)  # half a frame: wait, then give up
    os.write(write_end, _frame({"t": "result", "exit_code": 0})[5:])
    assert reader.read(time.monotonic() + 5) == {"t": "result", "exit_code": 0}
    os.close(write_end)
    with pytest.raises(FrameEOF):
        reader.read(time.monotonic() + 5)


def test_oversized_and_non_object_frames_are_refused(high_pipe: tuple[int, int]) -> None:
    read_end, write_end = high_pipe
    reader = FrameReader(read_end, 16)
    os.write(write_end, struct.pack(">I", 17) + b"x" * 17)
    with pytest.raises(ValueError, match="exceeds 16"):
        reader.read(time.monotonic() + 5)


def test_wait_readable_times_out_then_sees_data(high_pipe: tuple[int, int]) -> None:
    read_end, write_end = high_pipe
    assert not wait_readable(read_end, 0.05)
    os.write(write_end, b"x")
    assert wait_readable(read_end, 5)

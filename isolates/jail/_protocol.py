"""The host's side of the driver protocol: length-prefixed JSON frames over the jail's stdio.

Host -> driver (nsjail's stdin): one REQUEST frame, then end-of-file when the host is done.
Driver -> host (nsjail's stdout): READY, optional OUT chunks (when streaming), one RESULT.
A frame is a 4-byte big-endian length and a body. The REQUEST body is `marshal` (format version
4, which the guest's Python 3.11 reads) with bytes raw: the driver then needs neither `json`
nor `base64`, whose imports cost every jail's start-up. Bodies from the driver are JSON objects
with bytes base64-encoded, parsed with `json.loads` and never with `marshal` (which is not safe
against crafted input): everything read from the driver is treated as untrusted input, sizes
are capped and fields checked.
"""

from __future__ import annotations

import base64
import json
import marshal
import os
import select
import struct
import time
from typing import Any

from isolates.base import ExecutionRequest, Limits

SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/workspace",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "USER": "sandbox",
}
"""The fixed environment every guest program gets; the request's variables are added to it."""


MARSHAL_VERSION = 4
"""marshal format of REQUEST bodies: the newest that the guest's Python 3.11 reads."""


class FrameTimeout(Exception):
    """No complete frame arrived before the deadline."""


class FrameEOF(Exception):
    """The driver closed its end (it exited or was killed) before a complete frame."""


def encode_request(
    request: ExecutionRequest, limits: Limits, stream: bool, poll_s: float
) -> bytes:
    """Encode one REQUEST frame for the driver.

    Args:
        request: the execution request (already validated by the executor).
        limits: the request's limits clamped to the factory's maxima.
        stream: whether the driver should send OUT frames as output is produced.
        poll_s: how long the driver polls for the program's end before it sleeps.

    Returns:
        The frame bytes, length prefix included.
    """
    # Only plain str, bytes, int, float, bool, None, list and dict: what marshal version 4
    # carries between the host's Python and the guest's 3.11.
    message: dict[str, Any] = {
        "language": str(request.language.value),
        "code": str(request.code),
        "argv": [str(a) for a in request.argv],
        "stdin": bytes(request.stdin),
        "env": {str(k): str(v) for k, v in {**SAFE_ENV, **request.env}.items()},
        "files": [
            {"path": str(f.path), "mode": int(f.mode), "content": bytes(f.content)}
            for f in request.files
        ],
        "output_paths": [str(p) for p in request.output_paths],
        "timeout_s": float(limits.timeout_s),
        "cpu_s": None if limits.cpu_s is None else float(limits.cpu_s),
        "output_bytes": int(limits.output_bytes),
        "stream": bool(stream),
        "poll_s": float(poll_s),
    }
    body = marshal.dumps(message, MARSHAL_VERSION)
    return struct.pack(">I", len(body)) + body


PIPE_CAPACITY = 65536
"""What a pipe holds (Linux's default), so the most one read of it returns. A read asks for no
more: a buffer of 1 MiB was mapped and unmapped on every read, 0.09 ms against 0.03 ms for
reading a result after an idle pause."""


class FrameReader:
    """Reads frames from the driver's pipe with a deadline, never more than `max_bytes` each."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self._fd = fd
        self._max = max_bytes
        self._buffer = bytearray()
        os.set_blocking(fd, False)

    @property
    def fd(self) -> int:
        """The pipe's descriptor (non-blocking), for an event loop to watch."""
        return self._fd

    def read(self, deadline: float) -> dict[str, Any]:
        """Return the next frame as a dict, blocking until it is complete.

        Raises:
            FrameTimeout: `deadline` (time.monotonic()) passed first.
            FrameEOF: the pipe closed first.
            ValueError: the frame is too large or not a JSON object.
        """
        while True:
            message = self.read_buffered()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeout
            if wait_readable(self._fd, remaining):
                self._fill()

    def read_nowait(self) -> dict[str, Any] | None:
        """Return the next frame if it is complete by now, else None (never blocks).

        Reads the pipe at most once, and only when no complete frame is buffered.

        Raises:
            FrameEOF: the pipe closed before a complete frame.
            ValueError: the frame is too large or not a JSON object.
        """
        message = self.read_buffered()
        if message is None and self._fill():
            message = self.read_buffered()
        return message

    def read_buffered(self) -> dict[str, Any] | None:
        """Take the first frame out of what was read already, if it is all there.

        Raises:
            ValueError: the frame is too large or not a JSON object.
        """
        if len(self._buffer) < 4:
            return None
        (size,) = struct.unpack(">I", self._buffer[:4])
        if size > self._max:
            raise ValueError(f"driver frame of {size} bytes exceeds {self._max}")
        if len(self._buffer) < 4 + size:
            return None
        body = bytes(self._buffer[4 : 4 + size])
        del self._buffer[: 4 + size]
        message = json.loads(body)
        if not isinstance(message, dict):
            raise ValueError("driver frame is not an object")
        return message

    def _fill(self) -> bool:
        """Append what the pipe holds to the buffer; False if it held nothing yet."""
        try:
            chunk = os.read(self._fd, PIPE_CAPACITY)
        except BlockingIOError:
            return False
        if not chunk:
            raise FrameEOF
        self._buffer += chunk
        return True


def wait_readable(fd: int, timeout_s: float) -> bool:
    """Whether `fd` became readable (or hung up) within `timeout_s`.

    `poll`, not `select`: select() refuses descriptor numbers from 1024 up, which a server
    holding many files (artifact packs, clients, jails) reaches.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def b64(message: dict[str, Any], key: str) -> bytes:
    """Decode a base64 field of a driver frame (missing -> empty)."""
    value = message.get(key, "")
    return base64.b64decode(value) if isinstance(value, str) else b""

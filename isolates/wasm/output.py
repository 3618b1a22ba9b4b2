"""Host-side capture of a guest's stdout and stderr, capped, counted and optionally streamed.

The Python guest caps its output itself and hands only kept bytes to the host; QuickJS and raw
WASI modules write through the host's `fd_write` (see wasi_core.py), so the host caps there.
Either way the bytes end up in an `OutputCapture`: at most `cap` bytes kept per stream, the
total counted, each kept chunk passed to the caller's `on_output` sink as it arrives.
"""

from __future__ import annotations

import logging

from isolates.base import OutputSink

_log = logging.getLogger(__name__)

STREAMS = {1: "stdout", 2: "stderr"}


class OutputCapture:
    """Capped stdout/stderr buffers of one execution."""

    def __init__(self, cap: int, on_output: OutputSink | None = None) -> None:
        self.cap = cap
        self.on_output = on_output
        self.kept = {1: bytearray(), 2: bytearray()}
        self.totals = {1: 0, 2: 0}
        self.overflowed: int | None = None
        """The fd whose output passed the cap first, if any."""

    def add(self, fd: int, data: bytes, *, counted: bool = True) -> bool:
        """Record `data` written to `fd` (1 or 2).

        Args:
            fd: 1 for stdout, 2 for stderr.
            data: the bytes written.
            counted: whether to add len(data) to the total (False when the guest counts).

        Returns:
            False once the stream has passed its cap (the caller stops the guest).
        """
        buf = self.kept[fd]
        if counted:
            self.totals[fd] += len(data)
        room = self.cap - len(buf)
        chunk = data[:room] if room < len(data) else data
        if chunk:
            buf += chunk
            self._deliver(fd, bytes(chunk))
        if self.totals[fd] > self.cap:
            self.overflow(fd, self.totals[fd])
            return False
        return True

    def overflow(self, fd: int, total: int) -> None:
        """Record that `fd` passed the cap after `total` bytes."""
        self.totals[fd] = max(self.totals[fd], total)
        if self.overflowed is None:
            self.overflowed = fd

    def set_total(self, fd: int, total: int) -> None:
        """Take the guest's own count of the bytes written to `fd`."""
        self.totals[fd] = max(self.totals[fd], total, len(self.kept[fd]))

    def _deliver(self, fd: int, chunk: bytes) -> None:
        if self.on_output is None:
            return
        try:
            self.on_output(STREAMS[fd], chunk)
        except Exception:
            # The caller's sink failing must not kill the guest call running on this thread.
            _log.exception("on_output callback failed")

    def result_fields(self) -> dict[str, object]:
        """Return the stdout/stderr fields of an ExecutionResult."""
        return {
            "stdout": bytes(self.kept[1]),
            "stderr": bytes(self.kept[2]),
            "stdout_truncated": self.totals[1] > len(self.kept[1]),
            "stderr_truncated": self.totals[2] > len(self.kept[2]),
            "stdout_total_bytes": max(self.totals[1], len(self.kept[1])),
            "stderr_total_bytes": max(self.totals[2], len(self.kept[2])),
        }

    def message(self) -> str:
        """Return the explanation of an output-limit ending."""
        fd = self.overflowed or 1
        return (
            f"output limit: {STREAMS[fd]} passed {self.cap} bytes "
            f"({self.totals[fd]} bytes written before the program was stopped)"
        )

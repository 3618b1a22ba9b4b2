"""Small helpers shared by the benchmark rows: timing loops and percentile summaries.

A row is a plain dict so it prints as a table and serializes as JSON unchanged:
{"group", "name", "n", "p50_ms", "p90_ms", "p99_ms", "ops_per_s", plus optional fields such as
"note", "mb", "seconds", "errors", "baseline" (the name of the row it is compared with)}.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Row", "cpu_seconds", "percentile", "summarize", "time_calls"]

Row = dict[str, Any]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time that process `pid` (this one by default) has used so far."""
    if pid is None:  # microseconds, where /proc counts 10 ms ticks
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` percentile (0..1) of `samples` by nearest rank."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarize(group: str, name: str, seconds: list[float], *, wall_s: float | None = None,
              **extra: Any) -> Row:
    """A row from per-call durations (seconds); ops/s from `wall_s` when calls overlapped."""
    total = wall_s if wall_s is not None else sum(seconds)
    row: Row = {
        "group": group,
        "name": name,
        "n": len(seconds),
        "p50_ms": percentile(seconds, 0.5) * 1e3,
        "p90_ms": percentile(seconds, 0.9) * 1e3,
        "p99_ms": percentile(seconds, 0.99) * 1e3,
        "mean_ms": statistics.fmean(seconds) * 1e3,
        "ops_per_s": len(seconds) / total if total > 0 else 0.0,
    }
    row.update(extra)
    return row


def unavailable(group: str, name: str, error: Exception) -> Row:
    """The row `name` when it could not be measured, saying why."""
    return {"group": group, "name": name, "n": 0, "note": f"unavailable: {error}"}


def time_calls(fn: Callable[[], object], n: int, *, setup: Callable[[], object] | None = None,
               warmup: int = 3) -> list[float]:
    """Durations of `n` sequential calls of `fn` (after `warmup` untimed ones)."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    samples = []
    for _ in range(n):
        if setup is not None:
            setup()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples

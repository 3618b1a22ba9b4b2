"""Prometheus metrics of the server and its pool, served on their own HTTP port.

Names follow Prometheus practice: `sandboxd_` prefix, base units, `_total` counters, and
explicit latency buckets from 100 µs to 10 s (execution latency is sub-millisecond on a hit).
Labels are bounded sets (status, kind, runtime); never an id.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    start_http_server,
)

__all__ = ["Metrics"]

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)


class Metrics:
    """All metrics of one server, in a registry of its own (several servers per test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's CPU, memory and descriptors, and its garbage collector's passes.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.executions = Counter(
            "sandboxd_executions_total", "Executions finished, by status and runtime.",
            ["status", "kind", "runtime"], registry=r,
        )
        self.execute_duration = Histogram(
            "sandboxd_execute_duration_seconds",
            "Time from a request's arrival to its result.",
            ["kind", "runtime"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.run_duration = Histogram(
            "sandboxd_run_duration_seconds", "Time spent running user code.",
            ["kind", "runtime"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.acquire_duration = Histogram(
            "sandboxd_acquire_duration_seconds", "Time to obtain an isolate (hit or miss).",
            ["kind", "runtime"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_duration = Histogram(
            "sandboxd_queue_duration_seconds", "Time waiting for an execution slot.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "sandboxd_requests_rejected_total", "Requests refused, by reason.",
            ["reason"], registry=r,
        )
        self.running = Gauge(
            "sandboxd_executions_running", "Executions running now.", registry=r,
        )
        self.abandoned = Gauge(
            "sandboxd_executions_abandoned",
            "Executions answered TIMEOUT while blocked in a host call, still blocked.",
            registry=r,
        )
        self.pool_hits = Counter(
            "sandboxd_pool_hits_total", "Isolates handed out warm.", ["runtime"], registry=r,
        )
        self.pool_misses = Counter(
            "sandboxd_pool_misses_total", "Isolates created on the request's path.",
            ["runtime"], registry=r,
        )
        self.pool_size = Gauge(
            "sandboxd_pool_size", "Warm isolates available.", ["runtime"], registry=r,
        )
        self.pool_refill = Histogram(
            "sandboxd_pool_refill_duration_seconds", "Time to create a warm isolate.",
            ["runtime"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.pool_refill_failures = Counter(
            "sandboxd_pool_refill_failures_total", "Failed background creations.",
            ["runtime"], registry=r,
        )

        # Labelled children by metric and label values (bounded sets, never an id): `labels()`
        # validates and locks on every call, about 25 µs of a call after an idle pause, and an
        # execution makes six. Two threads racing here get the same child from `labels()`.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def finished(
        self, status: str, kind: str, runtime: str, *, total_s: float, run_s: float,
        acquire_s: float,
    ) -> None:
        """Count one finished execution and observe where its time went."""
        self._child(self.executions, status, kind, runtime).inc()
        self._child(self.execute_duration, kind, runtime).observe(total_s)
        self._child(self.run_duration, kind, runtime).observe(run_s)
        self._child(self.acquire_duration, kind, runtime).observe(acquire_s)

    # PoolObserver (isolates.pool) -----------------------------------------------------------

    def acquired(self, key: str, hit: bool) -> None:
        """Count a pool hit or miss."""
        self._child(self.pool_hits if hit else self.pool_misses, key).inc()

    def refilled(self, key: str, seconds: float) -> None:
        """Record a background creation."""
        self._child(self.pool_refill, key).observe(seconds)

    def refill_failed(self, key: str) -> None:
        """Count a failed background creation."""
        self._child(self.pool_refill_failures, key).inc()

    def serve(self, host: str, port: int) -> tuple[int, Any]:
        """Serve /metrics over HTTP from a daemon thread; returns (bound port, server)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port, server

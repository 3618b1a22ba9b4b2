"""The Prometheus endpoint exposes execution and pool metrics."""

from __future__ import annotations

import urllib.request

from sandboxd import Client
from tests.conftest import RunningServer


def test_metrics_endpoint_counts_executions_and_pool(server: RunningServer) -> None:
    with Client(server.target) as client:
        assert client.run_code("print(1)").ok
    port = server.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'sandboxd_executions_total{kind="wasm",runtime="python",status="ok"}' in text
    assert "sandboxd_execute_duration_seconds_bucket" in text
    assert 'le="0.0001"' in text
    assert "sandboxd_pool_size" in text
    assert "sandboxd_pool_refill_duration_seconds" in text
    assert "sandboxd_pool_hits_total" in text or "sandboxd_pool_misses_total" in text

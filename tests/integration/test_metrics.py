"""The Prometheus endpoint exposes execution and pool metrics."""

from __future__ import annotations

import concurrent.futures
import logging
import re

from sandboxd import Client
from tests.conftest import RunningServer, wait_for


def test_metrics_endpoint_counts_executions_and_pool(server: RunningServer) -> None:
    with Client(server.target) as client:
        assert client.run_code("print(1)").ok
    counted = 'sandboxd_executions_total{kind="wasm",runtime="python",status="ok"}'
    # The execution is counted just after the response has left.
    wait_for(lambda: counted in server.metrics_text())
    text = server.metrics_text()
    assert counted in text
    assert "sandboxd_execute_duration_seconds_bucket" in text
    assert 'le="0.0001"' in text
    assert "sandboxd_pool_size" in text
    assert "sandboxd_pool_refill_duration_seconds" in text
    assert "sandboxd_pool_hits_total" in text or "sandboxd_pool_misses_total" in text


class _Lines(logging.Handler):
    """Collects the messages logged to one logger."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_each_execution_logs_one_line_with_where_and_how_it_ran(server: RunningServer) -> None:
    logger = logging.getLogger("sandboxd.execution")
    collected = _Lines()
    logger.addHandler(collected)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with Client(server.target) as client:
            wasm = client.run_code("print(1)", isolate="wasm")
            jail = client.run_code("import sys; sys.exit(3)", isolate="jail")
        # The line is written just after the response has left.
        wait_for(lambda: all(any(e.execution_id in line for line in collected.lines)
                             for e in (wasm, jail)))
    finally:
        logger.removeHandler(collected)
        logger.setLevel(previous_level)
    wasm_lines = [line for line in collected.lines if wasm.execution_id in line]
    jail_lines = [line for line in collected.lines if jail.execution_id in line]
    assert len(wasm_lines) == 1 and len(jail_lines) == 1, collected.lines
    assert "kind=wasm runtime=python status=ok exit=0" in wasm_lines[0]
    assert "kind=jail runtime=native status=error exit=3" in jail_lines[0]
    assert f"total_us={jail.timings.total_us}" in jail_lines[0]
    assert f"run_us={jail.timings.run_us}" in jail_lines[0]


def _running(server: RunningServer) -> float:
    text = server.metrics_text()
    match = re.search(r"^sandboxd_executions_running (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_running_executions_are_counted_while_they_run(server: RunningServer) -> None:
    with Client(server.target) as client:
        assert client.run_code("print(1)").ok
        assert _running(server) == 0
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(client.run_code, "import time; time.sleep(2)")
            wait_for(lambda: _running(server) == 1)
            assert _running(server) == 1
            assert slow.result().ok
    assert _running(server) == 0


def test_pool_size_gauge_reads_the_pool(server: RunningServer) -> None:
    pool = server.server.pool
    assert pool is not None and pool.wait_warm(30)
    text = server.metrics_text()
    for key, size in pool.sizes().items():
        assert f'sandboxd_pool_size{{runtime="{key}"}} {float(size)}' in text, text
        assert size == pool.targets()[key]

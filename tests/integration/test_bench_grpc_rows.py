"""The bench's Execute rows say how many of their calls found a warm isolate."""

from __future__ import annotations

from pathlib import Path

from bench.grpc_rows import _bursts, _sequential
from tests.conftest import private_data_dir, start_server


def test_paced_calls_are_counted_as_pool_hits(target: str) -> None:
    calls = _sequential(target, 3, "print(1)", "python", "wasm", pause_s=0.2)
    row = calls.summarize("paced")
    assert row["n"] == 3
    assert row["note"] == "3 of 3 from the warm pool"


def test_calls_without_a_pool_are_counted_as_misses(data_dir: Path, tmp_path: Path) -> None:
    server = start_server(private_data_dir(data_dir, tmp_path), pool_wasm_python=0,
                          enable_jail=False)
    try:
        calls = _bursts(server.target, 2, "wasm", quiet_s=0.0)
    finally:
        server.stop()
    assert len(calls.seconds) == 6  # calls 2-4 of each burst
    assert calls.summarize("bursts")["note"] == "0 of 6 from the warm pool"

"""Baselines measured in the same run as everything they are compared with."""

from __future__ import annotations

from pathlib import Path

from bench.grpc_rows import python_subprocess_baseline
from bench.stats import Row


def rows(data_dir: Path, quick: bool = False) -> list[Row]:
    """The `python3 -c` subprocess baseline (the peer-wasm baseline lives in wasm_rows)."""
    return [python_subprocess_baseline(quick)]

"""`sandboxd bench` runs groups, prints a table and writes JSON and a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_baseline_group_writes_json_and_plot(tmp_path: Path, data_dir: Path) -> None:
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "-m", "sandboxd.cli", "bench", "--quick", "--only", "baseline",
         "--data-dir", str(data_dir), "--json", str(out), "--plot", str(plot)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "python3 -c 'print(1)' subprocess" in done.stdout
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["n"] > 0
    assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert report["machine"]["cpus"] >= 1
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bench_rejects_unknown_groups(data_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sandboxd.cli", "bench", "--only", "nope",
                           "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "unknown groups: nope" in done.stdout


def test_fresh_throughput_row_reports_cpu_and_the_ceiling_it_allows(data_dir: Path) -> None:
    import os

    from bench.wasm_rows import fresh_throughput
    from isolates.wasm import JavaScriptFactory

    row = fresh_throughput(JavaScriptFactory(data_dir, build=False), n=20)
    assert row["n"] == 20
    assert row["cpu_ms"] > 0
    assert row["ceiling_per_s"] == (os.cpu_count() or 1) / row["cpu_ms"] * 1e3
    assert f"at most {row['ceiling_per_s']:.0f}/s" in row["note"]

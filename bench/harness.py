"""`sandboxd bench`: run every benchmark group in one process run and print one table.

Each group is a module of bench/ exposing `rows(data_dir, quick) -> list[Row]`. Baselines are
measured in the same run as what they are compared with, and the comparisons are reported as
ratios: absolute times on a shared machine are noise, ratios within one run are not.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.grpc_rows import (
    JAIL_BURSTS,
    JAIL_BURSTS_LABEL,
    JAIL_WARM,
    JAIL_WARM_LABEL,
    WASM_C1,
    WASM_C1_LABEL,
    around_name,
)
from bench.stats import Row

__all__ = ["GROUPS", "run", "run_cli"]

GROUPS = ("baseline", "wasm", "grpc", "jail", "artifacts", "facets")
"""Groups in run order; each is the module bench/<group>_rows.py."""

RATIOS = (
    # (label, row measured, baseline row, metric): the baseline measured around the row.
    ("gRPC wasm python c=1 vs python3 -c", WASM_C1, around_name(WASM_C1_LABEL), "p50_ms"),
    # The warm jail row is paced 0.1 s (a warm jail per call, after an idle pause), against
    # `python3 -c` back to back and started after the same pause; the burst row runs warm jails
    # back to back, against `python3 -c` back to back.
    ("gRPC jail python c=1, paced 0.1 s, vs python3 -c back to back",
     JAIL_WARM, around_name(JAIL_WARM_LABEL), "p50_ms"),
    ("gRPC jail python c=1 vs python3 -c, both paced 0.1 s",
     JAIL_WARM, around_name(JAIL_WARM_LABEL, 0.1), "p50_ms"),
    ("gRPC jail python c=1 vs python3 -c, both back to back (calls 2-4 of bursts)",
     JAIL_BURSTS, around_name(JAIL_BURSTS_LABEL), "p50_ms"),
)


def run(data_dir: Path, groups: list[str], quick: bool, console: Console) -> list[Row]:
    """Run `groups` and return every row, ratio rows included."""
    results: list[Row] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        for group in groups:
            task = progress.add_task(f"benchmark group {group}", total=None)
            started = time.perf_counter()
            try:
                module = importlib.import_module(f"bench.{group}_rows")
                group_rows: Callable[..., list[Row]] = module.rows
                produced = group_rows(data_dir, quick)
            except Exception as exc:  # one broken group must not lose the others' numbers
                produced = [{"group": group, "name": f"{group} (failed)", "n": 0,
                             "note": f"{type(exc).__name__}: {exc}"}]
            results.extend(produced)
            progress.remove_task(task)
            console.log(f"{group}: {len(produced)} rows in {time.perf_counter() - started:.1f}s")
    results.extend(_ratios(results))
    return results


def _ratios(results: list[Row]) -> list[Row]:
    by_name = {row["name"]: row for row in results}
    out: list[Row] = []
    for label, measured, baseline, metric in RATIOS:
        a, b = by_name.get(measured), by_name.get(baseline)
        if a and b and a.get(metric) and b.get(metric):
            out.append(_ratio_row(label, a["n"], metric, a[metric], b[metric]))
    for row in results:
        base = row.get("baseline")
        if base and base in by_name:
            metric = "p50_ms" if "p50_ms" in row else "seconds"
            a, b = row.get(metric), by_name[base].get(metric)
            if a and b:
                out.append(_ratio_row(f"{row['name']} vs {base}", row["n"], metric, a, b))
    return out


def _ratio_row(label: str, n: int, metric: str, measured: float, baseline: float) -> Row:
    """`ratio` is baseline / measured: above 1 the measured row is that many times faster."""
    ratio = baseline / measured
    verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
    return {"group": "ratio", "name": label, "n": n, "ratio": ratio,
            "note": f"{verdict} ({metric} {measured:.3f} vs {baseline:.3f})"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(results: list[Row], console: Console) -> None:
    """Print the rows as one table."""
    table = Table(title="sandboxd bench", show_lines=False)
    for column in ("group", "name", "n", "p50 ms", "p90 ms", "p99 ms", "ops/s", "other"):
        table.add_column(column, justify="left" if column in ("group", "name", "other")
                         else "right")
    for row in results:
        other = []
        for key in ("seconds", "mb", "bytes", "errors", "rejected", "target"):
            if key in row:
                unit = {"seconds": " s", "mb": " MB", "bytes": " bytes", "ratio": "x",
                        "target": ""}.get(key, f" {key}")
                prefix = "target " if key == "target" else ""
                other.append(f"{prefix}{_fmt(row[key], 2 if key != 'seconds' else 3)}{unit}")
        if row.get("note"):
            other.append(str(row["note"]))
        table.add_row(row["group"], row["name"], _fmt(row.get("n")), _fmt(row.get("p50_ms")),
                      _fmt(row.get("p90_ms")), _fmt(row.get("p99_ms")),
                      _fmt(row.get("ops_per_s"), 0), "; ".join(other))
    console.print(table)


def plot(results: list[Row], path: Path) -> None:
    """A horizontal bar chart of p50 latencies (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.get("p50_ms")]
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(timed) + 1.5))
    ax.barh([f"{r['group']}: {r['name']}" for r in timed], [r["p50_ms"] for r in timed])
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.invert_yaxis()
    ax.set_title("sandboxd bench")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_cli(args: argparse.Namespace) -> int:
    """The `sandboxd bench` command."""
    # Wide enough for the row names even when stdout is not a terminal (CI logs, pipes).
    console = Console(width=max(Console().width, 170))
    data_dir = (args.data_dir or Path(os.environ.get("SANDBOXD_DATA_DIR", ".sandboxd"))).resolve()
    groups = args.only or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        console.print(f"[red]unknown groups: {', '.join(unknown)}; choose from "
                      f"{', '.join(GROUPS)}")
        return 2
    results = run(data_dir, [g for g in GROUPS if g in groups], args.quick, console)
    render(results, console)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "quick": args.quick,
            "rows": results,
        }, indent=2))
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        console.print(f"wrote {args.plot}")
    return 0

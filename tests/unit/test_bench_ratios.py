"""The bench's derived rows compare a gRPC c=1 row with what was measured around it."""

from __future__ import annotations

from bench.grpc_rows import JAIL_BURSTS, above_floor, around_name
from bench.harness import _ratios
from bench.stats import Row


def _row(group: str, name: str, p50_ms: float) -> Row:
    return {"group": group, "name": name, "n": 10, "p50_ms": p50_ms}


def test_grpc_rows_are_compared_with_the_baseline_around_them() -> None:
    results = [
        _row("baseline", "python3 -c 'print(1)' subprocess", 14.0),
        _row("grpc", "Execute print(1) jail python (warm), c=1", 5.0),
        _row("baseline", around_name("gRPC jail python c=1"), 20.0),
        _row("baseline", around_name("gRPC jail python c=1", 0.1), 22.5),
        _row("grpc", "Execute print(1) wasm python, c=1", 4.0),
        _row("baseline", around_name("gRPC wasm python c=1"), 16.0),
        _row("grpc", JAIL_BURSTS, 2.0),
        _row("baseline", around_name("gRPC jail python bursts c=1"), 19.0),
    ]
    ratios = {row["name"]: row["ratio"] for row in _ratios(results)}
    assert ratios == {
        "gRPC jail python c=1, paced 0.1 s, vs python3 -c back to back": 4.0,
        "gRPC jail python c=1 vs python3 -c, both paced 0.1 s": 4.5,
        "gRPC jail python c=1 vs python3 -c, both back to back (calls 2-4 of bursts)": 9.5,
        "gRPC wasm python c=1 vs python3 -c": 4.0,
    }
    assert around_name("gRPC jail python c=1", 0.1) == (
        "python3 -c 'print(1)' subprocess, paced 0.1 s, around gRPC jail python c=1")


def test_no_ratio_without_its_baseline() -> None:
    results = [_row("grpc", "Execute print(1) jail python (warm), c=1", 5.0),
               _row("baseline", "python3 -c 'print(1)' subprocess", 14.0)]
    assert _ratios(results) == []


def test_the_warm_jail_row_is_also_read_above_the_grpc_floor() -> None:
    row = _row("grpc", "Execute print(1) jail python (warm), c=1", 5.25)
    derived = above_floor(row, _row("grpc", "gRPC floor around it", 2.5))
    assert derived["name"] == "Execute print(1) jail python (warm), c=1, above the gRPC floor"
    assert derived["added_ms"] == 2.75
    assert derived["note"] == "+2.75 ms (p50 5.25 - 2.50 ms)"

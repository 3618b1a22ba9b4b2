"""The checked-in stubs under sandboxd/v1/ must match what `make proto` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    # In a process of its own: protoc talks to its plugins with select(), which aborts the
    # whole process once descriptor numbers pass 1024, as they do in a long test session.
    subprocess.run([sys.executable, str(REPO / "scripts/gen_protos.py"), str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    fresh = {p.name: p.read_text() for p in (tmp_path / "sandboxd/v1").iterdir() if p.is_file()}
    checked_in = {p.name: p.read_text() for p in (REPO / "sandboxd/v1").iterdir()
                  if p.is_file() and p.suffix in (".py", ".pyi")}
    stale = sorted(name for name in fresh if checked_in.get(name) != fresh[name])
    missing = sorted(set(fresh) - set(checked_in))
    assert not stale, f"stale stubs, run `make proto`: {stale}"
    assert not missing, f"stubs not checked in, run `make proto`: {missing}"
    extra = sorted(set(checked_in) - set(fresh))
    assert not extra, f"stubs without a .proto source: {extra}"

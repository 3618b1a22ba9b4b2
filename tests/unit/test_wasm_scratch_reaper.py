"""Scratch space left by a stopped server is reclaimed; a live server's is never touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from isolates.wasm.scratch import instance_scratch_root, reap_stale_scratch

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from isolates.wasm.scratch import instance_scratch_root\n"
    "root = instance_scratch_root(Path(sys.argv[1]))\n"
    "(root / 'iso').mkdir()\n"
    "print(root, flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def _owned_by_child(data_dir: Path, seconds: float) -> tuple[subprocess.Popen[str], Path]:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_reaper_removes_dead_instances_and_debris_only(tmp_path: Path) -> None:
    dead, dead_root = _owned_by_child(tmp_path, 0)
    dead.wait()
    live, live_root = _owned_by_child(tmp_path, 60)
    try:
        mine = instance_scratch_root(tmp_path)
        (tmp_path / "scratch" / "0123abcd").mkdir()  # debris of an older layout
        assert reap_stale_scratch(tmp_path) == 2
        assert not dead_root.exists()
        assert not (tmp_path / "scratch" / "0123abcd").exists()
        assert (live_root / "iso").is_dir()
        assert mine.is_dir()
    finally:
        live.kill()
        live.wait()
    assert reap_stale_scratch(tmp_path) == 1
    assert not live_root.exists()
    assert mine.is_dir()

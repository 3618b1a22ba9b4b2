"""Scratch space left by a stopped server is reclaimed; a live server's is never touched."""

from __future__ import annotations

import os
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
    dead, dead_root = _owned_by_child(tmp_path, 60)
    dead.kill()  # a crash: nothing of the process cleans up
    dead.wait()
    assert os.path.ismount(dead_root)  # the tmpfs outlives it
    live, live_root = _owned_by_child(tmp_path, 60)
    try:
        mine = instance_scratch_root(tmp_path)
        (tmp_path / "scratch" / "0123abcd").mkdir()  # debris of an older layout
        assert reap_stale_scratch(tmp_path) == 2
        assert not os.path.ismount(dead_root) and not dead_root.exists()
        assert not (tmp_path / "scratch" / "0123abcd").exists()
        assert (live_root / "iso").is_dir()
        assert mine.is_dir()
    finally:
        live.kill()
        live.wait()
    assert reap_stale_scratch(tmp_path) == 1
    assert not live_root.exists()
    assert mine.is_dir()


def test_a_server_process_scratch_is_a_capped_tmpfs_gone_when_it_exits(tmp_path: Path) -> None:
    """As root, what WASM guests write lands in a tmpfs of the configured size, not on disk."""
    size = 8 * 1024 * 1024
    probe = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from isolates.wasm.scratch import instance_scratch_root\n"
        f"root = instance_scratch_root(Path(sys.argv[1]), {size})\n"
        "st = os.statvfs(root)\n"
        "print(root, os.path.ismount(root), st.f_blocks * st.f_frsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                          text=True, check=True)
    root, mounted, capacity = done.stdout.split()
    assert mounted == "True" and int(capacity) == size
    assert not Path(root).exists()  # unmounted and removed at a normal exit

"""Run a test's body in a process of its own.

Leak tests compare process-wide counts (open descriptors, child processes) before and after;
in the shared test process, servers started by other tests open and close descriptors at
the same time and blur those counts. `run_alone(request)` re-runs the calling test in a fresh
Python process and returns True there (run the body) and False in the parent (whose job was
only to check the child passed).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_FLAG = "SANDBOXD_TEST_RUNNING_ALONE"


def run_alone(request: pytest.FixtureRequest) -> bool:
    """True in the child process; in the parent, run the child and fail if it fails."""
    if os.environ.get(_FLAG) == request.node.nodeid:
        return True
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        env={**os.environ, _FLAG: request.node.nodeid}, capture_output=True, text=True,
        timeout=900, cwd=request.config.rootpath,
    )
    if done.returncode != 0:
        pytest.fail(f"{request.node.nodeid} failed in its own process:\n{done.stdout[-6000:]}"
                    f"\n{done.stderr[-2000:]}", pytrace=False)
    return False

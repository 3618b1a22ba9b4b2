"""The expectations of tests/python3_c.py are what `python3 -c` itself does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import python3_c


@python3_c.all_cases
def test_case_matches_python3_c(tmp_path: Path, case: python3_c.Case) -> None:
    for path, content in case.files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    # The environment the isolates give a program: the request's variables and a PATH.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **case.env}
    done = subprocess.run([sys.executable, "-c", case.code], cwd=tmp_path, capture_output=True,
                          timeout=60, check=False, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (case.exit_code, case.stdout, b"")
    assert {path: (tmp_path / path).read_bytes() for path in case.returned} == case.returned

"""SIGTERM drains: running calls finish, new ones are refused, the process exits cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sandboxd import Client, Execution


def test_sigterm_lets_running_calls_finish(data_dir: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--port", "0", "--metrics-port", "-1",
         "--git-port", "-1", "--data-dir", str(data_dir), "--no-jail",
         "--pool-wasm-python", "1", "--pool-wasm-javascript", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"serving on \S+:(\d+)", process.stdout.readline())
        assert match, process.stderr.read() if process.stderr else ""
        target = f"127.0.0.1:{match.group(1)}"
        results: list[Execution] = []

        def slow_call() -> None:
            with Client(target) as client:
                results.append(client.run_code(
                    "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
                    "print('finished')"))

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        assert results and results[0].stdout == "finished\n"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

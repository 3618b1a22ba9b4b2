"""The `sandboxd` command line against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from sandboxd import Client
from tests.conftest import private_data_dir


def sandboxd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxd.cli", *args], capture_output=True,
                          text=True, input=stdin, timeout=120)


def test_version_and_help() -> None:
    version = sandboxd("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("sandboxd ")
    for command in ("serve", "run", "bench", "health"):
        helped = sandboxd(command, "--help")
        assert helped.returncode == 0, helped.stderr
        assert "usage: sandboxd " + command in helped.stdout


def test_run_prints_and_exits_with_the_program_status(target: str) -> None:
    done = sandboxd("run", "--target", target, "-c", "print(6*7)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    failed = sandboxd("run", "--target", target, "-c", "import sys; sys.exit(7)")
    assert failed.returncode == 7
    assert failed.stderr == ""  # the program's own exit, as quiet as under `python -c`


def test_run_explains_only_what_the_program_did_not_say(target: str) -> None:
    raised = sandboxd("run", "--target", target, "-c", "raise ValueError('boom')")
    assert raised.returncode == 1
    assert raised.stderr.count("ValueError: boom") == 1  # the traceback, not repeated
    limited = sandboxd("run", "--target", target, "--timeout", "0.2", "-c", "while True: pass")
    assert limited.stderr.strip() == "sandboxd run: timeout: wall-time limit of 0.2 s reached"


def test_run_reads_the_program_from_standard_input(target: str) -> None:
    done = sandboxd("run", "--target", target, "-", stdin="print(6*7)\n")
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr
    both = sandboxd("run", "--target", target, "--stdin", "-", stdin="print(1)\n")
    assert both.returncode == 2 and "cannot also be --stdin" in both.stderr


def test_run_refuses_a_program_file_that_is_not_text(target: str, tmp_path: Path) -> None:
    program = tmp_path / "latin1.py"
    program.write_bytes(b"print('caf\xe9')\n")
    done = sandboxd("run", "--target", target, str(program))
    assert done.returncode == 2
    assert done.stderr == f"sandboxd run: {program} is not UTF-8 text (byte 0xe9 at offset 10)\n"


def test_run_command_line_is_split_like_a_shell(target: str) -> None:
    done = sandboxd("run", "--target", target, "--lang", "command", "-c", "echo 'a  b' c")
    assert (done.returncode, done.stdout) == (0, "a  b c\n"), done.stderr


def test_run_javascript(target: str) -> None:
    done = sandboxd("run", "--target", target, "--lang", "javascript", "-c", "console.log(6*7)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"


def test_run_file_json_and_outputs(target: str, tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text("open('result.txt', 'w').write('done')\nprint('hi')\n")
    done = sandboxd("run", "--target", target, "--json", "--output", "result.txt",
                    "--output-dir", str(tmp_path / "out"), str(program))
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["status"] == "ok"
    assert payload["stdout"] == "hi\n"
    assert (tmp_path / "out" / "result.txt").read_text() == "done"


def test_run_timeout_exit_status(target: str) -> None:
    done = sandboxd("run", "--target", target, "--timeout", "0.2", "-c", "while True: pass")
    assert done.returncode == 124
    assert "timeout" in done.stderr


def test_run_reports_invalid_fields(target: str) -> None:
    done = sandboxd("run", "--target", target, "--file-in", "../x=/etc/hostname", "-c", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("sandboxd run: files[0].path ")
    assert done.stderr.count("files[0].path") == 1


def test_health(target: str) -> None:
    done = sandboxd("health", "--target", target)
    assert done.returncode == 0
    assert done.stdout.strip() == "SERVING"


def test_unreachable_server_is_a_clear_error() -> None:
    done = sandboxd("health", "--target", "127.0.0.1:1")
    assert done.returncode == 1
    assert "127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_on_a_busy_port_is_a_clear_error(target: str, data_dir: Path,
                                               tmp_path: Path) -> None:
    port = target.rsplit(":", 1)[1]
    own = private_data_dir(data_dir, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--port", port, "--metrics-port", "-1",
         "--git-port", "-1", "--no-jail", "--data-dir", str(own)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_rejects_bad_settings_by_name(tmp_path: Path) -> None:
    done = sandboxd("serve", "--port", "99999", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "port:" in done.stderr and "65535" in done.stderr


def test_serve_rejects_a_bad_environment_setting_by_name(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "SANDBOXD_POOL_JAIL": "lots"},
    )
    assert done.returncode == 2
    assert "pool_jail:" in done.stderr and "Traceback" not in done.stderr


def _gc_passes(metrics_port: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    match = re.search(r'^python_gc_collections_total\{generation="0"\} (\S+)$', text, re.M)
    assert match, "the metrics lack the collector's passes"
    assert re.search(r"^process_resident_memory_bytes \S+$", text, re.M)
    return float(match.group(1))


def test_serve_turns_the_garbage_collector_back_on_after_start_up(data_dir: Path,
                                                                   tmp_path: Path) -> None:
    own = private_data_dir(data_dir, tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli", "serve", "--port", "0", "--metrics-port", "0",
         "--git-port", "-1", "--no-jail", "--data-dir", str(own), "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        found = re.search(r"serving on \S+:(\d+), metrics on :(\d+)", line)
        assert found, line
        port, metrics_port = found.groups()
        before = _gc_passes(metrics_port)
        # Executions allocate: a collector left off (start-up turns it off) would never run.
        with Client(f"127.0.0.1:{port}") as client:
            # About one pass of the youngest generation per 150 executions.
            for _ in range(1000):
                assert client.run_code("print(1)").stdout == "1\n"
        assert _gc_passes(metrics_port) > before
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_run_stops_quietly_when_its_reader_goes(target: str) -> None:
    # `sandboxd run --json ... | head`: the reader closes the pipe while the result is printed.
    process = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli", "run", "--target", target, "--json",
         "--lang", "shell", "-c", "yes | head -c 1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(10).startswith(b"{")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 128 + 13  # as a process killed by SIGPIPE
    assert stderr == ""


def test_run_with_a_cpu_time_limit(target: str) -> None:
    done = sandboxd("run", "--target", target, "--cpu-time", "0.3", "-c", "while True: pass")
    assert done.returncode == 128 + 9, done.stderr  # as a shell reports a SIGKILL
    assert done.stderr == "sandboxd run: cpu_limit: CPU-time limit of 0.3 s reached\n"


def test_run_input_files_keep_their_permission_bits(target: str, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    done = sandboxd("run", "--target", target, "--lang", "command", "--file-in",
                    f"bin/run.sh={script}", "-c", "./bin/run.sh")
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr


def test_run_output_files_keep_their_execute_bit(target: str, tmp_path: Path) -> None:
    done = sandboxd("run", "--target", target, "--lang", "shell", "--output", "tool.sh",
                    "--output", "data.txt", "--output-dir", str(tmp_path), "-c",
                    "echo 'echo hi' > tool.sh && chmod 755 tool.sh && echo 1 > data.txt")
    assert done.returncode == 0, done.stderr
    assert os.access(tmp_path / "tool.sh", os.X_OK)
    assert not os.access(tmp_path / "data.txt", os.X_OK)


def test_run_memory_takes_a_size_suffix(target: str) -> None:
    done = sandboxd("run", "--target", target, "--isolate", "jail", "--memory", "96M", "-c",
                    "x = bytearray(200 * 1024 * 1024)")
    assert f"memory limit of {96 * 1024**2} bytes reached" in done.stderr
    for bad in ("12X", "M", "1.5G", "²"):
        refused = sandboxd("run", "--target", target, "--memory", bad, "-c", "pass")
        assert refused.returncode == 2
        assert f"argument --memory: {bad!r} is not a size in bytes" in refused.stderr

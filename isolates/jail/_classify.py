"""Turn what is known about a finished jail execution into one unambiguous `Status`.

Evidence, strongest first: the caller's cancellation, the driver's own report (which process
ended how, which limit the driver enforced), the jail's cgroup OOM-kill counter, and nsjail's
log when the driver itself did not survive. Exit code 137 alone proves nothing: SIGKILL comes
from the OOM killer, the driver's wall limit, the CPU hard limit and teardown alike.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from isolates.base import Limits, Status, memory_message, seconds_text, wall_time_message

_NSJAIL_SIGNAL = re.compile(r"terminated with signal: [^(\n]*\((\d+)\)")


@dataclass(frozen=True)
class Verdict:
    """A status, the exit code to report and why."""

    status: Status
    exit_code: int
    message: str


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_description(exit_code: int) -> str:
    if exit_code < 0:
        return f"was killed by {_signal_name(-exit_code)}"
    return f"exited with code {exit_code}"


def _shell_code(exit_code: int) -> int:
    """Report death by signal N as 128+N, like a shell does."""
    return 128 - exit_code if exit_code < 0 else exit_code


def _log_signal(nsjail_log: str) -> int | None:
    match = _NSJAIL_SIGNAL.search(nsjail_log)
    return int(match.group(1)) if match else None


def classify(
    *,
    report: dict[str, Any] | None,
    limits: Limits,
    cancelled: bool,
    host_timeout: bool,
    oom_kills: int,
    nsjail_log: str,
) -> Verdict:
    """Decide the status of one execution.

    Args:
        report: the driver's RESULT frame, or None when none arrived.
        limits: the limits the execution ran under.
        cancelled: the caller cancelled the execution.
        host_timeout: the host's backstop deadline passed before the driver reported.
        oom_kills: processes the kernel OOM-killed in the jail's memory cgroup.
        nsjail_log: nsjail's log (consulted only when the driver left no report).

    Returns:
        The verdict.
    """
    if cancelled:
        return Verdict(Status.CANCELLED, -1, "execution cancelled by the caller")
    if report is None:
        if oom_kills:
            return Verdict(Status.MEMORY_LIMIT, 137,
                           memory_message(limits.memory_bytes))
        driver_signal = _log_signal(nsjail_log)
        if driver_signal == signal.SIGSYS:
            return Verdict(Status.SECURITY_VIOLATION, 128 + signal.SIGSYS,
                           "killed by the seccomp policy (forbidden system call)")
        if host_timeout:
            return Verdict(Status.TIMEOUT, 137, wall_time_message(limits.timeout_s))
        if driver_signal == signal.SIGKILL:
            # pid 1 ignores SIGKILL from inside its namespace and the host did not send one:
            # the kernel's OOM killer did, though its counter did not show it.
            return Verdict(Status.MEMORY_LIMIT, 137,
                           memory_message(limits.memory_bytes))
        return Verdict(Status.INTERNAL_ERROR, -1, "the jail ended without reporting a result")
    if report.get("setup_error"):
        return Verdict(Status.ERROR, -1, str(report["setup_error"]))
    exit_code = int(report.get("exit_code", -1))
    code = _shell_code(exit_code)
    killed_for = report.get("killed_for", "")
    if killed_for == "timeout":
        return Verdict(Status.TIMEOUT, code, wall_time_message(limits.timeout_s))
    if report.get("sigsys"):
        return Verdict(Status.SECURITY_VIOLATION, code,
                       "a process was killed by the seccomp policy (forbidden system call)")
    if oom_kills:
        return Verdict(Status.MEMORY_LIMIT, code,
                       f"{memory_message(limits.memory_bytes)} "
                       f"({oom_kills} process(es) killed)")
    if killed_for == "cpu" or exit_code == -signal.SIGXCPU or (
        limits.cpu_s is not None
        and exit_code == -signal.SIGKILL
        and float(report.get("cpu_s", 0.0)) >= limits.cpu_s
    ):
        return Verdict(Status.CPU_LIMIT, code, _cpu_time_message(limits))
    out_total = int(report.get("stdout_total", 0))
    err_total = int(report.get("stderr_total", 0))
    if max(out_total, err_total) > limits.output_bytes:
        return Verdict(Status.OUTPUT_LIMIT, code,
                       f"output exceeded {limits.output_bytes} bytes per stream "
                       f"(stdout {out_total}, stderr {err_total} bytes; the rest was dropped); "
                       f"the program {_exit_description(exit_code)}")
    if exit_code == 0:
        return Verdict(Status.OK, 0, "")
    return Verdict(Status.ERROR, code, f"the program {_exit_description(exit_code)}")


def _cpu_time_message(limits: Limits) -> str:
    if limits.cpu_s is None:  # killed by the kernel's own CPU rlimit, not a requested limit
        return "CPU-time limit reached"
    return f"CPU-time limit of {seconds_text(limits.cpu_s)} s reached"

"""ExecutionWorkers: work runs on daemon threads, and an abandoned thread is replaced."""

from __future__ import annotations

import threading

from executor.workers import ExecutionWorkers


def test_work_runs_and_reports_results_and_errors() -> None:
    workers = ExecutionWorkers(2)
    assert workers.submit(lambda: 6 * 7).result(timeout=5) == 42
    failing = workers.submit(lambda: 1 / 0)
    assert isinstance(failing.exception(timeout=5), ZeroDivisionError)
    workers.shutdown()


def test_an_abandoned_thread_is_replaced_and_not_waited_for() -> None:
    release = threading.Event()
    workers = ExecutionWorkers(1)
    stuck = workers.submit(release.wait)
    assert workers.abandon(stuck) == 1
    # The only worker is blocked, yet new work runs on the thread that replaces it.
    assert workers.submit(lambda: "ran").result(timeout=5) == "ran"
    workers.shutdown(wait=True)  # returns although the abandoned thread still waits
    assert not stuck.done()
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("execute"))
    release.set()
    assert stuck.result(timeout=5) is True
    assert workers.abandoned == 0


def test_work_submitted_after_shutdown_is_refused() -> None:
    workers = ExecutionWorkers(1)
    workers.shutdown()
    try:
        workers.submit(lambda: None)
    except RuntimeError as exc:
        assert "shut down" in str(exc)
    else:
        raise AssertionError("submit after shutdown was accepted")

"""The threads executions run on, which an execution stuck in a host call can be left behind on.

Wall-time limits stop guest code, not a host call the guest is blocked in: a Python isolate's
WASI poll is wasmtime's own (`select.select([], [], [], 1e9)` sleeps inside it), and no API
reaches into it. The executor then answers the call TIMEOUT and abandons the execution's thread
(`abandon`): the thread no longer counts as a worker, another one takes its place, and it ends
whenever the host call returns (its isolate is destroyed then). The threads are daemon threads:
`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, which would keep
a server with an abandoned thread from ever stopping.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

__all__ = ["ExecutionWorkers"]

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ExecutionWorkers(Executor):
    """Up to `size` working threads, plus one for each abandoned execution still blocked.

    Threads start when work arrives and no thread is idle; idle threads wait for more.
    """

    def __init__(self, size: int, *, name: str = "execute") -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Semaphore(0)
        self._threads: dict[threading.Thread, Future[Any] | None] = {}
        self._abandoned: set[Future[Any]] = set()
        self._shut_down = False

    @property
    def abandoned(self) -> int:
        """Executions abandoned and still blocked."""
        with self._lock:
            return len(self._abandoned)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run `fn(*args, **kwargs)` on a worker thread; the future gets its result."""
        future: Future[Any] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot run new work: the workers were shut down")
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and (
                len(self._threads) < self._size + len(self._abandoned)
            ):
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}-{len(self._threads)}")
                self._threads[thread] = None
                thread.start()
        return future

    def abandon(self, future: Future[Any]) -> int:
        """Stop counting the thread running `future` as a worker; return how many are abandoned.

        A replacement thread may start for the next work. When `future` completes after all,
        its thread is counted again.
        """
        with self._lock:
            if not future.done():
                self._abandoned.add(future)
        future.add_done_callback(self._returned)
        return self.abandoned

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; with `wait`, join every thread but the abandoned ones."""
        with self._lock:
            self._shut_down = True
            threads = list(self._threads)
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    work = self._queue.get_nowait()
                    if work is not None:
                        work[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if not wait:
            return
        for thread in threads:
            with self._lock:
                stuck = self._threads.get(thread) in self._abandoned
            if not stuck:
                thread.join()

    def _returned(self, future: Future[Any]) -> None:
        with self._lock:
            self._abandoned.discard(future)

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            work = self._queue.get()
            if work is None:
                break
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._threads[me] = future
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del work, future, fn, args, kwargs
            with self._lock:
                self._threads[me] = None
                if self._shut_down:
                    break
            self._idle.release()
        with self._lock:
            self._threads.pop(me, None)

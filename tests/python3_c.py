"""Programs whose output shows whether an isolate runs Python as `python3 -c` would.

Both Python isolates (WASM and JAIL) run each case of `CASES` and must print what `python3 -c`
prints; JAIL isolates also run `NATIVE_CASES`, which need threads, processes or an
interpreter command line (WASI has none of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class Case:
    """A program, the files it is given and returns, and what `python3 -c` makes of it."""

    code: str
    stdout: bytes
    files: dict[str, bytes] = field(default_factory=dict)
    returned: dict[str, bytes] = field(default_factory=dict)
    """Output files requested, with the content `python3 -c` leaves in them."""
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0


CASES = {
    # An isolate's own warm-up run before the request must not show.
    "starts-clean": Case(
        "import sys, __main__\n"
        "print(sys.argv, sys.path.count(''), sys.path[0] == '')\n"
        "print(sorted(k for k in vars(__main__) if not k.startswith('__')))\n",
        b"['-c'] 1 True\n['sys']\n",
    ),
    "imports-own-files": Case(
        "import helper\nprint(helper.ANSWER)\n", b"42\n", files={"helper.py": b"ANSWER = 42\n"},
    ),
    # PYTHONPATH's entries follow '' on sys.path, made absolute (the empty one: the directory).
    "pythonpath": Case(
        "import os, sys, mod_a, mod_b\n"
        "print(mod_a.X, mod_b.Y, sys.path[0], [os.path.relpath(p) for p in sys.path[1:4]])\n",
        b"1 2  ['lib', '.', 'src/pkgs']\n",
        files={"lib/mod_a.py": b"X = 1\n", "src/pkgs/mod_b.py": b"Y = 2\n"},
        env={"PYTHONPATH": "lib::src/pkgs"},
    ),
    # An uncaught exception goes to the hook the program installed, with its own frames only.
    "excepthook": Case(
        "import sys\n"
        "sys.excepthook = lambda t, e, tb: print('hooked', t.__name__, tb.tb_frame.f_code.co_name,"
        " tb.tb_next)\n"
        "raise ValueError('x')\n",
        b"hooked ValueError <module> None\n",
        exit_code=1,
    ),
    # pickle finds a function or class through its module, `__main__`.
    "pickles-top-level": Case(
        "import pickle\n"
        "def f(): return 42\n"
        "class C: pass\n"
        "print(pickle.loads(pickle.dumps(f))(), type(pickle.loads(pickle.dumps(C()))).__name__)\n",
        b"42 C\n",
    ),
    "exit-runs-atexit-and-flushes-open-files": Case(
        "import atexit\n"
        "atexit.register(print, 'atexit')\n"
        "f = open('out.txt', 'w')\n"
        "f.write('data')\n"
        "print('main')\n",
        b"main\natexit\n",
        returned={"out.txt": b"data"},
    ),
}

NATIVE_CASES = {
    # The interpreter's own command line, as `python3 -c` started it (WASI has none).
    "orig-argv": Case("import sys\nprint(sys.orig_argv[1:])\n",
                      b"['-c', 'import sys\\nprint(sys.orig_argv[1:])\\n']\n"),
    # As at the exit of `python3 -c`: non-daemon threads finish, then atexit callbacks run.
    "exit-waits-for-threads": Case(
        "import atexit, threading, time\n"
        "atexit.register(print, 'atexit')\n"
        "def work(): time.sleep(0.2); print('thread')\n"
        "threading.Thread(target=work).start()\n"
        "print('main')\n",
        b"main\nthread\natexit\n",
    ),
    # The pool's locks are POSIX semaphores in /dev/shm, and its workers run a function of
    # `__main__`, found by name.
    "multiprocessing-pool": Case(
        "import multiprocessing\n"
        "def square(x): return x * x\n"
        "with multiprocessing.Pool(2) as pool: print(pool.map(square, [1, 2, 3]))\n",
        b"[1, 4, 9]\n",
    ),
}


def _parametrize(named: dict[str, Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", list(named.values()), ids=list(named))


cases = _parametrize(CASES)
"""Parametrizes a test over `CASES` as its `case` argument."""
all_cases = _parametrize(CASES | NATIVE_CASES)
"""Parametrizes a test over `CASES` and `NATIVE_CASES`."""

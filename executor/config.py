"""Server settings: defaults, overridden by `SANDBOXD_*` environment variables, then by flags.

Every option has a default that serves one machine, so `sandboxd serve` needs no config file.
`Settings.from_env()` reads `SANDBOXD_<NAME>` for each field (a JSON list for `jail_preload`;
"-1", "none", "off" or an empty value disables an optional port). A plain pydantic model read by a
few lines of code, rather than pydantic-settings, keeps about 90 ms off server start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from executor.event_loop import EventLoopName

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX = "SANDBOXD_"
_JSON_FIELDS = frozenset({"jail_preload"})
_OPTIONAL_PORTS = frozenset({"metrics_port", "git_port"})
_OFF = frozenset({"", "-1", "none", "off"})


class Settings(BaseModel):
    """Configuration of one sandboxd node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one."""
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    """Port of the Prometheus /metrics HTTP endpoint; None disables it, 0 picks a free one."""
    git_port: int | None = Field(default=8470, ge=0, le=65535)
    """Port of the git smart-HTTP endpoint for artifact repos; None disables it."""
    public_host: str = ""
    """Host name used in clone URLs handed to clients; defaults to `host`."""
    data_dir: Path = Path(".sandboxd")
    """Where runtimes, artifacts, facets and scratch space live."""

    pool_wasm_python: int = Field(default=8, ge=0, le=1024)
    """Warm WebAssembly Python isolates to keep."""
    pool_wasm_javascript: int = Field(default=4, ge=0, le=1024)
    """Warm WebAssembly JavaScript isolates to keep."""
    pool_jail: int = Field(default=2, ge=0, le=256)
    """Warm jails to keep (about 10 MB each)."""
    pool_idle_ttl_s: float = Field(default=300.0, gt=0)
    """Warm isolates idle longer than this are recycled."""
    pool_refill_defer_s: float = Field(default=0.02, ge=0, le=10)
    """After a pool hit, the refill waits this long at most for the execution to end, so that
    creating the next isolate does not compete with it for CPU; 0 refills at once."""
    enable_jail: bool = True
    """Serve JAIL isolates; when the host cannot provide cgroups, start without them."""
    wasm_scratch_bytes: int = Field(default=1024**3, ge=0)
    """Size of the tmpfs holding every WASM execution's scratch directory when running as root
    (what guests write goes there, never to the disk); 0 keeps scratch on the data directory's
    file system, uncapped."""
    jail_preload: tuple[str, ...] = ()
    """Modules every warm jail imports in advance (e.g. `numpy`): free on first use in the code,
    paid by every jail at start-up and in memory. JSON list in the environment."""

    max_concurrency: int = Field(default=0, ge=0, le=4096)
    """Executions running at once; 0 means two per CPU core."""
    max_queue: int = Field(default=256, ge=0, le=100_000)
    """Executions waiting for a slot; beyond this, calls get RESOURCE_EXHAUSTED."""

    default_timeout_s: float = Field(default=10.0, gt=0)
    max_timeout_s: float = Field(default=300.0, gt=0)
    default_memory_bytes: int = Field(default=256 * 1024**2, gt=0)
    max_memory_bytes: int = Field(default=2 * 1024**3, gt=0)
    default_output_bytes: int = Field(default=1024**2, gt=0)
    max_output_bytes: int = Field(default=16 * 1024**2, gt=0)
    max_code_bytes: int = Field(default=1024**2, gt=0)
    """Largest `code` accepted."""
    max_module_bytes: int = Field(default=64 * 1024**2, gt=0)
    """Largest wasm module accepted."""
    max_request_bytes: int = Field(default=128 * 1024**2, gt=0)
    """Largest request message the server accepts at all."""
    max_files: int = Field(default=1000, ge=0)
    max_files_bytes: int = Field(default=64 * 1024**2, gt=0)
    """Total size of input files of one request."""
    max_stdin_bytes: int = Field(default=16 * 1024**2, ge=0)
    max_env_vars: int = Field(default=256, ge=0)

    grace_period_s: float = Field(default=10.0, ge=0)
    """On SIGTERM, running executions get this long to finish."""
    event_loop: EventLoopName = "uvloop"
    """The server's event loop: "uvloop" (compiled, faster per call) or "asyncio" (the
    standard library's); see executor/event_loop.py."""

    @property
    def concurrency(self) -> int:
        """Executions allowed to run at once."""
        return self.max_concurrency or 2 * (os.cpu_count() or 1)

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then `SANDBOXD_<NAME>` variables of `environ`, then `overrides`.

        Raises pydantic.ValidationError naming the field when a value is out of range; a
        `jail_preload` that is not JSON is reported the same way.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name in _JSON_FIELDS:
                try:
                    values[name] = json.loads(raw)
                except json.JSONDecodeError:
                    values[name] = raw  # validation names the field and the expected type
            elif name in _OPTIONAL_PORTS and raw.strip().lower() in _OFF:
                values[name] = None
            else:
                values[name] = raw
        values.update(overrides or {})
        return cls.model_validate(values)

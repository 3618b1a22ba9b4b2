"""Server settings, read from `SANDBOXD_*` environment variables (pydantic-settings).

Every option has a default that serves one machine, so `sandboxd serve` needs no config file.
The CLI's flags override the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Configuration of one sandboxd node."""

    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="ignore")

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
    enable_jail: bool = True
    """Serve JAIL isolates; when the host cannot provide cgroups, start without them."""
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

    @property
    def concurrency(self) -> int:
        """Executions allowed to run at once."""
        return self.max_concurrency or 2 * (os.cpu_count() or 1)

"""Construction of the parts below the executor: isolate factories, facets, artifacts.

The composition root's one place that knows the concrete classes of each part, so server.py
stays about serving and tests can build the same parts without a server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from artifacts import ArtifactStore, GitHttpServer
from executor import artifacts_service, facets_service
from executor.config import Settings
from executor.output_commits import ArtifactOutputs
from executor.runner import FacetGrants, OutputCommitter
from isolates.base import IsolateFactory, Limits
from isolates.facets import FacetStore
from isolates.jail import JailFactory, JailSettings, JailUnavailableError, reap_stale_jails
from isolates.wasm.javascript_runtime import JavaScriptFactory
from isolates.wasm.python_runtime import PythonFactory
from isolates.wasm.scratch import instance_scratch_root, reap_stale_scratch
from isolates.wasm.wasi_runtime import WasiFactory

__all__ = ["Setup", "StartError", "build"]

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """The server cannot start (a port in use, a runtime that cannot load); says why."""


@dataclass
class Setup:
    """Everything the server needs from the parts, plus how to release it."""

    factories: list[IsolateFactory] = field(default_factory=list)
    pool_targets: dict[str, int] = field(default_factory=dict)
    jail_available: bool = False
    facets: FacetGrants | None = None
    committer: OutputCommitter | None = None
    grpc_services: list[Callable[[grpc.aio.Server], str]] = field(default_factory=list)
    """Each registers one more service and returns its full name (for reflection)."""
    closers: list[Callable[[], Any]] = field(default_factory=list)
    git_port: int | None = None
    """Bound port of the git smart-HTTP server, when enabled."""


def build(settings: Settings) -> Setup:
    """Build the parts for `settings` (blocking: maps runtimes, prepares cgroups)."""
    setup = Setup()
    data_dir = settings.data_dir.resolve()
    _add_wasm(setup, settings, data_dir)
    jail = _add_jail(setup, settings, data_dir)

    # One store per data directory: grants are in-process, shared by Execute and Facets.
    # Jailed guests run as an unprivileged host uid; the store hands facet files to it.
    guest_owner = jail.facet_owner if jail is not None else None
    facet_store = FacetStore(data_dir, guest_owner=guest_owner)
    setup.facets = facet_store
    _add_artifacts(setup, settings, data_dir)
    # ExportToRepo commits through the artifact store's adapter, built by _add_artifacts; the
    # facet store itself never sees artifacts/.
    exports = setup.committer if isinstance(setup.committer, ArtifactOutputs) else None
    setup.grpc_services.append(
        lambda server: facets_service.add_to_server(server, facet_store, repo_committer=exports)
    )
    return setup


def _add_artifacts(setup: Setup, settings: Settings, data_dir: Path) -> None:
    store = ArtifactStore(data_dir)
    setup.closers.append(store.close)
    if settings.git_port is not None:
        public = f"http://{settings.public_host}:{{port}}/git" if settings.public_host else ""
        git = GitHttpServer(store, settings.host, settings.git_port)
        try:
            port = git.start()
        except OSError as exc:
            store.close()
            raise StartError(f"cannot serve git over HTTP on {settings.host}:"
                             f"{settings.git_port}: {exc.strerror}") from None
        if public:
            git.public_url = public.format(port=port)
        setup.git_port = port
        setup.closers.append(git.stop)
    setup.committer = ArtifactOutputs(store)

    def register(server: grpc.aio.Server) -> str:
        artifacts_service.add_to_server(server, store)
        return "sandboxd.v1.Artifacts"

    setup.grpc_services.append(register)


def _add_wasm(setup: Setup, settings: Settings, data_dir: Path) -> None:
    removed = reap_stale_scratch(data_dir)
    if removed:
        log.info("removed %d scratch directories left by stopped servers", removed)
    # Created now with the configured size; the factories below share it.
    instance_scratch_root(data_dir, settings.wasm_scratch_bytes)
    # Pooled stores start with the default memory limit: a default request changes nothing.
    limits = Limits(memory_bytes=settings.default_memory_bytes)
    python = PythonFactory(data_dir, limits=limits)
    javascript = JavaScriptFactory(data_dir, limits=limits)
    # Raw WASI modules arrive with each request, so that runtime keeps no warm isolates;
    # its compiled modules are cached by content hash instead.
    wasi = WasiFactory(data_dir)
    setup.factories += [python, javascript, wasi]
    setup.pool_targets[wasi.key] = 0
    setup.pool_targets[python.key] = settings.pool_wasm_python
    setup.pool_targets[javascript.key] = settings.pool_wasm_javascript


def _add_jail(setup: Setup, settings: Settings, data_dir: Path) -> JailFactory | None:
    if not settings.enable_jail:
        return None
    report = reap_stale_jails(data_dir)
    log.info("reaped what a previous server left: %s", report)
    try:
        jail = JailFactory(data_dir, JailSettings(preload=settings.jail_preload))
    except JailUnavailableError as exc:
        # The server still serves WASM; jail requests get a clear INVALID_ARGUMENT.
        log.error("JAIL isolates are disabled: %s", exc)
        return None
    setup.factories.append(jail)
    setup.pool_targets[jail.key] = settings.pool_jail
    setup.jail_available = True
    return jail

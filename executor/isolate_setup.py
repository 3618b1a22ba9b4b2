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

from executor import facets_service
from executor.config import Settings
from executor.runner import FacetGrants, OutputCommitter
from isolates.base import IsolateFactory
from isolates.facets import FacetStore
from isolates.jail import JailFactory, JailSettings, JailUnavailableError, reap_stale_jails
from isolates.wasm.javascript_runtime import JavaScriptFactory
from isolates.wasm.python_runtime import PythonFactory

__all__ = ["Setup", "build"]

log = logging.getLogger(__name__)


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


def build(settings: Settings) -> Setup:
    """Build the parts for `settings` (blocking: maps runtimes, prepares cgroups)."""
    setup = Setup()
    data_dir = settings.data_dir.resolve()
    _add_wasm(setup, settings, data_dir)
    jail_settings = _add_jail(setup, settings, data_dir)

    # One store per data directory: grants are in-process, shared by Execute and Facets.
    # Jailed guests run as an unprivileged host uid; the store hands facet files to it.
    guest_owner = (
        (jail_settings.outside_uid, jail_settings.outside_gid) if jail_settings else None
    )
    facet_store = FacetStore(data_dir, guest_owner=guest_owner)
    setup.facets = facet_store
    setup.grpc_services.append(lambda server: facets_service.add_to_server(server, facet_store))
    return setup


def _add_wasm(setup: Setup, settings: Settings, data_dir: Path) -> None:
    python = PythonFactory(data_dir)
    javascript = JavaScriptFactory(data_dir)
    setup.factories += [python, javascript]
    setup.pool_targets[python.key] = settings.pool_wasm_python
    setup.pool_targets[javascript.key] = settings.pool_wasm_javascript


def _add_jail(setup: Setup, settings: Settings, data_dir: Path) -> JailSettings | None:
    if not settings.enable_jail:
        return None
    report = reap_stale_jails(data_dir)
    log.info("reaped what a previous server left: %s", report)
    try:
        jail = JailFactory(data_dir)
    except JailUnavailableError as exc:
        # The server still serves WASM; jail requests get a clear INVALID_ARGUMENT.
        log.error("JAIL isolates are disabled: %s", exc)
        return None
    setup.factories.append(jail)
    setup.pool_targets[jail.key] = settings.pool_jail
    setup.jail_available = True
    return jail.settings

"""Construction of the parts below the executor: isolate factories, facets, artifacts.

The composition root's one place that knows the concrete classes of each part, so server.py
stays about serving and tests can build the same parts without a server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from executor import facets_service
from executor.config import Settings
from executor.runner import FacetGrants, OutputCommitter
from isolates.base import IsolateFactory
from isolates.facets import FacetStore

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
    # One store per data directory: grants are in-process, shared by Execute and Facets.
    facet_store = FacetStore(settings.data_dir)
    setup.facets = facet_store
    setup.grpc_services.append(lambda server: facets_service.add_to_server(server, facet_store))
    return setup

"""Exceptions of the JAIL isolate kind.

They signal faults of sandboxd or of the host, never anything the guest's code did (that
always ends in an `ExecutionResult` status).

    JailError
     +-- JailUnavailableError   the host cannot run jails (no cgroup v1, no nsjail, ...)
     +-- JailStartError         one jail failed to start or to report ready
"""

from __future__ import annotations


class JailError(Exception):
    """Root of the JAIL isolate kind's exceptions."""


class JailUnavailableError(JailError):
    """The host lacks something jails need; the message names what is missing."""


class JailStartError(JailError):
    """A jail did not start or its driver did not report ready; carries nsjail's log tail."""

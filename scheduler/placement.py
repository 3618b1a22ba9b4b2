"""Placement on the embedded node: which isolate kind and runtime runs a request.

WASM serves Python unless the caller asks for a jail; JavaScript and raw WASI modules always
run in WASM; shells and native commands need a real OS, so they always run in a jail. A jail
serves every native language from one warm runtime ("native"), so the jail pool is shared.
"""

from __future__ import annotations

from isolates.base import IsolateKind, Language

__all__ = ["PlacementError", "choose_runtime"]

JAIL_RUNTIME = "native"
"""The one jail runtime: its driver runs Python, shell and commands."""


class PlacementError(ValueError):
    """The requested isolate kind cannot run the requested language."""


def choose_runtime(
    language: Language, requested: IsolateKind | None, *, jail_available: bool
) -> tuple[IsolateKind, str]:
    """Pick (kind, runtime) for a request; `requested` None means AUTO.

    Raises:
        PlacementError: the combination cannot run here (the message says why).
    """
    if language in (Language.SHELL, Language.COMMAND):
        if requested is IsolateKind.WASM:
            raise PlacementError(f"language {language.value} needs a jail isolate, not wasm")
        kind = IsolateKind.JAIL
    elif language is Language.WASI:
        if requested is IsolateKind.JAIL:
            raise PlacementError("language wasi runs only in wasm isolates")
        kind = IsolateKind.WASM
    elif language is Language.JAVASCRIPT:
        if requested is IsolateKind.JAIL:
            raise PlacementError("language javascript runs only in wasm isolates")
        kind = IsolateKind.WASM
    else:
        kind = requested or IsolateKind.WASM
    if kind is IsolateKind.JAIL:
        if not jail_available:
            raise PlacementError("jail isolates are not enabled on this server")
        return kind, JAIL_RUNTIME
    return kind, language.value

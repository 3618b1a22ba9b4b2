"""Placement on the embedded node: which isolate kind and runtime runs a request.

WASM serves Python unless the caller asks for a jail or sets a CPU-time limit, which only a jail
enforces; JavaScript and raw WASI modules always run in WASM; shells and native commands need a
real OS, so they always run in a jail. A jail serves every native language from one warm
runtime ("native"), so the jail pool is shared.
"""

from __future__ import annotations

from isolates.base import IsolateKind, Language

__all__ = ["PlacementError", "choose_runtime"]

JAIL_RUNTIME = "native"
"""The one jail runtime: its driver runs Python, shell and commands."""


class PlacementError(ValueError):
    """The request cannot run in the isolate kind it asks for; `field` names the field at fault."""

    def __init__(self, message: str, field: str = "isolate") -> None:
        super().__init__(message)
        self.field = field


_CPU_LIMIT_IN_WASM = (
    "is enforced in JAIL isolates only; {what} (a wasm isolate runs one thread, so its timeout "
    "bounds its CPU time)"
)


def choose_runtime(
    language: Language,
    requested: IsolateKind | None,
    *,
    jail_available: bool,
    cpu_limit: bool = False,
) -> tuple[IsolateKind, str]:
    """Pick (kind, runtime) for a request; `requested` None means AUTO.

    `cpu_limit`: the request sets a CPU-time limit, which only a jail enforces.

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
        kind = requested or (IsolateKind.JAIL if cpu_limit else IsolateKind.WASM)
    if cpu_limit and kind is IsolateKind.WASM:
        what = ("this request asks for a wasm isolate" if requested is IsolateKind.WASM
                else f"language {language.value} runs only in wasm isolates")
        raise PlacementError(_CPU_LIMIT_IN_WASM.format(what=what), "limits.cpu_ms")
    if kind is IsolateKind.JAIL:
        if not jail_available:
            if cpu_limit and requested is None and language is Language.PYTHON:
                raise PlacementError("is enforced in JAIL isolates only, and jail isolates "
                                     "are not enabled on this server", "limits.cpu_ms")
            raise PlacementError("jail isolates are not enabled on this server")
        return kind, JAIL_RUNTIME
    return kind, language.value

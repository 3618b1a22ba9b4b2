"""Which isolate kind runs a request, and the refusals that name the field at fault."""

from __future__ import annotations

import pytest

from isolates.base import IsolateKind, Language
from scheduler.placement import PlacementError, choose_runtime

JAIL, WASM = IsolateKind.JAIL, IsolateKind.WASM


@pytest.mark.parametrize(("language", "requested", "cpu_limit", "placed"), [
    (Language.PYTHON, None, False, (WASM, "python")),
    (Language.PYTHON, JAIL, False, (JAIL, "native")),
    (Language.PYTHON, None, True, (JAIL, "native")),  # only a jail enforces CPU time
    (Language.SHELL, None, False, (JAIL, "native")),
    (Language.COMMAND, None, True, (JAIL, "native")),
    (Language.JAVASCRIPT, None, False, (WASM, "javascript")),
    (Language.WASI, WASM, False, (WASM, "wasi")),
])
def test_placement(language: Language, requested: IsolateKind | None, cpu_limit: bool,
                   placed: tuple[IsolateKind, str]) -> None:
    assert choose_runtime(language, requested, jail_available=True,
                          cpu_limit=cpu_limit) == placed


@pytest.mark.parametrize(("language", "requested", "cpu_limit", "jail", "field", "words"), [
    (Language.SHELL, WASM, False, True, "isolate", "language shell needs a jail isolate"),
    (Language.JAVASCRIPT, JAIL, False, True, "isolate",
     "language javascript runs only in wasm"),
    (Language.PYTHON, WASM, True, True, "limits.cpu_ms",
     "is enforced in JAIL isolates only; this request asks for a wasm isolate"),
    (Language.WASI, None, True, True, "limits.cpu_ms",
     "is enforced in JAIL isolates only; language wasi runs only in wasm isolates"),
    (Language.PYTHON, None, True, False, "limits.cpu_ms",
     "is enforced in JAIL isolates only, and jail isolates are not enabled on this server"),
    (Language.SHELL, None, True, False, "isolate",
     "jail isolates are not enabled on this server"),
])
def test_refusals_name_the_field(language: Language, requested: IsolateKind | None,
                                 cpu_limit: bool, jail: bool, field: str, words: str) -> None:
    with pytest.raises(PlacementError) as info:
        choose_runtime(language, requested, jail_available=jail, cpu_limit=cpu_limit)
    assert info.value.field == field
    assert str(info.value).startswith(words)

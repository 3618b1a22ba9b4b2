"""Server settings: defaults, SANDBOXD_* environment variables, then explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from executor.config import Settings


def test_defaults_serve_one_machine_without_configuration() -> None:
    settings = Settings.from_env(environ={})
    assert settings.port == 50051
    assert settings.metrics_port == 9464
    assert settings.data_dir == Path(".sandboxd")
    assert settings.enable_jail is True
    assert settings.event_loop == "uvloop"


def test_environment_variables_set_each_field_by_name() -> None:
    settings = Settings.from_env(environ={
        "SANDBOXD_PORT": "6000",
        "SANDBOXD_POOL_WASM_PYTHON": "3",
        "SANDBOXD_ENABLE_JAIL": "false",
        "SANDBOXD_DATA_DIR": "/var/lib/sandboxd",
        "SANDBOXD_JAIL_PRELOAD": '["json", "csv"]',
        "SANDBOXD_DEFAULT_TIMEOUT_S": "2.5",
        "SANDBOXD_EVENT_LOOP": "asyncio",
        "UNRELATED": "ignored",
    })
    assert settings.port == 6000
    assert settings.pool_wasm_python == 3
    assert settings.enable_jail is False
    assert settings.data_dir == Path("/var/lib/sandboxd")
    assert settings.jail_preload == ("json", "csv")
    assert settings.default_timeout_s == 2.5
    assert settings.event_loop == "asyncio"


@pytest.mark.parametrize("value", ["", "-1", "none", "OFF"])
def test_an_optional_port_is_disabled_by_an_empty_or_off_value(value: str) -> None:
    settings = Settings.from_env(environ={"SANDBOXD_METRICS_PORT": value,
                                          "SANDBOXD_GIT_PORT": value})
    assert settings.metrics_port is None
    assert settings.git_port is None


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"port": 7000}, environ={"SANDBOXD_PORT": "6000"})
    assert settings.port == 7000


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("SANDBOXD_PORT", "70000", "port"),
    ("SANDBOXD_POOL_JAIL", "many", "pool_jail"),
    ("SANDBOXD_JAIL_PRELOAD", "numpy", "jail_preload"),
    ("SANDBOXD_EVENT_LOOP", "trio", "event_loop"),
])
def test_a_bad_environment_value_names_its_field(variable: str, value: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.from_env(environ={variable: value})
    assert [error["loc"][0] for error in caught.value.errors()] == [field]


def test_an_unknown_setting_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValidationError):
        Settings(no_such_option=1)  # type: ignore[call-arg]

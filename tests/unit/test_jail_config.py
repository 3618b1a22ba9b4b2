"""The nsjail configuration of JAIL isolates: the per-factory template renders exactly what a
full build of the configuration renders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from isolates.jail._nsjail_config import (
    BOOTSTRAP,
    GUEST_PYTHON,
    ConfigTemplate,
    build_config,
    compile_driver,
    driver_frame,
    render,
)
from isolates.jail._settings import JailSettings

NOBODY = {"outside_uid": 65534, "outside_gid": 65534}
"""The guest's host ids as a root factory resolves them (build_config needs them resolved)."""


@pytest.mark.parametrize("settings", [
    JailSettings(**NOBODY),
    JailSettings(**NOBODY, preload=("json", "xml.dom"), nice_level=5, pids_max=32),
    JailSettings(outside_uid=201000, outside_gid=201001, use_newidmap=True),
])
def test_template_renders_what_a_full_build_renders(settings: JailSettings, tmp_path: Path) -> None:
    state_root = tmp_path / 'odd "dir" \\ name'
    template = ConfigTemplate(settings, state_root)
    for jail_id in ("j1-abcdef", "j22-0f0f0f"):
        expected = render(build_config(settings, jail_id,
                                       state_root / jail_id / "nsjail.log"))
        assert template.render(jail_id) == expected
        facet = tmp_path / "facet"
        assert template.render(jail_id, facet) == render(build_config(
            settings, jail_id, state_root / jail_id / "nsjail.log", facet))


def test_template_refuses_ids_that_would_need_escaping(tmp_path: Path) -> None:
    template = ConfigTemplate(JailSettings(**NOBODY), tmp_path)
    for bad in ("", 'j1"', "j1\n", "j1 x", "j1\\", "j\u00e91"):
        with pytest.raises(ValueError):
            template.render(bad)


def test_driver_runs_isolated_without_site_and_with_preload() -> None:
    config = build_config(JailSettings(**NOBODY, preload=("json",)), "j1", Path("/x/log"))
    assert config.exec_bin is not None
    assert list(config.exec_bin.arg) == ["-I", "-S", "-B", "-c", BOOTSTRAP, "json"]


def test_nsjail_leaves_cgroups_to_sandboxd() -> None:
    """nsjail moving its child into a cgroup costs a grace-period wait per jail; the jail is
    born in sandboxd's cgroups instead, so nsjail must not be told to make any."""
    text = render(build_config(JailSettings(**NOBODY), "j1", Path("/x/log")))
    assert "cgroup_mem" not in text and "cgroup_pids" not in text and "cgroup_cpu" not in text


def test_preload_accepts_module_names_only() -> None:
    for bad in ("-c", "os; import x", "a..b", "", "--", "a b"):
        with pytest.raises(ValueError):
            JailSettings(preload=(bad,))


def test_driver_is_compiled_by_the_guest_interpreter_once(tmp_path: Path) -> None:
    """The jail runs the driver's bytecode: the guest interpreter's magic number, then code.

    It is compiled into the cache directory once and reused by later factories (and servers);
    the compiled drivers of other versions are removed.
    """
    magic = subprocess.run([GUEST_PYTHON, "-I", "-S", "-c",
                            "import sys, importlib.util; "
                            "sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)"],
                           capture_output=True, check=True).stdout
    stale = tmp_path / "driver-0123456789abcdef01234567.pyc"  # an older driver's
    stale.write_bytes(b"old")
    pyc = compile_driver(tmp_path)
    assert pyc[:4] == magic and len(pyc) > 1000
    (cached,) = tmp_path.iterdir()
    written = cached.stat().st_mtime_ns
    assert compile_driver(tmp_path) == pyc
    assert cached.stat().st_mtime_ns == written  # reused, not compiled again
    assert driver_frame(pyc) == (len(pyc) - 16).to_bytes(4, "big") + pyc[16:]


def _guest_pyc(source: str) -> bytes:
    """`source` compiled by the guest interpreter, laid out as a .pyc file."""
    return subprocess.run(
        [GUEST_PYTHON, "-I", "-S", "-c",
         "import marshal, sys; sys.stdout.buffer.write(bytes(16) + marshal.dumps("
         f"compile({source!r}, '/sandboxd/driver.py', 'exec')))"],
        capture_output=True, check=True).stdout


def test_bootstrap_runs_the_code_from_stdin_as_main_with_the_preload_arguments() -> None:
    """What nsjail starts: the guest interpreter reads the driver from stdin and runs it."""
    pyc = _guest_pyc("import sys, os\n"
                     "print(__name__, sys.argv[1:], os.read(0, 100))\n")
    done = subprocess.run([GUEST_PYTHON, "-I", "-S", "-B", "-c", BOOTSTRAP, "json", "csv"],
                          input=driver_frame(pyc) + b"request", capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"__main__ ['json', 'csv'] b'request'\n"


def test_bootstrap_exits_with_a_message_when_the_driver_is_cut_short() -> None:
    frame = driver_frame(_guest_pyc("print('never')\n"))
    for cut in (b"", frame[:2], frame[:-5]):
        done = subprocess.run([GUEST_PYTHON, "-I", "-S", "-B", "-c", BOOTSTRAP],
                              input=cut, capture_output=True, timeout=30)
        assert done.returncode == 1 and done.stdout == b""
        assert b"the driver did not arrive on stdin" in done.stderr


def test_the_guest_ids_and_how_they_are_mapped_reach_nsjail() -> None:
    config = build_config(JailSettings(outside_uid=201000, outside_gid=201001,
                                       use_newidmap=True), "j1", Path("/x/log"))
    assert [(m.inside_id, m.outside_id, m.count, m.use_newidmap) for m in config.uidmap] == [
        ("1000", "201000", 1, True)]
    assert [(m.inside_id, m.outside_id, m.count, m.use_newidmap) for m in config.gidmap] == [
        ("1000", "201001", 1, True)]


def test_unresolved_guest_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="resolved"):
        build_config(JailSettings(), "j1", Path("/x/log"))

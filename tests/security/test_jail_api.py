"""R8 of the adversarial catalogue for JAIL isolates: 1,000 concurrent Execute calls.

Through the real API against a server of its own with two execution slots and a queue of 16:
every call is answered (a result, or RESOURCE_EXHAUSTED with RetryInfo), and afterwards the
jails, their processes, cgroups and state directories are back to the warm pool's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolates.jail import JailFactory
from tests.conftest import RunningServer, private_data_dir, start_server
from tests.security.test_api import assert_still_serving, assert_storm_answered
from tests.security.test_jail_isolates import host_processes_of

JAIL_KEY = "jail/native"


@pytest.fixture(scope="module")
def jail_server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    own = private_data_dir(data_dir, tmp_path_factory.mktemp("jail-r8"))
    running = start_server(own, max_concurrency=2, max_queue=16, pool_jail=2,
                           pool_wasm_python=0, pool_wasm_javascript=0)
    yield running
    running.stop()


def _jail_state(factory: JailFactory) -> tuple[int, int, int]:
    """(jail processes on the host, jail cgroup directories, jail state directories)."""
    cgroups = sum(1 for c in factory.layout.parents
                  for p in factory.layout.parent_dir(c).iterdir() if p.is_dir())
    states = sum(1 for p in factory.instance_dir.iterdir() if p.is_dir())
    return len(host_processes_of(factory)), cgroups, states


async def test_R8_thousand_concurrent_jail_calls_all_answered(jail_server: RunningServer) -> None:
    pool = jail_server.server.pool
    assert pool is not None
    factory = pool.factory(JAIL_KEY)
    assert isinstance(factory, JailFactory)
    assert await asyncio.to_thread(pool.wait_warm, 60)
    warm = _jail_state(factory)
    await assert_storm_answered(jail_server.target, lambda i: f"echo {i}",
                                language="shell", isolate="jail")
    await asyncio.to_thread(pool.wait_discarded)
    assert await asyncio.to_thread(pool.wait_warm, 60)
    assert pool.sizes()[JAIL_KEY] == pool.targets()[JAIL_KEY]
    # Every used jail is gone: what is left is the warm pool, as before the storm.
    assert _jail_state(factory) == warm
    assert_still_serving(jail_server.target)

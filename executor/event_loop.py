"""The event loop the server runs on: uvloop by default, the standard `asyncio` loop on request.

Everything a paced call does on the server passes through the loop several times: gRPC's
completion-queue thread wakes it through a socket for the call and again for its message, a
warm jail's result arrives on a pipe it watches, a worker thread hands a wasm result back with
`call_soon_threadsafe`. After an idle pause each of those turns of the standard loop's Python
code runs with cold caches; uvloop's are compiled. Two servers side by side, one client taking
turns between them with calls paced 0.1 s apart (6 comparisons of 80-100 rounds, each order
three times), uvloop made a warm jail's `Execute` 0.10-0.35 ms faster in every comparison and a
Health check 0.05-0.12 ms. Served in blocks of 20 calls to one server at a time, as the bench
paces them, the difference shrank into the noise: -0.22 to +0.23 ms for jails over 4 runs,
-0.15 and -0.04 ms for wasm Python. It is never measurably slower.

`SANDBOXD_EVENT_LOOP=asyncio` selects the standard loop, which serves the same API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import uvloop

__all__ = ["EventLoopName", "loop_factory"]

EventLoopName = Literal["uvloop", "asyncio"]


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the named loop, as `asyncio.run(..., loop_factory=...)` takes it."""
    if name == "uvloop":
        return uvloop.new_event_loop
    return asyncio.new_event_loop

"""Server assembly: the composition root that wires every part into one grpc.aio server.

Start-up order matters for the "SERVING within a second" promise: runtimes are already built by
set-up, so start-up only maps the serialized modules, starts the pool's refill threads (warm
isolates appear in the background; early calls are served by on-the-spot misses) and binds the
ports. Health turns SERVING once the port is bound. SIGTERM flips health to NOT_SERVING, lets
running calls finish within the grace period, then closes the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import resource
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from executor import execute_service, isolate_setup
from executor.config import Settings
from executor.execute_service import ExecutorService
from executor.isolate_setup import StartError
from executor.metrics import Metrics
from executor.runner import ExecutionRunner
from executor.workers import ExecutionWorkers
from isolates.pool import PoolConfig, WarmPool
from sandboxd.v1 import executor_pb2

__all__ = ["Server", "StartError", "serve"]

log = logging.getLogger(__name__)



@dataclass
class Server:
    """One sandboxd node: gRPC API, metrics endpoint and warm pool."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    port: int = 0
    metrics_port: int | None = None
    git_port: int | None = None
    pool: WarmPool | None = None
    _grpc: grpc.aio.Server | None = None
    _health: health.aio.HealthServicer | None = None
    _workers: ExecutionWorkers | None = None
    _closers: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        """Build the parts, bind the ports and begin serving."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        _raise_descriptor_limit()
        setup = await asyncio.to_thread(isolate_setup.build, s)
        self._closers.extend(setup.closers)
        self.git_port = setup.git_port
        self.pool = WarmPool(
            setup.factories,
            PoolConfig(targets=setup.pool_targets, default_target=0,
                       idle_ttl_s=s.pool_idle_ttl_s, refill_defer_s=s.pool_refill_defer_s),
            observer=self.metrics,
        )
        self.pool.start()
        for key in self.pool.targets():
            # Read when scraped, as the gauge of abandoned executions below: never stale, and
            # nothing to count on a call's path.
            self.metrics.pool_size.labels(key).set_function(
                functools.partial(self.pool.size, key))
        # Workers beyond the execution slots absorb misses and cancellations finishing late.
        self._workers = ExecutionWorkers(s.concurrency + 4)
        workers = self._workers
        self.metrics.abandoned.set_function(lambda: workers.abandoned)
        runner = ExecutionRunner(self.pool, jail_available=setup.jail_available,
                                 facets=setup.facets, committer=setup.committer)
        service = ExecutorService(runner, s, self.metrics, self._workers)

        options = [
            ("grpc.max_receive_message_length", s.max_request_bytes),
            ("grpc.max_send_message_length", s.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(options=options)
        execute_service.add_to_server(server, service)
        service_names = [executor_pb2.DESCRIPTOR.services_by_name["Executor"].full_name]
        for add in setup.grpc_services:
            service_names.append(add(server))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        service_names += [health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(service_names, server)
        try:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartError(f"cannot listen for gRPC on {s.host}:{s.port} (address in use?)")
        await server.start()
        self._grpc = server
        if s.metrics_port is not None:
            try:
                self.metrics_port, http_server = self.metrics.serve(s.host, s.metrics_port)
            except OSError as exc:
                raise StartError(f"cannot serve metrics on {s.host}:{s.metrics_port}: "
                                 f"{exc.strerror}") from None
            self._closers.append(http_server.shutdown)
        for name in ("", *service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics = f"port {self.metrics_port}" if self.metrics_port is not None else "off"
        log.info("sandboxd serving gRPC on %s:%d (metrics: %s)", s.host, self.port, metrics)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running ones finish within `grace`, release everything."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.grace_period_s if grace is None else grace)
            self._grpc = None
        if self._workers is not None:
            await asyncio.to_thread(self._workers.shutdown, wait=True, cancel_futures=True)
            self._workers = None
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
            self.pool = None
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(close)
        self._closers.clear()

    async def wait(self) -> None:
        """Block until the gRPC server terminates."""
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


def _raise_descriptor_limit() -> None:
    """Use the whole hard RLIMIT_NOFILE: WASM guests' open files are this process's fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(settings: Settings) -> None:
    """Run a server until SIGTERM or SIGINT, then drain gracefully."""
    server = Server(settings)
    try:
        await server.start()
    except BaseException:
        # Release what did start (pool threads, jails, ports) before reporting the failure.
        await server.stop(grace=0)
        raise
    # What start-up built (modules, runtimes, services) lives as long as the process: freezing
    # it keeps the collector's full passes, which would walk all of it, off the request path.
    # The CLI turns the collector off while it imports and starts (`sandboxd serve`): start-up
    # leaves about 500 objects of cyclic garbage, frozen with the rest, where a collection
    # would take 90-135 ms.
    gc.freeze()
    gc.enable()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    extras = [f"metrics on :{server.metrics_port}" if server.metrics_port else "",
              f"git on :{server.git_port}" if server.git_port else ""]
    print(f"sandboxd serving on {settings.host}:{server.port}"
          + "".join(f", {extra}" for extra in extras if extra), flush=True)
    await stop.wait()
    log.info("shutting down: draining for up to %.0fs", settings.grace_period_s)
    await server.stop()

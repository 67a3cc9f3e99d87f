"""The daemon's lifecycle: Redis, engine, listeners, signals, in that order and back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon import __version__
from daemon.api import make_api
from daemon.embedded import EmbeddedValkey
from daemon.engine import Engine
from daemon.health import Health, watch_loop_lag
from daemon.logs import configure_logging
from daemon.metrics import Metrics
from daemon.plans import PlansError, load_plans
from daemon.redis_client import connect
from daemon.settings import ConfigError, Settings, load_settings
from daemon.store import Store

log = structlog.get_logger("lifecycled")


def make_metrics_app(metrics: Metrics, health: Health) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        if not health.live():
            return web.json_response(
                {"status": "unhealthy", "reason": "event loop lagging",
                 "loop_lag_seconds": health.loop_lag_seconds}, status=503,
            )  # fmt: skip
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reason = health.not_ready_reason()
        metrics.ready.set(0 if reason else 1)
        if reason:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class Daemon:
    def __init__(self, settings: Settings, config_file: str | None = None) -> None:
        self.settings = settings
        self.config_file = config_file
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.embedded: EmbeddedValkey | None = None
        self.redis: Any = None
        self.engine: Engine | None = None
        self._runners: list[web.AppRunner] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        if s.redis_url is None:
            self.embedded = EmbeddedValkey(s.data_dir)
            await asyncio.to_thread(self.embedded.start)
            url = self.embedded.url
        else:
            url = s.redis_url.get_secret_value()
        self.redis = connect(url, s.redis_cluster)
        store = Store(self.redis, s, s.plans())
        self.engine = Engine(store, self.metrics, self.health)
        self._tasks.append(asyncio.get_running_loop().create_task(watch_loop_lag(self.health)))
        await self.engine.start()
        await self._serve(make_api(store, self.engine, self.metrics), s.http_host, s.http_port)
        await self._serve(make_metrics_app(self.metrics, self.health), s.metrics_host,
                          s.metrics_port)  # fmt: skip
        log.info("daemon_started", version=__version__, replica=self.engine.replica_id,
                 http=f"{s.http_host}:{s.http_port}", partitions=s.partitions,
                 embedded=self.embedded is not None)  # fmt: skip

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port, shutdown_timeout=2.0).start()

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: reload the plans file and the log level; keep the old plans on error."""
        try:
            fresh = load_settings(self.config_file)
            plans = load_plans(fresh.plans_file)
        except (ConfigError, PlansError) as exc:
            log.error("reload_failed", error=str(exc))
            return
        configure_logging(self.settings.log_format, fresh.log_level)
        if self.engine is not None:
            self.engine.store.set_plans(plans)
        log.info("reloaded", plans=sorted(plans), log_level=fresh.log_level)

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        log.info("daemon_stopping")
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        if self.engine is not None:
            await self.engine.stop()
        for task in self._tasks:
            task.cancel()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        log.info("daemon_stopped")


async def run_daemon(settings: Settings, config_file: str | None) -> int:
    daemon = Daemon(settings, config_file)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_stop_signal(signame: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second_signal_exiting_now", signal=signame)
            if daemon.embedded is not None:
                daemon.embedded.stop(timeout=2)
            os._exit(1)
        log.info("signal_received", signal=signame)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
        await daemon.wait()
    finally:
        try:
            await asyncio.wait_for(daemon.stop(), settings.shutdown_timeout_seconds)
        except TimeoutError:
            log.error("shutdown_timed_out", seconds=settings.shutdown_timeout_seconds)
            if daemon.embedded is not None:
                daemon.embedded.stop()
    return 0

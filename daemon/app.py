"""The daemon's lifecycle: Redis, engine, listeners, signals, in that order and back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import generate_latest
from redis.exceptions import RedisError

from daemon import __version__
from daemon.api import make_api
from daemon.console import console_url
from daemon.embedded import EmbeddedValkey
from daemon.engine import Engine
from daemon.health import Health
from daemon.http_errors import use_json_errors
from daemon.logs import configure_logging
from daemon.metrics import Metrics
from daemon.notify import Notifier
from daemon.plans import PlansError, load_plans
from daemon.redis_client import TRANSIENT_ERRORS, connect
from daemon.settings import ConfigError, Settings, load_settings
from daemon.store import Store
from daemon.webhooks import WebhookDispatcher

log = structlog.get_logger("lifecycled")

# The classic text format, which every Prometheus version reads (recent clients default
# to 1.0.0, which older servers do not know); the names are valid in both.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A scrape reads the shared-state gauges from Redis; a slow Redis must not stall it.
SCRAPE_REFRESH_TIMEOUT_SECONDS = 1.0
# How often readiness is re-evaluated for READY=1, STATUS= and the daemon_ready log.
STATE_TICK_SECONDS = 0.2
# Time kept from the shutdown budget for stopping the embedded Valkey server.
EMBEDDED_STOP_RESERVE_SECONDS = 2.0


def make_metrics_app(
    metrics: Metrics,
    health: Health,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """``/metrics``, ``/healthz`` and ``/readyz``: the listener on ``metrics_port``."""

    async def metrics_handler(_: web.Request) -> web.Response:
        if refresh is not None and health.redis_up:
            # The last values stay when Redis does not answer in time.
            with contextlib.suppress(TimeoutError, RedisError, *TRANSIENT_ERRORS):
                await asyncio.wait_for(refresh(), SCRAPE_REFRESH_TIMEOUT_SECONDS)
        health.not_ready_reason()  # brings lifecycle_ready up to date
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE}
        )

    async def healthz(_: web.Request) -> web.Response:
        lag = round(health.loop_lag(), 3)
        if lag >= health.lag_limit:
            reason = (f"event loop blocked: {lag} s behind in the last "
                      f"{health.lag_window:g} s (limit {health.lag_limit:g} s)")  # fmt: skip
            body = {"status": "unhealthy", "reason": reason, "loop_lag_seconds": lag}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ok", "loop_lag_seconds": lag})

    async def readyz(_: web.Request) -> web.Response:
        reason = health.not_ready_reason()
        if reason:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class Daemon:
    """One daemon: ``start()`` brings it up, ``stop()`` takes it down in reverse."""

    def __init__(self, settings: Settings, config_file: str | None = None) -> None:
        self.settings = settings
        self.config_file = config_file
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.notifier = Notifier()
        self.embedded: EmbeddedValkey | None = None
        self.redis: Any = None
        self.engine: Engine | None = None
        self.webhooks: WebhookDispatcher | None = None
        self._api: web.AppRunner | None = None
        self._metrics_app: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._serving = False
        self._ready_sent = False
        self._was_ready: bool | None = None

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.health.start_loop_monitor(loop)
        # First, so that the watchdog is fed while the embedded server starts.
        self._tasks.append(loop.create_task(self._state_loop()))
        if s.redis_url is None:
            self.notifier.status("starting the embedded Valkey server")
            self.embedded = EmbeddedValkey(s.data_dir)
            await asyncio.to_thread(self.embedded.start)
            url = self.embedded.url
        else:
            url = s.redis_url.get_secret_value()
        self.notifier.status("connecting to Redis")
        self.redis = connect(url, s.redis_cluster)
        store = Store(self.redis, s, s.plans())
        self.engine = Engine(store, self.metrics, self.health)
        await self.engine.start()
        self._api = await self._serve(
            make_api(store, self.engine, self.metrics), s.http_host, s.http_port, "http"
        )
        metrics_app = make_metrics_app(self.metrics, self.health, self.engine.refresh_live_count)
        self._metrics_app = await self._serve(
            metrics_app, s.metrics_host, s.metrics_port, "metrics"
        )
        # Started once both listeners serve: a failed start has no deliveries to stop.
        self.webhooks = WebhookDispatcher(store, self.engine, self.metrics.registry)
        self.webhooks.start()
        self._serving = True
        log.info("daemon_started", version=__version__, replica=self.engine.replica_id,
                 http=f"{s.http_host}:{s.http_port}", metrics=f"{s.metrics_host}:{s.metrics_port}",
                 partitions=s.partitions, embedded=self.embedded is not None,
                 event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])  # fmt: skip
        log.info("console", url=console_url(s.http_host, s.http_port))

    @staticmethod
    async def _serve(app: web.Application, host: str, port: int, name: str) -> web.AppRunner:
        """``name``: the listener's settings are ``<name>_host`` and ``<name>_port``."""
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        use_json_errors(runner)
        try:
            await web.TCPSite(runner, host, port, shutdown_timeout=2.0).start()
        except OSError as exc:
            await runner.cleanup()
            problem = exc.strerror or str(exc)
            raise OSError(
                f"{name}_port: cannot listen on {host}:{port}: {problem}; choose another with "
                f"LIFECYCLE_{name.upper()}_PORT (or {name}_host / LIFECYCLE_{name.upper()}_HOST)",
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    def status_line(self, reason: str | None) -> str:
        if reason is not None:
            return f"not ready: {reason}"
        owned = self.engine.owned_partitions if self.engine is not None else []
        consuming = ",".join(str(p) for p in owned) or "none"
        return (f"ready: consuming partitions {consuming} of {self.settings.partitions}, "
                f"expiring all")  # fmt: skip

    async def _state_loop(self) -> None:
        """READY=1 once ready, STATUS= on every change, WATCHDOG=1 while live."""
        loop = asyncio.get_running_loop()
        interval = self.notifier.watchdog_interval
        tick = min(STATE_TICK_SECONDS, interval) if interval else STATE_TICK_SECONDS
        last_ping = -float("inf")
        while True:
            due = interval is not None and loop.time() - last_ping >= interval
            # A blocked loop sends nothing; a loop that was blocked recently neither.
            if due and self.health.live():
                self.notifier.watchdog()
                last_ping = loop.time()
            if self._serving:
                self._track_readiness()
            await asyncio.sleep(tick)

    def _track_readiness(self) -> None:
        reason = self.health.not_ready_reason()
        ready = reason is None
        if ready != self._was_ready:
            if ready:
                log.info("daemon_ready", partitions=self.status_line(None))
            elif self._was_ready is not None:
                log.warning("daemon_not_ready", reason=reason)
            self._was_ready = ready
        if ready and not self._ready_sent:
            self._ready_sent = True
            self.notifier.ready(self.status_line(reason))
        else:
            self.notifier.status(self.status_line(reason))

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: reload the plans file and the log level; keep the old plans on error."""
        if self._ready_sent:
            self.notifier.reloading()
        try:
            fresh = load_settings(self.config_file)
            plans = load_plans(fresh.plans_file)
        except (ConfigError, PlansError) as exc:
            log.error("reload_failed", error=str(exc))
        else:
            configure_logging(self.settings.log_format, fresh.log_level)
            if self.engine is not None:
                self.engine.store.set_plans(plans)
            log.info("reloaded", plans_file=str(fresh.plans_file), plans=sorted(plans),
                     log_level=fresh.log_level)  # fmt: skip
        if self._ready_sent:
            # READY=1 ends the reload for systemd, whether it worked or not.
            self.notifier.ready(self.status_line(self.health.not_ready_reason()))

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop taking requests and events, drain, acknowledge, then let go of Redis."""
        self.health.stopping = True
        self.notifier.stopping("stopping: finishing the events in flight")
        log.info("daemon_stopping")
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._api.cleanup()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.engine is not None:
            await self.engine.stop()
        for task in self._tasks:
            task.cancel()
        # The metrics listener goes last: probes and scrapes see the shutdown through.
        if self._metrics_app is not None:
            with contextlib.suppress(Exception):
                await self._metrics_app.cleanup()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.embedded is not None:
            self.notifier.status("stopping: stopping the embedded Valkey server")
            await asyncio.to_thread(self.embedded.stop)
        self.health.stop_loop_monitor()
        log.info("daemon_stopped")
        self.notifier.close()


def raise_open_files_limit(wanted: int = 65536) -> None:
    """Every HTTP client holds a descriptor; the usual soft limit of 1024 is too low.

    The soft limit goes up to the hard one, or to ``wanted`` where the process may raise
    the hard limit too (root without a service manager's cap).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (max(hard, wanted), hard):
        if limit == resource.RLIM_INFINITY or limit <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return
        except (ValueError, OSError):
            continue


async def run_daemon(settings: Settings, config_file: str | None) -> int:
    raise_open_files_limit()
    daemon = Daemon(settings, config_file)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_stop_signal(signame: str) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second_signal_exiting_now", signal=signame)
            if daemon.embedded is not None:
                daemon.embedded.stop(timeout=EMBEDDED_STOP_RESERVE_SECONDS)
            os._exit(1)
        log.info("signal_received", signal=signame)
        daemon.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    code = 0
    try:
        await daemon.start()
        await daemon.wait()
    except OSError as exc:
        # A listener's port in use or an address not available: one line, exit 1.
        log.error("daemon_start_failed", error=str(exc))
        code = 1
    finally:
        timeout = settings.shutdown_timeout_seconds
        reserve = min(EMBEDDED_STOP_RESERVE_SECONDS, timeout / 4)
        try:
            await asyncio.wait_for(daemon.stop(), timeout - reserve)
        except TimeoutError:
            log.error("shutdown_timed_out", seconds=timeout)
            if daemon.embedded is not None:
                daemon.embedded.stop(timeout=reserve)
            daemon.health.stop_loop_monitor()
    return code

"""The running engine: wires settings, database, listeners, pipeline and HTTP, and shuts down in order.

Start: database (embedded or URL) and migrations → account directory → group-commit pipeline →
DC-09 TCP/UDP listeners → MQTT subscriber → HTTP (/metrics, /healthz, /readyz, admin API).
Stop (SIGINT/SIGTERM): stop accepting → stop MQTT → drain in-flight commits and ACKs → close the
pipeline → stop HTTP → close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from litestar import Litestar

from engine import metrics
from engine.account_directory import AccountDirectory
from engine.account_listener import AccountChangeListener
from engine.api.app import create_app
from engine.background_task import restart_on_failure
from engine.crash_smash import CrashSmashStage, CrashSmashTimer
from engine.database import open_database, run_maintenance
from engine.dc09_listener import Dc09Handler, Dc09Server
from engine.deadline_timer import Clock, utc_now
from engine.delivery import Dispatcher
from engine.errors import DATABASE_ERRORS
from engine.forwarding_stage import ForwardingStage
from engine.http_server import AppFactory, HttpServer, build_app
from engine.ingest_writer import IngestWriter
from engine.open_files import fit_max_connections
from engine.pipeline import IngestPipeline
from engine.receiver_directory import ReceiverDirectory
from engine.settings import Settings
from engine.supervision import SupervisionStage, SupervisionTimer
from engine.virtual_modules import VirtualModules
from engine.voice_session import VoiceCommandImpossible
from protocols.dc09_receiver import ReceiverConfig
from protocols.dc09_timestamp import TimestampWindow
from protocols.errors import Reply

log = structlog.get_logger("engine.service")


def ingest_stages(
    settings: Settings, directory: AccountDirectory
) -> tuple[SupervisionStage, CrashSmashStage]:
    """The batch writer's supervision and Crash & Smash stages, as the settings enable them.

    The supervision stage runs whatever ``supervision.enabled`` says, which starts or not only
    the timer that raises misses: contacts keep every deadline current either way. Otherwise the
    deadlines of modules heard while it was off (or heard by an engine that has it off, beside one
    that has it on) would still be those of their last contact before, and the timer would raise
    a false Panel Not Responding for each of them at once.
    """
    supervision = SupervisionStage(directory, grace_s=settings.supervision.grace_s)
    # Likewise with ``crash_smash.enabled`` off no entry opens a timer, but disarms and alarms
    # still close the entries opened before: turned back on, it must not raise Crash & Smash for
    # an entry that was disarmed meanwhile (nor an engine with it on, for one disarmed through an
    # engine with it off).
    crash_smash = CrashSmashStage(
        dialer_delay_s=settings.crash_smash.dialer_delay_s,
        grace_s=settings.crash_smash.grace_s,
        entry_codes=frozenset(settings.crash_smash.entry_codes),
        entry_delay_s=settings.crash_smash.entry_delay_s,
        accounts=directory,
        opens=settings.crash_smash.enabled,
    )
    return supervision, crash_smash


class Engine:
    """One engine process. ``run`` returns after a clean shutdown once ``stop`` is set."""

    def __init__(self, settings: Settings, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self._clock = clock  # the durable timers' and supervision restores' clock (tests: a fake)
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.dc09: Dc09Server | None = None
        self.http: HttpServer | None = None
        self.pipeline: IngestPipeline | None = None
        self.dispatcher: Dispatcher | None = None
        self.supervision_timer: SupervisionTimer | None = None
        self.crash_smash_timer: CrashSmashTimer | None = None
        self.virtual_modules: VirtualModules | None = None
        self.pool: asyncpg.Pool | None = None
        self.receivers: ReceiverDirectory | None = None
        self.directory = AccountDirectory()
        self._mqtt_task: asyncio.Task[None] | None = None
        self._mqtt: Any = None

    async def run(self) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        settings = self.settings
        async with open_database(settings) as database:
            pool: asyncpg.Pool = database.pool
            self.pool = pool
            accounts_listener = AccountChangeListener(pool, self.directory)
            await accounts_listener.start()  # LISTEN, then load every account

            receivers = ReceiverDirectory(pool)
            # Everything started from here on is stopped in the finally, also when the start
            # itself fails (a port in use): nothing is left holding the pool.
            tasks: list[asyncio.Task[None]] = []
            try:
                await receivers.start()
                self.receivers = receivers
                self.dispatcher = Dispatcher(
                    pool,
                    receivers.current,
                    voice_command=self._voice_command,
                    voice_command_problem=self._voice_command_problem,
                    voice_retry_s=settings.mqtt.command_retry_s,
                    outcome_pool=database.relaxed_pool,
                )
                forwarding = ForwardingStage(
                    self.directory, owner=self.dispatcher.owner, lease_s=self.dispatcher.lease_s
                )
                supervising = settings.supervision.enabled
                supervision, crash_smash = ingest_stages(settings, self.directory)
                writer = IngestWriter(
                    pool,
                    duplicate_window_s=settings.dc09.duplicate_window_s,
                    forwarding=forwarding,
                    supervision=supervision,
                    crash_smash=crash_smash,
                    on_enqueued=self.dispatcher.wake,
                    on_leased=self.dispatcher.adopt,
                    on_blocked=self.dispatcher.blocked,
                    on_uncertain=self.dispatcher.uncertain,
                    clock=self._clock,
                )
                self.crash_smash_timer = CrashSmashTimer(
                    pool,
                    forwarding,
                    duplicate_window_s=settings.dc09.duplicate_window_s,
                    on_enqueued=self.dispatcher.wake,
                    clock=self._clock,
                    settle_s=settings.crash_smash.grace_s,
                )
                self.supervision_timer = SupervisionTimer(
                    pool,
                    forwarding,
                    duplicate_window_s=settings.dc09.duplicate_window_s,
                    max_sleep_s=settings.supervision.max_sleep_s,
                    on_enqueued=self.dispatcher.wake,
                    clock=self._clock,
                    settle_s=settings.supervision.grace_s,
                )
                self.pipeline = IngestPipeline(
                    writer,
                    batch_max=settings.database.commit_batch_max,
                    window_s=settings.database.commit_window_ms / 1000.0,
                    max_pending=settings.dc09.max_pending_commits,
                    probe=lambda: pool.fetchval("SELECT 1"),
                    writers=settings.database.commit_writers,
                    held_check=writer.held_accounts,
                )
                self.pipeline.start()
                self.dispatcher.start()
                if supervising:
                    self.supervision_timer.start()
                if settings.crash_smash.enabled:
                    self.crash_smash_timer.start()
                if settings.virtual.enabled:
                    self.virtual_modules = VirtualModules(
                        pool,
                        self.pipeline,
                        checkin_interval_s=settings.virtual.checkin_interval_s,
                        poll_s=settings.virtual.poll_s,
                        clock=self._clock,
                        known=lambda account: self.directory.get(account) is not None,
                    )
                    self.virtual_modules.start()

                self.dc09 = Dc09Server(
                    Dc09Handler(
                        sink=self.pipeline, directory=self.directory, config=self._receiver_config()
                    ),
                    host=settings.dc09.host,
                    port=settings.dc09.port,
                    max_connections=fit_max_connections(settings.dc09.max_connections),
                    idle_timeout_s=settings.dc09.idle_timeout_s,
                    rate_limit_per_s=settings.dc09.rate_limit_per_s,
                )
                await self.dc09.start()
                await self._start_mqtt()

                app = build_app(self._readiness, api_factory=self._api_factory(pool, receivers))
                self.http = HttpServer(app, host=settings.http.host, port=settings.http.port)
                await self.http.start()
                metrics.DATABASE_UP.set(1)
                log.info(
                    "engine_ready",
                    dc09_port=self.dc09.port,
                    http_port=self.http.port,
                    mqtt=settings.mqtt.enabled,
                    accounts=len(self.directory),
                    database="url" if settings.database.url else "embedded",
                )
                self.ready.set()
                tasks.append(asyncio.create_task(self._pool_metrics(pool), name="pool-metrics"))
                tasks.append(
                    asyncio.create_task(
                        # An error it does not expect would end partition creation and retention
                        # for good, silently: logged, counted and run again, as the other loops.
                        restart_on_failure(
                            "signal-maintenance",
                            lambda: run_maintenance(pool, settings),
                            pause_s=min(60.0, settings.retention.maintenance_interval_s),
                        ),
                        name="signal-maintenance",
                    )
                )
                await self.stop.wait()
            finally:
                log.info("engine_stopping")
                for task in tasks:
                    task.cancel()
                await self._shutdown()
                if self.supervision_timer is not None:
                    await self.supervision_timer.stop()
                if self.crash_smash_timer is not None:
                    await self.crash_smash_timer.stop()
                if self.dispatcher is not None:
                    await self.dispatcher.stop()
                await receivers.stop()
                await accounts_listener.stop()
        log.info("engine_stopped")

    def _api_factory(self, pool: asyncpg.Pool, receivers: ReceiverDirectory) -> AppFactory | None:
        """The admin API (``/v1``) around the health handlers, unless ``api.enabled`` is false.
        Station status shows this process's live receiver links (``receivers``)."""
        if not self.settings.api.enabled:
            return None
        settings = self.settings

        def factory(handlers: Sequence[Any]) -> Litestar:
            return create_app(
                pool=pool,
                extra_route_handlers=handlers,
                settings=settings,
                receiver_links=lambda: receivers.current().link_states(),
            )

        return factory

    async def _shutdown(self) -> None:
        if self.dc09 is not None:
            await self.dc09.stop_accepting()
        await self._stop_mqtt()
        if self.virtual_modules is not None:
            await self.virtual_modules.stop()  # before the pipeline closes: no request half-sent
        if self.dc09 is not None:
            await self.dc09.drain()
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.http is not None:
            await self.http.stop()

    def _receiver_config(self) -> ReceiverConfig:
        dc09 = self.settings.dc09
        window = TimestampWindow(past_s=dc09.timestamp_past_s, future_s=dc09.timestamp_future_s)
        self.directory.set_default_window(window)
        return ReceiverConfig(
            window=window,
            check_plain_timestamps=dc09.check_plain_timestamps,
            unknown_account_reply=Reply.NONE if dc09.unknown_account == "silent" else Reply.DUH,
            max_frame_bytes=dc09.max_frame_bytes,
        )

    async def _readiness(self) -> dict[str, bool]:
        checks = {
            "dc09": self.dc09 is not None and self.dc09.listening,
            "delivery": self.dispatcher is not None and self.dispatcher.running,
            "database": self.pipeline is not None
            and self.pipeline.healthy
            and await self._database_answers(),
        }
        if self.settings.mqtt.enabled:
            checks["mqtt"] = bool(getattr(self._mqtt, "connected", False))
        return checks

    async def _database_answers(self) -> bool:
        """One ``SELECT 1`` within 2 s: the pipeline learns of an outage only at its next commit."""
        if self.pool is None:
            return False
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2.0)
        except Exception as exc:
            log.warning("readiness_database_failed", error=repr(exc))
            return False
        return True

    async def _start_mqtt(self) -> None:
        mqtt = self.settings.mqtt
        if not mqtt.enabled or self.pipeline is None:
            return
        from engine.mqtt_listener import MqttListener  # noqa: PLC0415 - only when MQTT is on

        self._mqtt = MqttListener.from_settings(
            mqtt, sink=self.pipeline, resolver=self.directory.account_for_serial
        )
        self._mqtt_task = asyncio.create_task(self._mqtt.run(), name="mqtt-listener")

    def _voice_command_problem(self, account: str) -> str | None:
        """Why the module of ``account`` can never be sent a voice command, or None."""
        if not self.settings.mqtt.enabled:
            return "MQTT is disabled"
        row = self.directory.get(account)
        if row is None or not row.module_serial:
            return f"account {account} has no module serial for MQTT commands"
        return None

    async def _voice_command(self, account: str, signal_id: int, siren_off: bool) -> None:
        """Tell the module to open a two-way-voice session (with its siren off when an
        operator is known to be listening: the station ACKed the listen-in)."""
        from protocols.mqtt_payloads import StartVoiceSessionV1  # noqa: PLC0415

        # Checked before the listen-in too; the serial may have been removed since.
        problem = self._voice_command_problem(account)
        row = self.directory.get(account)
        if problem is not None or row is None or not row.module_serial:
            raise VoiceCommandImpossible(problem or f"account {account} has no module serial")
        if self._mqtt is None:  # a delivery claimed at start-up, before the MQTT client: retried
            raise RuntimeError("the MQTT client is not started yet")
        await self._mqtt.send_command(
            row.module_serial, StartVoiceSessionV1(siren_off=siren_off, signal_id=signal_id)
        )

    async def _stop_mqtt(self) -> None:
        if self._mqtt_task is None:
            return
        stop = getattr(self._mqtt, "stop", None)
        if stop is not None:
            await stop()
        self._mqtt_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._mqtt_task

    async def _pool_metrics(self, pool: asyncpg.Pool) -> None:
        """Every 5 s: the pool gauges, and whether the database answers at all. The pipeline
        learns of an outage only at its next commit, which with no signal coming in (a quiet
        night) is the first alarm after it: ``alarmrelay_database_up`` goes to 0 here first."""
        answering = True
        while True:
            metrics.DB_POOL_SIZE.set(pool.get_size())
            metrics.DB_POOL_IDLE.set(pool.get_idle_size())
            try:
                await asyncio.wait_for(pool.fetchval("SELECT 1"), 2.0)
            except DATABASE_ERRORS as exc:
                metrics.DATABASE_UP.set(0)
                if answering:
                    log.warning("database_not_answering", error=repr(exc))
                answering = False
            else:
                answering = True
                if self.pipeline is not None and self.pipeline.healthy:
                    metrics.DATABASE_UP.set(1)  # else the pipeline sets it once commits succeed
            await asyncio.sleep(5)

"""Station receivers that misbehave (real sockets): a NAK dated 9999, NAKs for everything, a
receiver that takes connections and never reads. Each costs an attempt, never the engine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from protocols.dc09_frame import encode_frame, encode_reply
from receivers.dc09_client import Dc09ReceiverClient, Dc09ReceiverPool
from receivers.receiver_group import ReceiverGroup
from tests.receivers.test_receiver_group import burglary, sample

Answer = Callable[[bytes], bytes | None]
WAIT_S = 10  # upper bound for anything awaited; never a pass/fail timing criterion


class FakeReceiver:
    """A TCP receiver that answers each frame with ``answer(frame)`` (None: no answer)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.frames = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while frame := await reader.readuntil(b"\r"):
                self.frames += 1
                reply = self.answer(frame)
                if reply is not None:
                    writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def nak_at(moment: datetime) -> Answer:
    def answer(_: bytes) -> bytes:
        return encode_frame(
            token="NAK", seq="0000", receiver="0", account="0", data="", timestamp=moment
        )

    return answer


def never(_: bytes) -> None:
    return None


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeReceiver]]:
    started: list[FakeReceiver] = []
    yield started
    for fake in started:
        await fake.stop()


def config(port: int, **extra: float) -> ReceiverConfig:
    return ReceiverConfig(name=f"rx-{port}", host="127.0.0.1", port=port, **extra)  # type: ignore[arg-type]


async def test_a_nak_dated_9999_fails_the_attempt_and_the_poller_does_not_spin(
    fakes: list[FakeReceiver],
) -> None:
    """The offset is not adopted (it would overflow every later frame); the attempt fails, the
    link is down, and the NULL poller backs off instead of holding the event loop."""
    fake = FakeReceiver(nak_at(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
    fakes.append(fake)
    client = Dc09ReceiverClient(
        config(await fake.start(), null_poll_interval_s=10.0, ack_timeout_s=1.0)
    )
    try:
        attempt = await client.send(account="1234", event=burglary(1))
        assert attempt.outcome == "failed" and "not adopted" in (attempt.error or "")
        assert not client.link_up
        client.start()
        before = fake.frames
        started = time.monotonic()
        late = 0.0
        while time.monotonic() - started < 2.0:  # the loop must stay responsive throughout
            tick = time.monotonic()
            await asyncio.sleep(0.05)
            late = max(late, time.monotonic() - tick - 0.05)
        assert late < 0.5
        assert fake.frames - before <= 6  # polls at 0.5, 1, 2 … s: a handful, not thousands
        assert (await client.send(account="1234", event=burglary(2))).outcome == "failed"
    finally:
        await client.close()


async def test_a_receiver_that_naks_everything_is_not_a_link_up(
    fakes: list[FakeReceiver],
) -> None:
    """NAK, clock adopted, NAK again: the attempt fails and the link is down (a group would
    otherwise fail back to it at once and flap)."""
    fake = FakeReceiver(lambda _: encode_frame(
        token="NAK", seq="0000", receiver="0", account="0", data="", timestamp=datetime.now(UTC)
    ))  # fmt: skip
    fakes.append(fake)
    client = Dc09ReceiverClient(config(await fake.start(), ack_timeout_s=1.0))
    try:
        attempt = await client.send(account="1234", event=burglary(1))
        assert (attempt.outcome, attempt.error) == ("failed", "NAK after clock correction")
        assert not client.link_up
    finally:
        await client.close()


async def test_deliveries_waiting_for_a_dead_primary_go_to_the_backup_on_failover(
    fakes: list[FakeReceiver],
) -> None:
    """A primary that accepts connections and never answers, one connection: five deliveries
    at once. The first times out and fails the group over; the four waiting for the primary's
    connection go to the backup then, not each after its own timeout. One failover counted."""
    dead = FakeReceiver(never)
    fakes.append(dead)
    primary = Dc09ReceiverPool(config(await dead.start(), ack_timeout_s=1.0), connections=1)
    backup_sim = StationSimulator()
    backup = Dc09ReceiverPool(config(await backup_sim.start()), connections=4)
    group = ReceiverGroup(primary, backup, failover_after=1)
    failovers = sample("alarmrelay_receiver_failovers_total", primary=primary.name)
    try:
        started = time.monotonic()
        attempts = await asyncio.wait_for(
            asyncio.gather(
                *(group.deliver(account="1234", event=burglary(z)) for z in range(1, 6))
            ),
            30,
        )
        took = time.monotonic() - started
        assert [(a.receiver, a.outcome) for a in attempts] == [(backup.name, "acked")] * 5
        assert dead.frames == 1  # only the first was ever sent to the primary
        # ... and its failure there travels with the backup's attempt (metrics, the log)
        first = attempts[0].failed_over_from
        assert first is not None and (first.receiver, first.outcome) == (primary.name, "failed")
        assert [a.failed_over_from for a in attempts[1:]] == [None] * 4
        assert took < 4.0  # one timeout (1 s), not five in a row
        assert sample("alarmrelay_receiver_failovers_total", primary=primary.name) == failovers + 1
        assert sorted(r.events[0].zone for r in backup_sim.received) == [1, 2, 3, 4, 5]
    finally:
        await primary.close()
        await backup.close()
        await backup_sim.stop()


class MutingProxy:
    """Forwards TCP to a receiver; ``mute()`` silently blackholes the connections open now (a
    NAT or firewall that dropped idle flows, a receiver that lost them without a FIN), while new
    connections are forwarded as usual."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: list[list[bool]] = []  # one [muted] flag per proxied connection
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    def mute(self) -> None:
        for flag in self._open:
            flag[0] = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        muted = [False]
        self._open.append(muted)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if not muted[0]:
                        dst.write(data)
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_every_connection_of_a_pool_is_supervised_by_null_polls() -> None:
    """PRODUCT.md: "NULL polls on every receiver connection". A connection that sat idle while
    its flow died silently is found by its own polls and replaced, so an alarm sent on it later
    is ACKed at once: it does not wait out an ACK timeout on a dead socket (and count towards
    a failover of a receiver that is up)."""
    station = StationSimulator()
    proxy = MutingProxy(await station.start())
    pool = Dc09ReceiverPool(
        config(await proxy.start(), null_poll_interval_s=0.3, ack_timeout_s=1.0), connections=2
    )
    try:
        pool.start()
        both = await asyncio.gather(*(pool.send(account="1234", event=burglary(z)) for z in (1, 2)))
        assert [a.outcome for a in both] == ["acked", "acked"]  # both connections open
        proxy.mute()  # every open flow dies silently
        await asyncio.sleep(3.0)  # polls at 0.3 s idle, their timeout (1 s), reconnect 0.5 s later
        again = await asyncio.gather(
            *(pool.send(account="1234", event=burglary(z)) for z in (3, 4))
        )
        assert [(a.outcome, a.error) for a in again] == [("acked", None), ("acked", None)]
    finally:
        await pool.close()
        await proxy.stop()
        await station.stop()


async def test_a_receiver_that_acks_with_another_seq_is_named_in_the_error(
    fakes: list[FakeReceiver],
) -> None:
    """A receiver that answers every frame with ``ACK`` for seq 0000 (its NULL polls then look
    fine) never answers ours: the attempt fails at the ACK timeout, and its error says what
    came instead, not only "no answer" (which sends the operator looking for a receiver that
    is down)."""
    fake = FakeReceiver(lambda _: encode_reply(token="ACK", seq="0000", account="1234"))
    fakes.append(fake)
    client = Dc09ReceiverClient(config(await fake.start(), ack_timeout_s=0.5))
    try:
        attempt = await client.send(account="1234", event=burglary(1), seq="0042")
        again = await client.send(account="1234", event=burglary(1), seq="0042")
    finally:
        await client.close()
    for failed in (attempt, again):
        assert failed.outcome == "failed"
        assert failed.error == (
            "no answer within the ACK timeout (the receiver answered ACK for seq 0000 instead)"
        )


async def test_a_connection_whose_flow_died_is_replaced_by_its_next_poll_at_once() -> None:
    """An idle connection's poll finds its flow dead (no answer) while the receiver is up: it
    polls again at once on a new connection and is up again, without waiting for a send (its
    failed poll said "link down" until then: with a long poll interval, a false "receiver
    down" alert)."""
    station = StationSimulator()
    proxy = MutingProxy(await station.start())
    pool = Dc09ReceiverPool(
        config(await proxy.start(), null_poll_interval_s=1.0, ack_timeout_s=0.3), connections=2
    )
    try:
        pool.start()
        both = await asyncio.gather(*(pool.send(account="1234", event=burglary(z)) for z in (1, 2)))
        assert [a.outcome for a in both] == ["acked", "acked"]
        proxy.mute()  # both flows die silently; the receiver is up
        second = pool.connections[1]
        async with asyncio.timeout(WAIT_S):
            await second.wait_for_link(False)  # its idle poll found the dead flow
            await second.wait_for_link(True)  # ... and the next one, at once, a new one
    finally:
        await pool.close()
        await proxy.stop()
        await station.stop()

"""Our DC-09 transmitter against station receivers: our simulator and pysiaalarm."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
import pytest
from prometheus_client import REGISTRY
from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.utils import CommunicationsProtocol

from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from protocols.categories import classify
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import Frame
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
)
from protocols.dc09_receiver import ReceiverConfig as Dc09RxConfig
from protocols.signal import Event, Family
from receivers import dc09_client
from receivers.dc09_client import Dc09ReceiverClient, Dc09ReceiverPool

WAIT_S = 10  # upper bound for anything awaited; never a pass/fail timing criterion

_names = iter(range(1_000_000))


def unique(name: str) -> str:
    """A receiver name of its own, so metric samples belong to one test."""
    return f"{name}-{next(_names)}"


def burglary(zone: int) -> Event:
    return Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=zone,
        partition=1,
        classification=classify(Family.CID, "130", "1"),
    )


def sia_event(code: str, zone: int) -> Event:
    return Event(
        family=Family.SIA,
        code=code,
        zone=zone,
        partition=1,
        classification=classify(Family.SIA, code),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def sim() -> AsyncIterator[StationSimulator]:
    station = StationSimulator()
    await station.start()
    yield station
    await station.stop()


ClientFactory = Callable[..., Dc09ReceiverClient]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Clients for a receiver at 127.0.0.1:port, closed after the test."""
    clients: list[Dc09ReceiverClient] = []

    def make(port: int, **fields: Any) -> Dc09ReceiverClient:
        fields.setdefault("name", unique("rx"))
        client = Dc09ReceiverClient(ReceiverConfig(host="127.0.0.1", port=port, **fields))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


class TestAck:
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    async def test_ack(
        self, sim: StationSimulator, make_client: ClientFactory, protocol: str
    ) -> None:
        """An event is ACKed over TCP and UDP and arrives with the station account, R and L."""
        client = make_client(sim.port, protocol=protocol, receiver_number="2", line_prefix="5")
        attempt = await client.send(account="4321", event=burglary(3), seq="0100")
        [got] = await sim.wait_for(1, WAIT_S)
        assert (attempt.outcome, attempt.seq, attempt.family_sent) == ("acked", "0100", "cid")
        assert attempt.sent_at is not None
        assert attempt.acked_at is not None
        assert (got.account, got.receiver, got.line, got.seq, got.token) == (
            "4321",
            "2",
            "5",
            "0100",
            "ADM-CID",
        )
        assert [(e.code, e.zone) for e in got.events] == [("130", 3)]
        assert client.link_up

    async def test_own_sequence_numbers(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """Without a seq the connection numbers its frames 0001, 0002, …; L defaults to 0."""
        client = make_client(sim.port)
        seqs = [(await client.send(account="1", event=burglary(z))).seq for z in (1, 2, 3)]
        await sim.wait_for(3, WAIT_S)
        assert seqs == ["0001", "0002", "0003"]
        assert [(r.seq, r.line, r.receiver) for r in sim.received] == [
            ("0001", "0", None),
            ("0002", "0", None),
            ("0003", "0", None),
        ]

    async def test_concurrent_callers_queue(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """Concurrent sends on one connection go one at a time, in call order, all ACKed."""
        sim.set_mode("delay", delay_ms=20)
        client = make_client(sim.port)
        attempts = await asyncio.gather(
            *(client.send(account="1", event=burglary(z), seq=f"{z:04d}") for z in range(1, 6))
        )
        assert [a.outcome for a in attempts] == ["acked"] * 5
        assert [r.seq for r in sim.received] == ["0001", "0002", "0003", "0004", "0005"]
        assert len({r.peer for r in sim.received}) == 1  # one persistent connection

    @pytest.mark.parametrize("families", ["cid", "sia"])
    async def test_lower_case_station_account_is_sent_upper_case(
        self, sim: StationSimulator, make_client: ClientFactory, families: str
    ) -> None:
        """A station account stored in lower case (accounts imported before it was kept upper
        case) is the same hex account: it goes out as C12AB and is ACKed, rather than every
        delivery for it being dead-lettered as unsendable."""
        client = make_client(sim.port, families=families)
        attempt = await client.send(account="c12ab", event=burglary(2), seq="0007")
        [got] = await sim.wait_for(1, WAIT_S)
        assert (attempt.outcome, attempt.error) == ("acked", None)
        assert (got.account, [e.zone for e in got.events]) == ("C12AB", [2])


class TestFamilies:
    async def test_sia_event_converted_for_cid_only_receiver(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A CID-only receiver gets a SIA burglary alarm as Contact ID 130 (new event)."""
        client = make_client(sim.port, families="cid")
        attempt = await client.send(account="77", event=sia_event("BA", 4))
        [got] = await sim.wait_for(1, WAIT_S)
        assert (attempt.outcome, attempt.family_sent, attempt.note) == ("acked", "cid", None)
        assert got.token == "ADM-CID"
        assert [(e.family, e.code, e.qualifier, e.zone) for e in got.events] == [
            ("cid", "130", "1", 4)
        ]

    async def test_cid_event_converted_for_sia_only_receiver(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A SIA-only receiver gets a Contact ID burglary alarm as SIA BA."""
        client = make_client(sim.port, families="sia")
        attempt = await client.send(account="77", event=burglary(6))
        [got] = await sim.wait_for(1, WAIT_S)
        assert attempt.family_sent == "sia"
        assert got.token == "SIA-DCS"
        assert [(e.family, e.code, e.zone) for e in got.events] == [("sia", "BA", 6)]

    async def test_unconvertible_event_sent_in_own_family_with_note(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A SIA code without a Contact ID equivalent goes as SIA to a CID-only receiver, noted."""
        client = make_client(sim.port, families="cid")
        attempt = await client.send(account="77", event=sia_event("XW", 1))
        [got] = await sim.wait_for(1, WAIT_S)
        assert (attempt.outcome, attempt.family_sent) == ("acked", "sia")
        assert attempt.note is not None
        assert "XW" in attempt.note
        assert got.token == "SIA-DCS"

    async def test_a_contact_id_zone_over_999_goes_as_sia_where_the_receiver_takes_sia(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """Contact ID 130 on zone 1234 (an MQTT module's numbering) to a receiver taking both
        families: sent as SIA BA1234, noted. (It went out as zone 234: the wrong zone.)"""
        client = make_client(sim.port, families="both")
        attempt = await client.send(account="77", event=burglary(1234))
        [got] = await sim.wait_for(1, WAIT_S)
        assert (attempt.outcome, attempt.family_sent) == ("acked", "sia")
        assert attempt.note is not None
        assert "1234" in attempt.note
        assert [(e.family, e.code, e.zone) for e in got.events] == [("sia", "BA", 1234)]

    async def test_a_contact_id_only_receiver_gets_no_zone_rather_than_a_wrong_one(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """The same alarm to a Contact ID-only receiver: 130 with zone 000 ("none"), noted; a SIA
        alarm on zone 1234 goes unconverted (SIA) with a note."""
        client = make_client(sim.port, families="cid")
        first = await client.send(account="77", event=burglary(1234))
        second = await client.send(account="77", event=sia_event("BA", 1234))
        await sim.wait_for(2, WAIT_S)
        assert (first.outcome, first.family_sent, second.family_sent) == ("acked", "cid", "sia")
        assert first.note is not None
        assert second.note is not None
        assert "1234" in first.note
        assert "1234" in second.note
        assert [
            (e.family, e.code, e.zone, e.partition) for r in sim.received for e in r.events
        ] == [
            ("cid", "130", None, 1),
            ("sia", "BA", 1234, 1),
        ]

    async def test_both_families_sent_as_is(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A receiver accepting both families gets each event in its own family."""
        client = make_client(sim.port, families="both")
        await client.send(account="77", event=sia_event("BA", 1))
        await client.send(account="77", event=burglary(2))
        await sim.wait_for(2, WAIT_S)
        assert [r.token for r in sim.received] == ["SIA-DCS", "ADM-CID"]


class TestEncryption:
    @pytest.mark.parametrize(
        ("key_text", "key_format", "protocol"),
        [
            ("00112233445566778899AABBCCDDEEFF", "hex", "tcp"),
            ("00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF", "hex", "tcp"),
            ("1234567890123456", "ascii", "tcp"),
            ("0123456789ABCDEF0123456789ABCDEF", "ascii", "tcp"),
            ("00112233445566778899AABBCCDDEEFF", "hex", "udp"),
        ],
        ids=["aes128-hex", "aes256-hex", "aes128-ascii", "aes256-ascii", "aes128-hex-udp"],
    )
    async def test_encrypted_ack(
        self,
        make_client: ClientFactory,
        key_text: str,
        key_format: Literal["hex", "ascii"],
        protocol: str,
    ) -> None:
        """AES-128 and AES-256 keys, hex and ASCII, reach an encrypting station and are *ACKed."""
        station = StationSimulator(key=AesKey.parse(key_text, key_format))
        port = await station.start()
        try:
            client = make_client(port, key=key_text, key_format=key_format, protocol=protocol)
            attempt = await client.send(account="4321", event=burglary(7))
            [got] = await station.wait_for(1, WAIT_S)
        finally:
            await station.stop()
        assert attempt.outcome == "acked"
        assert got.encrypted
        assert [(e.code, e.zone) for e in got.events] == [("130", 7)]

    async def test_wrong_key_is_not_acked(self, make_client: ClientFactory) -> None:
        """A station holding another key cannot read our frame and DUHs it (no ACK)."""
        station = StationSimulator(key=AesKey.parse("FFEEDDCCBBAA99887766554433221100", "hex"))
        port = await station.start()
        try:
            client = make_client(port, key="00112233445566778899AABBCCDDEEFF", ack_timeout_s=0.5)
            attempt = await client.send(account="4321", event=burglary(7))
        finally:
            await station.stop()
        assert attempt.outcome == "duh"
        assert station.received == []
        assert station.rejected == 1

    def test_repr_hides_key(self) -> None:
        """The receiver's repr does not show its key."""
        config = ReceiverConfig(name="rx", host="h", port=1, key="00112233445566778899AABBCCDDEEFF")
        assert "0011" not in repr(config)


class TestReplies:
    async def test_nak_adopts_station_clock_and_resends_same_seq(
        self, make_client: ClientFactory
    ) -> None:
        """A station an hour ahead NAKs our time; we adopt its clock and the resend is ACKed."""
        station = StationSimulator(clock_skew_s=3600)
        port = await station.start()
        try:
            client = make_client(port)
            attempt = await client.send(account="4321", event=burglary(1), seq="0042")
            [got] = await station.wait_for(1, WAIT_S)
        finally:
            await station.stop()
        assert (attempt.outcome, attempt.seq) == ("acked", "0042")
        assert station.rejected == 1  # the first copy, NAKed for its timestamp
        assert got.seq == "0042"
        assert abs(client.clock_offset - timedelta(hours=1)) < timedelta(minutes=1)
        assert got.timestamp is not None
        assert abs(got.timestamp - station.now()) < timedelta(minutes=1)

    async def test_nak_twice_fails(self, sim: StationSimulator, make_client: ClientFactory) -> None:
        """A station that NAKs the corrected resend too: failed, after exactly one resend."""
        sim.set_mode("nak")
        client = make_client(sim.port)
        attempt = await client.send(account="4321", event=burglary(1), seq="0043")
        assert attempt.outcome == "failed"
        assert attempt.error is not None
        assert "NAK" in attempt.error
        assert [(r.seq, r.reply) for r in sim.received] == [("0043", "nak"), ("0043", "nak")]

    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    async def test_duh(
        self, sim: StationSimulator, make_client: ClientFactory, protocol: str
    ) -> None:
        """A DUH is reported as 'duh' (the caller dead-letters), not as a failure, and not resent."""
        sim.set_mode("duh")
        client = make_client(sim.port, protocol=protocol)
        attempt = await client.send(account="4321", event=burglary(1), seq="0044")
        assert (attempt.outcome, attempt.seq) == ("duh", "0044")
        assert [r.seq for r in sim.received] == ["0044"]
        assert client.link_up  # the station answered: the link is fine


class TestRetries:
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    async def test_drop_then_retry_keeps_seq(
        self, sim: StationSimulator, make_client: ClientFactory, protocol: str
    ) -> None:
        """No answer: failed with the seq used; the retry with that seq is ACKed once it answers."""
        sim.set_mode("drop")
        client = make_client(sim.port, protocol=protocol, ack_timeout_s=0.3)
        first = await client.send(account="4321", event=burglary(4))
        assert first.outcome == "failed"
        assert first.error is not None
        assert not client.link_up
        sim.set_mode("ack")
        second = await client.send(account="4321", event=burglary(4), seq=first.seq)
        assert second.outcome == "acked"
        assert [r.seq for r in sim.received] == [first.seq, first.seq]

    async def test_station_down_fails(self, make_client: ClientFactory) -> None:
        """Nothing listening: the attempt fails with a connection error and the link is down."""
        client = make_client(free_port(), ack_timeout_s=1)
        attempt = await client.send(account="4321", event=burglary(4), seq="0007")
        assert (attempt.outcome, attempt.seq) == ("failed", "0007")
        assert attempt.error is not None
        assert not client.link_up

    async def test_reconnects_after_station_restart(self, make_client: ClientFactory) -> None:
        """The station restarts: the send while it is down fails, the next one reconnects and is ACKed."""
        station = StationSimulator()
        port = await station.start()
        client = make_client(port, ack_timeout_s=1)
        assert (await client.send(account="1", event=burglary(1))).outcome == "acked"
        await station.stop()
        down = await client.send(account="1", event=burglary(2))
        restarted = StationSimulator(port=port)
        await restarted.start()
        try:
            retry = await client.send(account="1", event=burglary(2), seq=down.seq)
            after = await client.send(account="1", event=burglary(3))
            await restarted.wait_for(2, WAIT_S)
        finally:
            await restarted.stop()
        assert down.outcome == "failed"
        assert (retry.outcome, after.outcome) == ("acked", "acked")
        assert [r.seq for r in restarted.received] == [down.seq, after.seq]

    async def test_restart_between_sends_costs_no_attempt(self, make_client: ClientFactory) -> None:
        """A station that restarted while we were idle: the next send reconnects first and is ACKed."""
        station = StationSimulator()
        port = await station.start()
        client = make_client(port, ack_timeout_s=1)
        assert (await client.send(account="1", event=burglary(1))).outcome == "acked"
        await station.stop()
        restarted = StationSimulator(port=port)
        await restarted.start()
        try:
            attempt = await client.send(account="1", event=burglary(2))
        finally:
            await restarted.stop()
        assert attempt.outcome == "acked"


class TestLinkPolls:
    async def test_null_polls_track_link(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """NULL polls bring the link up, mark it down when unanswered, and up again on recovery."""
        client = make_client(sim.port, null_poll_interval_s=0.1, ack_timeout_s=0.2)
        name = client.name
        client.start()
        async with asyncio.timeout(WAIT_S):
            await client.wait_for_link(True)
            assert sample("alarmrelay_receiver_link_up", receiver=name) == 1
            sim.set_mode("drop")
            await client.wait_for_link(False)
            assert sample("alarmrelay_receiver_link_up", receiver=name) == 0
            sim.set_mode("ack")
            await client.wait_for_link(True)
        assert sim.polls >= 2
        assert sim.received == []  # NULLs are not recorded as events
        assert sample("alarmrelay_receiver_polls_total", receiver=name, result="ok") >= 2
        assert sample("alarmrelay_receiver_polls_total", receiver=name, result="failed") >= 1

    async def test_polls_carry_the_receivers_poll_account(self, make_client: ClientFactory) -> None:
        """A receiver that ignores accounts it does not know (a Bosch D6600 needs each account
        created first) never answered polls from 0000: the link stayed down for ever. The polls
        carry the receiver's ``poll_account`` (upper case, as DC-09 writes accounts)."""
        station = StationSimulator(include_nulls=True)
        port = await station.start()
        try:
            client = make_client(port, null_poll_interval_s=0.1, poll_account="a1b2")
            assert await client.poll()
        finally:
            await station.stop()
        assert [(r.token, r.account) for r in station.received] == [("NULL", "A1B2")]

    async def test_polls_reconnect_after_station_returns(self, make_client: ClientFactory) -> None:
        """With the station gone the link goes down; when it is back, polls reconnect on their own."""
        station = StationSimulator()
        port = await station.start()
        client = make_client(port, null_poll_interval_s=0.1, ack_timeout_s=0.5)
        client.start()
        async with asyncio.timeout(WAIT_S):
            await client.wait_for_link(True)
            await station.stop()
            await client.wait_for_link(False)
            restarted = StationSimulator(port=port)
            await restarted.start()
            try:
                await client.wait_for_link(True)
            finally:
                await restarted.stop()
        assert restarted.polls >= 1


class TestPool:
    async def test_link_state_follows_latest_exchange(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A pool is down when its latest exchange failed, even if an idle connection last saw it up."""
        pool = Dc09ReceiverPool(
            ReceiverConfig(name=unique("pool"), host="127.0.0.1", port=sim.port, ack_timeout_s=0.3),
            connections=2,
        )
        try:
            attempts = await asyncio.gather(
                pool.send(account="1", event=burglary(1)), pool.send(account="1", event=burglary(2))
            )
            assert [a.outcome for a in attempts] == ["acked", "acked"]
            assert all(c.link_up for c in pool.connections)
            sim.set_mode("drop")
            failed = await pool.send(account="1", event=burglary(3))
            assert failed.outcome == "failed"
            assert [c.link_up for c in pool.connections] == [False, True]
            assert not pool.link_up
        finally:
            await pool.close()


def _pysia_quirk_free_receiver(port: int, key: str | None, families: str) -> ReceiverConfig:
    # With an R field pysiaalarm echoes it; without one its ACK carries a literal "None"
    # (PROTOCOLS.md §1.10, home-assistant/core#180511), which is not a valid frame.
    return ReceiverConfig(
        name=unique("pysia"),
        host="127.0.0.1",
        port=port,
        key=key,
        key_format="ascii",
        families=families,  # type: ignore[arg-type]  # parametrized with valid values
        ack_timeout_s=3,
        receiver_number="1",
    )


class _PysiaStation:
    """pysiaalarm's asyncio TCP server as the station receiver, collecting its events."""

    def __init__(self, key: str | None) -> None:
        self.port = free_port()
        self.events: list[Any] = []
        self.got = asyncio.Event()
        self.client = SIAClient(
            "127.0.0.1",
            self.port,
            [SIAAccount("4321", key)],
            function=self._on_event,
            protocol=CommunicationsProtocol.TCP,
        )

    async def _on_event(self, event: Any) -> None:
        self.events.append(event)
        self.got.set()


class TestAgainstPysiaalarm:
    @pytest.mark.parametrize(
        ("key", "families", "expected"),
        [
            (None, "sia", ("SIA-DCS", "BA")),
            (None, "cid", ("ADM-CID", "1130")),
            ("A1B2C3D4E5F60718", "sia", ("SIA-DCS", "BA")),
            ("A1B2C3D4E5F60718A1B2C3D4E5F60718", "sia", ("SIA-DCS", "BA")),
            ("A1B2C3D4E5F60718", "cid", ("ADM-CID", "1130")),
        ],
        ids=["plain-sia", "plain-cid", "aes128-sia", "aes256-sia", "aes128-cid"],
    )
    async def test_pysiaalarm_receives_our_frames(
        self, key: str | None, families: str, expected: tuple[str, str]
    ) -> None:
        """pysiaalarm as the station receiver gets our event with the right code and account,
        and its (*)ACK is accepted by us."""
        station = _PysiaStation(key)
        async with station.client:
            client = Dc09ReceiverClient(_pysia_quirk_free_receiver(station.port, key, families))
            try:
                attempt = await client.send(account="4321", event=burglary(6))
                await asyncio.wait_for(station.got.wait(), WAIT_S)
            finally:
                await client.close()
        assert attempt.outcome == "acked", attempt
        event = station.events[0]
        token = event.message_type.value
        # pysiaalarm keeps a Contact ID's qualifier and event code apart (and maps them to a SIA
        # code of its own); compare what was on the wire.
        code = event.event_qualifier + event.event_type if token == "ADM-CID" else event.code
        assert (token, code, event.account) == (*expected, "4321")

    async def test_pysiaalarm_ack_without_r_is_refused(self) -> None:
        """Without R, pysiaalarm's ACK reads R as 'None' (§1.10): not a valid reply, so not 'acked'."""
        station = _PysiaStation(None)
        async with station.client:
            client = Dc09ReceiverClient(
                ReceiverConfig(
                    name=unique("pysia"), host="127.0.0.1", port=station.port, ack_timeout_s=1
                )
            )
            try:
                attempt = await client.send(account="4321", event=burglary(6))
                await asyncio.wait_for(station.got.wait(), WAIT_S)
            finally:
                await client.close()
        assert attempt.outcome == "failed"
        assert station.events  # pysiaalarm did take the event; only its reply is malformed


class ScriptedStation:
    """A small TCP station whose answer to each frame is a test's ``script``.

    ``script(conn, frame, writer)`` writes whatever it likes (ACKs for other seqs, nothing, its
    own ACK later) and may close or reset the connection; frames are decoded by our receiver.
    """

    def __init__(
        self,
        script: Callable[[Dc09ReceiverConnection, Frame, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        self.script = script
        self.frames: list[Frame] = []
        self.peers: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedStation:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Dc09ReceiverConnection(Dc09RxConfig(), _AnyAccount())
        self.peers.append("{}:{}".format(*writer.get_extra_info("peername")[:2]))
        try:
            while data := await reader.read(4096):
                for event in conn.receive_data(data, now=datetime.now(UTC)):
                    assert isinstance(event, FrameReceived), event
                    self.frames.append(event.frame)
                    await self.script(conn, event.frame, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


class _AnyAccount:
    def lookup(self, account: str) -> AccountCrypto | None:
        return AccountCrypto()


def ack_for(conn: Dc09ReceiverConnection, frame: Frame, seq: str | None = None) -> bytes:
    """The receiver's ACK of ``frame`` (or of the same frame with another ``seq``)."""
    if seq is not None:
        frame = msgspec.structs.replace(frame, seq=seq)
    return conn.ack(frame, now=datetime.now(UTC))


def pending_timeouts(client: Dc09ReceiverClient) -> int:
    """ACK-timeout timers of this client still armed (asyncio's loop keeps them in _scheduled)."""
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", [])
    return sum(1 for h in scheduled if not h.cancelled() and h._callback is dc09_client._expire)


class TestProtocolExchange:
    async def test_timeout_timer_cancelled_on_reply(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """An answered frame leaves no ACK-timeout timer armed: waiting past the timeout later
        neither fails anything nor drops the connection."""
        client = make_client(sim.port, ack_timeout_s=0.2)
        assert (await client.send(account="1", event=burglary(1))).outcome == "acked"
        assert pending_timeouts(client) == 0
        await asyncio.sleep(0.4)  # past the first frame's ACK timeout
        assert client.link_up
        assert (await client.send(account="1", event=burglary(2))).outcome == "acked"
        assert len({r.peer for r in sim.received}) == 1  # the same connection throughout

    async def test_late_reply_to_earlier_frame_is_ignored(self, make_client: ClientFactory) -> None:
        """A reply to an earlier seq, before ours, does not answer our frame: we keep waiting."""

        async def stale_then_ours(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(ack_for(conn, frame, seq="0001"))  # a late ACK of frame 0001
            await asyncio.sleep(0.05)
            writer.write(ack_for(conn, frame))

        async with ScriptedStation(stale_then_ours) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            attempt = await client.send(account="4321", event=burglary(1), seq="0002")
        assert (attempt.outcome, attempt.seq) == ("acked", "0002")
        assert [f.seq for f in station.frames] == ["0002"]

    async def test_duplicate_reply_between_frames_is_dropped(
        self, make_client: ClientFactory
    ) -> None:
        """An ACK arriving while nothing is outstanding is dropped, not taken by the next frame."""

        async def ack_twice_then_late(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            if frame.seq == "0001":
                writer.write(ack_for(conn, frame))
                await asyncio.sleep(0.05)
                writer.write(ack_for(conn, frame))  # a duplicate, after we moved on
            else:
                await asyncio.sleep(0.1)
                writer.write(ack_for(conn, frame))

        async with ScriptedStation(ack_twice_then_late) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            first = await client.send(account="1", event=burglary(1), seq="0001")
            await asyncio.sleep(0.1)  # the duplicate arrives while idle
            second = await client.send(account="1", event=burglary(2), seq="0002")
        assert (first.outcome, second.outcome) == ("acked", "acked")
        assert second.acked_at is not None and second.sent_at is not None
        assert second.acked_at - second.sent_at >= timedelta(milliseconds=90)  # its own ACK

    async def test_reply_with_our_seq_but_other_account_fails(
        self, make_client: ClientFactory
    ) -> None:
        """An ACK with our seq for another account is a mismatch: failed, with the reason."""

        async def wrong_account(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(ack_for(conn, msgspec.structs.replace(frame, account="9999")))

        async with ScriptedStation(wrong_account) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            attempt = await client.send(account="4321", event=burglary(1), seq="0005")
        assert attempt.outcome == "failed"
        assert attempt.error is not None and "account" in attempt.error

    @pytest.mark.parametrize("how", ["close", "reset"])
    async def test_connection_lost_mid_wait(self, make_client: ClientFactory, how: str) -> None:
        """The station closes (or resets) the connection instead of answering: the attempt fails
        at once, not at the ACK timeout, the link is down, and the next send reconnects."""
        lose = True

        async def drop_first(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            nonlocal lose
            if not lose:
                writer.write(ack_for(conn, frame))
                return
            lose = False
            await asyncio.sleep(0.05)
            if how == "reset":
                writer.transport.abort()
            else:
                writer.close()

        async with ScriptedStation(drop_first) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            loop = asyncio.get_running_loop()
            started = loop.time()
            failed = await client.send(account="1", event=burglary(1))
            took = loop.time() - started
            assert not client.link_up
            assert pending_timeouts(client) == 0
            retry = await client.send(account="1", event=burglary(1), seq=failed.seq)
        assert failed.outcome == "failed"
        assert failed.error is not None
        assert took < WAIT_S / 2  # the loss ended the wait, not the timer
        assert (retry.outcome, retry.seq) == ("acked", failed.seq)
        assert client.link_up
        assert len(station.peers) == 2  # reconnected

    async def test_station_closes_idle_connection(self, make_client: ClientFactory) -> None:
        """The station closes the connection after answering; the next send reconnects first."""

        async def ack_and_close(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            writer.write(ack_for(conn, frame))
            await writer.drain()
            writer.close()

        async with ScriptedStation(ack_and_close) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            first = await client.send(account="1", event=burglary(1))
            await asyncio.sleep(0.1)  # the close arrives while idle
            second = await client.send(account="1", event=burglary(2))
        assert (first.outcome, second.outcome) == ("acked", "acked")
        assert len(station.peers) == 2

    async def test_close_fails_the_outstanding_frame(self, make_client: ClientFactory) -> None:
        """Closing the client while a frame waits for its ACK fails that attempt at once."""

        async def never(
            conn: Dc09ReceiverConnection, frame: Frame, writer: asyncio.StreamWriter
        ) -> None:
            pass

        async with ScriptedStation(never) as station:
            client = make_client(station.port, ack_timeout_s=WAIT_S)
            sending = asyncio.create_task(client.send(account="1", event=burglary(1)))
            async with asyncio.timeout(WAIT_S):
                while not station.frames:
                    await asyncio.sleep(0.01)
            assert pending_timeouts(client) == 1  # the helper sees the armed timer
            await client.close()
            attempt = await asyncio.wait_for(sending, WAIT_S / 2)
        assert attempt.outcome == "failed"
        assert pending_timeouts(client) == 0

    async def test_cancelled_send_leaves_connection_usable(
        self, sim: StationSimulator, make_client: ClientFactory
    ) -> None:
        """A caller cancelled while waiting for its ACK frees the connection; its late ACK is
        dropped and the next frame gets its own."""
        sim.set_mode("delay", delay_ms=200)
        client = make_client(sim.port, ack_timeout_s=WAIT_S)
        sending = asyncio.create_task(client.send(account="1", event=burglary(1), seq="0001"))
        await asyncio.sleep(0.05)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert pending_timeouts(client) == 0
        sim.set_mode("ack", delay_ms=0)
        attempt = await client.send(account="1", event=burglary(2), seq="0002")
        assert (attempt.outcome, attempt.seq) == ("acked", "0002")


class TestPoolScheduling:
    async def test_frames_without_a_seq_are_numbered_once_per_receiver(
        self, sim: StationSimulator
    ) -> None:
        """Frames sent without a seq of their own (listen-ins after two-way-voice alarms) are
        numbered by the receiver, not per connection: two sent at once on two connections do
        not both say 0001 (a station that deduplicates on account, seq and data, §1.5, would
        drop the second listen-in for the same zone as a copy of the first)."""
        sim.set_mode("delay", delay_ms=50)
        pool = Dc09ReceiverPool(
            ReceiverConfig(name=unique("pool"), host="127.0.0.1", port=sim.port), connections=2
        )
        try:
            attempts = await asyncio.gather(
                *(pool.send(account="1234", event=burglary(5)) for _ in range(2))
            )
        finally:
            await pool.close()
        assert [a.outcome for a in attempts] == ["acked", "acked"]
        assert len({r.peer for r in sim.received}) == 2  # one on each connection
        assert attempts[0].seq != attempts[1].seq

    async def test_all_busy_waits_for_first_free(self, sim: StationSimulator) -> None:
        """More callers than connections: each waits for the first connection to be free; all
        are ACKed over exactly that many connections."""
        sim.set_mode("delay", delay_ms=20)
        pool = Dc09ReceiverPool(
            ReceiverConfig(name=unique("pool"), host="127.0.0.1", port=sim.port), connections=2
        )
        try:
            attempts = await asyncio.gather(
                *(pool.send(account="1", event=burglary(z)) for z in range(1, 9))
            )
        finally:
            await pool.close()
        assert [a.outcome for a in attempts] == ["acked"] * 8
        assert len({r.peer for r in sim.received}) == 2

    async def test_cancelled_waiter_does_not_lose_a_connection(self, sim: StationSimulator) -> None:
        """A caller cancelled while waiting for a connection gives nothing up: later sends run."""
        sim.set_mode("delay", delay_ms=100)
        pool = Dc09ReceiverPool(
            ReceiverConfig(name=unique("pool"), host="127.0.0.1", port=sim.port), connections=1
        )
        try:
            first = asyncio.create_task(pool.send(account="1", event=burglary(1)))
            await asyncio.sleep(0)
            waiting = asyncio.create_task(pool.send(account="1", event=burglary(2)))
            third = asyncio.create_task(pool.send(account="1", event=burglary(3)))
            await asyncio.sleep(0.02)
            waiting.cancel()
            done = await asyncio.wait_for(asyncio.gather(first, third), WAIT_S)
            with pytest.raises(asyncio.CancelledError):
                await waiting
            sim.set_mode("ack", delay_ms=0)
            after = await asyncio.wait_for(pool.send(account="1", event=burglary(4)), WAIT_S)
        finally:
            await pool.close()
        assert [a.outcome for a in done] == ["acked", "acked"]
        assert after.outcome == "acked"
        assert [e.zone for r in sim.received for e in r.events] == [1, 3, 4]

    async def test_polling_connection_is_skipped(self, sim: StationSimulator) -> None:
        """While connection 0 has a NULL poll out, a send takes the next idle connection."""
        sim.set_mode("drop")  # the poll stays unanswered until its timeout
        pool = Dc09ReceiverPool(
            ReceiverConfig(
                name=unique("pool"), host="127.0.0.1", port=sim.port, ack_timeout_s=WAIT_S
            ),
            connections=2,
        )
        try:
            polling = asyncio.create_task(pool.poll())
            async with asyncio.timeout(WAIT_S):
                await sim.wait_for_polls(1)
            sim.set_mode("ack")
            attempt = await asyncio.wait_for(pool.send(account="1", event=burglary(1)), WAIT_S / 2)
            polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
        finally:
            await pool.close()
        assert attempt.outcome == "acked"
        assert pool.connections[1].link_up


class TestUdpRefused:
    async def test_a_udp_receiver_with_nothing_listening_fails_at_once(
        self, make_client: ClientFactory
    ) -> None:
        """The host answers the datagram with ICMP port unreachable: the attempt fails then,
        with the reason, instead of waiting out the ACK timeout (the group's failover and the
        alarm's retry come that much sooner)."""
        client = make_client(free_port(), protocol="udp", ack_timeout_s=WAIT_S)
        started = asyncio.get_running_loop().time()
        attempt = await client.send(account="1234", event=burglary(1))
        took = asyncio.get_running_loop().time() - started
        assert attempt.outcome == "failed"
        assert "ConnectionRefused" in (attempt.error or ""), attempt.error
        assert took < WAIT_S / 2
        assert not client.link_up


class TestBadHost:
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    async def test_a_host_name_no_resolver_takes_is_a_failed_attempt(
        self, make_client: ClientFactory, protocol: str
    ) -> None:
        """A receiver host with an empty label (a typo such as ``station..example.com``) cannot
        even be looked up: each attempt fails with that reason (retried, counted, the group may
        fail over), and a NULL poll fails too, instead of an exception escaping to the
        dispatcher (a traceback per retry) and to the poller."""
        client = make_client(1234, protocol=protocol, ack_timeout_s=2.0)
        client = Dc09ReceiverClient(
            msgspec.structs.replace(client.config, host="station..example.com")
        )
        try:
            attempt = await client.send(account="1234", event=burglary(1))
            polled = await client.poll()
        finally:
            await client.close()
        assert attempt.outcome == "failed"
        assert "station..example.com" in (attempt.error or ""), attempt.error
        assert polled is False
        assert not client.link_up

    async def test_a_host_that_does_not_resolve_is_named_in_the_error(
        self, make_client: ClientFactory
    ) -> None:
        """A host the resolver does not find (here a stray leading space from a copy and paste)
        is named, quoted, in the attempt's error, not only "Name or service not known"."""
        client = make_client(1234, ack_timeout_s=2.0)
        client = Dc09ReceiverClient(msgspec.structs.replace(client.config, host=" 127.0.0.1"))
        try:
            attempt = await client.send(account="1234", event=burglary(1))
        finally:
            await client.close()
        assert attempt.outcome == "failed"
        assert (attempt.error or "").startswith("receiver host ' 127.0.0.1' not found: ")

"""Our DC-09 transmitter against station receivers: our simulator and pysiaalarm."""

from __future__ import annotations

import asyncio
import socket

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.utils import CommunicationsProtocol

from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from protocols.categories import classify
from protocols.dc09_crypto import AesKey
from protocols.signal import Event, Family
from receivers.dc09_client import Dc09ReceiverClient
from receivers.receiver_group import ReceiverGroup


def burglary(zone: int) -> Event:
    return Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=zone,
        partition=1,
        classification=classify(Family.CID, "130", "1"),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestAgainstSimulator:
    @pytest.mark.parametrize("protocol", ["tcp", "udp"])
    async def test_ack(self, protocol: str) -> None:
        """An event is ACKed over TCP and UDP and arrives with our R and L."""
        sim = StationSimulator()
        port = await sim.start()
        client = Dc09ReceiverClient(
            ReceiverConfig(
                name="rx",
                host="127.0.0.1",
                port=port,
                protocol=protocol,
                receiver_number="2",
                line_prefix="5",
            )  # type: ignore[arg-type]
        )
        try:
            attempt = await client.send(account="4321", event=burglary(3), seq="0100")
            [got] = await sim.wait_for(1)
        finally:
            await client.close()
            await sim.stop()
        assert (attempt.outcome, attempt.seq, attempt.family_sent) == ("acked", "0100", "cid")
        assert (got.account, got.receiver, got.line, got.seq) == ("4321", "2", "5", "0100")

    async def test_drop_then_retry_keeps_seq(self) -> None:
        """No answer: failed; the retry with the same seq is ACKed once the station answers."""
        sim = StationSimulator(mode="drop")
        port = await sim.start()
        client = Dc09ReceiverClient(
            ReceiverConfig(name="rx", host="127.0.0.1", port=port, ack_timeout_s=0.3)
        )
        try:
            first = await client.send(account="4321", event=burglary(4), seq="0200")
            sim.set_mode("ack")
            second = await client.send(account="4321", event=burglary(4), seq="0200")
        finally:
            await client.close()
            await sim.stop()
        assert first.outcome == "failed"
        assert second.outcome == "acked"
        assert [r.seq for r in sim.received] == ["0200", "0200"]

    async def test_failover_and_failback(self) -> None:
        """After N failures the backup is used; when the primary polls healthy again, traffic returns."""
        primary_sim = StationSimulator(mode="drop")
        backup_sim = StationSimulator()
        p_port, b_port = await primary_sim.start(), await backup_sim.start()
        primary = Dc09ReceiverClient(
            ReceiverConfig(
                name="p", host="127.0.0.1", port=p_port, ack_timeout_s=0.2, null_poll_interval_s=0.2
            )
        )
        backup = Dc09ReceiverClient(ReceiverConfig(name="b", host="127.0.0.1", port=b_port))
        group = ReceiverGroup(primary, backup, failover_after=2)
        try:
            results = [
                await group.deliver(account="1", event=burglary(z), seq=f"{z:04d}") for z in (1, 2)
            ]
            assert [r.receiver for r in results] == ["p", "b"]
            assert group.failed_over
            primary_sim.set_mode("ack")
            primary.start()
            for _ in range(50):
                if primary.link_up:
                    break
                await asyncio.sleep(0.05)
            back = await group.deliver(account="1", event=burglary(3), seq="0003")
        finally:
            await primary.close()
            await backup.close()
            await primary_sim.stop()
            await backup_sim.stop()
        assert back.receiver == "p"
        assert not group.failed_over

    async def test_encrypted_ascii_and_hex_keys(self) -> None:
        """AES-128 (hex) and AES-256 (ASCII) keys both reach an encrypting station."""
        for key_text, fmt in (
            ("00112233445566778899AABBCCDDEEFF", "hex"),
            ("0123456789ABCDEF0123456789ABCDEF", "ascii"),
        ):
            sim = StationSimulator(key=AesKey.parse(key_text, fmt))
            port = await sim.start()
            client = Dc09ReceiverClient(
                ReceiverConfig(name="rx", host="127.0.0.1", port=port, key=key_text, key_format=fmt)
            )  # type: ignore[arg-type]
            try:
                attempt = await client.send(account="4321", event=burglary(7))
                [got] = await sim.wait_for(1)
            finally:
                await client.close()
                await sim.stop()
            assert attempt.outcome == "acked"
            assert got.encrypted


class TestAgainstPysiaalarm:
    @pytest.mark.parametrize("key", [None, "A1B2C3D4E5F60718"], ids=["plain", "aes128"])
    async def test_pysiaalarm_receives_our_frames(self, key: str | None) -> None:
        """pysiaalarm running as the station receiver gets our events with the right code."""
        events: list[object] = []
        got = asyncio.Event()

        async def on_event(event: object) -> None:
            events.append(event)
            got.set()

        port = free_port()
        async with SIAClient(
            "127.0.0.1",
            port,
            [SIAAccount("4321", key)],
            function=on_event,
            protocol=CommunicationsProtocol.TCP,
        ):
            # With an R field pysiaalarm echoes it; without one its ACK carries a literal "None"
            # (PROTOCOLS.md §1.10, home-assistant/core#180511), which we rightly refuse.
            client = Dc09ReceiverClient(
                ReceiverConfig(
                    name="pysia",
                    host="127.0.0.1",
                    port=port,
                    key=key,
                    key_format="ascii",
                    families="sia",
                    ack_timeout_s=3,
                    receiver_number="1",
                )
            )
            try:
                attempt = await client.send(account="4321", event=burglary(6))
                await asyncio.wait_for(got.wait(), 5)
            finally:
                await client.close()
        assert attempt.outcome == "acked", attempt
        event = events[0]
        assert getattr(event, "code", None) == "BA"
        assert getattr(event, "account", None) == "4321"

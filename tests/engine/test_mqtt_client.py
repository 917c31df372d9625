"""engine.mqtt_client against the real Mosquitto: sessions, manual PUBACK, flow control, keep-alive."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from engine.mqtt_client import (
    CONNECTION_LOST,
    MqttConnection,
    MqttConnectionLost,
    MqttError,
    connect,
)
from protocols.mqtt_codec import Publish


class Inbox:
    """Collects what a connection receives; PUBACKs only when told to."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.messages: list[Publish] = []
        self.arrived = asyncio.Event()

    def __call__(self, connection: MqttConnection, packet: Publish) -> None:
        self.messages.append(packet)
        if self.auto_ack and packet.qos:
            connection.puback(packet.packet_id)
        self.arrived.set()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Publish]:
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


def _id(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def _client(
    broker: tuple[str, int], inbox: Inbox | None = None, **kwargs: object
) -> MqttConnection:
    return await connect(
        broker[0],
        broker[1],
        client_id=kwargs.pop("client_id", None) or _id("t"),  # type: ignore[arg-type]
        on_publish=inbox or Inbox(),
        **kwargs,  # type: ignore[arg-type]
    )


class TestMqttClient:
    async def test_publish_and_receive_qos0_and_qos1(self, mqtt_broker: tuple[str, int]) -> None:
        """A subscriber gets both QoS levels; the QoS 1 publish's callback sees the PUBACK."""
        topic = f"{_id('c')}/x"
        inbox = Inbox()
        sub = await _client(mqtt_broker, inbox)
        pub = await _client(mqtt_broker)
        try:
            assert sub.connack is not None and sub.connack.reason_code == 0
            assert await sub.subscribe([(topic, 1)]) == (1,)
            codes: list[int] = []
            pub.publish(topic, b"zero", 0)
            pub.publish(topic, b"one", 1, codes.append)
            got = await inbox.wait_for(2)
            assert sorted((m.payload, m.qos) for m in got) == [(b"one", 1), (b"zero", 0)]
            async with asyncio.timeout(5):
                while not codes:
                    await asyncio.sleep(0.01)
            assert codes == [0]
            assert await pub.publish_wait(topic, b"again") == 0
        finally:
            sub.disconnect()
            pub.disconnect()

    async def test_unacknowledged_messages_come_again_in_the_persistent_session(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """Not PUBACKed → redelivered (DUP) after reconnecting with clean start false; PUBACKed →
        not again."""
        topic = f"{_id('s')}/x"
        client_id = _id("session")
        first = Inbox(auto_ack=False)
        sub = await _client(
            mqtt_broker, first, client_id=client_id, clean_start=False, session_expiry_s=60
        )
        await sub.subscribe([(topic, 1)])
        pub = await _client(mqtt_broker)
        for n in range(3):
            await pub.publish_wait(topic, b"m%d" % n)
        await first.wait_for(3)
        sub.disconnect()
        again = Inbox(auto_ack=True)
        sub = await _client(
            mqtt_broker, again, client_id=client_id, clean_start=False, session_expiry_s=60
        )
        try:
            assert sub.connack is not None and sub.connack.session_present
            got = await again.wait_for(3)
            assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
            assert all(m.dup for m in got)
            await asyncio.sleep(0.2)  # the PUBACKs leave
        finally:
            sub.disconnect()
        last = Inbox()
        sub = await _client(
            mqtt_broker, last, client_id=client_id, clean_start=True, session_expiry_s=0
        )
        await asyncio.sleep(0.5)
        sub.disconnect()
        pub.disconnect()
        assert last.messages == []

    async def test_broker_receive_maximum_is_respected(self, mqtt_broker: tuple[str, int]) -> None:
        """500 QoS 1 publishes at once: never more in flight than the broker's Receive Maximum,
        every one PUBACKed in the end."""
        pub = await _client(mqtt_broker)
        assert pub.connack is not None
        quota = pub.connack.properties.receive_maximum or 65_535
        codes: list[int] = []
        peak = 0
        try:
            for n in range(500):
                pub.publish(f"{_id('q')}/{n}", b"x", 1, codes.append)
                peak = max(peak, len(pub._pending))
            async with asyncio.timeout(10):
                while len(codes) < 500:
                    peak = max(peak, len(pub._pending))
                    await asyncio.sleep(0)
        finally:
            pub.disconnect()
        assert peak <= quota
        assert all(code < 0x80 for code in codes)

    async def test_keep_alive_pings_keep_an_idle_connection(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """keep_alive_s=1 and 3 s of silence: PINGREQs go out and the broker keeps us."""
        conn = await _client(mqtt_broker, keep_alive_s=1)
        try:
            writes = conn.writes
            await asyncio.sleep(3)
            assert conn.is_open
            assert conn.writes >= writes + 2
            assert conn.reads >= 3  # CONNACK and PINGRESPs
        finally:
            conn.disconnect()

    async def test_an_oversize_publish_is_refused_to_the_caller_when_it_would_queue(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """A broker that announced a Maximum Packet Size, every send slot in use: a publish
        over the limit raises to its caller instead of being queued (sent later from another
        message's PUBACK, its error escaped the read callback and its callback was lost)."""
        conn = await _client(mqtt_broker)
        try:
            conn._server_max_packet = 100  # as a broker announcing Maximum Packet Size 100
            conn._send_quota = 0  # the broker's Receive Maximum used up: publishes wait
            with pytest.raises(MqttError, match="exceeds the broker's maximum"):
                conn.publish("t/oversize", b"x" * 200, 1, lambda code: None)
            conn.publish("t/small", b"x", 1, lambda code: None)  # still queued, as before
            assert [item[0] for item in conn._waiting] == ["t/small"]
        finally:
            conn.disconnect()

    async def test_session_taken_over(self, mqtt_broker: tuple[str, int]) -> None:
        """A second connection with our client id ends ours (Mosquitto 2.0 closes it without a
        DISCONNECT 0x8E): the connection reports why and refuses publishes."""
        client_id = _id("dup")
        first = await _client(mqtt_broker, client_id=client_id)
        second = await _client(mqtt_broker, client_id=client_id)
        try:
            async with asyncio.timeout(5):
                reason = await first.wait_closed()
            assert isinstance(reason, MqttConnectionLost)
            assert not first.is_open
            with pytest.raises(MqttConnectionLost):
                first.publish("t", b"x", 1)
        finally:
            second.disconnect()

    async def test_callbacks_learn_of_a_lost_connection(self, mqtt_broker: tuple[str, int]) -> None:
        """QoS 1 publishes still waiting for their PUBACK get CONNECTION_LOST when it drops."""
        conn = await _client(mqtt_broker)
        codes: list[int] = []
        for n in range(50):
            conn.publish(f"lost/{n}", b"x", 1, codes.append)
        conn.abort()
        assert len(codes) == 50
        assert set(codes) == {CONNECTION_LOST}

    async def test_our_maximum_packet_size(self, mqtt_broker: tuple[str, int]) -> None:
        """The broker does not send us a packet larger than our Maximum Packet Size."""
        topic = f"{_id('big')}/x"
        inbox = Inbox()
        sub = await _client(mqtt_broker, inbox, max_packet_size=2048)
        pub = await _client(mqtt_broker)
        try:
            await sub.subscribe([(topic, 1)])
            await pub.publish_wait(topic, b"b" * 4096)
            await pub.publish_wait(topic, b"small")
            got = await inbox.wait_for(1)
            await asyncio.sleep(0.3)
            assert [m.payload for m in got] == [b"small"]
        finally:
            sub.disconnect()
            pub.disconnect()

    async def test_shared_subscription_splits_messages(self, mqtt_broker: tuple[str, int]) -> None:
        """Two sessions in one $share group each get part of the messages, none twice."""
        prefix = _id("share")
        boxes = [Inbox(), Inbox()]
        subs = [await _client(mqtt_broker, box) for box in boxes]
        pub = await _client(mqtt_broker)
        try:
            for sub in subs:
                await sub.subscribe([(f"$share/g/{prefix}/+", 1)])
            for n in range(40):
                pub.publish(f"{prefix}/{n}", b"%d" % n, 1)
            async with asyncio.timeout(10):
                while sum(len(b.messages) for b in boxes) < 40:
                    await asyncio.sleep(0.02)
        finally:
            for sub in subs:
                sub.disconnect()
            pub.disconnect()
        payloads = [m.payload for b in boxes for m in b.messages]
        assert sorted(payloads) == sorted(b"%d" % n for n in range(40))
        assert all(b.messages for b in boxes)

    async def test_no_broker_is_an_mqtt_error(self) -> None:
        """Nothing listening: MqttError, not OSError."""
        with pytest.raises(MqttError, match="cannot connect"):
            await connect("127.0.0.1", 1, client_id="x", on_publish=Inbox(), timeout_s=2)

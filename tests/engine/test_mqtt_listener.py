"""MqttListener against the real Mosquitto: no PUBACK before the commit, so nothing is lost."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiomqtt

from engine.ingest_types import InboundSignal, IngestResult, IngestUnavailable
from engine.mqtt_listener import MqttListener


class FlakySink:
    """Our IngestSink interface: refuses the first N submissions (database down), then commits."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.committed: list[InboundSignal] = []
        self.refused = 0
        self.saturated = False

    async def submit(self, signal: InboundSignal) -> IngestResult:
        if self.refused < self.failures:
            self.refused += 1
            raise IngestUnavailable("database unavailable")
        self.committed.append(signal)
        return IngestResult.ACCEPTED


class TestRedelivery:
    async def test_uncommitted_message_is_delivered_again(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """A message whose commit failed is not acknowledged; after the reconnect the broker delivers it again."""
        prefix = f"redeliver-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=1)
        listener = MqttListener(
            sink=sink,
            resolver=lambda serial: "ACC1" if serial == "S1" else None,
            host=mqtt_broker[0],
            port=mqtt_broker[1],
            client_id=f"engine-{secrets.token_hex(3)}",
            topic_prefix=prefix,
            reconnect_min_s=0.1,
        )
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            async with aiomqtt.Client(
                *mqtt_broker, identifier=f"mod-{secrets.token_hex(3)}"
            ) as module:
                await module.subscribe(f"{prefix}/modules/S1/ack", qos=1)
                body = {
                    "v": 1,
                    "msg_id": "only-once",
                    "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 1}],
                }
                await module.publish(f"{prefix}/modules/S1/events", json.dumps(body), qos=1)
                async with asyncio.timeout(20):
                    async for message in module.messages:
                        ack = json.loads(message.payload)  # type: ignore[arg-type]
                        break
        finally:
            await listener.stop()
            task.cancel()
        assert sink.refused == 1
        assert [s.dedupe_key for s in sink.committed] == ["mqtt:S1:only-once"]
        assert ack == {"v": 1, "msg_id": "only-once", "status": "accepted", "reason": None}

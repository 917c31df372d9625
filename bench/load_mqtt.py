"""MQTT load: simulated modules publishing events through the broker and waiting for their acks.

Modules publish ``events`` (QoS 1) on ``publishers`` connections (module n on connection
``n % publishers``) and one more connection reads every module's ``ack`` topic (QoS 1), as the
modules' own subscriptions would. At most ``inflight`` messages await their ack at any time (the
window stays full in an as-fast-as-possible run). Latency is publish → ack received.

The client is alarmrelay's (:mod:`engine.mqtt_client`): the generator must cost much less CPU per
message than the engine it measures, on the same two cores; with aiomqtt it cost ~190 µs per
message (``python -m bench.mqtt_micro --generator aiomqtt``), more than the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

import msgspec
import psutil

from bench.load import Result
from engine.mqtt_client import MqttConnection, connect
from protocols.mqtt_codec import Publish

# What the MQTT scenario of bench.run passes: the generator's window and the engine's settings.
# BENCH_MQTT_SCENARIO (JSON, same keys) overrides them to explore: e.g.
# '{"database": {"commit_writers": 2}}'.
MQTT_SCENARIO: Final[dict[str, Any]] = {
    "inflight": 512,
    "mqtt": {"max_inflight": 1000, "connections": 4},
    "database": {},
}
for _key, _value in json.loads(os.environ.get("BENCH_MQTT_SCENARIO", "{}")).items():
    if isinstance(_value, dict):
        MQTT_SCENARIO[_key] = {**MQTT_SCENARIO[_key], **_value}
    else:
        MQTT_SCENARIO[_key] = _value


class BrokerCpu:
    """CPU seconds the Mosquitto process used since this object was made (0 when not found)."""

    def __init__(self) -> None:
        self._proc = next(
            (
                p
                for p in psutil.process_iter(["name"])
                if (p.info["name"] or "").startswith("mosquitto")
            ),
            None,
        )
        self._start = self._cpu()

    def _cpu(self) -> float:
        if self._proc is None:
            return 0.0
        try:
            times = self._proc.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def seconds(self) -> float:
        """CPU seconds since construction."""
        return self._cpu() - self._start


class _Ack(msgspec.Struct):
    msg_id: str | None = None
    status: str = ""


_ack_decoder = msgspec.json.Decoder(_Ack)


async def lean_module_fleet(
    host: str,
    port: int,
    modules: int,
    *,
    prefix: str,
    duration: float,
    result: Result,
    inflight: int = 512,
    publishers: int = 4,
    drain_s: float = 10.0,
) -> None:
    """Publish as fast as the ``inflight`` window allows for ``duration`` seconds; count acks."""
    tag = secrets.token_hex(3)
    pending: dict[bytes, float] = {}
    space = asyncio.Event()
    drained = asyncio.Event()
    stopping = False
    clock = time.perf_counter
    latencies = result.latencies

    def on_ack(connection: MqttConnection, packet: Publish) -> None:
        ack = _ack_decoder.decode(packet.payload)
        if packet.qos:
            connection.puback(packet.packet_id)
        sent = pending.pop((ack.msg_id or "").encode(), None)
        if sent is None:
            return
        if ack.status in ("accepted", "duplicate"):
            result.acked += 1
            latencies.append(clock() - sent)
        else:
            result.errors += 1
        if len(pending) < inflight:
            space.set()
        if stopping and not pending:
            drained.set()

    def ignore(connection: MqttConnection, packet: Publish) -> None:
        if packet.qos:
            connection.puback(packet.packet_id)

    reader = await connect(
        host, port, client_id=f"bench-acks-{tag}", on_publish=on_ack, receive_maximum=65_535
    )
    await reader.subscribe([(f"{prefix}/modules/+/ack", 1)])
    conns = [
        await connect(host, port, client_id=f"bench-pub-{tag}-{i}", on_publish=ignore)
        for i in range(publishers)
    ]
    topics = [f"{prefix}/modules/BENCH-{i:06d}/events" for i in range(modules)]
    deadline = clock() + duration
    counter = 0
    try:
        while clock() < deadline:
            room = inflight - len(pending)
            if room <= 0:
                space.clear()
                await space.wait()
                continue
            now = clock()
            for _ in range(room):
                counter += 1
                module = counter % modules
                msg_id = b"m%d-%s" % (counter, tag.encode())
                body = (
                    b'{"v":1,"msg_id":"%s","events":[{"family":"cid","code":"130",'
                    b'"qualifier":"1","zone":%d}]}' % (msg_id, counter % 999 + 1)
                )
                pending[msg_id] = now
                conns[module % publishers].publish(topics[module], body, 1)
            result.sent += room
            await asyncio.sleep(0)  # let the writes leave and the acks come in
        stopping = True
        if pending:
            try:
                await asyncio.wait_for(drained.wait(), drain_s)
            except TimeoutError:
                result.timeouts += len(pending)
    finally:
        for conn in [*conns, reader]:
            conn.disconnect()


def mqtt_engine_config(
    folder: Path, url: str, *, prefix: str, mqtt: dict[str, object], database: dict[str, object]
) -> Path:
    """The engine's settings file for the MQTT scenario: MQTT on, DC-09 on an ephemeral port."""

    def table(values: dict[str, object]) -> str:
        return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())

    config = folder / "engine.toml"
    config.write_text(
        f'data_dir = "{folder / "var"}"\n'
        f"[database]\n{table({'url': url, 'pool_max': 8, **database})}"
        "[dc09]\nport = 0\n[http]\nport = 0\n"
        '[logging]\nlevel = "info"\n'
        f"[mqtt]\n{table({'enabled': True, 'topic_prefix': prefix, 'client_id': f'bench-{secrets.token_hex(3)}', **mqtt})}",
        encoding="utf-8",
    )
    return config


async def aiomqtt_module_fleet(
    host: str,
    port: int,
    modules: int,
    *,
    prefix: str,
    duration: float,
    result: Result,
    inflight: int = 64,
    publishers: int = 8,
) -> None:
    """The same load through aiomqtt (paho), for comparison (``bench.mqtt_micro --generator aiomqtt``).

    ``publishers`` connections share the modules (module n publishes on connection
    ``n % publishers``); one more connection reads every module's ``ack`` topic. A single
    connection that both publishes and reads acks holds each QoS 1 publish behind the incoming
    acks in paho's loop and caps the generator near 100 messages/s, measuring itself.
    """
    import aiomqtt

    pending: dict[str, float] = {}
    done = asyncio.Event()
    window = asyncio.Semaphore(inflight)
    deadline = time.perf_counter() + duration
    counter = 0
    tag = secrets.token_hex(3)

    async def reader(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            ack = msgspec.json.decode(payload if isinstance(payload, bytes) else str(payload))
            sent = pending.pop(ack.get("msg_id") or "", None)
            if sent is None:
                continue
            window.release()
            if ack.get("status") in ("accepted", "duplicate"):
                result.acked += 1
                result.latencies.append(time.perf_counter() - sent)
            else:
                result.errors += 1
            if done.is_set() and not pending:
                return

    async def publisher(index: int) -> None:
        nonlocal counter
        async with aiomqtt.Client(
            host, port, identifier=f"bench-pub-{tag}-{index}", max_inflight_messages=1000
        ) as client:
            client.pending_calls_threshold = inflight  # no warning per publish
            while time.perf_counter() < deadline:
                await window.acquire()
                counter += 1
                n = counter
                serial = f"BENCH-{(n * publishers + index) % modules:06d}"
                msg_id = f"{serial}-{n}-{index}"
                body = json.dumps(
                    {
                        "v": 1,
                        "msg_id": msg_id,
                        "events": [
                            {"family": "cid", "code": "130", "qualifier": "1", "zone": n % 999}
                        ],
                    }
                )
                pending[msg_id] = time.perf_counter()
                result.sent += 1
                await client.publish(f"{prefix}/modules/{serial}/events", body, qos=1)

    async with aiomqtt.Client(
        host, port, identifier=f"bench-acks-{tag}", max_queued_incoming_messages=0
    ) as acks:
        await acks.subscribe(f"{prefix}/modules/+/ack", qos=1)
        task = asyncio.create_task(reader(acks))
        await asyncio.gather(*(publisher(i) for i in range(publishers)))
        done.set()
        if not pending:
            task.cancel()
            return
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            result.timeouts += len(pending)
            task.cancel()

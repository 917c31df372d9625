"""One signal the database cannot store never costs the others: NUL characters are stored as
U+FFFD, and a signal whose own data the database refuses fails alone (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime

import aiomqtt
import asyncpg
import msgspec
import pytest

from engine import metrics
from engine.dc09_listener import Dc09Handler
from engine.ingest_types import (
    InboundSignal,
    IngestRefused,
    IngestResult,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from engine.ingest_writer import IngestWriter
from engine.pipeline import IngestPipeline
from engine.store.pg_text import storable_json
from protocols.dc09_frame import decode_frame, encode_frame
from protocols.dc09_receiver import FrameReceived, ReceiverConfig
from protocols.signal import XData
from tests.engine.test_ingest_e2e import port_of, provision, running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule


def _event(account: str, seq: str) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime.now(UTC),
        seq=seq,
        raw=f"frame {seq}".encode(),
        dedupe_key=f"test:{account}:{seq}",
    )


class TestStorableJson:
    def test_nul_escapes_become_the_replacement_character(self) -> None:
        """Every \\u0000 in the strings becomes U+FFFD; escaped backslashes stay as they are."""
        values = ["a\x00b", "\x00\x00", "\\u0000", "x\\\x00", "plain"]
        document = msgspec.json.encode(values).decode()
        assert json.loads(storable_json(document)) == [
            "a\ufffdb",
            "\ufffd\ufffd",
            "\\u0000",
            "x\\\ufffd",
            "plain",
        ]

    def test_a_document_without_nul_is_returned_as_is(self) -> None:
        document = '[{"t":"kitchen \\\\ hall"}]'
        assert storable_json(document) is document


class TestNulOverDc09:
    async def test_nul_in_sia_text_and_xdata_is_acked_and_stored(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A burglary alarm whose SIA text and x-data carry a NUL byte is ACKed and stored once,
        the NUL as U+FFFD in the event, the raw frame byte for byte."""
        await provision(db_pool)
        frame = encode_frame(
            token="SIA-DCS",
            seq="0400",
            account="1234",
            data="#1234|Nri1/BA01^a\x00b^",
            xdata=(XData(id="R", value="room\x00"),),
        )
        async with running_engine(settings_for(database_url)) as engine:
            module = Dc09TcpModule("127.0.0.1", port_of(engine), account="1234")
            await module.connect()
            reply = await module.send_raw(frame)
            await module.close()
        assert reply is not None and decode_frame(reply).token == "ACK"
        row = await db_pool.fetchrow("SELECT events, xdata, raw FROM signals WHERE seq = '0400'")
        assert row is not None
        [event] = json.loads(row["events"])
        assert (event["code"], event["text"]) == ("BA", "a\ufffdb")
        assert json.loads(row["xdata"]) == [{"id": "R", "value": "room\ufffd"}]
        assert bytes(row["raw"]) == frame


class TestNulOverMqtt:
    async def test_nul_in_event_text_is_accepted_and_stored(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """An MQTT event whose text carries \\u0000 is acked accepted and stored (it used to
        fail its batch, and the broker redelivered it for ever)."""
        await provision(db_pool)
        prefix = f"test-{secrets.token_hex(4)}/v1"
        settings = settings_for(
            database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
        )
        async with running_engine(settings) as engine:
            listener = engine._mqtt
            assert listener is not None
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            host, port = mqtt_broker
            async with aiomqtt.Client(host, port, identifier=f"m-{secrets.token_hex(3)}") as module:
                await module.subscribe(f"{prefix}/modules/SERIAL-1234/ack", qos=1)
                payload = {
                    "v": 1,
                    "msg_id": "nul-1",
                    "events": [{"family": "sia", "code": "BA", "zone": 4, "text": "a\u0000b"}],
                }
                await module.publish(
                    f"{prefix}/modules/SERIAL-1234/events", json.dumps(payload), qos=1
                )
                bad = {"v": 1, "msg_id": "bad-1", "events": [{"family": "cid", "code": "13"}]}
                await module.publish(f"{prefix}/modules/SERIAL-1234/events", json.dumps(bad), qos=1)
                acks = {}
                async with asyncio.timeout(10):
                    async for message in module.messages:
                        ack = msgspec.json.decode(message.payload)  # type: ignore[arg-type]
                        acks[ack["msg_id"]] = ack
                        if len(acks) == 2:
                            break
        assert acks["nul-1"]["status"] == "accepted"
        # A payload that does not validate: its rejected ack still names the message.
        assert acks["bad-1"]["status"] == "rejected"
        assert "3 digits" in acks["bad-1"]["reason"]
        events = await db_pool.fetchval("SELECT events FROM signals WHERE transport = 'mqtt'")
        assert json.loads(events)[0]["text"] == "a\ufffdb"


class TestRefusedSignalFailsAlone:
    async def test_batch_is_split_until_the_refused_signal_is_alone(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """One signal PostgreSQL refuses (an account with a NUL, sent as a text array) in a batch
        of five: the four others are committed and accepted, in order; it alone is refused."""
        writer = IngestWriter(db_pool, duplicate_window_s=600)
        pipeline = IngestPipeline(writer, batch_max=64, window_s=0)
        signals = [_event(f"10{i}", f"000{i}") for i in range(5)]
        signals[3] = _event("10\x003", "0003")
        before = metrics.COMMIT_ISOLATIONS._value.get()
        futures = [pipeline.enqueue(s) for s in signals]  # one batch: queued before the start
        pipeline.start()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await pipeline.close()
        assert outcomes[:3] == [IngestResult.ACCEPTED] * 3
        assert outcomes[4] == IngestResult.ACCEPTED
        assert isinstance(outcomes[3], IngestRefused)
        rows = await db_pool.fetch("SELECT account, seq FROM signals ORDER BY id")
        assert [(r["account"], r["seq"]) for r in rows] == [
            ("100", "0000"),
            ("101", "0001"),
            ("102", "0002"),
            ("104", "0004"),
        ]
        assert metrics.COMMIT_ISOLATIONS._value.get() - before >= 2  # 5 → 2+3 → 1+2 → 1+1
        assert pipeline.available  # a refused signal is not a database outage


class TestOutOfRangeOnOurSide:
    async def test_a_value_error_alone_is_refused_not_retried_for_ever(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A signal whose own values fail before PostgreSQL sees them (OverflowError: a date past
        year 9999) is refused like a data error; the others of its batch are accepted. As
        "not committed" the broker would redeliver it, and everything behind it, for ever."""
        writer = IngestWriter(db_pool, duplicate_window_s=600)

        async def write(signals: list[InboundSignal]) -> list[IngestResult]:
            if any(s.account == "666" for s in signals):
                raise OverflowError("date value out of range")
            return await writer(signals)

        pipeline = IngestPipeline(write, batch_max=64, window_s=0)
        signals = [_event("100", "0000"), _event("666", "0001"), _event("102", "0002")]
        futures = [pipeline.enqueue(s) for s in signals]
        pipeline.start()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        await pipeline.close()
        assert outcomes[0] == outcomes[2] == IngestResult.ACCEPTED
        assert isinstance(outcomes[1], IngestRefused)
        assert pipeline.available


class TestRefusedReply:
    @pytest.mark.parametrize(
        ("error", "reply"),
        [(IngestRefused("commit failed: DataError"), "DUH"), (IngestUnavailable("down"), None)],
    )
    async def test_refused_is_duh_unavailable_is_silence(
        self, error: IngestUnavailable, reply: str | None
    ) -> None:
        """Refused (a resend would fail the same way): DUH. Not committed: no reply, resend."""
        frame = encode_frame(token="SIA-DCS", seq="0007", account="1234", data="#1234|Nri1/BA01")
        config = ReceiverConfig()
        handler = Dc09Handler(sink=None, directory=None, config=config)  # type: ignore[arg-type]
        conn = handler.new_connection()
        received = FrameReceived(frame=decode_frame(frame), events=())
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        future.set_exception(error)
        out = handler.finish(
            conn, received, _event("1234", "0007"), future, transport=Transport.TCP, started=0.0
        )
        assert (decode_frame(out).token if out is not None else None) == reply
        if out is not None:
            assert decode_frame(out).seq == "0007"

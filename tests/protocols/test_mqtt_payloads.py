"""MQTT payloads: versioned structs, validation with a reason, topics."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.mqtt_payloads import (
    MAX_REASON,
    AckStatus,
    AckV1,
    MqttPayloadError,
    StartVoiceSessionV1,
    TopicKind,
    decode_checkin,
    decode_events,
    encode,
    msg_id_of,
    parse_topic,
    to_events,
    topic,
)
from protocols.signal import Category, Family


def events_payload(**extra: object) -> bytes:
    body = {
        "v": 1,
        "msg_id": "m-1",
        "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 4}],
        **extra,
    }
    return json.dumps(body).encode()


class TestDecode:
    def test_events_are_classified(self) -> None:
        """A valid events payload becomes classified canonical events."""
        payload = decode_events(events_payload())
        [event] = to_events(payload)
        assert (event.family, event.code, event.qualifier, event.zone) == (
            Family.CID,
            "130",
            "1",
            4,
        )
        assert event.classification.category is Category.ALARMS

    def test_entry_delay_only(self) -> None:
        """An events payload may carry only an entry-delay start."""
        payload = decode_events(
            json.dumps({"v": 1, "msg_id": "e", "entry_delay": {"partition": 2, "zone": 5}}).encode()
        )
        assert payload.entry_delay is not None
        assert payload.entry_delay.partition == 2

    @pytest.mark.parametrize("msg_id", ["", "c" * 65])
    def test_checkin_msg_id_out_of_bounds_is_refused(self, msg_id: str) -> None:
        """A check-in's msg_id, when given, is 1-64 characters like an events message's (the
        ack echoes it back)."""
        data = json.dumps({"v": 1, "msg_id": msg_id}).encode()
        with pytest.raises(MqttPayloadError, match="msg_id must be 1-64 characters"):
            decode_checkin(data)
        assert decode_checkin(json.dumps({"v": 1, "msg_id": "c" * 64}).encode()).msg_id == "c" * 64

    def test_a_long_reason_is_cut_short(self) -> None:
        """An unknown field named with 10,000 characters: the reason (sent back in the ack)
        stays within MAX_REASON characters, so the ack stays small."""
        data = json.dumps({"v": 1, "msg_id": "m", "events": [], "x" * 10_000: 1}).encode()
        with pytest.raises(MqttPayloadError) as caught:
            decode_events(data)
        reason = str(caught.value)
        assert reason.startswith("invalid payload: Object contains unknown field")
        assert len(reason) == MAX_REASON and reason.endswith("…")

    def test_empty_checkin(self) -> None:
        """An empty check-in payload is a bare check-in."""
        assert decode_checkin(b"").v == 1

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"{not json", "malformed JSON"),
            (b"", "empty payload"),
            (b"  \n", "empty payload"),
            (json.dumps({"v": 2, "msg_id": "x", "events": []}).encode(), "invalid payload"),
            (events_payload(colour="red"), "invalid payload"),
            (
                json.dumps(
                    {
                        "v": 1,
                        "msg_id": "x",
                        "events": [{"family": "cid", "code": "13", "qualifier": "1"}],
                    }
                ).encode(),
                "3 digits",
            ),
            (
                # Arabic-Indic digits: str.isdigit() says yes, no Contact ID code is spelt so.
                json.dumps(
                    {
                        "v": 1,
                        "msg_id": "x",
                        "events": [{"family": "cid", "code": "\u0661\u0663\u0660"}],
                    }
                ).encode(),
                "3 digits",
            ),
            (
                json.dumps(
                    {"v": 1, "msg_id": "x", "events": [{"family": "sia", "code": "ba"}]}
                ).encode(),
                "upper-case",
            ),
            (json.dumps({"v": 1, "msg_id": "x"}).encode(), "no events"),
            (
                json.dumps(
                    {"v": 1, "msg_id": "x", "entry_delay": {"entry_delay_s": 10**12}}
                ).encode(),
                "<= 3600",
            ),
            (
                json.dumps(
                    {"v": 1, "msg_id": "x", "events": [{"family": "sia", "code": "BA", "zone": -1}]}
                ).encode(),
                ">= 0",
            ),
            (
                json.dumps(
                    {"v": 1, "msg_id": "x", "events": [{"family": "sia", "code": "BA"}] * 33}
                ).encode(),
                "too many",
            ),
        ],
    )
    def test_rejections_name_the_reason(self, data: bytes, reason: str) -> None:
        """Bad payloads raise MqttPayloadError with a reason fit for the rejected ack."""
        with pytest.raises(MqttPayloadError, match=reason):
            decode_events(data)

    def test_size_limit(self) -> None:
        """Payloads over the limit are refused before decoding."""
        with pytest.raises(MqttPayloadError, match="exceeds"):
            decode_events(events_payload(), max_bytes=10)

    @given(st.binary(max_size=300))
    @settings(max_examples=200)
    def test_arbitrary_bytes_only_payload_error(self, data: bytes) -> None:
        """Any bytes either decode or raise MqttPayloadError, nothing else."""
        for decoder in (decode_events, decode_checkin):
            with contextlib.suppress(MqttPayloadError):
                decoder(data)


class TestSentAt:
    def test_a_time_without_a_zone_is_utc(self) -> None:
        """``sent_at`` without an offset is read as UTC, as DC-09 times are (it was left naive:
        read in the database session's zone, and not comparable with the module's other
        times)."""
        checkin = decode_checkin(b'{"v": 1, "sent_at": "2026-11-22T12:00:00"}')
        events = decode_events(
            b'{"v": 1, "msg_id": "m", "sent_at": "2026-11-22T12:00:00",'
            b' "events": [{"family": "cid", "code": "130"}]}'
        )
        expected = datetime(2026, 11, 22, 12, tzinfo=UTC)
        for sent in (checkin.sent_at, events.sent_at):
            assert sent is not None
            assert sent.utcoffset() == timedelta(0)
            assert sent == expected

    def test_a_time_with_an_offset_is_the_same_instant_in_utc(self) -> None:
        """Any offset JSON allows (up to ±23:59; PostgreSQL reads at most ±15:59)."""
        checkin = decode_checkin(b'{"v": 1, "sent_at": "2026-11-22T13:00:00+01:00"}')
        assert checkin.sent_at == datetime(2026, 11, 22, 12, tzinfo=UTC)
        assert checkin.sent_at is not None
        assert checkin.sent_at.utcoffset() == timedelta(0)
        events = decode_events(
            b'{"v": 1, "msg_id": "m", "sent_at": "2026-11-22T12:00:00+23:59",'
            b' "events": [{"family": "cid", "code": "130"}]}'
        )
        assert events.sent_at == datetime(2026, 11, 21, 12, 1, tzinfo=UTC)
        assert events.sent_at is not None
        assert events.sent_at.utcoffset() == timedelta(0)

    def test_a_time_at_the_end_of_the_calendar_is_kept_as_written(self) -> None:
        """Not representable in UTC in Python: left as the module wrote it (not refused)."""
        checkin = decode_checkin(b'{"v": 1, "sent_at": "9999-12-31T23:00:00-02:00"}')
        assert checkin.sent_at is not None
        assert checkin.sent_at.utcoffset() == timedelta(hours=-2)


class TestTopicsAndEncode:
    def test_topic_round_trip(self) -> None:
        """Topics are built and parsed symmetrically."""
        name = topic("alarmrelay/v1", "SER-1", TopicKind.EVENTS)
        assert name == "alarmrelay/v1/modules/SER-1/events"
        assert parse_topic(name, "alarmrelay/v1") == ("SER-1", TopicKind.EVENTS)

    @pytest.mark.parametrize(
        "name",
        [
            "other/modules/x/events",
            "alarmrelay/v1/modules//events",
            "alarmrelay/v1/modules/x/bogus",
        ],
    )
    def test_bad_topics(self, name: str) -> None:
        """Topics outside the contract are refused."""
        with pytest.raises(MqttPayloadError):
            parse_topic(name, "alarmrelay/v1")

    def test_engine_payloads(self) -> None:
        """Acks and the voice command encode with their version."""
        assert json.loads(encode(AckV1(msg_id="m", status=AckStatus.ACCEPTED))) == {
            "v": 1, "msg_id": "m", "status": "accepted", "reason": None,
        }  # fmt: skip
        command = json.loads(encode(StartVoiceSessionV1(signal_id=5)))
        assert command == {
            "v": 1,
            "command": "start_voice_session",
            "siren_off": True,
            "signal_id": 5,
        }


class TestMsgIdOfRejectedPayloads:
    def test_read_from_a_payload_that_does_not_validate(self) -> None:
        assert msg_id_of(b'{"v":1,"msg_id":"q-4","events":[{"family":"cid","code":"13"}]}') == "q-4"
        assert msg_id_of(b'{"v": 2, "msg_id": "m", "extra": true}') == "m"

    def test_none_when_it_cannot_be_read(self) -> None:
        for data in (b"{not json", b'{"msg_id": 42}', b'{"msg_id": ""}', b"[1]", b"[" * 100_000):
            assert msg_id_of(data) is None
        assert msg_id_of(b'{"msg_id": "%s"}' % (b"x" * 65)) is None
        assert msg_id_of(b'{"msg_id": "m"}', max_bytes=4) is None

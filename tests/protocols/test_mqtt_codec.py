"""protocols.mqtt_codec: every packet round-trips, any split of the stream decodes the same, and
hostile bytes raise only MqttCodecError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.mqtt_codec import (
    NO_PROPERTIES,
    PINGREQ,
    PINGRESP,
    Connack,
    Connect,
    Disconnect,
    MqttCodecError,
    MqttDecoder,
    Packet,
    PingReq,
    PingResp,
    Properties,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
    decode_packet,
    encode,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    encode_varint,
    reason_name,
)

# -- strategies --------------------------------------------------------------------------------

text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=20,
)
topic_names = text.filter(lambda t: t and "+" not in t and "#" not in t)
u16 = st.integers(0, 65_535)
u32 = st.integers(0, 2**32 - 1)
packet_ids = st.integers(1, 65_535)
flag = st.sampled_from([0, 1])
pairs = st.lists(st.tuples(text, text), max_size=3).map(tuple)


def props(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[Properties]:
    return st.fixed_dictionaries({}, optional=fields).map(lambda d: Properties(**d))  # type: ignore[arg-type]


connect_props = props(
    session_expiry_interval=u32,
    receive_maximum=st.integers(1, 65_535),
    maximum_packet_size=st.integers(1, 2**32 - 1),
    topic_alias_maximum=u16,
    request_response_information=flag,
    request_problem_information=flag,
    user_properties=pairs,
    authentication_method=text,
    authentication_data=st.binary(max_size=10),
)
connack_props = props(
    session_expiry_interval=u32,
    receive_maximum=st.integers(1, 65_535),
    maximum_qos=flag,
    retain_available=flag,
    maximum_packet_size=st.integers(1, 2**32 - 1),
    assigned_client_identifier=text,
    topic_alias_maximum=u16,
    reason_string=text,
    user_properties=pairs,
    wildcard_subscription_available=flag,
    subscription_identifier_available=flag,
    shared_subscription_available=flag,
    server_keep_alive=u16,
    response_information=text,
    server_reference=text,
)
publish_props = props(
    payload_format_indicator=flag,
    message_expiry_interval=u32,
    response_topic=topic_names,
    correlation_data=st.binary(max_size=10),
    user_properties=pairs,
    subscription_identifiers=st.lists(st.integers(1, 268_435_455), max_size=2).map(tuple),
    content_type=text,
)
reason_props = props(reason_string=text, user_properties=pairs)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.sampled_from([0, 1, 2]))
    return Publish(
        draw(topic_names),
        draw(st.binary(max_size=300)),
        qos,
        draw(packet_ids) if qos else 0,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(publish_props),
    )


packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(
        Connect,
        client_id=text,
        clean_start=st.booleans(),
        keep_alive=u16,
        username=st.none() | text,
        password=st.none() | st.binary(max_size=20),
        properties=connect_props,
    ),
    st.builds(
        Connack,
        session_present=st.booleans(),
        reason_code=st.sampled_from([0, 0x80, 0x85, 0x86, 0x87, 0x8A]),
        properties=connack_props,
    ),
    publishes(),
    st.builds(
        Puback,
        packet_ids,
        st.sampled_from([0, 0x10, 0x80, 0x87, 0x97]),
        reason_props,
    ),
    st.builds(
        Subscribe,
        packet_id=packet_ids,
        subscriptions=st.lists(
            st.builds(
                Subscription,
                text.filter(bool),
                st.sampled_from([0, 1, 2]),
                st.booleans(),
                st.booleans(),
                st.sampled_from([0, 1, 2]),
            ),
            min_size=1,
            max_size=3,
        ).map(tuple),
        properties=props(
            subscription_identifiers=st.lists(st.integers(1, 1000), max_size=1).map(tuple),
            user_properties=pairs,
        ),
    ),
    st.builds(
        Suback,
        packet_id=packet_ids,
        reason_codes=st.lists(st.sampled_from([0, 1, 2, 0x80, 0x87, 0x8F, 0x9E]), min_size=1).map(
            tuple
        ),
        properties=reason_props,
    ),
    st.just(PingReq()),
    st.just(PingResp()),
    st.builds(
        Disconnect,
        reason_code=st.sampled_from([0, 0x04, 0x81, 0x8B, 0x8E, 0x93]),
        properties=props(session_expiry_interval=u32, reason_string=text, server_reference=text),
    ),
)


def _normal(packet: Packet) -> Packet:
    """A packet as the full decoder returns it (empty PUBLISH properties as NO_PROPERTIES)."""
    if isinstance(packet, Publish) and packet.properties is None:
        return Publish(packet.topic, packet.payload, packet.qos, packet.packet_id,
                       packet.retain, packet.dup, NO_PROPERTIES)  # fmt: skip
    return packet


# -- round trips --------------------------------------------------------------------------------


class TestRoundTrip:
    @given(packets)
    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    def test_every_packet_round_trips(self, packet: Packet) -> None:
        """decode(encode(p)) == p for every supported packet, properties included."""
        assert decode_packet(encode(packet)) == _normal(packet)

    @given(st.lists(packets, min_size=1, max_size=6), st.data())
    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
    def test_any_split_of_the_stream_gives_the_same_packets(
        self, items: list[Packet], data: st.DataObject
    ) -> None:
        """Packets back to back, cut at arbitrary points: the same packets, in order."""
        stream = b"".join(encode(p) for p in items)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        decoder = MqttDecoder(publish_properties=True)
        out: list[Packet] = []
        last = 0
        for cut in [*cuts, len(stream)]:
            out += decoder.feed(stream[last:cut])
            last = cut
        assert out == [_normal(p) for p in items]
        assert decoder.buffered == 0

    def test_byte_by_byte(self) -> None:
        """One byte per feed: nothing until a packet's last byte, then exactly that packet."""
        packets_in = [
            Publish("a/b", b"x" * 200, 1, 9),
            Puback(9),
            Publish("c", b"", 0, 0),
            PingResp(),
        ]
        decoder = MqttDecoder()
        out: list[Packet] = []
        for packet in packets_in:
            raw = encode(packet)
            for byte in raw[:-1]:
                assert decoder.feed(bytes([byte])) == []
            out += decoder.feed(raw[-1:])
        assert out == packets_in

    def test_large_packet_in_chunks_is_not_reparsed(self) -> None:
        """A 1 MB PUBLISH fed in 64 KiB pieces: nothing until the end, then the whole payload."""
        raw = encode_publish("big", b"z" * 1_000_000, 1, 5)
        decoder = MqttDecoder(max_packet_size=2_000_000)
        results = [decoder.feed(raw[i : i + 65_536]) for i in range(0, len(raw), 65_536)]
        assert all(r == [] for r in results[:-1])
        assert results[-1] == [Publish("big", b"z" * 1_000_000, 1, 5)]

    def test_publish_properties_skipped_by_default(self) -> None:
        """The receive path skips PUBLISH properties unless asked for them."""
        raw = encode_publish("t", b"p", 1, 3, properties=Properties(content_type="json"))
        assert MqttDecoder().feed(raw) == [Publish("t", b"p", 1, 3)]
        decoded = MqttDecoder(publish_properties=True).feed(raw)[0]
        assert isinstance(decoded, Publish)
        assert decoded.properties == Properties(content_type="json")


class TestWireForms:
    def test_known_bytes(self) -> None:
        """Byte-exact forms from the specification's layouts."""
        assert encode_publish("a/b", b"hi", 1, 10) == b"\x32\x0a\x00\x03a/b\x00\x0a\x00hi"
        assert encode_publish("a", b"", 0) == b"\x30\x04\x00\x01a\x00"
        assert encode_puback(0x1234) == b"\x40\x02\x12\x34"
        assert encode_puback(1, 0x80) == b"\x40\x03\x00\x01\x80"
        assert PINGREQ == b"\xc0\x00" and PINGRESP == b"\xd0\x00"
        assert encode_disconnect() == b"\xe0\x00"
        assert encode_disconnect(0x81) == b"\xe0\x01\x81"
        connect = encode_connect(
            Connect(
                client_id="e1",
                clean_start=False,
                keep_alive=30,
                username="u",
                password=b"p",
                properties=Properties(session_expiry_interval=3600, receive_maximum=1000),
            )
        )
        assert connect == (
            b"\x10\x1d\x00\x04MQTT\x05\xc0\x00\x1e"
            b"\x08\x11\x00\x00\x0e\x10\x21\x03\xe8"
            b"\x00\x02e1\x00\x01u\x00\x01p"
        )
        subscribe = encode_subscribe(
            Subscribe(packet_id=1, subscriptions=(Subscription("$share/g/t/+", 1),))
        )
        assert subscribe == b"\x82\x12\x00\x01\x00\x00\x0c$share/g/t/+\x01"

    @pytest.mark.parametrize(
        ("value", "wire"),
        [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (16_383, b"\xff\x7f"),
            (16_384, b"\x80\x80\x01"),
            (2_097_151, b"\xff\xff\x7f"),
            (2_097_152, b"\x80\x80\x80\x01"),
            (268_435_455, b"\xff\xff\xff\x7f"),
        ],
    )
    def test_variable_byte_integer(self, value: int, wire: bytes) -> None:
        """The boundary values of 1.5.5."""
        assert encode_varint(value) == wire

    def test_varint_out_of_range(self) -> None:
        """Negative or beyond 4 bytes is the caller's bug: ValueError, not a codec error."""
        with pytest.raises(ValueError, match="Variable Byte Integer"):
            encode_varint(268_435_456)

    def test_invalid_arguments_are_refused_when_encoding(self) -> None:
        """Wildcards in a topic name, packet id 0, a property the packet cannot carry."""
        with pytest.raises(ValueError, match="wildcard"):
            encode_publish("a/+", b"", 0)
        with pytest.raises(ValueError, match="packet identifier"):
            encode_publish("a", b"", 1, 0)
        with pytest.raises(ValueError, match="not allowed"):
            encode_puback(1, 0, Properties(receive_maximum=5))

    def test_reason_names(self) -> None:
        """Reason codes read as text in logs."""
        assert reason_name(0x87) == "0x87 not authorized"
        assert reason_name(0x93) == "0x93 receive maximum exceeded"
        assert reason_name(0x42) == "0x42"


# -- hostile bytes ------------------------------------------------------------------------------


def _reason(data: bytes, **kwargs: object) -> int:
    with pytest.raises(MqttCodecError) as info:
        MqttDecoder(**kwargs).feed(data)  # type: ignore[arg-type]
    return info.value.reason_code


class TestHostileBytes:
    @given(st.binary(max_size=200))
    @settings(max_examples=2000)
    def test_random_bytes_raise_only_codec_errors(self, data: bytes) -> None:
        """Any bytes: packets, nothing, or MqttCodecError; never another exception."""
        decoder = MqttDecoder(max_packet_size=10_000, publish_properties=True)
        try:
            decoder.feed(data)
        except MqttCodecError as exc:
            reason = exc.reason_code
        else:
            reason = 0x80
        assert reason >= 0x80

    @given(packets, st.data())
    @settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
    def test_mutated_packets_raise_only_codec_errors(
        self, packet: Packet, data: st.DataObject
    ) -> None:
        """A valid packet with bytes flipped, cut or inserted: still only MqttCodecError."""
        raw = bytearray(encode(packet))
        for _ in range(data.draw(st.integers(1, 4))):
            where = data.draw(st.integers(0, len(raw) - 1))
            action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
            if action == "flip":
                raw[where] = data.draw(st.integers(0, 255))
            elif action == "drop" and len(raw) > 1:
                del raw[where]
            else:
                raw.insert(where, data.draw(st.integers(0, 255)))
        for publish_properties in (False, True):
            try:
                MqttDecoder(publish_properties=publish_properties).feed(bytes(raw))
            except MqttCodecError:
                pass

    def test_remaining_length_longer_than_four_bytes(self) -> None:
        """1.5.5: at most 4 bytes."""
        assert _reason(b"\x30\xff\xff\xff\xff\x01") == ReasonCode.MALFORMED_PACKET

    def test_remaining_length_not_minimal(self) -> None:
        """MQTT-1.5.5-1: the shortest encoding only."""
        assert _reason(b"\x30\x80\x00") == ReasonCode.MALFORMED_PACKET

    def test_packet_too_large_is_refused_before_it_is_buffered(self) -> None:
        """A header announcing more than the maximum raises at once (0x95)."""
        header = b"\x30" + encode_varint(5_000_000)
        assert _reason(header, max_packet_size=1_000_000) == ReasonCode.PACKET_TOO_LARGE

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (b"\x32\x05\x00\x01a\x00\x00", ReasonCode.PROTOCOL_ERROR),  # QoS 1, packet id 0
            (b"\x36\x04\x00\x01a\x00", ReasonCode.MALFORMED_PACKET),  # QoS 3
            (b"\x38\x04\x00\x01a\x00", ReasonCode.PROTOCOL_ERROR),  # DUP on QoS 0
            (b"\x30\x03\x00\x00\x00", ReasonCode.TOPIC_ALIAS_INVALID),  # empty topic
            (b"\x30\x04\x00\x01+\x00", ReasonCode.TOPIC_NAME_INVALID),  # wildcard in a name
            (b"\x30\x04\x00\x01\x00\x00", ReasonCode.TOPIC_NAME_INVALID),  # U+0000
            (b"\x30\x05\x00\x02\xc3\x28\x00", ReasonCode.MALFORMED_PACKET),  # bad UTF-8
            (b"\x30\x05\x00\x09abc", ReasonCode.MALFORMED_PACKET),  # topic past the end
            (b"\x30\x03\x00\x01a", ReasonCode.MALFORMED_PACKET),  # no property length
            (b"\x30\x05\x00\x01a\x05x", ReasonCode.MALFORMED_PACKET),  # properties past the end
            (b"\x41\x02\x00\x01", ReasonCode.MALFORMED_PACKET),  # PUBACK with flags
            (b"\x40\x02\x00\x00", ReasonCode.PROTOCOL_ERROR),  # PUBACK packet id 0
            (b"\x40\x01\x00", ReasonCode.MALFORMED_PACKET),  # PUBACK too short
            (b"\x20\x01\x00", ReasonCode.MALFORMED_PACKET),  # CONNACK too short
            (b"\x20\x03\x02\x00\x00", ReasonCode.MALFORMED_PACKET),  # reserved CONNACK flag
            (b"\x20\x05\x00\x00\x02\x21\x00", ReasonCode.MALFORMED_PACKET),  # property cut
            (b"\x20\x06\x00\x00\x03\x21\x00\x00", ReasonCode.PROTOCOL_ERROR),  # receive max 0
            (b"\x20\x06\x00\x00\x03\x23\x00\x01", ReasonCode.PROTOCOL_ERROR),  # alias in CONNACK
            (b"\x20\x05\x00\x00\x02\x7f\x00", ReasonCode.MALFORMED_PACKET),  # unknown property
            (
                b"\x20\x09\x00\x00\x06\x21\x00\x01\x21\x00\x02",
                ReasonCode.PROTOCOL_ERROR,
            ),  # property twice
            (b"\x20\x05\x00\x00\x02\x24\x02", ReasonCode.PROTOCOL_ERROR),  # maximum QoS 2
            (b"\x90\x03\x00\x01\x00", ReasonCode.PROTOCOL_ERROR),  # SUBACK without codes
            (b"\xc0\x01\x00", ReasonCode.MALFORMED_PACKET),  # PINGREQ with a body
            (b"\xd1\x00", ReasonCode.MALFORMED_PACKET),  # PINGRESP with flags
            (b"\x50\x02\x00\x01", ReasonCode.PROTOCOL_ERROR),  # PUBREC: QoS 2 not used
            (b"\xf0\x00", ReasonCode.PROTOCOL_ERROR),  # AUTH not used
            (b"\x00\x00", ReasonCode.PROTOCOL_ERROR),  # reserved type 0
            (b"\x80\x03\x00\x01\x00", ReasonCode.MALFORMED_PACKET),  # SUBSCRIBE flags not 0010
            (b"\x10\x07\x00\x04MQTX\x05\x00", ReasonCode.PROTOCOL_ERROR),  # protocol name
            (
                b"\x10\x0a\x00\x04MQTT\x04\x00\x00\x3c",
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
            ),  # MQTT 3.1.1
        ],
    )
    def test_named_violations(self, data: bytes, reason: int) -> None:
        """Each malformed or forbidden form gives its reason code."""
        assert _reason(data) == reason

    def test_error_then_stream_is_not_trusted(self) -> None:
        """The decoder raises at the bad packet; packets before it in the same read are lost with
        the connection (the caller closes it), which is what the spec asks."""
        good = encode_publish("a", b"1", 1, 1)
        with pytest.raises(MqttCodecError):
            MqttDecoder().feed(good + b"\x40\x02\x00\x00")

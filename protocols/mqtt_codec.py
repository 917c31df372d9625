"""MQTT 5.0 packets, sans-I/O: the subset alarmrelay speaks, encoded and decoded without a socket.

Covered (OASIS MQTT Version 5.0, the section numbers below): CONNECT (3.1) and CONNACK (3.2),
PUBLISH QoS 0/1 (3.3), PUBACK (3.4), SUBSCRIBE (3.8) and SUBACK (3.9), PINGREQ/PINGRESP (3.12,
3.13), DISCONNECT (3.14), the property table (2.2.2.2), reason codes (2.4), Variable Byte Integers
(1.5.5) and UTF-8 strings (1.5.4). QoS 2 flows, UNSUBSCRIBE and AUTH are not used by alarmrelay:
receiving one is a protocol error.

Both directions are encoded and decoded (a client writes CONNECT, a test broker-side check reads
it), so every packet round-trips. :class:`MqttDecoder` is the stream side: feed it whatever the
socket read (a packet split anywhere, several per read) and it returns the complete packets.

The receive path is the hot one: a PUBLISH's properties are skipped by their length unless the
decoder is asked for them (alarmrelay needs none), its topic is decoded once, and its payload is
one slice. Hostile bytes raise only :class:`MqttCodecError`, carrying the MQTT reason code a
DISCONNECT should give (0x81 malformed packet, 0x82 protocol error, 0x95 packet too large); any
other exception escaping the decoder is a bug.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Final

import msgspec

PROTOCOL_NAME: Final = b"MQTT"
PROTOCOL_LEVEL: Final = 5
MAX_REMAINING_LENGTH: Final = 268_435_455  # 4-byte Variable Byte Integer (1.5.5)
MAX_PACKET_ID: Final = 65_535

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class PacketType(IntEnum):
    """The control packet types (2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ReasonCode(IntEnum):
    """MQTT 5 reason codes (2.4); below 0x80 is success, 0x80 and above a failure."""

    SUCCESS = 0x00  # also "normal disconnection" and "granted QoS 0"
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


def reason_name(code: int) -> str:
    """A reason code as text (``0x87 not authorized``); unknown codes show as hex only."""
    try:
        return f"0x{code:02X} {ReasonCode(code).name.lower().replace('_', ' ')}"
    except ValueError:
        return f"0x{code:02X}"


class MqttCodecError(Exception):
    """The peer sent bytes that are not a valid MQTT 5 packet (or one we do not accept).

    ``reason_code`` is what our DISCONNECT tells the peer: 0x81 malformed packet, 0x82 protocol
    error, 0x95 packet too large.
    """

    def __init__(self, message: str, reason_code: int = ReasonCode.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.reason_code = int(reason_code)


# -- properties (2.2.2.2) ------------------------------------------------------------------------

_BYTE, _U16_T, _U32_T, _VARINT, _STRING, _BINARY, _PAIR = range(7)

# property id → (field name, type)
_PROPERTY_TYPES: Final[dict[int, tuple[str, int]]] = {
    0x01: ("payload_format_indicator", _BYTE),
    0x02: ("message_expiry_interval", _U32_T),
    0x03: ("content_type", _STRING),
    0x08: ("response_topic", _STRING),
    0x09: ("correlation_data", _BINARY),
    0x0B: ("subscription_identifiers", _VARINT),
    0x11: ("session_expiry_interval", _U32_T),
    0x12: ("assigned_client_identifier", _STRING),
    0x13: ("server_keep_alive", _U16_T),
    0x15: ("authentication_method", _STRING),
    0x16: ("authentication_data", _BINARY),
    0x17: ("request_problem_information", _BYTE),
    0x18: ("will_delay_interval", _U32_T),
    0x19: ("request_response_information", _BYTE),
    0x1A: ("response_information", _STRING),
    0x1C: ("server_reference", _STRING),
    0x1F: ("reason_string", _STRING),
    0x21: ("receive_maximum", _U16_T),
    0x22: ("topic_alias_maximum", _U16_T),
    0x23: ("topic_alias", _U16_T),
    0x24: ("maximum_qos", _BYTE),
    0x25: ("retain_available", _BYTE),
    0x26: ("user_properties", _PAIR),
    0x27: ("maximum_packet_size", _U32_T),
    0x28: ("wildcard_subscription_available", _BYTE),
    0x29: ("subscription_identifier_available", _BYTE),
    0x2A: ("shared_subscription_available", _BYTE),
}
_PROPERTY_IDS: Final = {name: pid for pid, (name, _) in _PROPERTY_TYPES.items()}

# Which properties each packet may carry (the "Properties" subsections of chapter 3).
_ALLOWED: Final[dict[PacketType, frozenset[int]]] = {
    PacketType.CONNECT: frozenset({0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16}),
    PacketType.CONNACK: frozenset(
        {0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A}
        | {0x1C, 0x15, 0x16}
    ),
    PacketType.PUBLISH: frozenset({0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03}),
    PacketType.PUBACK: frozenset({0x1F, 0x26}),
    PacketType.SUBSCRIBE: frozenset({0x0B, 0x26}),
    PacketType.SUBACK: frozenset({0x1F, 0x26}),
    PacketType.DISCONNECT: frozenset({0x11, 0x1F, 0x26, 0x1C}),
}


class Properties(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """MQTT 5 properties; a field left ``None`` (or empty) is absent on the wire."""

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None


NO_PROPERTIES: Final = Properties()

# -- packets -------------------------------------------------------------------------------------


class Connect(msgspec.Struct, frozen=True, kw_only=True):
    """CONNECT (3.1). Wills are not used by alarmrelay and not supported."""

    client_id: str
    clean_start: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES


class Connack(msgspec.Struct, frozen=True, kw_only=True):
    """CONNACK (3.2)."""

    session_present: bool
    reason_code: int
    properties: Properties = NO_PROPERTIES


class Publish(msgspec.Struct, frozen=True, gc=False):
    """PUBLISH (3.3). ``packet_id`` is 0 for QoS 0. ``properties`` is None when skipped."""

    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0
    retain: bool = False
    dup: bool = False
    properties: Properties | None = None


class Puback(msgspec.Struct, frozen=True, gc=False):
    """PUBACK (3.4)."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


class Subscription(msgspec.Struct, frozen=True):
    """One topic filter of a SUBSCRIBE and its options (3.8.3.1)."""

    topic_filter: str
    qos: int = 1
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


class Subscribe(msgspec.Struct, frozen=True, kw_only=True):
    """SUBSCRIBE (3.8)."""

    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES


class Suback(msgspec.Struct, frozen=True, kw_only=True):
    """SUBACK (3.9): one reason code per requested filter (0, 1, 2 = granted QoS)."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


class PingReq(msgspec.Struct, frozen=True):
    """PINGREQ (3.12)."""


class PingResp(msgspec.Struct, frozen=True):
    """PINGRESP (3.13)."""


class Disconnect(msgspec.Struct, frozen=True, kw_only=True):
    """DISCONNECT (3.14)."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet = Connect | Connack | Publish | Puback | Subscribe | Suback | PingReq | PingResp | Disconnect

# -- primitives ----------------------------------------------------------------------------------

_SMALL_VARINTS: Final = tuple(bytes((n,)) for n in range(128))


def encode_varint(value: int) -> bytes:
    """A Variable Byte Integer (1.5.5), 1-4 bytes; ValueError outside 0-268,435,455."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); MqttCodecError when longer than 4 bytes, not minimal, or cut."""
    value = 0
    shift = 0
    for count in range(4):
        if pos >= end:
            raise MqttCodecError("Variable Byte Integer runs past the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and count:
                raise MqttCodecError("Variable Byte Integer not in its shortest form")
            return value, pos
        shift += 7
    raise MqttCodecError("Variable Byte Integer longer than 4 bytes")


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("MQTT strings cannot contain U+0000")


def _encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 65_535:
        raise ValueError("MQTT strings are at most 65,535 bytes")
    _check_text(text)
    return _U16.pack(len(raw)) + raw


def _encode_bin(data: bytes) -> bytes:
    if len(data) > 65_535:
        raise ValueError("MQTT binary data is at most 65,535 bytes")
    return _U16.pack(len(data)) + data


def _read_u16(data: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise MqttCodecError("two-byte integer runs past the packet")
    return (data[pos] << 8) | data[pos + 1]


def _read_bin(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    size = _read_u16(data, pos, end)
    start = pos + 2
    if start + size > end:
        raise MqttCodecError("string or binary data runs past the packet")
    return bytes(data[start : start + size]), start + size


def _read_str(data: bytes, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _read_bin(data, pos, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MqttCodecError("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise MqttCodecError("string contains U+0000")
    return text, pos


def _encode_properties(props: Properties, packet: PacketType) -> bytes:
    if props is NO_PROPERTIES:
        return b"\x00"
    allowed = _ALLOWED.get(packet, frozenset())
    out = bytearray()
    for name in props.__struct_fields__:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        pid = _PROPERTY_IDS[name]
        if pid not in allowed:
            raise ValueError(f"property {name} is not allowed in {packet.name}")
        kind = _PROPERTY_TYPES[pid][1]
        if kind == _PAIR:
            for key, val in value:
                out += bytes((pid,)) + _encode_str(key) + _encode_str(val)
            continue
        if kind == _VARINT:
            for item in value:
                if not 1 <= item <= MAX_REMAINING_LENGTH:
                    raise ValueError("subscription identifiers are 1-268,435,455")
                out += bytes((pid,)) + encode_varint(item)
            continue
        out.append(pid)
        if kind == _BYTE:
            if not 0 <= value <= 255:
                raise ValueError(f"property {name} is one byte")
            out.append(value)
        elif kind == _U16_T:
            out += _U16.pack(value)
        elif kind == _U32_T:
            out += _U32.pack(value)
        elif kind == _STRING:
            out += _encode_str(value)
        else:
            out += _encode_bin(value)
    return encode_varint(len(out)) + bytes(out)


def _skip_properties(data: bytes, pos: int, end: int) -> int:
    size, pos = _read_varint(data, pos, end)
    if pos + size > end:
        raise MqttCodecError("properties run past the packet")
    return pos + size


def _decode_properties(
    data: bytes, pos: int, end: int, packet: PacketType
) -> tuple[Properties, int]:
    size, pos = _read_varint(data, pos, end)
    stop = pos + size
    if stop > end:
        raise MqttCodecError("properties run past the packet")
    if not size:
        return NO_PROPERTIES, pos
    allowed = _ALLOWED.get(packet, frozenset())
    fields: dict[str, object] = {}
    pairs: list[tuple[str, str]] = []
    sub_ids: list[int] = []
    while pos < stop:
        pid, pos = _read_varint(data, pos, stop)
        spec = _PROPERTY_TYPES.get(pid)
        if spec is None:
            raise MqttCodecError(f"unknown property 0x{pid:02X}")
        if pid not in allowed:
            raise MqttCodecError(
                f"property 0x{pid:02X} not allowed in {packet.name}", ReasonCode.PROTOCOL_ERROR
            )
        name, kind = spec
        if kind == _PAIR:
            key, pos = _read_str(data, pos, stop)
            val, pos = _read_str(data, pos, stop)
            pairs.append((key, val))
            continue
        if kind == _VARINT:
            ident, pos = _read_varint(data, pos, stop)
            if ident == 0:
                raise MqttCodecError("subscription identifier 0", ReasonCode.PROTOCOL_ERROR)
            sub_ids.append(ident)
            continue
        if name in fields:
            raise MqttCodecError(f"property {name} given twice", ReasonCode.PROTOCOL_ERROR)
        value: object
        if kind == _BYTE:
            if pos >= stop:
                raise MqttCodecError("byte property runs past the properties")
            value = data[pos]
            pos += 1
        elif kind == _U16_T:
            value = _read_u16(data, pos, stop)
            pos += 2
        elif kind == _U32_T:
            if pos + 4 > stop:
                raise MqttCodecError("four-byte property runs past the properties")
            value = _U32.unpack_from(data, pos)[0]
            pos += 4
        elif kind == _STRING:
            value, pos = _read_str(data, pos, stop)
        else:
            value, pos = _read_bin(data, pos, stop)
        fields[name] = value
    if pairs:
        fields["user_properties"] = tuple(pairs)
    if sub_ids:
        fields["subscription_identifiers"] = tuple(sub_ids)
    props = Properties(**fields)  # type: ignore[arg-type]  # names and types from the table
    _check_property_values(props)
    return props, stop


def _check_property_values(props: Properties) -> None:
    if props.receive_maximum == 0:
        raise MqttCodecError("receive maximum 0", ReasonCode.PROTOCOL_ERROR)
    if props.maximum_packet_size == 0:
        raise MqttCodecError("maximum packet size 0", ReasonCode.PROTOCOL_ERROR)
    for name in (
        "payload_format_indicator",
        "request_problem_information",
        "request_response_information",
        "maximum_qos",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    ):
        value = getattr(props, name)
        if value is not None and value > 1:
            raise MqttCodecError(f"property {name} must be 0 or 1", ReasonCode.PROTOCOL_ERROR)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def _check_packet_id(packet_id: int) -> None:
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet identifier {packet_id} outside 1-65535")


def _check_topic_name(topic: str) -> None:
    if not topic:
        raise ValueError("empty topic name")
    if "+" in topic or "#" in topic:
        raise ValueError(f"topic name {topic!r} contains a wildcard")


# -- encoders ------------------------------------------------------------------------------------


def encode_connect(packet: Connect) -> bytes:
    """CONNECT bytes."""
    flags = 0x02 if packet.clean_start else 0
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        flags |= 0x40
    if not 0 <= packet.keep_alive <= 65_535:
        raise ValueError("keep alive is 0-65535 seconds")
    body = bytearray(_encode_str("MQTT"))
    body += bytes((PROTOCOL_LEVEL, flags)) + _U16.pack(packet.keep_alive)
    body += _encode_properties(packet.properties, PacketType.CONNECT)
    body += _encode_str(packet.client_id)
    if packet.username is not None:
        body += _encode_str(packet.username)
    if packet.password is not None:
        body += _encode_bin(packet.password)
    return _packet(0x10, bytes(body))


def encode_connack(packet: Connack) -> bytes:
    """CONNACK bytes."""
    body = bytes((1 if packet.session_present else 0, packet.reason_code))
    return _packet(0x20, body + _encode_properties(packet.properties, PacketType.CONNACK))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
    properties: Properties | None = None,
) -> bytes:
    """PUBLISH bytes (no properties unless given)."""
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS {qos}")
    _check_topic_name(topic)
    raw_topic = topic.encode("utf-8")
    if len(raw_topic) > 65_535:
        raise ValueError("topic longer than 65,535 bytes")
    _check_text(topic)
    props = (
        b"\x00"
        if properties is None or properties is NO_PROPERTIES
        else _encode_properties(properties, PacketType.PUBLISH)
    )
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if qos:
        _check_packet_id(packet_id)
        variable = _U16.pack(len(raw_topic)) + raw_topic + _U16.pack(packet_id) + props
    else:
        if dup:
            raise ValueError("DUP is set only on QoS 1 and 2")
        variable = _U16.pack(len(raw_topic)) + raw_topic + props
    size = len(variable) + len(payload)
    return b"".join((bytes((first,)), encode_varint(size), variable, payload))


def encode_puback(
    packet_id: int, reason_code: int = 0, properties: Properties | None = None
) -> bytes:
    """PUBACK bytes; the short form (no reason code) for success without properties."""
    _check_packet_id(packet_id)
    if properties is None or properties is NO_PROPERTIES:
        if reason_code == 0:
            return b"\x40\x02" + _U16.pack(packet_id)
        return b"\x40\x03" + _U16.pack(packet_id) + bytes((reason_code,))
    body = (
        _U16.pack(packet_id)
        + bytes((reason_code,))
        + _encode_properties(properties, PacketType.PUBACK)
    )
    return _packet(0x40, body)


def encode_subscribe(packet: Subscribe) -> bytes:
    """SUBSCRIBE bytes."""
    _check_packet_id(packet.packet_id)
    if not packet.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    body = bytearray(_U16.pack(packet.packet_id))
    body += _encode_properties(packet.properties, PacketType.SUBSCRIBE)
    for sub in packet.subscriptions:
        if not sub.topic_filter:
            raise ValueError("empty topic filter")
        if sub.qos not in (0, 1, 2) or sub.retain_handling not in (0, 1, 2):
            raise ValueError("QoS and retain handling are 0-2")
        options = (
            sub.qos
            | (0x04 if sub.no_local else 0)
            | (0x08 if sub.retain_as_published else 0)
            | (sub.retain_handling << 4)
        )
        body += _encode_str(sub.topic_filter) + bytes((options,))
    return _packet(0x82, bytes(body))


def encode_suback(packet: Suback) -> bytes:
    """SUBACK bytes."""
    _check_packet_id(packet.packet_id)
    body = _U16.pack(packet.packet_id) + _encode_properties(packet.properties, PacketType.SUBACK)
    return _packet(0x90, body + bytes(packet.reason_codes))


PINGREQ: Final = b"\xc0\x00"
PINGRESP: Final = b"\xd0\x00"


def encode_disconnect(reason_code: int = 0, properties: Properties | None = None) -> bytes:
    """DISCONNECT bytes; the two-byte form for a normal disconnection without properties."""
    if properties is None or properties is NO_PROPERTIES:
        if reason_code == 0:
            return b"\xe0\x00"
        return b"\xe0\x01" + bytes((reason_code,))
    body = bytes((reason_code,)) + _encode_properties(properties, PacketType.DISCONNECT)
    return _packet(0xE0, body)


def encode(packet: Packet) -> bytes:
    """Any supported packet's bytes."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic,
            packet.payload,
            packet.qos,
            packet.packet_id,
            retain=packet.retain,
            dup=packet.dup,
            properties=packet.properties,
        )
    if isinstance(packet, Puback):
        return encode_puback(packet.packet_id, packet.reason_code, packet.properties)
    if isinstance(packet, Connect):
        return encode_connect(packet)
    if isinstance(packet, Connack):
        return encode_connack(packet)
    if isinstance(packet, Subscribe):
        return encode_subscribe(packet)
    if isinstance(packet, Suback):
        return encode_suback(packet)
    if isinstance(packet, PingReq):
        return PINGREQ
    if isinstance(packet, PingResp):
        return PINGRESP
    return encode_disconnect(packet.reason_code, packet.properties)


# -- decoders ------------------------------------------------------------------------------------

_PING_REQ: Final = PingReq()
_PING_RESP: Final = PingResp()
_FIXED_FLAGS: Final = {  # packet type → the flags its first byte must carry (2.1.3)
    1: 0x0,
    2: 0x0,
    4: 0x0,
    8: 0x2,
    9: 0x0,
    12: 0x0,
    13: 0x0,
    14: 0x0,
}


def _decode_connect(data: bytes, pos: int, end: int) -> Connect:
    name, pos = _read_bin(data, pos, end)
    if name != PROTOCOL_NAME:
        raise MqttCodecError(f"protocol name {name!r}", ReasonCode.PROTOCOL_ERROR)
    if pos + 4 > end:
        raise MqttCodecError("CONNECT variable header cut short")
    level, flags = data[pos], data[pos + 1]
    if level != PROTOCOL_LEVEL:
        raise MqttCodecError(f"protocol level {level}", ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)
    if flags & 0x01:
        raise MqttCodecError("reserved CONNECT flag set")
    if flags & 0x3C:
        raise MqttCodecError("wills are not supported", ReasonCode.PROTOCOL_ERROR)
    keep_alive = _read_u16(data, pos + 2, end)
    props, pos = _decode_properties(data, pos + 4, end, PacketType.CONNECT)
    client_id, pos = _read_str(data, pos, end)
    username = password = None
    if flags & 0x80:
        username, pos = _read_str(data, pos, end)
    if flags & 0x40:
        password, pos = _read_bin(data, pos, end)
    if pos != end:
        raise MqttCodecError("bytes left after the CONNECT payload")
    return Connect(
        client_id=client_id,
        clean_start=bool(flags & 0x02),
        keep_alive=keep_alive,
        username=username,
        password=password,
        properties=props,
    )


def _decode_connack(data: bytes, pos: int, end: int) -> Connack:
    if pos + 2 > end:
        raise MqttCodecError("CONNACK shorter than 2 bytes")
    flags, reason = data[pos], data[pos + 1]
    if flags & 0xFE:
        raise MqttCodecError("reserved CONNACK flags set")
    props, pos = _decode_properties(data, pos + 2, end, PacketType.CONNACK)
    if pos != end:
        raise MqttCodecError("bytes left after the CONNACK properties")
    return Connack(session_present=bool(flags & 1), reason_code=reason, properties=props)


def _decode_puback(data: bytes, pos: int, end: int) -> Puback:
    size = end - pos
    if size < 2:
        raise MqttCodecError("PUBACK shorter than 2 bytes")
    packet_id = (data[pos] << 8) | data[pos + 1]
    if not packet_id:
        raise MqttCodecError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
    if size == 2:
        return Puback(packet_id)
    reason = data[pos + 2]
    if size == 3:
        return Puback(packet_id, reason)
    props, pos = _decode_properties(data, pos + 3, end, PacketType.PUBACK)
    if pos != end:
        raise MqttCodecError("bytes left after the PUBACK properties")
    return Puback(packet_id, reason, props)


def _decode_subscribe(data: bytes, pos: int, end: int) -> Subscribe:
    packet_id = _read_u16(data, pos, end)
    if not packet_id:
        raise MqttCodecError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
    props, pos = _decode_properties(data, pos + 2, end, PacketType.SUBSCRIBE)
    subs = []
    while pos < end:
        topic_filter, pos = _read_str(data, pos, end)
        if pos >= end:
            raise MqttCodecError("subscription options missing")
        options = data[pos]
        pos += 1
        if options & 0xC0 or options & 0x03 == 3 or (options >> 4) & 0x03 == 3:
            raise MqttCodecError("invalid subscription options", ReasonCode.PROTOCOL_ERROR)
        subs.append(
            Subscription(
                topic_filter,
                options & 0x03,
                bool(options & 0x04),
                bool(options & 0x08),
                (options >> 4) & 0x03,
            )
        )
    if not subs:
        raise MqttCodecError("SUBSCRIBE without a topic filter", ReasonCode.PROTOCOL_ERROR)
    return Subscribe(packet_id=packet_id, subscriptions=tuple(subs), properties=props)


def _decode_suback(data: bytes, pos: int, end: int) -> Suback:
    packet_id = _read_u16(data, pos, end)
    if not packet_id:
        raise MqttCodecError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
    props, pos = _decode_properties(data, pos + 2, end, PacketType.SUBACK)
    if pos >= end:
        raise MqttCodecError("SUBACK without reason codes", ReasonCode.PROTOCOL_ERROR)
    return Suback(packet_id=packet_id, reason_codes=tuple(data[pos:end]), properties=props)


def _decode_disconnect(data: bytes, pos: int, end: int) -> Disconnect:
    if pos == end:
        return Disconnect()
    reason = data[pos]
    if pos + 1 == end:
        return Disconnect(reason_code=reason)
    props, pos = _decode_properties(data, pos + 1, end, PacketType.DISCONNECT)
    if pos != end:
        raise MqttCodecError("bytes left after the DISCONNECT properties")
    return Disconnect(reason_code=reason, properties=props)


def _long_remaining_length(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """A remaining length of 2-4 bytes at ``pos``: (length, start of the body), or (-1, 0) when cut."""
    length = 0
    shift = 0
    while True:
        if pos >= n:
            return -1, 0
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:
                raise MqttCodecError("remaining length not in its shortest form")
            return length, pos
        shift += 7
        if shift > 21:
            raise MqttCodecError("remaining length longer than 4 bytes")


def _too_large(size: int, max_size: int) -> None:
    raise MqttCodecError(
        f"packet of {size} bytes exceeds the maximum {max_size}", ReasonCode.PACKET_TOO_LARGE
    )


def decode_packet(data: bytes, *, publish_properties: bool = True) -> Packet:
    """Exactly one whole packet (fixed header included); MqttCodecError otherwise."""
    decoder = MqttDecoder(publish_properties=publish_properties)
    packets = decoder.feed(data)
    if len(packets) != 1 or decoder.buffered:
        raise MqttCodecError(f"expected one whole packet, got {len(packets)} and a rest")
    return packets[0]


class MqttDecoder:
    """Stream decoder: ``feed(bytes)`` returns the whole packets received so far, in order.

    ``max_packet_size`` bounds a packet, fixed header included: a larger one raises at once
    (reason 0x95) without being buffered. After any :class:`MqttCodecError` the stream cannot be
    trusted: close the connection.
    """

    __slots__ = ("_chunks", "_held", "_need", "max_packet_size", "publish_properties")

    def __init__(
        self, *, max_packet_size: int = MAX_REMAINING_LENGTH + 5, publish_properties: bool = False
    ) -> None:
        self.max_packet_size = max_packet_size
        self.publish_properties = publish_properties
        self._chunks: list[bytes] = []  # bytes of an incomplete packet
        self._held = 0  # their total length
        self._need = 0  # length of the packet they start, once its header is known

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return self._held

    def feed(self, data: bytes) -> list[Packet]:
        """The packets completed by ``data`` (possibly none)."""
        if self._chunks:
            self._held += len(data)
            self._chunks.append(data)
            if self._held < self._need:
                return []  # still inside one large packet: no join, no parse
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._held = self._need = 0
        out: list[Packet] = []
        pos = 0
        n = len(data)
        max_size = self.max_packet_size
        try:
            while n - pos >= 2:
                first = data[pos]
                byte = data[pos + 1]
                if byte < 0x80:
                    length = byte
                    start = pos + 2
                else:
                    length, start = _long_remaining_length(data, pos + 1, n)
                    if length < 0:
                        break
                end = start + length
                if end - pos > max_size:
                    _too_large(end - pos, max_size)
                if end > n:
                    self._need = end - pos
                    break
                out.append(self._parse(first, data, start, end))
                pos = end
        except MqttCodecError:
            raise
        except (IndexError, ValueError, struct.error) as exc:  # a missed bounds check: still ours
            raise MqttCodecError(f"malformed packet: {exc}") from None
        if pos < n:
            rest = data[pos:] if pos else data
            self._chunks.append(rest)
            self._held = len(rest)
        return out

    def _parse(self, first: int, data: bytes, pos: int, end: int) -> Packet:
        kind = first >> 4
        if kind == 3:
            return self._publish(first, data, pos, end)
        if kind == 4:
            if first != 0x40:
                raise MqttCodecError("PUBACK with flags set")
            if end - pos == 2:  # the usual short form
                packet_id = (data[pos] << 8) | data[pos + 1]
                if not packet_id:
                    raise MqttCodecError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
                return Puback(packet_id)
            return _decode_puback(data, pos, end)
        flags = _FIXED_FLAGS.get(kind)
        if flags is None:
            name = PacketType(kind).name if kind else "reserved type 0"
            raise MqttCodecError(f"{name} packets are not supported", ReasonCode.PROTOCOL_ERROR)
        if first & 0x0F != flags:
            raise MqttCodecError(f"{PacketType(kind).name} with invalid fixed-header flags")
        if kind in {12, 13}:
            if end != pos:
                raise MqttCodecError(f"{PacketType(kind).name} with a body")
            return _PING_REQ if kind == 12 else _PING_RESP
        if kind == 2:
            return _decode_connack(data, pos, end)
        if kind == 9:
            return _decode_suback(data, pos, end)
        if kind == 14:
            return _decode_disconnect(data, pos, end)
        if kind == 8:
            return _decode_subscribe(data, pos, end)
        return _decode_connect(data, pos, end)

    def _publish(self, first: int, data: bytes, pos: int, end: int) -> Publish:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise MqttCodecError("PUBLISH with QoS 3")
        if pos + 2 > end:
            raise MqttCodecError("PUBLISH without a topic")
        size = (data[pos] << 8) | data[pos + 1]
        pos += 2
        stop = pos + size
        if stop > end:
            raise MqttCodecError("PUBLISH topic runs past the packet")
        try:
            topic = data[pos:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise MqttCodecError("PUBLISH topic is not well-formed UTF-8") from None
        if not topic:
            # We never allow topic aliases (no Topic Alias Maximum in CONNECT): a protocol error.
            raise MqttCodecError("PUBLISH with an empty topic", ReasonCode.TOPIC_ALIAS_INVALID)
        if "\x00" in topic or "+" in topic or "#" in topic:
            raise MqttCodecError(f"invalid topic name {topic!r}", ReasonCode.TOPIC_NAME_INVALID)
        packet_id = 0
        if qos:
            if stop + 2 > end:
                raise MqttCodecError("PUBLISH without its packet identifier")
            packet_id = (data[stop] << 8) | data[stop + 1]
            if not packet_id:
                raise MqttCodecError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
            stop += 2
        elif first & 0x08:
            raise MqttCodecError("DUP set on a QoS 0 PUBLISH", ReasonCode.PROTOCOL_ERROR)
        properties: Properties | None = None
        if stop < end and data[stop] == 0:  # no properties: the common case
            stop += 1
            if self.publish_properties:
                properties = NO_PROPERTIES
        elif self.publish_properties:
            properties, stop = _decode_properties(data, stop, end, PacketType.PUBLISH)
            if properties.topic_alias is not None:
                raise MqttCodecError("topic alias not allowed", ReasonCode.TOPIC_ALIAS_INVALID)
        else:
            stop = _skip_properties(data, stop, end)
        return Publish(
            topic,
            data[stop:end],
            qos,
            packet_id,
            bool(first & 0x01),
            bool(first & 0x08),
            properties,
        )


def subscriptions(
    filters: Sequence[tuple[str, int]], *, retain_handling: int = 0
) -> tuple[Subscription, ...]:
    """``[(filter, qos), …]`` as SUBSCRIBE entries (``retain_handling`` 2: no retained messages
    are sent for the subscription, 3.8.3.1)."""
    return tuple(
        Subscription(topic_filter, qos, retain_handling=retain_handling)
        for topic_filter, qos in filters
    )

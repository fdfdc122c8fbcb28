"""The letter-protocol codec: incremental decoding in both directions, and encoding."""

from __future__ import annotations

import functools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplay.errors import LocalProtocolError, RemoteProtocolError
from netplay.framing import messages as m
from netplay.framing.length3 import (
    CLIENT_TO_SERVER_LENGTHS,
    DEFAULT_MAX_JSON_LENGTH,
    MAX_JSON_LENGTH_ON_WIRE,
    SERVER_TO_CLIENT_LENGTHS,
    Decoder,
    Direction,
    encode,
    encode_json,
    parse_json_body,
)

C2S = Direction.CLIENT_TO_SERVER
S2C = Direction.SERVER_TO_CLIENT
DIGITS_120 = "".join(str(i % 8) for i in range(120))


def j_frame(body: bytes) -> bytes:
    """A J frame around raw body bytes (which need not be valid JSON)."""
    return b"J" + len(body).to_bytes(3, "big") + body


def decode_all(decoder: Decoder) -> list[object]:
    """Every frame available now; a non-fatal error shows as ("error", reason)."""
    out: list[object] = []
    while True:
        try:
            frame = decoder.next_frame()
        except RemoteProtocolError as error:
            assert not error.fatal, error.reason
            out.append(("error", error.reason))
            continue
        if frame is None:
            return out
        out.append(frame)


def decode_chunks(chunks: list[bytes], direction: Direction = C2S, **kwargs) -> list[object]:
    decoder = Decoder(direction, **kwargs)
    out: list[object] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out += decode_all(decoder)
    assert decoder.buffered == 0
    return out


def decode_one(data: bytes, direction: Direction = C2S, **kwargs) -> object:
    decoder = Decoder(direction, **kwargs)
    decoder.receive_data(data)
    frame = decoder.next_frame()
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    return frame


def decode_error(data: bytes, direction: Direction = C2S, **kwargs) -> RemoteProtocolError:
    decoder = Decoder(direction, **kwargs)
    decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    return caught.value


# ---------------------------------------------------------------------------
# Every fixed letter, both directions

CLIENT_FRAMES = [
    (b"H004", m.Hello("004")),
    (b"H139", m.Hello("139")),
    (b"ELOL", m.ClientPing("LOL")),
    (b"FLOL", m.Pong("LOL")),
    (b"P5524153", m.PanelRequest(False, "5", "524153")),
    (b"P?000000", m.PanelRequest(False, "?", "000000")),
    (b"Q6123456", m.PanelRequest(True, "6", "123456")),
    (b"IA", m.Input(b"IA")),
    (b"I/", m.Input(b"I/")),
    (b"L5", m.LevelPick(b"L5")),
    (b"W", m.Heartbeat()),
]

SERVER_FRAMES = [
    (b"H", m.HelloAccepted()),
    (b"N", m.HelloRefused()),
    (b"ELOL", m.Ping("LOL")),
    (b"P" + DIGITS_120.encode(), m.Panels("P", DIGITS_120)),
    (b"O" + DIGITS_120.encode(), m.Panels("O", DIGITS_120)),
    (b"Q" + DIGITS_120.encode(), m.Panels("Q", DIGITS_120)),
    (b"R" + DIGITS_120.encode(), m.Panels("R", DIGITS_120)),
    (b"Iz", m.Input(b"Iz")),
    (b"L0", m.LevelPick(b"L0")),
    (b"W", m.Heartbeat()),
]


@pytest.mark.parametrize(("data", "frame"), CLIENT_FRAMES, ids=lambda v: repr(v)[:20])
def test_client_letter_decodes_to_its_frame_and_encodes_back(data, frame):
    assert decode_one(data, C2S) == frame
    assert encode(frame) == data


@pytest.mark.parametrize(("data", "frame"), SERVER_FRAMES, ids=lambda v: repr(v)[:20])
def test_server_letter_decodes_to_its_frame_and_encodes_back(data, frame):
    assert decode_one(data, S2C) == frame
    assert encode(frame) == data


def test_fixed_lengths_are_those_the_clients_use():
    assert CLIENT_TO_SERVER_LENGTHS == {
        "H": 4, "E": 4, "F": 4, "P": 8, "Q": 8, "I": 2, "L": 2, "W": 1,
    }
    assert SERVER_TO_CLIENT_LENGTHS == {
        "H": 1, "N": 1, "E": 4, "P": 121, "O": 121, "Q": 121, "R": 121, "I": 2, "U": 2, "L": 2,
        "W": 1,
    }


@pytest.mark.parametrize("direction", [C2S, S2C])
@pytest.mark.parametrize("letter", ["H", "E", "P", "Q", "I", "L"])
def test_fixed_message_one_byte_short_waits_for_more(direction, letter):
    lengths = CLIENT_TO_SERVER_LENGTHS if direction is C2S else SERVER_TO_CLIENT_LENGTHS
    whole = (letter + "1" * (lengths[letter] - 1)).encode()
    decoder = Decoder(direction)
    decoder.receive_data(whole[:-1])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(whole) - 1
    decoder.receive_data(whole[-1:])
    assert decoder.next_frame() is not None
    assert decoder.buffered == 0


def test_inputs_are_interned_so_the_per_frame_path_allocates_nothing():
    decoder = Decoder(C2S)
    decoder.receive_data(b"IAIA")
    first, second = decoder.frames()
    assert first is second is m.INPUTS[ord("A")]


def test_json_frame_decodes_in_both_directions():
    data = encode_json({"unpaired": ["alice", "bob"]})
    assert data[:4] == b"J" + len(data[4:]).to_bytes(3, "big")
    for direction in (C2S, S2C):
        assert decode_one(data, direction) == m.Json({"unpaired": ["alice", "bob"]})


def test_json_length_is_three_bytes_big_endian():
    body = b'{"name":"' + b"x" * 300 + b'"}'
    data = j_frame(body)
    assert len(body) == 311
    assert data[1:4] == b"\x00\x01\x37"
    assert decode_one(data, max_json_length=1000) == m.Json({"name": "x" * 300})


# ---------------------------------------------------------------------------
# Split and merged streams

STREAM_MESSAGES = [
    b"H004",
    encode_json({"name": "alice", "level": 5, "character": "lip"}),
    b"FLOL",
    b"ELOL",
    encode_json({"game_request": {"sender": "alice", "receiver": "bob"}}),
    b"P?000000",
    j_frame(b"not json"),  # a non-fatal error in the middle of the stream
    b"Q6123456",
    b"IA",
    b"IB",
    b"L5",
    j_frame(b""),
    encode_json(
        {"menu_state": {"cursor": "ready", "ready": True, "character": "lip", "level": 10}}
    ),
    b"W",
    encode_json({"name": "\u00e9l\u00e8ve \u2603"}),  # multi-byte UTF-8 split mid-character
    b"I/",
]
STREAM = b"".join(STREAM_MESSAGES)


@functools.cache
def expected_stream() -> list[object]:
    return decode_chunks([STREAM])


def test_merged_stream_decodes_every_message_in_order():
    assert len(expected_stream()) == len(STREAM_MESSAGES)
    assert expected_stream()[0] == m.Hello("004")
    assert expected_stream()[6] == ("error", "json_invalid")
    assert expected_stream()[11] == ("error", "json_invalid")
    assert expected_stream()[-1] == m.Input(b"I/")
    assert expected_stream()[-2] == m.Json({"name": "\u00e9l\u00e8ve \u2603"})


def test_stream_split_at_every_byte_boundary_decodes_the_same():
    for cut in range(len(STREAM) + 1):
        assert decode_chunks([STREAM[:cut], STREAM[cut:]]) == expected_stream(), cut


def test_stream_fed_one_byte_at_a_time_decodes_the_same():
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert decode_chunks(chunks) == expected_stream()


def test_stream_with_empty_chunks_decodes_the_same():
    assert decode_chunks([b"", STREAM[:3], b"", STREAM[3:], b""]) == expected_stream()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_stream_in_any_chunking_decodes_the_same(cuts):
    edges = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in zip(edges, edges[1:])]
    assert decode_chunks(chunks) == expected_stream()


def test_server_stream_split_at_every_byte_boundary_decodes_the_same():
    stream = b"".join(data for data, _ in SERVER_FRAMES) + encode_json({"leave_room": True})
    expected = [frame for _, frame in SERVER_FRAMES] + [m.Json({"leave_room": True})]
    for cut in range(len(stream) + 1):
        assert decode_chunks([stream[:cut], stream[cut:]], S2C) == expected


def test_buffered_counts_bytes_not_yet_forming_a_message():
    decoder = Decoder(C2S)
    assert decoder.buffered == 0
    decoder.receive_data(b"IAFL")
    assert decoder.buffered == 4
    assert decoder.next_frame() == m.Input(b"IA")
    assert decoder.buffered == 2
    assert decoder.next_frame() is None
    assert decoder.buffered == 2
    decoder.receive_data(b"OLJ\x00")
    assert decoder.next_frame() == m.Pong("LOL")
    assert decoder.buffered == 2
    decoder.receive_data(b"\x00\x02{}")
    assert decoder.next_frame() == m.Json({})
    assert decoder.buffered == 0


def test_buffered_drops_a_refused_json_frame():
    decoder = Decoder(C2S)
    decoder.receive_data(j_frame(b"[1]") + b"I")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    assert decoder.buffered == 1


def test_long_lived_decoder_keeps_decoding_after_much_traffic():
    # Past the decoder's internal compaction threshold, frames still come out right.
    decoder = Decoder(C2S)
    decoder.receive_data(b"IA" * 40000 + b"FLO")
    frames = decoder.frames()
    assert len(frames) == 40000
    assert decoder.buffered == 3
    decoder.receive_data(b"L")
    assert decoder.frames() == [m.Pong("LOL")]


# ---------------------------------------------------------------------------
# Fatal errors

def test_json_length_over_the_bound_is_fatal_as_soon_as_the_header_arrives():
    decoder = Decoder(C2S, max_json_length=100)
    decoder.receive_data(b"J\x00\x00")
    assert decoder.next_frame() is None  # header incomplete: nothing to judge yet
    decoder.receive_data(b"\x65")  # 101: no body byte has arrived
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.fatal
    assert caught.value.reason == "json_frame_too_long"
    assert caught.value.context == {"length": 101, "limit": 100}


def test_json_length_at_the_bound_is_accepted():
    body = b'{"a":"' + b"x" * 92 + b'"}'
    assert len(body) == 100
    assert decode_one(j_frame(body), max_json_length=100) == m.Json({"a": "x" * 92})
    error = decode_error(j_frame(body + b" "), max_json_length=100)
    assert error.fatal and error.reason == "json_frame_too_long"


def test_default_bound_refuses_the_largest_length_the_wire_can_say():
    error = decode_error(b"J\xff\xff\xff")
    assert error.fatal
    assert error.context["limit"] == DEFAULT_MAX_JSON_LENGTH


def test_decoder_stays_broken_after_a_fatal_error():
    decoder = Decoder(C2S, max_json_length=10)
    decoder.receive_data(b"J\x00\x00\x0b")
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_frame()
    decoder.receive_data(b"IA" * 5)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_frame()
        assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        decoder.frames()


@pytest.mark.parametrize(
    ("direction", "letter"),
    [(C2S, b"O"), (C2S, b"R"), (C2S, b"N"), (C2S, b"X"), (C2S, b"\x00"), (C2S, b"j"),
     (S2C, b"F"), (S2C, b"X"), (S2C, b"\xff"), (C2S, b"\xff")],
)
def test_unknown_letter_is_fatal_and_breaks_the_decoder(direction, letter):
    decoder = Decoder(direction)
    decoder.receive_data(b"W" + letter + b"W")
    assert decoder.next_frame() == m.Heartbeat()
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    assert caught.value.fatal
    assert caught.value.reason == "unknown_letter"
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_unknown_letter_is_fatal_before_the_rest_of_its_message_arrives():
    error = decode_error(b"Z")
    assert error.fatal and error.reason == "unknown_letter"


@pytest.mark.parametrize("bound", [-1, MAX_JSON_LENGTH_ON_WIRE + 1])
def test_decoder_refuses_a_bound_the_wire_cannot_express(bound):
    with pytest.raises(LocalProtocolError):
        Decoder(C2S, max_json_length=bound)


def test_decoder_accepts_the_extreme_bounds():
    decoder = Decoder(C2S, max_json_length=0)
    decoder.receive_data(j_frame(b"") + b"W")
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    assert not caught.value.fatal  # an empty body fits a bound of 0, it is just not JSON
    assert decoder.next_frame() == m.Heartbeat()
    Decoder(C2S, max_json_length=MAX_JSON_LENGTH_ON_WIRE)


# ---------------------------------------------------------------------------
# Non-fatal errors: the frame is dropped, decoding goes on

BAD_BODIES = [
    pytest.param(b'{"name": "\xff"}', "json_not_utf8", id="invalid-utf8"),
    pytest.param(b'{"name": "\xed\xa0\x80"}', "json_not_utf8", id="utf8-surrogate"),
    pytest.param(b'{"name": ', "json_invalid", id="truncated"),
    pytest.param(b"{'name': 1}", "json_invalid", id="single-quotes"),
    pytest.param(b'{"a": NaN}', "json_invalid", id="nan"),
    pytest.param(b'{"a": Infinity}', "json_invalid", id="infinity"),
    pytest.param(b'{"a": -Infinity}', "json_invalid", id="minus-infinity"),
    pytest.param(b'{"a": 1e400}', "json_invalid", id="float-overflowing-to-infinity"),
    pytest.param(b'{"a": -1e999}', "json_invalid", id="float-overflowing-to-minus-infinity"),
    pytest.param(b'{"a": 1} {"b": 2}', "json_invalid", id="two-documents"),
    pytest.param(b"", "json_invalid", id="zero-length"),
    pytest.param(b"   ", "json_invalid", id="only-spaces"),
    pytest.param(b"[]", "json_not_an_object", id="array"),
    pytest.param(b'"leave_room"', "json_not_an_object", id="string"),
    pytest.param(b"3", "json_not_an_object", id="number"),
    pytest.param(b"true", "json_not_an_object", id="true"),
    pytest.param(b"null", "json_not_an_object", id="null"),
    pytest.param(b'{"a": ' + b"9" * 5000 + b"}", "json_invalid", id="huge-integer"),
    pytest.param(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "json_invalid",
                 id="deep-nesting"),
    pytest.param(b'{"a": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", "json_invalid",
                 id="deep-object-nesting"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_bad_json_body_is_a_non_fatal_error_and_decoding_continues(body, reason):
    decoder = Decoder(C2S, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
    decoder.receive_data(b"IA" + j_frame(body) + b"FLOL" + encode_json({"ok": 1}))
    assert decoder.next_frame() == m.Input(b"IA")
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    assert not caught.value.fatal
    assert caught.value.reason == reason
    assert decoder.next_frame() == m.Pong("LOL")
    assert decoder.next_frame() == m.Json({"ok": 1})
    assert decoder.next_frame() is None


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_parse_json_body_refuses_without_a_decoder(body, reason):
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_body(body)
    assert (caught.value.reason, caught.value.fatal) == (reason, False)


def test_non_object_json_names_its_type():
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_body(b"[1, 2]")
    assert caught.value.context == {"json_type": "list"}


def test_invalid_utf8_error_says_where():
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_body(b'{"a":"\xc3"}')
    assert caught.value.context == {"position": 6}


def test_large_but_finite_numbers_are_still_json():
    assert parse_json_body(b'{"a": 1e300, "b": -2.5e-300, "c": 12345678901234567890}') == {
        "a": 1e300, "b": -2.5e-300, "c": 12345678901234567890,
    }


def test_many_bad_frames_in_a_row_each_raise_once():
    decoder = Decoder(C2S)
    decoder.receive_data(j_frame(b"x") * 3 + b"W")
    assert decode_all(decoder) == [("error", "json_invalid")] * 3 + [m.Heartbeat()]


# ---------------------------------------------------------------------------
# Round trips and the encoder

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=60, deadline=None)
@given(json_objects)
def test_json_objects_round_trip_through_encoder_and_decoder(payload):
    data = encode_json(payload)
    assert int.from_bytes(data[1:4], "big") == len(data) - 4
    assert json.loads(data[4:].decode("utf-8")) == payload
    for direction in (C2S, S2C):
        decoder = Decoder(direction, max_json_length=MAX_JSON_LENGTH_ON_WIRE)
        decoder.receive_data(data)
        assert decoder.next_frame() == m.Json(payload)
        assert decoder.buffered == 0
    assert encode(m.Json(payload)) == data


@settings(max_examples=25, deadline=None)
@given(st.lists(json_objects, min_size=1, max_size=3), st.data())
def test_json_objects_split_anywhere_round_trip(payloads, data):
    stream = b"".join(encode_json(p) for p in payloads)
    cut = data.draw(st.integers(0, len(stream)))
    frames = decode_chunks([stream[:cut], stream[cut:]], max_json_length=MAX_JSON_LENGTH_ON_WIRE)
    assert frames == [m.Json(p) for p in payloads]


def test_encode_json_is_compact_utf8():
    assert encode_json({"name": "\u00e9", "a": [1, 2]}) == (
        b"J\x00\x00\x17" + '{"name":"\u00e9","a":[1,2]}'.encode("utf-8")
    )


client_fixed_frames = st.one_of(
    st.builds(m.Hello, st.text("0123456789", min_size=3, max_size=3)),
    st.builds(m.ClientPing, st.text(st.characters(max_codepoint=127), min_size=3, max_size=3)),
    st.builds(m.Pong, st.text(st.characters(max_codepoint=127), min_size=3, max_size=3)),
    st.builds(m.PanelRequest, st.booleans(), st.sampled_from("?234567"),
              st.text("012345678", min_size=6, max_size=6)),
    st.sampled_from(m.INPUTS),
    st.sampled_from(m.LEVEL_PICKS),
    st.just(m.HEARTBEAT),
)
server_fixed_frames = st.one_of(
    st.just(m.HelloAccepted()),
    st.just(m.HelloRefused()),
    st.builds(m.Ping, st.text(st.characters(max_codepoint=127), min_size=3, max_size=3)),
    st.builds(m.Panels, st.sampled_from("POQR"), st.text("012345678", min_size=120, max_size=120)),
    st.sampled_from(m.INPUTS),
    st.sampled_from(m.LEVEL_PICKS),
    st.just(m.HEARTBEAT),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(client_fixed_frames | st.builds(m.Json, json_objects), max_size=12), st.data())
def test_client_frames_round_trip_in_any_chunking(frames, data):
    stream = b"".join(encode(frame) for frame in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    edges = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in zip(edges, edges[1:])]
    assert decode_chunks(chunks, C2S, max_json_length=MAX_JSON_LENGTH_ON_WIRE) == frames


@settings(max_examples=60, deadline=None)
@given(st.lists(server_fixed_frames, max_size=12), st.data())
def test_server_frames_round_trip_in_any_chunking(frames, data):
    stream = b"".join(encode(frame) for frame in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    edges = [0, *sorted(cuts), len(stream)]
    chunks = [stream[a:b] for a, b in zip(edges, edges[1:])]
    assert decode_chunks(chunks, S2C) == frames


@pytest.mark.parametrize(
    "frame",
    [
        m.Panels("P", "1" * 119),
        m.Panels("O", "1" * 121),
        m.Panels("X", "1" * 120),
        m.Panels("", "1" * 121),  # would otherwise be 121 bytes with no letter
        m.Panels("PO", "1" * 119),
        m.Ping("LO"),
        m.Ping("LOLL"),
        m.Pong(""),
        m.ClientPing("LOLOL"),
        m.Hello("04"),
        m.Hello("0004"),
        m.PanelRequest(False, "5", "12345"),
        m.PanelRequest(True, "5", "1234567"),
        m.PanelRequest(False, "55", "12345"),  # 8 bytes, but not a colour count and a row
        m.PanelRequest(False, "", "1234567"),
        m.Input(b"I"),
        m.Input(b"IAB"),
        m.Input(b"LA"),
        m.LevelPick(b"L"),
        m.LevelPick(b"L10"),
        m.LevelPick(b"I5"),
        m.Ping("L\u00f6L"),  # one character, but not one byte
        m.Panels("P", "\u0661" * 120),
    ],
    ids=repr,
)
def test_encoder_refuses_a_frame_the_wire_cannot_carry(frame):
    with pytest.raises(LocalProtocolError):
        encode(frame)


@pytest.mark.parametrize("thing", [None, "IA", b"IA", {"a": 1}, m.Register("a", 1, "b")], ids=repr)
def test_encoder_refuses_what_is_not_a_frame(thing):
    with pytest.raises(LocalProtocolError):
        encode(thing)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_json_refuses_what_json_cannot_hold(value):
    with pytest.raises(LocalProtocolError):
        encode_json({"a": [value]})


def test_encode_json_refuses_a_body_too_long_for_three_length_bytes():
    encode_json({"a": "x" * (MAX_JSON_LENGTH_ON_WIRE - 8)})  # exactly the limit
    with pytest.raises(LocalProtocolError):
        encode_json({"a": "x" * (MAX_JSON_LENGTH_ON_WIRE - 7)})

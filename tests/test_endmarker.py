"""The end-marker framing of the 2023–2025 clients: any split decodes the same."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplay.errors import RemoteProtocolError
from netplay.framing import endmarker, length3
from netplay.framing import messages as m
from netplay.framing.endmarker import MARKER, Decoder, MarkedInput
from netplay.framing.length3 import Direction

LOGIN = (
    'J{"login_request":true,"user_id":"need a new user id","engine_version":"048",'
    '"name":"Zoë_ß","level":5}←J←'
).encode("utf-8")


def decode_all(data: bytes, direction: Direction = Direction.CLIENT_TO_SERVER, **options) -> list:
    decoder = Decoder(direction, **options)
    decoder.receive_data(data)
    return decoder.frames()


def test_hello_then_login_in_one_read():
    frames = decode_all(b"H004" + LOGIN)
    assert frames[0] == m.Hello("004")
    assert frames[1].payload["name"] == "Zoë_ß"
    assert frames[1].payload["engine_version"] == "048"


def test_one_byte_pong_and_inputs_of_any_length():
    frames = decode_all(b"E" + b"IA" + MARKER + b"E" + b"IAB==" + MARKER)
    assert frames == [
        endmarker.PONG, MarkedInput(b"IA" + MARKER), endmarker.PONG, MarkedInput(b"IAB==" + MARKER),
    ]
    assert frames[3].body == b"AB=="


def test_server_side_letters():
    frames = decode_all(
        b"HE" + b"UA" + MARKER + b"IB" + MARKER + b"N", Direction.SERVER_TO_CLIENT
    )
    assert frames == [
        m.HelloAccepted(), m.Ping(""), MarkedInput(b"UA" + MARKER), MarkedInput(b"IB" + MARKER),
        m.HelloRefused(),
    ]


def test_marker_split_across_reads():
    decoder = Decoder()
    decoder.receive_data(LOGIN[:-4])
    assert decoder.next_frame() is None
    decoder.receive_data(LOGIN[-4:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(LOGIN[-1:])
    assert decoder.next_frame().payload["login_request"] is True
    assert decoder.buffered == 0


def test_body_that_never_ends_is_fatal_once_past_the_limit():
    decoder = Decoder(max_body_length=100)
    decoder.receive_data(b"J{" + b"x" * 99)
    assert decoder.next_frame() is None  # 100 bytes of body: still allowed
    decoder.receive_data(b"x" * 10)
    with pytest.raises(RemoteProtocolError) as error:
        decoder.next_frame()
    assert error.value.fatal and error.value.reason == "json_frame_too_long"
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()  # stays broken


def test_body_at_the_limit_with_its_marker_arriving_late_is_accepted():
    body = b'{"a":"' + b"x" * 92 + b'"}'
    assert len(body) == 100
    decoder = Decoder(max_body_length=100)
    for index in range(len(body) + 1):
        decoder.receive_data(b"J"[:1] if index == 0 else body[index - 1 : index])
        assert decoder.next_frame() is None
    for byte in MARKER[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.receive_data(MARKER[-1:])
    assert decoder.next_frame() == m.Json({"a": "x" * 92})


def test_long_input_body_is_fatal():
    with pytest.raises(RemoteProtocolError) as error:
        decode_all(b"I" + b"A" * 50 + MARKER, max_body_length=20)
    assert error.value.reason == "message_too_long"


def test_unknown_letter_is_fatal():
    with pytest.raises(RemoteProtocolError) as error:
        decode_all(b"X")
    assert error.value.fatal and error.value.reason == "unknown_letter"


def test_bad_json_and_bad_utf8_are_consumed_and_decoding_goes_on():
    decoder = Decoder()
    decoder.receive_data(b"J{not json" + MARKER + b"J\xff\xfe" + MARKER + b"I\xc3" + MARKER + b"E")
    reasons = []
    frames = []
    while True:
        try:
            frame = decoder.next_frame()
        except RemoteProtocolError as error:
            assert not error.fatal
            reasons.append(error.reason)
            continue
        if frame is None:
            break
        frames.append(frame)
    assert reasons == ["json_invalid", "json_not_utf8", "input_not_utf8"]
    assert frames == [endmarker.PONG]


def test_encoded_json_round_trips_even_with_the_marker_inside_a_string():
    payload = {"name": "a←J←b", "n": 1}
    data = endmarker.encode_json(payload)
    assert data.count(MARKER) == 1 and data.endswith(MARKER)
    assert decode_all(data, Direction.SERVER_TO_CLIENT) == [m.Json(payload)]


client_messages = st.one_of(
    st.builds(lambda v: b"H" + v.encode(), st.sampled_from(["003", "004", "005"])),
    st.just(b"E"),
    st.builds(
        lambda text: b"I" + text.encode("utf-8") + MARKER,
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=(),", min_size=1, max_size=40),
    ),
    st.builds(
        lambda payload: endmarker.encode_json(payload),
        st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.booleans()), max_size=4),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(client_messages, max_size=12), st.data())
def test_any_split_of_any_stream_decodes_to_the_same_messages(messages, data):
    stream = b"".join(messages)
    whole = decode_all(stream)
    assert len(whole) == len(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = Decoder()
    pieces = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        decoder.receive_data(stream[previous:cut])
        previous = cut
        pieces += decoder.frames()
    assert pieces == whole
    assert decoder.buffered == 0


# -- either framing, as tools read a recording --------------------------------------------


older_messages = st.one_of(
    st.just(b"ELOL"),
    st.builds(
        lambda payload: length3.encode_json(payload),
        st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(older_messages, max_size=6), st.lists(client_messages, max_size=8), st.data())
def test_either_decoder_reads_lengths_then_markers_from_the_first_marked_json(
    before, after, data
):
    marked = [endmarker.encode_json({"login_request": True}), *after]
    stream = b"H004" + b"".join(before) + b"".join(marked)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = endmarker.EitherDecoder()
    frames = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        decoder.receive_data(stream[previous:cut])
        previous = cut
        frames += decoder.frames()
    expected = [
        m.Hello("004"),
        *length3_frames(b"".join(before)),
        *decode_all(b"".join(marked)),
    ]
    assert frames == expected
    assert decoder.marked and decoder.buffered == 0


def length3_frames(stream: bytes) -> list:
    decoder = length3.Decoder()
    decoder.receive_data(stream)
    return decoder.frames()


def test_either_decoder_keeps_3_byte_lengths_for_an_older_client():
    decoder = endmarker.EitherDecoder()
    decoder.receive_data(b"H004" + length3.encode_json({"name": "old"}) + b"E")
    assert decoder.frames()[:2] == [m.Hello("004"), m.Json({"name": "old"})]
    assert not decoder.marked


def test_either_decoder_reads_markers_after_h003_even_before_any_json():
    # A silent 003 client is pinged before it logs in: one-byte E both ways.
    login = endmarker.encode_json({"login_request": True})
    client = endmarker.EitherDecoder()
    client.receive_data(b"H003" + b"E" + login)
    assert client.frames() == [m.Hello("003"), *decode_all(b"E" + login)]
    reply = endmarker.encode_json({"login_successful": True})
    for cut in range(1, 4):  # the ping alone in one read, then the rest
        server = endmarker.EitherDecoder(length3.Direction.SERVER_TO_CLIENT)
        stream = b"H" + b"E" + reply
        server.receive_data(stream[:cut])
        frames = server.frames()
        server.receive_data(stream[cut:])
        frames += server.frames()
        assert len(frames) == 3 and frames[2] == m.Json({"login_successful": True})
        assert server.marked


def test_either_decoder_keeps_3_byte_lengths_after_the_older_servers_ping():
    server = endmarker.EitherDecoder(length3.Direction.SERVER_TO_CLIENT)
    server.receive_data(b"H" + b"ELOL" + length3.encode_json({"unpaired": []}))
    assert server.frames()[2] == m.Json({"unpaired": []})
    assert not server.marked

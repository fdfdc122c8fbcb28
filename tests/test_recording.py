"""Session files: the format, the background writer, and ``netplay-server --record``."""

from __future__ import annotations

import json
import signal

import pytest
import trio
from helpers import LoggingProcess, server_command, start_match_in_turn

from netplay.config import Config
from netplay.framing.length3 import encode_json
from netplay.recording import record as recording
from netplay.recording.record import (
    MAGIC,
    Event,
    SessionFormatError,
    SessionWriter,
    config_for_replay,
    format_session,
    open_session_file,
    parse_session,
    read_session,
    replay_settings,
)
from netplay.recording.replay import replay_in_process
from netplay.testing import ScriptedClient, connect_in_process, pair_up, running_server


def sample_writer() -> SessionWriter:
    writer = SessionWriter({"seed": 3, "note": "ünïcode"}, start=100.0)
    writer.connected(1, "127.0.0.1:5000", 100.0)
    writer.received(1, b"H004" + bytes(range(256)), 100.000_25)
    writer.sent(1, b"H", 100.0005)
    writer.connected(2, "[::1]:6000", 101.0)
    writer.sent(1, b'J\x00\x00\x0b{"a":"\xc3\xa9"}', 101.5)
    writer.end_of_stream(1, 102.0)
    writer.closed(1, "end_of_stream", 102.0)
    writer.closed(2, 'odd "reason"\n', 103.25)
    return writer


def test_session_text_round_trips_every_byte_and_field():
    text = sample_writer().take()
    session = parse_session(text.splitlines(keepends=True))
    assert session.settings == {"seed": 3, "note": "ünïcode"}
    assert session.seed == 3
    assert session.connections() == [1, 2]
    assert session.events[1] == Event(0.00025, 1, "recv", b"H004" + bytes(range(256)))
    assert session.events[5] == Event(2.0, 1, "eof")
    assert session.events[-1] == Event(3.25, 2, "close", text='odd "reason"\n')
    assert format_session(session) == text
    assert parse_session(format_session(session).splitlines()) == session


def test_session_lines_are_readable_text():
    lines = sample_writer().take().splitlines()
    assert lines[0] == MAGIC
    assert lines[1].startswith("settings {")
    assert lines[2] == '0.000000 1 connect "127.0.0.1:5000"'
    assert lines[4] == '0.000500 1 send "H"'
    assert lines[7] == '2.000000 1 eof'


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", 1, "empty"),
        ("netplay-session 2\n", 1, "not a session file"),
        (f"{MAGIC}\nsettings [1]\n", 2, "JSON object"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 shout \"x\"\n", 3, "unknown event"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 recv not-json\n", 3, ""),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 recv 17\n", 3, "JSON string"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 recv \"\\u0100\"\n", 3, ""),
        (f"{MAGIC}\n0.5 1 connect \"x\"\n0.2 1 eof\n", 3, "backwards"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 2 recv \"H\"\n", 3, "not open"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 close \"a\"\n0.3 1 eof\n", 4, "not open"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 connect \"x\"\n", 3, "twice"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 1 eof now\n", 3, "no payload"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\n0.2 one recv \"H\"\n", 3, "connection id"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\nsoon 1 recv \"H\"\n", 3, ""),
        (f"{MAGIC}\n0.1 1 connect\n", 2, "payload"),
        (f"{MAGIC}\n0.1 1 connect \"x\"\nsettings {{}}\n", 3, "before the events"),
    ],
)
def test_parse_errors_name_the_line(text, line, problem):
    with pytest.raises(SessionFormatError) as error:
        parse_session(text.splitlines(keepends=True))
    message = str(error.value)
    assert message.startswith(f"line {line}:"), message
    assert problem in message


def test_comments_and_blank_lines_are_skipped():
    text = f"{MAGIC}\n# a note\n\nsettings {{\"seed\": 1}}\n0.1 1 connect \"x\"\n"
    assert parse_session(text.splitlines()).events == (Event(0.1, 1, "connect", text="x"),)


def test_read_session_reports_a_file_that_is_not_text(tmp_path):
    path = tmp_path / "binary.session"
    path.write_bytes(MAGIC.encode() + b"\n\xff\xfe\n")
    with pytest.raises(SessionFormatError):
        read_session(str(path))


def test_replay_settings_give_back_the_recorded_config():
    config = Config(idle_timeout=3.0, client_versions=frozenset({"010"}), max_name_length=9,
                    unlimited_networks=("10.0.0.0/8",), port=1234)
    settings = replay_settings(config, seed=42)
    settings["something_newer"] = True  # unknown keys from other recorders are ignored
    replayed = config_for_replay(json.loads(json.dumps(settings)))
    assert settings["seed"] == 42
    assert replayed.idle_timeout == 3.0
    assert replayed.client_versions == frozenset({"010"})
    assert replayed.max_name_length == 9
    assert replayed.unlimited_networks == ("10.0.0.0/8",)
    assert replayed.port == Config().port  # where it listened is not a behaviour
    assert config_for_replay({}) == Config()
    assert config_for_replay(settings, idle_timeout=1.0).idle_timeout == 1.0


def test_a_writer_that_falls_too_far_behind_stops_and_says_so(monkeypatch):
    monkeypatch.setattr(recording, "MAX_PENDING_CHARACTERS", 400)
    writer = SessionWriter({}, 0.0)
    writer.connected(1, "p", 0.0)
    for index in range(50):
        writer.received(1, b"I" + bytes([65 + index % 26]), index / 60)
    assert writer.stopped == "the disk fell behind"
    text = writer.take()
    assert text.endswith("# recording stopped: the disk fell behind\n")
    writer.received(1, b"IA", 9.0)  # ignored from now on
    assert writer.take() == ""
    assert len(parse_session(text.splitlines()).events) < 20


async def test_the_server_records_both_directions_of_every_connection(autojump_clock):
    writer = SessionWriter({"seed": 1}, trio.current_time())
    async with running_server(recorder=writer) as server:
        alice = connect_in_process(server)
        await alice.register("alice")
        await alice.receive_json()
        refused = connect_in_process(server)
        await refused.send(b"H999")
        await refused.expect_closed()
        await refused.aclose()
        await alice.aclose()
        await trio.sleep(0.1)
    events = parse_session(writer.take().splitlines()).events
    kinds = [(e.connection, e.kind) for e in events]
    assert kinds[:2] == [(1, "connect"), (1, "recv")]
    assert (1, "eof") in kinds and (1, "close") in kinds
    sent_to_alice = b"".join(e.data for e in events if e.connection == 1 and e.kind == "send")
    assert sent_to_alice == b"H" + encode_json({"unpaired": ["alice"]})
    assert [e.data for e in events if e.connection == 2 and e.kind == "send"] == [b"N"]
    assert [e.text for e in events if e.kind == "close"] == ["version_refused", "end_of_stream"]


async def test_the_file_is_flushed_while_recording_and_complete_after(tmp_path):
    path = tmp_path / "live.session"
    async with open_session_file(str(path), {"seed": 5}) as recorder:
        recorder.connected(1, "127.0.0.1:1", trio.current_time())
        recorder.received(1, b"H004", trio.current_time())
        # The background flush (every 50 ms) puts it on disk without any help.
        with trio.fail_after(2):
            while "recv" not in path.read_text():
                await trio.sleep(0.01)
        recorder.closed(1, "end_of_stream", trio.current_time())
    session = read_session(str(path))
    assert [e.kind for e in session.events] == ["connect", "recv", "close"]
    assert session.seed == 5


# -- netplay-server --record, end to end ------------------------------------------


async def test_record_flag_writes_a_complete_file_that_replays_after_sigterm(tmp_path):
    record_dir = tmp_path / "recordings"
    with LoggingProcess(
        server_command("--seed", "11", "--record", str(record_dir)), tmp_path / "server.log"
    ) as process:
        with trio.fail_after(10):
            port = process.port
            alice = ScriptedClient(await trio.open_tcp_stream("127.0.0.1", port))
            await alice.register("alice")
            await alice.receive_json()
            bob = ScriptedClient(await trio.open_tcp_stream("127.0.0.1", port))
            await bob.register("bob", version="019")
            await bob.receive_until("unpaired")
            await pair_up(alice, bob, "alice", "bob")
            await start_match_in_turn(alice, bob)
            await alice.send(b"P5000000")
            await alice.receive()
            await bob.receive()
            await alice.aclose()  # bob is told, and stays until the shutdown
            await bob.receive_until("leave_room")

            # While the server runs, the file already holds the session so far.
            (path,) = record_dir.iterdir()
            assert path.suffix == ".session"
            while "leave_room" not in path.read_text():
                await trio.sleep(0.02)

            process.send_signal(signal.SIGTERM)
            await bob.expect_closed()
            await bob.aclose()
            assert await process.wait_for_exit() == 0

    text = path.read_text()
    assert text.endswith('"server_shutdown"\n')
    session = read_session(str(path))
    assert session.seed == 11
    assert session.settings["recorded_by"] == "server"
    closes = {e.connection: e.text for e in session.events if e.kind == "close"}
    assert closes == {1: "end_of_stream", 2: "server_shutdown"}
    assert sum(e.kind == "connect" for e in session.events) == 2
    result = await replay_in_process(session)
    assert result.ok, result.report()
    assert result.messages >= 12


def test_times_never_go_backwards_when_events_arrive_stamped_out_of_order():
    # One poller wake-up stamps all its reads with the wake-up time, while the
    # writes made in between are stamped as they happen, a little later.
    writer = SessionWriter({"seed": 1}, start=10.0)
    writer.connected(1, "127.0.0.1:1", 10.0)
    writer.connected(2, "127.0.0.1:2", 10.0)
    writer.received(1, b"H004", 11.0)
    writer.sent(2, b"H", 11.000_4)
    writer.received(2, b"H004", 11.0)  # read in the same wake-up as connection 1's
    writer.sent(2, b"H", 11.000_5)
    session = parse_session(writer.take().splitlines())
    times = [event.time for event in session.events]
    assert times == sorted(times)
    assert times[-3:] == [pytest.approx(1.0004), pytest.approx(1.0004), pytest.approx(1.0005)]
    assert [event.kind for event in session.events][-3:] == ["send", "recv", "send"]

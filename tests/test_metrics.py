"""The metrics and the status document, against traffic played through an in-process server."""

from __future__ import annotations

import collections
import gc

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from netplay.config import Config
from netplay.framing import messages as m
from netplay.framing.length3 import Decoder, Direction
from netplay.operations import metrics, status
from netplay.stats import RELAY_SAMPLE_EVERY, Counters, Histogram
from netplay.testing import (
    Client046,
    ScriptedClient,
    connect046,
    connect2025,
    connect_in_process,
    pair_up,
    pair_up046,
    running_server,
    start_match,
    start_match046,
)


class TallyingStream(trio.abc.HalfCloseableStream):
    """A client's stream that counts, per letter, every message it sends and receives."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.sent: collections.Counter[str] = collections.Counter()
        self.sent_bytes: collections.Counter[str] = collections.Counter()
        self.received: collections.Counter[str] = collections.Counter()
        self._outgoing = Decoder(Direction.CLIENT_TO_SERVER, max_json_length=1 << 20)
        self._incoming = Decoder(Direction.SERVER_TO_CLIENT, max_json_length=1 << 20)

    async def send_all(self, data) -> None:
        self._outgoing.receive_data(bytes(data))
        while self._outgoing.next_frame() is not None:
            letter = chr(self._outgoing.last_letter)
            self.sent[letter] += 1
            self.sent_bytes[letter] += self._outgoing.last_length
        await self.inner.send_all(data)

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self._incoming.receive_data(data)
        while self._incoming.next_frame() is not None:
            self.received[chr(self._incoming.last_letter)] += 1
        return data

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_until(client: ScriptedClient, key: str) -> dict:
    """Skip every frame (inputs too) until a JSON one holding ``key``."""
    with trio.fail_after(5):
        while True:
            frame = await client.receive()
            if isinstance(frame, m.Json) and key in frame.payload:
                return frame.payload


def tallied(client: ScriptedClient) -> TallyingStream:
    client.stream = TallyingStream(client.stream)
    return client.stream


def scrape(server) -> dict[str, dict[tuple, float]]:
    """Every sample of the server's registry: ``{name: {sorted label items: value}}``."""
    text = metrics.render(metrics.build_registry(server)).decode()
    samples: dict[str, dict[tuple, float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def test_counts_match_the_traffic_of_a_scripted_match(autojump_clock):
    async with running_server(Config(), seed=2) as server:
        alice, bob = connect_in_process(server), connect_in_process(server)
        streams = [tallied(alice), tallied(bob)]
        await alice.register("alice")
        await bob.register("bob")
        await pair_up(alice, bob, "alice", "bob")
        await start_match(alice, bob)
        samples = scrape(server)
        assert value(samples, "netplay_matches_in_progress", dialect="classic") == 1
        assert value(samples, "netplay_players", dialect="clients", state="playing") == 2
        assert value(samples, "netplay_rooms", dialect="classic", state="playing") == 1

        inputs = RELAY_SAMPLE_EVERY * 3
        for _ in range(inputs):
            await alice.send(b"IA")
            await bob.send(b"IB")
            await trio.sleep(1 / 60)
        await alice.send_json({"game_over": True})
        await bob.send_json({"game_over": True})
        await read_until(alice, "create_room")
        await read_until(bob, "create_room")
        await alice.expect_silence(0.5)
        await bob.expect_silence(0.5)

        samples = scrape(server)
        client_sent = sum((stream.sent for stream in streams), collections.Counter())
        client_sent_bytes = sum((stream.sent_bytes for stream in streams), collections.Counter())
        client_received = sum((stream.received for stream in streams), collections.Counter())
        assert client_sent["I"] == 2 * inputs
        for letter, count in client_sent.items():
            assert value(samples, "netplay_messages_received_total", letter=letter) == count
            assert value(samples, "netplay_received_bytes_total", letter=letter) == (
                client_sent_bytes[letter]
            )
        server_sent = {
            labels[0][1]: count for labels, count in samples["netplay_messages_sent_total"].items()
        }
        # A ping may still be on its way when the clients stop reading.
        assert server_sent.pop("E", 0) >= client_received.pop("E", 0)
        assert server_sent == dict(client_received)
        assert value(samples, "netplay_matches_started_total", dialect="classic") == 1
        assert value(samples, "netplay_matches_ended_total", dialect="classic",
                     decided_by="agreement") == 1
        assert value(samples, "netplay_players", dialect="clients", state="room") == 2
        assert value(samples, "netplay_rooms", dialect="classic", state="selecting") == 1
        assert value(samples, "netplay_connections", dialect="clients", phase="open") == 2
        # One relayed input in RELAY_SAMPLE_EVERY is timed.
        assert value(samples, "netplay_relay_latency_seconds_count", path="direct") == (
            2 * inputs // RELAY_SAMPLE_EVERY
        )

        document = status.status_document(
            server.core, now=trio.current_time(), started_at=server.started_at,
            started_wall=server.started_wall,
        )
        (result,) = document["recent_results"]
        assert result["players"] == ["alice", "bob"] and result["dialect"] == "classic"
        assert result["winner"] is None
        assert result["seconds"] == pytest.approx(inputs / 60, abs=0.05)
        assert document["online"]["by_dialect"]["clients"] == 2
        assert document["traffic"]["messages_in"] == sum(client_sent.values())

        await alice.aclose()
        await trio.sleep(0.5)
        samples = scrape(server)
        assert value(samples, "netplay_connections_closed_total", reason="end_of_stream") == 1
        assert value(samples, "netplay_connections_opened_total") == 2


async def joined(server, name: str) -> Client046:
    client = connect046(server)
    await client.join(name)
    await client.login()
    return client


async def test_046_logins_spectators_and_results_are_counted(autojump_clock):
    async with running_server(Config(), seed=3) as server:
        bob, carol = await joined(server, "bob"), await joined(server, "carol")
        await pair_up046(bob, carol)  # carol completes the pair: player 1
        await start_match046(bob, carol)
        dave = await joined(server, "dave")
        lobby_state = await dave.receive_until("spectatable")
        await dave.spectate(lobby_state["spectatable"][0]["roomNumber"])
        await carol.send_inputs("AB")
        await bob.receive_inputs("I", 2)
        await dave.receive_inputs("U", 2)

        samples = scrape(server)
        assert value(samples, "netplay_logins_total", dialect="v046", outcome="new_id") == 3
        assert value(samples, "netplay_spectators", dialect="v046") == 1
        assert value(samples, "netplay_players", dialect="v046", state="spectating") == 1
        assert value(samples, "netplay_matches_in_progress", dialect="v046") == 1
        assert value(samples, "netplay_storage_operations_total") >= 3  # logins, and their standings
        assert value(samples, "netplay_storage_batch_seconds_count") >= 1
        assert value(samples, "netplay_messages_sent_total", letter="U") == 2

        document = status.status_document(
            server.core, now=trio.current_time(), started_at=server.started_at,
            started_wall=server.started_wall,
        )
        (room,) = document["rooms"]["list"]
        assert room["players"] == ["carol", "bob"] and room["spectators"] == ["dave"]
        assert room["playing"] and room["match_seconds"] is not None
        assert room["ranked"] is False  # casual: the page shows no ranked badge

        await bob.game_over(1)
        await carol.game_over(1)
        await bob.receive_until("win_counts")
        samples = scrape(server)
        assert value(samples, "netplay_matches_ended_total", dialect="v046",
                     decided_by="agreement") == 1
        document = status.status_document(
            server.core, now=trio.current_time(), started_at=server.started_at,
            started_wall=server.started_wall,
        )
        (result,) = document["recent_results"]
        assert result["winner"] == "carol" and result["decided_by"] == "agreement"
        assert document["rooms"]["list"][0]["win_counts"] == [1, 0]

        await bob.leave_room()
        await carol.receive_until("leave_room")
        samples = scrape(server)
        assert value(samples, "netplay_rooms", dialect="v046", state="selecting") == 0
        assert value(samples, "netplay_players", dialect="v046", state="lobby") == 3


async def test_refusals_errors_drops_and_closes_are_counted_by_reason(autojump_clock):
    # Every connection comes from its own address but the last two.
    config = Config(max_connections_per_ip=1, unlimited_networks=(),
                    max_messages_per_second=10, message_burst=5)
    async with running_server(config) as server:
        player = connect_in_process(server, host="127.0.0.2")
        await player.register("alice")
        await player.send_json({"menu_state": {"cursor": "level", "ready": False,
                                               "character": "lip", "level": 5}})
        refused = connect_in_process(server, host="127.0.0.3")
        await refused.send(b"H999")
        await refused.expect_closed()
        broken = connect_in_process(server, host="127.0.0.4")
        await broken.send(b"H004Z")
        await broken.expect_closed()
        flooder = connect_in_process(server, host="127.0.0.5")
        await flooder.register("flooder")
        await flooder.send(b"FLOL" * 40)  # a burst of 5: the rest waits
        over_limit = [connect_in_process(server, host="127.0.0.6") for _ in range(2)]
        await over_limit[1].expect_closed()
        await trio.sleep(2)  # closed connections end after their linger

        samples = scrape(server)
        assert value(samples, "netplay_messages_refused_total",
                     reason="message_not_valid_in_state") == 1
        assert value(samples, "netplay_protocol_errors_total", reason="unknown_letter") == 1
        assert value(samples, "netplay_connections_closed_total", reason="unknown_letter") == 1
        assert value(samples, "netplay_connections_closed_total", reason="version_refused") == 1
        assert value(samples, "netplay_connections_refused_total",
                     reason="max_connections_per_ip") >= 1
        assert value(samples, "netplay_messages_delayed_total", reason="flood") > 0


def test_histogram_buckets_are_cumulative_and_end_at_infinity():
    histogram = Histogram((0.1, 1.0))
    for observation in (0.05, 0.1, 0.5, 2.0, 3.0):
        histogram.observe(observation)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 5)]
    assert histogram.count == 5 and histogram.total == pytest.approx(5.65)


def test_garbage_collector_pauses_are_timed_only_while_watched():
    counters = Counters()
    before = len(gc.callbacks)
    with metrics.GarbageCollectorWatch(counters):
        gc.collect()
        assert counters.gc_pauses[2].count == 1
    assert len(gc.callbacks) == before
    gc.collect()
    assert counters.gc_pauses[2].count == 1


async def test_2025_players_rooms_and_spectators_are_counted_and_shown(autojump_clock):
    async with running_server(Config(), seed=3) as server:
        clients = []
        for name, version in (("amy", "004"), ("ben", "005"), ("cat", "004")):
            client = connect2025(server, version=version)
            await client.login(name)
            clients.append(client)
        amy, ben, cat = clients
        await amy.request_game("ben")
        await ben.receive_until("challenge")
        await ben.request_game("amy")
        await amy.receive_until("create_room")
        await amy.menu_state(ready=True)
        await ben.menu_state(ready=True)
        await amy.receive_until("match_start")
        while not (lobby_state := await cat.receive_until("spectatable"))["spectatable"]:
            pass  # a list from before the room
        await cat.spectate(lobby_state["spectatable"][0]["roomNumber"])

        samples = scrape(server)
        assert value(samples, "netplay_logins_total", dialect="v2025", outcome="new_id") == 3
        assert value(samples, "netplay_spectators", dialect="v2025") == 1
        assert value(samples, "netplay_players", dialect="v2025", state="playing") == 2
        assert value(samples, "netplay_matches_in_progress", dialect="v2025") == 1
        assert value(samples, "netplay_matches_started_total", dialect="v2025") == 1

        document = status.status_document(
            server.core, now=trio.current_time(), started_at=server.started_at,
            started_wall=server.started_wall,
        )
        assert document["online"]["by_dialect"]["v2025"] == 3
        (room,) = document["rooms"]["list"]
        assert room["dialect"] == "v2025" and room["spectators"] == ["cat"]
        assert sorted(room["players"]) == ["amy", "ben"] and room["playing"]
        assert document["matches"] == {
            "in_progress": 1, "started": 1, "finished": 0, "spectators": 1,
        }

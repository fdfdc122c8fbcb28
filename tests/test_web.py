"""The HTTP port: routes, bad and hostile requests, concurrent scrapes beside a live match."""

from __future__ import annotations

import json
from functools import partial

import h11
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from netplay.config import Config
from netplay.operations import web
from netplay.testing import connect_in_process, pair_up, running_server, start_match


async def request(
    stream: trio.abc.Stream, method: str = "GET", target: str = "/", *,
    headers: list[tuple[str, str]] | None = None, client: h11.Connection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request over ``stream`` with an h11 client; returns status, headers, body."""
    client = client or h11.Connection(h11.CLIENT)
    all_headers = [("Host", "127.0.0.1"), *(headers or [])]
    await stream.send_all(client.send(h11.Request(method=method, target=target, headers=all_headers)))
    await stream.send_all(client.send(h11.EndOfMessage()))
    response, body = None, b""
    with trio.fail_after(10):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert response is not None
    return (
        response.status_code,
        {name.decode(): value.decode() for name, value in response.headers},
        body,
    )


async def read_to_end(stream: trio.abc.Stream, timeout: float = 30) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def open_http(
    site: web.WebServer, nursery: trio.Nursery, host: str = "192.0.2.1"
) -> trio.abc.Stream:
    """A client stream from ``host`` whose other end ``site`` serves, in this process."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(partial(site.serve_stream, server, host=host))
    return client


async def test_routes_answer_with_their_content_types(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        site = web.WebServer(server)
        stream = open_http(site, nursery)
        code, headers, body = await request(stream, "GET", "/metrics")
        assert code == 200 and headers["content-type"].startswith("text/plain; version=")
        names = {family.name for family in text_string_to_metric_families(body.decode())}
        assert {"netplay_players", "netplay_relay_latency_seconds", "process_cpu_seconds"} <= names
        # The same connection serves the next request (keep-alive).
        code, headers, body = await request(stream, "GET", "/status.json?now=1")
        assert code == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["online"]["players"] == 0
        code, headers, page = await request(stream, "GET", "/")
        assert code == 200 and page.startswith(b"<!doctype html>")
        assert "script-src 'sha256-" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        code, headers, body = await request(stream, "HEAD", "/")
        assert code == 200 and body == b"" and int(headers["content-length"]) == len(page)
        code, _, _ = await request(stream, "GET", "/nothing-here")
        assert code == 404
        code, headers, _ = await request(stream, "POST", "/metrics")
        assert code == 405 and headers["allow"] == "GET, HEAD"
        nursery.cancel_scope.cancel()


async def test_page_policy_allows_exactly_the_inline_script_and_style():
    page = b"<style>a{}</style><script>go()</script>"
    policy = web.content_security_policy(page)
    assert "script-src 'sha256-" in policy and "style-src 'sha256-" in policy
    assert "unsafe-inline" not in policy and "default-src 'none'" in policy


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
     b"BREW /pot HTCPCP/1.0\r\n\r\n"],
)
async def test_garbage_is_answered_400_and_closed(autojump_clock, garbage):
    async with running_server() as server, trio.open_nursery() as nursery:
        stream = open_http(web.WebServer(server), nursery)
        await stream.send_all(garbage)
        reply = await read_to_end(stream)
        assert reply.startswith(b"HTTP/1.1 400 ")
        nursery.cancel_scope.cancel()


async def test_huge_headers_are_refused_before_they_are_buffered(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        stream = open_http(web.WebServer(server), nursery)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        with trio.move_on_after(5):
            try:
                while sent < 10 * web.MAX_REQUEST_HEAD_BYTES:
                    await stream.send_all(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                    sent += 1012
            except trio.BrokenResourceError:
                pass  # closed by the server while we were still sending
        reply = await read_to_end(stream)
        assert reply.startswith(b"HTTP/1.1 431 ")
        nursery.cancel_scope.cancel()


async def test_a_large_request_body_is_refused(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        stream = open_http(web.WebServer(server), nursery)
        size = web.MAX_REQUEST_BODY_BYTES * 4
        await stream.send_all(f"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        with trio.move_on_after(5):
            await stream.send_all(b"a" * size)
        reply = await read_to_end(stream)
        assert reply.startswith(b"HTTP/1.1 413 ")
        nursery.cancel_scope.cancel()


async def test_slowloris_is_cut_off_after_the_request_timeout(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        site = web.WebServer(server)
        stream = open_http(site, nursery)
        start = trio.current_time()

        async def trickle():
            try:
                for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 1000:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(1)
            except trio.BrokenResourceError:
                pass  # the server closed, as it should

        nursery.start_soon(trickle)
        reply = await read_to_end(stream)
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert trio.current_time() - start <= web.REQUEST_TIMEOUT + 1
        await trio.sleep(web.LINGER_SECONDS + 1)
        assert site.connections == 0
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_closed_after_the_request_timeout(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        stream = open_http(web.WebServer(server), nursery)
        start = trio.current_time()
        assert await read_to_end(stream) == b""
        assert trio.current_time() - start == pytest.approx(web.REQUEST_TIMEOUT)
        nursery.cancel_scope.cancel()


async def test_connections_past_the_limit_are_closed_at_once(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        site = web.WebServer(server)
        held = [
            open_http(site, nursery, f"192.0.2.{index}") for index in range(web.MAX_CONNECTIONS)
        ]
        await trio.testing.wait_all_tasks_blocked()
        extra = open_http(site, nursery, "198.51.100.1")
        with trio.fail_after(1):
            assert await read_to_end(extra) == b""
        # The ones held still work.
        code, _, _ = await request(held[0], "GET", "/healthz")
        assert code == 200
        assert server.counters.http_connections_refused == {"max_connections": 1}
        nursery.cancel_scope.cancel()


async def test_one_address_holds_only_its_share_of_the_port(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        site = web.WebServer(server)
        limit = server.config.http_max_connections_per_ip
        assert limit < web.MAX_CONNECTIONS
        held = [open_http(site, nursery, "203.0.113.9") for _ in range(limit)]
        await trio.testing.wait_all_tasks_blocked()
        extra = open_http(site, nursery, "203.0.113.9")
        with trio.fail_after(1):
            assert await read_to_end(extra) == b""
        # Another address is still served, and so are the ones held.
        code, _, _ = await request(open_http(site, nursery, "203.0.113.10"), "GET", "/healthz")
        assert code == 200
        code, _, _ = await request(held[-1], "GET", "/healthz")
        assert code == 200
        assert server.counters.http_connections_refused == {"max_connections_per_ip": 1}
        # A slot given back is the address's again.
        await held[0].aclose()
        await trio.testing.wait_all_tasks_blocked()
        code, _, _ = await request(open_http(site, nursery, "203.0.113.9"), "GET", "/healthz")
        assert code == 200
        nursery.cancel_scope.cancel()


async def test_loopback_has_no_exemption_on_the_http_port():
    """Over TCP from 127.0.0.1, which the game port exempts by default."""
    async with running_server(Config(http_max_connections_per_ip=2)) as server, \
            trio.open_nursery() as nursery:
        site = web.WebServer(server)
        (listener,) = await nursery.start(
            partial(trio.serve_tcp, site.serve_stream, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for stream in held:
            code, _, _ = await request(stream, "GET", "/healthz")
            assert code == 200
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        assert await read_to_end(extra, timeout=5) == b""
        for stream in [*held, extra]:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_the_event_loop_lag_is_measured_while_the_site_runs(autojump_clock):
    async with running_server() as server, trio.open_nursery() as nursery:
        await nursery.start(web.WebServer(server).run)
        await trio.sleep(1)
        assert server.counters.loop_lag.count >= 9
        nursery.cancel_scope.cancel()


async def test_concurrent_scrapes_and_hostile_clients_leave_a_match_unharmed():
    """Over loopback TCP: scrapes, garbage and a slowloris while two players relay inputs."""
    async with running_server() as server, trio.open_nursery() as nursery:
        site = web.WebServer(server)
        (listener,) = await nursery.start(
            partial(trio.serve_tcp, site.serve_stream, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        alice, bob = connect_in_process(server), connect_in_process(server)
        await alice.register("alice")
        await bob.register("bob")
        await pair_up(alice, bob, "alice", "bob")
        await start_match(alice, bob)

        async def slowloris():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.move_on_after(3):
                for byte in b"GET /metrics HTTP/1.1\r\n":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.2)
            await stream.aclose()

        async def garbage():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"\x00\xff" * 5000 + b"\r\n\r\n")
            await read_to_end(stream, timeout=5)
            await stream.aclose()

        codes = []

        async def scraper(path: str):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            client = h11.Connection(h11.CLIENT)
            for _ in range(5):
                code, _, body = await request(stream, "GET", path, client=client)
                codes.append(code)
                if path == "/metrics":
                    list(text_string_to_metric_families(body.decode()))
                else:
                    json.loads(body)
                client.start_next_cycle()
            await stream.aclose()

        inputs = 120
        with trio.fail_after(20):
            async with trio.open_nursery() as load:
                load.start_soon(slowloris)
                load.start_soon(garbage)
                # With the slowloris and the garbage: 14 at once, under the
                # per-address limit (all come from 127.0.0.1).
                for index in range(12):
                    load.start_soon(scraper, "/metrics" if index % 2 else "/status.json")
                for _ in range(inputs):
                    await alice.send(b"IA")
                    await trio.sleep(1 / 120)
                received = 0
                while received < inputs:
                    frame = await bob.receive()
                    assert frame.raw == b"IA"
                    received += 1
        assert codes == [200] * 60
        assert server.core.lobby.rooms  # the match goes on
        nursery.cancel_scope.cancel()

"""The status page in headless Chromium, beside scripted matches on a real server process.

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it).
Without it the test is skipped on a developer's machine and fails in CI
(``CI`` set), so a missing browser can never pass unnoticed.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trio

from netplay.testing import Client046, pair_up, start_match

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT = 60
# A name that would run script if the page ever put names in as markup.
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


def chromium_or_skip() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return CHROMIUM


async def run_chromium(profile: Path, *arguments: str) -> bytes:
    command = [
        chromium_or_skip(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *arguments,
    ]
    with trio.fail_after(BROWSER_TIMEOUT):
        result = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no element #{element_id} in the page"
    return html.unescape(match.group(1))


@pytest.fixture
def server_process(start_server, tmp_path):
    return start_server("--http-port", "0", "--idle-timeout", "120",
                        "--replays-directory", str(tmp_path / "replays"))


async def test_status_page_shows_live_matches_and_escapes_names(server_process, tmp_path):
    chromium_or_skip()
    server = server_process
    http_port = int((await server.wait_for_event("http_listening"))["port"])
    url = f"http://127.0.0.1:{http_port}/"

    # Two classic players in a match, one of them with a hostile name.
    first, second = await server.connect(), await server.connect()
    await first.register(HOSTILE_NAME)
    await second.register("alice")
    await pair_up(first, second, HOSTILE_NAME, "alice")
    await start_match(first, second)
    await first.send(b"IA" * 3)

    # Two 2022 clients finish one match and start the next, watched by a third.
    bob, carol, dave = [Client046((await server.connect()).stream) for _ in range(3)]
    for client, name in ((bob, "Bob"), (carol, "Carol"), (dave, "Dave")):
        await client.join(name)
        await client.login()
    await bob.request_game("Carol")
    await carol.receive_until("game_request")
    await carol.request_game("Bob")
    await bob.receive_until("create_room")
    for _ in range(2):
        await bob.menu_state(ready=True)
        await carol.receive_until("menu_state")
        await carol.menu_state(ready=True)
        await bob.receive_until("match_start")
        await carol.receive_until("match_start")
        if _ == 0:
            await bob.game_over(2)
            await carol.game_over(2)
            await bob.receive_until("win_counts")
            await carol.receive_until("win_counts")
    lobby_state = await dave.receive_until("spectatable")
    while not lobby_state["spectatable"]:
        lobby_state = await dave.receive_until("spectatable")
    await dave.spectate(lobby_state["spectatable"][0]["roomNumber"])
    erin = await server.connect()
    await erin.register("erin")

    # Let the status cache expire, so the page sees everything above.
    await trio.sleep(1.1)
    dom = (await run_chromium(tmp_path / "profile-dom", "--dump-dom", url)).decode()

    assert 'class="is-live"' in dom, dom[-3000:]
    assert element_text(dom, "players") == "6"
    assert element_text(dom, "matches") == "2"
    assert element_text(dom, "spectators") == "1"
    assert element_text(dom, "lobby-count") == "1"
    assert ">erin<" in dom
    assert ">Bob<" in dom and ">Carol<" in dom and "watching: Dave" in dom
    assert ">1 – 0<" not in dom and ">0 – 1<" in dom  # Carol (player 1) lost the first match
    assert re.search(r'class="win">Bob</span> beat Carol', dom)
    # The hostile name is shown as text: escaped in the DOM, never an element.
    assert html.escape(HOSTILE_NAME, quote=False) in dom
    assert "<img" not in dom

    screenshot = tmp_path / "status-page.png"
    await run_chromium(
        tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=412,900", url
    )
    assert png_size(screenshot) == (412, 900)
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("NETPLAY_STATUS_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["NETPLAY_STATUS_SCREENSHOT"])

    for client in (first, second, bob, carol, dave, erin):
        await client.aclose()


def test_http_port_is_off_unless_asked(start_server):
    assert "http_listening" not in start_server().events()


async def test_process_serves_metrics_on_its_http_port(server_process):
    http_port = int((await server_process.wait_for_event("http_listening"))["port"])
    player = await server_process.connect()
    await player.register("zed")

    def fetch() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as reply:
            return reply.status, reply.read().decode()

    code, text = await trio.to_thread.run_sync(fetch)
    assert code == 200
    assert 'netplay_players{dialect="clients",state="lobby"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    await player.aclose()

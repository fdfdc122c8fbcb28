"""The command line, called as ``main(argv)`` and through its parser, in this process."""

from __future__ import annotations

import json
import resource

import pytest

from netplay import __version__
from netplay.cli import build_parser, config_from_args, main, raise_open_file_limit
from netplay.config import DEFAULT_PORT, Config
from netplay.dialects.classic import CLIENT_VERSIONS, DOCUMENT_VERSIONS

# Parser destinations that are not server settings.
NOT_IN_CONFIG = {"help", "version", "config", "log_format", "log_level", "record"}


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def assert_rejected(*argv: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2


# -- the parser ----------------------------------------------------------------


def test_defaults_are_the_config_defaults():
    args = parse()
    assert config_from_args(args) == Config()
    assert args.port == DEFAULT_PORT == 49569
    assert args.host == "0.0.0.0"
    assert args.log_format is None  # decided by whether stderr is a terminal
    assert args.log_level == "info"
    assert args.seed is None
    assert args.record is None
    assert args.client_versions == CLIENT_VERSIONS
    assert args.document_versions == DOCUMENT_VERSIONS == frozenset({"139"})


def test_default_client_versions_are_004_to_019():
    assert parse().client_versions == frozenset(f"{v:03d}" for v in range(4, 20))


def test_port_zero_is_accepted():
    assert config_from_args(parse("--port", "0")).port == 0


def test_version_ranges_and_single_versions_combine():
    args = parse("--client-versions", "004-019,021")
    expected = {f"{v:03d}" for v in range(4, 20)} | {"021"}
    assert args.client_versions == frozenset(expected)
    assert len(args.client_versions) == 17


def test_version_list_ignores_spaces_and_empty_items():
    args = parse("--document-versions", " 139 , ,140")
    assert args.document_versions == frozenset({"139", "140"})


def test_single_version_range_is_one_version():
    assert parse("--client-versions", "007-007").client_versions == frozenset({"007"})


@pytest.mark.parametrize(
    "text",
    ["4", "0004", "abc", "04a", "004-0x9", "-019", "004--019", "004-019-021", "004,x", "1-019"],
)
def test_malformed_version_lists_are_rejected(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--client-versions", text)
    assert exit_info.value.code == 2
    assert "--client-versions" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["019-004", "004-"])
def test_reversed_or_unterminated_version_range_is_rejected(text):
    assert_rejected("--client-versions", text)


@pytest.mark.parametrize("port", ["65536", "70000", "-1"])
def test_port_outside_0_to_65535_is_rejected(port):
    # Unchecked, 70000 would silently listen on 70000 % 65536 = 4464.
    assert_rejected("--port", port)


@pytest.mark.parametrize("length", [str(1 << 24), "-1"])
def test_json_limit_that_cannot_be_framed_is_rejected(length):
    # Decoder() refuses such a limit, which would fail every connection later.
    assert_rejected("--max-json-length", length)


def test_unparsable_unlimited_network_is_rejected():
    # Unchecked, the error would surface only when a host reaches its limit.
    assert_rejected("--unlimited-networks", "127.0.0.0/8,not-a-network")


@pytest.mark.parametrize(
    "argv",
    [
        ["--ping-interval", "0"],
        ["--ping-interval", "-1"],
        ["--ping-interval", "nan"],
        ["--idle-timeout", "0"],
        ["--idle-timeout", "inf"],
        ["--max-name-length", "0"],
        ["--max-connections", "0"],
    ],
    ids=" ".join,
)
def test_values_the_server_cannot_run_with_are_rejected(argv):
    # A ping interval of 0 would ping a silent client thousands of times a second.
    assert_rejected(*argv)


@pytest.mark.parametrize(
    "argv", [["--log-format", "xml"], ["--log-level", "loud"], ["--port", "x"]]
)
def test_unknown_choices_and_non_numbers_are_rejected(argv):
    assert_rejected(*argv)


# Every option that sets a server setting: the text given and the Config value expected.
EVERY_SETTING = {
    "host": ("127.0.0.2", "127.0.0.2"),
    "port": ("0", 0),
    "seed": ("12345", 12345),
    "client_versions": ("004-006", frozenset({"004", "005", "006"})),
    "document_versions": ("139,140", frozenset({"139", "140"})),
    "ping_interval": ("0.5", 0.5),
    "idle_timeout": ("7.5", 7.5),
    "handshake_timeout": ("3", 3.0),
    "registration_timeout": ("30", 30.0),
    "max_json_length": ("1000", 1000),
    "max_name_length": ("12", 12),
    "max_connections": ("99", 99),
    "max_connections_per_ip": ("5", 5),
    "unlimited_networks": ("10.0.0.0/8,192.168.0.0/16", ("10.0.0.0/8", "192.168.0.0/16")),
    "max_messages_per_second": ("50", 50.0),
    "message_burst": ("60", 60),
    "max_held_bytes": ("2048", 2048),
    "max_queued_bytes": ("4096", 4096),
    "shutdown_grace": ("0.25", 0.25),
    "read_coalesce": ("0.0002", 0.0002),
    "http_port": ("8080", 8080),
    "http_host": ("127.0.0.1", "127.0.0.1"),
    "http_max_connections_per_ip": ("4", 4),
    "v046_versions": ("045-046", frozenset({"045", "046"})),
    "v2025_versions": ("004-005", frozenset({"004", "005"})),
    "v2025_engine_groups": ("047+048,049", "047+048,049"),
    "database": ("/tmp/players.sqlite3", "/tmp/players.sqlite3"),
    "max_spectators_per_room": ("3", 3),
    "game_over_timeout": ("6.5", 6.5),
    "placement_rule": ("relaxed", "relaxed"),
    "replays_directory": ("/tmp/replays", "/tmp/replays"),
    "leaderboard_limit": ("10", 10),
}


def test_config_from_args_maps_every_option():
    parser = build_parser()
    option_of = {action.dest: action.option_strings[0] for action in parser._actions}
    assert set(option_of) - NOT_IN_CONFIG == set(EVERY_SETTING), "an option is not covered here"
    argv = []
    for dest, (text, _) in EVERY_SETTING.items():
        argv += [option_of[dest], text]
    config = config_from_args(parser.parse_args(argv))
    for dest, (_, expected) in EVERY_SETTING.items():
        assert getattr(config, dest) == expected, dest
        assert getattr(config, dest) != getattr(Config(), dest), f"{dest} kept its default"


def test_empty_unlimited_networks_exempts_nobody():
    config = config_from_args(parse("--unlimited-networks", ""))
    assert config.unlimited_networks == ()
    assert not config.unlimited_ip("127.0.0.1")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in text


# -- main ----------------------------------------------------------------------


def test_version_flag_prints_the_version_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"netplay {__version__}\n"


def test_json_log_format_writes_one_json_object_per_line(
    isolated_logging, occupied_port, capsys
):
    status = main(
        ["--host", "127.0.0.1", "--port", str(occupied_port), "--log-format", "json",
         "--database", ":memory:"]
    )
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    events = [record["event"] for record in records]
    assert events == ["open_file_limit", "database_migrated", "cannot_listen"]
    failure = records[-1]
    assert failure["level"] == "error"
    assert failure["port"] == occupied_port and failure["host"] == "127.0.0.1"
    assert failure["timestamp"].endswith("Z")  # ISO, UTC
    assert records[0]["limit"] > 0


def test_console_log_format_writes_readable_lines(isolated_logging, occupied_port, capsys):
    status = main(
        ["--host", "127.0.0.1", "--port", str(occupied_port), "--log-format", "console",
         "--database", ":memory:"]
    )
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert any("cannot_listen" in line for line in lines)
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)


def test_log_level_filters_lower_levels(isolated_logging, occupied_port, capsys):
    status = main(
        [
            "--host", "127.0.0.1", "--port", str(occupied_port),
            "--log-format", "json", "--log-level", "error", "--database", ":memory:",
        ]
    )
    assert status == 1
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [record["event"] for record in records] == ["cannot_listen"]


# -- the open file limit ---------------------------------------------------------


def test_raise_open_file_limit_returns_the_soft_limit_in_force():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        limit = raise_open_file_limit()
        assert isinstance(limit, int) and limit > 0
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert limit == soft >= before[0]
        assert hard == before[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_http_port_is_off_by_default_and_its_host_follows_host():
    config = config_from_args(parse())
    assert config.http_port is None and config.http_host is None
    config = config_from_args(parse("--http-port", "0", "--http-host", "127.0.0.1"))
    assert (config.http_port, config.http_host) == (0, "127.0.0.1")
    assert_rejected("--http-port", "65536")


# -- start-up errors -------------------------------------------------------------


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_unusable_record_directory_is_its_own_error_naming_the_directory(
    isolated_logging, tmp_path, capsys, where
):
    (tmp_path / "file").write_text("not a directory")
    directory = tmp_path / "file" if where == "a_file" else tmp_path / "file" / "sessions"
    status = main(["--host", "127.0.0.1", "--port", "0", "--log-format", "json",
                   "--database", ":memory:", "--record", str(directory)])
    assert status == 1
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    failure = records[-1]
    assert failure["event"] == "cannot_record"
    assert failure["level"] == "error"
    assert failure["directory"] == str(directory)
    assert "host" not in failure and "port" not in failure
    assert "cannot_listen" not in [record["event"] for record in records]

"""The table of settings, the config file, and what is derived from them."""

from __future__ import annotations

import json
import re

import attrs
import pytest
from helpers import ROOT

from netplay.cli import build_parser, config_from_args, main, parse_arguments
from netplay.config import Config
from netplay.operations.settings import (
    NOT_OPTIONS,
    SETTINGS,
    ProcessSettings,
    config_from_values,
    read_config_file,
    show_versions,
    version_list,
)

EXAMPLE = ROOT / "netplay.example.toml"


def write(tmp_path, text: str):
    path = tmp_path / "netplay.toml"
    path.write_text(text)
    return str(path)


def refused(capsys, *argv: str) -> str:
    """The one line of a refused start-up (status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(list(argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- the table ----------------------------------------------------------------------------


def test_every_config_field_is_a_setting_or_deliberately_not_an_option():
    fields = {field.name for field in attrs.fields(Config)}
    in_config = {setting.name for setting in SETTINGS if setting.in_config}
    assert in_config | NOT_OPTIONS == fields
    assert not in_config & NOT_OPTIONS
    process = {setting.name for setting in SETTINGS if not setting.in_config}
    assert process == {field.name for field in attrs.fields(ProcessSettings)}


def test_every_option_has_help_that_states_its_default():
    for action in build_parser()._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.help and "(default: " in action.help, action.option_strings


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_help_shows_the_config_default(setting):
    default = getattr(Config() if setting.in_config else ProcessSettings(), setting.name)
    assert setting.default == default
    if default not in (None, ()):
        assert setting.parse(setting.help_text().rsplit("(default: ", 1)[1][:-1]) == default


@pytest.mark.parametrize("text", ["004-019", "004-019,021", "139", "001,003,005-007", ""])
def test_shown_version_lists_read_back_the_same(text):
    assert show_versions(version_list(text)) == text


# -- the config file ------------------------------------------------------------------------


def test_a_config_file_sets_options_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, 'port = 4000\nmax_connections = 99\nhost = "127.0.0.2"\n'
                 'unlimited_networks = ["10.0.0.0/8"]\nclient_versions = ["004-006", "010"]\n'
                 'ping_interval = 2\nlog_level = "warning"\nrecord = "sessions"\n')
    args = parse_arguments(["--config", path, "--port", "5000"])
    config = config_from_args(args)
    assert config.port == 5000  # the command line wins
    assert config.max_connections == 99
    assert config.host == "127.0.0.2"
    assert config.unlimited_networks == ("10.0.0.0/8",)
    assert config.client_versions == frozenset({"004", "005", "006", "010"})
    assert config.ping_interval == 2.0
    assert (args.log_level, args.record) == ("warning", "sessions")
    assert config.idle_timeout == Config().idle_timeout  # not in the file: the default


def test_options_before_and_after_the_config_option_both_win(tmp_path):
    path = write(tmp_path, "port = 4000\nmax_connections = 99\n")
    args = parse_arguments(["--max-connections", "7", "--config", path])
    assert (args.port, args.max_connections) == (4000, 7)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("max_conections = 5\n", "max_conections", "unknown setting"),
        ("config = 'other.toml'\n", "config", "unknown setting"),
        ("[server]\nport = 1\n", "server", "unknown setting"),
        ("port = 70000\n", "port", "not in 0..65535"),
        ('port = "49569"\n', "port", "not a whole number"),
        ("port = 1.5\n", "port", "not a whole number"),
        ("max_connections = 0\n", "max_connections", "not in 1..10000000"),
        ("ping_interval = 0\n", "ping_interval", "not a positive number"),
        ("idle_timeout = inf\n", "idle_timeout", "not a positive number"),
        ("shutdown_grace = true\n", "shutdown_grace", "not a number"),
        ('client_versions = "4"\n', "client_versions", "not a 3-digit version"),
        ("client_versions = [4]\n", "client_versions", "not a list of strings"),
        ('unlimited_networks = ["nowhere"]\n', "unlimited_networks", "nowhere"),
        ('log_level = "loud"\n', "log_level", "not one of"),
        ('host = ""\n', "host", "empty"),
    ],
)
def test_a_bad_config_file_is_refused_with_the_key_named_in_one_line(
    tmp_path, capsys, text, key, problem
):
    path = write(tmp_path, text)
    line = refused(capsys, "--config", path)
    assert line.startswith(f"netplay-server: error: {path}: {key}: ")
    assert problem in line


def test_a_config_file_that_is_not_toml_or_not_there_is_refused(tmp_path, capsys):
    path = write(tmp_path, "port = \n")
    assert "not TOML" in refused(capsys, "--config", path)
    missing = str(tmp_path / "missing.toml")
    assert f"{missing}: No such file" in refused(capsys, "--config", missing)


def test_the_config_file_reaches_the_server(isolated_logging, occupied_port, tmp_path, capsys):
    port = occupied_port
    path = write(tmp_path, f'host = "127.0.0.1"\nport = {port}\ndatabase = ":memory:"\n'
                 'log_format = "json"\nlog_level = "error"\n')
    assert main(["--config", path]) == 1
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["event"], r["port"]) for r in records] == [("cannot_listen", port)]


# -- the example file ----------------------------------------------------------------------


def test_the_example_file_holds_the_defaults():
    values = read_config_file(str(EXAMPLE))
    assert config_from_values(values) == Config()
    for setting in SETTINGS:
        if setting.name in values:
            assert values[setting.name] == setting.default, setting.name
        else:
            assert setting.default is None, f"{setting.name} is missing from the example"


def test_the_example_file_names_every_setting_and_its_commented_values_are_valid(tmp_path):
    text = EXAMPLE.read_text()
    for setting in SETTINGS:
        assert re.search(rf"^(# )?{setting.name} = ", text, re.MULTILINE), setting.name
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    values = read_config_file(write(tmp_path, uncommented))
    assert {"seed", "log_format", "record"} <= set(values)

"""Every setting of ``netplay-server``, declared once.

:data:`SETTINGS` names each setting, how its text is read and checked, and
what it means.  Everything else is derived from it: the command-line options
(``--max-connections`` for ``max_connections``), the keys of a TOML config
file (``max_connections = 20000``), the help texts with their defaults, and
the :class:`~netplay.config.Config` built from both.  Defaults live in one
place too: ``Config`` for the server's settings, :class:`ProcessSettings` for
the three that concern the process (its log and its recording).

A new ``Config`` field becomes an option by adding one :class:`Setting`
here; ``tests/test_settings.py`` fails until it is added (or listed in
:data:`NOT_OPTIONS`).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import tomllib
from typing import Any, Callable, Mapping

import attrs

from netplay.config import Config
from netplay.framing.length3 import MAX_JSON_LENGTH_ON_WIRE
from netplay.lobbies.v2025 import parse_engine_groups
from netplay.logs import LEVELS

LOG_FORMATS = ("console", "json")

# Config fields tuned by measurement rather than by operators (docs/performance.md).
NOT_OPTIONS = frozenset({
    "snapshot_interval", "snapshot_interval_per_player", "max_snapshot_interval",
    "snapshot_bytes_per_second", "snapshot_backlog_limit",
})


@attrs.frozen(kw_only=True)
class ProcessSettings:
    """The settings that are not the server's behaviour: how the process logs and records."""

    # None: console on a terminal, json otherwise.
    log_format: str | None = None
    log_level: str = "info"
    # A directory for session files; None records nothing.
    record: str | None = None


class SettingsError(ValueError):
    """A config file cannot be used; the message names the file and the key."""


# -- reading values ---------------------------------------------------------------------
# Each reader turns a text into a value or raises ValueError saying what is wrong;
# argparse shows that message after the option's name, a config file after its key.


def version_list(text: str) -> frozenset[str]:
    """``004-019,021`` -> {"004", ..., "019", "021"}."""
    versions: set[str] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        if not dash:
            high = low
        for value in (low, high):
            if not (len(value) == 3 and value.isascii() and value.isdigit()):
                raise argparse.ArgumentTypeError(f"{value!r} is not a 3-digit version")
        if int(high) < int(low):
            raise argparse.ArgumentTypeError(f"{part!r} is an empty range")
        versions.update(f"{v:03d}" for v in range(int(low), int(high) + 1))
    return frozenset(versions)


def engine_groups(text: str) -> str:
    """``048`` or ``047+048,049``: checked, kept as text."""
    try:
        parse_engine_groups(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    for group in text.split(","):
        for version in group.split("+"):
            version = version.strip()
            if not (len(version) == 3 and version.isascii() and version.isdigit()):
                raise argparse.ArgumentTypeError(f"{version!r} is not a 3-digit engine version")
    return text


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def integer_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def positive_number(text: str) -> float:
    value = _number(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def coalesce_seconds(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 0.005:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..0.005 seconds")
    return value


def network_list(text: str) -> tuple[str, ...]:
    networks = tuple(n.strip() for n in text.split(",") if n.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return networks


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


# -- showing values ---------------------------------------------------------------------


def show_versions(versions: frozenset[str]) -> str:
    """{"004", ..., "019", "021"} -> ``004-019,021``: the text :func:`version_list` reads."""
    numbers = sorted(int(v) for v in versions)
    parts: list[str] = []
    start = 0
    for index in range(1, len(numbers) + 1):
        if index == len(numbers) or numbers[index] != numbers[index - 1] + 1:
            low, high = numbers[start], numbers[index - 1]
            parts.append(f"{low:03d}" if low == high else f"{low:03d}-{high:03d}")
            start = index
    return ",".join(parts)


def show(value: Any) -> str:
    """A value as the text its option reads."""
    if isinstance(value, frozenset):
        return show_versions(value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- the table --------------------------------------------------------------------------

# What a TOML value may be, per kind; it is then read as text like an option's value.
TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "text": (str,),
    "list": (str, list),
}


@attrs.frozen
class Setting:
    """One setting: its ``name`` is its Config field (or ProcessSettings field) and its
    TOML key; its option is ``--`` and the name with dashes."""

    name: str
    kind: str  # a key of TOML_TYPES
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    # What a default of None means, for the help text.
    none_means: str = ""
    in_config: bool = True

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return getattr(Config() if self.in_config else ProcessSettings(), self.name)

    def help_text(self) -> str:
        default = self.default
        if default is None:
            shown = self.none_means
        elif default == ():
            shown = "none"
        else:
            shown = show(default)
        return f"{self.help} (default: {shown})".replace("%", "%%")

    def from_toml(self, value: Any) -> Any:
        """A config file's value for this setting; ValueError if it is of the wrong
        kind or does not read."""
        types = TOML_TYPES[self.kind]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = {"int": "a whole number", "float": "a number", "text": "a string",
                        "list": "a string or a list of strings"}[self.kind]
            raise ValueError(f"{value!r} is not {expected}")
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"{value!r} is not a list of strings")
            value = ",".join(value)
        return self.parse(value if isinstance(value, str) else repr(value))


SECONDS = "SECONDS"

SETTINGS: tuple[Setting, ...] = (
    # Where and how to listen.
    Setting("host", "text", non_empty, "address to listen on", "ADDRESS"),
    Setting("port", "int", integer_in(0, 65535),
            "TCP port; 0 picks a free one, which the listening line says", "PORT"),
    Setting("seed", "int", integer,
            "seed of every random choice (panels); a fixed seed reproduces every panel", "N",
            none_means="a fresh one, logged"),
    Setting("client_versions", "list", version_list,
            "handshake versions served in the existing clients' dialect", "LIST"),
    Setting("document_versions", "list", version_list,
            "handshake versions served in the design document's dialect", "LIST"),
    Setting("v046_versions", "list", version_list,
            "handshake versions served in the 2022 client's dialect, with login and "
            "spectators", "LIST"),
    Setting("v2025_versions", "list", version_list,
            "network versions served in the 2023-2025 clients' dialect (end-marker frames); "
            "004 and 005 are told apart from the 2013 clients' by their first frame", "LIST"),
    Setting("v2025_engine_groups", "text", engine_groups,
            "engine versions of the 2023-2025 clients that may log in; players meet only "
            "those of their group: groups split by commas, versions sharing one by +", "GROUPS"),
    Setting("database", "text", non_empty,
            "SQLite file of players, ratings and games, relative to the working directory; "
            ":memory: keeps nothing", "PATH"),
    # Protocol 046 rooms.
    Setting("max_spectators_per_room", "int", integer_in(0, 10_000),
            "spectators admitted to one 046 room", "N"),
    Setting("game_over_timeout", "float", positive_seconds,
            "after one 046 player's game over, how long to wait for the other's report "
            "before deciding on the one", SECONDS),
    # Ranked play and what is kept of 046 games.
    Setting("placement_rule", "text", one_of(("2022", "relaxed")),
            "ranked games of players in placement: 2022 = only against a placed player (a "
            "fresh server then never ranks a game); relaxed = two players in placement too",
            "RULE"),
    Setting("replays_directory", "text", str,
            "where finished 046 games are written as replay files, relative to the working "
            "directory; empty: none", "DIR"),
    Setting("leaderboard_limit", "int", integer_in(1, 100_000),
            "rows of the leaderboard sent to a client", "N"),
    # Timers.
    Setting("ping_interval", "float", positive_seconds,
            "a silent connection is pinged after this long, and again each interval",
            SECONDS),
    Setting("idle_timeout", "float", positive_seconds,
            "a connection that sent nothing for this long is dropped", SECONDS),
    Setting("handshake_timeout", "float", positive_seconds,
            "a connection that has not sent a valid hello (H) by then is closed", SECONDS),
    Setting("registration_timeout", "float", positive_seconds,
            "a connection that has not registered a name or logged in by then is closed",
            SECONDS),
    # Limits, each enforced before memory is spent.
    Setting("max_json_length", "int", integer_in(2, MAX_JSON_LENGTH_ON_WIRE),
            "longest J message body in bytes; a longer one closes the connection before "
            "its body is read", "BYTES"),
    Setting("max_name_length", "int", integer_in(1, 1000),
            "longest player name in characters; a longer one is refused", "N"),
    Setting("max_connections", "int", integer_in(1, 10_000_000),
            "connections at once; past it, new ones are closed at once", "N"),
    Setting("max_connections_per_ip", "int", integer_in(1, 10_000_000),
            "connections at once from one address, except --unlimited-networks", "N"),
    Setting("unlimited_networks", "list", network_list,
            "networks exempt from --max-connections-per-ip; an empty list exempts none", "LIST"),
    Setting("max_messages_per_second", "float", positive_number,
            "messages a connection may send per second on average (an input counts "
            "1/32); excess ones wait, never dropped", "N"),
    Setting("message_burst", "int", integer_in(1, 10_000_000),
            "messages a connection may send at once above the average", "N"),
    Setting("max_held_bytes", "int", integer_in(1024, 1 << 30),
            "bytes of messages waiting for the rate limit; past it the sender is closed "
            "(message_flood)", "BYTES"),
    Setting("max_queued_bytes", "int", integer_in(1024, 1 << 40),
            "bytes waiting to be sent to one client; a client that does not read past it "
            "is dropped", "BYTES"),
    Setting("shutdown_grace", "float", positive_seconds,
            "on SIGINT or SIGTERM, how long connections get to flush before being cut",
            SECONDS),
    Setting("read_coalesce", "float", coalesce_seconds,
            "pause after a read wake-up so one round serves many sockets; 0 disables "
            "(docs/performance.md)", SECONDS),
    # The operator's HTTP port.
    Setting("http_port", "int", integer_in(0, 65535),
            "serve metrics (/metrics) and a live status page (/) on this TCP port; 0 picks "
            "a free one, which the http_listening line says", "PORT", none_means="off"),
    Setting("http_host", "text", non_empty, "address of the HTTP port", "ADDRESS",
            none_means="the same as --host"),
    Setting("http_max_connections_per_ip", "int", integer_in(1, 64),
            "HTTP connections at once from one address (any address, loopback too); the "
            "port takes 64 in all", "N"),
    # The process: its log and its recording.
    Setting("log_format", "text", one_of(LOG_FORMATS), "console or json", "FORMAT",
            none_means="console on a terminal, json otherwise", in_config=False),
    Setting("log_level", "text", one_of(LEVELS), "debug, info, warning or error", "LEVEL",
            in_config=False),
    Setting("record", "text", non_empty,
            "write every connection's traffic to a session file in this directory",
            "DIR", none_means="off", in_config=False),
)

BY_NAME: Mapping[str, Setting] = {setting.name: setting for setting in SETTINGS}


# -- deriving -------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, its default the setting's default."""
    for setting in SETTINGS:
        parser.add_argument(setting.option, dest=setting.name, type=setting.parse,
                            default=setting.default, metavar=setting.metavar,
                            help=setting.help_text())


def read_config_file(path: str) -> dict[str, Any]:
    """The settings in the TOML file ``path``, read and checked like options.

    Raises :class:`SettingsError` naming the file and, for a value, its key:
    a file that cannot be read or is not TOML, an unknown key, a bad value.
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"{path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        setting = BY_NAME.get(key)
        if setting is None:
            raise SettingsError(f"{path}: {key}: unknown setting")
        try:
            values[key] = setting.from_toml(value)
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise SettingsError(f"{path}: {key}: {error}") from None
    return values


def config_from_values(values: Mapping[str, Any] | argparse.Namespace) -> Config:
    """The Config of the server settings in ``values`` (a namespace of parsed options
    or a mapping); a setting missing from a mapping keeps its default."""
    if isinstance(values, argparse.Namespace):
        values = vars(values)
    return Config(**{
        setting.name: values[setting.name]
        for setting in SETTINGS
        if setting.in_config and setting.name in values
    })

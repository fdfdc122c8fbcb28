"""The operator's documents say what the code does: the systemd unit and the links to them."""

from __future__ import annotations

import configparser

from helpers import ROOT

from netplay.config import Config


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(ROOT / "docs" / "netplay.service")
    return parser["Service"]


def test_the_unit_restarts_on_failure_and_stops_gracefully_with_time_to_spare():
    service = unit_service_section()
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > Config().shutdown_grace + 5
    assert "--config" in service["ExecStart"] and "--log-format json" in service["ExecStart"]


def test_the_readme_links_the_operations_guide_and_the_example_config():
    readme = (ROOT / "README.md").read_text()
    assert "docs/operations.md" in readme
    assert "netplay.example.toml" in readme and "--config" in readme
    operations = (ROOT / "docs" / "operations.md").read_text()
    for topic in ("systemd", "netplay.service", "TimeoutStopSec", "JSON", "timestamp",
                  ".backup", "netplay-admin", "WAL", "replays", "newer"):
        assert topic in operations, topic

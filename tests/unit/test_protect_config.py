"""The protections' settings from TOML and the command line's parsers: the same values, one-line errors."""

from __future__ import annotations

import pytest

from vswitch.config.protect import ProtectSpec, parse_hold, parse_port_list, parse_storm_limit
from vswitch.config.topology import ConfigError, Request, build, parse_ports, request_from_toml


def test_toml_equals_the_command_line() -> None:
    text = (
        'ports = ["a", "b"]\nport_mac_max = 64\nstorm_limit = "500pps"\nloop_guard = 5\n'
        'loop_guard_hold = "10s"\nport_security = ["a"]\n'
    )
    from_file = build(request_from_toml(text))
    spec = ProtectSpec(port_mac_max=64, storm_limit=parse_storm_limit("500pps"), loop_guard=5,
                       loop_guard_hold=parse_hold("10s"), port_security=parse_port_list("a"))  # fmt: skip
    assert from_file == build(Request(ports=parse_ports("a,b"), protect=spec))
    assert from_file.protect.storm_limit == 500 and from_file.protect.loop_guard_hold == 10.0


def test_defaults_are_generous_and_on() -> None:
    protect = build(Request(ports=parse_ports("a,b"))).protect
    assert (protect.namespace_port_mac_max, protect.storm_limit, protect.loop_guard) == (1024, 10_000, 10)
    assert protect.port_security == []


@pytest.mark.parametrize(("text", "rate"), [("1000pps", 1000), ("1000", 1000), ("0", 0), ("off", 0)])
def test_storm_limits(text: str, rate: int) -> None:
    assert parse_storm_limit(text) == rate


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('ports = ["a"]\nport_security = ["b"]\n', "--port-security b: no such port"),
        ('ports = ["a"]\nport_security = "a"\n', "port_security must be a list"),
        ('ports = ["a"]\nstorm_limit = "lots"\n', "storm limit 'lots'"),
        ('ports = ["a"]\nstorm_limit = 1.5\n', "storm_limit must be a whole number"),
        ('ports = ["a"]\nport_mac_max = 0\n', "port-mac-max must be at least 1"),
        ('ports = ["a"]\nloop_guard = -2\n', "loop-guard must be 0"),
        ('ports = ["a"]\nloop_guard_hold = 0\n', "loop-guard-hold must be a positive"),
        ('ports = ["a"]\nloop_guard_hold = true\n', "loop_guard_hold must be seconds"),
    ],
)
def test_bad_settings_are_one_clear_error(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(request_from_toml(toml))

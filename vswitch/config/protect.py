"""The switch protections' settings (issue 23): per-port MAC limits, storm control, the loop guard,
port security. Parsed from the command line and from TOML the same way; checked against the
topology's ports when it is built."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.fdb import DEFAULT_LOOP_MOVES, DEFAULT_PORT_MAC_MAX
from ..core.l2 import DEFAULT_LOOP_HOLD, DEFAULT_STORM_LIMIT
from .errors import ConfigError

TOML_KEYS = {"port_mac_max", "storm_limit", "loop_guard", "loop_guard_hold", "port_security"}
_RATE = re.compile(r"(\d+)\s*(pps)?")


@dataclass
class ProtectSpec:
    """port_mac_max: MACs a port of one namespace may learn (None: the default, 1024); trunks,
    tunnels, the uplink and the host port carry many and default to the segment's --fdb-max.
    storm_limit: floods a second per port and kind (0: off). loop_guard: moves a second of one MAC
    that mean a loop (0: off); loop_guard_hold: seconds its port stays blocked. port_security: the
    ports (labels) that may send only from their own MAC and addresses."""

    port_mac_max: int | None = None
    storm_limit: int = DEFAULT_STORM_LIMIT
    loop_guard: int = DEFAULT_LOOP_MOVES
    loop_guard_hold: float = DEFAULT_LOOP_HOLD
    port_security: list[str] = field(default_factory=list)

    @property
    def namespace_port_mac_max(self) -> int:
        return DEFAULT_PORT_MAC_MAX if self.port_mac_max is None else self.port_mac_max


def parse_storm_limit(text: str) -> int:
    """1000pps, 1000, or 0 / off (no storm control)."""
    text = text.strip().lower()
    if text == "off":
        return 0
    match = _RATE.fullmatch(text)
    if match is None:
        raise ConfigError(f"storm limit {text!r}: give packets a second, like 1000pps (0 or off: none)")
    return int(match.group(1))


def parse_hold(text: str) -> float:
    try:
        hold = float(text.removesuffix("s"))
    except ValueError:
        raise ConfigError(f"loop guard hold {text!r}: give seconds, like 30 or 30s") from None
    return hold


def parse_port_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"--port-security {text!r}: give port names, separated by commas")
    return names


def check(spec: ProtectSpec, ports: set[str]) -> None:
    """The numbers in range, and port security naming ports of namespaces this topology has."""
    if spec.port_mac_max is not None and spec.port_mac_max < 1:
        raise ConfigError("port-mac-max must be at least 1")
    if spec.storm_limit < 0:
        raise ConfigError("storm-limit must be 0 (off) or more packets a second")
    if spec.loop_guard < 0:
        raise ConfigError("loop-guard must be 0 (off) or more moves a second")
    if not (math.isfinite(spec.loop_guard_hold) and spec.loop_guard_hold > 0):
        hold = spec.loop_guard_hold
        raise ConfigError(f"loop-guard-hold must be a positive number of seconds, not {hold!r}")
    for name in spec.port_security:
        if name not in ports:
            known = ", ".join(sorted(ports)) or "none"
            raise ConfigError(f"--port-security {name}: no such port (ports of namespaces: {known})")


def from_toml(data: dict[str, Any]) -> ProtectSpec:
    spec = ProtectSpec()
    if "port_mac_max" in data:
        spec.port_mac_max = _whole(data["port_mac_max"], "port_mac_max")
    if "storm_limit" in data:
        value = data["storm_limit"]
        limit = parse_storm_limit(value) if isinstance(value, str) else _whole(value, "storm_limit")
        spec.storm_limit = limit
    if "loop_guard" in data:
        spec.loop_guard = _whole(data["loop_guard"], "loop_guard")
    if "loop_guard_hold" in data:
        value = data["loop_guard_hold"]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"loop_guard_hold must be seconds, not {value!r}")
        spec.loop_guard_hold = parse_hold(value) if isinstance(value, str) else float(value)
    if "port_security" in data:
        value = data["port_security"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError('port_security must be a list of port names, like ["ns1", "ns2"]')
        spec.port_security = list(value)
    return spec


def _whole(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, not {value!r}")
    return value

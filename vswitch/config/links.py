"""Network emulation settings: `vswitch link`, `vswitch partition` and TOML's [link.PORT] tables.

The values are written as tc and netem write them, with a unit each:
- times: 40ms, 1.5s, 2m (a bare number is refused on the command line: is 40 seconds or milliseconds?
  In TOML a number is seconds, as lease_time's);
- percentages: 1%, 0.5%, 100% (a bare number is refused, in TOML too: 1 could be 1 %, or 100 % as a
  fraction of the Python API);
- rates, tc's units: bit (or a bare number), kbit, mbit, gbit, tbit are bits a second (1000-based), and
  bps, kbps, mbps, gbps, tbps are BYTES a second (10mbps is 80mbit), as tc(8) has them;
- sizes (--burst): bytes, or with k/kb, m/mb, g/gb (1024-based, as tc's).
Each bad value is one ConfigError line naming the option; what is out of range is refused by
Impairment.check(), whose words name the option too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..core.bpf import FilterError, compile_filter
from ..core.emulation import DIRECTIONS, DISTRIBUTIONS, Direction, Impairment
from .errors import ConfigError
from .services import parse_duration


@dataclass(frozen=True)
class LinkSetting:
    """An impairment of one port, in the directions given ("in", "out")."""

    port: str
    directions: tuple[Direction, ...]
    impairment: Impairment


_NUMBER: Final = r"(\d+(?:\.\d*)?|\.\d+)"
_TIME: Final = re.compile(r"\d+(?:\.\d+)?(ms|s|m|h|d)")
_RATE: Final = re.compile(_NUMBER + r"([a-z]*)")
_RATE_UNITS: Final = {
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
}
_PERCENT: Final = re.compile(_NUMBER + r"\s*%")
_SIZE: Final = re.compile(_NUMBER + r"([a-z]*)")
_SIZE_UNITS: Final = {
    **dict.fromkeys(("", "b"), 1),
    **dict.fromkeys(("k", "kb"), 1 << 10),
    **dict.fromkeys(("m", "mb"), 1 << 20),
    **dict.fromkeys(("g", "gb"), 1 << 30),
}
_INTEGER: Final = re.compile(r"\d+")
BOTH: Final = "both"

# The options of `vswitch link` and the keys of a [link.PORT] table, by Impairment field. TOML's keys
# are the fields' names (loss_burst), as its other keys are (lease_time); the options use dashes.
FIELDS: Final = (
    "delay",
    "jitter",
    "distribution",
    "loss",
    "loss_burst",
    "duplicate",
    "reorder",
    "corrupt",
    "rate",
    "burst",
    "latency",
    "limit",
    "down",
    "flap",
    "carrier",
    "filter",
    "seed",
)
TIMES: Final = ("delay", "jitter", "latency")
PERCENTS: Final = ("loss", "duplicate", "reorder", "corrupt")
TOML_KEYS: Final = frozenset((*FIELDS, "direction"))


def option(field: str) -> str:
    """The command line's name of an Impairment field: loss_burst -> --loss-burst."""
    return "--" + field.replace("_", "-")


# --- one value each ---------------------------------------------------------------------------------
def parse_time(text: str, what: str) -> float:
    """Seconds from a time with its unit: 40ms, 1.5s, 2m."""
    if not _TIME.fullmatch(text.strip()):
        raise ConfigError(f"{what} {text!r}: a time with its unit, like 40ms, 1.5s or 2m")
    return parse_duration(text, what)


def parse_rate(text: str, what: str = "--rate") -> float:
    """Bits a second: 10mbit, 1.5mbit, 500kbit, 100000 (or 100000bit); bps, kbps, mbps, gbps are bytes a
    second, as tc's are."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _RATE_UNITS:
        raise ConfigError(
            f"{what} {text!r}: a rate like 10mbit, 500kbit or 1gbit (kbps, mbps: bytes a second, as tc's)"
        )
    return float(match.group(1)) * _RATE_UNITS[match.group(2)]


def parse_percent(text: str, what: str) -> float:
    """A fraction 0..1 from a percentage: 1%, 0.5%, 100%."""
    match = _PERCENT.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{what} {text!r}: a percentage like 1% or 0.5%")
    value = float(match.group(1))
    if value > 100:
        raise ConfigError(f"{what} {text!r}: at most 100%")
    return value / 100


def parse_size(text: str, what: str = "--burst") -> int:
    """Bytes: 1514, 1514b, 32k or 32kb (32768), 1m or 1mb."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ConfigError(f"{what} {text!r}: a size in bytes like 1514, 32kb or 1mb")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if value != int(value):
        raise ConfigError(f"{what} {text!r}: a whole number of bytes")
    return int(value)


def parse_flap(text: str, what: str = "--flap") -> tuple[float, float]:
    """UP/DOWN: how long the link stays up, then down, repeating: 2s/500ms -> (2.0, 0.5)."""
    up, sep, down = text.partition("/")
    if not sep or not _TIME.fullmatch(up.strip()) or not _TIME.fullmatch(down.strip()):
        raise ConfigError(f"{what} {text!r}: UP/DOWN, two times with their units, like 2s/500ms")
    return parse_duration(up, what), parse_duration(down, what)


def parse_whole(text: str, what: str) -> int:
    if not _INTEGER.fullmatch(text.strip()):
        raise ConfigError(f"{what} {text!r}: a whole number")
    return int(text)


def parse_number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what} {text!r}: a number")
    return value


def parse_directions(text: str, what: str = "--direction") -> tuple[Direction, ...]:
    """in, out or both: ("in",), ("out",), ("in", "out")."""
    word = text.strip().lower()
    if word == BOTH:
        return DIRECTIONS
    for direction in DIRECTIONS:
        if word == direction:
            return (direction,)
    raise ConfigError(f"{what} {text!r}: in, out or both")


def parse_distribution(text: str, what: str = "--distribution") -> str:
    word = text.strip().lower()
    if word not in DISTRIBUTIONS:
        raise ConfigError(f"{what} {text!r}: uniform or normal")
    return word


def check_filter(text: str, what: str = "--filter") -> str:
    """A capture filter (the subset `vswitch capture` takes), compiled once to find its errors."""
    try:
        compile_filter(text)
    except FilterError as exc:  # "filter 'EXPR': why"
        raise ConfigError(f"{what} {str(exc).removeprefix('filter ')}") from None
    return text


def parse_value(field: str, text: str, what: str) -> Any:
    """One Impairment field from its text (the command line's, or a TOML string)."""
    if field in TIMES:
        return parse_time(text, what)
    if field in PERCENTS:
        return parse_percent(text, what)
    if field == "rate":
        return parse_rate(text, what)
    if field == "burst":
        return parse_size(text, what)
    if field == "flap":
        return parse_flap(text, what)
    if field == "distribution":
        return parse_distribution(text, what)
    if field == "filter":
        return check_filter(text, what)
    if field in ("limit", "seed"):
        return parse_whole(text, what)
    if field == "loss_burst":
        return parse_number(text, what)
    raise ConfigError(f"{what}: not an impairment")  # down and carrier are flags, not text


def checked(impairment: Impairment, toml: bool = False) -> Impairment:
    """impairment.check(), its ValueError as a ConfigError; with toml, in the words of a config file's
    keys and the Python API's arguments (loss_burst, not --loss-burst)."""
    try:
        return impairment.check()
    except ValueError as exc:
        message = str(exc)
        if toml:
            message = re.sub(r"--([a-z-]+)", lambda m: m.group(1).replace("-", "_"), message)
        raise ConfigError(message) from None


def impairment_from_options(values: Mapping[str, str | bool | None]) -> Impairment | None:
    """The Impairment the command line's options ask for ({field: text, or True for --down and
    --carrier; None or False: not given}), checked; None when no option was given."""
    fields: dict[str, Any] = {}
    for field, value in values.items():
        if field not in FIELDS:
            raise ConfigError(f"{option(field)}: not an impairment")
        if value is None or value is False:
            continue
        if field in ("down", "carrier"):
            fields[field] = True
        elif isinstance(value, str):
            fields[field] = parse_value(field, value, option(field))
        else:
            raise ConfigError(f"{option(field)} takes a value")
    if not fields:
        return None
    return checked(Impairment(**fields))


# --- TOML -------------------------------------------------------------------------------------------
def link_settings_from_toml(table: object) -> list[LinkSetting]:
    """The [link.PORT] tables of a config file (TOML's `link` key): one LinkSetting per port, in order."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError("link must be tables, one per port: write each one as a [link.PORT] section")
    return [link_setting_from_toml(port, values) for port, values in table.items()]


def link_setting_from_toml(port: str, table: dict[str, Any]) -> LinkSetting:
    """One [link.PORT] table: the keys are `vswitch link`'s options (loss_burst for --loss-burst) and
    direction; strings as the command line takes them ("40ms", "1%", "10mbit", "2s/500ms"), or numbers
    in the base unit (seconds, bits a second, bytes, packets) where there is no doubt about it."""
    where = f"[link.{port}]"
    unknown = set(table) - TOML_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    directions: tuple[Direction, ...] = DIRECTIONS
    if "direction" in table:
        value = table["direction"]
        if not isinstance(value, str):
            raise ConfigError(f"{where} direction must be in, out or both, not {value!r}")
        directions = parse_directions(value, f"{where} direction")
    fields: dict[str, Any] = {}
    for field in FIELDS:
        if field in table:
            fields[field] = _toml_value(field, table[field], f"{where} {field}")
    if not fields:
        raise ConfigError(f"{where} sets no impairment: give delay, loss, rate, down, ... (see README)")
    try:
        impairment = checked(Impairment(**fields), toml=True)
    except ConfigError as exc:
        raise ConfigError(f"{where} {exc}") from None
    return LinkSetting(port, directions, impairment)


def _toml_value(field: str, value: object, what: str) -> Any:
    if field in ("down", "carrier"):
        if not isinstance(value, bool):
            raise ConfigError(f"{what} must be true or false, not {value!r}")
        return value
    if isinstance(value, str):
        return parse_value(field, value, what)
    if field == "flap" and isinstance(value, list) and len(value) == 2 and all(map(_finite, value)):
        return float(value[0]), float(value[1])
    number = _finite(value)
    if field in TIMES and number:
        return float(value)  # type: ignore[arg-type]
    if field in ("rate", "loss_burst") and number:
        return float(value)  # type: ignore[arg-type]
    if field in ("burst", "limit", "seed") and isinstance(value, int) and not isinstance(value, bool):
        return value
    hints = {
        "flap": 'a string like "2s/500ms", or [UP, DOWN] in seconds',
        "distribution": '"uniform" or "normal"',
        "filter": 'a capture filter as a string, like "tcp port 80"',
        "burst": 'a whole number of bytes, or a string like "32kb"',
        "limit": "a whole number of packets",
        "seed": "a whole number",
        "rate": 'bits a second, or a string like "10mbit"',
        "loss_burst": "a number of packets",
    }
    hint = hints.get(field) or (
        'a percentage as a string, like "1%"' if field in PERCENTS else 'seconds, or a string like "40ms"'
    )
    raise ConfigError(f"{what} must be {hint}, not {value!r}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_ports(settings: list[LinkSetting], ports: Mapping[str, str]) -> None:
    """Each [link.PORT] names a port that can be impaired ({label: kind}: "port" for a tap of ours, a
    namespace's port, the host port or the uplink; "trunk" or "tunnel" for those, which cannot be: their
    VLANs and remotes share one fd), once."""
    seen: set[str] = set()
    for setting in settings:
        where = f"[link.{setting.port}]"
        kind = ports.get(setting.port)
        if kind is None:
            names = ", ".join(label for label, kind in ports.items() if kind == "port")
            raise ConfigError(f"{where}: there is no port {setting.port!r} (the ports: {names})")
        if kind != "port":
            raise ConfigError(
                f"{where}: a {kind} cannot be impaired, only a namespace's port, the host port or the uplink"
            )
        if setting.port in seen:
            raise ConfigError(f"{where}: the port is given twice")
        seen.add(setting.port)

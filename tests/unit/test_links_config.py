"""Network emulation's plumbing (config/links.py, the CLI, the Python API): each value's parser and its
one-line error, TOML's [link.PORT] tables checked against the topology, the control requests `vswitch
link`, `partition` and `heal` send (no switch runs: the socket is replaced), and Switch.impair and
Switch.partition as context managers over a stand-in instance on a real loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vswitch import cli
from vswitch.api import Switch
from vswitch.config.errors import ConfigError
from vswitch.config.links import (
    LinkSetting,
    impairment_from_options,
    link_settings_from_toml,
    parse_directions,
    parse_flap,
    parse_percent,
    parse_rate,
    parse_size,
    parse_time,
)
from vswitch.config.topology import build, request_from_toml
from vswitch.core.emulation import Impairment

RATE_HINT = "a rate like 10mbit, 500kbit or 1gbit (kbps, mbps: bytes a second, as tc's)"
SIDES_HINT = "give the two sides as A,B / C (or A,B --to C for one way)"


# === 1. One value each ===================================================================================
@pytest.mark.parametrize(
    ("text", "bits"),
    [("10mbit", 10e6), ("1gbit", 1e9), ("500kbit", 500e3), ("100000bit", 1e5), ("100000", 1e5),
     ("1.5mbit", 1.5e6), ("10Mbit", 10e6), ("1mbps", 8e6), ("125kbps", 1e6), ("1000bps", 8000.0),
     ("2gbps", 16e9), (" 1tbit ", 1e12), (".5mbit", 0.5e6)],
)  # fmt: skip
def test_a_rate_is_tc_s_units(text: str, bits: float) -> None:
    assert parse_rate(text) == pytest.approx(bits)


@pytest.mark.parametrize(
    "text", ["", "fast", "10 mbit", "10mb", "10mbits", "-1mbit", "1e6", "mbit", "1..5mbit"]
)
def test_a_bad_rate_is_one_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rate(text)
    assert str(info.value) == f"--rate {text!r}: {RATE_HINT}"


@pytest.mark.parametrize(
    ("text", "fraction"), [("1%", 0.01), ("0.5%", 0.005), ("100%", 1.0), ("0%", 0.0), ("2.5 %", 0.025)]
)
def test_a_percentage_is_a_fraction(text: str, fraction: float) -> None:
    assert parse_percent(text, "--loss") == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["1", "0.01", "%", "one%", "-1%", "1%%"])
def test_a_bare_number_or_a_bad_percentage_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_percent(text, "--loss")
    assert str(info.value) == f"--loss {text!r}: a percentage like 1% or 0.5%"


def test_a_percentage_above_100_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_percent("150%", "--duplicate")
    assert str(info.value) == "--duplicate '150%': at most 100%"


@pytest.mark.parametrize(
    ("text", "seconds"), [("40ms", 0.04), ("1.5s", 1.5), ("2m", 120.0), ("0.5ms", 0.0005)]
)
def test_a_time_has_its_unit(text: str, seconds: float) -> None:
    assert parse_time(text, "--delay") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["40", "40us", "ms", "-4ms", "4 ms s"])
def test_a_time_without_its_unit_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time(text, "--delay")
    assert str(info.value) == f"--delay {text!r}: a time with its unit, like 40ms, 1.5s or 2m"


@pytest.mark.parametrize(
    ("text", "up_down"), [("2s/500ms", (2.0, 0.5)), ("1m/1s", (60.0, 1.0)), (" 1s / 1s ", (1.0, 1.0))]
)
def test_a_flap_is_up_then_down(text: str, up_down: tuple[float, float]) -> None:
    assert parse_flap(text) == pytest.approx(up_down)


@pytest.mark.parametrize("text", ["2s", "2/1", "2s/", "/1s", "2s/1s/1s", "2s-500ms"])
def test_a_bad_flap_is_one_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_flap(text)
    assert str(info.value) == f"--flap {text!r}: UP/DOWN, two times with their units, like 2s/500ms"


@pytest.mark.parametrize(
    ("text", "size"),
    [("1514", 1514), ("1514b", 1514), ("64k", 65536), ("32kb", 32768), ("32KB", 32768), ("1mb", 1 << 20),
     ("1.5k", 1536), ("1g", 1 << 30)],
)  # fmt: skip
def test_a_size_is_bytes_with_tc_s_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_is_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_size("32kbit")
    assert str(info.value) == "--burst '32kbit': a size in bytes like 1514, 32kb or 1mb"
    with pytest.raises(ConfigError) as info:
        parse_size("1.5")
    assert str(info.value) == "--burst '1.5': a whole number of bytes"


def test_directions() -> None:
    assert parse_directions("in") == ("in",)
    assert parse_directions("out") == ("out",)
    assert parse_directions("both") == ("in", "out")
    assert parse_directions("OUT") == ("out",)
    with pytest.raises(ConfigError) as info:
        parse_directions("up")
    assert str(info.value) == "--direction 'up': in, out or both"


# === 2. The options together ==============================================================================
def test_the_options_make_one_checked_impairment() -> None:
    impairment = impairment_from_options(
        {"delay": "40ms", "jitter": "5ms", "distribution": "normal", "loss": "1%", "loss_burst": "3",
         "rate": "10mbit", "burst": "32kb", "latency": "100ms", "limit": "5000", "seed": "7",
         "filter": "tcp port 80", "down": False, "carrier": False, "flap": None}
    )  # fmt: skip
    assert impairment == Impairment(
        delay=0.04, jitter=0.005, distribution="normal", loss=0.01, loss_burst=3.0, rate=10e6,
        burst=32768, latency=0.1, limit=5000, seed=7, filter="tcp port 80",
    )  # fmt: skip


def test_no_option_is_no_impairment() -> None:
    assert impairment_from_options({"delay": None, "down": False}) is None


def test_flags_and_a_flap() -> None:
    assert impairment_from_options({"down": True, "carrier": True}) == Impairment(down=True, carrier=True)
    assert impairment_from_options({"flap": "2s/500ms"}) == Impairment(flap=(2.0, 0.5))


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"rate": "1kbit"}, "--rate must be 8kbit to 100gbit, not 1000 bit/s"),
        ({"burst": "1k"}, "--burst and --latency shape a --rate: give one"),
        ({"rate": "1mbit", "burst": "1000"}, "--burst must hold a full frame (1514 bytes), not 1000"),
        ({"carrier": True}, "--carrier takes the carrier down with --down or a --flap: give one"),
        ({"loss": "100%", "loss_burst": "5"}, "--loss-burst needs a --loss below 100%"),
        ({"loss_burst": "0.5", "loss": "1%"}, "--loss-burst must be 1 to 1000000 packets, not 0.5"),
        ({"loss_burst": "many"}, "--loss-burst 'many': a number"),
        ({"limit": "1.5"}, "--limit '1.5': a whole number"),
        ({"seed": "-1"}, "--seed '-1': a whole number"),
        ({"delay": "2m"}, "--delay must be 0 to 60 s, not 120 s"),
        ({"distribution": "pareto"}, "--distribution 'pareto': uniform or normal"),
        ({"filter": "tcp prt 80"}, "--filter 'tcp prt 80': unexpected 'prt'"),
        ({"flap": "0.5ms/1s"}, "--flap UP/DOWN: each 1ms to 1d"),
        ({"jitter": "5"}, "--jitter '5': a time with its unit, like 40ms, 1.5s or 2m"),
    ],
)
def test_a_bad_combination_or_value_is_one_error(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError) as info:
        impairment_from_options(options)
    assert str(info.value) == why


# === 3. TOML [link.PORT] ===================================================================================
TOML = """
ports = ["ns1", "ns2", "ns3"]

[link.ns1]
delay = "40ms"
jitter = 0.005
loss = "1%"
loss_burst = 4
rate = "10mbit"
burst = "32kb"

[link.ns2]
direction = "out"
down = true
carrier = true

[link.ns3]
direction = "in"
flap = [2, 0.5]
rate = 1000000
limit = 2000
seed = 42
filter = "icmp"
"""


def test_toml_links_reach_the_topology() -> None:
    topology = build(request_from_toml(TOML))
    assert topology.links == [
        LinkSetting(
            "ns1",
            ("in", "out"),
            Impairment(delay=0.04, jitter=0.005, loss=0.01, loss_burst=4.0, rate=10e6, burst=32768),
        ),
        LinkSetting("ns2", ("out",), Impairment(down=True, carrier=True)),
        LinkSetting(
            "ns3", ("in",), Impairment(flap=(2.0, 0.5), rate=1e6, limit=2000, seed=42, filter="icmp")
        ),
    ]


def test_a_topology_without_links_has_none() -> None:
    assert build(request_from_toml('ports = ["ns1", "ns2"]\n')).links == []


def test_a_flap_as_a_string_and_the_uplink_and_host_ports() -> None:
    text = (
        'uplink = "wan"\nhost = true\n[[segment]]\nname = "lan"\nports = ["ns1"]\n'
        '[link.wan]\nflap = "2s/500ms"\n[link.host]\ndelay = "1ms"\n'
    )
    links = build(request_from_toml(text)).links
    assert [(s.port, s.impairment) for s in links] == [
        ("wan", Impairment(flap=(2.0, 0.5))),
        ("host", Impairment(delay=0.001)),
    ]


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ("[link.ns1]\nlatency_ms = 3", "unknown key(s) in [link.ns1]: latency_ms"),
        ("[link.ns1]\nloss-burst = 3", "unknown key(s) in [link.ns1]: loss-burst"),
        ("[link.ns1]\ndirection = 'up'\ndelay = '1ms'", "[link.ns1] direction 'up': in, out or both"),
        ("[link.ns1]\ndirection = 1", "[link.ns1] direction must be in, out or both, not 1"),
        (
            "[link.ns1]\ndirection = 'in'",
            "[link.ns1] sets no impairment: give delay, loss, rate, down, ... (see README)",
        ),
        ("[link.ns1]\nloss = 0.01", '[link.ns1] loss must be a percentage as a string, like "1%", not 0.01'),
        ("[link.ns1]\nloss = '1'", "[link.ns1] loss '1': a percentage like 1% or 0.5%"),
        ("[link.ns1]\ndelay = '40'", "[link.ns1] delay '40': a time with its unit, like 40ms, 1.5s or 2m"),
        ("[link.ns1]\ndelay = true", '[link.ns1] delay must be seconds, or a string like "40ms", not True'),
        ("[link.ns1]\ndelay = nan", '[link.ns1] delay must be seconds, or a string like "40ms", not nan'),
        ("[link.ns1]\ndelay = 90", "[link.ns1] delay must be 0 to 60 s, not 90 s"),
        ("[link.ns1]\ndown = 'yes'", "[link.ns1] down must be true or false, not 'yes'"),
        ("[link.ns1]\nlimit = 1.5", "[link.ns1] limit must be a whole number of packets, not 1.5"),
        ("[link.ns1]\nburst = 2000", "[link.ns1] burst and latency shape a rate: give one"),
        (
            "[link.ns1]\nloss = '1%'\nloss_burst = 0.5",
            "[link.ns1] loss_burst must be 1 to 1000000 packets, not 0.5",
        ),
        ("[link.ns1]\nrate = '10mb'", f"[link.ns1] rate '10mb': {RATE_HINT}"),
        (
            "[link.ns1]\nflap = [1]",
            '[link.ns1] flap must be a string like "2s/500ms", or [UP, DOWN] in seconds, not [1]',
        ),
        ("[link.ns1]\nfilter = 'tcp prt 1'", "[link.ns1] filter 'tcp prt 1': unexpected 'prt'"),
        (
            "[link.ns1]\nfilter = 80",
            '[link.ns1] filter must be a capture filter as a string, like "tcp port 80", not 80',
        ),
        ("link = 3", "link must be tables, one per port: write each one as a [link.PORT] section"),
        ("[link]\nns1 = 3", "link must be tables, one per port: write each one as a [link.PORT] section"),
    ],
)
def test_a_bad_link_table_is_one_error(table: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        request_from_toml(f'ports = ["ns1", "ns2"]\n{table}\n')
    assert str(info.value) == why


def test_a_link_names_a_port_of_the_topology() -> None:
    with pytest.raises(ConfigError) as info:
        build(request_from_toml('ports = ["ns1", "ns2"]\n[link.ns9]\ndelay = "1ms"\n'))
    assert str(info.value) == "[link.ns9]: there is no port 'ns9' (the ports: ns1, ns2)"


@pytest.mark.parametrize(
    ("extra", "port", "kind"),
    [
        ('[[trunk]]\nport = "tr"\nvlans = {lan = 10}\n', "tr", "trunk"),
        ('[segment.vxlan]\nvni = 42\nlocal = "10.250.0.1"\nnetns = "ul"\nremote = "10.250.0.2"\n',
         "vx42", "tunnel"),
    ],
)  # fmt: skip
def test_a_trunk_or_a_tunnel_cannot_be_impaired(extra: str, port: str, kind: str) -> None:
    text = f'[[segment]]\nname = "lan"\nports = ["ns1"]\n{extra}[link.{port}]\ndelay = "1ms"\n'
    with pytest.raises(ConfigError) as info:
        build(request_from_toml(text))
    assert str(info.value) == (
        f"[link.{port}]: a {kind} cannot be impaired, only a namespace's port, the host port or the uplink"
    )


def test_link_settings_from_a_parsed_table() -> None:
    assert link_settings_from_toml({"ns1": {"delay": 0.01}}) == [
        LinkSetting("ns1", ("in", "out"), Impairment(delay=0.01))
    ]


def test_the_toml_config_reaches_vswitch_up(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(TOML)
    topology = cli.topology_from_args(cli.parse(["up", "--config", str(path)]))
    assert [s.port for s in topology.links] == ["ns1", "ns2", "ns3"]


# === 4. The command line: the request it sends, its one-line errors ========================================
@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    """The requests the CLI sends, answered with a canned result instead of a running switch."""
    monkeypatch.setenv("VSWITCH_RUN_DIR", str(tmp_path))
    requests: list[tuple[str, str, dict[str, Any]]] = []
    answers = {
        "link": {"port": "ns1", "in": {"settings": {"delay": 0.04}, "limit": 1000, "queued": 0, "down": False,
                                       "stats": {"delayed": 3}}},
        "partition": {"partitions": ["ns1,ns2 / ns3"]},
        "heal": {"healed": 2},
    }  # fmt: skip

    def fake(path: Path, cmd: str, timeout: float = 5.0, **fields: Any) -> Any:
        requests.append((Path(path).name, cmd, fields))
        if fields.get("op") == "list":
            return {"links": [answers["link"]], "partitions": ["ns1 -> ns3"], "carrier_down": ["ns2"]}
        return answers[cmd]

    monkeypatch.setattr(cli, "request", fake)
    yield requests


def run(*argv: str) -> int:
    return cli.main(list(argv))


def test_link_with_options_sets_the_impairment(
    sent: list[tuple[str, str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("link", "ns1", "--delay", "40ms", "--loss", "1%", "--rate", "10mbit", "--name", "lab") == 0
    assert sent == [
        ("lab.sock", "link",
         {"op": "set", "port": "ns1", "direction": "both",
          "impairment": {"delay": 0.04, "loss": 0.01, "rate": 10e6}}),
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "delay 40 ms" in out and "delayed=3" in out and "0/1000" in out


def test_every_option_reaches_the_request(sent: list[tuple[str, str, dict[str, Any]]]) -> None:
    run(
        "link", "ns1", "--direction", "in", "--delay", "10ms", "--jitter", "1ms", "--distribution", "normal",
        "--loss", "2%", "--loss-burst", "3", "--duplicate", "1%", "--reorder", "5%", "--corrupt", "0.1%",
        "--rate", "1gbit", "--burst", "64k", "--latency", "20ms", "--limit", "3000", "--flap", "2s/1s",
        "--carrier", "-f", "udp port 53", "--seed", "5",
    )  # fmt: skip
    fields = sent[0][2]
    assert fields["direction"] == "in"
    assert Impairment.from_settings(fields["impairment"]) == Impairment(
        delay=0.01, jitter=0.001, distribution="normal", loss=0.02, loss_burst=3.0, duplicate=0.01,
        reorder=0.05, corrupt=0.001, rate=1e9, burst=65536, latency=0.02, limit=3000, flap=(2.0, 1.0),
        carrier=True, filter="udp port 53", seed=5,
    )  # fmt: skip


def test_clear_and_list_and_the_default_instance(
    sent: list[tuple[str, str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    run("link", "ns1", "--clear", "--direction", "out")
    run("link")
    assert sent == [
        ("default.sock", "link", {"op": "clear", "port": "ns1", "direction": "out"}),
        ("default.sock", "link", {"op": "list"}),
    ]
    out = capsys.readouterr().out
    assert "partitions: ns1 -> ns3" in out and "carrier down: ns2" in out


def test_link_json(sent: list[tuple[str, str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    run("link", "--json")
    assert '"carrier_down": [' in capsys.readouterr().out


def test_partition_two_way_and_one_way_and_heal(
    sent: list[tuple[str, str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    run("partition", "ns1,ns2", "/", "ns3")
    run("partition", "ns1,ns2/ns3")
    run("partition", "ns1", "--to", "ns2,ns3")
    run("heal", "--name", "lab")
    assert [(cmd, fields) for _, cmd, fields in sent] == [
        ("partition", {"sources": ["ns1", "ns2"], "targets": ["ns3"], "two_way": True}),
        ("partition", {"sources": ["ns1", "ns2"], "targets": ["ns3"], "two_way": True}),
        ("partition", {"sources": ["ns1"], "targets": ["ns2", "ns3"], "two_way": False}),
        ("heal", {}),
    ]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "partitions: ns1,ns2 / ns3" and out[-1] == "healed 2 partitions"


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (("link", "ns1"), "link ns1: give an impairment (--delay, --loss, --rate, --down ...) or --clear"),
        (("link", "ns1", "--delay", "40"), "--delay '40': a time with its unit, like 40ms, 1.5s or 2m"),
        (("link", "ns1", "--loss", "1"), "--loss '1': a percentage like 1% or 0.5%"),
        (("link", "ns1", "--loss", "1%", "--clear"), "--clear takes no impairment, not --loss"),
        (("link", "--delay", "1ms"), "--delay needs a PORT: vswitch link PORT --delay ..."),
        (("link", "--clear"), "--clear needs a PORT: vswitch link PORT --clear ..."),
        (("link", "ns1", "--direction", "up", "--down"), "--direction 'up': in, out or both"),
        (("link", "ns1", "--rate", "1kbit"), "--rate must be 8kbit to 100gbit, not 1000 bit/s"),
        (("link", "ns1", "--seed", "x"), "--seed 'x': a whole number"),
        (("link", "ns1", "--name", "bad/name", "--down"), None),
        (("partition", "ns1", "ns2"), f"partition 'ns1 ns2': {SIDES_HINT}"),
        (("partition", "ns1", "/", "ns2", "/", "ns3"), f"partition 'ns1 / ns2 / ns3': {SIDES_HINT}"),
        (
            ("partition", "ns1", "/", "ns2", "--to", "ns3"),
            "partition: give A,B / C (both ways) or A,B --to C (one way), not both",
        ),
        (("partition", "/", "ns2"), "partition: each side needs at least one port"),
        (("partition", "ns1", "--to", ","), "partition: each side needs at least one port"),
        (("link", "ns1", "--bogus"), "unrecognized arguments: --bogus (see 'vswitch --help')"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(
    sent: list[tuple[str, str, dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    why: str | None,
) -> None:
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("vswitch: error: ")
    if why is not None:
        assert err == [f"vswitch: error: {why}"]
    assert sent == []


def test_an_instance_s_refusal_is_one_line_and_status_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VSWITCH_RUN_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        run("link", "ns1", "--down", "--name", "lab")
    assert info.value.code == 1
    assert (
        capsys.readouterr().err
        == f"vswitch: error: instance lab: no running instance at {tmp_path}/lab.sock\n"
    )


def test_status_summarises_the_emulation() -> None:
    summary = cli.emulation_summary(
        {"links": [{"port": "ns1", "in": {}, "out": {}}, {"port": "ns2", "out": {}}], "partitions": ["a / b"]}
    )
    assert summary == "impaired ns1 (in, out), ns2 (out); partitions a / b"


# === 5. The Python API, over a stand-in instance on a real loop ============================================
class FakeInstance:
    """What Switch's emulation methods call, recorded; the switch's loop runs it, as the real one."""

    def __init__(self) -> None:
        self.shell = object()
        self.calls: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()

    def _note(self, *call: Any) -> None:
        self.calls.append(call)
        self.threads.add(threading.current_thread().name)

    def set_link(self, label: str, directions: tuple[str, ...], impairment: Impairment) -> dict[str, Any]:
        self._note("set", label, directions, impairment)
        if label == "nosuch":
            from vswitch.shell.control import CommandError

            raise CommandError("no port 'nosuch'")
        return {"port": label, "in": {"settings": impairment.settings()}}

    def clear_link(self, label: str, directions: tuple[str, ...]) -> dict[str, Any]:
        self._note("clear", label, directions)
        return {"port": label}

    def links(self) -> dict[str, Any]:
        self._note("links")
        return {"links": [], "partitions": [], "carrier_down": []}

    def partition(self, sources: list[str], targets: list[str], two_way: bool) -> dict[str, Any]:
        self._note("partition", sources, targets, two_way)
        return {"partitions": ["x"]}

    def heal(self) -> dict[str, Any]:
        self._note("heal")
        return {"healed": 1}


@pytest.fixture
def switch() -> Iterator[tuple[Switch, FakeInstance]]:
    sw = Switch(ports=["ns1", "ns2"], name="apitest")
    fake = FakeInstance()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="switch-loop", daemon=True)
    thread.start()
    sw.instance, sw._loop = fake, loop  # type: ignore[assignment]
    try:
        yield sw, fake
    finally:
        sw.instance = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_impair_applies_at_once_and_clears_on_exit(switch: tuple[Switch, FakeInstance]) -> None:
    sw, fake = switch
    with sw.impair("ns1", "out", delay=0.05, loss=0.01) as impaired:
        assert fake.calls == [("set", "ns1", ("out",), Impairment(delay=0.05, loss=0.01))]
        assert impaired.entry["in"]["settings"] == {"delay": 0.05, "loss": 0.01}
    assert fake.calls[-1] == ("clear", "ns1", ("out",))
    assert fake.threads == {"switch-loop"}


def test_impair_without_with_stays(switch: tuple[Switch, FakeInstance]) -> None:
    sw, fake = switch
    sw.impair("ns2", down=True)
    assert fake.calls == [("set", "ns2", ("in", "out"), Impairment(down=True))]
    sw.clear_link("ns2", "in")
    assert fake.calls[-1] == ("clear", "ns2", ("in",))
    assert sw.links() == {"links": [], "partitions": [], "carrier_down": []}


def test_partition_heals_on_exit(switch: tuple[Switch, FakeInstance]) -> None:
    sw, fake = switch
    with sw.partition("ns1,ns2", ["ns3"], two_way=False) as part:
        assert part.partitions == ["x"]
    assert fake.calls == [("partition", ["ns1", "ns2"], ["ns3"], False), ("heal",)]
    assert sw.heal() == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        (("ns1",), {"loss": 1.5}, "loss must be 0% to 100%, not 150%"),
        (("ns1",), {"loss": 0.1, "loss_burst": 0.5}, "loss_burst must be 1 to 1000000 packets, not 0.5"),
        (("ns1",), {"burst": 4000}, "burst and latency shape a rate: give one"),
        (("ns1", "sideways"), {"delay": 0.01}, "direction 'sideways': in, out or both"),
        (("ns1",), {"filter": "tcp prt 1"}, "filter 'tcp prt 1': unexpected 'prt'"),
        (("nosuch",), {"delay": 0.01}, "no port 'nosuch'"),
    ],
)
def test_a_bad_impairment_is_a_value_error(
    switch: tuple[Switch, FakeInstance], args: tuple[str, ...], kwargs: dict[str, Any], why: str
) -> None:
    sw, _ = switch
    with pytest.raises(ValueError) as info:
        sw.impair(*args, **kwargs)
    assert str(info.value) == why


def test_a_partition_needs_ports_on_each_side(switch: tuple[Switch, FakeInstance]) -> None:
    sw, fake = switch
    with pytest.raises(ValueError, match="a partition needs a port on each side"):
        sw.partition("ns1", [])
    assert fake.calls == []


def test_a_stopped_switch_is_not_cleared() -> None:
    sw = Switch(ports=["ns1"], name="apitest")
    with pytest.raises(RuntimeError, match="not running"):
        sw.impair("ns1", delay=0.01)

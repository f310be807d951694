"""--nat6 on the configuration side (issue 17): `none` and `prefix=OUTSIDE/LEN` (NPTv6, RFC 6296), the
uplink's IPv6 addresses in RFC 5180's range, and the one-line error for everything refused; through
build(Request), TOML and the command line alike. (`masquerade`, the default, is tested with its code.)"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from vswitch.cli import main, parse, topology_from_args
from vswitch.config.topology import (
    ConfigError,
    Nat6Spec,
    Request,
    Topology,
    build,
    parse_nat6,
    parse_segment,
    parse_uplink,
    request_from_toml,
)

SUBNET6 = "fd00:80::/52"
OUTSIDE = "2001:2:0:1000::/52"
LAB = ("--segment", "lan=a", "--segment", "dmz=b", "--uplink", "w")  # two segments and an uplink


def net6(text: str) -> IPv6Network:
    return IPv6Network(text)


def cli(*argv: str) -> Topology:
    """The topology `vswitch up ARGV` would run."""
    return topology_from_args(parse(["up", *argv]))


def request(
    nat6: Nat6Spec | None, subnet6: str | None = SUBNET6, uplink: bool = True, **kw: object
) -> Request:
    """LAB as a Request: lan=a, dmz=b, the uplink w, --subnet6 SUBNET6."""
    req = Request(
        segments=[parse_segment("lan=a"), parse_segment("dmz=b")],
        subnet6=None if subnet6 is None else net6(subnet6),
        uplink=parse_uplink("w") if uplink else None,
        nat6=nat6,
    )
    for key, value in kw.items():
        setattr(req, key, value)
    return req


# --- parse_nat6 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("none", Nat6Spec("none")),
        (" none ", Nat6Spec("none")),
        (f"prefix={OUTSIDE}", Nat6Spec("prefix", net6(OUTSIDE))),
        ("prefix = 2001:2:0:1000::/52", Nat6Spec("prefix", net6(OUTSIDE))),
        ("prefix=2001:2::/48", Nat6Spec("prefix", net6("2001:2::/48"))),
        ("prefix=fd99:1:2:3::/64", Nat6Spec("prefix", net6("fd99:1:2:3::/64"))),  # a ULA may be the outside
    ],
)
def test_parse_nat6_takes_none_and_an_outside_prefix(text: str, spec: Nat6Spec) -> None:
    assert parse_nat6(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nat", r"--nat6 'nat': expected one of masquerade, none, prefix=OUTSIDE/LEN"),
        ("", r"expected one of masquerade, none, prefix=OUTSIDE/LEN"),
        ("prefix", r"--nat6 'prefix': expected one of"),
        ("subnet=2001:2::/48", r"expected one of"),
        ("prefix=", r"'' is not an IPv6 prefix with its host bits 0"),
        ("prefix=2001:2:0:1000::1/52", r"'2001:2:0:1000::1/52' is not an IPv6 prefix with its host bits 0"),
        ("prefix=198.18.0.0/15", r"'198.18.0.0/15' is not an IPv6 prefix"),
        ("prefix=2001:2::/65", r"the outside prefix must be a global or ULA /64 or shorter"),
        ("prefix=ff0e::/16", r"the outside prefix must be a global or ULA"),
        ("prefix=fe80::/64", r"the outside prefix must be a global or ULA"),
    ],
)
def test_a_bad_nat6_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_nat6(text)
    assert "\n" not in str(raised.value)


# --- what build() makes of it --------------------------------------------------------------------------
def test_none_keeps_the_subnet6_and_gives_the_uplink_its_rfc5180_addresses() -> None:
    topo = cli(*LAB, "--subnet6", SUBNET6, "--nat6", "none")
    assert topo.nat6 == Nat6Spec("none")
    assert topo.subnet6 == net6(SUBNET6)
    assert [str(s.subnet6) for s in topo.segments] == ["fd00:80::/64", "fd00:80:0:1::/64"]
    assert topo.uplink is not None
    assert (topo.uplink.address6, topo.uplink.upstream6) == (
        IPv6Interface("2001:2::2/64"),
        IPv6Address("2001:2::1"),
    )
    assert topo.uplink.address6.network.subnet_of(net6("2001:2::/48")), "RFC 5180's benchmarking range"


def test_none_does_not_need_a_subnet6_segments_with_their_own_64_will_do() -> None:
    """Routed as it is: any inside prefix can be routed back to, the pool is not needed."""
    topo = cli(
        "--segment",
        "lan=a@fd00:1::/64",
        "--segment",
        "dmz=b@10.9.0.0/24,fd00:2::/64",
        "--uplink",
        "w",
        "--nat6",
        "none",
    )
    assert topo.nat6 == Nat6Spec("none") and topo.subnet6 is None
    assert [str(s.subnet6) for s in topo.segments] == ["fd00:1::/64", "fd00:2::/64"]


def test_prefix_maps_the_subnet6_to_an_outside_prefix_of_the_same_length() -> None:
    topo = cli(*LAB, "--subnet6", SUBNET6, "--nat6", f"prefix={OUTSIDE}")
    assert topo.nat6 == Nat6Spec("prefix", net6(OUTSIDE))
    assert topo.subnet6 == net6(SUBNET6), "NPTv6's inside prefix"
    assert build(request(Nat6Spec("prefix", net6(OUTSIDE)))) == topo


@pytest.mark.parametrize(
    ("subnet6", "outside"),
    [
        ("fd00:80::/48", "2001:2:77::/48"),
        ("fd00:80:0:10::/60", "2001:2:0:ff0::/60"),
        ("fd00:80::/56", "fd99::/56"),
    ],
)
def test_prefix_takes_any_length_the_router_cuts_into_64s(subnet6: str, outside: str) -> None:
    topo = build(request(Nat6Spec("prefix", net6(outside)), subnet6=subnet6))
    assert topo.nat6 is not None and topo.nat6.prefix == net6(outside) and topo.subnet6 == net6(subnet6)


def test_without_an_uplink_or_ipv6_there_is_no_nat6() -> None:
    assert cli("--segment", "lan=a", "--subnet6", SUBNET6).nat6 is None
    assert cli(*LAB).nat6 is None
    assert cli("--ports", "a,b", "--subnet6", "fd00:10::/48").nat6 is None


# --- refused, in one line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--segment", "lan=a", "--subnet6", SUBNET6, "--nat6", "none"],
            r"^--nat6 needs an --uplink \(IPv6 leaves by it\)$",
        ),
        (["--ports", "a,b", "--subnet6", "fd00:10::/48", "--nat6", "none"], r"^--nat6 needs an --uplink"),
        ([*LAB, "--nat6", "none"], r"^--nat6 needs IPv6 on the segments \(--subnet6\)$"),
        ([*LAB, "--nat6", f"prefix={OUTSIDE}"], r"^--nat6 needs IPv6 on the segments"),
        (
            [*LAB, "--subnet6", SUBNET6, "--nat6", "prefix=2001:2::/48"],
            r"^--nat6 prefix=2001:2::/48: NPTv6 maps a prefix to one of the same length, and the inside "
            r"one, fd00:80::/52, is a /52 \(RFC 6296 3\.1\)$",
        ),
        (
            [*LAB, "--subnet6", SUBNET6, "--nat6", "prefix=2001:2:0:1000::/56"],
            r"NPTv6 maps a prefix to one of the same length.* is a /52",
        ),
        (
            [*LAB, "--subnet6", SUBNET6, "--nat6", f"prefix={SUBNET6}"],
            r"^--nat6 prefix=fd00:80::/52 overlaps the inside prefix or the uplink's$",
        ),
        (
            [*LAB, "--subnet6", "fd00:80::/48", "--nat6", "prefix=fd00:80::/48"],
            r"^--nat6 prefix=fd00:80::/48 overlaps the inside prefix",
        ),
        (
            [
                *LAB,
                "--subnet6",
                "fd00:80::/52",
                "--nat6",
                "prefix=2001:2::/52",
            ],  # holds 2001:2::/64, the uplink's
            r"^--nat6 prefix=2001:2::/52 overlaps the inside prefix or the uplink's$",
        ),
        (
            ["--segment", "lan=a@fd00:1::/64", "--uplink", "w", "--nat6", f"prefix={OUTSIDE}"],
            r"^--nat6 prefix= translates the --subnet6 prefix: "
            r"give --subnet6 and no segment a /64 of its own$",
        ),
        (
            [
                *LAB[:2],
                "--segment",
                "dmz=b@fd00:80:0:5::/64",
                *LAB[4:],
                "--subnet6",
                SUBNET6,
                "--nat6",
                f"prefix={OUTSIDE}",
            ],
            r"^--nat6 prefix= translates the --subnet6 prefix",
        ),
        (
            [*LAB, "--subnet6", SUBNET6, "--nat6", "prefix=2001:2::1/52"],
            r"is not an IPv6 prefix with its host bits 0",
        ),
    ],
)
def test_a_nat6_that_cannot_work_is_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        cli(*argv)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "argv",
    [
        [*LAB, "--subnet6", "2001:2::/48", "--nat6", "none"],
        [*LAB, "--subnet6", "2001:2::/60", "--nat6", "prefix=2001:2:1::/60"],
        [
            "--segment",
            "lan=a@2001:2::/64",
            "--segment",
            "dmz=b@fd00:2::/64",
            "--uplink",
            "w",
            "--nat6",
            "none",
        ],
    ],
)
def test_a_segment_given_the_uplinks_64_is_one_line(argv: list[str]) -> None:
    """The uplink is 2001:2::2/64: a segment there would put one /64 on two of the router's interfaces."""
    with pytest.raises(
        ConfigError, match=r"^segment lan: IPv6 prefix 2001:2::/64 is the uplink's, 2001:2::/64$"
    ):
        cli(*argv)


def test_the_rules_hold_for_a_request_built_by_hand() -> None:
    with pytest.raises(ConfigError, match="needs an --uplink"):
        build(request(Nat6Spec("none"), uplink=False))
    with pytest.raises(ConfigError, match="needs IPv6 on the segments"):
        build(request(Nat6Spec("none"), subnet6=None))
    with pytest.raises(ConfigError, match="translates the --subnet6 prefix"):
        build(request(Nat6Spec("prefix", net6(OUTSIDE)), segment_subnet6={"lan": net6("fd00:80:0:9::/64")}))


# --- TOML ------------------------------------------------------------------------------------------------
TOML = (
    'uplink = "w"\nsubnet6 = "fd00:80::/52"\nnat6 = "{nat6}"\n'
    '[[segment]]\nname = "lan"\nports = ["a"]\n[[segment]]\nname = "dmz"\nports = ["b"]\n'
)


@pytest.mark.parametrize("nat6", ["none", f"prefix={OUTSIDE}"])
def test_toml_nat6_equals_the_command_line(nat6: str) -> None:
    from_file = build(request_from_toml(TOML.format(nat6=nat6)))
    assert from_file == cli(*LAB, "--subnet6", SUBNET6, "--nat6", nat6)
    assert from_file.nat6 == parse_nat6(nat6)


def test_the_command_line_overrides_the_files_nat6(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(TOML.format(nat6="none"))
    topo = cli("--config", str(config), "--nat6", f"prefix={OUTSIDE}")
    assert topo.nat6 == Nat6Spec("prefix", net6(OUTSIDE))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("nat6 = 6", r"^nat6 must be a string$"),
        ('nat6 = "prefix=2001:2::/48"', r"NPTv6 maps a prefix to one of the same length"),
        ('nat6 = "stateless"', r"expected one of masquerade, none, prefix=OUTSIDE/LEN"),
    ],
)
def test_toml_nat6_mistakes_are_one_line(line: str, message: str) -> None:
    text = TOML.replace('nat6 = "{nat6}"', line)
    with pytest.raises(ConfigError, match=message):
        build(request_from_toml(text))


def test_toml_nat6_without_an_uplink_is_refused() -> None:
    text = 'subnet6 = "fd00:80::/52"\nnat6 = "none"\n[[segment]]\nname = "lan"\nports = ["a"]\n'
    with pytest.raises(ConfigError, match="--nat6 needs an --uplink"):
        build(request_from_toml(text))


# --- the command line ------------------------------------------------------------------------------------
def test_help_shows_nat6(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--nat6 MODE" in text
    assert "masquerade (default), none" in text and "prefix=OUTSIDE/LEN (NPTv6, RFC 6296)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*LAB, "--subnet6", SUBNET6, "--nat6", "bogus"], "--nat6 'bogus': expected one of"),
        (
            [*LAB, "--subnet6", SUBNET6, "--nat6", "prefix=2001:2::/48"],
            "NPTv6 maps a prefix to one of the same",
        ),
        (["--segment", "lan=a", "--subnet6", SUBNET6, "--nat6", "none"], "--nat6 needs an --uplink"),
    ],
)
def test_vswitch_up_refuses_with_one_error_line_and_status_2_before_touching_anything(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The configuration is read before the root check and before any namespace exists."""
    with pytest.raises(SystemExit) as exit_info:
        main(["up", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("vswitch: error: ") and message in err[0], err

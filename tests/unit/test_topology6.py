"""IPv6 on the configuration side (issue 16): the /64 each routed segment gets (its own, or the next of
--subnet6), the router's ::1 on it, hosts left to SLAAC, the 1280-byte floor, IPv6 static routes, and
the one-line error for everything refused; through build(Request), TOML and the command line alike."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from vswitch.cli import parse, topology_from_args
from vswitch.config.topology import (
    ConfigError,
    Request,
    RouteSpec,
    SegmentSpec,
    Topology,
    build,
    parse_ports,
    parse_route,
    parse_segment,
    parse_segment6,
    parse_uplink,
    request_from_toml,
    underlay_mtu_check,
)

LOCAL, REMOTE = "198.18.5.1", "198.18.5.2"


def net6(text: str) -> IPv6Network:
    return IPv6Network(text)


def cli(*argv: str) -> Topology:
    """The topology `vswitch up ARGV` would run."""
    return topology_from_args(parse(["up", *argv]))


def sixes(topo: Topology) -> dict[str, tuple[str | None, str | None]]:
    """Each segment's (subnet6, gateway6), as text."""
    return {
        s.name: (str(s.subnet6) if s.subnet6 else None, str(s.gateway6) if s.gateway6 else None)
        for s in topo.segments
    }


# --- routed: a /64 per segment from --subnet6, the router at ::1, hosts by SLAAC -------------------
def test_routed_subnet6_gives_each_segment_the_next_64_in_order_and_the_router_its_1() -> None:
    topo = build(
        Request(
            segments=[parse_segment("lan=a,b"), parse_segment("dmz=c"), parse_segment("web=d")],
            subnet6=net6("fd00:1::/48"),
            host=True,
        )
    )
    assert sixes(topo) == {
        "lan": ("fd00:1::/64", "fd00:1::1/64"),
        "dmz": ("fd00:1:0:1::/64", "fd00:1:0:1::1/64"),
        "web": ("fd00:1:0:2::/64", "fd00:1:0:2::1/64"),
    }
    # The hosts autoconfigure from the router's advertisements; the host port never gets IPv6 here.
    assert {p.label: p.address6 for p in topo.ports} == {
        "a": None,
        "b": None,
        "c": None,
        "d": None,
        "host": None,
    }
    # IPv4 is as it was: subnets 10.N.0.0/24, the router at .1.
    assert [str(s.gateway) for s in topo.segments] == ["10.1.0.1/24", "10.2.0.1/24", "10.3.0.1/24"]


@pytest.mark.parametrize(
    ("prefix", "first", "last"),
    [
        ("2001:db8:7::/48", "2001:db8:7::/64", "2001:db8:7:1::/64"),
        ("fd00:1:0:10::/60", "fd00:1:0:10::/64", "fd00:1:0:11::/64"),
        ("fd00:1:0:10::5/56", "fd00:1::/64", "fd00:1:0:1::/64"),  # host bits dropped, as --subnet does
    ],
)
def test_routed_subnet6_of_48_to_60_is_cut_into_64s(prefix: str, first: str, last: str) -> None:
    topo = cli("--segment", "lan=a", "--segment", "dmz=b", "--subnet6", prefix)
    assert [str(s.subnet6) for s in topo.segments] == [first, last]


def test_a_64_is_enough_for_a_router_with_one_segment() -> None:
    alone = cli("--segment", "lan=a,b", "--subnet6", "fd00:5::/64")
    assert sixes(alone) == {"lan": ("fd00:5::/64", "fd00:5::1/64")}
    # --ports with an --uplink is routed too: its one segment, lan, takes the /64.
    uplinked = cli("--ports", "a,b", "--uplink", "w", "--subnet6", "fd00:5::/64")
    assert uplinked.routed and sixes(uplinked) == {"lan": ("fd00:5::/64", "fd00:5::1/64")}
    assert all(p.address6 is None for p in uplinked.ports)


@pytest.mark.parametrize(
    ("prefix", "segments"),
    [
        ("fd00::/47", 2),
        ("fd00::/61", 2),
        ("fd00::/62", 1),
        ("fd00::/63", 2),
        ("fd00::/64", 2),  # one /64 cannot be two segments'
        ("fd00::/65", 1),
        ("fd00::/120", 1),
    ],
)
def test_a_routed_subnet6_that_is_not_48_to_60_is_one_line(prefix: str, segments: int) -> None:
    argv = [a for n in range(segments) for a in ("--segment", f"s{n}=n{n}")]
    with pytest.raises(ConfigError, match=r"a router needs a /48 to /60 .* with one segment\)$") as error:
        cli(*argv, "--subnet6", prefix)
    assert "\n" not in str(error.value)


def test_a_60_has_16_segments_and_not_17() -> None:
    names = [f"s{n}" for n in range(17)]
    argv = [a for n in names for a in ("--segment", f"{n}=n{n}")]
    with pytest.raises(ConfigError, match="fd00:1:0:10::/60 has no /64 left for segment s16"):
        cli(*argv, "--subnet6", "fd00:1:0:10::/60")
    topo = cli(*argv[:-2], "--subnet6", "fd00:1:0:10::/60")
    assert [str(s.subnet6) for s in topo.segments][-1] == "fd00:1:0:1f::/64"


# --- a segment's own /64 ---------------------------------------------------------------------------
def test_parse_segment6_takes_the_ipv6_prefix_after_the_at_alone_or_after_the_subnet() -> None:
    assert parse_segment6("lan=a,b@10.1.0.0/24,fd00:1:0:1::/64") == (
        "lan",
        parse_ports("a,b"),
        IPv4Network("10.1.0.0/24"),
        net6("fd00:1:0:1::/64"),
    )
    assert parse_segment6("lan=a:veth1@fd00:1:0:1::/64") == (
        "lan",
        parse_ports("a:veth1"),
        None,
        net6("fd00:1:0:1::/64"),
    )
    assert parse_segment6("lan=a:veth1,b@10.1.0.0/24") == (*parse_segment("lan=a:veth1,b@10.1.0.0/24"), None)
    assert parse_segment6("lan=a:veth1,b") == (*parse_segment("lan=a:veth1,b"), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lan=a@fe80::/64", "--segment lan: IPv6 subnet 'fe80::/64': give a global or unique-local"),
        ("lan=a@10.1.0.0/24,ff02::/64", "--segment lan: IPv6 subnet 'ff02::/64'"),
        ("lan=a@10.1.0.0/24,fd00::zz/64", "--segment lan: invalid IPv6 subnet 'fd00::zz/64'"),
        ("lan=a@10.1.0.0/33,fd00::/64", "invalid subnet '10.1.0.0/33'"),
        ("=a@fd00::/64", r"expected NAME=ns1,ns2\[@SUBNET\]\[,IPV6/64\]"),
    ],
)
def test_a_bad_segment_prefix_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_segment6(text)


def test_own_prefixes_are_kept_and_the_rest_of_subnet6_skips_them() -> None:
    topo = cli(
        "--segment",
        "lan=a@fd00:1::/64",  # the first /64 of the pool: named, so skipped for the others
        "--segment",
        "dmz=b",
        "--segment",
        "lab=c@10.7.0.0/24,fd00:99:0:7::/64",  # outside the pool
        "--segment",
        "web=d",
        "--subnet6",
        "fd00:1::/48",
    )
    assert sixes(topo) == {
        "lan": ("fd00:1::/64", "fd00:1::1/64"),
        "dmz": ("fd00:1:0:1::/64", "fd00:1:0:1::1/64"),
        "lab": ("fd00:99:0:7::/64", "fd00:99:0:7::1/64"),
        "web": ("fd00:1:0:2::/64", "fd00:1:0:2::1/64"),
    }
    assert [str(s.subnet) for s in topo.segments] == [
        "10.1.0.0/24",
        "10.2.0.0/24",
        "10.7.0.0/24",
        "10.3.0.0/24",
    ]
    assert all(p.address6 is None for p in topo.ports)


def test_without_subnet6_only_segments_with_their_own_prefix_have_ipv6() -> None:
    topo = cli("--segment", "lan=a@fd00:1:0:1::/64", "--segment", "dmz=b")
    assert sixes(topo) == {"lan": ("fd00:1:0:1::/64", "fd00:1:0:1::1/64"), "dmz": (None, None)}


def test_a_segment_may_name_the_only_64_of_the_pool_for_itself() -> None:
    """No other segment needs one, so the /64 pool is not asked for a second."""
    topo = cli("--segment", "lan=a@fd00:5::/64", "--subnet6", "fd00:5::/64")
    assert sixes(topo) == {"lan": ("fd00:5::/64", "fd00:5::1/64")}


@pytest.mark.parametrize("prefix", ["fd00:1::/56", "fd00:1::/63", "fd00:1::/65", "fd00:1::/120"])
def test_a_segments_own_prefix_must_be_a_64(prefix: str) -> None:
    with pytest.raises(ConfigError, match=rf"segment lan: IPv6 prefix {prefix} must be a /64.*RFC 4862"):
        cli("--segment", f"lan=a@{prefix}")
    with pytest.raises(ConfigError, match=rf"segment lan: IPv6 prefix {prefix} must be a /64"):
        build(Request(segments=[parse_segment("lan=a")], segment_subnet6={"lan": net6(prefix)}))


@pytest.mark.parametrize(
    "argv",
    [
        ["--segment", "lan=a@fd00:1:0:1::/64", "--segment", "dmz=b@10.9.0.0/24,fd00:1:0:1::/64"],
        # Inside the routed --subnet6, and named by both: the pool's skipping does not hide it.
        ["--segment", "lan=a@fd00:1::/64", "--segment", "dmz=b@fd00:1::/64", "--subnet6", "fd00:1::/48"],
    ],
)
def test_two_segments_with_one_64_is_one_line(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"subnets fd00:1:\S*/64 and fd00:1:\S*/64 overlap"):
        cli(*argv)


def test_own_prefixes_on_a_switched_topology_or_an_unknown_segment_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"own IPv6 prefix needs a router \(--segment or --uplink\)"):
        build(Request(ports=parse_ports("a,b"), segment_subnet6={"lan": net6("fd00:1::/64")}))
    with pytest.raises(ConfigError, match="IPv6 prefix for segment 'dmz': there is no such segment"):
        build(Request(segments=[parse_segment("lan=a")], segment_subnet6={"dmz": net6("fd00:1::/64")}))


def test_add_segment_files_the_prefix_under_the_segments_name() -> None:
    req = Request()
    req.add_segment(*parse_segment6("lan=a@fd00:1::/64"))
    req.add_segment(*parse_segment6("dmz=b"))
    assert req.segments == [parse_segment("lan=a"), parse_segment("dmz=b")]
    assert req.segment_subnet6 == {"lan": net6("fd00:1::/64")}


# --- TOML ------------------------------------------------------------------------------------------
def test_toml_subnet6_top_level_and_per_segment_equal_the_command_line() -> None:
    text = (
        'subnet6 = "fd00:1::/48"\nuplink = "w"\n'
        '[[segment]]\nname = "lan"\nports = ["a", "b"]\nsubnet6 = "fd00:1::/64"\n'
        '[[segment]]\nname = "dmz"\nports = ["c"]\nsubnet = "10.9.0.0/24"\n'
        '[[segment]]\nname = "lab"\nports = ["d"]\nsubnet = "10.7.0.0/24"\nsubnet6 = "fd00:99::/64"\n'
    )
    from_file = build(request_from_toml(text))
    from_cli = cli(
        "--subnet6",
        "fd00:1::/48",
        "--uplink",
        "w",
        "--segment",
        "lan=a,b@fd00:1::/64",
        "--segment",
        "dmz=c@10.9.0.0/24",
        "--segment",
        "lab=d@10.7.0.0/24,fd00:99::/64",
    )
    assert from_file == from_cli
    assert sixes(from_file) == {
        "lan": ("fd00:1::/64", "fd00:1::1/64"),
        "dmz": ("fd00:1:0:1::/64", "fd00:1:0:1::1/64"),
        "lab": ("fd00:99::/64", "fd00:99::1/64"),
    }


def test_a_config_file_and_the_command_line_add_up(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text('[[segment]]\nname = "lan"\nports = ["a"]\nsubnet6 = "fd00:1:0:9::/64"\n')
    topo = cli("--config", str(config), "--segment", "dmz=b", "--subnet6", "fd00:1::/48")
    assert sixes(topo) == {
        "lan": ("fd00:1:0:9::/64", "fd00:1:0:9::1/64"),
        "dmz": ("fd00:1::/64", "fd00:1::1/64"),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[segment]]\nname = "lan"\nports = ["a"]\nsubnet6 = 64\n', "subnet6 must be a string"),
        ('[[segment]]\nname = "lan"\nports = ["a"]\nsubnet6 = "fe80::/64"\n', "IPv6 subnet 'fe80::/64'"),
        ('[[segment]]\nname = "lan"\nports = ["a"]\nsubnet6 = "fd00:1::/56"\n', "must be a /64"),
        ('subnet6 = "fd00::/62"\n[[segment]]\nname = "lan"\nports = ["a"]\n', "a router needs a /48 to /60"),
        ('route = ["fd00:9::/48=via fe80::1"]\n[[segment]]\nname = "lan"\nports = ["a"]\n', "global address"),
    ],
)
def test_toml_ipv6_mistakes_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(request_from_toml(text))


# --- switched: --subnet6 as it always was ----------------------------------------------------------
def test_switched_subnet6_keeps_its_static_numbering_and_has_no_gateway() -> None:
    for topo in (
        cli("--ports", "a,b", "--subnet6", "fd00:10::/48", "--host"),
        build(request_from_toml('ports = ["a", "b"]\nsubnet6 = "fd00:10::/48"\nhost = true\n')),
    ):
        assert not topo.routed
        assert sixes(topo) == {"lan": ("fd00:10::/48", None)}
        assert {p.label: str(p.address6) for p in topo.ports} == {
            "a": "fd00:10::1/48",
            "b": "fd00:10::2/48",
            "host": "None",
        }


# --- the 1280-byte floor (RFC 8200 section 5) ------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["--segment", "lan=a", "--segment", "dmz=b", "--subnet6", "fd00:1::/48", "--mtu", "dmz=1279"],
        ["--segment", "lan=a", "--segment", "dmz=b@fd00:1::/64", "--mtu", "1000"],  # lan has no IPv6
        ["--ports", "a,b", "--subnet6", "fd00:10::/64", "--mtu", "1279"],  # switched (as lan)
    ],
)
def test_a_segment_with_ipv6_refuses_an_mtu_below_1280_naming_it(argv: list[str]) -> None:
    segment = "dmz" if "--segment" in argv else "lan"
    with pytest.raises(
        ConfigError, match=rf"^segment {segment}: mtu 1\d\d\d is below 1280.*RFC 8200 section 5\)$"
    ):
        cli(*argv)


def test_1280_is_enough_and_a_segment_without_ipv6_may_go_lower() -> None:
    topo = cli("--segment", "lan=a", "--segment", "dmz=b@fd00:1::/64", "--mtu", "1000", "--mtu", "dmz=1280")
    assert {s.name: s.mtu for s in topo.segments} == {"lan": 1000, "dmz": 1280}
    assert cli("--ports", "a", "--subnet6", "fd00:10::/64", "--mtu", "1280").segments[0].mtu == 1280
    assert cli("--ports", "a", "--mtu", "576").segments[0].mtu == 576


def tunnel_segment(segment: str, *argv: str) -> SegmentSpec:
    return cli("--segment", segment, "--vxlan", f"lan=1,local={LOCAL},remote={REMOTE}", *argv).segments[0]


def test_a_tunnel_segment_with_ipv6_needs_an_underlay_leaving_1280() -> None:
    """VXLAN takes 50 bytes: an underlay of 1329 leaves 1279 inside, too little for IPv6."""
    with_ipv6 = tunnel_segment("lan=a@fd00:1::/64")
    with pytest.raises(ConfigError, match=r"segment lan: the underlay's MTU 1329 leaves 1279 .*below 1280"):
        underlay_mtu_check(with_ipv6, 1329)
    assert underlay_mtu_check(with_ipv6, 1330) == 1280
    assert underlay_mtu_check(tunnel_segment("lan=a"), 1329) == 1279  # IPv4 only: 68 is its floor
    assert underlay_mtu_check(tunnel_segment("lan=a", "--subnet6", "fd00:1::/64"), 1500) == 1450


def test_a_tunnel_segment_with_ipv6_and_a_given_mtu() -> None:
    given = tunnel_segment("lan=a@fd00:1::/64", "--mtu", "1280")
    assert underlay_mtu_check(given, 1330) == 1280
    with pytest.raises(ConfigError, match="mtu 1280 does not fit the VXLAN tunnel, whose inner MTU is 1279"):
        underlay_mtu_check(given, 1329)
    with pytest.raises(ConfigError, match="segment lan: mtu 1279 is below 1280"):
        tunnel_segment("lan=a@fd00:1::/64", "--mtu", "1279")


# --- static routes, IPv6 too -----------------------------------------------------------------------
def test_parse_route_takes_either_family() -> None:
    assert parse_route("fd00:9::/48=via fd00:1::fe") == RouteSpec(
        net6("fd00:9::/48"), IPv6Address("fd00:1::fe")
    )
    assert parse_route("::/0=fd00:1::fe") == RouteSpec(net6("::/0"), IPv6Address("fd00:1::fe"))
    assert parse_route("10.9.0.0/16=via 10.1.0.254") == RouteSpec(
        IPv4Network("10.9.0.0/16"), IPv4Address("10.1.0.254")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.9.0.0/16=via fd00:1::fe", "route 10.9.0.0/16 via fd00:1::fe: the gateway must be IPv4"),
        ("fd00:9::/48=via 10.1.0.254", "route fd00:9::/48 via 10.1.0.254: the gateway must be IPv6"),
        ("fd00:9::/48=via fe80::1", "the gateway is link-local; give the gateway's global address"),
        ("fd00:9::zz/48=via fd00:1::fe", "invalid route prefix 'fd00:9::zz/48'"),
        ("fd00:9::/48=via fd00:1::zz", "invalid route gateway 'fd00:1::zz'"),
    ],
)
def test_a_bad_route_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_route(text)


def test_an_ipv6_route_via_a_gateway_on_a_segment() -> None:
    topo = cli(
        "--segment",
        "lan=a@fd00:1::/64",
        "--route",
        "fd00:9::/48=via fd00:1::fe",
        "--route",
        "::/0=via fd00:1::1:2",
        "--route",
        "10.9.0.0/16=via 10.1.0.254",
    )
    assert topo.routes == [
        RouteSpec(net6("fd00:9::/48"), IPv6Address("fd00:1::fe")),
        RouteSpec(net6("::/0"), IPv6Address("fd00:1::1:2")),
        RouteSpec(IPv4Network("10.9.0.0/16"), IPv4Address("10.1.0.254")),
    ]
    from_toml = build(
        request_from_toml(
            'route = ["fd00:9::/48=via fd00:1:0:1::fe"]\nsubnet6 = "fd00:1::/48"\n'
            '[[segment]]\nname = "lan"\nports = ["a"]\n[[segment]]\nname = "dmz"\nports = ["b"]\n'
        )
    )
    assert from_toml.routes == [RouteSpec(net6("fd00:9::/48"), IPv6Address("fd00:1:0:1::fe"))]


@pytest.mark.parametrize(
    "argv",
    [
        ["--segment", "lan=a@fd00:1::/64", "--route", "fd00:9::/48=via fd00:2::fe"],
        ["--segment", "lan=a", "--route", "fd00:9::/48=via fd00:1::fe"],  # no segment has IPv6
        ["--segment", "lan=a", "--uplink", "w", "--subnet6", "fd00:1::/48", "--route", "::/0=via fd00:2::1"],
    ],
)
def test_an_ipv6_gateway_on_no_segment_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="the gateway is on no segment"):
        cli(*argv)


def test_a_route_spec_of_mixed_families_does_not_pass_for_a_connected_gateway() -> None:
    """Built by hand, not parsed: the gateway is looked for among the prefix's family's networks only."""
    mixed = RouteSpec(IPv4Network("10.9.0.0/16"), IPv6Address("fd00:1::fe"))
    with pytest.raises(ConfigError, match="the gateway is on no segment"):
        build(
            Request(
                segments=[parse_segment("lan=a")],
                segment_subnet6={"lan": net6("fd00:1::/64")},
                routes=[mixed],
            )
        )


def test_ipv6_routes_still_need_a_router() -> None:
    with pytest.raises(ConfigError, match="--route needs a routed topology"):
        cli("--ports", "a", "--subnet6", "fd00:1::/64", "--route", "fd00:9::/48=via fd00:1::fe")


# --- the uplink stays IPv4 -------------------------------------------------------------------------
def test_the_uplink_is_ipv4_only() -> None:
    with pytest.raises(ConfigError, match="invalid uplink address 'fd00:ff::2/64'"):
        parse_uplink("w=fd00:ff::2/64")
    topo = cli("--segment", "lan=a", "--uplink", "w", "--subnet6", "fd00:1::/48")
    assert topo.uplink is not None and topo.uplink.address.version == 4
    assert [str(s.subnet6) for s in topo.segments] == ["fd00:1::/64"]  # wan is not a segment: no /64


# --- the help texts --------------------------------------------------------------------------------
def test_help_shows_the_ipv6_grammar(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NAME=NS,NS[@SUBNET][,IPV6/64]" in text
    assert "a /48-/60 (routed: a /64 per segment, by SLAAC) or the switched segment's prefix" in text
    assert "a static route, IPv4 or IPv6" in text


def test_one_segment_answers_ipv6_questions_by_its_own_interface() -> None:
    """gateway6 is an interface on subnet6: the router's address and the /64 it advertises."""
    (lan,) = cli("--segment", "lan=a", "--subnet6", "fd00:1::/48").segments
    assert lan.gateway6 == IPv6Interface("fd00:1::1/64") and lan.gateway6.network == lan.subnet6

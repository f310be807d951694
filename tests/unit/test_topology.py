"""The command line and TOML file resolved to a Topology: addresses, gateways, and one-line errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from vswitch.config.topology import (
    ConfigError,
    Request,
    build,
    parse_forward,
    parse_mtu,
    parse_port,
    parse_ports,
    parse_route,
    parse_segment,
    parse_uplink,
    request_from_toml,
)


def test_ports_shorthand_numbers_hosts_from_one() -> None:
    topo = build(Request(ports=parse_ports("a,b,c")))
    assert not topo.routed
    assert [str(p.address) for p in topo.ports] == ["10.0.0.1/24", "10.0.0.2/24", "10.0.0.3/24"]


def test_port_overrides_keep_their_address_and_others_skip_it() -> None:
    topo = build(Request(ports=parse_ports("a,b:veth7=10.0.0.1/24,c")))
    assert [(p.namespace, p.ifname, str(p.address)) for p in topo.ports] == [
        ("a", "eth0", "10.0.0.2/24"),
        ("b", "veth7", "10.0.0.1/24"),
        ("c", "eth0", "10.0.0.3/24"),
    ]


def test_routed_segments_get_free_subnets_gateways_and_hosts_from_two() -> None:
    topo = build(
        Request(
            segments=[parse_segment("lan=a,b"), parse_segment("dmz=c@10.9.0.0/24")],
            uplink=parse_uplink("w"),
        )
    )
    lan, dmz = topo.segments
    assert (lan.subnet, lan.gateway) == (IPv4Network("10.1.0.0/24"), IPv4Interface("10.1.0.1/24"))
    assert (dmz.subnet, dmz.gateway) == (IPv4Network("10.9.0.0/24"), IPv4Interface("10.9.0.1/24"))
    assert [str(p.address) for p in lan.ports] == ["10.1.0.2/24", "10.1.0.3/24"]
    assert topo.uplink is not None and topo.uplink.upstream == IPv4Address("198.18.0.1")


def test_host_port_takes_the_next_free_address_and_the_instance_name() -> None:
    topo = build(Request(name="lab", ports=parse_ports("a,b"), host=True))
    host = topo.port("host")
    assert host is not None and host.namespace is None
    assert (host.ifname, str(host.address)) == ("vs-lab", "10.0.0.3/24")


def test_uplink_options() -> None:
    up = parse_uplink("w=198.19.0.2/24,via=198.19.0.254")
    assert (str(up.address), str(up.upstream)) == ("198.19.0.2/24", "198.19.0.254")
    with pytest.raises(ConfigError, match="another address"):
        parse_uplink("w=198.19.0.2/24,via=10.0.0.1")


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_forward, "tcp:8080=ns3", "PROTO:PORT=NS:PORT"),
        (parse_forward, "sctp:1=ns:2", "PROTO:PORT=NS:PORT"),
        (parse_forward, "tcp:0=ns:80", "outside 1-65535"),
        (parse_route, "10.9.0.0/16", "PREFIX=via GATEWAY"),
        (parse_route, "10.9.0.0/16=via nowhere", "invalid route gateway"),
        (parse_port, "bad/name", "invalid namespace name"),
        (parse_port, "ns:eth0=10.0.0.1", "needs a prefix length"),
        (parse_segment, "=a,b", "NAME=ns1,ns2"),
        (parse_mtu, "jumbo", "expected N or SEGMENT=N"),
        (parse_mtu, "dmz=", "expected N or SEGMENT=N"),
        (parse_mtu, "d/z=1280", "expected N or SEGMENT=N"),
        (parse_mtu, "67", "68 to 65000"),
        (parse_mtu, "1_500", "expected N or SEGMENT=N"),
        (parse_mtu, "+1500", "expected N or SEGMENT=N"),
        (parse_mtu, "lan=65001", "68 to 65000"),
    ],
)
def test_bad_values_are_one_sentence(parse: object, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request(ports=parse_ports("a,b"), segments=[parse_segment("x=c")]), "not both"),
        (Request(ports=parse_ports("a,b,c"), subnet=IPv4Network("10.0.0.0/30")), "too small"),
        (Request(segments=[parse_segment("x=a@10.1.0.0/24"), parse_segment("y=b@10.1.0.0/25")]), "overlap"),
        (Request(segments=[parse_segment("x=a"), parse_segment("x=b")]), "must differ"),
        (Request(segments=[parse_segment("x=a,a")]), "listed twice"),
        (Request(ports=parse_ports("a"), forwards=[parse_forward("tcp:80=a:80")]), "needs an --uplink"),
        (Request(ports=parse_ports("a"), routes=[parse_route("10.9.0.0/16=via 10.0.0.9")]), "routed"),
        (Request(), "nothing to connect"),
        (Request(ports=parse_ports("a"), flow_cache=-1), "flow-cache must be between 0"),
        (Request(ports=parse_ports("a"), flow_cache=2_000_000), "flow-cache must be between 0"),
        (Request(segments=[parse_segment("x=a")], segment_mtu={"dmz": 1280}), "no such segment"),
        (Request(segments=[parse_segment("x=a")], segment_mtu={"wan": 1280}), "no such segment"),
        (
            Request(segments=[parse_segment("x=a")], routes=[parse_route("10.9.0.0/16=via 10.55.0.1")]),
            "on no segment",
        ),
    ],
)
def test_inconsistent_requests_are_refused(request_: Request, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(request_)


def test_toml_top_level_key_after_a_segment_header_is_caught() -> None:
    text = '[[segment]]\nname = "lan"\nports = ["a"]\nuplink = "w"\n'
    with pytest.raises(ConfigError, match="top-level keys go before"):
        request_from_toml(text)


def test_toml_equals_the_command_line() -> None:
    text = (
        'name = "lab"\nuplink = "w"\nforward = ["tcp:8080=c:80"]\n'
        '[[segment]]\nname = "lan"\nports = ["a", "b"]\n[[segment]]\nname = "dmz"\nports = ["c"]\n'
    )
    from_file = build(request_from_toml(text))
    from_cli = build(
        Request(
            name="lab",
            segments=[parse_segment("lan=a,b"), parse_segment("dmz=c")],
            uplink=parse_uplink("w"),
            forwards=[parse_forward("tcp:8080=c:80")],
        )
    )
    assert from_file == from_cli


def test_flow_cache_size_from_toml_and_off_with_zero() -> None:
    assert build(Request(ports=parse_ports("a"))).flow_cache == 8192
    assert build(request_from_toml('ports = ["a"]\nflow_cache = 0\n')).flow_cache == 0
    assert build(request_from_toml('ports = ["a"]\nflow_cache = 100\n')).flow_cache == 100


def test_mtu_for_all_then_per_segment_from_the_command_line_and_toml() -> None:
    assert parse_mtu("9000") == (None, 9000) and parse_mtu("dmz=1280") == ("dmz", 1280)
    plain = build(Request(ports=parse_ports("a,b")))
    assert [s.mtu for s in plain.segments] == [1500] and plain.uplink_mtu == 1500
    from_cli = build(
        Request(
            segments=[parse_segment("lan=a,b"), parse_segment("dmz=c")],
            uplink=parse_uplink("w"),
            mtu=9000,
            segment_mtu={"dmz": 1280, "wan": 1400},
        )
    )
    assert {s.name: s.mtu for s in from_cli.segments} == {"lan": 9000, "dmz": 1280}
    assert from_cli.uplink_mtu == 1400
    text = (
        'mtu = 9000\n[uplink]\nnamespace = "w"\nmtu = 1400\n'
        '[[segment]]\nname = "lan"\nports = ["a", "b"]\n'
        '[[segment]]\nname = "dmz"\nports = ["c"]\nmtu = 1280\n'
    )
    assert build(request_from_toml(text)) == from_cli
    with pytest.raises(ConfigError, match="mtu of segment lan must be a whole number"):
        request_from_toml('[[segment]]\nname = "lan"\nports = ["a"]\nmtu = "big"\n')
    with pytest.raises(ConfigError, match="mtu must be a whole number"):
        request_from_toml('ports = ["a"]\nmtu = 40\n')


def test_subnet6_numbers_the_namespace_ports_and_refuses_what_cannot_work() -> None:
    from ipaddress import IPv6Interface, IPv6Network

    from vswitch.config.topology import parse_subnet6

    topo = build(Request(ports=parse_ports("a,b,c"), subnet6=IPv6Network("fd00:10::/64"), host=True))
    six = {p.label: p.address6 for p in topo.ports}
    assert six == {
        "a": IPv6Interface("fd00:10::1/64"),
        "b": IPv6Interface("fd00:10::2/64"),
        "c": IPv6Interface("fd00:10::3/64"),
        "host": None,  # the root namespace's IPv6 is left alone
    }
    assert build(request_from_toml('ports = ["a"]\nsubnet6 = "fd00:10::/64"\n')).ports[0].address6 == six["a"]
    routed = build(Request(segments=[parse_segment("x=a")], subnet6=IPv6Network("fd00::/64")))
    assert routed.segments[0].gateway6 == IPv6Interface("fd00::1/64")  # the router routes IPv6 (issue 16)
    assert routed.ports[0].address6 is None  # its hosts take theirs by SLAAC (test_topology6.py)
    with pytest.raises(ConfigError, match="too small"):
        build(Request(ports=parse_ports("a,b,c,d"), subnet6=IPv6Network("fd00::/126")))
    for bad in ("fe80::/64", "ff02::/64", "fd00::/127", "10.0.0.0/24"):
        with pytest.raises(ConfigError, match="IPv6 subnet"):
            parse_subnet6(bad)


@pytest.mark.parametrize("length", [31, 32])
def test_a_routed_segment_too_small_for_a_router_and_a_host_is_refused(length: int) -> None:
    req = Request()
    req.add_segment("lan", [parse_port("a")], IPv4Network(f"10.9.0.0/{length}"))
    with pytest.raises(ConfigError, match=f"10.9.0.0/{length} is too small for a router"):
        build(req)
    req = Request()
    req.add_segment("lan", [parse_port("a")], IPv4Network("10.9.0.0/30"))
    assert str(build(req).segments[0].gateway) == "10.9.0.1/30"  # /30: the router and one host fit

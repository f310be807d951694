"""The DHCP and DNS options (config/services.py): each value's parser and its one-line error, the
checks against the built topology, the TOML keys and the command line, and the servers the shell
builds from them (shell/services.build)."""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from vswitch.cli import parse, topology_from_args
from vswitch.config.errors import ConfigError
from vswitch.config.services import (
    DEFAULT_LEASE_TIME,
    DhcpHost,
    ServicesSpec,
    check_lease_time,
    parse_dhcp_host,
    parse_dhcp_range,
    parse_dns_upstream,
    parse_duration,
)
from vswitch.config.topology import (
    Request,
    Topology,
    build,
    parse_ports,
    parse_route,
    parse_segment,
    parse_uplink,
    request_from_toml,
)
from vswitch.shell import services as shell_services

MAC10 = bytes.fromhex("020000000010")


def cli(*argv: str) -> Topology:
    """The topology `vswitch up ARGV` would run."""
    return topology_from_args(parse(["up", *argv]))


def routed(spec: ServicesSpec, *, uplink: bool = True, segments: tuple[str, ...] = ()) -> Topology:
    """lan (ns1=10.0.0.5, ns2) and dmz (ns3) at 10.0.0.0/24 and 10.0.1.0/24, the uplink if asked."""
    req = Request()
    for text in segments or ("lan=ns1=10.0.0.5/24,ns2@10.0.0.0/24", "dmz=ns3@10.0.1.0/24"):
        req.add_segment(*parse_segment(text))
    if uplink:
        req.uplink = parse_uplink("up")
    req.services = spec
    return build(req)


# === 1. One value each ===================================================================================
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5h", 5400.0),
     ("250ms", 0.25), (" 2h ", 7200.0)],
)  # fmt: skip
def test_a_duration_is_seconds_or_a_number_with_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text, "--lease-time") == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-5", "1h30m", "1 h", "1.h", "one hour"])
def test_a_bad_duration_is_one_error_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--lease-time .*a duration like"):
        parse_duration(text, "--lease-time")


@pytest.mark.parametrize("seconds", [2.0, 3600.0, 365 * 86400.0])
def test_a_lease_time_within_the_bounds_is_kept(seconds: float) -> None:
    assert check_lease_time(seconds) == seconds


@pytest.mark.parametrize("seconds", [1.9, 0.0, -1.0, 365 * 86400.0 + 1, float("inf"), float("nan")])
def test_a_lease_time_beyond_the_bounds_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError, match=r"^lease_time must be 2 s to 365 days"):
        check_lease_time(seconds, "lease_time")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.100-10.0.0.199", ("10.0.0.100", "10.0.0.199")),
        (" 10.0.0.7 - 10.0.0.7 ", ("10.0.0.7", "10.0.0.7")),
    ],
)
def test_a_range_is_start_dash_end(text: str, expected: tuple[str, str]) -> None:
    assert parse_dhcp_range(text) == (IPv4Address(expected[0]), IPv4Address(expected[1]))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.100", "give START-END"),
        ("10.0.0.100-", "give START-END"),
        ("a-b", "give START-END"),
        ("fd00::1-fd00::9", "give START-END"),
        ("10.0.0.200-10.0.0.100", "the start is after the end"),
    ],
)
def test_a_bad_range_is_one_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"^--dhcp-range {text!r}: {why}"):
        parse_dhcp_range(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02:00:00:00:00:10=10.0.0.10,web", DhcpHost(MAC10, IPv4Address("10.0.0.10"), "web")),
        ("02-00-00-00-00-10=10.0.0.10", DhcpHost(MAC10, IPv4Address("10.0.0.10"), None)),
        ("02:00:00:00:00:10 = 10.0.0.10 , Web-1 ", DhcpHost(MAC10, IPv4Address("10.0.0.10"), "web-1")),
        ("02:00:00:00:00:10=10.0.0.10,", DhcpHost(MAC10, IPv4Address("10.0.0.10"), None)),
    ],
)
def test_a_reservation_is_mac_address_and_maybe_a_name(text: str, expected: DhcpHost) -> None:
    assert parse_dhcp_host(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("02:00:00:00:00:10", "give MAC=ADDR"),
        ("02:00:00:00:10=10.0.0.10", "give MAC=ADDR"),
        ("web=10.0.0.10", "give MAC=ADDR"),
        ("01:00:5e:00:00:01=10.0.0.10", "a reservation needs a unicast MAC"),
        ("00:00:00:00:00:00=10.0.0.10", "a reservation needs a unicast MAC"),
        ("02:00:00:00:00:10=10.0.0", "'10.0.0' is not an IPv4 address"),
        ("02:00:00:00:00:10=fd00::10", "'fd00::10' is not an IPv4 address"),
        ("02:00:00:00:00:10=10.0.0.10,bad_name", "the name must be one DNS label"),
        ("02:00:00:00:00:10=10.0.0.10,web.lab", "the name must be one DNS label"),
        ("02:00:00:00:00:10=10.0.0.10,-web", "the name must be one DNS label"),
    ],
)
def test_a_bad_reservation_is_one_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dhcp_host(text)
    message = str(info.value)
    assert message.startswith(f"--dhcp-host {text!r}: ") and why in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "address", "port"),
    [
        ("1.1.1.1", "1.1.1.1", 53),
        ("1.1.1.1:5353", "1.1.1.1", 5353),
        ("2606:4700::1111", "2606:4700::1111", 53),
        ("[2606:4700::1111]", "2606:4700::1111", 53),
        ("[2606:4700::1111]:853", "2606:4700::1111", 853),
        (" 192.0.2.53 ", "192.0.2.53", 53),
    ],
)
def test_an_upstream_is_an_address_and_maybe_a_port(text: str, address: str, port: int) -> None:
    got = parse_dns_upstream(text)
    assert got == (IPv4Address(address) if "." in address else IPv6Address(address), port)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1.1.1.1:dns", "the port must be a number"),
        ("1.1.1.1:0", "the port must be 1 to 65535"),
        ("1.1.1.1:65536", "the port must be 1 to 65535"),
        ("[::1]:0", "the port must be 1 to 65535"),
        ("dns.google", "give an address"),
        ("[::1]:x", "give an address"),
        ("1.1.1", "give an address"),
        ("0.0.0.0", "not a resolver's address"),
        ("::", "not a resolver's address"),
        ("224.0.0.251", "not a resolver's address"),
        ("[ff02::fb]:5353", "not a resolver's address"),
    ],
)
def test_a_bad_upstream_is_one_error(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_dns_upstream(text)
    message = str(info.value)
    assert message.startswith(f"--dns-upstream {text!r}: ") and why in message


def test_the_options_that_ask_for_a_router_are_named() -> None:
    assert ServicesSpec().given == []
    assert ServicesSpec(dhcp=False, dns=False).given == []  # turning off asks for nothing
    spec = ServicesSpec(
        dhcp_ranges=[parse_dhcp_range("10.0.0.100-10.0.0.110")],
        dhcp_hosts=[parse_dhcp_host("02:00:00:00:00:10=10.0.0.10")],
        lease_time=60.0,
        dns_upstream=parse_dns_upstream("1.1.1.1"),
    )
    assert spec.given == ["--dhcp-range", "--dhcp-host", "--lease-time", "--dns-upstream"]


# === 2. Against the topology ================================================================================
@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (ServicesSpec(dhcp_ranges=[parse_dhcp_range("10.0.0.100-10.0.0.110")]), "--dhcp-range"),
        (ServicesSpec(dhcp_hosts=[parse_dhcp_host("02:00:00:00:00:10=10.0.0.10")]), "--dhcp-host"),
        (ServicesSpec(lease_time=60.0), "--lease-time"),
        (ServicesSpec(dns_upstream=parse_dns_upstream("1.1.1.1")), "--dns-upstream"),
    ],
)
def test_service_options_on_a_switched_topology_are_refused(spec: ServicesSpec, named: str) -> None:
    req = Request(ports=parse_ports("ns1,ns2"))
    req.services = spec
    with pytest.raises(ConfigError, match=f"^{named} need\\(s\\) a router"):
        build(req)


def test_a_switched_topology_with_the_defaults_or_services_off_builds() -> None:
    for spec in (ServicesSpec(), ServicesSpec(dhcp=False, dns=False)):
        req = Request(ports=parse_ports("ns1,ns2"))
        req.services = spec
        topology = build(req)
        assert not topology.routed
        assert shell_services.build(topology, Counter()) == (None, None)


def _spec(*, ranges: tuple[str, ...] = (), hosts: tuple[str, ...] = (), **kw: object) -> ServicesSpec:
    spec = ServicesSpec(**kw)  # type: ignore[arg-type]
    spec.dhcp_ranges = [parse_dhcp_range(r) for r in ranges]
    spec.dhcp_hosts = [parse_dhcp_host(h) for h in hosts]
    return spec


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (
            _spec(ranges=("10.9.0.1-10.9.0.5",)),
            "--dhcp-range 10.9.0.1-10.9.0.5: not inside one segment's subnet",
        ),
        (
            _spec(ranges=("10.0.0.200-10.0.1.10",)),
            "--dhcp-range 10.0.0.200-10.0.1.10: not inside one segment",
        ),
        (_spec(ranges=("198.18.0.10-198.18.0.20",)), "not inside one segment's subnet"),  # the uplink's
        (_spec(ranges=("10.0.0.0-10.0.0.10",)), "network and broadcast addresses are not hosts"),
        (_spec(ranges=("10.0.0.100-10.0.0.255",)), "network and broadcast addresses are not hosts"),
        (
            _spec(ranges=("10.0.0.10-10.0.0.20", "10.0.0.30-10.0.0.40")),
            "^--dhcp-range: one range per segment",
        ),
        (_spec(hosts=("02:00:00:00:00:10=10.0.0.1",)), "^--dhcp-host 10.0.0.1: the address is the router's"),
        (_spec(hosts=("02:00:00:00:00:10=10.0.0.5",)), "^--dhcp-host 10.0.0.5: the address is port ns1's"),
        (_spec(hosts=("02:00:00:00:00:10=10.0.1.1",)), "^--dhcp-host 10.0.1.1: the address is the router's"),
        (_spec(hosts=("02:00:00:00:00:10=10.7.0.9",)), "not inside a routed segment's subnet"),
        (
            _spec(hosts=("02:00:00:00:00:10=10.0.0.10", "02:00:00:00:00:10=10.0.0.11")),
            "^--dhcp-host 10.0.0.11: a MAC or an address is reserved twice",
        ),
        (
            _spec(hosts=("02:00:00:00:00:10=10.0.0.10", "02:00:00:00:00:11=10.0.0.10")),
            "a MAC or an address is reserved twice",
        ),
        (
            _spec(dns=False, dns_upstream=parse_dns_upstream("1.1.1.1")),
            "--dns-upstream and --no-dns contradict",
        ),
        (_spec(dhcp=False, ranges=("10.0.0.10-10.0.0.20",)), "need DHCP: drop --no-dhcp"),
        (_spec(dhcp=False, hosts=("02:00:00:00:00:10=10.0.0.10",)), "need DHCP: drop --no-dhcp"),
    ],
)
def test_what_cannot_work_on_the_routed_topology_is_refused(spec: ServicesSpec, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        routed(spec)


def test_an_upstream_needs_the_uplink() -> None:
    spec = ServicesSpec(dns_upstream=parse_dns_upstream("1.1.1.1"))
    with pytest.raises(ConfigError, match=r"^--dns-upstream needs --uplink"):
        routed(spec, uplink=False)
    assert routed(spec).services.dns_upstream == (IPv4Address("1.1.1.1"), 53)


def test_a_range_per_segment_and_reservations_in_either_build() -> None:
    spec = _spec(
        ranges=("10.0.0.100-10.0.0.150", "10.0.1.100-10.0.1.150"),
        hosts=("02:00:00:00:00:10=10.0.0.10,web", "02:00:00:00:00:11=10.0.1.10"),
    )
    topology = routed(spec)
    assert topology.services is spec


# === 3. TOML and the command line ==========================================================================
TOML_ROUTED = """
name = "lab"
uplink = "up"
dhcp_range = "10.0.0.100-10.0.0.150"
dhcp_host = ["02:00:00:00:00:10=10.0.0.10,web"]
lease_time = "30m"
dns_upstream = "[2606:4700::1111]:53"

[[segment]]
name = "lan"
ports = ["ns1", "ns2"]
subnet = "10.0.0.0/24"
"""


def test_the_toml_keys_reach_the_topology() -> None:
    topology = build(request_from_toml(TOML_ROUTED))
    s = topology.services
    assert (s.dhcp, s.dns) == (True, True)
    assert s.dhcp_ranges == [(IPv4Address("10.0.0.100"), IPv4Address("10.0.0.150"))]
    assert s.dhcp_hosts == [DhcpHost(MAC10, IPv4Address("10.0.0.10"), "web")]
    assert s.lease_time == 1800.0
    assert s.dns_upstream == (IPv6Address("2606:4700::1111"), 53)


def test_toml_turns_the_services_off_and_takes_seconds() -> None:
    text = 'uplink = "up"\ndhcp = false\ndns = false\nlease_time = 90\n'
    text += '[[segment]]\nname = "lan"\nports = ["ns1"]\n'
    s = build(request_from_toml(text)).services
    assert (s.dhcp, s.dns, s.lease_time, s.dns_upstream) == (False, False, 90.0, None)


def test_toml_without_the_keys_has_the_defaults() -> None:
    s = request_from_toml('ports = ["ns1", "ns2"]\n').services
    assert s == ServicesSpec()
    assert s.lease_time == DEFAULT_LEASE_TIME


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('dhcp = "yes"', "^dhcp must be true or false"),
        ("dns = 1", "^dns must be true or false"),
        ("lease_time = true", "^lease_time must be seconds or a duration"),
        ('lease_time = "1s"', "^lease_time must be 2 s to 365 days"),
        ('lease_time = "soon"', "^lease_time 'soon': a duration like"),
        ("lease_time = 1e9", "^lease_time must be 2 s to 365 days"),
        ("dhcp_range = 5", "^dhcp_range must be a list of strings"),
        ('dhcp_host = ["02:00:00:00:00:10=10.0.0.10", 7]', "^dhcp_host must be a list of strings"),
        ('dhcp_range = "10.0.0.9"', "^--dhcp-range '10.0.0.9': give START-END"),
        ("dns_upstream = 53", "^dns_upstream must be a string"),
        ('dns_upstream = "0.0.0.0"', "not a resolver's address"),
    ],
)
def test_a_bad_toml_value_is_one_error(line: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        request_from_toml(f'ports = ["ns1"]\n{line}\n')


def test_the_command_line_reaches_the_topology() -> None:
    topology = cli(
        "--segment", "lan=ns1,ns2@10.0.0.0/24",
        "--uplink", "up",
        "--dhcp-range", "10.0.0.100-10.0.0.150",
        "--dhcp-host", "02:00:00:00:00:10=10.0.0.10,web",
        "--dhcp-host", "02:00:00:00:00:11=10.0.0.11",
        "--lease-time", "1h",
        "--dns-upstream", "1.1.1.1:5353",
    )  # fmt: skip
    s = topology.services
    assert s.dhcp_ranges == [(IPv4Address("10.0.0.100"), IPv4Address("10.0.0.150"))]
    assert [h.address for h in s.dhcp_hosts] == [IPv4Address("10.0.0.10"), IPv4Address("10.0.0.11")]
    assert (s.lease_time, s.dns_upstream) == (3600.0, (IPv4Address("1.1.1.1"), 5353))


def test_no_dhcp_and_no_dns_on_the_command_line() -> None:
    s = cli("--segment", "lan=ns1", "--no-dhcp", "--no-dns").services
    assert (s.dhcp, s.dns) == (False, False)
    s = cli("--segment", "lan=ns1").services
    assert (s.dhcp, s.dns) == (True, True)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (("--segment", "lan=ns1", "--lease-time", "1s"), "^--lease-time must be 2 s to 365 days"),
        (("--segment", "lan=ns1", "--lease-time", "forever"), "^--lease-time 'forever'"),
        (("--segment", "lan=ns1", "--dns-upstream", "1.1.1.1"), "^--dns-upstream needs --uplink"),
        (("--segment", "lan=ns1", "--uplink", "up", "--no-dns", "--dns-upstream", "1.1.1.1"), "contradict"),
        (
            ("--ports", "ns1,ns2", "--dhcp-range", "10.0.0.100-10.0.0.110"),
            "^--dhcp-range need\\(s\\) a router",
        ),
        (("--segment", "lan=ns1@10.0.0.0/24", "--dhcp-host", "02:00:00:00:00:10=10.0.0.1"), "the router's"),
        (("--segment", "lan=ns1", "--dhcp-host", "nonsense"), "^--dhcp-host 'nonsense': give MAC=ADDR"),
    ],
)
def test_a_bad_command_line_is_one_error(argv: tuple[str, ...], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        cli(*argv)


def test_the_command_line_adds_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(TOML_ROUTED.replace('dhcp_range = "10.0.0.100-10.0.0.150"\n', ""))
    topology = cli("--config", str(path), "--dhcp-host", "02:00:00:00:00:11=10.0.0.11", "--lease-time", "2h")
    s = topology.services
    assert [h.mac.hex() for h in s.dhcp_hosts] == ["020000000010", "020000000011"]
    assert s.lease_time == 7200.0 and s.dns_upstream == (IPv6Address("2606:4700::1111"), 53)
    with pytest.raises(ConfigError, match="contradict"):
        cli("--config", str(path), "--no-dns")


# === 4. The servers the shell builds ========================================================================
def test_the_shell_builds_a_scope_per_segment_with_its_range_mtu_and_routes() -> None:
    req = Request(name="lab")
    req.add_segment(*parse_segment("lan=ns1@10.0.0.0/24"))
    req.add_segment(*parse_segment("dmz=ns3@10.0.1.0/24"))
    req.uplink = parse_uplink("up")
    req.segment_mtu["dmz"] = 1400
    req.routes = [parse_route("10.9.0.0/16=via 10.0.0.254"), parse_route("10.8.0.0/16=via 10.0.1.254")]
    req.services = _spec(ranges=("10.0.1.100-10.0.1.150",), hosts=("02:00:00:00:00:10=10.0.0.10,web",))
    req.services.lease_time = 600.0
    events: Counter[str] = Counter()
    dhcp, dns = shell_services.build(build(req), events)
    assert dhcp is not None and dns is not None
    lan, dmz = dhcp.scopes[0], dhcp.scopes[1]
    assert set(dhcp.scopes) == {0, 1}  # the segments, never the uplink
    assert (lan.network, lan.server, lan.ranges, lan.mtu) == (
        IPv4Network("10.0.0.0/24"),
        IPv4Address("10.0.0.1"),
        (),
        1500,
    )
    assert dmz.ranges == ((IPv4Address("10.0.1.100"), IPv4Address("10.0.1.150")),) and dmz.mtu == 1400
    # option 121: a route via a gateway on the segment goes there; any other via the router
    assert lan.routes == (
        (IPv4Network("10.9.0.0/16"), IPv4Address("10.0.0.254")),
        (IPv4Network("10.8.0.0/16"), IPv4Address("10.0.0.1")),
    )
    assert dmz.routes == (
        (IPv4Network("10.9.0.0/16"), IPv4Address("10.0.1.1")),
        (IPv4Network("10.8.0.0/16"), IPv4Address("10.0.1.254")),
    )
    assert dhcp.lease_time == 600.0 and dhcp.domain == "lab" and lan.dns
    assert dhcp.reservations[MAC10].address == IPv4Address("10.0.0.10")
    assert dhcp.reservations[MAC10].name == "web"
    assert dhcp.events is events and dns.events is events
    assert dns.domain == "lab" and dns.dhcp is dhcp and not dns.upstream
    assert IPv4Network("10.0.0.0/24") in dns.networks and IPv4Network("10.0.1.0/24") in dns.networks


def test_the_shell_builds_no_dns_and_no_domain_with_no_dns() -> None:
    req = Request(name="lab")
    req.add_segment(*parse_segment("lan=ns1"))
    req.services = ServicesSpec(dns=False)
    dhcp, dns = shell_services.build(build(req), Counter())
    assert dns is None and dhcp is not None
    assert dhcp.domain is None and not dhcp.scopes[0].dns


def test_the_shell_builds_no_dhcp_with_no_dhcp_and_an_upstream_dns() -> None:
    req = Request(name="lab")
    req.add_segment(*parse_segment("lan=ns1"))
    req.uplink = parse_uplink("up")
    req.services = ServicesSpec(dhcp=False, dns_upstream=parse_dns_upstream("1.1.1.1"))
    dhcp, dns = shell_services.build(build(req), Counter())
    assert dhcp is None and dns is not None and dns.upstream and dns.dhcp is None


def test_ipv6_prefixes_are_our_networks_for_reverse_names() -> None:
    req = Request(name="lab")
    req.add_segment(*parse_segment("lan=ns1"))
    req.segment_subnet6["lan"] = IPv6Network("fd00:1::/64")
    _, dns = shell_services.build(build(req), Counter())
    assert dns is not None and IPv6Network("fd00:1::/64") in dns.networks

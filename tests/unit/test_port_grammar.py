"""One port grammar (issue 18): `[PORT=](NS|pid:PID|/PATH)[:IFNAME][=ADDR/PREFIX|=dhcp]`, or
`host[=ADDR/PREFIX]`, the same through parse_port, `--ports`, `--segment` and a TOML `ports` list.

Every form is one row that names every PortSpec field, so a field added later makes this table ask
what each form gives it. A refusal is one line, and the part of it that tells the user why is asserted.
"""

from __future__ import annotations

import json
from dataclasses import astuple, fields
from ipaddress import IPv4Interface
from typing import Any

import pytest

from vswitch.cli import parse, topology_from_args
from vswitch.config.topology import ConfigError, PortSpec, parse_port, parse_trunk, request_from_toml

FIELDS = ("namespace", "ifname", "address", "address6", "name", "dhcp", "attached")
A7, A9, A100 = IPv4Interface("10.0.0.7/24"), IPv4Interface("10.0.0.9/24"), IPv4Interface("10.0.0.100/24")
PID = "/proc/1234/ns/net"

# text: (namespace, ifname, address, address6, name, dhcp, attached), label
FORMS: dict[str, tuple[tuple[Any, ...], str]] = {
    # today's forms, unchanged: a namespace under /run/netns that vswitch makes if missing
    "ns": (("ns", "eth0", None, None, None, False, False), "ns"),
    "ns:eth1": (("ns", "eth1", None, None, None, False, False), "ns"),
    "ns:eth1=10.0.0.7/24": (("ns", "eth1", A7, None, None, False, False), "ns"),
    "ns=10.0.0.7/24": (("ns", "eth0", A7, None, None, False, False), "ns"),  # an address, not a name
    "host": ((None, "", None, None, None, False, False), "host"),  # build() names the tap vs-NAME
    "host=10.0.0.100/24": ((None, "", A100, None, None, False, False), "host"),
    "host:vs-x": ((None, "vs-x", None, None, None, False, False), "host"),
    # a process's namespace: attached, named pidPID unless named, its interface chosen at start
    "pid:1234": ((PID, "", None, None, "pid1234", False, True), "pid1234"),
    "pid:1234:eth3": ((PID, "eth3", None, None, "pid1234", False, True), "pid1234"),
    "pid:007": (("/proc/7/ns/net", "", None, None, "pid7", False, True), "pid7"),
    "web=pid:1234": ((PID, "", None, None, "web", False, True), "web"),
    "web=pid:1234:eth3=10.0.0.9/24": ((PID, "eth3", A9, None, "web", False, True), "web"),
    "web=pid:1234=dhcp": ((PID, "", None, None, "web", True, True), "web"),
    # a bind-mounted namespace by path: attached, and it must be named
    "web=/run/netns/x": (("/run/netns/x", "", None, None, "web", False, True), "web"),
    "web=/var/run/c1/net:eth2=dhcp": (("/var/run/c1/net", "eth2", None, None, "web", True, True), "web"),
    "web=/run/a:b/net": (("/run/a:b/net", "", None, None, "web", False, True), "web"),  # ':' before a '/'
    # dhcp is a word, not an address or a namespace
    "ns=dhcp": (("ns", "eth0", None, None, None, True, False), "ns"),
    "ns:eth1=dhcp": (("ns", "eth1", None, None, None, True, False), "ns"),
}

REFUSALS: dict[str, str] = {
    "/run/netns/x": "a namespace given by path needs a port name, e.g. web=/run/netns/x",
    "/run/netns/x:eth1": "a namespace given by path needs a port name",
    "pid:abc": "pid:PID takes a process number",
    "pid:0": "pid:PID takes a process number",
    "pid:": "pid:PID takes a process number",
    "pid:-5": "pid:PID takes a process number",
    "pid:١٢": "pid:PID takes a process number",  # Arabic-Indic digits are digits to str.isdigit()
    "web=pid:12a": "pid:PID takes a process number",
    "dhcp": "'dhcp' is a reserved word, not a namespace name",
    "dhcp:eth1": "'dhcp' is a reserved word",
    "dhcp=10.0.0.7/24": "'dhcp' is a reserved word",
    "host=dhcp": "the host port takes an address, not dhcp",
    "=pid:12": "invalid port name ''",
    "-web=pid:12": "invalid port name '-web'",
    "we b=pid:12": "invalid port name 'we b'",
    "w/b=/run/x": "invalid port name 'w/b'",
    f"{'p' * 33}=pid:12": "invalid port name",
    "host=pid:12": "invalid port name 'host'",
    "dhcp=pid:12": "invalid port name 'dhcp'",
    "host=/run/x": "invalid port name 'host'",
    "dhcp=/run/x": "invalid port name 'dhcp'",
    "pid:12:": "invalid interface name ''",
    "web=/run/x:": "invalid interface name ''",
    "pid:12:eth0:1": "invalid interface name 'eth0:1'",
    "web=pid:12:a-very-long-name0": "invalid interface name",
    "web=pid:12=10.0.0.9": "needs a prefix length",
    "ns:=dhcp": "invalid interface name ''",
    "bad/name": "invalid namespace name",
}


def as_fields(spec: PortSpec) -> tuple[Any, ...]:
    """Every field, in FIELDS' order (a new field fails here until the tables say what it is)."""
    assert tuple(f.name for f in fields(PortSpec)) == FIELDS
    return astuple(spec)


@pytest.mark.parametrize("text", FORMS)
def test_every_form_gives_every_field_and_its_label(text: str) -> None:
    expected, label = FORMS[text]
    spec = parse_port(text)
    assert as_fields(spec) == expected
    assert spec.label == label
    assert parse_port(f"  {text}  ") == spec, "surrounding blanks are not part of a port"


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_one_line_with_the_reason(text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_port(text)
    message = str(refused.value)
    assert REFUSALS[text] in message
    assert "\n" not in message


def test_toml_ports_take_the_same_grammar() -> None:
    listed = ", ".join(json.dumps(text) for text in FORMS)  # a JSON string is a TOML basic string
    request = request_from_toml(f'ports = [{listed}]\n[[segment]]\nname = "lan"\nports = [{listed}]\n')
    assert [as_fields(p) for p in request.ports] == [expected for expected, _ in FORMS.values()]
    ((name, ports, _subnet),) = request.segments
    assert name == "lan" and ports == request.ports
    for text, reason in REFUSALS.items():
        with pytest.raises(ConfigError) as refused:
            request_from_toml(f'ports = ["a", {json.dumps(text)}]\n')
        assert reason in str(refused.value), text


def test_ports_option_takes_the_same_grammar() -> None:
    topo = topology_from_args(parse(["up", "--ports", "a,pid:123"]))
    assert [as_fields(p) for p in topo.ports] == [
        ("a", "eth0", IPv4Interface("10.0.0.1/24"), None, None, False, False),
        ("/proc/123/ns/net", "", IPv4Interface("10.0.0.2/24"), None, "pid123", False, True),
    ]
    assert [p.label for p in topo.ports] == ["a", "pid123"]
    with pytest.raises(ConfigError, match="pid:PID takes a process number"):
        topology_from_args(parse(["up", "--ports", "a,pid:abc"]))


def test_segment_option_takes_the_same_grammar() -> None:
    topo = topology_from_args(parse(["up", "--segment", "lan=a,web=pid:123", "--segment", "dmz=b"]))
    lan = topo.segments[0]
    assert [as_fields(p) for p in lan.ports] == [
        ("a", "eth0", IPv4Interface("10.1.0.2/24"), None, None, False, False),
        ("/proc/123/ns/net", "", IPv4Interface("10.1.0.3/24"), None, "web", False, True),
    ]
    assert topo.segment_of("web") is lan and topo.port("web") == lan.ports[1]
    with pytest.raises(ConfigError, match="needs a port name"):
        topology_from_args(parse(["up", "--segment", "lan=a,/run/netns/x"]))


@pytest.mark.parametrize("ports", ["a,a=pid:5", "pid5,pid:5", "a,a=/run/netns/x"])
def test_two_ports_of_one_name_are_refused(ports: str) -> None:
    """Capture, trace, stats and DNS find a port by its name: two of one name is one line of error."""
    with pytest.raises(ConfigError, match="two ports are called"):
        topology_from_args(parse(["up", "--ports", ports]))


def test_a_name_before_a_namespace_says_where_names_go() -> None:
    """`web=ns1` is not a named namespace port: the error says NAME= goes before pid: or /PATH."""
    with pytest.raises(ConfigError, match="names a port only before pid: or /PATH"):
        topology_from_args(parse(["up", "--ports", "a,web=ns1"]))


@pytest.mark.parametrize(
    ("text", "namespace", "label", "ifname", "attached"),
    [
        ("t1=lan:10", "t1", "t1", "eth0", False),
        ("t1:eth2=lan:10", "t1", "t1", "eth2", False),
        ("pid:77=lan:10,native=dmz", "/proc/77/ns/net", "pid77", "", True),
        ("tr=pid:77:eth4=lan:10", "/proc/77/ns/net", "tr", "eth4", True),
        ("tr=/run/c1/net=lan:10", "/run/c1/net", "tr", "", True),
    ],
)
def test_a_trunk_takes_the_port_grammar(
    text: str, namespace: str, label: str, ifname: str, attached: bool
) -> None:
    """--trunk's port is a port like any other (no address: it carries segments)."""
    spec = parse_trunk(text)
    assert (spec.namespace, spec.label, spec.ifname, spec.attached) == (namespace, label, ifname, attached)
    assert spec.vlans == (("lan", 10),)


@pytest.mark.parametrize("text", ["t1=10.0.0.1/24=lan:10", "/run/c1/net=lan:10", "host=lan:10"])
def test_a_trunk_port_with_an_address_or_no_name_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_trunk(text)


def test_a_dhcp_port_is_given_no_address_and_the_others_number_on() -> None:
    """=dhcp: the address is DHCP's (the DHCP issue); until then the port has none, and the next
    port takes the next host as if it were not there."""
    topo = topology_from_args(parse(["up", "--segment", "lan=a,b=dhcp,c", "--segment", "dmz=d"]))
    lan = {p.label: p for p in topo.segments[0].ports}
    assert lan["b"].dhcp and lan["b"].address is None
    assert (str(lan["a"].address), str(lan["c"].address)) == ("10.1.0.2/24", "10.1.0.3/24")

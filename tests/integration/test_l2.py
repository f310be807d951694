"""`vswitch up` as an L2 switch between real namespaces, with real kernel peers on every port."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from .conftest import (
    Env,
    Switch,
    finish,
    ipv4_addresses,
    links,
    mac_of,
    netns_exec,
    pings,
    read_line,
    transfer,
    wait_for,
)
from .peer import udp_payload

pytestmark = pytest.mark.root

TCP_BYTES = 100_000_000
MSS = 1448


def three_port(env: Env, *args: str) -> tuple[Switch, list[str]]:
    names = [env.ns(t) for t in ("a", "b", "c")]
    return env.switch(*names, args=args), names


def port_stats(sw: Switch, port: str) -> dict[str, Any]:
    stats: dict[str, Any] = sw.query("stats")["ports"][port]
    return stats


def test_every_ordered_pair_pings(env: Env) -> None:
    sw, names = three_port(env)
    addresses = {p["namespace"]: p["address"].split("/")[0] for p in sw.table["ports"]}
    assert addresses == {names[0]: "10.0.0.1", names[1]: "10.0.0.2", names[2]: "10.0.0.3"}
    failed = [(s, d) for s, d in itertools.permutations(names, 2) if not pings(s, addresses[d])]
    assert failed == []


def test_subnet6_gives_every_namespace_an_ipv6_address_that_pings_and_carries_tcp(env: Env) -> None:
    """--subnet6: ::1, ::2, ::3 on the ports, usable at once (no DAD wait); ping6 every pair, and
    TCP over IPv6 in TSO super-frames (TSO6) crosses intact."""
    sw, names = three_port(env, "--subnet6", "fd00:77::/64")
    six = {p["namespace"]: p["address6"] for p in sw.table["ports"]}
    assert six == {names[0]: "fd00:77::1/64", names[1]: "fd00:77::2/64", names[2]: "fd00:77::3/64"}
    for ns, address in six.items():
        (entry,) = [
            a for a in links(ns)["eth0"]["addr_info"] if a["family"] == "inet6" and a["scope"] == "global"
        ]
        assert f"{entry['local']}/{entry['prefixlen']}" == address and not entry.get("tentative")
    failed = [(s, d) for s, d in itertools.permutations(names, 2) if not pings(s, six[d].split("/")[0])]
    assert failed == []
    transfer(env, names[0], names[2], "fd00:77::3", 20_000_000, seed=6)


def test_100mb_tcp_arrives_intact_in_tso_superframes(env: Env) -> None:
    sw, (ns1, _, ns3) = three_port(env)
    before = port_stats(sw, ns3)
    transfer(env, ns1, ns3, "10.0.0.3", TCP_BYTES, seed=7)

    after = port_stats(sw, ns3)
    frames = after["tx_packets"] - before["tx_packets"]
    assert after["tx_bytes"] - before["tx_bytes"] >= TCP_BYTES
    # One frame per MSS would be ~69,000; TSO super-frames make it a small fraction of that.
    assert 0 < frames < TCP_BYTES / MSS / 4, f"{frames} frames toward {ns3}: TSO did not pass"
    assert after["drops"].get("truncated", 0) == 0


def test_udp_64_and_1472_byte_datagrams_arrive_intact(env: Env) -> None:
    _, (ns1, ns2, _) = three_port(env)
    assert pings(ns1, "10.0.0.2")  # resolve ARP first: the datagrams test the data path, not ARP
    count, sizes = 50, (64, 1472)
    receiver = env.peer(
        ns2, "udp-recv", "--bind", "10.0.0.2", "--port", "6001", "--count", str(count * len(sizes)),
        "--timeout", "5",
    )  # fmt: skip
    assert read_line(receiver, 15, "UDP receiver to bind") == "ready"
    sent = env.run_peer(
        ns1, "udp-send", "--host", "10.0.0.2", "--port", "6001", "--sizes", ",".join(map(str, sizes)),
        "--count", str(count),
    )  # fmt: skip
    assert sent["sent"] == count * len(sizes)
    got = [bytes.fromhex(d) for d in finish(receiver, 15, "UDP receiver")["datagrams"]]

    expected = [udp_payload(size, i) for size in sizes for i in range(count)]
    unknown = [d[:16].hex() for d in got if d not in expected]
    assert unknown == [], "datagrams that were never sent (corrupted or truncated)"
    order = [expected.index(d) for d in got]
    assert order == sorted(set(order)), "duplicated or reordered datagrams on an unloaded path"
    assert len(got) >= 0.95 * len(expected), f"only {len(got)} of {len(expected)} datagrams arrived"
    for size in sizes:
        assert any(len(d) == size for d in got), f"no {size}-byte datagram arrived"


def test_fdb_lists_each_namespace_mac_on_its_port(env: Env) -> None:
    sw, names = three_port(env)
    assert pings(names[0], "10.0.0.2")
    assert pings(names[0], "10.0.0.3")
    macs = {ns: mac_of(ns) for ns in names}
    for port in sw.table["ports"]:
        assert port["mac"] == macs[port["namespace"]]  # the table printed at start-up is the truth

    def learned() -> dict[str, str] | None:
        table = {row["mac"]: row["port"] for row in sw.query("fdb") if not row["static"]}
        return table if set(macs.values()) <= set(table) else None

    table = wait_for(learned, 5, "the FDB to hold all three MACs")
    for ns, mac in macs.items():
        assert table[mac] == ns, f"{ns}'s MAC {mac} learned on {table[mac]}"


def test_stats_count_the_traffic(env: Env) -> None:
    sw, (ns1, ns2, _) = three_port(env)
    before = sw.query("stats")["ports"]
    assert pings(ns1, "10.0.0.2", count=5)
    after = sw.query("stats")["ports"]
    for port, direction in ((ns1, "rx"), (ns2, "tx"), (ns2, "rx"), (ns1, "tx")):
        packets = after[port][f"{direction}_packets"] - before[port][f"{direction}_packets"]
        octets = after[port][f"{direction}_bytes"] - before[port][f"{direction}_bytes"]
        assert packets >= 5, f"{port} {direction}_packets grew by {packets} for 5 echo exchanges"
        assert octets >= 5 * 98, f"{port} {direction}_bytes grew by {octets}"


def test_port_override_sets_interface_name_and_address(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(f"{a}:veth7=10.9.0.7/24", f"{b}:lan1=10.9.0.8/24")
    links_a, links_b = links(a), links(b)
    assert "eth0" not in links_a
    assert ipv4_addresses(links_a["veth7"]) == ["10.9.0.7/24"]
    assert ipv4_addresses(links_b["lan1"]) == ["10.9.0.8/24"]
    rows = {p["namespace"]: (p["interface"], p["address"]) for p in sw.query("status")["ports"]}
    assert rows == {a: ("veth7", "10.9.0.7/24"), b: ("lan1", "10.9.0.8/24")}
    assert pings(a, "10.9.0.8")
    assert pings(b, "10.9.0.7")


def test_subnet_option_numbers_hosts_from_it(env: Env) -> None:
    sw, names = three_port(env, "--subnet", "192.168.77.16/28")
    for i, ns in enumerate(names, start=1):
        assert ipv4_addresses(links(ns)["eth0"]) == [f"192.168.77.{16 + i}/28"]
    assert sw.query("status")["segments"][0]["subnet"] == "192.168.77.16/28"
    assert pings(names[0], "192.168.77.19")
    assert pings(names[2], "192.168.77.17")


def test_two_instances_forward_separately(env: Env) -> None:
    """Same subnet, same addresses: each instance must deliver only to its own namespaces."""
    left = [env.ns("l1"), env.ns("l2")]
    right = [env.ns("r1"), env.ns("r2")]
    sw_left = env.switch(*left)
    sw_right = env.switch(*right)
    assert pings(left[0], "10.0.0.2", count=3)
    assert pings(right[0], "10.0.0.2", count=3)

    # Each side resolved 10.0.0.2 to its own peer's MAC, never to the other instance's.
    for src, dst in ((left[0], left[1]), (right[0], right[1])):
        out = netns_exec(src, ["ip", "-j", "neigh", "show", "10.0.0.2", "dev", "eth0"]).stdout
        assert [n.get("lladdr") for n in json.loads(out)] == [mac_of(dst)]
    left_macs = {mac_of(ns) for ns in left}
    right_macs = {mac_of(ns) for ns in right}
    assert not left_macs & right_macs
    left_fdb = {row["mac"] for row in sw_left.query("fdb")}
    right_fdb = {row["mac"] for row in sw_right.query("fdb")}
    assert left_macs <= left_fdb and not right_macs & left_fdb
    assert right_macs <= right_fdb and not left_macs & right_fdb
    assert set(sw_left.query("stats")["ports"]) == set(left)
    assert set(sw_right.query("stats")["ports"]) == set(right)

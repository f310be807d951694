"""Network emulation (issue 20) on real namespaces: `vswitch link`, `vswitch partition`, `vswitch heal`
and `Switch.impair`, judged by real tools (ping, `ip`, Python sockets, the kernel's own counters).

Everything is asserted by counts: packets answered, lost, duplicated, corrupted as the stage and the
receiving kernel count them. The one timed assertion is a lower bound (a delayed RTT is at least the
delay set). Nothing waits by sleeping: a state is polled against a deadline, and a receiver that must
get nothing is stopped only after the switch has counted every datagram it dropped or changed.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vswitch.shell.control import request

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    addresses_of,
    links,
    mac_of,
    make_world,
    netns_exec,
    pings,
    read_line,
    stop_peer,
    transfer,
    wait_for,
)

pytestmark = pytest.mark.root


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """This test's world, its namespaces named emu + 6 hex; everything in it removed afterwards."""
    with make_world(tmp_path, "emu") as world:
        yield world


# --- the CLI ---------------------------------------------------------------------------------------
def vswitch(sw: Switch, *args: str) -> subprocess.CompletedProcess[str]:
    """`vswitch ARGS --name SW` as a user runs it."""
    return sw.env.vswitch(*args, "--name", sw.name)


def ok(sw: Switch, *args: str) -> str:
    """`vswitch ARGS --name SW`, which must exit 0; its stdout."""
    proc = vswitch(sw, *args)
    assert proc.returncode == 0, f"vswitch {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
    return proc.stdout


def link_json(sw: Switch) -> dict[str, Any]:
    """`vswitch link --json`: the impaired links, the partitions and the carriers taken down."""
    result: dict[str, Any] = json.loads(ok(sw, "link", "--json"))
    return result


def stage_stats(sw: Switch, port: str, direction: str) -> dict[str, int]:
    """What port's stage in direction counted (passed, lost, ...), from `vswitch link --json`."""
    for entry in link_json(sw)["links"]:
        if entry["port"] == port and direction in entry:
            stats: dict[str, int] = entry[direction]["stats"]
            return stats
    pytest.fail(f"{port} has no {direction} stage: {link_json(sw)}")


def drops(sw: Switch, port: str) -> dict[str, int]:
    """The drop ledger of port, by reason, from `vswitch stats --json`."""
    result: dict[str, int] = sw.query("stats")["ports"][port]["drops"]
    return result


# --- ping -------------------------------------------------------------------------------------------
REPLY = re.compile(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms( \(DUP!\))?")
SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass
class Ping:
    """One bounded `ping` run: its output, its replies (sequence, RTT in ms, duplicate?) and summary."""

    out: str
    replies: list[tuple[int, float, bool]]
    transmitted: int
    received: int

    @property
    def answered(self) -> set[int]:
        return {seq for seq, _, dup in self.replies if not dup}


def ping(ns: str, dst: str, count: int, interval: str = "0.2", wait: str = "1") -> Ping:
    """`ping -n -c COUNT -i INTERVAL -W WAIT DST` in ns, bounded in time, its output parsed."""
    argv = ["ping", "-n", "-c", str(count), "-i", interval, "-W", wait, dst]
    bound = count * float(interval) + float(wait) + 15
    out = netns_exec(ns, argv, timeout=bound, check=False).stdout
    summary = SUMMARY.search(out)
    assert summary is not None, out
    replies = [(int(m[1]), float(m[2]), bool(m[3])) for m in REPLY.finditer(out)]
    return Ping(out, replies, int(summary[1]), int(summary[2]))


# --- UDP and the kernel's counters ----------------------------------------------------------------------
# Run inside a namespace: bind UDP ADDR:PORT, print "ready", count datagrams until a line on stdin (or
# argv[3] seconds), then count what is still queued and print {"datagrams": N}. A test that expects
# nothing stops it only after the switch has counted everything it sent on (or dropped).
UDP_SINK = """
import json, select, socket, sys, time
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    got, deadline = 0, time.monotonic() + float(sys.argv[3])
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock, sys.stdin], [], [], left)
        if sock in readable:
            sock.recv(65536)
            got += 1
        if sys.stdin in readable:
            break
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            got += 1
    except BlockingIOError:
        pass
print(json.dumps({"datagrams": got}))
"""


def udp_sink(env: Env, ns: str, bind: str, port: int) -> subprocess.Popen[str]:
    """UDP_SINK in ns, listening; stopped with stop_peer() (or in teardown)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", UDP_SINK, bind, str(port), "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    env.peers.append(proc)
    assert read_line(proc, 15, f"UDP sink in {ns}") == "ready"
    return proc


def udp_send(env: Env, ns: str, dst: str, port: int, count: int, size: int = 200) -> None:
    sent = env.run_peer(ns, "udp-send", "--host", dst, "--port", str(port), "--sizes", str(size),
                        "--count", str(count), "--timeout", "10")  # fmt: skip
    assert sent["sent"] == count


def udp_counter(ns: str, name: str) -> int:
    """One Udp counter of ns's kernel (/proc/net/snmp), e.g. InDatagrams or InCsumErrors."""
    lines = [line.split() for line in netns_exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()]
    header, values = (line for line in lines if line[0] == "Udp:")
    return int(values[header.index(name)])


def pin_neighbours(ports: dict[str, str]) -> None:
    """Permanent ARP entries between every pair of {namespace: address}: a partition or a lossy link
    must not depend on ARP getting through."""
    macs = {ns: mac_of(ns) for ns in ports}
    for ns in ports:
        for other, address in ports.items():
            if other != ns:
                argv = ["ip", "-n", ns, "neigh", "replace", address, "lladdr", macs[other]]
                subprocess.run([*argv, "dev", "eth0", "nud", "permanent"], check=True, timeout=CLI_TIMEOUT)


def flags(ns: str) -> set[str]:
    """eth0's link flags in ns, as `ip link` shows them (NO-CARRIER, LOWER_UP, UP, ...)."""
    return set(links(ns)["eth0"]["flags"])


def two_ports(env: Env, *args: str) -> tuple[Switch, str, str, str]:
    """A switch with ports a (10.0.0.1) and b (10.0.0.2): (switch, a, b, b's address)."""
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b, args=args)
    assert addresses_of(sw) == {a: "10.0.0.1", b: "10.0.0.2"}
    return sw, a, b, "10.0.0.2"


# --- loss, duplication, delay ---------------------------------------------------------------------------
def test_loss_100_percent_stops_a_ping_and_clear_restores_it(env: Env) -> None:
    sw, a, _, ip_b = two_ports(env)
    assert ping(a, ip_b, 2).received == 2
    out = ok(sw, "link", a, "--loss", "100%")
    assert a in out and "loss" in out, out

    lost = ping(a, ip_b, 3)
    assert (lost.transmitted, lost.received) == (3, 0), lost.out
    assert stage_stats(sw, a, "in")["lost"] >= 3  # the echo requests (and any ARP) went into a's in stage
    assert drops(sw, a)["impair-loss"] >= 3

    ok(sw, "link", a, "--clear")
    assert link_json(sw)["links"] == []
    back = ping(a, ip_b, 3)
    assert (back.transmitted, back.received) == (3, 3), back.out


def test_seeded_loss_on_one_direction_counts_and_repeats_exactly(env: Env) -> None:
    """30 % of a's ICMP, seeded: the replies are the requests minus what the stage lost, and the same
    seed, set again on the same sequence of packets, loses the same ping sequence numbers."""
    sw, a, b, ip_b = two_ports(env)
    pin_neighbours({a: "10.0.0.1", b: ip_b})
    count = 200
    args = ("link", a, "--direction", "in", "--loss", "30%", "--seed", "7", "-f", "icmp")

    def run() -> set[int]:
        ok(sw, *args)
        before = drops(sw, a).get("impair-loss", 0)
        result = ping(a, ip_b, count, interval="0.01")
        assert result.transmitted == count, result.out
        stats = stage_stats(sw, a, "in")
        assert stats["lost"] + stats["passed"] == count, stats  # every request, and only them, selected
        assert result.received == len(result.answered) == count - stats["lost"], (result.out, stats)
        assert drops(sw, a)["impair-loss"] - before == stats["lost"]
        ok(sw, "link", a, "--clear")
        return set(range(1, count + 1)) - result.answered

    first = run()
    assert 30 <= len(first) <= 90, sorted(first)  # 30 % of 200, give or take (this seed's draw)
    second = run()
    assert second == first


def test_duplicate_100_percent_shows_dup_replies(env: Env) -> None:
    sw, a, _, ip_b = two_ports(env)
    ok(sw, "link", a, "--duplicate", "100%")
    result = ping(a, ip_b, 3)
    dups = [seq for seq, _, dup in result.replies if dup]
    assert "DUP!" in result.out and len(dups) >= 3, result.out
    assert result.answered == {1, 2, 3}
    assert stage_stats(sw, a, "in")["duplicated"] >= 3


def test_rtt_is_at_least_the_delay_both_ways(env: Env) -> None:
    sw, a, _, ip_b = two_ports(env)
    ok(sw, "link", a, "--delay", "40ms")
    result = ping(a, ip_b, 20, "0.05")
    assert result.received == 20, result.out
    rtts = [rtt for _, rtt, _ in result.replies]
    # 40 ms in a's in stage, 40 ms in its out: a lower bound only (the stages stamp and release on
    # CLOCK_MONOTONIC itself, not uvloop's millisecond loop.time(), which let frames go up to 1 ms early)
    assert len(rtts) == 20 and min(rtts) >= 80.0, result.out
    assert stage_stats(sw, a, "in")["delayed"] >= 4 and stage_stats(sw, a, "out")["delayed"] >= 4


# --- corruption (through the control socket, as a script would) -------------------------------------------
def test_corrupt_100_percent_out_fails_the_receivers_udp_checksums(env: Env) -> None:
    sw, a, b, ip_b = two_ports(env)
    pin_neighbours({a: "10.0.0.1", b: ip_b})
    entry = request(sw.socket_path, "link", op="set", port=b, direction="out", impairment={"corrupt": 1.0})
    assert entry["port"] == b and entry["out"]["settings"] == {"corrupt": 1.0} and "in" not in entry

    count = 50
    sink = udp_sink(env, b, ip_b, 7777)
    errors = udp_counter(b, "InCsumErrors")
    udp_send(env, a, ip_b, 7777, count)
    wait_for(
        lambda: udp_counter(b, "InCsumErrors") - errors >= count, 10, f"{count} UDP checksum errors in {b}"
    )
    assert stop_peer(sink, 10, f"UDP sink in {b}") == {"datagrams": 0}
    stats = request(sw.socket_path, "link")["links"][0]["out"]["stats"]
    assert stats["corrupted"] >= count


# --- partitions -------------------------------------------------------------------------------------------
def test_partition_stops_a_to_b_only_heal_restores_and_one_way_drops_one_way(env: Env) -> None:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    sw = env.switch(a, b, c)
    ip = addresses_of(sw)
    pin_neighbours(ip)

    out = ok(sw, "partition", a, "/", b)
    assert f"{a} / {b}" in out, out
    assert ping(a, ip[b], 2).received == 0
    assert ping(b, ip[a], 2).received == 0
    assert ping(a, ip[c], 2).received == 2 and ping(b, ip[c], 2).received == 2
    assert drops(sw, a)["partitioned"] >= 2 and drops(sw, b)["partitioned"] >= 2
    assert link_json(sw)["partitions"] == [f"{a} / {b}"]

    assert "healed 1 partition" in ok(sw, "heal")
    assert link_json(sw)["partitions"] == []
    assert ping(a, ip[b], 2).received == 2

    # One way: a -> b dropped, b -> a arrives.
    ok(sw, "partition", a, "--to", b)
    count = 20
    before = drops(sw, a).get("partitioned", 0)
    sink_b = udp_sink(env, b, ip[b], 7001)
    udp_send(env, a, ip[b], 7001, count)
    wait_for(lambda: drops(sw, a).get("partitioned", 0) - before >= count, 10, f"{count} drops a -> b")
    assert stop_peer(sink_b, 10, f"UDP sink in {b}") == {"datagrams": 0}
    sink_a = udp_sink(env, a, ip[a], 7002)
    received = udp_counter(a, "InDatagrams")
    udp_send(env, b, ip[a], 7002, count)
    wait_for(lambda: udp_counter(a, "InDatagrams") - received >= count, 10, f"{count} datagrams b -> a")
    assert stop_peer(sink_a, 10, f"UDP sink in {a}") == {"datagrams": count}
    assert "healed 1 partition" in ok(sw, "heal")


def test_partition_between_routed_segments_stops_routed_pings(env: Env) -> None:
    n1, n2, n3 = env.ns("1"), env.ns("2"), env.ns("3")
    sw = env.router("--segment", f"lan={n1},{n2}", "--segment", f"dmz={n3}")
    ip = addresses_of(sw)
    assert ip == {n1: "10.1.0.2", n2: "10.1.0.3", n3: "10.2.0.2"}
    assert ping(n1, ip[n3], 1).received == 1  # the router has learned its neighbours

    ok(sw, "partition", f"{n1},{n2}", "/", n3)  # the lan's two ports on one side, the dmz's on the other
    assert link_json(sw)["partitions"] == [f"{n1},{n2} / {n3}"]
    assert ping(n1, ip[n3], 2).received == 0 and ping(n2, ip[n3], 2).received == 0
    assert ping(n3, ip[n1], 2).received == 0
    assert ping(n1, ip[n2], 2).received == 2  # the same side, the same segment
    assert ping(n1, "10.2.0.1", 2).received == 2  # the router itself is on no side
    assert drops(sw, n1)["partitioned"] >= 2 and drops(sw, n3)["partitioned"] >= 2
    ok(sw, "heal")
    assert ping(n1, ip[n3], 2).received == 2 and ping(n3, ip[n2], 2).received == 2


# --- the link's state: down, carrier, flaps -------------------------------------------------------------
def test_down_with_carrier_shows_no_carrier_and_clear_brings_lower_up(env: Env) -> None:
    sw, a, _, ip_b = two_ports(env)
    assert "LOWER_UP" in flags(a)
    ok(sw, "link", a, "--down", "--carrier")
    wait_for(lambda: "NO-CARRIER" in flags(a), 5, f"NO-CARRIER on eth0 in {a}")
    assert "LOWER_UP" not in flags(a)
    assert link_json(sw)["carrier_down"] == [a]

    ok(sw, "link", a, "--clear")
    wait_for(lambda: "LOWER_UP" in flags(a), 5, f"LOWER_UP on eth0 in {a}")
    assert "NO-CARRIER" not in flags(a) and link_json(sw)["carrier_down"] == []
    assert pings(a, ip_b)


def test_down_without_carrier_drops_but_keeps_lower_up(env: Env) -> None:
    sw, a, b, ip_b = two_ports(env)
    pin_neighbours({a: "10.0.0.1", b: ip_b})  # so the pings themselves are what the down link drops
    ok(sw, "link", a, "--down")
    assert ping(a, ip_b, 2).received == 0
    assert "LOWER_UP" in flags(a) and link_json(sw)["carrier_down"] == []
    assert stage_stats(sw, a, "in")["down-dropped"] >= 2 and drops(sw, a)["link-down"] >= 2


def test_flap_with_carrier_is_seen_down_and_up(env: Env) -> None:
    sw, a, _, _ = two_ports(env)
    ok(sw, "link", a, "--flap", "1s/500ms", "--carrier")
    wait_for(lambda: "NO-CARRIER" in flags(a), 5, f"a flap's NO-CARRIER in {a}")
    wait_for(lambda: "LOWER_UP" in flags(a), 5, f"a flap's LOWER_UP again in {a}")
    wait_for(lambda: "NO-CARRIER" in flags(a), 5, f"the next flap's NO-CARRIER in {a}")
    ok(sw, "link", a, "--clear")
    wait_for(lambda: "LOWER_UP" in flags(a), 5, f"LOWER_UP in {a} after the flap is cleared")


# --- rate and filter ------------------------------------------------------------------------------------
def test_rate_1mbit_delays_a_bounded_tcp_transfer_that_completes(env: Env) -> None:
    sw, a, b, ip_b = two_ports(env)
    ok(sw, "link", b, "--rate", "1mbit")
    transfer(env, a, b, ip_b, 200_000, seed=20)
    out_stats = stage_stats(sw, b, "out")  # the data, shaped toward b
    assert out_stats["delayed"] > 0, out_stats
    assert out_stats["passed"] + out_stats["delayed"] >= 200_000 // 1448  # wire packets, not super-frames


def test_filter_impairs_only_the_matching_frames(env: Env) -> None:
    sw, a, b, ip_b = two_ports(env)
    pin_neighbours({a: "10.0.0.1", b: ip_b})
    ok(sw, "link", a, "-f", "udp port 9999", "--loss", "100%")
    count = 20
    sink = udp_sink(env, b, ip_b, 9999)
    udp_send(env, a, ip_b, 9999, count)
    wait_for(lambda: stage_stats(sw, a, "in").get("lost", 0) >= count, 10, f"{count} datagrams lost")
    assert stop_peer(sink, 10, f"UDP sink in {b}") == {"datagrams": 0}

    other = udp_sink(env, b, ip_b, 9998)  # another port: not selected, so it arrives
    received = udp_counter(b, "InDatagrams")
    udp_send(env, a, ip_b, 9998, count)
    wait_for(lambda: udp_counter(b, "InDatagrams") - received >= count, 10, f"{count} datagrams to 9998")
    assert stop_peer(other, 10, f"UDP sink in {b}") == {"datagrams": count}
    assert ping(a, ip_b, 3).received == 3
    stats = stage_stats(sw, a, "in")
    assert stats["lost"] == count and stats["bypassed"] >= count + 3, stats


# --- the Python API -------------------------------------------------------------------------------------
def test_api_impair_as_a_context_manager(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from vswitch.api import Switch as ApiSwitch

    monkeypatch.setenv("VSWITCH_RUN_DIR", str(env.run_dir))
    a, b = env.ns("a"), env.ns("b")
    with ApiSwitch(ports=[a, b], name=env.instance_name()) as sw:
        ip_b = sw.address(b)
        assert ping(a, ip_b, 1).received == 1
        with sw.impair(a, loss=1.0) as impaired:
            assert impaired.entry["in"]["settings"] == {"loss": 1.0}
            assert ping(a, ip_b, 2).received == 0
            assert [entry["port"] for entry in sw.links()["links"]] == [a]
        assert sw.links()["links"] == []
        assert ping(a, ip_b, 2).received == 2
        with sw.partition(a, [b]) as parted:
            assert parted.partitions == [f"{a} / {b}"]
            assert ping(a, ip_b, 2).received == 0
        assert sw.links()["partitions"] == [] and ping(a, ip_b, 2).received == 2
        with pytest.raises(ValueError, match="loss"):
            sw.impair(a, loss=2.0)
        with pytest.raises(ValueError, match="nosuch"):
            sw.impair("nosuch", delay=0.001)


# --- bad input, listing and metrics ----------------------------------------------------------------------
def test_bad_link_input_is_one_error_line_and_changes_nothing(env: Env) -> None:
    sw, a, _, _ = two_ports(env)
    for args, words in [
        (("NOSUCHPORT", "--delay", "1ms"), "NOSUCHPORT"),
        ((a, "--loss", "200%"), "--loss"),
        ((a, "--delay", "40"), "--delay"),  # a bare number: no unit
        ((a, "--direction", "sideways", "--delay", "1ms"), "sideways"),
        ((a, "--carrier", "--delay", "1ms"), "--carrier"),  # a carrier needs --down or --flap
        ((a, "-f", "udp port", "--loss", "1%"), "udp port"),  # not a capture filter
    ]:
        proc = vswitch(sw, "link", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and proc.stdout == "", (args, proc.stdout)
        assert len(lines) == 1 and lines[0].startswith("vswitch: error:") and words in lines[0], (args, lines)
    bad = vswitch(sw, "partition", a, "/", "NOSUCHPORT")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert link_json(sw) == {"links": [], "partitions": [], "carrier_down": []}  # nothing was set
    assert sw.alive()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_link_lists_the_impaired_port_and_metrics_count_it(env: Env) -> None:
    port = free_port()
    sw, a, b, ip_b = two_ports(env, "--metrics", f"127.0.0.1:{port}")
    ok(sw, "link", b, "--direction", "out", "--delay", "5ms", "--loss", "100%", "-f", "icmp")
    assert ping(a, ip_b, 3).received == 0

    table = ok(sw, "link")
    (row,) = [line.split() for line in table.splitlines() if line.split()[:1] == [b]]
    assert row[1] == "out" and "lost=3" in row, table
    assert "100%" in table and "'icmp'" in table, table  # the impairment, in the table's words
    assert "partitions: none" in table
    (entry,) = link_json(sw)["links"]
    assert entry["port"] == b and "in" not in entry
    assert entry["out"]["settings"] == {"delay": 0.005, "loss": 1.0, "filter": "icmp"}
    assert entry["out"]["stats"]["lost"] == 3
    assert sw.query("status")["emulation"]["links"][0]["port"] == b

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("direction", "out"), ("port", b), ("what", "lost"))
    assert values["vswitch_link_packets_total", labels] == 3
    assert values["vswitch_partitions", ()] == 0

"""Issue 23's protections in real namespaces, each beside its negative control: the same test with the
protection off shows the harm it prevents. Frames a well-behaved host would never send come from a raw
socket in the misbehaving port's namespace; the harm is read from the kernel of the other namespaces
(their neighbour tables, their interfaces' counters) and from the switch's own tables and ledger."""

from __future__ import annotations

import json
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import Any

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from .clients import run_dhclient
from .conftest import Env, Switch, netns_exec, wait_for

# Frames (hex, one a line, on stdin) written to an interface from a raw socket, as fast as it goes:
# ENOBUFS (the qdisc full) is retried, so every frame is sent; prints the count.
RAW_SEND = r"""
import socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
frames = [bytes.fromhex(line) for line in sys.stdin.read().split()]
sent = 0
for frame in frames:
    while True:
        try:
            sock.send(frame)
            break
        except BlockingIOError:
            time.sleep(0.0005)
        except OSError as exc:
            if exc.errno != 105:
                raise
            time.sleep(0.0005)
    sent += 1
print(sent)
"""

BROADCAST = "ff:ff:ff:ff:ff:ff"


def raw_send(ns: str, frames: list[bytes], ifname: str = "eth0") -> int:
    proc = netns_exec(ns, [sys.executable, "-c", RAW_SEND, ifname], input="\n".join(f.hex() for f in frames))
    return int(proc.stdout)


def port(sw: Switch, ns: str) -> dict[str, Any]:
    return next(p for p in sw.table["ports"] if p["port"] == ns)


def address(sw: Switch, ns: str) -> str:
    return str(IPv4Interface(port(sw, ns)["address"]).ip)


def drops(sw: Switch, ns: str) -> dict[str, int]:
    result: dict[str, int] = sw.request("stats")["ports"][ns]["drops"]
    return result


def events(sw: Switch) -> dict[str, int]:
    result: dict[str, int] = sw.request("stats")["events"]
    return result


def rx_packets(ns: str, ifname: str = "eth0") -> int:
    return int(netns_exec(ns, ["cat", f"/sys/class/net/{ifname}/statistics/rx_packets"]).stdout)


def ping(ns: str, target: str, count: int = 3) -> bool:
    proc = netns_exec(ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", target], check=False)
    return proc.returncode == 0


# --- per-port MAC limit ---------------------------------------------------------------------------
def flood_macs(sw: Switch, ns: str, count: int) -> None:
    """count frames from count new source MACs, to a MAC nobody has (so each would flood)."""
    frames = [
        bytes(Ether(src=f"02:5a:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}:01", dst="02:99:99:99:99:99")
              / IP(src="10.0.0.250", dst="10.0.0.251") / UDP(sport=9, dport=9))
        for i in range(count)
    ]  # fmt: skip
    assert raw_send(ns, frames) == count


def learned_on(sw: Switch, ns: str) -> int:
    return sum(1 for row in sw.request("fdb") if row["port"] == ns)


def mac_of(sw: Switch, ns: str) -> str:
    return str(port(sw, ns)["mac"])


NEWCOMER = "02:5e:00:00:00:01"  # a host that appears behind b after the flood (a new container)


def newcomer_learned(sw: Switch, b: str) -> bool:
    """b's newcomer says something; whether the switch could learn it."""
    raw_send(b, [bytes(Ether(src=NEWCOMER, dst=BROADCAST) / IP(src="10.0.0.241", dst="10.0.0.255") / UDP())])
    return any(row["mac"] == NEWCOMER and row["port"] == b for row in sw.request("fdb"))


def test_a_port_over_its_mac_limit_cannot_stop_the_others_learning(env: Env) -> None:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    # The negative control: a limit as large as the table, as it was before there was one.
    open_sw = env.switch(a, b, c, args=["--fdb-max", "200", "--port-mac-max", "200"])
    flood_macs(open_sw, a, 1000)
    wait_for(lambda: events(open_sw).get("fdb-full", 0) > 0, 10, "the flood to fill the FDB")
    assert not newcomer_learned(open_sw, b)  # the harm: nobody else learns now
    open_sw.stop()

    sw = env.switch(a, b, c, args=["--fdb-max", "200", "--port-mac-max", "50"])
    flood_macs(sw, a, 1000)
    wait_for(lambda: drops(sw, a).get("port-mac-limit", 0) >= 1000 - 50, 10, "the port-mac-limit drops")
    assert learned_on(sw, a) == 50
    assert newcomer_learned(sw, b)
    assert ping(b, address(sw, c))
    assert events(sw).get("fdb-full", 0) == 0


# --- storm control --------------------------------------------------------------------------------
def broadcasts(count: int) -> list[bytes]:
    return [
        bytes(Ether(src="02:5b:00:00:00:01", dst=BROADCAST) / IP(src="10.0.0.250", dst="10.0.0.255")
              / UDP(sport=9, dport=9) / i.to_bytes(4, "big"))
        for i in range(count)
    ]  # fmt: skip


def test_storm_control_caps_the_broadcasts_one_port_floods(env: Env) -> None:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    storm = broadcasts(3000)
    unlimited = env.switch(a, b, c, args=["--storm-limit", "off"])
    before = rx_packets(b)
    assert raw_send(a, storm) == 3000
    wait_for(lambda: rx_packets(b) - before >= 3000, 10, "every broadcast to reach b without storm control")
    unlimited.stop()

    sw = env.switch(a, b, c, args=["--storm-limit", "200pps"])
    before = rx_packets(b)
    started = time.monotonic()
    assert raw_send(a, storm) == 3000
    seconds = time.monotonic() - started
    # At most 200 a second pass, in the one-second windows the send overlapped (one begun before).
    allowed = 200 * (int(seconds) + 2)
    dropped = wait_for(
        lambda: (d := drops(sw, a).get("storm-broadcast", 0)) >= 3000 - allowed and d,
        10,
        "the broadcasts over the limit to be counted as storm-broadcast",
    )
    wait_for(lambda: rx_packets(b) - before >= 3000 - dropped, 10, "the ones under the limit to reach b")
    assert ping(b, address(sw, c))  # the others' traffic is untouched


# --- loop guard -----------------------------------------------------------------------------------
def bridge_port_into(ns: str, veth: str) -> None:
    """ns's vswitch port (eth0) and veth into a kernel bridge, no STP (the default): a dumb switch."""
    for argv in (
        ["ip", "link", "add", "br0", "type", "bridge", "stp_state", "0"],
        ["ip", "link", "set", "eth0", "master", "br0"],
        ["ip", "link", "set", veth, "master", "br0"],
        ["ip", "link", "set", veth, "up"],
        ["ip", "link", "set", "br0", "up"],
    ):
        netns_exec(ns, argv)


def make_loop(x: str, y: str) -> None:
    """Join x and y's vswitch ports outside the switch: a veth pair between two kernel bridges."""
    netns_exec(x, ["ip", "link", "add", "lx", "type", "veth", "peer", "name", "ly", "netns", y])
    bridge_port_into(x, "lx")
    bridge_port_into(y, "ly")


def break_loop(x: str) -> None:
    netns_exec(x, ["ip", "link", "del", "lx"])


def floods_reach(sender: str, ns: str) -> None:
    before = rx_packets(ns)
    raw_send(sender, broadcasts(10))
    wait_for(lambda: rx_packets(ns) - before >= 10, 5, f"floods to reach {ns}")


def status(sw: Switch) -> dict[str, Any]:
    result: dict[str, Any] = sw.request("status")
    return result


def test_a_loop_outside_the_switch_is_blocked_and_recovers_by_itself(env: Env) -> None:
    a, b, x, y = env.ns("a"), env.ns("b"), env.ns("x"), env.ns("y")
    sw = env.switch(a, b, x, y, args=["--loop-guard-hold", "2"])
    make_loop(x, y)
    raw_send(a, broadcasts(1))  # one broadcast is enough; the bridges' own IPv6 multicast starts it too
    blocked = wait_for(lambda: status(sw)["protect"]["blocked"], 10, "the loop guard to block a port")
    assert set(blocked) <= {x, y} and len(blocked) == 1
    assert events(sw)["loop-detected"] >= 1
    wait_for(lambda: "loop guard:" in sw.stderr() and "is blocked" in sw.stderr(), 5, "the log line")
    shown = env.vswitch("status", "--name", sw.name)
    assert f"loop guard: port {next(iter(blocked))} is blocked" in shown.stdout
    # The switch stays usable while the loop is there: what reaches b is a trickle, not a storm.
    before = rx_packets(b)
    assert ping(a, address(sw, b), count=5)
    assert rx_packets(b) - before < 500
    break_loop(x)
    wait_for(lambda: not status(sw)["protect"]["blocked"] and "forwards again" in sw.stderr(), 15,
             "the blocked port to come back once the loop is gone")  # fmt: skip
    assert events(sw)["loop-recovered"] >= 1
    for ns in (x, y):  # both ports take floods again
        floods_reach(a, ns)
    assert ping(a, address(sw, b)) and not status(sw)["protect"]["blocked"]


def test_without_the_loop_guard_the_same_loop_is_a_storm(env: Env) -> None:
    a, b, x, y = env.ns("a"), env.ns("b"), env.ns("x"), env.ns("y")
    sw = env.switch(a, b, x, y, args=["--loop-guard", "0", "--storm-limit", "off"])
    make_loop(x, y)
    try:
        before = rx_packets(b)
        raw_send(a, broadcasts(1))
        # One broadcast circles for ever, and every turn floods b again.
        wait_for(lambda: rx_packets(b) - before > 20_000, 20, "the storm to reach b")
        # The MACs flap between x and y all the while (a move a batch: frames come in runs per port),
        # far past the guard's 10 a second, and nothing stops it.
        assert events(sw).get("fdb-moves", 0) > 100
        assert not status(sw)["protect"]["blocked"]
    finally:
        break_loop(x)


def test_a_host_moving_ports_is_not_a_loop(env: Env) -> None:
    """A container moved to another port (a MAC on one port, then another, a few times): no block."""
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    sw = env.switch(a, b, c)
    moving = bytes(
        Ether(src="02:5c:00:00:00:01", dst=BROADCAST) / IP(src="10.0.0.240", dst="10.0.0.255") / UDP()
    )
    for ns in (a, b, a, b, c):  # five moves, each its own send a moment apart
        raw_send(ns, [moving])
    wait_for(lambda: events(sw).get("fdb-moves", 0) >= 4, 5, "the moves to be learned")
    assert events(sw).get("loop-detected", 0) == 0 and not status(sw)["protect"]["blocked"]


# --- port security --------------------------------------------------------------------------------
def neighbour_mac(ns: str, ip: str) -> str | None:
    entries = json.loads(netns_exec(ns, ["ip", "-j", "neigh", "show", ip]).stdout or "[]")
    return next((str(e["lladdr"]) for e in entries if "lladdr" in e), None)


def poison(sw: Switch, attacker: str, victim: str, claimed: str) -> bytes:
    """An ARP request from attacker to victim claiming `claimed`'s address is at attacker's MAC: Linux
    takes the sender's address from a request for its own (RFC 826's merge step)."""
    mac = mac_of(sw, attacker)
    return bytes(
        Ether(src=mac, dst=mac_of(sw, victim))
        / ARP(op=1, hwsrc=mac, psrc=address(sw, claimed), hwdst="00:00:00:00:00:00", pdst=address(sw, victim))
    )


def try_poisoning(sw: Switch, a: str, b: str, c: str, seconds: float) -> str | None:
    """Make c know b's MAC (a ping), then send a's poison for `seconds`; c's entry for b at the end.
    Linux ignores a new address for an entry younger than locktime (1 s), so it is sent for longer."""
    assert ping(c, address(sw, b), count=1)
    frame = poison(sw, a, c, b)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and neighbour_mac(c, address(sw, b)) != mac_of(sw, a):
        raw_send(a, [frame])
        time.sleep(0.1)  # a paced sender, not a synchronisation: the outcome is read below
    return neighbour_mac(c, address(sw, b))


def test_port_security_stops_arp_poisoning_that_an_open_port_lets_through(env: Env) -> None:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    open_sw = env.switch(a, b, c)
    assert try_poisoning(open_sw, a, b, c, seconds=5) == mac_of(open_sw, a)  # the harm
    open_sw.stop()

    sw = env.switch(a, b, c, args=["--port-security", a])
    assert try_poisoning(sw, a, b, c, seconds=2.5) == mac_of(sw, b)
    assert drops(sw, a).get("spoofed-arp", 0) >= 1
    assert ping(a, address(sw, b))  # a's own traffic passes


def test_port_security_names_each_spoofed_source(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b, args=["--port-security", a])
    mine, theirs, to_b = mac_of(sw, a), mac_of(sw, b), address(sw, b)
    spoofed = {
        "spoofed-mac": Ether(src="02:5d:00:00:00:01", dst=theirs) / IP(src=address(sw, a), dst=to_b) / ICMP(),
        "spoofed-ipv4": Ether(src=mine, dst=theirs) / IP(src="10.0.0.99", dst=to_b) / ICMP(),
        "spoofed-ipv6": Ether(src=mine, dst="33:33:00:00:00:01")
        / IPv6(src="2001:db8::99", dst="ff02::1")
        / UDP(),
    }
    for frame in spoofed.values():
        assert raw_send(a, [bytes(frame)] * 5) == 5
    wait_for(lambda: all(drops(sw, a).get(reason, 0) >= 5 for reason in spoofed), 5, "each spoofing counted")
    assert {reason: drops(sw, a)[reason] for reason in spoofed} == dict.fromkeys(spoofed, 5)
    assert ping(a, address(sw, b))  # what a may send still passes


def test_port_security_lets_real_clients_configure_themselves(env: Env) -> None:
    """A secured port's host takes its IPv4 address from ISC dhclient (DISCOVER from 0.0.0.0, the
    lease then its own) and its IPv6 address by SLAAC (DAD, MLD, ND from the EUI-64 addresses): all
    of it passes, both families reach the other host, and not one frame counts as spoofed."""
    a, b = env.ns("a"), env.ns("b")
    sw = env.router("--segment", f"lan={a}=dhcp,{b}", "--subnet6", "fd00:78::/48", "--port-security", a)
    lease = run_dhclient(a, "eth0")
    assert lease.address is not None and lease.address.ip in IPv4Interface("10.1.0.0/24").network
    target = address(sw, b)
    assert ping(a, target)
    target6 = str(IPv6Interface(port(sw, b)["address6"]).ip)
    wait_for(lambda: ping6_ok(a, target6), 10, "a's SLAAC address to reach b")
    assert not {reason: n for reason, n in drops(sw, a).items() if reason.startswith("spoofed-")}
    # The lease is what made a's address its own: another in the subnet is refused.
    spoof = (
        Ether(src=mac_of(sw, a), dst=mac_of(sw, b))
        / IP(src=_other_than(lease.address.ip), dst=target)
        / ICMP()
    )
    raw_send(a, [bytes(spoof)])
    wait_for(lambda: drops(sw, a).get("spoofed-ipv4", 0) == 1, 5, "a foreign source from a to be refused")


def _other_than(mine: IPv4Address) -> str:
    return str(mine + 1 if int(mine) & 0xFF < 250 else mine - 1)


def ping6_ok(ns: str, target: str) -> bool:
    return netns_exec(ns, ["ping", "-6", "-c", "1", "-W", "1", target], check=False).returncode == 0

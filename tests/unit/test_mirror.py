"""Port mirroring (--mirror SRC=DST[,in|out|both]): the parser and the topology's checks, one error line
each; and the shell's copies over AF_UNIX datagram socketpairs (a tap's stand-in, as in test_shell.py):
which frames are copied in each direction, unchanged, that the mirror port is flooded nothing and
sends nothing, and that a full mirror queue costs the copy only."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from conftest import drain_wire, frame, mac, make_readable, socketpair_ports

from vswitch.api import Switch
from vswitch.cli import parse, topology_from_args
from vswitch.config.topology import (
    DEFAULT_IFNAME,
    ConfigError,
    MirrorSpec,
    PortSpec,
    Request,
    build,
    parse_mirror,
    parse_ports,
    parse_segment,
    parse_trunk,
    parse_uplink,
    request_from_toml,
)
from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath
from vswitch.core.wire import BROADCAST_MAC
from vswitch.shell.loop import Shell


# --- parsing ---------------------------------------------------------------------------------------
def test_a_mirror_names_its_source_and_a_new_port_both_directions_by_default() -> None:
    assert parse_mirror("a=m") == MirrorSpec("a", PortSpec("m"), ("in", "out"))
    assert parse_mirror("a=m").direction == "both"
    assert parse_mirror(" a = m:span0 , both ") == MirrorSpec("a", PortSpec("m", "span0"), ("in", "out"))
    assert parse_mirror("a=m,in").directions == ("in",)
    assert parse_mirror("a=m,out").direction == "out"
    named = parse_mirror("a=ids=pid:1234").port
    assert (named.label, named.namespace, named.attached) == ("ids", "/proc/1234/ns/net", True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a", "expected SRC=DST"),
        ("=m", "expected SRC=DST"),
        ("a=", "expected SRC=DST"),
        ("a=m,", "expected SRC=DST"),
        ("a=m,sideways", "direction 'sideways' is none of in, out, both"),
        ("a=m=10.0.0.9/24", "no address"),
        ("a=m=dhcp", "no address"),
        ("a=host", "no address"),
        ("a=bad/name", "invalid"),
    ],
)
def test_a_bad_mirror_is_one_line_that_says_why(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        parse_mirror(text)
    assert "\n" not in str(caught.value)


def mirrors_of(*mirrors: str, ports: str = "a,b,c") -> list[MirrorSpec]:
    return build(Request(ports=parse_ports(ports), mirrors=[parse_mirror(m) for m in mirrors])).mirrors


def test_several_mirrors_one_source_twice_and_the_mirror_port_has_no_address() -> None:
    mirrors = mirrors_of("a=m", "a=n,in", "b=o,out")
    assert [(m.source, m.port.label, m.direction) for m in mirrors] == [
        ("a", "m", "both"), ("a", "n", "in"), ("b", "o", "out"),
    ]  # fmt: skip
    assert all(m.port.address is None and m.port.ifname == DEFAULT_IFNAME for m in mirrors)


@pytest.mark.parametrize(
    ("mirrors", "words"),
    [
        (["z=m"], "there is no port 'z' to mirror"),
        (["a=b"], "b is a port already"),
        (["a=m", "b=m"], "mirror port m is given twice"),
        (["a=m", "b=m:eth1"], "mirror port m is given twice"),
        (["m=n"], "there is no port 'm'"),  # a mirror port is no source
    ],
)
def test_the_topology_refuses_a_mirror_of_nothing_onto_a_port_or_twice_onto_one(
    mirrors: list[str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        mirrors_of(*mirrors)


def test_a_mirror_port_in_the_uplinks_namespace_or_of_a_trunk_is_refused() -> None:
    segments = [parse_segment("lan=a,b")]
    with pytest.raises(ConfigError, match="w is a port already"):
        build(Request(segments=segments, uplink=parse_uplink("w"), mirrors=[parse_mirror("a=w")]))
    trunk = [parse_trunk("t=lan:10")]
    with pytest.raises(ConfigError, match="t is a trunk; mirror a namespace's port"):
        build(Request(segments=segments, trunks=trunk, mirrors=[parse_mirror("t=m")]))
    with pytest.raises(ConfigError, match="t is a trunk already"):
        build(Request(segments=segments, trunks=trunk, mirrors=[parse_mirror("a=t")]))
    uplink = build(Request(segments=segments, uplink=parse_uplink("w"), mirrors=[parse_mirror("w=m")]))
    assert uplink.mirrors[0].source == "w"  # the uplink is a tap port like the others


def test_the_command_line_and_the_toml_file_take_mirrors() -> None:
    args = parse(["up", "--ports", "a,b", "--mirror", "a=m", "--mirror", "b=n,out"])
    assert [(m.source, m.port.label, m.direction) for m in topology_from_args(args).mirrors] == [
        ("a", "m", "both"), ("b", "n", "out"),
    ]  # fmt: skip
    req = request_from_toml('ports = ["a", "b"]\nmirror = ["a=m,in"]\n')
    assert req.mirrors == [parse_mirror("a=m,in")]
    with pytest.raises(ConfigError, match="mirror must be a list of strings"):
        request_from_toml('ports = ["a", "b"]\nmirror = [1]\n')
    assert Switch(ports=["a", "b"], mirrors=["b=m,in"]).topology.mirrors == [parse_mirror("b=m,in")]


# --- the shell's copies ----------------------------------------------------------------------------
H = [mac(i) for i in range(3)]  # host i lives behind port i
SOURCE, MIRROR = 0, 3


@dataclass
class Bench:
    shell: Shell
    datapath: Datapath
    wires: list[socket.socket]  # p0, p1, p2 and the mirror port m (3)
    inner: list[socket.socket]

    def send(self, port: int, pkt: bytes) -> None:
        self.wires[port].send(pkt)
        make_readable(self.shell, port)

    def received(self, port: int) -> list[bytes]:
        return drain_wire(self.wires[port])


def mirrored(directions: Sequence[str]) -> Iterator[Bench]:
    loop = asyncio.new_event_loop()
    dp = Datapath()
    shell = Shell(dp, loop)
    wires, inner = socketpair_ports(dp, shell, 3)
    assert dp.add_mirror("m") == MIRROR
    switch_end, wire_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (switch_end, wire_end):
        end.setblocking(False)
    shell.attach_mirror(MIRROR, switch_end.fileno())
    shell.mirror(SOURCE, MIRROR, directions)
    bench = Bench(shell, dp, [*wires, wire_end], [*inner, switch_end])
    try:
        for port in range(3):  # every host known: unicasts are unicasts
            bench.send(port, frame(H[port], BROADCAST_MAC))
        for port in range(4):
            bench.received(port)
        yield bench
    finally:
        shell.detach_all()
        loop.close()
        for end in bench.wires + bench.inner:
            end.close()


@pytest.fixture
def both() -> Iterator[Bench]:
    yield from mirrored(("in", "out"))


@pytest.fixture
def ingress() -> Iterator[Bench]:
    yield from mirrored(("in",))


@pytest.fixture
def egress() -> Iterator[Bench]:
    yield from mirrored(("out",))


def test_both_copies_what_the_source_sends_and_is_sent_unchanged(both: Bench) -> None:
    request, reply = frame(H[0], H[1], b"request"), frame(H[1], H[0], b"reply")
    both.send(0, request)
    both.send(1, reply)
    assert both.received(1) == [request] and both.received(0) == [reply]
    assert both.received(MIRROR) == [request, reply]  # virtio-net header and all


def test_in_and_out_copy_one_direction_each(ingress: Bench, egress: Bench) -> None:
    request, reply = frame(H[0], H[1], b"request"), frame(H[1], H[0], b"reply")
    for bench in (ingress, egress):
        bench.send(0, request)
        bench.send(1, reply)
    assert ingress.received(MIRROR) == [request]
    assert egress.received(MIRROR) == [reply]


def test_in_copies_a_frame_as_received_even_one_the_switch_then_drops(ingress: Bench) -> None:
    reflected = frame(H[0], H[0], b"to itself")  # its destination is learned on p0: same-port
    ingress.send(0, reflected)
    assert ingress.datapath.counters.drops[SOURCE][Drop.SAME_PORT] == 1
    assert ingress.received(MIRROR) == [reflected]


def test_other_ports_traffic_and_floods_never_reach_the_mirror_port_itself(
    both: Bench, ingress: Bench
) -> None:
    both.send(1, frame(H[1], H[2], b"b to c"))
    assert both.received(2) and both.received(MIRROR) == []  # negative control: p1 <-> p2 unseen
    flood = frame(H[1], BROADCAST_MAC, b"flood")
    both.send(1, flood)
    ingress.send(1, flood)
    assert both.received(MIRROR) == [flood]  # once: the copy of what went to p0, not a flood to m
    assert ingress.received(MIRROR) == []  # p0 sent nothing; m is no member of the flood
    assert ingress.received(0) == [flood] and ingress.received(2) == [flood]


def test_what_the_mirror_port_sends_is_dropped_and_learned_nowhere(both: Bench) -> None:
    counters = both.datapath.counters
    for payload in (b"one", b"two"):
        both.wires[MIRROR].send(frame(mac(9), BROADCAST_MAC, payload))
    make_readable(both.shell, MIRROR)
    assert counters.drops[MIRROR][Drop.MIRROR_PORT] == 2 and counters.rx_packets[MIRROR] == 2
    assert [both.received(port) for port in range(4)] == [[], [], [], []]
    assert mac(9) not in both.datapath.segments[0].switch.fdb.entries


def test_a_full_mirror_queue_costs_the_copy_only(both: Bench) -> None:
    filled = 0
    while True:  # the mirror port's queue, full: its next write would block
        try:
            both.inner[MIRROR].send(b"x")
        except BlockingIOError:
            break
        filled += 1
    assert filled
    counters = both.datapath.counters
    before = counters.tx_packets[1]
    request = frame(H[0], H[1], b"request")
    both.send(0, request)
    assert both.received(1) == [request] and counters.tx_packets[1] == before + 1
    assert counters.drops[MIRROR][Drop.TX_QUEUE_FULL] == 1
    assert not counters.drops[SOURCE] and not counters.drops[1]

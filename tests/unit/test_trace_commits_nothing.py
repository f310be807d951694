"""A trace commits nothing: `vswitch trace` runs the real pipeline (``Datapath.receive``) inside
``Datapath.tracing``, and when the run ends every table is as it was, to the last counter and timer.

``fingerprint`` walks everything reachable from the datapath (FDBs, ARP, conntrack, NAT, the router's
own counts, clocks and tracer, the flow cache, the counters; each table's journal) and flattens it to
path -> value: dicts with their key order (the tables age and evict oldest first), Counters as
ordered items, and every object that other tables hold (an FDB entry, a neighbour, a flow, a queued
frame) with its identity, as the journal must put back the very objects, not equal copies. It is
generic, so ``test_the_fingerprint_sees_every_field`` checks that it sees each field a trace could
change.

The property test drives the flow cache test's random sequences (``steps``/``play`` on its ``Twin``,
plus a few more kinds of frame) and after each step traces a few frames on the cache-on datapath:
the fingerprint must not move, each frame must have its stages, and the trace must show what the same
frames do for real (on a copy, which they do change). The twins must still agree at the end. Then:
each table a frame would change, one at a time; the ``tracing`` context itself (an exception, from
the block or from the pipeline midway; nesting); a trace of a frame that would flush the flow cache.
"""

from __future__ import annotations

import copy
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import FunctionType, MethodType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from test_flowcache import (
    A_IP,
    C_IP,
    FLOWS,
    GATEWAY,
    HOSTS,
    NAT_IP,
    OPENED,
    PORTS,
    REMOTE,
    UP_IP,
    Twin,
    arp,
    echo,
    echo_frame,
    frame,
    play,
    steps,
    tcp,
    udp,
    world,
)

from vswitch.core.conntrack import TcpState
from vswitch.core.datapath import Datapath, Transmit, Verdict
from vswitch.core.journal import Journal
from vswitch.core.wire import ZERO_VNET_HDR
from vswitch.tools.debug.trace import Trace, outputs, trace, trace_many

Step = tuple[Any, ...]
UNKNOWN_MAC = "02:00:00:00:09:09"
NEW_MAC = "02:00:00:00:77:77"
LATE_MAC = "02:00:00:00:07:07"  # the host at an address nobody answered for until now


# --- the fingerprint ------------------------------------------------------------------------------------
class Same:
    """An object compared by identity (it holds the object, so its id cannot be reused meanwhile)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __repr__(self) -> str:
        return f"<the {type(self.obj).__name__} at {id(self.obj):#x}>"


VALUES = (type(None), int, float, str, bytes)  # bool and the enums (IntEnum, StrEnum) among them
TEXT = (IPv4Address, IPv4Interface, IPv4Network)  # immutable; compared as they print
# Restored by value, not in place, and held by nobody else (Nat.journal_restore gives a PortAllocator
# a new `used` set and a HeldFragments a new `frames` list): compared by value only. Every other
# mutable thing (a table's dict, a Counter, a deque, a bytearray, an entry, a flow) must come back as
# the very object, as other tables hold it.
BY_VALUE = (list, set, frozenset, tuple)


def outputs_of(dp: Datapath, verdict: Verdict, pkt: bytes) -> list[tuple[str, bytes]]:
    """A verdict as trace shows it (the trace tool's own mapping, for the real run beside it)."""
    return outputs(verdict, pkt, dp.counters.names)


def fingerprint(dp: Datapath) -> dict[str, Any]:
    """Everything reachable from the datapath, flattened: path -> value. Dicts with their key order
    (the FDB, ARP, conntrack and flow-cache dicts are aged or evicted oldest first), Counters as
    ordered items (Counter equality would ignore a zero count), objects with their identity and every
    attribute, bound callbacks with their object. Plus the one derived value the shell reads,
    ``next_deadline()``. The tables are walked first, so a path names the table it is in."""
    router, flows = dp.router, dp.flows
    assert router is not None and router.nat is not None and flows is not None
    out: dict[str, Any] = {"next_deadline()": dp.next_deadline()}
    first_seen: dict[int, str] = {}
    via_methods: list[tuple[str, object]] = []

    def label(key: object, index: int) -> str:
        return repr(key) if isinstance(key, VALUES) else f"#{index}"

    def walk(path: str, obj: object) -> None:
        if isinstance(obj, VALUES):
            out[path] = obj
            return
        if isinstance(obj, TEXT):
            out[path] = str(obj)
            return
        if isinstance(obj, struct.Struct):
            out[path] = ("Struct", obj.format)
            return
        if id(obj) in first_seen:  # shared, or a cycle: the same object as there
            out[path] = ("same as", first_seen[id(obj)], Same(obj))
            return
        first_seen[id(obj)] = path
        if not isinstance(obj, BY_VALUE):
            out[path + " is"] = Same(obj)
        if isinstance(obj, (list, tuple, deque)):
            out[path] = (type(obj).__name__, len(obj), getattr(obj, "maxlen", None))
            for index, item in enumerate(obj):
                walk(f"{path}[{index}]", item)
        elif isinstance(obj, (set, frozenset)):
            out[path] = (type(obj).__name__, sorted(obj, key=repr))
        elif isinstance(obj, dict):
            out[path] = (type(obj).__name__, [label(key, i) for i, key in enumerate(obj)])
            for index, (key, value) in enumerate(obj.items()):
                if not isinstance(key, VALUES):
                    walk(f"{path}{{{label(key, index)}}}", key)
                walk(f"{path}[{label(key, index)}]", value)
        elif isinstance(obj, bytearray):
            out[path] = ("bytearray", bytes(obj))
        elif isinstance(obj, MethodType):  # a callback: its function and the very object it calls
            out[path] = ("method", obj.__func__.__qualname__, Same(obj.__self__))
            via_methods.append((path + ".__self__", obj.__self__))
        elif isinstance(obj, FunctionType):
            out[path] = ("function", obj.__qualname__)
        else:
            out[path] = type(obj).__qualname__
            for name, value in attributes(obj).items():
                walk(f"{path}.{name}", value)

    walk("counters", dp.counters)
    for index, seg in enumerate(dp.segments):
        walk(f"fdb[{index}]", seg.switch.fdb)
    walk("arp", router.arp)
    walk("conntrack", router.nat.conntrack)
    walk("nat", router.nat)
    walk("router", router)
    walk("flows", flows)
    walk("dp", dp)
    while via_methods:  # anything reachable only through a callback
        walk(*via_methods.pop(0))
    return out


def attributes(obj: object) -> dict[str, Any]:
    """An object's attributes: its __dict__ and its slots."""
    found = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                found[name] = getattr(obj, name)
    return found


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a failed comparison shows: the paths that differ, a few of them."""
    paths = [p for p in {**before, **after} if before.get(p, "(absent)") != after.get(p, "(absent)")]
    return [f"{p}: {before.get(p, '(absent)')!r} -> {after.get(p, '(absent)')!r}" for p in paths[:12]]


def part(fp: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The paths under prefix (one table, or one of its fields)."""
    return {path: value for path, value in fp.items() if path.startswith(prefix)}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after == before, "\n".join(differences(before, after))


def shadow_of(dp: Datapath) -> Datapath:
    """A deep copy to run frames on for real (a Struct cannot be copied: shared, it is immutable)."""
    structs = {id(v): v for v in structs_in(dp)}
    return copy.deepcopy(dp, structs)


def structs_in(dp: Datapath) -> list[struct.Struct]:
    """Every Struct reachable from the datapath (the flow cache's actions hold their layouts)."""
    found: list[struct.Struct] = []
    seen: set[int] = set()
    stack: list[object] = [dp]
    while stack:
        obj = stack.pop()
        if isinstance(obj, VALUES + TEXT) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, struct.Struct):
            found.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, deque, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, MethodType):
            stack.append(obj.__self__)
        elif not isinstance(obj, (FunctionType, bytearray)):
            stack.extend(attributes(obj).values())
    return found


def busy_state() -> Twin:
    """A twin whose on side has something in every table the fingerprint reads: open and cached
    flows, a held fragment and a remembered first one, a failed and a pending next hop."""
    twin = warm_twin()
    for step in (
        ("unresolved", "a", "10.2.0.77"),
        ("time", 5.0),  # 10.2.0.77 failed: in the negative cache
        ("unresolved", "c", "10.1.0.77"),  # pending, its frame queued
        ("fragments", "later only", 1),  # held
        ("fragments", "first only", 2),  # remembered
        ("echo", 1, False, 9, "complete", 64, None),
        ("echo", 1, False, 9, "complete", 64, None),  # an echo entry in the flow cache
    ):
        perform(twin, step)
    return twin


def edit_fdb(dp: Datapath) -> Any:
    return dp.segments[0].switch.fdb


def edit_arp(dp: Datapath) -> Any:
    assert dp.router is not None
    return dp.router.arp


def edit_nat(dp: Datapath) -> Any:
    assert dp.router is not None and dp.router.nat is not None
    return dp.router.nat


def edit_flow(dp: Datapath) -> Any:
    return next(iter(edit_nat(dp).conntrack.flows))


def edit_flows(dp: Datapath) -> Any:
    return dp.flows


def first_entry(table: dict[Any, Any]) -> Any:
    return next(iter(table.values()))


def to_end(table: dict[Any, Any]) -> None:
    """The oldest entry becomes the newest: the same items, in another order."""
    assert len(table) > 1
    key = next(iter(table))
    table[key] = table.pop(key)


def add(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, getattr(obj, name) + value)


def twin_of(entry: Any) -> Any:
    """An equal copy: the fingerprint must tell it from the object other tables hold."""
    return copy.copy(entry)


def replace_first(table: dict[Any, Any]) -> None:
    key = next(iter(table))
    table[key] = twin_of(table[key])


# Each thing the fingerprint must see, changed alone (on a copy of the busy state).
EDITS: dict[str, Callable[[Datapath], None]] = {
    "fdb entry port": lambda dp: add(first_entry(edit_fdb(dp).entries), "port", 1),
    "fdb entry seen": lambda dp: add(list(edit_fdb(dp).entries.values())[-1], "seen", 0.25),
    "fdb entry static": lambda dp: setattr(first_entry(edit_fdb(dp).entries), "static", False),
    "fdb entry order": lambda dp: to_end(edit_fdb(dp).entries),
    "fdb entry identity": lambda dp: replace_first(edit_fdb(dp).entries),
    "fdb _learned": lambda dp: add(edit_fdb(dp), "_learned", 1),
    "fdb _next_pass": lambda dp: add(edit_fdb(dp), "_next_pass", 1.0),
    "arp entry mac": lambda dp: setattr(first_entry(edit_arp(dp).entries), "mac", bytes(6)),
    "arp entry iface": lambda dp: add(first_entry(edit_arp(dp).entries), "iface", 1),
    "arp entry updated": lambda dp: add(first_entry(edit_arp(dp).entries), "updated", 0.25),
    "arp entry probed": lambda dp: setattr(first_entry(edit_arp(dp).entries), "probed", 3.0),
    "arp entry order": lambda dp: to_end(edit_arp(dp).entries),
    "arp entry identity": lambda dp: replace_first(edit_arp(dp).entries),
    "arp pending tries": lambda dp: add(first_entry(edit_arp(dp).pending), "tries", 1),
    "arp pending next_try": lambda dp: add(first_entry(edit_arp(dp).pending), "next_try", 1.0),
    "arp pending queue length": lambda dp: first_entry(edit_arp(dp).pending).queue.popleft(),
    "arp pending frame bytes": lambda dp: first_entry(edit_arp(dp).pending).queue[0][0].__setitem__(10, 1),
    "arp pending identity": lambda dp: replace_first(edit_arp(dp).pending),
    "arp failed": lambda dp: edit_arp(dp).failed.clear(),
    "arp queued_bytes": lambda dp: add(edit_arp(dp), "queued_bytes", 1),
    "arp _next_sweep": lambda dp: add(edit_arp(dp), "_next_sweep", 1.0),
    "flow expires": lambda dp: add(edit_flow(dp), "expires", 1.0),
    "flow state": lambda dp: setattr(edit_flow(dp), "state", TcpState.CLOSE),
    "flow assured": lambda dp: setattr(edit_flow(dp), "assured", not edit_flow(dp).assured),
    "flow replied": lambda dp: setattr(edit_flow(dp), "replied", not edit_flow(dp).replied),
    "flow packets": lambda dp: edit_flow(dp).packets.__setitem__(0, 99),
    "flow xlate": lambda dp: edit_flow(dp).xlate.__setitem__(0, None),
    "flow mapping": lambda dp: setattr(edit_flow(dp), "mapping", b"x"),
    "flow created": lambda dp: add(edit_flow(dp), "created", 1.0),
    "conntrack keys order": lambda dp: to_end(edit_nat(dp).conntrack.keys),
    "conntrack flows order": lambda dp: to_end(edit_nat(dp).conntrack.flows),
    "conntrack _unassured": lambda dp: edit_nat(dp).conntrack._unassured.__setitem__(edit_flow(dp), None),
    "conntrack _next_pass": lambda dp: add(edit_nat(dp).conntrack, "_next_pass", 1.0),
    "nat mapping count": lambda dp: first_entry(edit_nat(dp).mappings).__setitem__(1, 9),
    "nat ports used": lambda dp: edit_nat(dp).ports[6].used.add(65000),
    "nat ports cursor": lambda dp: add(edit_nat(dp).ports[6], "cursor", 1),
    "nat fragments": lambda dp: edit_nat(dp).fragments.clear(),
    "nat held frames": lambda dp: first_entry(edit_nat(dp).held).frames.append(b"x"),
    "nat held_bytes": lambda dp: add(edit_nat(dp), "held_bytes", 1),
    "router drops": lambda dp: dp.router.drops.update(["no-route"]),  # type: ignore[union-attr]
    "router events (a zero count)": lambda dp: edit_arp(dp).events.__setitem__("x", 0),
    "router events": lambda dp: edit_arp(dp).events.update(["icmp-rate-limited"]),
    "router _ip_id": lambda dp: add(dp.router, "_ip_id", 1),
    "router icmp tokens": lambda dp: add(dp.router.icmp_bucket, "tokens", -1.0),  # type: ignore[union-attr]
    "router icmp last": lambda dp: setattr(dp.router.icmp_bucket, "last", 1e9),  # type: ignore[union-attr]
    "flow cache order": lambda dp: to_end(edit_flows(dp).tables[0]),
    "flow cache echo": lambda dp: edit_flows(dp).echo_tables[0].clear(),
    "flow cache _full_misses": lambda dp: add(edit_flows(dp), "_full_misses", 1),
    "counters rx": lambda dp: dp.counters.rx_packets.__setitem__(0, 10**6),
    "counters tx bytes": lambda dp: dp.counters.tx_bytes.__setitem__(0, 10**6),
    "counters drops": lambda dp: dp.counters.drops[0].update(["runt"]),
    "counters events": lambda dp: dp.counters.events.update(["fdb-moves"]),
    "counters flow cache hits": lambda dp: add(dp.counters, "flow_cache_hits", 1),
    "counters flow cache misses": lambda dp: add(dp.counters, "flow_cache_misses", 1),
    "a tracer left on the router": lambda dp: setattr(dp.router, "tracer", Recorder()),
    "a journal left on a table": lambda dp: setattr(edit_flows(dp), "journal", Journal()),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_the_fingerprint_sees_every_field(name: str) -> None:
    """The fingerprint is generic (it walks the objects): each field the trace could change must
    show in it, so a test built on it cannot pass by not looking."""
    dp = shadow_of(busy_state().on)
    before = fingerprint(dp)
    EDITS[name](dp)
    assert fingerprint(dp) != before


def traced(trace_result: Trace) -> bool:
    """The pipeline spoke: an L2 stage at least (trace adds the "parse" stage itself)."""
    return any(stage.startswith("L2 ") for stage, _ in trace_result.stages)


def check_trace(dp: Datapath, frames: list[Transmit], now: float) -> list[Trace]:
    """Trace frames in one run: nothing moves, every frame has its stages, and the trace shows what
    the same frames do for real (on a copy, which they do change)."""
    assert frames
    shadow = shadow_of(dp)
    before = fingerprint(dp)
    results = trace_many(dp, frames, now)
    assert_unchanged(before, fingerprint(dp))
    assert len(results) == len(frames) and all(traced(r) for r in results), results
    shadow_before = fingerprint(shadow)
    real = [outputs_of(shadow, shadow.receive(port, pkt, now), pkt) for port, pkt in frames]
    assert [r.outputs for r in results] == real
    assert fingerprint(shadow) != shadow_before  # committed, the frames change state (rx at least)
    return results


# --- frames: the flow cache test's steps, and a few more kinds -------------------------------------------
EXTRA_KINDS = (
    "arp request",
    "unknown mac",
    "new flow",
    "ping router",
    "unresolved",
    "fragments",
    "icmp error",
    "answer",
)
FRAGMENT_ORDERS = ["in order", "later first", "later only", "first only"]


@st.composite
def extras(draw: st.DrawFn) -> Step:
    kind = draw(st.sampled_from(EXTRA_KINDS))
    if kind == "arp request":  # a host asks for its gateway (with another MAC: it changed)
        return (kind, draw(st.sampled_from(list(HOSTS))), draw(st.booleans()))
    if kind == "unknown mac":  # unicast to a MAC no FDB knows: flooded
        return (kind, draw(st.sampled_from(list(HOSTS))))
    if kind == "new flow":  # a flow's first packet (a SYN for TCP) from a client port not yet used
        return (kind, draw(st.integers(0, len(FLOWS) - 1)), draw(st.integers(1, 3)))
    if kind == "ping router":  # an echo to the gateway, its ICMP checksum good or bad
        return (kind, draw(st.sampled_from(list(HOSTS))), draw(st.booleans()))
    if kind == "unresolved":  # to an address on a connected subnet nobody answers for: ARP pending
        return (kind, draw(st.sampled_from(list(HOSTS))), draw(st.sampled_from(["10.1.0.77", "10.2.0.77"])))
    if kind == "answer":  # the host at an unresolved address answers at last
        return (kind, draw(st.sampled_from(["10.1.0.77", "10.2.0.77"])))
    if kind == "fragments":  # a NAT-ed UDP datagram in two fragments, or one of them
        return (kind, draw(st.sampled_from(FRAGMENT_ORDERS)), draw(st.sampled_from([1, 2])))
    return (kind, draw(st.sampled_from([(5000, 53), (5001, 5201)])))  # port unreachable about a flow


def play_extra(twin: Twin, step: Step) -> None:
    kind = step[0]
    if kind == "arp request":
        _, host, changed = step
        twin.send(host, arp(host, "request", hwsrc=NEW_MAC if changed else None))
    elif kind == "unknown mac":
        host_mac, host_ip = HOSTS[step[1]]
        pkt = Ether(src=host_mac, dst=UNKNOWN_MAC) / udp(host_ip, "10.1.0.99", 1000, 2000)
        twin.send(step[1], ZERO_VNET_HDR + bytes(pkt))
    elif kind == "new flow":
        _, index, delta = step
        client, _, proto, cport, sport, to, _ = FLOWS[index]
        client_ip = HOSTS[client][1] if client != "up" else (REMOTE if index == 6 else UP_IP)
        ip = (
            tcp(client_ip, to, cport + delta, sport, "S")
            if proto == 6
            else udp(client_ip, to, cport + delta, sport)
        )
        twin.send(client, frame(client, ip))
    elif kind == "ping router":
        _, host, bad = step
        ping = bytearray(echo_frame(host, echo(HOSTS[host][1], GATEWAY[host][1], 0x55)))
        if bad:
            ping[-1] ^= 0xFF  # the payload's last byte: the ICMP checksum no longer verifies
        twin.send(host, bytes(ping))
    elif kind == "unresolved":
        _, host, target = step
        twin.send(host, frame(host, udp(HOSTS[host][1], target, 3000, 4000)))
    elif kind == "answer":
        target = step[1]
        host = "b" if target.startswith("10.1.") else "c"  # a port on that segment
        gw_mac, gw_ip = GATEWAY[host]
        answer = ARP(op=2, hwsrc=LATE_MAC, psrc=target, hwdst=gw_mac, pdst=gw_ip)
        twin.send(host, ZERO_VNET_HDR + bytes(Ether(src=LATE_MAC, dst=gw_mac) / answer))
    elif kind == "fragments":
        _, order, ident = step
        datagram = IP(src=A_IP, dst=REMOTE, id=ident) / UDP(sport=5002, dport=53) / Raw(b"f" * 40)
        first, later = fragment(datagram, fragsize=24)  # type: ignore[no-untyped-call]
        pieces = {"in order": [first, later], "later first": [later, first]}.get(order)
        for piece in pieces or [first if order == "first only" else later]:
            twin.send("a", frame("a", piece))
    else:
        local, remote = step[1]
        error = IP(src=REMOTE, dst=NAT_IP) / ICMP(type=3, code=3) / IP(src=NAT_IP, dst=REMOTE)
        twin.send("up", echo_frame("up", error / UDP(sport=local, dport=remote)))


def perform(twin: Twin, step: Step) -> None:
    if step[0] in EXTRA_KINDS:
        play_extra(twin, step)
    else:
        play(twin, step)


@dataclass
class Collect(Twin):
    """The frames a step would send, collected instead of sent (play() takes a Twin)."""

    frames: list[Transmit] = field(default_factory=list)

    def send(self, port: str, pkt: bytes, dt: float = 0.001, timers: bool = True) -> Verdict:
        self.frames.append((PORTS[port], pkt))
        return None

    def advance(self, dt: float) -> None:
        pass

    def check(self) -> None:
        pass


def frames_of(twin: Twin, to_trace: list[Step]) -> list[Transmit]:
    collect = Collect(twin.on, twin.off)
    for step in to_trace:
        perform(collect, step)
    return collect.frames


def unflipped(step: Step, keep_flip: bool) -> Step:
    """steps() flips a bit of the IPv4 header in all but 2 or 3 in 100 packets and echoes (nearly
    all die at the checksum); here three in four go whole, so they reach conntrack, NAT, ARP, ICMP."""
    return step if keep_flip or step[0] not in ("packet", "echo") else (*step[:-1], None)


flow_steps = st.builds(unflipped, steps(), st.integers(0, 3).map(lambda n: n == 0))
# the steps, and often enough every neighbour going stale, so frames wait for ARP
real_steps = st.one_of(flow_steps, flow_steps, flow_steps, extras(), extras(), st.just(("time", 305.0)))
trace_steps = st.one_of(flow_steps.filter(lambda step: step[0] != "time"), extras())
# when the trace runs: now, or later with no timer run meanwhile (expiries seen only by lookups; at
# 301 s a neighbour in use is probed, at 305 s it is gone)
LATER = [0.0, 0.0, 0.0, 0.5, 31.0, 121.0, 301.0, 305.0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(real_steps, st.lists(trace_steps, min_size=1, max_size=2), st.sampled_from(LATER)),
        min_size=1,
        max_size=20,
    )
)
def test_a_trace_after_any_step_commits_nothing(sequence: list[tuple[Step, list[Step], float]]) -> None:
    twin = Twin.build()
    for index in OPENED:
        play(twin, ("handshake", index))
    for step, to_trace, later in sequence:
        perform(twin, step)
        check_trace(twin.on, frames_of(twin, to_trace), twin.now + later)
    twin.check()  # the traced datapath still matches the one never traced
    for host in HOSTS:  # and carries on: the neighbours answer, a new flow is cached and hit
        play(twin, ("arp", host, False))
    hits = twin.hits
    for _ in range(3):
        twin.send("a", frame("a", udp(A_IP, C_IP, 6999, 7999)))
    assert twin.hits == hits + 2


# --- each table a frame would change, put back --------------------------------------------------------
NO_ANSWER: list[Step] = [("unresolved", "c", "10.1.0.77"), ("time", 5.0)]  # in the negative cache
# (the part a committed run changes, steps played first, the steps traced, when after the last step)
CHANGES: list[tuple[str, list[Step], list[Step], float]] = [
    ("fdb[0].entries", [], [("unknown mac", "a")], 0.5),  # a's entry refreshed (seen)
    ("fdb[0].entries", [], [("move", "a")], 0.0),  # a's MAC moves to b's port
    ("fdb[0]", [], [("arp request", "a", True)], 0.0),  # a new MAC learned
    ("arp.entries", [], [("arp", "c", True)], 0.0),  # c's MAC changes
    ("arp.pending", [], [("unresolved", "a", "10.2.0.77")], 0.0),  # a frame queued, ARP asked
    ("arp.entries", [], [("packet", 2, False, "A", 64, "complete", 0, None)], 301.0),  # probed
    ("conntrack.flows", [], [("new flow", 0, 1)], 0.0),  # a new flow
    ("conntrack.keys", [], [("packet", 0, False, "A", 64, "complete", 0, None)], 0.5),  # counted, refreshed
    ("conntrack.keys", [], [("packet", 0, False, "FA", 64, "complete", 0, None)], 0.0),  # a state change
    ("conntrack.keys", [], [("packet", 1, False, "A", 64, "complete", 0, None)], 121.0),  # expired
    ("conntrack._next_pass", [], [("packet", 0, False, "R", 64, "complete", 0, None)], 0.0),  # 10 s left
    ("nat.mappings", [], [("new flow", 0, 2)], 0.0),  # a new mapping
    ("nat.ports", [], [("new flow", 5, 2)], 0.0),  # its port (a hairpin's)
    ("nat.held", [], [("fragments", "later only", 1)], 0.0),  # held for its first
    ("nat.fragments", [], [("fragments", "first only", 1)], 0.0),  # remembered for the later one
    ("conntrack.flows", [], [("fragments", "later first", 1)], 0.0),  # held, released: a new flow
    ("router._ip_id", [], [("packet", 0, False, "A", 1, "complete", 0, None)], 0.0),  # time exceeded
    ("router.icmp_bucket", [], [("packet", 0, False, "A", 1, "complete", 0, None)], 0.0),
    ("router.drops", [], [("ping router", "a", True)], 0.0),  # a bad ICMP checksum: dropped
    ("flows.tables", [], [("arp", "c", True)], 0.0),  # flushed
    ("flows.tables", [], [("packet", 0, False, "FA", 64, "complete", 0, None)], 0.0),  # flow forgotten
    ("flows.echo_tables", [], [("echo", 1, False, 9, "complete", 64, None)] * 2, 0.0),  # installed
    ("counters", [], [("packet", 2, False, "A", 64, "complete", 0, None)], 0.0),  # a cache hit counted
    ("next_deadline()", [], [("unresolved", "c", "10.1.0.77")], 0.0),  # the ARP retry
    ("arp.entries", [], [("unresolved", "c", "10.1.0.77"), ("answer", "10.1.0.77")], 0.0),  # resolved
    ("nat.held", [("fragments", "later only", 1)], [("fragments", "later only", 1)], 0.0),  # appended
    ("arp.pending", [("unresolved", "c", "10.1.0.77")], [("unresolved", "a", "10.1.0.77")], 0.0),  # queued
    ("arp.failed", NO_ANSWER, [("unresolved", "c", "10.1.0.77")], 30.0),  # expired: gone on lookup
]


def warm_twin() -> Twin:
    """The twin with every TCP flow open and every flow's entries in the cache, both ways."""
    twin = Twin.build()
    for index in OPENED:
        play(twin, ("handshake", index))
    for index in range(len(FLOWS)):
        play(twin, ("burst", index, 2, "complete"))
    play(twin, ("packet", 1, False, "A", 64, "complete", 0, None))
    return twin


@pytest.mark.parametrize(
    ("prefix", "setup", "to_trace", "later"),
    CHANGES,
    ids=[f"{prefix} by {'+'.join(step[0] for step in steps)}" for prefix, _, steps, _ in CHANGES],
)
def test_what_a_frame_would_change_is_put_back(
    prefix: str, setup: list[Step], to_trace: list[Step], later: float
) -> None:
    """Not vacuous: committed, these frames change this part of the fingerprint; traced, nothing."""
    twin = warm_twin()
    for step in setup:
        perform(twin, step)
    frames = frames_of(twin, to_trace)
    now = twin.now + later
    shadow = shadow_of(twin.on)
    shadow_before = fingerprint(shadow)
    for port, pkt in frames:
        shadow.receive(port, pkt, now)
    assert part(fingerprint(shadow), prefix) != part(shadow_before, prefix)
    check_trace(twin.on, frames, now)
    twin.check()


def test_a_new_flow_into_a_full_conntrack_table() -> None:
    """The table is full: a new flow first runs the expiry pass (which, finding nothing due, only
    moves its next pass: one flow's expiry was pushed out since), then early-drops the oldest
    unassured flow, which frees its NAT mapping. All of it taken back."""
    twin = Twin.build()
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)))  # unassured, expires in 30 s
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)), dt=20.0)  # now in 30 s from here
    router = twin.on.router
    assert router is not None and router.nat is not None
    conntrack = router.nat.conntrack
    assert len(conntrack) == 1 and conntrack.next_deadline() == pytest.approx(twin.now + 10.0)
    conntrack.max_flows = 1
    frames = frames_of(twin, [("new flow", 0, 1)])
    now = twin.now + 15.0  # past the next pass, before the flow expires; no timer run meanwhile
    shadow = shadow_of(twin.on)
    shadow_before = fingerprint(shadow)
    for port, pkt in frames:
        shadow.receive(port, pkt, now)
    shadow_after = fingerprint(shadow)
    for prefix in ("conntrack._next_pass", "conntrack.flows", "nat.mappings", "nat.ports"):
        assert part(shadow_after, prefix) != part(shadow_before, prefix), prefix
    assert shadow.router is not None and shadow.router.events["conntrack-early-drop"] == 1
    check_trace(twin.on, frames, now)


# --- Datapath.tracing itself ----------------------------------------------------------------------------
class Recorder:
    """A tracer that raises at its n-th note (never, by default)."""

    def __init__(self, fail_at: int = -1) -> None:
        self.notes: list[tuple[str, str]] = []
        self.fail_at = fail_at

    def note(self, stage: str, text: str) -> None:
        if len(self.notes) == self.fail_at:
            raise Boom(stage)
        self.notes.append((stage, text))

    def drop(self, where: str, reason: str) -> None:
        pass


class Boom(Exception):
    pass


def journaled(dp: Datapath) -> list[Any]:
    """Every table that takes a journal while the datapath traces."""
    assert dp.router is not None and dp.flows is not None
    return [*(seg.switch.fdb for seg in dp.segments), *dp.router.journaled(), dp.flows]


def assert_detached(dp: Datapath) -> None:
    assert dp.router is not None
    assert dp.tracer is None and dp.router.tracer is None and dp._journal is None
    assert all(table.journal is None for table in journaled(dp))


def busy_frames(twin: Twin) -> list[Transmit]:
    """Frames that change every table: a new NAT flow, a MAC move, an ARP change, a pending next hop,
    a time exceeded, a state change of a cached flow."""
    return frames_of(
        twin,
        [
            ("new flow", 0, 1),
            ("move", "c"),
            ("arp", "a", True),
            ("unresolved", "a", "10.2.0.77"),
            ("packet", 2, False, "A", 1, "complete", 0, None),
            ("packet", 0, False, "FA", 64, "complete", 0, None),
        ],
    )


def run(dp: Datapath, tracer: Recorder, frames: list[Transmit], now: float, mid: Callable[[], None]) -> None:
    with dp.tracing(tracer):
        for port, pkt in frames:
            dp.receive(port, pkt, now)
        mid()
        raise Boom("after the frames")


def test_an_exception_inside_tracing_takes_everything_back_and_detaches() -> None:
    twin = warm_twin()
    dp = twin.on
    router = dp.router
    assert router is not None
    frames = busy_frames(twin)
    before = fingerprint(dp)
    tracer = Recorder()

    def mid() -> None:  # inside: attached, and the frames did change things
        assert dp.tracer is tracer and router.tracer is tracer and dp._journal is not None
        assert all(table.journal is dp._journal for table in journaled(dp))
        during = fingerprint(dp)
        for prefix in ("conntrack", "flows.tables", "arp", "fdb["):
            assert part(during, prefix) != part(before, prefix)

    with pytest.raises(Boom, match="after the frames"):
        run(dp, tracer, frames, twin.now, mid)
    assert_detached(dp)
    assert_unchanged(before, fingerprint(dp))
    twin.check()
    notes = len(tracer.notes)
    play(twin, ("burst", 2, 1, "complete"))  # the real path: the tracer hears nothing more
    assert len(tracer.notes) == notes


def test_an_exception_from_the_pipeline_midway_takes_everything_back() -> None:
    """The tracer raises at each of its notes in turn: the frame stops half-decided, in the middle
    of some table's change, and the journal must still put everything back."""
    twin = warm_twin()
    dp = twin.on
    frames = busy_frames(twin)
    count = Recorder()
    trace_copy = shadow_of(dp)
    with trace_copy.tracing(count):
        for port, pkt in frames:
            trace_copy.receive(port, pkt, twin.now)
    assert len(count.notes) > 20
    before = fingerprint(dp)
    for fail_at in range(len(count.notes)):
        with pytest.raises(Boom), dp.tracing(Recorder(fail_at)):
            for port, pkt in frames:
                dp.receive(port, pkt, twin.now)
        assert_detached(dp)
        assert_unchanged(before, fingerprint(dp))
    twin.check()


def test_nested_tracing_is_refused_and_leaves_the_outer_trace_as_it_was() -> None:
    twin = warm_twin()
    dp = twin.on
    router = dp.router
    assert router is not None
    frames = busy_frames(twin)
    before = fingerprint(dp)
    outer, inner = Recorder(), Recorder()
    with dp.tracing(outer):
        dp.receive(*frames[0], twin.now)
        journal = dp._journal
        with pytest.raises(RuntimeError), dp.tracing(inner):
            pass
        assert dp.tracer is outer and router.tracer is outer and dp._journal is journal
        for port, pkt in frames[1:]:
            dp.receive(port, pkt, twin.now)
    assert not inner.notes and outer.notes
    assert_detached(dp)
    assert_unchanged(before, fingerprint(dp))
    twin.check()


def test_trace_of_one_frame_detaches_the_router() -> None:
    """The simplest case: one routed frame traced, and the router must not keep hearing the tracer."""
    dp = world(True)
    trace(dp, PORTS["a"], frame("a", udp(A_IP, C_IP, 6000, 7000)), 1.0)
    assert_detached(dp)


# --- a trace of a frame that would flush the flow cache ---------------------------------------------------
FLUSHING: list[tuple[str, Step]] = [
    ("c-changes-mac-by-arp", ("arp", "c", True)),
    ("a-changes-mac-by-arp", ("arp", "a", True)),
    ("a-mac-moves-to-port-b", ("move", "a")),
    ("a-asks-gateway-from-new-mac", ("arp request", "a", True)),
]


@pytest.mark.parametrize(("why", "step"), FLUSHING, ids=[why for why, _ in FLUSHING])
def test_a_trace_that_would_flush_the_cache_leaves_it_warm(why: str, step: Step) -> None:
    twin = Twin.build()
    dp = twin.on
    flows = dp.flows
    assert flows is not None
    for _ in range(2):  # a <-> c, routed: cached both ways
        twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)))
        twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000)))
    cached = part(fingerprint(dp), "flows")
    assert len(flows) == 2
    to_c, to_a = frame("a", udp(A_IP, C_IP, 6000, 7000)), frame("c", udp(C_IP, A_IP, 7000, 6000))
    flushing = frames_of(twin, [step])
    shadow = shadow_of(dp)
    for port, pkt in flushing:
        shadow.receive(port, pkt, twin.now)
    assert shadow.flows is not None  # for real: flushed (the frame itself may be cached then)
    tables = zip(shadow.flows.tables, flows.tables, strict=True)
    assert not any(set(table) & set(warm) for table, warm in tables)

    # In one run, the packets after it see the flush (a miss, the router decides) ...
    results = check_trace(dp, [*flushing, (PORTS["a"], to_c), (PORTS["c"], to_a)], twin.now)
    for result in results[len(flushing) :]:
        assert ("flow cache", "miss: the router decides, and the cache may keep the action") in result.stages
    # ... but after the run the entries are back, the same objects, and serve the next packets.
    assert part(fingerprint(dp), "flows") == cached
    for port, pkt in ((PORTS["a"], to_c), (PORTS["c"], to_a)):
        hit = trace(dp, port, pkt, twin.now)
        assert ("flow cache", "hit: the cached action forwards it (the router's steps below)") in hit.stages
    hits = dp.counters.flow_cache_hits
    twin.send("a", to_c)
    twin.send("c", to_a)
    assert dp.counters.flow_cache_hits == hits + 2


# --- a trace of the answer a frame waits for -----------------------------------------------------------
def test_a_trace_of_the_answer_leaves_the_waiting_frames_as_they_were() -> None:
    """A frame waits for ARP; the answer is traced: the frame's bytes in the queue are as they were
    (the router writes the MAC into a queued frame when it sends it)."""
    twin = Twin.build()
    perform(twin, ("unresolved", "c", "10.1.0.77"))
    frames = frames_of(twin, [("answer", "10.1.0.77")])
    shadow = shadow_of(twin.on)
    shadow.receive(*frames[0], twin.now)
    assert shadow.router is not None and not shadow.router.arp.pending  # for real: resolved, sent
    [result] = check_trace(twin.on, frames, twin.now)
    assert [port for port, _ in result.outputs] == ["b"]  # the frame that waited, sent to the answer
    twin.check()

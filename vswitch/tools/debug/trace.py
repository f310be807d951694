"""`vswitch trace`: run one frame through the real pipeline and say what each stage decided.

Side effects: none. The trace runs on ``copy.deepcopy(datapath)`` (the router, FDBs, ARP cache and
conntrack come along, since the datapath holds them), through a tracing mirror of
``Datapath.receive`` that calls the same steps (``Switch.decide``, ``Router.receive``,
``Switch.decide`` again for the router's output). The real datapath is only read (to copy it), and
nothing is written to a tap. ``--send`` then delivers the frame for real, with every side effect.

The core (`trace`) needs no scapy: it runs in the switch process. `render` (client side) diffs each
output frame against the input with scapy, field by field.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Final

from ...core.counters import Drop
from ...core.datapath import Datapath, Transmit
from ...core.router import Router
from ...core.wire import ETHERTYPE_ARP, ETHERTYPE_IPV4, VNET_HDR_LEN, ZERO_VNET_HDR, mac_str
from ...shell.control import CommandError, ControlError
from .common import (
    b64,
    call,
    client_gone,
    evaluate,
    fill_ether,
    instance_socket,
    live_port,
    port_stream_setup,
    shell_of,
    unb64,
)

if TYPE_CHECKING:
    from ...shell.instance import Instance

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP"}
# Each live trace deep-copies the whole datapath on the packet path and is held until the client reads
# it: a session traces at most this many frames, so a client that never reads holds bounded memory.
MAX_LIVE_TRACES: Final = 100


@dataclass
class Trace:
    """What one frame did: the stages in order, the frames that came out, and the drops it caused."""

    port: str
    input: bytes  # as received: virtio-net header + Ethernet
    stages: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, bytes]] = field(default_factory=list)  # (port name, buffer)
    drops: dict[str, str] = field(default_factory=dict)  # where -> reason (from the counter deltas)

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "input": b64(self.input[VNET_HDR_LEN:]),
            "stages": [list(s) for s in self.stages],
            "outputs": [{"port": p, "data": b64(d[VNET_HDR_LEN:])} for p, d in self.outputs],
            "drops": self.drops,
        }


def describe(pkt: bytes) -> str:
    """A one-line parse of a buffer, without scapy (it runs in the switch process)."""
    if len(pkt) < VNET_HDR_LEN + 14:
        return f"runt: {len(pkt)} bytes"
    eth = pkt[VNET_HDR_LEN:]
    ethertype = eth[12] << 8 | eth[13]
    text = f"Ether {mac_str(eth[6:12])} > {mac_str(eth[0:6])} type 0x{ethertype:04x}, {len(eth)} bytes"
    if ethertype == ETHERTYPE_IPV4 and len(eth) >= 34:
        proto = eth[23]
        text += (
            f"; IPv4 {IPv4Address(eth[26:30])} > {IPv4Address(eth[30:34])} "
            f"{PROTO_NAMES.get(proto, f'proto {proto}')} ttl {eth[22]}"
        )
    elif ethertype == ETHERTYPE_ARP and len(eth) >= 42:
        op = {1: "who-has", 2: "is-at"}.get(eth[20] << 8 | eth[21], "op ?")
        text += f"; ARP {op} {IPv4Address(eth[38:42])} tell {IPv4Address(eth[28:32])}"
    if pkt[1]:
        text += f"; GSO type {pkt[1]} size {pkt[6] | pkt[7] << 8}"
    return text


class _Tracer:
    """A mirror of Datapath.receive / from_router over a private copy, noting each decision."""

    def __init__(self, dp: Datapath, now: float, result: Trace) -> None:
        self.dp = dp
        self.now = now
        self.result = result
        self.names = dp.counters.names

    def note(self, stage: str, text: str) -> None:
        self.result.stages.append((stage, text))

    def switch(self, in_port: int, pkt: bytes, where: str) -> int | tuple[int, ...] | Drop:
        dp = self.dp
        switch = dp.port_switch[in_port]
        seg = dp.segments[dp.port_segment[in_port]].name
        src, dst = pkt[16:22], pkt[10:16]
        before = switch.fdb.entries.get(src)
        old_port = None if before is None else before.port
        decision = switch.decide(in_port, pkt, self.now)
        if isinstance(decision, Drop):
            self.note(f"L2 {seg}", f"{where}: drop ({decision})")
            return decision
        after = switch.fdb.entries.get(src)
        learnt = ""
        if after is not None and old_port != after.port:
            learnt = f"learn {mac_str(src)} on {self.names[in_port]}; "
        if isinstance(decision, int):
            target = "the router" if decision == switch.router_port else self.names[decision]
            self.note(f"L2 {seg}", f"{where}: {learnt}FDB: {mac_str(dst)} is on {target} -> {target}")
        else:
            why = "group address" if dst[0] & 1 else f"no FDB entry for {mac_str(dst)}"
            targets = [self.names[p] for p in decision]
            if switch.router_port is not None and in_port != switch.router_port:
                targets.append("the router")
            self.note(f"L2 {seg}", f"{where}: {learnt}{why}: flood -> {', '.join(targets) or 'nobody'}")
        return decision

    def receive(self, in_port: int, pkt: bytes) -> None:
        dp = self.dp
        self.note("parse", describe(pkt))
        decision = self.switch(in_port, pkt, f"in on {self.names[in_port]}")
        switch = dp.port_switch[in_port]
        if isinstance(decision, Drop):
            dp.counters.drops[in_port][decision] += 1
            return
        if isinstance(decision, int):
            if decision != switch.router_port:
                self.result.outputs.append((self.names[decision], pkt))
                return
            self.route(in_port, pkt)
            return
        self.result.outputs.extend((self.names[p], pkt) for p in decision)
        if switch.router_port is not None:
            self.route(in_port, pkt)

    def route(self, in_port: int, pkt: bytes) -> None:
        router = self.dp.router
        assert router is not None
        segment = self.dp.port_segment[in_port]
        if not isinstance(router, Router):
            self.from_router(router.receive(segment, pkt, self.now))
            return
        flows = self.dp.flows
        if flows is not None:
            if flows.forward(segment, pkt, self.now, dry_run=True) is not None:
                self.note("flow cache", "hit: the cached decision forwards it (the same steps, shown below)")
            else:
                self.note("flow cache", "miss: the router decides, and the cache may learn the flow")
        drops0, events0 = Counter(router.drops), Counter(router.events)
        flows0 = {str(row["orig"]): row for row in router.conntrack_table(self.now)}
        frames = router.receive(segment, pkt, self.now)
        iface = router.interfaces[segment]
        self.note("router", f"in on {iface.name} ({iface.address}, {mac_str(iface.mac)})")
        eth = pkt[VNET_HDR_LEN:]
        forwarded = [f for f in frames if _same_datagram(eth, f[1][VNET_HDR_LEN:])]
        if len(eth) >= 34 and eth[12:14] == b"\x08\x00" and eth[0:6] == iface.mac:
            self.route_stage(router, eth, forwarded)
            self.conntrack_stage(router, flows0)
        for frame_iface, frame in frames:
            data = frame[VNET_HDR_LEN:]
            name = router.interfaces[frame_iface].name
            if data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x01":
                target = IPv4Address(data[38:42])
                self.note("ARP", f"{target} unresolved on {name}: who-has sent, packet queued for the reply")
            elif data[12:14] == b"\x08\x06":
                self.note("ARP", f"answered who-has {IPv4Address(data[28:32])} on {name}")
            elif (frame_iface, frame) in forwarded:
                self.note("ARP", f"next hop on {name} is {mac_str(data[0:6])} (cached)")
        for reason, count in (Counter(router.drops) - drops0).items():
            self.note("drop", f"router: {reason}" + (f" x{count}" if count > 1 else ""))
        events = Counter(router.events) - events0
        if events:
            self.note("router", "events: " + ", ".join(sorted(events)))
        self.from_router(frames)

    def route_stage(self, router: Router, eth: bytes, forwarded: list[Transmit]) -> None:
        dst = IPv4Address(eth[30:34])
        if forwarded:  # after DNAT the destination may differ: route what left
            dst = IPv4Address(forwarded[0][1][VNET_HDR_LEN + 30 : VNET_HDR_LEN + 34])
        hop = router.routes.lookup(int(dst))
        if dst.packed in router._local:
            self.note("route", f"{dst} is the router's own address: local delivery")
        elif hop is None:
            self.note("route", f"{dst}: no route")
        else:
            out_iface, gateway = hop
            name = router.interfaces[out_iface].name
            via = "directly connected" if gateway is None else f"via {IPv4Address(gateway)}"
            self.note("route", f"{dst} -> {name}, {via}")

    def conntrack_stage(self, router: Router, flows0: dict[str, dict[str, Any]]) -> None:
        if router.nat is None:
            return
        flows = {str(row["orig"]): row for row in router.conntrack_table(self.now)}
        new = [row for orig, row in flows.items() if orig not in flows0]
        hit = [
            row for orig, row in flows.items() if orig in flows0 and row["packets"] != flows0[orig]["packets"]
        ]
        if new:
            for row in new:
                self.note("conntrack", f"new {row['proto']} flow {row['orig']}, reply {row['reply']}")
        elif hit:
            for row in hit:
                self.note("conntrack", f"existing {row['proto']} flow {row['orig']}, reply {row['reply']}")
        else:
            self.note("conntrack", "no flow created or matched (not NAT-ed)")

    def from_router(self, frames: list[Transmit]) -> None:
        dp = self.dp
        for segment, frame in frames:
            switch = dp.segments[segment].switch
            port = switch.router_port
            assert port is not None
            decision = self.switch(port, frame, "from the router")
            if isinstance(decision, Drop):
                dp.counters.drops[port][decision] += 1
            elif isinstance(decision, int):
                self.result.outputs.append((self.names[decision], frame))
            else:
                self.result.outputs.extend((self.names[p], frame) for p in decision)


def _same_datagram(before: bytes, after: bytes) -> bool:
    """The output is the input forwarded (not a reply, error or ARP the router made)."""
    if len(before) < 34 or len(after) < 34 or before[12:14] != b"\x08\x00" or after[12:14] != b"\x08\x00":
        return False
    return before[18:20] == after[18:20] and before[23] == after[23] and after[22] < before[22]


def trace(datapath: Datapath, in_port: int, pkt: bytes, now: float) -> Trace:
    """Trace pkt (virtio-net header + frame) arriving on in_port, on a deep copy of datapath."""
    return trace_many(datapath, [(in_port, pkt)], now)[0]


def trace_many(datapath: Datapath, frames: list[Transmit], now: float) -> list[Trace]:
    """Trace frames in order on one deep copy, so a reply sees what its request did (conntrack, FDB)."""
    dp = copy.deepcopy(datapath)
    results = []
    for in_port, pkt in frames:
        before = copy.deepcopy((dp.counters.drops, getattr(dp.router, "drops", None)))
        result = Trace(dp.counters.names[in_port], pkt)
        dp.counters.rx_packets[in_port] += 1
        _Tracer(dp, now, result).receive(in_port, pkt)
        for port, name in enumerate(dp.counters.names):
            for reason in dp.counters.drops[port] - before[0][port]:
                result.drops[name] = reason
        router = dp.router
        if isinstance(router, Router) and before[1] is not None:
            for reason in router.drops - before[1]:
                result.drops["router"] = reason
        results.append(result)
    return results


# --- server side -------------------------------------------------------------------------------------
def _frame(req: dict[str, Any]) -> bytes:
    frame = unb64(req.get("data"))
    if len(frame) < 14:
        raise CommandError("a frame needs at least 14 bytes (an Ethernet header)")
    return ZERO_VNET_HDR + frame


def trace_command(instance: Instance, req: dict[str, Any]) -> Any:
    """{"port", "data"} traced on a copy; "then": [{"port", "data"}, ...] follow on the same copy (their
    results come back in "then"); "send": true then delivers the first frame for real."""
    port = live_port(instance, req.get("port"))
    pkt = _frame(req)
    frames = [(port.id, pkt)]
    then = req.get("then") or []
    if not isinstance(then, list) or not all(isinstance(r, dict) for r in then):
        raise CommandError('"then" is a list of {"port", "data"} objects')
    frames += [(live_port(instance, r.get("port")).id, _frame(r)) for r in then]
    now = asyncio.get_running_loop().time()
    traces = trace_many(instance.datapath, frames, now)
    result = traces[0].to_json()
    result["then"] = [t.to_json() for t in traces[1:]]
    if req.get("send"):
        shell = shell_of(instance)
        verdict = instance.datapath.receive(port.id, pkt, now)
        if isinstance(verdict, int):
            shell.send([(verdict, pkt)])
        elif isinstance(verdict, tuple):
            shell.send([(p, pkt) for p in verdict])
        elif verdict is not None:
            shell.send(verdict)
        result["sent"] = True
    return result


async def trace_live(
    instance: Instance, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Trace the next frames the port receives that match the filter, each on a copy taken just before
    the real datapath sees it."""
    count = _live_count(req.get("count"))
    if isinstance(count, str):
        writer.write(json.dumps({"ok": False, "error": count}).encode() + b"\n")
        return
    setup = port_stream_setup(instance, req, writer)
    if setup is None:
        return
    port, matches, shell = setup
    loop = asyncio.get_running_loop()
    # Never more than count results exist: the observer stops tracing once it has made them all.
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    traced = 0

    def observer(direction: str, pkt: bytes) -> None:
        nonlocal traced
        if direction == "rx" and traced < count and matches(pkt[VNET_HDR_LEN:]):
            result = trace(instance.datapath, port.id, pkt, loop.time()).to_json()
            traced += 1  # after the trace: one that raised leaves its place to the next frame
            results.put_nowait(result)

    shell.observe(port.id, observer)
    gone = asyncio.ensure_future(client_gone(reader))
    got: asyncio.Future[dict[str, Any]] | None = None
    try:
        writer.write(json.dumps({"ok": True, "result": "tracing"}).encode() + b"\n")
        for _ in range(count):
            got = asyncio.ensure_future(results.get())
            done, _ = await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
            if got not in done:
                return
            writer.write(json.dumps(got.result()).encode() + b"\n")
            await writer.drain()
    finally:
        shell.unobserve(port.id, observer)  # and with it the last reference to the queued results
        gone.cancel()
        if got is not None:
            got.cancel()


def _live_count(value: Any) -> int | str:
    """How many frames a live trace asks for (1 when absent), or why that is not a valid count."""
    try:
        count = int(value or 1)
    except (TypeError, ValueError):
        return f"count {value!r:.40} is not a number"
    if not 1 <= count <= MAX_LIVE_TRACES:
        return f"count {count} is out of range: a live trace takes 1 to {MAX_LIVE_TRACES} frames"
    return count


# --- client side -------------------------------------------------------------------------------------
FIELDS = (
    ("Ether", "src"),
    ("Ether", "dst"),
    ("IP", "src"),
    ("IP", "dst"),
    ("IP", "ttl"),
    ("IP", "chksum"),
    ("TCP", "sport"),
    ("TCP", "dport"),
    ("UDP", "sport"),
    ("UDP", "dport"),
    ("ICMP", "type"),
    ("ICMP", "id"),
)


def diff(before: bytes, after: bytes) -> str:
    """The fields that changed, 'IP.src 10.1.0.2 -> 198.18.0.2', with L4 ports shown beside NAT."""
    import scapy.layers.inet  # noqa: F401  (binds IP, TCP, UDP, ICMP under Ether)
    from scapy.layers.l2 import Ether

    old, new = Ether(before), Ether(after)
    changes: list[str] = []
    translated = False
    for layer, name in FIELDS:
        if not (old.haslayer(layer) and new.haslayer(layer)):
            continue
        a, b = old[layer].getfieldval(name), new[layer].getfieldval(name)
        show = a != b or (translated and name in ("sport", "dport", "id"))
        if layer == "IP" and name in ("src", "dst") and a != b:
            translated = True
        if show:
            if name == "chksum":
                changes.append(f"{layer}.{name} 0x{a:04x} -> 0x{b:04x}")
            else:
                changes.append(f"{layer}.{name} {a} -> {b}")
    return "  ".join(changes) or "unchanged"


def render(result: dict[str, Any]) -> list[str]:
    """The stages, then one line per output frame (diff or new frame) and the verdict."""
    import base64

    import scapy.layers.inet  # noqa: F401  (binds IP, TCP, UDP, ICMP under Ether)
    from scapy.layers.l2 import Ether

    lines = [f"trace on port {result['port']}"]
    lines += [f"  {stage:<12} {text}" for stage, text in result["stages"]]
    frame = base64.b64decode(result["input"])
    for out in result["outputs"]:
        data = base64.b64decode(out["data"])
        if data == frame or _same_datagram(frame, data) or _same_l2(frame, data):
            lines.append(f"  {'egress':<12} {diff(frame, data)}  -> port {out['port']}")
        else:
            lines.append(f"  {'egress':<12} new frame {Ether(data).summary()}  -> port {out['port']}")
    if result["drops"]:
        reasons = ", ".join(f"{reason} (at {where})" for where, reason in result["drops"].items())
        lines.append(f"  {'verdict':<12} dropped: {reasons}")
    elif not result["outputs"]:
        lines.append(f"  {'verdict':<12} consumed: no frame leaves the switch")
    if result.get("sent"):
        lines.append(f"  {'sent':<12} delivered for real (--send)")
    return lines


def _same_l2(before: bytes, after: bytes) -> bool:
    return before[12:] == after[12:]


def load_frame(args: argparse.Namespace) -> bytes:
    """The frame to trace: the scapy expression, or a record of --pcap."""
    if args.pcap:
        from .pcap import read_pcap

        with open(args.pcap, "rb") as handle:
            frames = [f for _t, f in read_pcap(handle.read())]
        index: int = args.index
        if not 0 <= index < len(frames):
            raise ValueError(f"{args.pcap} has {len(frames)} packets; --index {args.index} is out of range")
        return frames[index]
    if not args.packet:
        raise ValueError("give a scapy expression, --pcap FILE or --live")
    packet = evaluate(args.packet)
    frame: bytes = bytes(fill_ether(packet, call(args, "debug-info"), args.port, toward_port=False))
    return frame


def cmd_trace(args: argparse.Namespace) -> int:
    if args.live:
        for result in _live(args):
            print("\n".join(render(result)), flush=True)
        return 0
    frame = load_frame(args)
    result = call(args, "trace", port=args.port, data=b64(frame), send=args.send)
    print("\n".join(render(result)))
    return 0


def _live(args: argparse.Namespace) -> Any:
    from .common import stream as open_stream

    fields = {"port": args.port, "filter": args.filter, "count": args.count}
    gen = open_stream(instance_socket(args), "trace-live", **fields)
    try:
        for result in gen:
            if result.get("ok") is False:  # the stream failed on the server after it had begun
                raise ControlError(str(result.get("error")))
            yield result
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        gen.close()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "trace",
        help="run a frame through the pipeline on a copy of its state and show each decision",
        description=(
            "PACKET is a scapy expression, e.g. \"Ether()/IP(src='10.0.0.1', dst='10.0.0.2')/ICMP()\": "
            "your own Python, evaluated on your machine with scapy's layer names and no builtins. "
            "Without --send nothing is learned, tracked or sent: the trace runs on a deep copy."
        ),
    )
    p.add_argument("port", metavar="PORT", help="the ingress port (namespace name, or 'host')")
    p.add_argument("packet", metavar="PACKET", nargs="?", help="a scapy expression starting with Ether(")
    p.add_argument("--pcap", metavar="FILE", help="take the frame from a pcap file")
    p.add_argument("--index", type=int, default=0, help="which record of --pcap (default 0)")
    p.add_argument("--send", action="store_true", help="then deliver it for real, with side effects")
    p.add_argument("--live", action="store_true", help="trace the next real frames received on PORT")
    p.add_argument("--filter", metavar="EXPR", help="with --live: which frames (capture's filter language)")
    count_help = f"with --live: how many frames (1 to {MAX_LIVE_TRACES}, default 1)"
    p.add_argument("--count", type=int, default=1, help=count_help)
    p.add_argument("--name", default="default")


__all__ = ["ControlError", "Trace", "cmd_trace", "diff", "render", "trace"]

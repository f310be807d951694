"""`vswitch trace`: run one frame through the real pipeline and say what each stage decided.

Side effects: none. The frame goes through the real ``Datapath.receive`` with a tracer attached
(``Datapath.tracing``): each stage tells the tracer what it decided and each drop its reason, as the
ledger counts it, and a journal takes back every change the frame made (FDB, ARP, conntrack, NAT,
counters) when the trace ends, as OVS's ofproto/trace translates without installing. Nothing is
written to a tap. ``--send`` then delivers the frame for real, with every side effect.

The core (`trace`) needs no scapy: it runs in the switch process. `render` (client side) diffs each
output frame against the input with scapy, field by field.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Final

from ...core.datapath import Datapath, Transmit, Verdict
from ...core.emulation import Emulator
from ...core.wire import ETHERTYPE_ARP, ETHERTYPE_IPV4, VNET_HDR_LEN, ZERO_VNET_HDR, mac_str
from ...shell.control import CommandError, ControlError, LineWriter
from ...shell.loop import OUTER_ETHERNET
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
# Each live trace runs on the packet path and is held until the client reads it: a session traces at
# most this many frames, so a client that never reads holds bounded memory.
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


class _Recorder:
    """The tracer: what the pipeline reports goes into the Trace of the frame in hand."""

    def __init__(self) -> None:
        self.result = Trace("", b"")

    def note(self, stage: str, text: str) -> None:
        self.result.stages.append((stage, text))

    def drop(self, where: str, reason: str) -> None:
        self.result.drops[where] = reason


def _same_datagram(before: bytes, after: bytes) -> bool:
    """The output is the input forwarded (not a reply, error or ARP the router made)."""
    if len(before) < 34 or len(after) < 34 or before[12:14] != b"\x08\x00" or after[12:14] != b"\x08\x00":
        return False
    return before[18:20] == after[18:20] and before[23] == after[23] and after[22] < before[22]


def trace(datapath: Datapath, in_port: int, pkt: bytes, now: float) -> Trace:
    """Trace pkt (virtio-net header + frame) arriving on in_port; nothing is committed."""
    return trace_many(datapath, [(in_port, pkt)], now)[0]


def trace_many(datapath: Datapath, frames: list[Transmit], now: float) -> list[Trace]:
    """Trace frames in order in one run, so a reply sees what its request did (conntrack, FDB);
    everything they did is taken back at the end."""
    recorder = _Recorder()
    names = datapath.counters.names
    router = datapath.router
    results = []
    with datapath.tracing(recorder):
        for in_port, pkt in frames:
            result = recorder.result = Trace(names[in_port], pkt)
            result.stages.append(("parse", describe(pkt)))
            events = Counter(router.events) if router is not None else Counter()
            verdict = datapath.receive(in_port, pkt, now)
            if router is not None and (new := Counter(router.events) - events):
                result.stages.append(("router", "events: " + ", ".join(sorted(new))))
            result.outputs = outputs(verdict, pkt, names, set(datapath.encaps))
            results.append(result)
    return results


def outputs(
    verdict: Verdict, pkt: bytes, names: list[str], tunnelled: AbstractSet[int] = frozenset()
) -> list[tuple[str, bytes]]:
    """A verdict as trace shows it: (port name, bytes) for each frame that leaves. What leaves by a
    tunnel's port is an outer IPv4 packet: shown as capture --outer shows it (OUTER_ETHERNET)."""
    if verdict is None:
        return []
    if isinstance(verdict, int):
        return [(names[verdict], pkt)]
    if isinstance(verdict, tuple):
        return [(names[port], pkt) for port in verdict]
    return [
        (names[port], OUTER_ETHERNET + bytes(frame) if port in tunnelled else bytes(frame))
        for port, frame in verdict
    ]


# --- server side -------------------------------------------------------------------------------------
def _frame(req: dict[str, Any]) -> bytes:
    frame = unb64(req.get("data"))
    if len(frame) < 14:
        raise CommandError("a frame needs at least 14 bytes (an Ethernet header)")
    return ZERO_VNET_HDR + frame


def trace_command(instance: Instance, req: dict[str, Any]) -> Any:
    """{"port", "data"} traced; "then": [{"port", "data"}, ...] follow in the same run, seeing what it
    did (their results come back in "then"); "send": true then delivers the first frame for real."""
    pkt = _frame(req)
    port_id, on_trunk = ingress(instance, req.get("port"), pkt)
    frames = [(port_id, pkt)]
    then = req.get("then") or []
    if not isinstance(then, list) or not all(isinstance(r, dict) for r in then):
        raise CommandError('"then" is a list of {"port", "data"} objects')
    for r in then:
        frame = _frame(r)
        frames.append((ingress(instance, r.get("port"), frame)[0], frame))
    now = asyncio.get_running_loop().time()
    traces = trace_many(instance.datapath, frames, now)
    if instance.shell is not None and instance.shell.emulator.configured:
        for (in_port, frame), traced in zip(frames, traces, strict=True):
            names = instance.datapath.counters.names
            _emulation_notes(instance.shell.emulator, names, in_port, frame, traced, now)
    if on_trunk is not None:
        traces[0].stages.insert(1, ("vlan", on_trunk))
    result = traces[0].to_json()
    result["then"] = [t.to_json() for t in traces[1:]]
    if req.get("send"):
        shell = shell_of(instance)
        verdict = instance.datapath.receive(port_id, pkt, now)
        if isinstance(verdict, int):
            shell.send([(verdict, pkt)])
        elif isinstance(verdict, tuple):
            shell.send([(p, pkt) for p in verdict])
        elif verdict is not None:
            shell.send(verdict)
        result["sent"] = True
    return result


def _emulation_notes(
    emulator: Emulator, names: list[str], in_port: int, pkt: bytes, result: Trace, now: float
) -> None:
    """What network emulation does around the pipeline: the ingress port's "in" stage (before it), and
    for each output a partition that drops it or its port's "out" stage."""
    stage = emulator.stage(in_port, "in")
    if stage is not None:
        result.stages.insert(1, ("link", f"{names[in_port]} in: {stage.explain(pkt, now)}"))
    ids = {name: port for port, name in enumerate(names)}
    for name, frame in result.outputs:
        out = ids.get(name)
        if out is None:
            continue
        if emulator.blocks(in_port, out):
            result.stages.append(("partition", f"{names[in_port]} -> {name}: dropped (partitioned)"))
            continue
        stage = emulator.stage(out, "out")
        if stage is not None:
            result.stages.append(("link", f"{name} out: {stage.explain(frame, now)}"))


def ingress(instance: Instance, label: Any, pkt: bytes) -> tuple[int, str | None]:
    """The port a frame given on port `label` enters by: the port itself, or on a trunk the port of
    its VLAN (with a line saying so); a frame the trunk refuses is an error naming the drop."""
    for trunk in instance.datapath.trunks:
        if label == trunk.name:
            port, reason = trunk.classify(pkt)
            if reason is not None:
                raise CommandError(f"trunk {trunk.name} drops the frame: {reason}")
            name = instance.datapath.counters.names[port]
            vlan = "untagged: the native VLAN" if port == trunk.native else f"VID {trunk.vid_of[port]}"
            return port, f"in on {trunk.name}: {vlan} -> port {name} (the tag stays on while it crosses)"
    return live_port(instance, label).id, None


async def trace_live(
    instance: Instance, req: dict[str, Any], reader: asyncio.StreamReader, writer: LineWriter
) -> None:
    """Trace the next frames the port receives that match the filter, each just before the real
    datapath sees it (the trace takes back what it did, so the frame then passes as it would have)."""
    count = _live_count(req.get("count"))
    if isinstance(count, str):
        writer.write(json.dumps({"ok": False, "error": count}).encode() + b"\n")
        return
    setup = port_stream_setup(instance, req, writer)
    if setup is None:
        return
    [port], matches, shell = setup
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

    import scapy.layers.inet
    import scapy.layers.vxlan  # noqa: F401  (binds VXLAN under UDP 4789)
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
        help="run a frame through the pipeline and show each decision, committing nothing",
        description=(
            "PACKET is a scapy expression, e.g. \"Ether()/IP(src='10.0.0.1', dst='10.0.0.2')/ICMP()\": "
            "your own Python, evaluated on your machine with scapy's layer names and no builtins. "
            "Without --send nothing is learned, tracked or sent: what the trace changed is taken back."
        ),
    )
    p.add_argument("port", metavar="PORT", help="the ingress port (namespace name, or 'host')")
    p.add_argument("packet", metavar="PACKET", nargs="?", help="a scapy expression starting with Ether(")
    p.add_argument("--pcap", metavar="FILE", help="take the frame from a pcap or pcapng file")
    p.add_argument("--index", type=int, default=0, help="which record of --pcap (default 0)")
    p.add_argument("--send", action="store_true", help="then deliver it for real, with side effects")
    p.add_argument("--live", action="store_true", help="trace the next real frames received on PORT")
    p.add_argument("--filter", metavar="EXPR", help="with --live: which frames (capture's filter language)")
    count_help = f"with --live: how many frames (1 to {MAX_LIVE_TRACES}, default 1)"
    p.add_argument("--count", type=int, default=1, help=count_help)
    p.add_argument("--name", default="default")


__all__ = ["ControlError", "Trace", "cmd_trace", "diff", "render", "trace"]

"""`vswitch capture`: both directions of one or more ports of a running switch, as pcap, pcapng or
summary lines.

Server side, the capture is a Shell observer on each port asked for, so a switch with no capture pays
nothing. The observers only filter (bpf.py, raw bytes, no scapy) and append to one bounded queue; a
task writes the queue to the client as JSON lines. Several ports share the one queue and the one
stream: the observers run in the datapath's own order on the event loop, so the lines are already in
the order the switch saw the frames and the client has nothing to merge. A slow client never blocks
the datapath: when the queue is full the frame is dropped and counted, and every line carries the
running drop count.

A line: {"port": label, "dir": "rx" | "tx", "t": seconds (float), "ns": nanoseconds since the epoch,
"data": base64, "dropped": n}. "rx" is a frame the switch read from the port's tap (it came out of
the namespace: inbound on that interface), "tx" one the switch wrote to it (outbound). On an impaired
port (network emulation), "link:in:WHAT" or "link:out:WHAT" is a frame its stage lost, dropped
(rate-dropped, limit-dropped, down-dropped), duplicated, corrupted (the frame as corrupted) or
reordered; a delayed frame shows as itself, "tx" at the time it really left.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from ...core.vxlan import OUTER_LEN
from ...core.wire import VNET_HDR_LEN
from ...shell.control import ControlError, LineWriter
from ...shell.loop import OUTER_ETHERNET
from .common import SubPort, b64, client_gone, instance_socket, port_stream_setup, unb64

if TYPE_CHECKING:
    from ...shell.instance import Instance

QUEUE_FRAMES: Final = 4096
QUEUE_BYTES: Final = 32 << 20


async def capture_stream(
    instance: Instance, req: dict[str, Any], reader: asyncio.StreamReader, writer: LineWriter
) -> None:
    setup = port_stream_setup(instance, req, writer, many=True)
    if setup is None:
        return
    ports, matches, shell = setup
    count = int(req.get("count") or 0)  # 0: until the client goes away
    outer = bool(req.get("outer"))
    queue: collections.deque[tuple[str, str, int, bytes]] = collections.deque()
    state = {"bytes": 0, "dropped": 0}
    wake = asyncio.Event()

    def observer_for(label: str, tunnel: bool) -> Callable[[str, bytes], None]:
        # A tunnel's port carries the outer packet: shown as it is with --outer, else the inner frame.
        start = VNET_HDR_LEN if outer or not tunnel else len(OUTER_ETHERNET) + OUTER_LEN

        def observer(direction: str, pkt: bytes) -> None:
            frame = pkt[start:]
            if not matches(frame):
                return
            if len(queue) >= QUEUE_FRAMES or state["bytes"] + len(frame) > QUEUE_BYTES:
                state["dropped"] += 1
                return
            queue.append((label, direction, time.time_ns(), frame))
            state["bytes"] += len(frame)
            wake.set()

        return observer

    observers = [
        (port.id, observer_for(port.label, isinstance(port, SubPort) and port.outer)) for port in ports
    ]
    for port_id, observer in observers:
        shell.observe(port_id, observer)
    gone = asyncio.ensure_future(client_gone(reader))
    waiter: asyncio.Future[Any] | None = None
    sent = 0
    try:
        labels = list(dict.fromkeys(port.label for port in ports))
        reply = {"ok": True, "result": {"port": labels[0], "ports": labels}}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()
        while not gone.done():
            waiter = asyncio.ensure_future(wake.wait())
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            wake.clear()
            while queue:
                label, direction, stamp, frame = queue.popleft()
                state["bytes"] -= len(frame)
                record = {
                    "port": label,
                    "dir": direction,
                    "t": stamp / 1e9,
                    "ns": stamp,
                    "data": b64(frame),
                    "dropped": state["dropped"],
                }
                writer.write(json.dumps(record).encode() + b"\n")
                # After each line: a client that reads slower than frames come leaves them in the
                # bounded queue above (dropped, and counted, when it is full), not in the writer.
                await writer.drain()
                sent += 1
                if count and sent >= count:
                    return
    finally:
        for port_id, observer in observers:
            shell.unobserve(port_id, observer)
        gone.cancel()
        if waiter is not None:  # still pending when the server's close() cancelled us
            waiter.cancel()


# --- client side -------------------------------------------------------------------------------------
class UsageError(Exception):
    """The command line asks for something capture cannot do: one line on stderr and exit status 2."""


def stamp_ns(record: dict[str, Any]) -> int:
    """A line's timestamp in nanoseconds ("ns"; from a switch that sends only "t", from that)."""
    if "ns" in record:
        return int(record["ns"])
    return round(float(record["t"]) * 1e9)


def summary(record: dict[str, Any], port: str) -> str:
    import scapy.layers.dhcp  # binds BOOTP/DHCP under UDP 67/68: the router's DHCP shows as DHCP
    import scapy.layers.dns  # binds DNS under UDP 53: the router's DNS shows as DNS, not Raw
    import scapy.layers.inet
    import scapy.layers.inet6  # binds IPv6 under Ether's 0x86dd, ICMPv6 and NDP under it
    import scapy.layers.vxlan  # noqa: F401  (binds VXLAN under UDP 4789: capture --outer)
    from scapy.layers.l2 import Ether

    seconds, nanos = divmod(stamp_ns(record), 1_000_000_000)
    stamp = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{nanos // 1000:06d}"
    frame = unb64(record["data"])
    kind = str(record["dir"])
    if kind.startswith("link:"):  # an impaired link's event: what its stage did to the frame
        _, way, what = [*kind.split(":", 2), "", ""][:3]
        arrow = f"{'in ' if way == 'in' else 'out'} [link {what}]"
    else:
        arrow = "in " if kind == "rx" else "out"
    return f"{stamp} {port} {arrow} {Ether(frame).summary()}  ({len(frame)} bytes)"


def chosen_ports(args: argparse.Namespace) -> list[str]:
    """The port labels to capture, in order, each once: PORT[,PORT...] or every port with --all."""
    from .common import call

    if args.all and args.ports:
        raise UsageError("give PORT[,PORT...] or --all, not both")
    if args.all:
        status = call(args, "status")
        labels = [str(p["port"]) for p in status["ports"]] + [
            str(t["port"]) for t in status.get("tunnels", [])
        ]
        if not labels:
            raise ControlError("the instance has no ports")
    elif not args.ports:
        raise UsageError("name the ports to capture (PORT[,PORT...]) or give --all")
    else:
        labels = [label.strip() for label in args.ports.split(",")]
        if not all(labels):
            raise UsageError(f"an empty port name in {args.ports!r}")
    return list(dict.fromkeys(labels))


def file_format(args: argparse.Namespace, ports: list[str]) -> str | None:
    """ "pcap", "pcapng" or None (no -w: summary lines). --format decides, else the file's extension,
    else pcapng for several ports and classic pcap for one (as before pcapng)."""
    if not args.write:
        if args.format:
            raise UsageError("--format needs -w FILE")
        return None
    suffix = Path(args.write).suffix.lower()
    fmt = args.format or {".pcapng": "pcapng", ".pcap": "pcap"}.get(suffix)
    if fmt is None:
        fmt = "pcapng" if len(ports) > 1 else "pcap"
    if fmt == "pcap" and len(ports) > 1:
        raise UsageError(
            f"a classic pcap holds one port, not {len(ports)} ({', '.join(ports)}): "
            "write FILE.pcapng (or --format pcapng) to keep each frame's port and direction"
        )
    return fmt


def cmd_capture(args: argparse.Namespace) -> int:
    try:
        ports = chosen_ports(args)
        fmt = file_format(args, ports)
    except UsageError as exc:
        print(f"vswitch capture: error: {exc}", file=sys.stderr)
        return 2
    return run_capture(args, ports, fmt)


def run_capture(args: argparse.Namespace, ports: list[str], fmt: str | None) -> int:
    from .common import stream as open_stream
    from .pcap import INBOUND, OUTBOUND, PcapNgWriter, PcapWriter

    fields = {"ports": ports, "filter": args.filter, "count": args.count or 0, "outer": args.outer}
    out: IO[bytes] | None = None
    writer: PcapWriter | PcapNgWriter | None = None
    if fmt is not None:
        out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")  # noqa: SIM115
        writer = PcapNgWriter(out, ports) if fmt == "pcapng" else PcapWriter(out)
    records = open_stream(instance_socket(args), "capture", **fields)
    got = dropped = 0
    try:
        for record in records:
            if record.get("ok") is False:  # the stream failed on the server after it had begun
                raise ControlError(str(record.get("error")))
            got += 1
            dropped = int(record.get("dropped", 0))
            port = str(record.get("port", ports[0]))
            kind = str(record["dir"])
            link = kind.split(":", 2) if kind.startswith("link:") else None
            if isinstance(writer, PcapNgWriter):
                inbound = kind == "rx" or (link is not None and link[1:2] == ["in"])
                comment = f"vswitch link: {link[-1]}" if link is not None else None
                writer.write(
                    port, stamp_ns(record), unb64(record["data"]), INBOUND if inbound else OUTBOUND, comment
                )
                writer.flush()
            elif link is not None and writer is not None:
                pass  # a classic pcap has no comments: a lost frame would look like one sent
            elif writer is not None:
                writer.write(float(record["t"]), unb64(record["data"]))
                writer.flush()
            else:
                print(summary(record, port), flush=True)
            if args.count and got >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        records.close()
        if out is not None and out is not sys.stdout.buffer:
            out.close()
    where = f" to {args.write}" if args.write else ""
    print(
        f"{got} packets captured{where}; {dropped} dropped by the switch (client too slow)", file=sys.stderr
    )
    return 0


DESCRIPTION: Final = """\
Directions are the port's as the switch sees it: "in" (inbound) is a frame the switch read from the
port, "out" (outbound) one it wrote to the port.

-w FILE.pcapng (also: several ports with -w -, or --format pcapng) writes pcapng: one interface per
port, named after it, each frame's direction in its flags, nanosecond timestamps. -w FILE.pcap writes
classic pcap, for one port only."""


def add_parser(sub: Any) -> None:
    from ...core.bpf import __doc__ as filter_doc

    p = sub.add_parser(
        "capture",
        help="capture both directions of ports (pcap or pcapng with -w, else one line per packet)",
        description=DESCRIPTION + "\n\nFilter language: " + (filter_doc or "").split("\n\n", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ports", metavar="PORT[,PORT...]", nargs="?", help="the ports: namespace names, or 'host'")
    p.add_argument("--all", action="store_true", help="every port of the instance")
    p.add_argument(
        "--outer",
        action="store_true",
        help="on a VXLAN tunnel's port (vx42), the encapsulated packets (outer IPv4/UDP/VXLAN) instead "
        "of the inner frames; the filter then sees the outer packet",
    )
    p.add_argument("-w", "--write", metavar="FILE", help="write FILE.pcapng or FILE.pcap ('-' for stdout)")
    p.add_argument(
        "--format", choices=("pcap", "pcapng"), help="the file format (default: from FILE's extension)"
    )
    p.add_argument("-c", "--count", type=int, help="stop after N packets (all ports together)")
    p.add_argument(
        "-f",
        "--filter",
        metavar="EXPR",
        help="tcpdump-like, both families: icmp, tcp port 80, host 10.0.0.2, icmp6 and host fd00:77::2, "
        "net fd00:77::/64 ... (the language is above)",
    )
    p.add_argument("--name", default="default")

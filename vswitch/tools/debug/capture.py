"""`vswitch capture`: both directions of one port of a running switch, as pcap or summary lines.

Server side, the capture is a Shell observer on the port, so a switch with no capture pays nothing.
The observer only filters (bpf.py, raw bytes, no scapy) and appends to a bounded queue; a task
writes the queue to the client as JSON lines. A slow client never blocks the datapath: when the queue
is full the frame is dropped and counted, and every line carries the running drop count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Final

from ...core.wire import VNET_HDR_LEN
from ...shell.control import ControlError
from .common import b64, client_gone, instance_socket, port_stream_setup, unb64

if TYPE_CHECKING:
    from ...shell.instance import Instance

QUEUE_FRAMES: Final = 4096
QUEUE_BYTES: Final = 32 << 20


async def capture_stream(
    instance: Instance, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    setup = port_stream_setup(instance, req, writer)
    if setup is None:
        return
    port, matches, shell = setup
    count = int(req.get("count") or 0)  # 0: until the client goes away
    queue: collections.deque[tuple[str, float, bytes]] = collections.deque()
    state = {"bytes": 0, "dropped": 0}
    wake = asyncio.Event()

    def observer(direction: str, pkt: bytes) -> None:
        frame = pkt[VNET_HDR_LEN:]
        if not matches(frame):
            return
        if len(queue) >= QUEUE_FRAMES or state["bytes"] + len(frame) > QUEUE_BYTES:
            state["dropped"] += 1
            return
        queue.append((direction, time.time(), frame))
        state["bytes"] += len(frame)
        wake.set()

    shell.observe(port.id, observer)
    gone = asyncio.ensure_future(client_gone(reader))
    waiter: asyncio.Future[Any] | None = None
    sent = 0
    try:
        writer.write(json.dumps({"ok": True, "result": {"port": port.label}}).encode() + b"\n")
        await writer.drain()
        while not gone.done():
            waiter = asyncio.ensure_future(wake.wait())
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            wake.clear()
            while queue:
                direction, stamp, frame = queue.popleft()
                state["bytes"] -= len(frame)
                record = {"dir": direction, "t": stamp, "data": b64(frame), "dropped": state["dropped"]}
                writer.write(json.dumps(record).encode() + b"\n")
                sent += 1
                if count and sent >= count:
                    await writer.drain()
                    return
            await writer.drain()
    finally:
        shell.unobserve(port.id, observer)
        gone.cancel()
        if waiter is not None:  # still pending when the server's close() cancelled us
            waiter.cancel()


# --- client side -------------------------------------------------------------------------------------
def summary(record: dict[str, Any], port: str) -> str:
    import scapy.layers.inet  # noqa: F401  (binds IP, TCP, UDP, ICMP under Ether)
    from scapy.layers.l2 import Ether

    stamp = time.strftime("%H:%M:%S", time.localtime(record["t"])) + f".{int(record['t'] % 1 * 1e6):06d}"
    frame = unb64(record["data"])
    arrow = "in " if record["dir"] == "rx" else "out"
    return f"{stamp} {port} {arrow} {Ether(frame).summary()}  ({len(frame)} bytes)"


def cmd_capture(args: argparse.Namespace) -> int:
    from .common import stream as open_stream
    from .pcap import PcapWriter

    fields = {"port": args.port, "filter": args.filter, "count": args.count or 0}
    out: IO[bytes] | None = None
    writer: PcapWriter | None = None
    if args.write:
        out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")  # noqa: SIM115
        writer = PcapWriter(out)
    records = open_stream(instance_socket(args), "capture", **fields)
    got = dropped = 0
    try:
        for record in records:
            if record.get("ok") is False:  # the stream failed on the server after it had begun
                raise ControlError(str(record.get("error")))
            got += 1
            dropped = int(record.get("dropped", 0))
            if writer is not None:
                writer.write(float(record["t"]), unb64(record["data"]))
                writer.flush()
            else:
                print(summary(record, args.port), flush=True)
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


def add_parser(sub: Any) -> None:
    from .bpf import __doc__ as filter_doc

    p = sub.add_parser(
        "capture",
        help="capture both directions of a port (pcap with -w, else one line per packet)",
        description="Filter language: " + (filter_doc or "").split("\n\n", 1)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("port", metavar="PORT", help="the port: its namespace name, or 'host'")
    p.add_argument("-w", "--write", metavar="FILE.pcap", help="write a pcap file ('-' for stdout)")
    p.add_argument("-c", "--count", type=int, help="stop after N packets")
    p.add_argument(
        "-f", "--filter", metavar="EXPR", help="tcpdump-like: icmp, tcp port 80, host 10.0.0.2 ..."
    )
    p.add_argument("--name", default="default")

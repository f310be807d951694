"""`vswitch up --metrics [HOST:]PORT`: the counters in Prometheus text format, on GET /metrics.

A tiny asyncio HTTP/1.0 responder on the switch's own loop: one request per connection, the page built
from the counters at that moment (a read of a few lists; nothing on the packet path changes).
Loopback only unless --metrics-public: the counters name every namespace and address in use.
"""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import ip_address

from ..core.datapath import Datapath

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(text: str, public: bool = False) -> tuple[str, int]:
    """'9100' or '127.0.0.1:9100' or '[::1]:9100' -> (host, port); ValueError with one sentence."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--metrics {text!r}: expected [HOST:]PORT with PORT 1-65535")
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not public:
        raise ValueError(
            f"--metrics {text!r}: {host} is not a loopback address; add --metrics-public to allow it"
        )
    return host, int(port_text)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(datapath: Datapath) -> str:
    counters = datapath.counters
    lines: list[str] = []
    columns = (
        ("rx_packets", counters.rx_packets, "frames received from the port"),
        ("rx_bytes", counters.rx_bytes, "bytes received from the port (Ethernet, no vnet header)"),
        ("tx_packets", counters.tx_packets, "frames written to the port"),
        ("tx_bytes", counters.tx_bytes, "bytes written to the port"),
    )
    for name, values, text in columns:
        metric = f"vswitch_port_{name}_total"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{port="{_label(n)}"}} {values[i]}' for i, n in enumerate(counters.names)]
    lines += [
        "# HELP vswitch_drops_total frames dropped, by port and reason",
        "# TYPE vswitch_drops_total counter",
    ]
    for i, name in enumerate(counters.names):
        for reason, count in sorted(counters.drops[i].items()):
            lines.append(f'vswitch_drops_total{{port="{_label(name)}",reason="{_label(reason)}"}} {count}')
    lines += [
        "# HELP vswitch_router_drops_total packets the router dropped, by reason",
        "# TYPE vswitch_router_drops_total counter",
    ]
    if datapath.router is not None:
        for reason, count in sorted(datapath.router_drops().items()):
            lines.append(f'vswitch_router_drops_total{{reason="{_label(reason)}"}} {count}')
    flows = datapath.flows
    if flows is not None:
        lines += [
            "# HELP vswitch_flow_cache_lookups_total routed frames looked up in the flow cache, by result",
            "# TYPE vswitch_flow_cache_lookups_total counter",
            f'vswitch_flow_cache_lookups_total{{result="hit"}} {counters.flow_cache_hits}',
            f'vswitch_flow_cache_lookups_total{{result="miss"}} {counters.flow_cache_misses}',
            "# HELP vswitch_flow_cache_entries flows with a cached decision",
            "# TYPE vswitch_flow_cache_entries gauge",
            f"vswitch_flow_cache_entries {len(flows)}",
        ]
    entries = sum(len(s.switch.fdb) for s in datapath.segments)
    lines += ["# HELP vswitch_fdb_entries MAC addresses learned", "# TYPE vswitch_fdb_entries gauge"]
    lines.append(f"vswitch_fdb_entries {entries}")
    return "\n".join(lines) + "\n"


async def start_metrics(datapath: Datapath, host: str, port: int) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path.split("?", 1)[0] != "/metrics":
                status, body, ctype = "404 Not Found", "try /metrics\n", "text/plain"
            else:
                status, body, ctype = "200 OK", render(datapath), CONTENT_TYPE
            data = body.encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(client, host, port, limit=16384)

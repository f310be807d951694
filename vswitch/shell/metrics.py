"""`vswitch up --metrics [HOST:]PORT`: the counters in Prometheus text format, on GET /metrics.

prometheus-client does the exposition: `DatapathCollector.collect` builds metric families from the
counters when a scrape asks for them (nothing is added to the packet path, which keeps counting into
its plain lists), and `generate_latest` writes the HELP and TYPE lines, escapes label values and
formats the samples. The registry is a private one: no default collectors of the library's global
REGISTRY (its gc and platform series) leak in; the process collector is registered on purpose, as
process_cpu_seconds_total is the cost of a userspace switch and process_open_fds counts its taps.

The HTTP side stays a tiny asyncio HTTP/1.0 responder on the switch's own loop, not the library's
threaded server (`start_http_server`): the datapath is changed only on the loop's thread, and a
collect from another thread would read its lists and Counters while the loop grows them ("dict
changed size during iteration", or a page mixing two moments). Served on the loop, a scrape is one
synchronous read between two batches of packets. One request per connection, its head bounded in size
(16 KiB) and, like the reply, in time (5 s).

Loopback only unless --metrics-public: the counters name every namespace and address in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core.conntrack import KEY6
from ..core.counters import Event
from ..core.datapath import Datapath
from ..core.emulation import WHAT, Emulator
from ..core.router import Router
from .looplag import LoopLag

# The text format generate_latest writes (prometheus-client's CONTENT_TYPE_PLAIN_0_0_4; older
# releases, which pyproject allows, call it CONTENT_TYPE_LATEST, newer ones use that name for 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_LIMIT = 16384  # bytes of request head
TIMEOUT = 5.0  # seconds to send the request head, and to take the reply

PORT_COLUMNS = (
    ("rx_packets", "frames received from the port"),
    ("rx_bytes", "bytes received from the port (Ethernet, no vnet header)"),
    ("tx_packets", "frames written to the port"),
    ("tx_bytes", "bytes written to the port"),
)


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


class DatapathCollector:
    """The datapath's counters as metric families, read at scrape time.

    A counter family is named without its "_total" (CounterMetricFamily strips it, and the exposition
    adds it back to the family's samples and HELP/TYPE lines): the series are vswitch_..._total as
    they have always been. Call `collect` on the loop's thread only (see the module docstring).
    """

    def __init__(
        self, datapath: Datapath, emulator: Emulator | None = None, loop_lag: LoopLag | None = None
    ) -> None:
        self.datapath = datapath
        self.emulator = emulator
        self.loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        datapath = self.datapath
        counters = datapath.counters
        names = counters.names
        for column, text in PORT_COLUMNS:
            family = CounterMetricFamily(f"vswitch_port_{column}", text, labels=["port"])
            for name, value in zip(names, getattr(counters, column), strict=True):
                family.add_metric([name], value)
            yield family
        drops = CounterMetricFamily(
            "vswitch_drops", "frames dropped, by port and reason", labels=["port", "reason"]
        )
        for name, per_port in zip(names, counters.drops, strict=True):
            for reason, count in sorted(per_port.items()):
                drops.add_metric([name, reason], count)
        yield drops
        router = CounterMetricFamily(
            "vswitch_router_drops", "packets the router dropped, by reason", labels=["reason"]
        )
        if datapath.router is not None:
            for reason, count in sorted(datapath.router_drops().items()):
                router.add_metric([reason], count)
        yield router
        flows = datapath.flows
        if flows is not None:
            lookups = CounterMetricFamily(
                "vswitch_flow_cache_lookups",
                "routed frames looked up in the flow cache, by result",
                labels=["result"],
            )
            lookups.add_metric(["hit"], counters.flow_cache_hits)
            lookups.add_metric(["miss"], counters.flow_cache_misses)
            yield lookups
            yield GaugeMetricFamily("vswitch_flow_cache_entries", "flows with a cached decision", len(flows))
        entries = sum(len(segment.switch.fdb) for segment in datapath.segments)
        yield GaugeMetricFamily("vswitch_fdb_entries", "MAC addresses learned", entries)
        if datapath.router is not None:
            yield from self._router_tables(datapath.router)
        if self.emulator is not None and self.emulator.configured:
            yield from _emulation(self.emulator, names)
        if self.loop_lag is not None:
            lag = GaugeMetricFamily(
                "vswitch_loop_lag_seconds",
                "how late the event loop ran a periodic timer: last, largest of the last 10 s, largest",
                labels=["stat"],
            )
            snapshot = self.loop_lag.snapshot()
            for stat in ("last", "recent_max", "max"):
                lag.add_metric([stat], snapshot[stat])
            yield lag

    @staticmethod
    def _router_tables(router: Router) -> Iterator[Metric]:
        """The router's tables by family: neighbours (ARP, NDP) and tracked flows (IPv4, IPv6)."""
        neighbours = GaugeMetricFamily(
            "vswitch_neighbour_entries", "resolved neighbours, by family (ARP, NDP)", labels=["family"]
        )
        neighbours.add_metric(["ipv4"], len(router.arp.entries))
        if router.v6 is not None:
            neighbours.add_metric(["ipv6"], len(router.v6.nd.entries))
        yield neighbours
        yield from _services(router)
        if router.nat is not None:
            flows = GaugeMetricFamily(
                "vswitch_conntrack_flows", "tracked flows, by family", labels=["family"]
            )
            six = sum(len(flow.orig) == KEY6.size for flow in router.nat.conntrack.flows)
            flows.add_metric(["ipv4"], len(router.nat.conntrack) - six)
            flows.add_metric(["ipv6"], six)
            yield flows


def make_registry(
    datapath: Datapath,
    process: bool = True,
    emulator: Emulator | None = None,
    loop_lag: LoopLag | None = None,
) -> CollectorRegistry:
    """A private registry with the datapath's collector and, if process, the process collector."""
    registry = CollectorRegistry()
    registry.register(DatapathCollector(datapath, emulator, loop_lag))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(datapath: Datapath, process: bool = False, emulator: Emulator | None = None) -> str:
    """The exposition of the datapath's counters (and, if process, the process's), as served."""
    return generate_latest(make_registry(datapath, process, emulator)).decode()


async def start_metrics(
    datapath: Datapath,
    host: str,
    port: int,
    emulator: Emulator | None = None,
    loop_lag: LoopLag | None = None,
) -> asyncio.AbstractServer:
    registry = make_registry(datapath, emulator=emulator, loop_lag=loop_lag)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method != "GET":
                status, data, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path.split("?", 1)[0] != "/metrics":
                status, data, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            else:
                # On the loop's thread, between two batches: the counters cannot change under it.
                status, data, ctype = "200 OK", generate_latest(registry), CONTENT_TYPE
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + data
            )
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(client, host, port, limit=REQUEST_LIMIT)


def _services(router: Router) -> Iterator[Metric]:
    """DHCP's leases and messages, DNS's questions by how they were answered (the router's events)."""
    if router.dhcp is not None:
        now = time.monotonic()  # the loop's clock (uvloop's and asyncio's are the monotonic one)
        yield GaugeMetricFamily("vswitch_dhcp_leases", "bound DHCP leases", len(router.dhcp.bound(now)))
        messages = CounterMetricFamily(
            "vswitch_dhcp_messages", "DHCP messages received and sent, by type", labels=["type"]
        )
        for event in DHCP_MESSAGES:
            messages.add_metric([event.removeprefix("dhcp-")], router.events[event])
        yield messages
    if router.dns is not None:
        queries = CounterMetricFamily(
            "vswitch_dns_queries", "DNS questions, and how they were answered", labels=["result"]
        )
        for event in DNS_RESULTS:
            queries.add_metric([event.removeprefix("dns-")], router.events[event])
        yield queries
        yield GaugeMetricFamily(
            "vswitch_dns_cache_entries", "answers in the DNS cache", len(router.dns.cache)
        )


DHCP_MESSAGES: Final = (Event.DHCP_DISCOVER, Event.DHCP_REQUEST, Event.DHCP_DECLINE, Event.DHCP_RELEASE,
                        Event.DHCP_INFORM, Event.DHCP_OFFER, Event.DHCP_ACK, Event.DHCP_NAK)  # fmt: skip
DNS_RESULTS: Final = (Event.DNS_QUERY, Event.DNS_LOCAL, Event.DNS_NXDOMAIN, Event.DNS_REFUSED,
                      Event.DNS_CACHE_HIT, Event.DNS_FORWARDED, Event.DNS_TRUNCATED, Event.DNS_UPSTREAM_TCP,
                      Event.DNS_UPSTREAM_TIMEOUT)  # fmt: skip


def _emulation(emulator: Emulator, names: list[str]) -> Iterator[Metric]:
    """What each impaired link's stages did (delayed, lost, ...), what they hold, and the partitions."""
    packets = CounterMetricFamily(
        "vswitch_link_packets",
        "frames through an impaired link's stage, by what it did",
        labels=["port", "direction", "what"],
    )
    queued = GaugeMetricFamily(
        "vswitch_link_queued", "frames an impaired link holds", labels=["port", "direction"]
    )
    for direction, stages in (("in", emulator.ins), ("out", emulator.outs)):
        for port, stage in sorted(stages.items()):
            for what in WHAT:
                packets.add_metric([names[port], direction, what], stage.stats[what])
            queued.add_metric([names[port], direction], len(stage.queue))
    yield packets
    yield queued
    yield GaugeMetricFamily("vswitch_partitions", "partitions between ports", len(emulator.partitions))

"""The Prometheus exposition (vswitch/shell/metrics.py), read back with prometheus-client's own parser.

The series a dashboard was built on must not move: the expectations below are derived from the
datapath's counters under the names and labels the hand-written exposition used (vswitch_port_*_total
by port, vswitch_drops_total by port and reason, ...), not from the collector's code. The HTTP side
runs in-process on 127.0.0.1 (no root): 404, 405, an oversized head, and a scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from conftest import frame, mac
from prometheus_client.parser import text_string_to_metric_families
from test_flowcache import A_IP, C_IP, REMOTE, echo, echo_frame, world

from vswitch.core.datapath import Datapath
from vswitch.shell.metrics import CONTENT_TYPE, make_registry, render, start_metrics

Series = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted (label, value) pairs
COLUMNS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
ODD_NAMES = ('quote"d', "back\\slash", "new\nline", 'all\\"\n')


def busy_world() -> Datapath:
    """The flow cache test's routed world after pings (cached hits, misses), a TTL-1 ping the router
    drops, a runt, tx counted as the shell would, and ports whose names need escaping."""
    dp = world(cache=True)
    for seq in range(1, 4):
        dp.receive(0, echo_frame("a", echo(A_IP, C_IP, 9, seq=seq)), 0.1)
        dp.receive(0, echo_frame("a", echo(A_IP, REMOTE, 9, seq=seq, ttl=1)), 0.1)
    dp.receive(1, b"\x00", 0.1)
    for name in ODD_NAMES:
        port = dp.add_port(name, 0)
        dp.receive(port, frame(mac(0x70 + port), mac(0x71)), 0.2)
    dp.counters.tx_packets[2] += 3
    dp.counters.tx_bytes[2] += 294
    return dp


def expected_series(dp: Datapath) -> dict[Series, float]:
    """Every series today's dashboards read, with its value, straight from the counters."""
    c = dp.counters
    out: dict[Series, float] = {}
    for column in COLUMNS:
        for name, value in zip(c.names, getattr(c, column), strict=True):
            out[f"vswitch_port_{column}_total", (("port", name),)] = value
    for name, per_port in zip(c.names, c.drops, strict=True):
        for reason, count in per_port.items():
            out["vswitch_drops_total", (("port", name), ("reason", reason))] = count
    for reason, count in dp.router_drops().items():
        out["vswitch_router_drops_total", (("reason", reason),)] = count
    if dp.flows is not None:
        out["vswitch_flow_cache_lookups_total", (("result", "hit"),)] = c.flow_cache_hits
        out["vswitch_flow_cache_lookups_total", (("result", "miss"),)] = c.flow_cache_misses
        out["vswitch_flow_cache_entries", ()] = len(dp.flows)
    out["vswitch_fdb_entries", ()] = sum(len(s.switch.fdb) for s in dp.segments)
    router = dp.router
    if router is not None:
        out["vswitch_neighbour_entries", (("family", "ipv4"),)] = len(router.arp.entries)
        if router.v6 is not None:
            out["vswitch_neighbour_entries", (("family", "ipv6"),)] = len(router.v6.nd.entries)
        if router.nat is not None:
            six = sum(len(flow.orig) == 37 for flow in router.nat.conntrack.flows)
            out["vswitch_conntrack_flows", (("family", "ipv4"),)] = len(router.nat.conntrack) - six
            out["vswitch_conntrack_flows", (("family", "ipv6"),)] = six
    return out


def parsed(text: str) -> dict[Series, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_series_keeps_its_name_labels_and_value() -> None:
    dp = busy_world()
    want = expected_series(dp)
    # not vacuous: every kind of series is there, with traffic in it
    assert dp.counters.flow_cache_hits > 0 and dp.counters.flow_cache_misses > 0
    assert sum(dp.router_drops().values()) > 0 and sum(dp.drop_reasons().values()) > 0
    assert {name for name, _ in want} == {
        *(f"vswitch_port_{column}_total" for column in COLUMNS),
        "vswitch_drops_total",
        "vswitch_router_drops_total",
        "vswitch_flow_cache_lookups_total",
        "vswitch_flow_cache_entries",
        "vswitch_fdb_entries",
        "vswitch_neighbour_entries",
        "vswitch_conntrack_flows",
    }
    assert parsed(render(dp)) == want


def test_help_and_type_for_every_family_even_an_empty_one() -> None:
    dp = Datapath()
    dp.add_port("p0", dp.add_segment("lan"))  # no router: router drops has no samples, no flow cache
    text = render(dp)
    types = dict(line.split(" ", 3)[2:] for line in text.splitlines() if line.startswith("# TYPE "))
    helps = {line.split(" ", 3)[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert types == {
        **{f"vswitch_port_{column}_total": "counter" for column in COLUMNS},
        "vswitch_drops_total": "counter",
        "vswitch_router_drops_total": "counter",
        "vswitch_fdb_entries": "gauge",
    }
    assert helps == set(types)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vswitch_port_rx_packets"].type == "counter"  # the parser strips _total
    assert families["vswitch_port_rx_packets"].documentation == "frames received from the port"
    assert families["vswitch_router_drops"].samples == []


def test_label_values_are_escaped_and_parse_back() -> None:
    dp = busy_world()
    text = render(dp)
    assert 'port="quote\\"d"' in text and 'port="back\\\\slash"' in text and 'port="new\\nline"' in text
    ports = {
        s.labels["port"]
        for family in text_string_to_metric_families(text)
        if family.name == "vswitch_port_rx_packets"
        for s in family.samples
    }
    assert set(ODD_NAMES) <= ports
    assert all(line.startswith(("#", "vswitch_")) for line in text.splitlines())  # no raw newline


def test_the_served_registry_is_private_with_the_process_series_only() -> None:
    dp = busy_world()
    names = {family.name for family in make_registry(dp).collect()}
    extra = {name for name in names if not name.startswith("vswitch_")}
    assert extra and all(name.startswith("process_") for name in extra)  # no python_gc_*, python_info
    assert "process_cpu_seconds" in extra
    assert not any(f.name.startswith("process_") for f in make_registry(dp, process=False).collect())


def test_scraping_changes_no_counter() -> None:
    dp = busy_world()
    before = expected_series(dp), dp.counters.snapshot()
    render(dp, process=True)
    assert (expected_series(dp), dp.counters.snapshot()) == before


# --- the HTTP side, in-process ------------------------------------------------------------------------


async def ask(port: int, request: bytes) -> bytes:
    """Send request, read until the server closes; b"" if it cut the connection instead."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_server_answers_metrics_404_405_and_drops_an_oversized_head() -> None:
    dp = busy_world()
    replies: dict[str, bytes] = {}

    async def run() -> None:
        server = await start_metrics(dp, "127.0.0.1", 0)
        assert isinstance(server, asyncio.Server)  # asyncio.run's loop, not uvloop
        port = server.sockets[0].getsockname()[1]
        try:
            replies["metrics"] = await ask(port, b"GET /metrics?x=1 HTTP/1.0\r\nHost: x\r\n\r\n")
            replies["other"] = await ask(port, b"GET / HTTP/1.0\r\n\r\n")
            replies["post"] = await ask(port, b"POST /metrics HTTP/1.0\r\n\r\n")
            replies["huge"] = await ask(port, b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
    head, _, body = replies["metrics"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    headers: dict[str, Any] = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:])
    assert headers["Content-Type"] == CONTENT_TYPE and int(headers["Content-Length"]) == len(body)
    got = parsed(body.decode())
    assert {k: v for k, v in got.items() if k[0].startswith("vswitch_")} == expected_series(dp)
    assert ("process_cpu_seconds_total", ()) in got
    assert replies["other"].startswith(b"HTTP/1.0 404 Not Found\r\n")
    assert replies["post"].startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    assert replies["huge"] == b""  # over the 16 KiB head limit: closed without an answer

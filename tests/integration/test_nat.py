"""Masquerade, port forward and hairpin through the uplink, against real kernel peers (issue 3)."""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import (
    UPLINK_ADDRESS,
    UPSTREAM_ADDRESS,
    Env,
    Routed,
    finish,
    read_line,
    start_routed,
    stop_peer,
    transfer,
)

pytestmark = pytest.mark.root

TCP_BYTES = 100_000_000
PORT = r"(\d+)"


def http_server(env: Env, ns: str, bind: str, port: int, count: int = 1) -> subprocess.Popen[str]:
    server = env.peer(ns, "http-serve", "--bind", bind, "--port", str(port), "--count", str(count),
                      "--timeout", "20")  # fmt: skip
    assert read_line(server, 15, f"HTTP server in {ns} to listen") == "ready"
    return server


def http_get(env: Env, ns: str, url: str) -> dict[str, object]:
    return env.run_peer(ns, "http-get", "--url", url, "--timeout", "10", timeout=20)


def test_http_server_outside_sees_the_masqueraded_address(env: Env) -> None:
    r = start_routed(env)
    server = env.peer(r.wan, "http-serve", "--bind", UPSTREAM_ADDRESS, "--port", "80", "--timeout", "20")
    assert read_line(server, 15, "HTTP server outside to listen") == "ready"
    got = http_get(env, r.ns1, f"http://{UPSTREAM_ADDRESS}/")
    assert got == {"status": 200, "body": f"hello from {UPSTREAM_ADDRESS}"}
    assert finish(server, 10, "HTTP server outside")["clients"] == [UPLINK_ADDRESS]


def test_100mb_through_nat_arrive_intact(env: Env) -> None:
    r = start_routed(env)
    transfer(env, r.ns1, r.wan, UPSTREAM_ADDRESS, TCP_BYTES, seed=13)
    # The established flow crossed on the flow cache: the same bytes, without the router's slow path.
    events = r.sw.query("stats")["events"]
    assert events["flow-cache-hits"] > 10 * events["flow-cache-misses"]
    # The FIN ended the flow and its cache entries with it.
    assert r.sw.query("status")["flow_cache_max"] == 8192


def test_with_the_flow_cache_off_every_packet_takes_the_router(env: Env) -> None:
    r = start_routed(env, "--flow-cache", "0")
    transfer(env, r.ns1, r.wan, UPSTREAM_ADDRESS, 2_000_000, seed=17)
    assert r.sw.query("stats")["events"].keys().isdisjoint({"flow-cache-hits", "flow-cache-misses"})
    status = r.sw.query("status")
    assert (status["flow_cache_max"], status["flow_cache_entries"]) == (0, 0)


def test_udp_request_and_response_through_nat(env: Env) -> None:
    r = start_routed(env)
    echo = env.peer(r.wan, "udp-echo", "--bind", UPSTREAM_ADDRESS, "--port", "5353", "--timeout", "15")
    assert read_line(echo, 15, "UDP echo outside to bind") == "ready"
    got = env.run_peer(r.ns1, "udp-ask", "--host", UPSTREAM_ADDRESS, "--port", "5353", "--payload",
                       "question-1", "--timeout", "5", timeout=15)  # fmt: skip
    assert got["error"] is None and got["reply"] == "question-1"
    (peer,) = finish(echo, 10, "UDP echo")["peers"]
    assert peer.split(":")[0] == UPLINK_ADDRESS
    assert got["local"].split(":")[0] == r.ip[r.ns1]


def test_fragments_out_of_order_are_masqueraded_and_reassembled_outside(env: Env) -> None:
    """A datagram's fragments, last first: NAT holds the later ones until the first names the flow,
    then all of them leave masqueraded, and the outside's kernel reassembles the datagram."""
    r = start_routed(env)
    receiver = env.peer(r.wan, "udp-recv", "--bind", UPSTREAM_ADDRESS, "--port", "7007", "--count", "1",
                        "--timeout", "15")  # fmt: skip
    assert read_line(receiver, 15, "UDP receiver outside to bind") == "ready"
    sent = env.run_peer(r.ns1, "udp-fragments-reversed", "--source", r.ip[r.ns1], "--host", UPSTREAM_ADDRESS,
                        "--sport", "40100", "--port", "7007", "--size", "3500", "--timeout", "5")  # fmt: skip
    assert sent["fragments"] == 4
    assert finish(receiver, 15, "UDP receiver")["datagrams"] == [sent["expected"]]
    events = r.sw.query("stats")["router"]["events"]
    assert events.get("nat-fragment-held") == 3 and events.get("nat-fragment-released") == 3, events


def test_udp_to_a_closed_port_outside_is_refused_inside(env: Env) -> None:
    """The outside's port unreachable is translated back (RFC 5508): connected UDP sees ECONNREFUSED."""
    r = start_routed(env)
    got = env.run_peer(r.ns1, "udp-ask", "--host", UPSTREAM_ADDRESS, "--port", "9", "--timeout", "5",
                       timeout=15)  # fmt: skip
    assert got["error"] == "ConnectionRefusedError", got


def test_tcp_to_a_closed_port_outside_is_refused_inside(env: Env) -> None:
    """The outside's RST comes back translated to the inside client."""
    r = start_routed(env)
    got = env.run_peer(r.ns1, "tcp-connect", "--host", UPSTREAM_ADDRESS, "--port", "9", "--timeout", "5",
                       timeout=15)  # fmt: skip
    assert got["result"] == "refused", got


def test_udp_port_forward_answers_the_outside(env: Env) -> None:
    r = start_routed(env, "--forward", f"udp:5353={env.ns('3')}:53")
    echo = env.peer(r.ns3, "udp-echo", "--bind", r.ip[r.ns3], "--port", "53", "--timeout", "15")
    assert read_line(echo, 15, "UDP echo in ns3 to bind") == "ready"
    got = env.run_peer(r.wan, "udp-ask", "--host", UPLINK_ADDRESS, "--port", "5353", "--payload", "q",
                       "--timeout", "5", timeout=15)  # fmt: skip
    assert (got["error"], got["reply"]) == (None, "q")
    (peer,) = finish(echo, 10, "UDP echo in ns3")["peers"]
    assert peer == got["local"], "DNAT only: ns3 sees the outside client's own address and port"


def test_unsolicited_inbound_connections_do_not_reach_inside(env: Env) -> None:
    r = start_routed(env)
    listener = env.peer(r.ns1, "tcp-accept", "--bind", "0.0.0.0", "--port", "7000", "--timeout", "30",
                        stdin=True)  # fmt: skip
    assert read_line(listener, 15, "listener in ns1") == "ready"

    to_nat = env.run_peer(r.wan, "tcp-connect", "--host", UPLINK_ADDRESS, "--port", "7000",
                          "--timeout", "2", timeout=15)  # fmt: skip
    assert to_nat["result"] in ("timeout", "refused"), to_nat
    direct = env.run_peer(r.wan, "tcp-connect", "--host", r.ip[r.ns1], "--port", "7000",
                          "--timeout", "2", timeout=15)  # fmt: skip
    assert direct["result"] in ("timeout", "refused", "unreachable"), direct
    # The control: the listener does accept, from its own segment.
    local = env.run_peer(r.ns2, "tcp-connect", "--host", r.ip[r.ns1], "--port", "7000", "--timeout", "5",
                         timeout=15)  # fmt: skip
    assert local["result"] == "connected", local

    assert stop_peer(listener, 10, "listener in ns1")["peers"] == [r.ip[r.ns2]], "no SYN from outside"
    drops = r.sw.query("stats")["router"]["drops"]
    assert drops.get("nat-unsolicited", 0) >= 1, drops


def test_port_forward_reaches_ns3_with_the_real_client_address(env: Env) -> None:
    r = start_routed(env)
    server = http_server(env, r.ns3, r.ip[r.ns3], 80)
    got = http_get(env, r.wan, f"http://{UPLINK_ADDRESS}:8080/")
    assert got == {"status": 200, "body": f"hello from {r.ip[r.ns3]}"}
    assert finish(server, 10, "HTTP server in ns3")["clients"] == [UPSTREAM_ADDRESS]


def test_hairpin_from_inside_to_the_forwarded_port(env: Env) -> None:
    r = start_routed(env)
    server = http_server(env, r.ns3, r.ip[r.ns3], 80)
    got = http_get(env, r.ns1, f"http://{UPLINK_ADDRESS}:8080/")
    assert got == {"status": 200, "body": f"hello from {r.ip[r.ns3]}"}
    # Hairpin masquerades too, so ns3's answer comes back through the router (RFC 5382 REQ-8).
    assert finish(server, 10, "HTTP server in ns3")["clients"] == [UPLINK_ADDRESS]


def test_hairpin_within_one_segment(env: Env) -> None:
    """Client ns1 and target ns2 share a segment: without the masquerade ns2 would answer ns1 directly."""
    r = start_routed(env, "--forward", f"tcp:8081={env.ns('2')}:80")
    server = http_server(env, r.ns2, r.ip[r.ns2], 80)
    got = http_get(env, r.ns1, f"http://{UPLINK_ADDRESS}:8081/")
    assert got == {"status": 200, "body": f"hello from {r.ip[r.ns2]}"}
    assert finish(server, 10, "HTTP server in ns2")["clients"] == [UPLINK_ADDRESS]


def conntrack_rows(r: Routed, proto: str, orig: str, reply: str) -> list[re.Match[str]]:
    """Flows of proto whose orig and reply match the regexes; their groups: orig's, then reply's."""
    matches = []
    for row in r.sw.query("conntrack"):
        if row["proto"] != proto:
            continue
        m = re.fullmatch(f"{orig}\n{reply}", f"{row['orig']}\n{row['reply']}")
        if m:
            matches.append(m)
    return matches


def test_conntrack_shows_flows_with_their_nat_addresses(env: Env) -> None:
    r = start_routed(env)
    outside = http_server(env, r.wan, UPSTREAM_ADDRESS, 80)
    assert http_get(env, r.ns1, f"http://{UPSTREAM_ADDRESS}/")["status"] == 200
    finish(outside, 10, "HTTP server outside")
    echo = env.peer(r.wan, "udp-echo", "--bind", UPSTREAM_ADDRESS, "--port", "5353", "--timeout", "15")
    assert read_line(echo, 15, "UDP echo outside to bind") == "ready"
    asked = env.run_peer(r.ns1, "udp-ask", "--host", UPSTREAM_ADDRESS, "--port", "5353", "--timeout", "5",
                         timeout=15)  # fmt: skip
    (seen_by_echo,) = finish(echo, 10, "UDP echo")["peers"]
    inside = http_server(env, r.ns3, r.ip[r.ns3], 80)
    assert http_get(env, r.wan, f"http://{UPLINK_ADDRESS}:8080/")["status"] == 200
    finish(inside, 10, "HTTP server in ns3")

    esc = re.escape
    (tcp,) = conntrack_rows(
        r, "tcp",
        f"{esc(r.ip[r.ns1])}:{PORT} -> {esc(UPSTREAM_ADDRESS)}:80",
        f"{esc(UPSTREAM_ADDRESS)}:80 -> {esc(UPLINK_ADDRESS)}:{PORT}",
    )  # fmt: skip
    assert tcp.group(1) == tcp.group(2), "the internal port is preserved when free (RFC 4787)"
    (udp,) = conntrack_rows(
        r, "udp",
        f"{esc(asked['local'])} -> {esc(UPSTREAM_ADDRESS)}:5353",
        f"{esc(UPSTREAM_ADDRESS)}:5353 -> {esc(seen_by_echo)}",
    )  # fmt: skip
    assert seen_by_echo.startswith(f"{UPLINK_ADDRESS}:")
    (forward,) = conntrack_rows(
        r, "tcp",
        f"{esc(UPSTREAM_ADDRESS)}:{PORT} -> {esc(UPLINK_ADDRESS)}:8080",
        f"{esc(r.ip[r.ns3])}:80 -> {esc(UPSTREAM_ADDRESS)}:{PORT}",
    )  # fmt: skip
    assert forward.group(1) == forward.group(2), "DNAT keeps the client's address and port"
    assert udp is not None

"""Conntrack: every TCP transition in the table, invalid ones, timeouts and expiry on a fake clock,
assured flows, and the table-full policy (early drop of the oldest unassured flow)."""

from __future__ import annotations

import pytest

from vswitch.core.conntrack import (
    DEFAULT_TCP_TIMEOUTS,
    KEY,
    ORIGINAL,
    REPLY,
    TCP_TRANSITIONS,
    Conntrack,
    Flow,
    TcpEvent,
    TcpState,
    Timeouts,
    tcp_event,
)
from vswitch.core.wire import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

FLAGS = {
    TcpEvent.SYN: TCP_SYN,
    TcpEvent.SYNACK: TCP_SYN | TCP_ACK,
    TcpEvent.FIN: TCP_FIN | TCP_ACK,
    TcpEvent.ACK: TCP_ACK,
    TcpEvent.RST: TCP_RST | TCP_ACK,
    TcpEvent.NONE: 0,
}


def flow(n: int = 1, proto: int = PROTO_TCP) -> Flow:
    a, b = bytes([10, 0, 0, n]), bytes([198, 18, 0, 9])
    return Flow(proto, KEY.pack(proto, a, 1000, b, 80), KEY.pack(proto, b, 80, a, 1000), 0.0)


ALL = [
    (d, ev, before, after) for (d, ev), table in TCP_TRANSITIONS.items() for before, after in table.items()
]


@pytest.mark.parametrize(
    ("direction", "event", "before", "after"),
    ALL,
    ids=[f"{'orig' if d == 0 else 'reply'}-{e.name}-{b.name}" for d, e, b, _ in ALL],
)
def test_every_tcp_transition(direction: int, event: TcpEvent, before: TcpState, after: TcpState) -> None:
    ct = Conntrack()
    f = flow()
    ct.insert(f, 0.0)
    f.state = before
    assert ct.update(f, direction, FLAGS[event], 5.0)
    assert f.state is after
    assert f.expires == 5.0 + DEFAULT_TCP_TIMEOUTS[after]
    assert f.assured == (after is TcpState.ESTABLISHED)


INVALID = [
    (d, ev, s)
    for d in (ORIGINAL, REPLY)
    for ev in TcpEvent
    for s in TcpState
    if s not in TCP_TRANSITIONS.get((d, ev), {})
]


@pytest.mark.parametrize(("direction", "event", "state"), INVALID)
def test_invalid_transitions_keep_state(direction: int, event: TcpEvent, state: TcpState) -> None:
    ct = Conntrack()
    f = flow()
    ct.insert(f, 0.0)
    f.state = state
    assert not ct.update(f, direction, FLAGS[event], 1.0)
    assert f.state is state
    assert ct.events["conntrack-tcp-invalid"] == 1


def test_flags_to_event() -> None:
    assert tcp_event(TCP_RST | TCP_SYN) is TcpEvent.RST
    assert tcp_event(TCP_SYN | TCP_ACK) is TcpEvent.SYNACK
    assert tcp_event(TCP_FIN) is TcpEvent.FIN
    assert tcp_event(0) is TcpEvent.NONE


def test_full_connection_lifecycle() -> None:
    ct = Conntrack()
    f = flow()
    ct.insert(f, 0.0)
    steps = [
        (ORIGINAL, TcpEvent.SYN, TcpState.SYN_SENT),
        (REPLY, TcpEvent.SYNACK, TcpState.SYN_RECV),
        (ORIGINAL, TcpEvent.ACK, TcpState.ESTABLISHED),
        (ORIGINAL, TcpEvent.FIN, TcpState.FIN_WAIT),
        (REPLY, TcpEvent.ACK, TcpState.CLOSE_WAIT),
        (REPLY, TcpEvent.FIN, TcpState.LAST_ACK),
        (ORIGINAL, TcpEvent.ACK, TcpState.TIME_WAIT),
    ]
    for direction, event, state in steps:
        ct.update(f, direction, FLAGS[event], 1.0)
        assert f.state is state
    assert f.packets == [4, 3]


def test_lookup_both_directions_and_expiry_on_fake_clock() -> None:
    removed: list[Flow] = []
    ct = Conntrack(on_remove=removed.append)
    f = flow(proto=PROTO_UDP)
    ct.insert(f, 0.0)
    ct.update(f, ORIGINAL, 0, 0.0)
    assert ct.get(f.orig, 1.0) == (f, ORIGINAL)
    assert ct.get(f.reply, 1.0) == (f, REPLY)
    assert ct.next_deadline() == 30.0
    ct.update(f, REPLY, 0, 10.0)  # a reply: assured, the stream timeout
    assert f.assured and f.expires == 130.0
    assert ct.expire(30.0) == 0
    assert ct.next_deadline() == 130.0
    assert ct.expire(130.0) == 1
    assert removed == [f] and len(ct) == 0 and ct.keys == {}
    assert ct.next_deadline() is None


def test_expired_flow_is_gone_even_before_the_pass() -> None:
    ct = Conntrack(timeouts=Timeouts(icmp=5.0))
    f = flow(proto=PROTO_ICMP)
    ct.insert(f, 0.0)
    ct.update(f, ORIGINAL, 0, 0.0)
    assert ct.get(f.orig, 4.9) is not None
    assert ct.get(f.orig, 5.0) is None
    assert len(ct) == 0


def test_configurable_tcp_timeouts() -> None:
    timeouts = Timeouts(tcp={**DEFAULT_TCP_TIMEOUTS, TcpState.SYN_SENT: 3.0})
    ct = Conntrack(timeouts=timeouts)
    f = flow()
    ct.insert(f, 0.0)
    ct.update(f, ORIGINAL, TCP_SYN, 0.0)
    assert f.expires == 3.0
    ct.expire(3.0)
    assert len(ct) == 0


def test_full_table_evicts_oldest_unassured() -> None:
    ct = Conntrack(max_flows=3)
    flows = [flow(n) for n in (1, 2, 3)]
    for f in flows:
        ct.insert(f, 0.0)
        ct.update(f, ORIGINAL, TCP_SYN, 0.0)
    flows[0].state = TcpState.SYN_RECV
    ct.update(flows[0], ORIGINAL, TCP_ACK, 1.0)  # established: assured, never early-dropped
    assert ct.make_room(2.0)
    assert flows[1] not in ct.flows and flows[0] in ct.flows
    assert ct.events["conntrack-early-drop"] == 1


def test_full_table_of_assured_flows_refuses() -> None:
    ct = Conntrack(max_flows=2)
    for n in (1, 2):
        f = flow(n)
        ct.insert(f, 0.0)
        f.state = TcpState.SYN_RECV
        ct.update(f, ORIGINAL, TCP_ACK, 0.0)
    assert not ct.make_room(1.0)


def test_full_table_makes_room_by_expiring() -> None:
    ct = Conntrack(max_flows=1, timeouts=Timeouts(udp=1.0))
    f = flow(proto=PROTO_UDP)
    ct.insert(f, 0.0)
    ct.update(f, REPLY, 0, 0.0)  # assured, 120 s
    assert not ct.make_room(100.0)
    assert ct.make_room(120.0)


def test_duplicate_insert_is_misuse() -> None:
    ct = Conntrack()
    ct.insert(flow(), 0.0)
    with pytest.raises(ValueError):
        ct.insert(flow(), 0.0)


def test_table_rows() -> None:
    ct = Conntrack()
    f = flow()
    ct.insert(f, 0.0)
    ct.update(f, ORIGINAL, TCP_SYN, 0.0)
    (row,) = ct.table(10.0)
    assert row["orig"] == "10.0.0.1:1000 -> 198.18.0.9:80"
    assert row["state"] == "SYN_SENT" and row["expires_in"] == 110.0

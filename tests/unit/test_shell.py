"""The IO shell's read-decide-write loop over real kernel fds (AF_UNIX datagram socketpairs).

A datagram socket hands over one frame per read() and takes one per write(), as a tap does, and needs
no root. Each port's switch side is attached to a Shell; the test holds the other end ("the wire").
The event loop is never run: the tests call the reader callback the loop would call.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from conftest import Bench, H, frame, learn, make_readable, socketpair_ports

from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath
from vswitch.core.wire import VNET_HDR_LEN, Frame, Gather
from vswitch.shell.loop import BATCH, PEER_BACKOFF, Shell


def test_unicast_is_written_and_counted(bench: Bench) -> None:
    learn(bench)
    before = bench.datapath.counters.tx_packets[1], bench.datapath.counters.tx_bytes[1]
    sent = frame(H[0], H[1], size=200)
    bench.wires[0].send(sent)
    bench.readable(0)
    assert bench.received(1) == [sent]
    assert bench.received(2) == []
    counters = bench.datapath.counters
    assert counters.tx_packets[1] == before[0] + 1
    assert counters.tx_bytes[1] == before[1] + len(sent) - VNET_HDR_LEN


def test_a_batch_is_bounded(bench: Bench) -> None:
    learn(bench)
    for _ in range(BATCH + 5):
        bench.wires[0].send(frame(H[0], H[1]))
    bench.readable(0)
    assert len(bench.received(1)) == BATCH  # the rest waits for the next turn of the loop
    bench.readable(0)
    assert len(bench.received(1)) == 5


def test_the_answer_already_queued_at_the_destination_goes_out_in_the_same_turn(bench: Bench) -> None:
    """A namespace's stack answers inside our write (an echo reply, an ACK): the shell reads the port
    it just wrote to before returning to the loop, and only that port."""
    learn(bench)
    request, reply, unrelated = frame(H[0], H[1]), frame(H[1], H[0]), frame(H[2], H[0])
    bench.wires[1].send(reply)  # stands for the answer the destination queued during our write
    bench.wires[2].send(unrelated)
    bench.wires[0].send(request)
    bench.readable(0)
    assert bench.received(1) == [request]
    assert bench.received(0) == [reply]  # read from port 1 without a turn of the loop
    assert bench.inner[2].recv(65536) == unrelated  # port 2 was not read


def test_one_way_traffic_backs_off_from_looking_for_answers(bench: Bench) -> None:
    """A destination that had nothing to say is not read after each batch (a wasted read each time,
    for a one-way stream) but once every PEER_BACKOFF + 1; an answer found keeps the looks coming."""
    learn(bench)
    bench.wires[0].send(frame(H[0], H[1]))
    bench.readable(0)  # looked at port 1: nothing there
    bench.received(1)
    answer = frame(H[1], H[0])
    bench.wires[1].send(answer)  # from now on port 1 has something, but the shell backs off
    for _ in range(PEER_BACKOFF):
        bench.wires[0].send(frame(H[0], H[1]))
        bench.readable(0)
        assert bench.received(0) == []
    bench.wires[0].send(frame(H[0], H[1]))
    bench.readable(0)
    assert bench.received(0) == [answer]  # the next look found it
    bench.wires[1].send(answer)
    bench.wires[0].send(frame(H[0], H[1]))
    bench.readable(0)
    assert bench.received(0) == [answer]  # and, having found one, it looks again at once


def test_a_full_destination_is_a_counted_drop(bench: Bench) -> None:
    learn(bench)
    bench.inner[1].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    written_before = bench.datapath.counters.tx_packets[1]
    sent = 0
    while True:  # fill the far end's receive queue until the kernel refuses (bounded by its buffer)
        bench.wires[0].send(frame(H[0], H[1], size=1000))
        before = bench.datapath.counters.drops[1][Drop.TX_QUEUE_FULL]
        bench.readable(0)
        sent += 1
        if bench.datapath.counters.drops[1][Drop.TX_QUEUE_FULL] > before:
            break
        assert sent < 10_000
    # Every frame but the refused one was written and counted as sent; the refused one was not.
    assert bench.datapath.counters.tx_packets[1] - written_before == len(bench.received(1)) == sent - 1


def test_a_dead_destination_is_a_counted_drop_and_the_port_keeps_reading(bench: Bench) -> None:
    learn(bench)
    bench.wires[1].close()
    bench.wires[0].send(frame(H[0], H[1]))
    bench.readable(0)
    assert bench.datapath.counters.drops[1][Drop.TX_ERROR] == 1
    bench.wires[0].send(frame(H[0], H[2]))
    bench.readable(0)
    assert len(bench.received(2)) == 1


def test_a_gather_frame_leaves_whole_in_one_write(bench: Bench) -> None:
    """The flow cache hands over long frames as head + untouched payload (a Gather): one writev."""
    learn(bench)
    sent = frame(H[0], H[1], size=3000)
    head = b"\x00" * VNET_HDR_LEN + H[2] + H[0] + sent[VNET_HDR_LEN + 12 : 60]  # a rewritten head

    def routed(port: int, pkt: bytes, now: float) -> list[tuple[int, Frame]]:
        return [(1, Gather(head, memoryview(pkt)[60:]))]

    bench.datapath.forwarder = lambda port: routed  # type: ignore[method-assign,assignment]
    shell = bench.shell
    shell._drain_of[0] = shell._drainer(0, shell._reader_of[0])  # a drain binds forwarder when made
    captured: list[tuple[str, bytes]] = []
    for observed in (False, True):
        if observed:
            bench.shell.observe(1, lambda direction, data: captured.append((direction, data)))
        before = bench.datapath.counters.tx_bytes[1]
        bench.wires[0].send(sent)
        bench.readable(0)
        assert bench.received(1) == [head + sent[60:]]
        assert bench.datapath.counters.tx_bytes[1] - before == len(sent) - VNET_HDR_LEN
    assert captured == [("tx", head + sent[60:])]  # capture sees bytes, as from any other write


def test_a_deadline_a_batch_brings_in_between_two_checks_still_fires() -> None:
    """The core's next deadline is asked at most every TIMER_CHECK_INTERVAL: a batch that comes sooner
    leaves a re-check behind, so the timer it needs is armed with no more traffic after it."""
    loop = asyncio.new_event_loop()
    datapath = Datapath(ageing=1.0)
    shell = Shell(datapath, loop)
    wires, inner = socketpair_ports(datapath, shell, 2)
    fdb = datapath.segments[0].switch.fdb
    try:
        shell.start_timer()  # nothing to age: no timer, and the next check is an interval away
        wires[0].send(b"\x00" * 20)  # a runt: counted, learns nothing
        make_readable(shell, 0)
        wires[0].send(frame(H[0], H[1]))  # learns H[0]: the FDB now has a deadline, a second away
        make_readable(shell, 0)
        assert H[0] in fdb.entries and datapath.counters.drops[0][Drop.RUNT] == 1

        async def aged_out() -> bool:
            deadline = loop.time() + 5.0
            while H[0] in fdb.entries and loop.time() < deadline:
                await asyncio.sleep(0.02)  # polling: the timer runs on this loop meanwhile
            return H[0] not in fdb.entries

        assert loop.run_until_complete(aged_out()), "the ageing timer was never armed"
    finally:
        shell.detach_all()
        loop.close()
        for end in wires + inner:
            end.close()


class FlakyReader:
    """A tap whose first read fails with an error that is not a gone link, then hands over frames."""

    def __init__(self, frames: list[bytes]) -> None:
        self.reads: list[bytes | OSError] = [OSError(errno.EINVAL, "Invalid argument"), *frames]

    def read(self, size: int) -> bytes | None:
        if not self.reads:
            return None  # EAGAIN
        got = self.reads.pop(0)
        if isinstance(got, OSError):
            raise got
        return got


def test_rx_counts_every_frame_read_and_nothing_for_a_failed_read(bench: Bench) -> None:
    """As a NIC counts rx: every frame taken off the port, at the length it came with, whatever the
    hook did to it after; a read that failed received nothing (it is an rx-error drop)."""
    learn(bench)
    counters = bench.datapath.counters
    packets, nbytes = counters.rx_packets[0], counters.rx_bytes[0]
    sent = frame(H[0], H[1], size=300)
    shell = bench.shell
    shell._drain_of[0] = shell._drainer(0, FlakyReader([sent]))  # type: ignore[arg-type]
    bench.readable(0)
    assert bench.received(1) == [sent]
    assert counters.drops[0][Drop.RX_ERROR] == 1
    assert (counters.rx_packets[0] - packets, counters.rx_bytes[0] - nbytes) == (1, len(sent) - VNET_HDR_LEN)

    shell.hook = lambda port, pkt, now: None if len(pkt) > 200 else pkt[:100]  # drop long, cut short
    short = frame(H[0], H[1], size=150)
    bench.wires[0].send(sent)
    bench.wires[0].send(short)
    shell._drain_of[0] = shell._drainer(0, shell._reader_of[0])
    bench.readable(0)
    assert bench.received(1) == [short[:100]]
    assert counters.drops[0][Drop.HOOK] == 1
    assert counters.rx_packets[0] - packets == 3
    assert counters.rx_bytes[0] - nbytes == 2 * (len(sent) - VNET_HDR_LEN) + len(short) - VNET_HDR_LEN

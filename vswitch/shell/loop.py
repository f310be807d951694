"""The IO shell: moves bytes between tap fds and the datapath, and arms the core's one timer.

One reader callback per port fd. Each drains up to BATCH frames (or until EAGAIN), hands each to the
datapath and writes the verdict. No task, future or call_soon per packet; the clock is read once per
batch.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Final

from ..core.counters import Drop, Event
from ..core.datapath import Datapath, PortVerdict
from ..core.emulation import Emulator, Stage
from ..core.vlan import Trunk
from ..core.vxlan import Tunnel, Vtep
from ..core.wire import VNET_HDR_LEN, ZERO_VNET_HDR, Frame, Gather

BATCH: Final = 64
# 64 KiB TSO super-frame + the virtio-net header; anything smaller silently truncates (design.md).
READ_SIZE: Final = 65536 + VNET_HDR_LEN

# Read errors that mean the tap itself is gone; any other one costs a single frame.
LINK_GONE: Final = frozenset({errno.EBADF, errno.EBADFD, errno.ENODEV, errno.EIO})
# A write to a tap whose link is set down in its namespace fails with EIO (drivers/net/tun.c,
# tun_get_user). Such a run of failures is one episode: logged and counted once, and a timer looks this
# often for a frame to or from the port that shows it is up again.
LINK_DOWN_ERRNO: Final = errno.EIO
LINK_UP_CHECK_INTERVAL: Final = 1.0
# What a port may send above its segment's MTU: the Ethernet header and one 802.1Q tag (the kernel
# bridge and Open vSwitch drop frames over the port's MTU too). A GSO super-frame is exempt: its size
# on the wire is that of its segments.
MTU_OVERHEAD: Final = 14 + 4
OVER_MTU_LOG_INTERVAL: Final = 10.0  # an over-MTU port is logged at most this often
# A bug that raises on every frame must not write a traceback per frame: at most one every this often,
# with the count of those left out since the last.
ERROR_LOG_INTERVAL: Final = 10.0
PEER_BACKOFF: Final = 8  # after an empty look for an answer, the next 8 batches to that port skip it
SPIN_SLICE: Final = 0.002  # a busy poll hands the event loop its turn this often
# The core's next deadline is asked at most this often (seconds), not after every batch: a batch that
# comes sooner leaves one re-check for then, so a deadline it brought forward fires at most this late.
TIMER_CHECK_INTERVAL: Final = 0.01
log = logging.getLogger("vswitch")
# The emulator's clock. uvloop's loop.time() counts whole milliseconds, rounded down: a frame stamped
# with it could leave up to 1 ms before its delay had passed. CLOCK_MONOTONIC itself (the clock the
# loop's timers count from) stamps and releases exactly; the loop's timer only wakes the release.
EMULATION_CLOCK: Final = time.monotonic
# uvloop's timers count whole milliseconds and round a wait to the nearest one: armed for a due time
# less than 0.5 ms away, the timer fires at once, finds nothing due on the precise clock and is armed
# again, a spin that cost a third of a core at 10 Mbit/s of shaped TCP. Armed half a millisecond after
# the due time, it fires no earlier than that time (frames leave on average ~1 ms late, never early).
EMULATION_SLACK: Final = 0.0005
# What observers of a tunnel's remote port see: the outer packet as an Ethernet frame (zero MACs,
# IPv4), behind a zero virtio-net header, so capture can show it (--outer) or cut it to the inner frame.
OUTER_ETHERNET: Final = ZERO_VNET_HDR + bytes(12) + b"\x08\x00"
_OUTER_RX: Final = struct.Struct("!BBHHHBBH4s4sHHHH")


# An observer sees every frame a port receives ("rx") or is sent ("tx"), virtio-net header included.
Observer = Callable[[str, bytes], None]
# A hook sees every received frame before the datapath: return it (changed or not) or None to drop it.
Hook = Callable[[int, bytes, float], "bytes | None"]


class Shell:
    """Binds a Datapath to open fds on an event loop."""

    def __init__(self, datapath: Datapath, loop: asyncio.AbstractEventLoop) -> None:
        self.datapath = datapath
        self.loop = loop
        self.fds: dict[int, int] = {}  # port id -> fd
        self._fd_list: list[int] = []  # port id -> fd, -1 for ports with no fd (router)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._observers: dict[int, list[Observer]] = {}
        self._reader_of: dict[int, io.FileIO] = {}  # port id -> its reader
        self._drain_of: dict[int, Callable[[], int]] = {}  # port id -> its drain (_drainer)
        self._drains: list[Callable[[], int]] = []  # _drain_of's values, a snapshot to iterate
        self._last_out = -1  # the last port a unicast frame was written to, by _drain
        self._peer_skip: list[int] = []  # port id -> answer looks to skip (it had nothing)
        self._check_timer_at = 0.0  # loop time before which a batch leaves the timer to _recheck
        self._recheck: asyncio.TimerHandle | None = None
        # Opt-in busy polling (seconds): after traffic, keep reading every port for this long instead
        # of sleeping in epoll, so the next frame skips the wake-up latency. Costs a core while on.
        self.busy_poll = 0.0
        # True from the start of a spin until it ends, including while its next slice waits for its
        # turn (_spin_handle): a read in that gap must not start a second, concurrent spin.
        self._spinning = False
        self._spin_handle: asyncio.Handle | None = None
        self._spin_until = 0.0  # perf_counter time at which the spin stops, pushed on by traffic
        self._error_log_at = 0.0  # monotonic time before which a frame error is counted, not logged
        self._errors_unlogged = 0
        # port id -> the largest buffer read off it that is not dropped as over-mtu (vnet header
        # included); READ_SIZE - 1 (only a full buffer is refused) until set_port_mtu.
        self._max_frame: list[int] = []
        self._over_mtu_log: dict[int, tuple[float, int]] = {}  # port -> (next log time, frames unlogged)
        # Ports whose link is down in their namespace (writes fail with EIO): port -> its rx and tx
        # packet counts when the episode began; the timer ends the episode once either moves.
        self._links_down: dict[int, tuple[int, int]] = {}
        self._link_timer: asyncio.TimerHandle | None = None
        self.hook: Hook | None = None
        self._write = self._write_plain
        self._vtep_fds: list[int] = []
        # Opens a socket for a remote learned at run time (Instance._open_learned_remote): its fd.
        self.open_sender: Callable[[Tunnel, str], int] | None = None
        # A port with no drain of its own (a trunk's VLAN port) -> the drain that reads its answers.
        self._answer_of: dict[int, Callable[[], int]] = {}
        # Network emulation (core/emulation.py): a port's "in" stage takes its frames before the
        # datapath; "out" stages and partitions take frames on their way to a port. While there are
        # none, and no observers, the drains write directly (_divert False).
        self.emulator = Emulator(datapath.counters.drops)
        self._divert = False
        # Applies a carrier change the emulator asks for (port, up): the tap's TUNSETCARRIER.
        self.on_carrier: Callable[[int, bool], None] | None = None

    def attach(self, port: int, fd: int) -> None:
        self.fds[port] = fd
        self._grow(port)
        self._fd_list[port] = fd
        # FileIO.read answers EAGAIN with None instead of raising: each batch ends without building an
        # exception, and a read costs ~0.6 us less than os.read here (measured on this machine).
        reader = io.FileIO(fd, "rb", closefd=False)
        self._reader_of[port] = reader
        drain = self._drainer(port, reader)
        self._drain_of[port] = drain
        self._drains = list(self._drain_of.values())
        self.loop.add_reader(fd, self._on_readable, port, drain)

    def _grow(self, port: int) -> None:
        """Room for port in the lists indexed by port id."""
        while len(self._fd_list) <= port:
            self._fd_list.append(-1)
        while len(self._peer_skip) < len(self._fd_list):
            self._peer_skip.append(0)
        while len(self._max_frame) < len(self._fd_list):
            self._max_frame.append(READ_SIZE - 1)

    def set_port_mtu(self, port: int, mtu: int) -> None:
        """Frames read off port longer than mtu + MTU_OVERHEAD (and not GSO) are dropped as over-mtu:
        its interface's MTU was raised inside the namespace, past what the segment carries."""
        self._grow(port)
        self._max_frame[port] = min(READ_SIZE - 1, VNET_HDR_LEN + mtu + MTU_OVERHEAD)

    def reading(self, port: int) -> bool:
        """Whether the port is still read: False once its link went away (its namespace's process
        exited, or the namespace was removed) or it was detached."""
        return port in self._drain_of

    def detach(self, port: int) -> None:
        """Stop reading and writing a port (`vswitch port del`): its fd is the caller's to close."""
        fd = self.fds.pop(port, None)
        if fd is not None:
            self.loop.remove_reader(fd)
        self._reader_of.pop(port, None)
        if self._drain_of.pop(port, None) is not None:
            self._drains = list(self._drain_of.values())  # a new list: _spin may be iterating the old one
        if port < len(self._fd_list):
            self._fd_list[port] = -1
        self._links_down.pop(port, None)
        self._over_mtu_log.pop(port, None)

    def attach_sender(self, port: int, fd: int) -> None:
        """A port that is only written (a remote VTEP's raw socket): no reader of its own."""
        self._grow(port)
        self._fd_list[port] = fd

    def attach_vtep(self, vtep: Vtep, sock: socket.socket) -> None:
        """The underlay socket of a VTEP: its frames arrive on the port of the remote that sent them."""
        drain = self._vtep_drainer(vtep, sock)
        # Keyed by the tunnel's port; a second socket (a group's) by a number no port has.
        self._drain_of[vtep.ledger_port if vtep.ledger_port not in self._drain_of else -sock.fileno()] = drain
        self._drains = list(self._drain_of.values())
        self._vtep_fds.append(sock.fileno())
        self.loop.add_reader(sock.fileno(), self._on_readable, vtep.ledger_port, drain)

    def attach_trunk(self, trunk: Trunk, fd: int) -> None:
        """A trunk's tap: one fd for all its VLAN ports. Each frame read is classified by its tag
        (Datapath.receive_trunk); every VLAN port writes to this fd (the egress action tags it)."""
        for port in trunk.ports:
            self.attach_sender(port, fd)
        reader = io.FileIO(fd, "rb", closefd=False)
        self._reader_of[trunk.port] = reader
        drain = self._trunk_drainer(trunk, reader)
        self._drain_of[trunk.port] = drain
        for port in trunk.ports:
            self._answer_of[port] = drain
        self._drains = list(self._drain_of.values())
        self.fds[trunk.port] = fd
        self.loop.add_reader(fd, self._on_readable, trunk.port, drain)

    def _trunk_drainer(self, trunk: Trunk, reader: io.FileIO) -> Callable[[], int]:
        """The drain of a trunk's tap: up to BATCH frames, each classified by its tag and forwarded from
        its VLAN's port (tag and all: vlan.py)."""
        shell = self
        read = reader.read
        receive = self.datapath.receive_trunk
        self._grow(trunk.port)
        max_frame = self._max_frame

        def drain() -> int:
            now = shell.loop.time()
            hook = shell.hook
            limit = max_frame[trunk.port]
            count = 0
            last_out = -1
            for count in range(1, BATCH + 1):
                try:
                    pkt = read(READ_SIZE)
                except OSError as exc:
                    if shell._read_failed(trunk.port, exc):
                        count -= 1
                        break
                    continue
                if pkt is None:
                    count -= 1
                    break
                size = len(pkt)
                if size > limit and (size >= READ_SIZE or not pkt[1]):  # as in _drainer
                    shell._oversized(trunk.port, size)
                    continue
                if hook is not None:  # as on a tap port: the frame as the trunk carries it, tag and all
                    hooked = shell._hook_frame(trunk.port, pkt, now, hook)
                    if hooked is None:
                        continue
                    pkt = hooked
                try:
                    port, verdict = receive(trunk, pkt, now)
                except Exception:
                    shell._frame_error(
                        trunk.port, Drop.INTERNAL_ERROR, "internal error while deciding a frame"
                    )
                    continue
                observers = shell._observers.get(port) if shell._observers else None
                if observers is not None and not shell._observe_rx(port, observers, pkt):
                    continue
                last_out = shell._deliver(port, pkt, verdict, last_out)
            if count:
                shell._end_batch(now, last_out)
            return count

        return drain

    def detach_all(self) -> None:
        for fd in [*self.fds.values(), *self._vtep_fds]:
            self.loop.remove_reader(fd)
        self.fds.clear()
        self._vtep_fds.clear()
        self._reader_of.clear()
        self._drain_of.clear()
        self._drains = []
        self.busy_poll = 0.0
        if self._spin_handle is not None:
            self._spin_handle.cancel()
            self._spin_handle = None
        self._spinning = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._link_timer is not None:
            self._link_timer.cancel()
            self._link_timer = None
        self._links_down.clear()

    # --- observers: capture and live trace wrap a port, at no cost while there are none -----------
    def observe(self, port: int, observer: Observer) -> None:
        self._observers.setdefault(port, []).append(observer)
        self._write = self._write_observed
        self.emulation_changed()

    def unobserve(self, port: int, observer: Observer) -> None:
        observers = self._observers.get(port, [])
        if observer in observers:
            observers.remove(observer)
        if not observers:
            self._observers.pop(port, None)
        if not self._observers:
            self._write = self._write_plain
        self.emulation_changed()

    # --- port mirroring (--mirror): copies to a SPAN port, which sends nothing into a segment -----
    def attach_mirror(self, port: int, fd: int) -> None:
        """A mirror (SPAN) port's tap: written by mirror()'s copies only, and read only to drop what
        its namespace sends (mirror-port): it never sends into a segment."""
        self.attach_sender(port, fd)
        reader = io.FileIO(fd, "rb", closefd=False)
        self._reader_of[port] = reader
        drain = self._mirror_drainer(port, reader)
        self._drain_of[port] = drain
        self._drains = list(self._drain_of.values())
        self.fds[port] = fd
        self.loop.add_reader(fd, self._on_readable, port, drain)

    def mirror(self, source: int, target: int, directions: Sequence[str]) -> Observer:
        """Copy source's frames to target, each unchanged (virtio-net header and all) and after the
        original. "in": every frame read off source, as read: before the hook, an impaired link's in
        stage and the datapath, so also the ones dropped later (a real switch's SPAN copies ingress
        frames as received). "out": every frame written to source, as written (tagged, impaired),
        once the kernel took it. The copy is an observer of source, so a port that is not mirrored
        pays nothing (_divert, set while any port is observed, costs a dict lookup per unicast); a
        copy target's full queue costs the copy only (tx-queue-full on target)."""
        wanted = frozenset("rx" if d == "in" else "tx" for d in directions)
        shell = self

        def copy(what: str, frame: bytes) -> None:
            if what in wanted:
                shell._write(target, frame)

        self.observe(source, copy)
        return copy

    def _mirror_drainer(self, port: int, reader: io.FileIO) -> Callable[[], int]:
        """The drain of a mirror port: up to BATCH frames read (received, as a NIC counts them) and
        dropped as mirror-port; a capture on the port still sees them (rx)."""
        shell = self
        read = reader.read
        counters = self.datapath.counters

        def drain() -> int:
            observers = shell._observers.get(port) if shell._observers else None
            count = nbytes = failed = charged = 0
            for count in range(1, BATCH + 1):
                try:
                    pkt = read(READ_SIZE)
                except OSError as exc:
                    if shell._read_failed(port, exc):
                        count -= 1
                        break
                    failed += 1
                    continue
                if pkt is None:
                    count -= 1
                    break
                nbytes += len(pkt)
                if observers is not None and not shell._observe_rx(port, observers, pkt):
                    charged += 1  # an observer raised: an internal-error drop already
            received = count - failed
            if received:
                counters.received(port, received, max(0, nbytes - VNET_HDR_LEN * received))
                counters.drops[port][Drop.MIRROR_PORT] += received - charged
            return count

        return drain

    # --- the hot path ------------------------------------------------------------------------------
    def _on_readable(self, port: int, drain: Callable[[], int]) -> None:
        count = drain()
        if not count:
            return
        if count < BATCH:
            # The port just emptied. A local stack often answers inside our write (an echo reply, a
            # TCP ACK, an RPC response): read that port now rather than after a trip round the loop.
            # One-way traffic never answers: after an empty look, skip the next PEER_BACKOFF ones.
            out = self._last_out
            if out >= 0 and out != port:
                skip = self._peer_skip[out]
                if skip:
                    self._peer_skip[out] = skip - 1
                else:
                    peer = self._drain_of.get(out) or self._answer_of.get(out)
                    if peer is not None and not peer():
                        self._peer_skip[out] = PEER_BACKOFF
        if self.busy_poll:
            self._spin_until = time.perf_counter() + self.busy_poll
            if not self._spinning:  # one spin at a time, even between its slices
                self._spin()

    def _spin(self) -> None:
        """Busy-poll every port until busy_poll seconds pass with no frame. Every SPIN_SLICE it yields
        to the event loop (control socket, timers) and resumes without sleeping."""
        clock = time.perf_counter
        slice_end = clock() + SPIN_SLICE
        self._spin_handle = None
        self._spinning = True
        try:
            while self.busy_poll:
                now = clock()
                if now >= self._spin_until:
                    return
                if now >= slice_end:
                    self._spin_handle = self.loop.call_soon(self._spin)
                    return
                for drain in self._drains:
                    if drain():
                        self._spin_until = clock() + self.busy_poll
        finally:
            self._spinning = self._spin_handle is not None

    def _drainer(self, port: int, reader: io.FileIO) -> Callable[[], int]:
        """The drain of one port: read and forward up to BATCH frames, return how many were read.

        Made once per port when it is attached, so everything fixed is bound already and a wake-up
        costs only what changes: the clock, the observers and the hook (the API may set it from
        another thread; a batch picks it up at its start). Per batch, not per frame: the rx counters
        (one add each) and the timer check. Per frame: one read, the datapath's verdict, one write and
        the tx counters.
        """
        shell = self
        read = reader.read
        forwarder = self.datapath.forwarder
        counters = self.datapath.counters
        tx_packets, tx_bytes, drops = counters.tx_packets, counters.tx_bytes, counters.drops
        fds = self._fd_list
        loop_time = self.loop.time
        os_write = os.write
        self._grow(port)
        max_frame = self._max_frame

        def drain() -> int:
            observed = shell._observers
            observers = observed.get(port) if observed else None
            hook = shell.hook
            # Observers, out stages or partitions: a write they concern goes by _send (a port beside an
            # impaired one still takes the inlined write below, for the cost of two lookups).
            divert = shell._divert
            emulator = shell.emulator
            ins, outs, blocked = emulator.ins, emulator.outs, emulator.blocked
            stage_in = ins.get(port) if ins else None
            forward = forwarder(port)
            limit = max_frame[port]  # the longest buffer the port's MTU lets through (set_port_mtu)
            now = loop_time()
            count = nbytes = failed = 0
            # The tx counters of a run of frames to one port, added up when the port changes.
            run_out = -1
            run_frames = run_bytes = 0
            for count in range(1, BATCH + 1):
                try:
                    pkt = read(READ_SIZE)
                except OSError as exc:
                    if shell._read_failed(port, exc):
                        count -= 1
                        break
                    failed += 1  # nothing was received: it costs a turn of the budget only
                    continue
                if pkt is None:
                    count -= 1
                    break
                size = len(pkt)
                nbytes += size
                # One comparison for every frame, as the full-buffer check alone was; only a frame over
                # the limit looks further: a GSO super-frame (pkt[1], its gso_type) from a TSO stack
                # passes on, its segments are within the MTU (design.md).
                if size > limit and (size >= READ_SIZE or not pkt[1]):
                    shell._oversized(port, size)
                    continue
                # Observers and the hook are guarded like forward: what they raise costs this frame.
                if observers is not None and not shell._observe_rx(port, observers, pkt):
                    continue
                if hook is not None:
                    hooked = shell._hook_frame(port, pkt, now, hook)
                    if hooked is None:
                        continue
                    pkt = hooked
                if stage_in is not None:  # an impaired port: its stage decides when the frame goes on
                    shell._impair_in(port, stage_in, pkt, now)
                    continue
                try:
                    verdict = forward(port, pkt, now)
                except Exception:  # a bug must cost one frame, never the port (try is free in 3.11)
                    shell._frame_error(port, Drop.INTERNAL_ERROR, "internal error while deciding a frame")
                    continue
                if verdict.__class__ is int:
                    out, data = verdict, pkt  # the switch's unicast verdict: pkt as it is
                elif verdict is None:
                    continue
                elif verdict.__class__ is list and len(verdict) == 1:
                    out, data = verdict[0]  # a routed frame (flow cache or router)
                else:
                    shell._write_all(port, pkt, verdict)  # a flood, or the router's several frames
                    continue
                if divert and (out in observed or out in outs or (blocked and (port, out) in blocked)):
                    run_out = out
                    shell._send(port, out, data, now)
                    continue
                # _write_plain, inlined: one frame to one port is the per-packet path of nearly all.
                try:
                    if data.__class__ is bytes:
                        os_write(fds[out], data)
                    else:
                        os.writev(fds[out], data.parts)  # type: ignore[union-attr]  # a Gather: long payload, not copied
                except BlockingIOError:
                    drops[out][Drop.TX_QUEUE_FULL] += 1
                    continue
                except OSError as exc:
                    shell._tx_failed(out, exc)
                    continue
                if out != run_out:
                    if run_frames:
                        tx_packets[run_out] += run_frames
                        tx_bytes[run_out] += run_bytes - VNET_HDR_LEN * run_frames
                    run_out, run_frames, run_bytes = out, 0, 0
                run_frames += 1
                run_bytes += len(data)
            if run_frames:
                tx_packets[run_out] += run_frames
                tx_bytes[run_out] += run_bytes - VNET_HDR_LEN * run_frames
            if count:
                shell._last_out = run_out
                # Every frame read off the port, whatever befell it after (as a NIC counts rx); a
                # tap's frames all carry the vnet header.
                received = count - failed
                counters.received(port, received, max(0, nbytes - VNET_HDR_LEN * received))
                if now >= shell._check_timer_at:  # _end_batch, inlined: once per wake-up of every tap
                    shell._rearm(now)
                elif shell._recheck is None:
                    shell._recheck = shell.loop.call_at(shell._check_timer_at, shell._recheck_timer)
            return count

        return drain

    def _vtep_drainer(self, vtep: Vtep, sock: socket.socket) -> Callable[[], int]:
        """The drain of an underlay socket: up to BATCH datagrams, each handed to the core
        (Datapath.receive_underlay: checked, then forwarded as a frame from its remote's port)."""
        shell = self
        recv = sock.recvfrom
        datapath = self.datapath
        receive = datapath.receive_underlay
        counters = datapath.counters
        loop_time = self.loop.time
        dport = vtep.dstport
        local = socket.inet_aton(vtep.local)

        def drain() -> int:
            now = loop_time()
            count = 0
            last_out = -1
            for count in range(1, BATCH + 1):
                try:
                    payload, source = recv(READ_SIZE)
                except BlockingIOError:
                    count -= 1
                    break
                except OSError:
                    counters.drop(vtep.ledger_port, Drop.RX_ERROR)
                    continue
                try:
                    port, pkt, verdict = receive(vtep, payload, source[0], now)
                except Exception:
                    shell._frame_error(
                        vtep.ledger_port, Drop.INTERNAL_ERROR, "internal error on an underlay datagram"
                    )
                    continue
                if datapath.new_remotes:  # a VTEP just learned (a tunnel with a group): its socket
                    shell._open_learned_remotes()
                observers = shell._observers.get(port) if shell._observers else None
                if observers is not None:  # the outer packet, its IPv4 and UDP headers rebuilt
                    outer = OUTER_ETHERNET + _OUTER_RX.pack(
                        0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0,
                        socket.inet_aton(source[0]), local, source[1], dport, 8 + len(payload), 0,
                    ) + payload  # fmt: skip
                    if not shell._observe_rx(port, observers, outer):
                        continue
                if pkt is not None:
                    last_out = shell._deliver(port, pkt, verdict, last_out)
            if count:
                shell._end_batch(now, last_out)
            return count

        return drain

    # --- what every drain does around the datapath: observers, the hook, the writes, the batch's end ---
    def _observe_rx(self, port: int, observers: list[Observer], frame: bytes) -> bool:
        """Show frame to port's rx observers; False if one raised (a bug in capture or live trace,
        vswitch's own: the frame is an internal-error drop)."""
        try:
            for observer in observers:
                observer("rx", frame)
        except Exception:
            self._frame_error(port, Drop.INTERNAL_ERROR, "a capture or trace observer raised")
            return False
        return True

    def _hook_frame(self, port: int, pkt: bytes, now: float, hook: Hook) -> bytes | None:
        """pkt as the packet hook returns it, or None: dropped, as 'hook' (the API user's code: one
        that raises is charged as if it said None)."""
        try:
            hooked = hook(port, pkt, now)
        except Exception:
            self._frame_error(port, Drop.HOOK, "the packet hook raised")
            return None
        if hooked is None:
            self.datapath.counters.drop(port, Drop.HOOK)
        return hooked

    def _deliver(self, port: int, pkt: bytes, verdict: PortVerdict, last_out: int) -> int:
        """Write a verdict for pkt from port; returns the port a unicast went to (else last_out)."""
        if isinstance(verdict, int):
            if self._divert:
                self._send(port, verdict, pkt, self.loop.time())
            else:
                self._write(verdict, pkt)
            return verdict
        self._write_all(port, pkt, verdict)
        return last_out

    def _end_batch(self, now: float, last_out: int) -> None:
        """After a batch that read something: remember where its unicast went (a local stack often
        answers at once: _on_readable reads that port next), and check the core's deadline, at most
        every TIMER_CHECK_INTERVAL, leaving one re-check for later when it is too soon."""
        self._last_out = last_out
        if now >= self._check_timer_at:
            self._rearm(now)
        elif self._recheck is None:
            self._recheck = self.loop.call_at(self._check_timer_at, self._recheck_timer)

    def _open_learned_remotes(self) -> None:
        """Sockets for the remotes the datapath just learned (a tunnel with a group)."""
        for tunnel, address, port in self.datapath.new_remotes:
            fd = self.open_sender(tunnel, address) if self.open_sender is not None else -1
            self.attach_sender(port, fd)
        self.datapath.new_remotes.clear()

    def _read_failed(self, port: int, exc: OSError) -> bool:
        """A read raised: True if the link is gone (stop reading it), else one frame lost (counted)."""
        if exc.errno not in LINK_GONE:
            self.datapath.counters.drop(port, Drop.RX_ERROR)
            return False
        # The link went away under us (`ip link del` in its namespace, or the namespace was removed):
        # the fd stays ours (closed at teardown), but nothing will come from it again. Stop reading it,
        # and stop looking at it: an fd whose device is gone is readable (EPOLLERR) for ever.
        reader = self._reader_of.pop(port, None)
        if reader is not None:
            self.loop.remove_reader(reader.fileno())
        self._drain_of.pop(port, None)
        self._drains = list(self._drain_of.values())  # a new list: _spin may be iterating the old one
        self._links_down.pop(port, None)
        self.datapath.counters.events[Event.PORT_GONE] += 1
        log.warning(
            "port %s: its tap is gone (%s: deleted in its namespace, or the namespace was removed); "
            "no longer reading it, frames to it are dropped",
            self._name(port),
            exc.strerror,
        )
        return True

    def _name(self, port: int) -> str:
        names = self.datapath.counters.names
        return names[port] if 0 <= port < len(names) else str(port)

    def _oversized(self, port: int, size: int) -> None:
        """Drop a buffer of size read off port, over its limit and not a GSO super-frame: one that
        filled the buffer is truncated; else the frame is over the segment's MTU (logged, at most once
        per OVER_MTU_LOG_INTERVAL for each port)."""
        if size >= READ_SIZE:
            self.datapath.counters.drop(port, Drop.TRUNCATED)
            return
        self.datapath.counters.drop(port, Drop.OVER_MTU)
        now = time.monotonic()
        next_at, unlogged = self._over_mtu_log.get(port, (0.0, 0))
        if now < next_at:
            self._over_mtu_log[port] = (next_at, unlogged + 1)
            return
        self._over_mtu_log[port] = (now + OVER_MTU_LOG_INTERVAL, 0)
        mtu = self._max_frame[port] - VNET_HDR_LEN - MTU_OVERHEAD
        more = f" ({unlogged} more since the last report)" if unlogged else ""
        log.warning(
            "port %s: dropped a %d-byte frame, over the segment's MTU %d (+%d for the Ethernet header "
            "and a VLAN tag): was the interface's MTU raised inside the namespace?%s",
            self._name(port),
            size - VNET_HDR_LEN,
            mtu,
            MTU_OVERHEAD,
            more,
        )

    def _tx_failed(self, port: int, exc: OSError) -> None:
        """The kernel refused a write to port: a tx-error drop. EIO means its link is set down in its
        namespace: the start of such an episode is logged and counted once (_check_links_up ends it)."""
        self.datapath.counters.drops[port][Drop.TX_ERROR] += 1
        if exc.errno != LINK_DOWN_ERRNO or port in self._links_down:
            return
        counters = self.datapath.counters
        self._links_down[port] = (counters.rx_packets[port], counters.tx_packets[port])
        counters.events[Event.PORT_LINK_DOWN] += 1
        log.warning("port %s: link is down in its namespace; frames to it are dropped", self._name(port))
        if self._link_timer is None:
            self._link_timer = self.loop.call_later(LINK_UP_CHECK_INTERVAL, self._check_links_up)

    def _check_links_up(self) -> None:
        """Each port down since the last look: up again once a frame was read from it (a link that is
        down sends nothing) or written to it (a down link refuses every write)."""
        self._link_timer = None
        counters = self.datapath.counters
        for port, (rx, tx) in list(self._links_down.items()):
            if counters.rx_packets[port] != rx or counters.tx_packets[port] != tx:
                del self._links_down[port]
                counters.events[Event.PORT_LINK_UP] += 1
                log.warning("port %s: link is up again; forwarding to it", self._name(port))
        if self._links_down:
            self._link_timer = self.loop.call_later(LINK_UP_CHECK_INTERVAL, self._check_links_up)

    def _write_all(self, port: int, pkt: bytes, verdict: PortVerdict) -> None:
        """A flood (a tuple of ports: pkt to each) or a list of (port, frame) to write; or a Drop of
        the frame from port, for the datapath to count."""
        if isinstance(verdict, Drop):
            self.datapath.count_drop(port, verdict)
            return
        if self._divert:
            now = self.loop.time()
            if isinstance(verdict, tuple):
                for out in verdict:
                    self._send(port, out, pkt, now)
            elif verdict is not None and not isinstance(verdict, int):
                for out, data in verdict:
                    self._send(port, out, data, now)
            return
        write = self._write
        if isinstance(verdict, tuple):
            for out in verdict:
                write(out, pkt)
        elif verdict is not None and not isinstance(verdict, int):
            for out, data in verdict:
                write(out, data)

    def _frame_error(self, port: int, reason: Drop, what: str) -> None:
        """Count a frame lost to an exception (call it from the except block) and log it, rate-limited."""
        self.datapath.counters.drop(port, reason)
        self._log_error(f"port {self.datapath.counters.names[port]}: {what} (frame dropped)")

    def _log_error(self, message: str) -> None:
        """The traceback of the exception being handled, at most once per ERROR_LOG_INTERVAL."""
        now = time.monotonic()
        if now < self._error_log_at:
            self._errors_unlogged += 1
            return
        self._error_log_at = now + ERROR_LOG_INTERVAL
        if self._errors_unlogged:
            message += f"; {self._errors_unlogged} more errors since the last report"
            self._errors_unlogged = 0
        log.exception("%s", message)

    def _write_plain(self, port: int, data: Frame) -> bool:
        fd = self._fd_list[port]
        counters = self.datapath.counters
        try:
            if isinstance(data, Gather):
                os.writev(fd, data.parts)
            else:
                os.write(fd, data)
        except BlockingIOError:
            counters.drops[port][Drop.TX_QUEUE_FULL] += 1
            return False
        except OSError as exc:
            self._tx_failed(port, exc)
            return False
        counters.tx_packets[port] += 1
        counters.tx_bytes[port] += len(data) - VNET_HDR_LEN
        return True

    def _write_observed(self, port: int, data: Frame) -> bool:
        sent = self._write_plain(port, data)
        if sent:
            frame = bytes(data)  # a Gather joined: observers keep frames as bytes
            if port in self.datapath.encaps:  # an outer packet, as a frame (OUTER_ETHERNET)
                frame = OUTER_ETHERNET + frame
            try:
                for observer in self._observers.get(port, ()):
                    observer("tx", frame)
            except Exception:  # the frame has already left: count the observer's failure, not a drop
                self.datapath.counters.events[Event.OBSERVER_ERROR] += 1
                self._log_error(f"port {self.datapath.counters.names[port]}: an observer raised on tx")
        return sent

    def send(self, frames: Sequence[tuple[int, Frame]]) -> None:
        """Frames the core made by itself (timers, answers from upstream): no port sent them, so no
        partition applies, but an impaired port's out stage does."""
        if self._divert:
            now = self.loop.time()
            for port, data in frames:
                self._send(-1, port, data, now)
            return
        for port, data in frames:
            self._write(port, data)

    # --- network emulation: the stages and partitions (core/emulation.py) ---------------------------
    def emulation_changed(self) -> None:
        """After the emulator's stages or partitions change: whether writes go by _send, the carriers
        it asks for, and the timer (a new stage may be due sooner)."""
        emulator = self.emulator
        self._divert = bool(self._observers) or emulator.active
        for direction, stages in (("in", emulator.ins), ("out", emulator.outs)):
            for port, stage in stages.items():
                observed = port in self._observers
                stage.observe = functools.partial(self._observe_link, port, direction) if observed else None
        if emulator.carrier_changes:
            changes = list(emulator.carrier_changes)
            emulator.carrier_changes.clear()
            if self.on_carrier is not None:
                for port, up in changes:
                    self.on_carrier(port, up)
        if self._timer_at is not None or emulator.ins or emulator.outs:
            self._rearm(self.loop.time())

    def _observe_link(self, port: int, direction: str, what: str, pkt: bytes) -> None:
        """A stage's event (a frame lost, duplicated, ...) to the port's observers as "link:DIR:WHAT"."""
        try:
            for observer in self._observers.get(port, ()):
                observer(f"link:{direction}:{what}", pkt)
        except Exception:
            self.datapath.counters.events[Event.OBSERVER_ERROR] += 1
            self._log_error(f"port {self.datapath.counters.names[port]}: an observer raised on a link event")

    def _send(self, in_port: int, out: int, data: Frame, now: float) -> None:
        """data, from in_port, to out: unless a partition stands between them, through out's stage if
        it is impaired, else written."""
        emulator = self.emulator
        if emulator.blocked and (in_port, out) in emulator.blocked:
            self.datapath.counters.drops[in_port][Drop.PARTITIONED] += 1
            return
        stage = emulator.outs.get(out)
        if stage is None:
            self._write(out, data)
            return
        ready: list[bytes] = []
        stage.push(data if isinstance(data, bytes) else bytes(data), EMULATION_CLOCK(), ready)
        for frame in ready:
            self._write(out, frame)
        self._wake(stage)

    def _impair_in(self, port: int, stage: Stage, pkt: bytes, now: float) -> None:
        """A frame read from an impaired port: what its stage lets through now goes on to the datapath."""
        ready: list[bytes] = []
        stage.push(pkt, EMULATION_CLOCK(), ready)
        for frame in ready:
            self._forward(port, frame, now)
        self._wake(stage)

    def _forward(self, port: int, pkt: bytes, now: float) -> None:
        """One frame from port through the datapath and out, off the drains' inlined path (frames an
        in stage held or passed)."""
        try:
            verdict = self.datapath.forwarder(port)(port, pkt, now)
        except Exception:
            self._frame_error(port, Drop.INTERNAL_ERROR, "internal error while deciding a frame")
            return
        if verdict is None:
            return
        if isinstance(verdict, list) and len(verdict) == 1:
            out, data = verdict[0]
            if self._divert:
                self._send(port, out, data, now)
            else:
                self._write(out, data)
            return
        self._deliver(port, pkt, verdict, -1)

    def _wake(self, stage: Stage) -> None:
        """A stage's head may now be due before the timer: arm it for then (the drains check the core's
        deadline only every TIMER_CHECK_INTERVAL, too coarse for a delay)."""
        due = stage.next_due()
        if due is None:
            return
        due += EMULATION_SLACK
        if self._timer_at is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._on_timer)

    def _release(self, now: float) -> None:
        """The emulator's frames due by now: held ingress frames go to the datapath, egress ones out."""
        ingress, egress = self.emulator.release(EMULATION_CLOCK())
        for port, pkt in ingress:
            if port in self._drain_of:  # not a port removed meanwhile
                self._forward(port, pkt, now)
        for port, pkt in egress:
            if port < len(self._fd_list) and self._fd_list[port] >= 0:
                self._write(port, pkt)

    def inject(self, port: int, data: bytes) -> bool:
        """Deliver a crafted buffer (virtio-net header + frame) into the namespace behind port."""
        return self._write(port, data)

    # --- the one timer -----------------------------------------------------------------------------
    def _rearm(self, now: float) -> None:
        self._check_timer_at = now + TIMER_CHECK_INTERVAL
        for notice in self.datapath.take_notices():  # the loop guard's blocks and recoveries
            log.warning("%s", notice)
        deadline = self.datapath.next_deadline()
        emulator = self.emulator
        if emulator.ins or emulator.outs:
            due = emulator.deadline(now)
            if due is not None and (deadline is None or due + EMULATION_SLACK < deadline):
                deadline = due + EMULATION_SLACK
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(max(deadline, now), self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        self._timer = None
        self._timer_at = None
        self.send(self.datapath.on_timer(now))
        emulator = self.emulator
        if emulator.ins or emulator.outs:
            self._release(now)
            self.emulation_changed()  # a cleared stage that emptied went; a flap moved a carrier
        self._rearm(now)

    def _recheck_timer(self) -> None:
        """The batches of the last TIMER_CHECK_INTERVAL skipped the deadline check: do it now."""
        self._recheck = None
        self._rearm(self.loop.time())

    def start_timer(self) -> None:
        self._rearm(self.loop.time())


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio is the fallback
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop

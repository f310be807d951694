"""Shared helpers for unit tests: addresses and scapy-built buffers as the tap hands them over.

Every buffer is ``[virtio_net_hdr (10 bytes)][Ethernet frame]``. The helpers are plain functions
(``from conftest import frame, mac``) so a test reads as the packet it sends.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vswitch.core.datapath import Datapath
from vswitch.core.wire import BROADCAST_MAC, VNET_HDR, ZERO_VNET_HDR, mac_str
from vswitch.shell.loop import Shell

BROADCAST = BROADCAST_MAC


def mac(n: int) -> bytes:
    """A locally administered unicast MAC, 02:00:00:00:xx:xx, distinct for each n < 65536."""
    return bytes((0x02, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF))


def ip_of(n: int) -> str:
    """An IPv4 address in 10.0.0.0/8 that goes with mac(n)."""
    return f"10.0.{n >> 8 & 0xFF}.{n & 0xFF}"


def vnet_header(
    flags: int = 0,
    gso_type: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    """A virtio_net_hdr with the given fields (all zero: a plain frame, nothing to finish)."""
    header: bytes = VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return header


def _text(address: bytes | str) -> str:
    return address if isinstance(address, str) else mac_str(address)


def ether(
    src: bytes | str, dst: bytes | str, inner: Packet, vlan: int | None = None, size: int | None = None
) -> bytes:
    """raw(Ether(...)/[Dot1Q/]inner), padded with zeros to ``size`` bytes when given."""
    head = Ether(src=_text(src), dst=_text(dst))
    pkt = head / Dot1Q(vlan=vlan) / inner if vlan is not None else head / inner
    data = raw(pkt)
    if size is not None:
        if size < len(data):
            raise ValueError(f"size {size} is below the {len(data)} bytes the headers need")
        data += bytes(size - len(data))
    return data


def frame(
    src: bytes | str,
    dst: bytes | str,
    payload: bytes = b"",
    vnet: bytes = ZERO_VNET_HDR,
    vlan: int | None = None,
    size: int | None = None,
) -> bytes:
    """A vnet header plus Ether/[Dot1Q]/IP/UDP/payload; ``size`` is the Ethernet frame's length."""
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1024, dport=4789) / Raw(payload)
    return vnet + ether(src, dst, inner, vlan=vlan, size=size)


def arp_request(src: bytes | str, sender_ip: str, target_ip: str, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    """A broadcast ARP who-has, as a host sends before its first packet."""
    inner = ARP(op=1, hwsrc=_text(src), psrc=sender_ip, pdst=target_ip)
    return vnet + ether(src, BROADCAST, inner)


def payload_of(buffer: bytes) -> bytes:
    """The UDP payload of a buffer built by frame(), without any padding after it."""
    udp = Ether(buffer[len(ZERO_VNET_HDR) :])[UDP]
    return raw(udp)[8 : udp.len]


def checksums_valid(ip: Packet) -> None:
    """The IPv4 and L4 checksums of ip are what scapy computes afresh (a UDP checksum of 0: none)."""
    copy = IP(bytes(ip))
    del copy.chksum
    layer = copy.payload
    if hasattr(layer, "chksum") and not (isinstance(layer, UDP) and layer.chksum == 0):
        del layer.chksum
    rebuilt = IP(bytes(copy))
    assert rebuilt.chksum == ip.chksum
    if hasattr(ip.payload, "chksum"):
        assert rebuilt.payload.chksum == ip.payload.chksum


# --- the IO shell over socketpairs (test_shell.py, test_shell_and_control_errors.py) -----------------
def socketpair_ports(
    datapath: Datapath, shell: Shell, count: int
) -> tuple[list[socket.socket], list[socket.socket]]:
    """count ports on one new segment, each an AF_UNIX datagram socketpair the shell reads and
    writes as it would a tap: (the far ends, the wires a test holds; the ends the shell has)."""
    segment = datapath.add_segment("lan")
    wires: list[socket.socket] = []
    inner: list[socket.socket] = []
    for i in range(count):
        assert datapath.add_port(f"p{i}", segment) == i
        switch_end, wire_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for end in (switch_end, wire_end):
            end.setblocking(False)
        shell.attach(i, switch_end.fileno())
        wires.append(wire_end)
        inner.append(switch_end)
    return wires, inner


def make_readable(shell: Shell, port: int) -> None:
    """What the event loop does when port's fd is readable."""
    shell._on_readable(port, shell._drain_of[port])


def drain_wire(wire: socket.socket) -> list[bytes]:
    """Every frame waiting on a wire (what the shell wrote to that port so far)."""
    frames = []
    while True:
        try:
            frames.append(wire.recv(65536))
        except BlockingIOError:
            return frames


# --- three hosts, one behind each port of a shell (test_shell.py, test_runtime_faults.py) -------------
H = [mac(i) for i in range(3)]  # host i lives behind port i of the bench


@dataclass
class Bench:
    shell: Shell
    datapath: Datapath
    wires: list[socket.socket]  # the far end of each port
    inner: list[socket.socket]  # the ends the shell reads and writes

    def readable(self, port: int) -> None:
        make_readable(self.shell, port)

    def received(self, port: int) -> list[bytes]:
        """Every frame the shell wrote to port so far."""
        return drain_wire(self.wires[port])


@pytest.fixture
def bench() -> Iterator[Bench]:
    loop = asyncio.new_event_loop()
    datapath = Datapath()
    shell = Shell(datapath, loop)
    wires, inner = socketpair_ports(datapath, shell, 3)
    try:
        yield Bench(shell, datapath, wires, inner)
    finally:
        shell.detach_all()
        loop.close()
        for end in wires + inner:
            end.close()


def learn(bench: Bench) -> None:
    """Every host says something once, so the FDB knows where each lives; then forget the copies."""
    for port, host in enumerate(H):
        bench.wires[port].send(frame(host, H[(port + 1) % 3]))
        bench.readable(port)
    for port in range(3):
        bench.received(port)

"""A load generator for floods: prebuilt frames sent through an AF_PACKET socket, paced, bounded.

scapy's sendp builds and sends one packet per call and manages tens of thousands of packets per
second; a flood must outrun vswitch (about 280 kpps at L2, 140 kpps through NAT here). So every frame
is built once, with struct (no scapy on the sending path), and the send loop only cycles a list of
bytes into `socket.send` on a raw socket bound to the interface.

- Socket: AF_PACKET/SOCK_RAW, protocol 0 (it receives nothing, so nothing queues up on it),
  PACKET_QDISC_BYPASS (the frame goes straight to the driver: the tap), non-blocking. A full queue
  gives EAGAIN or ENOBUFS: counted per errno, never fatal. It is made inside the given network
  namespace (shell.kernel.in_namespace: setns on a thread of its own) and stays there.
- Pacing: a token schedule, `pps` frames per second in bursts of about half a millisecond; 0 sends as
  fast as the loop can. Bounds: at most `count` attempts and `seconds` of wall time, whichever comes
  first; the loop always ends.
- Frame kinds (KINDS): what a flood sends. Each builder takes its endpoints (MACs and addresses) and
  how many distinct frames to make, and returns them; all lengths are without the FCS.

Run as its own process, in the namespace of the port it loads (one core of its own):
`python -m vswitch.tools.stress.load --netns NS --kind syn --dst-mac ... --pps 200000 --seconds 5`;
it prints one JSON line: frames sent, send errors by errno, the rate reached, its CPU time.
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import resource
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from itertools import cycle, islice
from typing import Final

from ...shell.kernel import in_namespace

ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
IP_DF: Final = 0x4000
IP_MF: Final = 0x2000
BROADCAST: Final = b"\xff" * 6
SOL_PACKET: Final = 263  # include/linux/socket.h (Python does not export it)
PACKET_QDISC_BYPASS: Final = 20  # include/uapi/linux/if_packet.h
MIN_FRAME: Final = 60  # Ethernet's minimum without the FCS: shorter is a runt
DEFAULT_FRAMES: Final = 65536  # distinct frames per flood (cycled)
SWEEP: Final = IPv4Network("10.1.0.0/16")
BURST_SECONDS: Final = 0.0005  # a paced sender sends this much of its rate at a time
UNPACED_BURST: Final = 256

_ETHER: Final = struct.Struct("!6s6sH")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_TCP: Final = struct.Struct("!HHIIBBHHH")
_UDP: Final = struct.Struct("!HHHH")
_ICMP: Final = struct.Struct("!BBHHH")
_ARP: Final = struct.Struct("!HHBBH6s4s6s4s")
_PSEUDO: Final = struct.Struct("!4s4sBBH")


# --- checksums and headers -------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): the complement of the one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _ETHER.pack(dst, src, ethertype)


def ipv4(
    src: IPv4Address,
    dst: IPv4Address,
    proto: int,
    payload_len: int,
    ident: int = 0,
    flags_offset: int = 0,
    ttl: int = 64,
) -> bytes:
    """A 20-byte IPv4 header with its checksum; flags_offset is the whole 16-bit field (DF, MF, offset
    in 8-byte units)."""
    header = _IPV4.pack(0x45, 0, 20 + payload_len, ident & 0xFFFF, flags_offset, ttl, proto, 0,
                        src.packed, dst.packed)  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def l4_checksum(src: IPv4Address, dst: IPv4Address, proto: int, segment: bytes) -> int:
    """TCP's or UDP's checksum over the pseudo-header (RFC 793 3.1, RFC 768); UDP's 0 goes as 0xFFFF."""
    value = checksum(_PSEUDO.pack(src.packed, dst.packed, 0, proto, len(segment)) + segment)
    return 0xFFFF if proto == PROTO_UDP and value == 0 else value


def tcp_syn(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, seq: int) -> bytes:
    segment = _TCP.pack(sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    return segment[:16] + struct.pack("!H", l4_checksum(src, dst, PROTO_TCP, segment)) + segment[18:]


def udp(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes, length: int = 0) -> bytes:
    """A UDP header and payload. length (default: this header and payload) may claim more: the header of
    a datagram that is sent in fragments, its checksum over data the caller gives in full."""
    header = _UDP.pack(sport, dport, length or 8 + len(payload), 0)
    value = l4_checksum(src, dst, PROTO_UDP, header + payload)
    return header[:6] + struct.pack("!H", value) + payload


def icmp_echo(ident: int, seq: int, payload: bytes) -> bytes:
    message = _ICMP.pack(8, 0, 0, ident, seq) + payload
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def arp_request(sender_mac: bytes, sender_ip: IPv4Address, target_ip: IPv4Address) -> bytes:
    """An ARP request (RFC 826), broadcast, padded to the 60-byte minimum as a NIC would."""
    body = _ARP.pack(1, ETH_P_IP, 6, 4, 1, sender_mac, sender_ip.packed, bytes(6), target_ip.packed)
    return (ether(BROADCAST, sender_mac, ETH_P_ARP) + body).ljust(MIN_FRAME, b"\x00")


def ipv4_frame(dst_mac: bytes, src_mac: bytes, ip_header: bytes, payload: bytes) -> bytes:
    return ether(dst_mac, src_mac, ETH_P_IP) + ip_header + payload


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


# --- the flood kinds -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoints:
    """Who a flood is from and to. dst_mac is the next hop (the router's MAC for routed floods, a host's
    for switched ones); dst_ip the target (for the sweeps and spreads, the first of their range)."""

    src_mac: bytes
    dst_mac: bytes
    src_ip: IPv4Address
    dst_ip: IPv4Address
    sweep: IPv4Network = SWEEP  # arp-sweep's targets


def random_macs(rng: random.Random, count: int) -> list[bytes]:
    """count distinct unicast, locally administered MACs (first octet xxxxxx10)."""
    seen: set[bytes] = set()
    while len(seen) < count:
        raw = bytearray(rng.randbytes(6))
        raw[0] = (raw[0] & 0xFC) | 0x02
        seen.add(bytes(raw))
    return list(seen)


def build_random_macs(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """macof's flood: each frame from a new random source MAC to a random unknown unicast MAC (which a
    learning switch floods to every port), carrying a small valid UDP/IPv4 packet."""
    sources = random_macs(rng, count)
    targets = random_macs(rng, count)
    frames = []
    for i in range(count):
        src_ip = IPv4Address(rng.getrandbits(32) & 0x00FFFFFF | 0x0A000000)  # in 10/8
        dst_ip = IPv4Address(rng.getrandbits(32) & 0x00FFFFFF | 0x0A000000)
        data = udp(src_ip, dst_ip, rng.randrange(1024, 65536), rng.randrange(1, 65536), bytes(18))
        frames.append(ipv4_frame(targets[i], sources[i], ipv4(src_ip, dst_ip, PROTO_UDP, len(data), i), data))
    return frames


def build_syn(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """TCP SYNs from the sender's address, random source ports (1024-65535), to port 80 of addresses
    spread over the /16 from dst_ip (each frame a new flow for conntrack and a new NAT mapping)."""
    base = int(ep.dst_ip)
    frames = []
    for i in range(count):
        dst = IPv4Address(base + (i & 0xFFFF))
        segment = tcp_syn(ep.src_ip, dst, rng.randrange(1024, 65536), 80, rng.getrandbits(32))
        header = ipv4(ep.src_ip, dst, PROTO_TCP, len(segment), i, IP_DF)
        frames.append(ipv4_frame(ep.dst_mac, ep.src_mac, header, segment).ljust(MIN_FRAME, b"\x00"))
    return frames


def build_udp_ports(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """UDP from one source port to random destination ports of dst_ip (a flow each; the target's
    kernel answers some with ICMP port unreachable, which come back through NAT)."""
    sport = rng.randrange(1024, 65536)
    frames = []
    for i in range(count):
        data = udp(ep.src_ip, ep.dst_ip, sport, rng.randrange(1, 65536), bytes(18))
        frames.append(
            ipv4_frame(ep.dst_mac, ep.src_mac, ipv4(ep.src_ip, ep.dst_ip, PROTO_UDP, len(data), i), data)
        )
    return frames


def build_icmp_echo(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """ICMP echo requests to dst_ip, identifiers cycling through all 65536 (NAT tracks each as a flow),
    56 bytes of payload as ping sends."""
    start = rng.getrandbits(16)
    frames = []
    for i in range(count):
        message = icmp_echo((start + i) & 0xFFFF, i & 0xFFFF, bytes(56))
        header = ipv4(ep.src_ip, ep.dst_ip, PROTO_ICMP, len(message), i)
        frames.append(ipv4_frame(ep.dst_mac, ep.src_mac, header, message))
    return frames


def build_arp_sweep(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """ARP requests (broadcast) for every address of ep.sweep in order, from the sender's own MAC and
    address: an address scan, flooded to every port of the segment."""
    hosts = ep.sweep.num_addresses
    first = int(ep.sweep.network_address)
    return [
        arp_request(ep.src_mac, ep.src_ip, IPv4Address(first + i % hosts)) for i in range(min(count, hosts))
    ]


FRAGMENT_DATAGRAM: Final = 2000  # UDP payload of each datagram whose fragments are sent (never all)
FRAGMENT_DATA: Final = 1480  # the first fragment's IP payload: UDP header + 1472 bytes (offset 185)


def build_fragments(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """Fragments of UDP datagrams that never complete: even frames a first fragment (offset 0, MF set,
    1514 bytes) alone, odd frames a later fragment (offset 1480, MF clear, 562 bytes) of another
    datagram whose first never comes. Each datagram its own IP identifier (RFC 791); reassembly (or
    NAT's memory of the first) waits for the rest until it times out."""
    payload = bytes(range(256)) * (FRAGMENT_DATAGRAM // 256) + bytes(FRAGMENT_DATAGRAM % 256)
    sport = rng.randrange(1024, 65536)
    frames = []
    for i in range(count):
        ident = i & 0xFFFF
        datagram = udp(ep.src_ip, ep.dst_ip, sport, 9, payload)  # header + payload, checksum over all
        if i % 2 == 0:
            part, flags = datagram[:FRAGMENT_DATA], IP_MF
        else:
            part, flags = datagram[FRAGMENT_DATA:], FRAGMENT_DATA // 8
        header = ipv4(ep.src_ip, ep.dst_ip, PROTO_UDP, len(part), ident, flags)
        frames.append(ipv4_frame(ep.dst_mac, ep.src_mac, header, part))
    return frames


def runt_frames(ep: Endpoints) -> list[bytes]:
    """One of each runt: below an Ethernet header (which the kernel may refuse to send: counted), a
    bare header, a cut IPv4 header, an IPv4 header that claims more than the frame, a cut TCP header,
    a cut ARP body, a 59-byte frame; to the router's MAC and to broadcast."""
    whole_ip = ipv4(ep.src_ip, ep.dst_ip, PROTO_TCP, 20)
    syn = tcp_syn(ep.src_ip, ep.dst_ip, 40000, 80, 1)
    arp = arp_request(ep.src_mac, ep.src_ip, ep.dst_ip)
    frames: list[bytes] = []
    for dst in (ep.dst_mac, BROADCAST):
        head = ether(dst, ep.src_mac, ETH_P_IP)
        frames += [
            head[:6],  # 6 bytes: half an Ethernet header
            head[:13],  # 13 bytes: one short of the header
            head,  # 14: a header and nothing else
            head + whole_ip[:10],  # 24: half an IPv4 header
            head + ipv4(ep.src_ip, ep.dst_ip, PROTO_UDP, 100),  # 34: says 120 bytes, has 20
            head + whole_ip + syn[:8],  # 42: TCP cut after the sequence number
            arp[:30],  # 30: ARP cut inside the sender's address
            (head + whole_ip + syn + bytes(8))[:59],  # 59: one short of the minimum (IP says 40)
        ]
    return frames


def build_runts(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """The runts (runt_frames): 16 distinct, fewer if count says so."""
    return runt_frames(ep)[:count]


OVERSIZED_LENGTHS: Final = (1518, 4000, 9000)  # IP total lengths; the segment's MTU is 1500
OVERSIZED_DISTINCT: Final = 4096  # at most (each differs only in its IP identifier; 9000-byte sums are slow)


def build_oversized(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """Frames over the segment's 1500-byte MTU (the sender's interface must allow them: raise its MTU):
    UDP datagrams of OVERSIZED_LENGTHS, with DF (the router answers "fragmentation needed") and without
    (the router fragments them), alternating."""
    frames = []
    variants = [(length, df) for length in OVERSIZED_LENGTHS for df in (IP_DF, 0)]
    for i in range(min(count, OVERSIZED_DISTINCT)):
        length, df = variants[i % len(variants)]
        data = udp(ep.src_ip, ep.dst_ip, 40000, 9, bytes(length - 28))
        frames.append(
            ipv4_frame(ep.dst_mac, ep.src_mac, ipv4(ep.src_ip, ep.dst_ip, PROTO_UDP, len(data), i, df), data)
        )
    return frames


def build_udp64(ep: Endpoints, count: int, rng: random.Random) -> list[bytes]:
    """The noisy neighbour's load: 60-byte UDP frames (64 with the FCS), one flow, 18 bytes of payload
    carrying the frame's index."""
    frames = []
    for i in range(count):
        data = udp(ep.src_ip, ep.dst_ip, 40000, 9, struct.pack("!Q", i) + bytes(10))
        frames.append(
            ipv4_frame(ep.dst_mac, ep.src_mac, ipv4(ep.src_ip, ep.dst_ip, PROTO_UDP, len(data), i), data)
        )
    return frames


Builder = Callable[[Endpoints, int, random.Random], list[bytes]]
KINDS: Final[dict[str, Builder]] = {
    "random-macs": build_random_macs,
    "syn": build_syn,
    "udp-ports": build_udp_ports,
    "icmp-echo": build_icmp_echo,
    "arp-sweep": build_arp_sweep,
    "fragments": build_fragments,
    "runts": build_runts,
    "oversized": build_oversized,
    "udp64": build_udp64,
}


def build(kind: str, ep: Endpoints, count: int = DEFAULT_FRAMES, seed: int = 0) -> list[bytes]:
    """count distinct frames of a kind (fewer where the kind has fewer: arp-sweep's /16)."""
    if kind not in KINDS:
        raise ValueError(f"unknown flood kind {kind!r}: one of {', '.join(KINDS)}")
    if count < 1:
        raise ValueError("count must be at least 1")
    return KINDS[kind](ep, count, random.Random(seed))


# --- sending ---------------------------------------------------------------------------------------
@dataclass
class SendResult:
    """What one bounded send did. attempted = sent + the errors' sum."""

    sent: int = 0
    attempted: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> count
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's user + system time during the send
    stopped_by: str = ""  # "count" or "seconds"

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def open_socket(namespace: str | None, ifname: str) -> socket.socket:
    """A raw AF_PACKET socket bound to ifname in namespace (None: this one), receiving nothing."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            sock.bind((ifname, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    return in_namespace(namespace, make)


def interface_mac(sock: socket.socket) -> bytes:
    """The MAC of the interface an AF_PACKET socket is bound to."""
    address: bytes = sock.getsockname()[4]
    return address[:6]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def send(
    write: Callable[[bytes], int],
    frames: Sequence[bytes],
    pps: float,
    count: int,
    seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """Cycle frames into write at pps (0: unpaced) until count attempts or seconds have passed.

    An OSError from write costs that frame only (ENOBUFS, EAGAIN: the queue is full; EINVAL: the kernel
    refused the frame), counted by errno name. Paced, the frames go in bursts of BURST_SECONDS worth;
    a sender that falls behind does not catch up in one burst (the next burst is at most the usual
    size), so a stall never turns into a spike."""
    if not frames:
        raise ValueError("no frames to send")
    result = SendResult()
    errors: Counter[str] = Counter()
    burst = UNPACED_BURST if pps <= 0 else max(1, min(UNPACED_BURST, int(pps * BURST_SECONDS)))
    source: Iterator[bytes] = cycle(frames)
    cpu0 = _cpu()
    start = clock()
    deadline = start + seconds
    attempted = sent = 0
    result.stopped_by = "count"
    while attempted < count:
        now = clock()
        if now >= deadline:
            result.stopped_by = "seconds"
            break
        if pps > 0:
            due = start + attempted / pps
            if due > now:
                sleep(min(due, deadline) - now)
                continue
        todo = min(burst, count - attempted)
        done = 0
        for frame in islice(source, todo):
            done += 1
            try:
                write(frame)
            except OSError as exc:
                errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
        attempted += done
        sent = attempted - sum(errors.values())
    result.seconds = clock() - start
    result.cpu_seconds = _cpu() - cpu0
    result.attempted, result.sent, result.errors = attempted, sent, dict(errors)
    return result


# --- the command line ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vswitch.tools.stress.load",
        description="Send prebuilt frames through a raw socket, paced and bounded; print one JSON line.",
    )
    parser.add_argument("--netns", help="the network namespace of the interface (default: this one)")
    parser.add_argument("--ifname", default="eth0", help="the interface (default eth0)")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--src-mac", help="default: the interface's")
    parser.add_argument("--dst-mac", default="ff:ff:ff:ff:ff:ff", help="next hop (default broadcast)")
    parser.add_argument("--src-ip", type=IPv4Address, default=IPv4Address("10.1.0.2"))
    parser.add_argument("--dst-ip", type=IPv4Address, default=IPv4Address("198.18.0.1"))
    parser.add_argument("--sweep", type=IPv4Network, default=IPv4Network("10.1.0.0/16"),
                        help="arp-sweep's targets (default 10.1.0.0/16)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="distinct frames, cycled")
    parser.add_argument("--pps", type=float, default=0.0, help="frames per second (0: unpaced)")
    parser.add_argument("--count", type=int, required=True, help="at most this many frames")
    parser.add_argument("--seconds", type=float, required=True, help="for at most this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 1 or args.frames < 1 or args.pps < 0 or not 0 < args.seconds <= 3600:
        parser.error("--count and --frames at least 1, --pps at least 0, --seconds in (0, 3600]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sock = open_socket(args.netns, args.ifname)
    except OSError as exc:
        print(f"load: cannot open a raw socket on {args.ifname} in {args.netns}: {exc}", file=sys.stderr)
        return 2
    with sock:
        src_mac = mac_bytes(args.src_mac) if args.src_mac else interface_mac(sock)
        ep = Endpoints(src_mac, mac_bytes(args.dst_mac), args.src_ip, args.dst_ip, args.sweep)
        started = time.monotonic()
        frames = build(args.kind, ep, args.frames, args.seed)
        built = time.monotonic() - started
        result = send(sock.send, frames, args.pps, args.count, args.seconds)
    report = {**asdict(result), "pps": round(result.pps, 1), "kind": args.kind,
              "distinct_frames": len(frames),
              "build_seconds": round(built, 3), "target_pps": args.pps}  # fmt: skip
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

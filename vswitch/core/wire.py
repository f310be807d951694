"""Wire formats: named offsets and precompiled Structs for every header the datapath reads.

Every packet the core handles is ``[virtio_net_hdr (10 bytes)][Ethernet frame]``, exactly as the tap
hands it over with IFF_VNET_HDR. Offsets below are from the start of that buffer unless a name says
otherwise, so the hot path indexes a buffer once without re-basing (smoltcp's named-offset style).
"""

from __future__ import annotations

import struct
from typing import Final

# --- virtio_net_hdr (include/uapi/linux/virtio_net.h), little-endian ---------------------------------
VNET_HDR: Final = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN: Final = 10
VNET_F_NEEDS_CSUM: Final = 1
VNET_F_DATA_VALID: Final = 2
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80
ZERO_VNET_HDR: Final = bytes(VNET_HDR_LEN)

# --- Ethernet (IEEE 802.3) --------------------------------------------------------------------------
ETH: Final = VNET_HDR_LEN  # start of the Ethernet frame in a buffer
ETH_DST: Final = slice(ETH, ETH + 6)
ETH_SRC: Final = slice(ETH + 6, ETH + 12)
ETH_TYPE_OFF: Final = ETH + 12
ETH_HDR_LEN: Final = 14
ETH_MIN: Final = VNET_HDR_LEN + ETH_HDR_LEN  # shortest buffer that holds a whole Ethernet header
ETH_HDR: Final = struct.Struct("!6s6sH")
ETHERTYPE: Final = struct.Struct("!H")
L3: Final = ETH + ETH_HDR_LEN  # start of the network header (no VLAN tag)

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_VLAN: Final = 0x8100
ETHERTYPE_IPV6: Final = 0x86DD

BROADCAST_MAC: Final = b"\xff\xff\xff\xff\xff\xff"
ZERO_MAC: Final = bytes(6)

# --- ARP (RFC 826) for Ethernet/IPv4 ----------------------------------------------------------------
ARP: Final = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa
ARP_LEN: Final = 28
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2

# --- IPv4 (RFC 791) ---------------------------------------------------------------------------------
IPV4: Final = struct.Struct("!BBHHHBBH4s4s")  # ver_ihl tos total_len id flags_frag ttl proto csum src dst
IPV4_MIN_LEN: Final = 20
IPV4_MAX_LEN: Final = 0xFFFF  # the total length field's limit, also for a datagram reassembled
IP_VER_IHL: Final = L3
IP_TOTAL_LEN: Final = L3 + 2
IP_FLAGS_FRAG: Final = L3 + 6
IP_TTL: Final = L3 + 8
IP_PROTO: Final = L3 + 9
IP_CSUM: Final = L3 + 10
IP_SRC: Final = slice(L3 + 12, L3 + 16)
IP_DST: Final = slice(L3 + 16, L3 + 20)
IP_DF: Final = 0x4000
IP_MF: Final = 0x2000
IP_FRAG_OFFSET_MASK: Final = 0x1FFF
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

# --- IPv6 (RFC 8200) ---------------------------------------------------------------------------------
IPV6_HDR_LEN: Final = 40
IPV6_MIN_MTU: Final = 1280  # RFC 8200 section 5: every link carries 1280 bytes without fragmenting
IP6_PAYLOAD_LEN: Final = L3 + 4
IP6_NEXT_HEADER: Final = L3 + 6
IP6_HOP_LIMIT: Final = L3 + 7
IP6_SRC: Final = slice(L3 + 8, L3 + 24)
IP6_DST: Final = slice(L3 + 24, L3 + 40)
L4_6: Final = L3 + IPV6_HDR_LEN  # the first header after a fixed IPv6 header
PROTO_ICMPV6: Final = 58

# --- L4, offsets relative to the start of the L4 header ---------------------------------------------
PORTS: Final = struct.Struct("!HH")
TCP_CSUM_OFF: Final = 16
UDP_CSUM_OFF: Final = 6
ICMP_CSUM_OFF: Final = 2
TCP_FLAGS_OFF: Final = 13
TCP_MIN_LEN: Final = 20
UDP_LEN: Final = 8
ICMP_MIN_LEN: Final = 8
U16: Final = struct.Struct("!H")

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10


def mac_str(mac: bytes) -> str:
    """Colon-separated lower-case hex, the form ip(8) prints."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """Parse aa:bb:cc:dd:ee:ff (or with dashes); raise ValueError on anything else."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def is_multicast(mac: bytes) -> bool:
    """The I/G bit: set for group (multicast and broadcast) addresses (IEEE 802 section 8.2)."""
    return bool(mac[0] & 1)


class Gather:
    """A frame kept as two buffers: a rewritten head and the untouched rest of the received frame.

    The flow cache rewrites only headers; for a 64 KB TSO frame, joining head and payload into new
    bytes would copy the payload twice in userspace. The shell writes a Gather with one writev(2)
    instead. len() is the frame's length (counters); bytes() joins it (capture, tests).
    """

    __slots__ = ("parts", "size")

    def __init__(self, head: bytes, tail: memoryview) -> None:
        self.parts = (head, tail)
        self.size = len(head) + len(tail)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.parts[0] + bytes(self.parts[1])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Gather | bytes | bytearray):
            return bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to bytes, so it cannot hash like them

    def __repr__(self) -> str:
        return f"Gather({bytes(self)!r})"


# What a port is sent: bytes, or a Gather the shell writes with writev.
Frame = bytes | Gather


def domain_wire(domain: str) -> bytes:
    """A domain name as DNS writes it on the wire (RFC 1035 3.1), for the options that carry one
    (DHCP's search list, RFC 3397; an RA's DNSSL, RFC 8106 5.2)."""
    labels = [label for label in domain.strip(".").split(".") if label]
    return b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\x00"

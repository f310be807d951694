"""Port security: a port may send only from its own MAC and its own addresses.

As OVS/OVN's ``port_security`` and libvirt's ``clean-traffic`` filter do, for a port that opted in
(``--port-security PORT``): the Ethernet source must be the port's MAC; an IPv4 source one of its
addresses (static, or the one the router's DHCP server leased to that MAC now); an ARP sender that MAC
and one of those addresses; an IPv6 source one of its addresses (static, or EUI-64 formed from its MAC:
the link-local one and one per /64 the segment advertises) and a neighbour advertisement's target too
(RFC 4861 7.2.4: an advertisement for someone else's address is how ND is spoofed). The unspecified
address is a source a host must be able to use before it has one: DHCP's DISCOVER (RFC 2131 4.1), an
ARP probe (RFC 5227 2.1.1), duplicate address detection (RFC 4862 5.4). Frames of other ethertypes
pass with the right MAC (OVN's rule: port security constrains the addresses it knows of).

A frame too short to show the field checked is left to the pipeline, which drops it as malformed.
Pure: the lease lookup is a callable the shell gives (the DHCP server lives a layer above).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from .counters import Drop
from .icmp6 import link_local_of
from .wire import VNET_HDR_LEN

_ETHERTYPE = VNET_HDR_LEN + 12
_IPV4, _ARP, _IPV6, _VLAN = b"\x08\x00", b"\x08\x06", b"\x86\xdd", b"\x81\x00"
_ANY4 = bytes(4)
_ANY6 = bytes(16)
_ICMPV6, _UDP = 58, 17
_NEIGHBOR_ADVERT = 136
_DHCP_CLIENT_TO_SERVER = b"\x00\x44\x00\x43"  # UDP ports 68 -> 67


def eui64_address(prefix: bytes, mac: bytes) -> bytes:
    """prefix (the first 8 bytes of a /64) and the interface identifier EUI-64 forms from mac."""
    return prefix[:8] + link_local_of(mac)[8:]


@dataclass
class PortSecurity:
    """What one port may claim. ipv4/ipv6 hold packed addresses; leased answers the address the DHCP
    server has bound to a MAC now, or None."""

    mac: bytes
    ipv4: set[bytes] = field(default_factory=set)
    ipv6: set[bytes] = field(default_factory=set)
    leased: Callable[[bytes], IPv4Address | None] | None = None

    @classmethod
    def of(
        cls,
        mac: bytes,
        ipv4: Iterable[IPv4Address] = (),
        ipv6: Iterable[IPv6Address] = (),
        prefixes6: Iterable[IPv6Address] = (),
        leased: Callable[[bytes], IPv4Address | None] | None = None,
    ) -> PortSecurity:
        """mac's rules: static addresses, and the EUI-64 addresses it forms (fe80::/64 and each /64 of
        prefixes6, given by their first address)."""
        six = {a.packed for a in ipv6} | {link_local_of(mac)}
        six |= {eui64_address(p.packed, mac) for p in prefixes6}
        return cls(mac, {a.packed for a in ipv4}, six, leased)

    def _ipv4_ok(self, address: bytes) -> bool:
        if address in self.ipv4:
            return True
        leased = self.leased(self.mac) if self.leased is not None else None
        return leased is not None and leased.packed == address

    def check(self, pkt: bytes) -> Drop | None:
        """None if pkt (vnet header first) may enter from the port, else the spoofing it shows."""
        if pkt[VNET_HDR_LEN + 6 : VNET_HDR_LEN + 12] != self.mac:
            return Drop.SPOOFED_MAC
        offset = _ETHERTYPE
        ethertype = pkt[offset : offset + 2]
        if ethertype == _VLAN:  # priority-tagged, or a tag an access port refuses later: look inside
            offset += 4
            ethertype = pkt[offset : offset + 2]
        l3 = offset + 2
        if ethertype == _IPV4:
            return self._check_ipv4(pkt, l3)
        if ethertype == _ARP:
            if len(pkt) < l3 + 18:
                return None
            if pkt[l3 + 8 : l3 + 14] != self.mac:
                return Drop.SPOOFED_ARP
            sender = pkt[l3 + 14 : l3 + 18]
            return None if sender == _ANY4 or self._ipv4_ok(sender) else Drop.SPOOFED_ARP
        if ethertype == _IPV6:
            return self._check_ipv6(pkt, l3)
        return None

    def _check_ipv4(self, pkt: bytes, l3: int) -> Drop | None:
        if len(pkt) < l3 + 20:
            return None
        source = pkt[l3 + 12 : l3 + 16]
        if self._ipv4_ok(source):
            return None
        if source == _ANY4 and pkt[l3 + 9] == _UDP:  # a DHCP client without an address yet
            udp = l3 + (pkt[l3] & 0x0F) * 4
            if pkt[udp : udp + 4] == _DHCP_CLIENT_TO_SERVER:
                return None
        return Drop.SPOOFED_IPV4

    def _check_ipv6(self, pkt: bytes, l3: int) -> Drop | None:
        if len(pkt) < l3 + 40:
            return None
        source = pkt[l3 + 8 : l3 + 24]
        if source != _ANY6 and source not in self.ipv6:
            return Drop.SPOOFED_IPV6
        icmp = l3 + 40
        advert = pkt[l3 + 6] == _ICMPV6 and len(pkt) >= icmp + 24 and pkt[icmp] == _NEIGHBOR_ADVERT
        if advert and pkt[icmp + 8 : icmp + 24] not in self.ipv6:
            return Drop.SPOOFED_IPV6
        return None

"""NPTv6 (RFC 6296): an inside prefix mapped to an outside one of the same length, stateless.

Outbound the source's prefix bits are replaced and one 16-bit word outside the prefix is adjusted by
the difference of the two prefixes' one's-complement sums, so the address sums to what it did: every
checksum whose pseudo-header covers it (TCP, UDP, ICMPv6) stays valid untouched, a partial one too
(checksum-neutral, 3.2). The word is bits 48-63 for a /48 or shorter (3.4), else the first word of
the interface identifier that is not 0xFFFF (3.5); a word that would become 0xFFFF is written 0x0000
(the two are one number in one's complement). Inbound the destination is mapped back the same way.
"""

from __future__ import annotations

from ipaddress import IPv6Network
from typing import Final

from .checksum import fold

_ONES: Final = 0xFFFF


def _sum(address: bytes) -> int:
    return fold(sum(int.from_bytes(address[i : i + 2], "big") for i in range(0, 16, 2)))


class Npt:
    """One mapping, inside <-> outside, both of prefix length ``length`` (at most /64)."""

    def __init__(self, inside: IPv6Network, outside: IPv6Network) -> None:
        if inside.prefixlen != outside.prefixlen or inside.prefixlen > 64:
            raise ValueError("NPTv6 maps a prefix of at most /64 to one of the same length")
        self.length = inside.prefixlen
        self.mask = int(inside.netmask)
        self.inside = int(inside.network_address)
        self.outside = int(outside.network_address)
        # 3.4: up to /48 the subnet word (bits 48-63) is outside the prefix; longer, the identifier
        self.words = (3,) if self.length <= 48 else (4, 5, 6, 7)

    def is_inside(self, address: bytes) -> bool:
        return int.from_bytes(address, "big") & self.mask == self.inside

    def is_outside(self, address: bytes) -> bool:
        return int.from_bytes(address, "big") & self.mask == self.outside

    def outward(self, address: bytes) -> bytes | None:
        """An inside address as the outside sees it; None when no word can take the adjustment."""
        return self._map(address, self.outside)

    def inward(self, address: bytes) -> bytes | None:
        return self._map(address, self.inside)

    def _map(self, address: bytes, to: int) -> bytes | None:
        value = int.from_bytes(address, "big")
        mapped = bytearray(((value & ~self.mask) | to).to_bytes(16, "big"))
        # What the prefix change took from the sum, given back in one word (one's complement).
        difference = fold(_sum(address) + (_ONES - _sum(bytes(mapped))))
        for word in self.words:
            at = word * 2
            current = mapped[at] << 8 | mapped[at + 1]
            if current == _ONES:  # 3.5: such a word is not adjusted (it could not come back)
                continue
            adjusted = fold(current + difference)
            mapped[at : at + 2] = (0 if adjusted == _ONES else adjusted).to_bytes(2, "big")
            return bytes(mapped)
        return None

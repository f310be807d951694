"""Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).

Two kinds of L4 checksum field meet the datapath:
- complete: the one's complement of the sum, as on the wire. A change of covered words is applied
  with RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``.
- partial (virtio NEEDS_CSUM): the field holds the folded pseudo-header sum, not complemented, and the
  receiver finishes it. A change of pseudo-header words adds ``~m + m'`` to the stored sum directly,
  the way the kernel's inet_proto_csum_replace4 treats CHECKSUM_PARTIAL.
"""

from __future__ import annotations


def fold(total: int) -> int:
    """Fold a one's-complement accumulator to 16 bits (end-around carry)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The folded 16-bit one's-complement sum of data (odd length padded with a zero byte)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    # The data as one big number is the sum of its 16-bit words times powers of 2**16, and 2**16 is 1
    # modulo 0xFFFF: so the number modulo 0xFFFF is the end-around-carry sum, in C rather than a loop
    # over the words. The one case apart: a sum that folds to 0xFFFF leaves 0, as zero data does.
    number = int.from_bytes(data, "big")
    remainder = number % 0xFFFF
    return remainder if remainder or not number else 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 checksum: the complement of the one's-complement sum."""
    return ~ones_sum(data) & 0xFFFF


def words(data: bytes) -> int:
    """The unfolded sum of the 16-bit words in an even-length bytes object (addresses, ports)."""
    return sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))


def delta(old: bytes, new: bytes) -> int:
    """The one's-complement difference ``~m + m'`` for replacing ``old`` words by ``new`` ones."""
    return fold(words(new) + (0xFFFF * (len(old) // 2) - words(old)))


def update_complete(checksum: int, change: int) -> int:
    """RFC 1624 eqn. 3 on a complete checksum: ``HC' = ~(~HC + change)``."""
    return ~fold((~checksum & 0xFFFF) + change) & 0xFFFF


def update_partial(pseudo_sum: int, change: int) -> int:
    """Adjust a NEEDS_CSUM field, which holds the folded pseudo-header sum, uncomplemented."""
    return fold(pseudo_sum + change)

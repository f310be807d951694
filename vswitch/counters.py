"""Named counters: per-port traffic and drops by reason, shared by the core and the IO shell.

The core counts what it received and what it dropped (with a reason); the shell counts what it
actually wrote, and the writes the kernel refused. Lists indexed by port id keep the hot path to one
index operation per counter.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class Drop(StrEnum):
    """Every reason a packet can die in vswitch. The value is the counter's name."""

    # L2 classification (the kernel bridge's br_handle_frame checks, in its order)
    RUNT = "runt"  # shorter than the virtio-net header plus an Ethernet header
    BAD_VNET_HEADER = "bad-vnet-header"  # checksum offsets outside the frame
    SRC_MULTICAST = "src-multicast"  # a group address as source (IEEE 802 section 8.2)
    SRC_ZERO = "src-zero"  # 00:00:00:00:00:00 as source
    SRC_IS_SWITCH = "src-is-switch"  # a port claims a MAC the switch itself owns (static entry)
    RESERVED_GROUP = "reserved-group"  # 01:80:c2:00:00:0X, never forwarded (IEEE 802.1Q table 8-1)
    SAME_PORT = "same-port"  # destination learned on the ingress port; never reflect
    NO_DESTINATION = "no-destination"  # a flood with no other port to go to
    # IO shell
    TX_QUEUE_FULL = "tx-queue-full"  # the destination tap would block (EAGAIN); the kernel drops too
    TX_ERROR = "tx-error"  # the kernel refused the write (EINVAL, EIO, ...)
    TRUNCATED = "truncated"  # a read filled the whole buffer: the frame may have been cut


class Counters:
    """Per-port rx/tx packets and bytes, per-port drops by reason, and switch-wide events."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.rx_packets: list[int] = []
        self.rx_bytes: list[int] = []
        self.tx_packets: list[int] = []
        self.tx_bytes: list[int] = []
        self.drops: list[Counter[str]] = []
        self.events: Counter[str] = Counter()

    def add_port(self, name: str) -> int:
        """Make room for one more port and return its id."""
        self.names.append(name)
        for column in (self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes):
            column.append(0)
        self.drops.append(Counter())
        return len(self.names) - 1

    def drop(self, port: int, reason: str) -> None:
        self.drops[port][reason] += 1

    def total_drops(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for per_port in self.drops:
            total.update(per_port)
        return total

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy, for the control socket and tests."""
        return {
            "ports": {
                name: {
                    "rx_packets": self.rx_packets[i],
                    "rx_bytes": self.rx_bytes[i],
                    "tx_packets": self.tx_packets[i],
                    "tx_bytes": self.tx_bytes[i],
                    "drops": dict(sorted(self.drops[i].items())),
                }
                for i, name in enumerate(self.names)
            },
            "drops": dict(sorted(self.total_drops().items())),
            "events": dict(sorted(self.events.items())),
        }

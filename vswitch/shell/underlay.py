"""A VXLAN tunnel's sockets in the underlay's namespace: one to receive, one per remote to send.

- Receiving: a UDP socket bound to local:dstport. The kernel strips the outer IPv4 and UDP headers
  and tells us the sender's address, which is all the core needs (vxlan.Vtep.receive).
- Sending: a raw IPv4 socket per remote (IPPROTO_RAW: send only, IP_HDRINCL implied), connected to it
  so the shell's plain write() sends there. The core writes the outer IPv4 header itself: with a bound
  UDP socket every packet would leave from port dstport, but RFC 7348 section 5 wants the source port
  to follow the inner flow, and DF and TTL are set per packet too. The kernel fills in the length,
  id and header checksum, and refuses a packet over the route's MTU (EMSGSIZE, counted as tx-error).

Both are made on a thread that entered the namespace (kernel.in_namespace): sockets stay in the
namespace they were made in, so the event loop never leaves its own.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from .kernel import KernelError, in_namespace

# Room for bursts while the event loop serves another port (the taps get a long txqueuelen for the
# same reason). SO_*BUFFORCE: root may pass net.core.[rw]mem_max.
BUFFER_BYTES: Final = 4 << 20
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33


@dataclass
class UnderlaySockets:
    receiver: socket.socket
    senders: dict[str, socket.socket] = field(default_factory=dict)

    def close(self) -> None:
        self.receiver.close()
        for sender in self.senders.values():
            sender.close()


def open_underlay(
    namespace: str | None, local: IPv4Address, dstport: int, remotes: list[IPv4Address]
) -> UnderlaySockets:
    """The sockets of one VTEP (local:dstport) and its remotes, made inside namespace."""
    where = f"namespace {namespace}" if namespace else "the root namespace"

    def make() -> UnderlaySockets:
        receiver = socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        made = UnderlaySockets(receiver)
        try:
            receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
            try:
                receiver.bind((str(local), dstport))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise KernelError(f"VXLAN local address {local} is not an address in {where}") from None
                if exc.errno == errno.EADDRINUSE:
                    raise KernelError(
                        f"UDP {local}:{dstport} is already in use in {where} (a kernel vxlan device, "
                        "or another vswitch)"
                    ) from None
                raise
            for remote in remotes:
                sender = socket.socket(
                    socket.AF_INET,
                    socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                    socket.IPPROTO_RAW,
                )
                made.senders[str(remote)] = sender
                sender.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
                try:
                    sender.connect((str(remote), 0))
                except OSError as exc:
                    raise KernelError(
                        f"VXLAN remote {remote}: no route in {where} ({exc.strerror})"
                    ) from None
        except BaseException:
            made.close()
            raise
        return made

    try:
        return in_namespace(namespace, make)
    except FileNotFoundError:
        raise KernelError(f"the VXLAN underlay's namespace {namespace} does not exist") from None

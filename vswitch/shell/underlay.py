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
    group_receiver: socket.socket | None = None  # bound to the group: its floods arrive here

    def close(self) -> None:
        self.receiver.close()
        if self.group_receiver is not None:
            self.group_receiver.close()
        for sender in self.senders.values():
            sender.close()


def _sender(remote: IPv4Address, local: IPv4Address, where: str) -> socket.socket:
    """A raw IPv4 socket connected to remote (made in the calling thread's namespace); for a
    multicast group, sent by the interface of local and not looped back to us."""
    sender = socket.socket(
        socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW
    )
    try:
        sender.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
        if remote.is_multicast:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local.packed)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        try:
            sender.connect((str(remote), 0))
        except OSError as exc:
            raise KernelError(f"VXLAN remote {remote}: no route in {where} ({exc.strerror})") from None
    except BaseException:
        sender.close()
        raise
    return sender


def open_sender(namespace: str | None, remote: IPv4Address) -> socket.socket:
    """One more remote's socket, at run time (a VTEP learned on a tunnel with a group)."""
    where = f"namespace {namespace}" if namespace else "the root namespace"
    try:
        return in_namespace(namespace, lambda: _sender(remote, remote, where))
    except FileNotFoundError:
        raise KernelError(f"the VXLAN underlay's namespace {namespace} does not exist") from None


def _group_receiver(group: IPv4Address, local: IPv4Address, dstport: int, where: str) -> socket.socket:
    """A UDP socket bound to group:dstport and joined to the group on local's interface: the socket
    bound to local receives unicast only."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        receiver.bind((str(group), dstport))
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group.packed + local.packed)
    except OSError as exc:
        receiver.close()
        raise KernelError(f"VXLAN group {group} on {local} in {where}: {exc.strerror}") from None
    return receiver


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
                made.senders[str(remote)] = _sender(remote, local, where)
                if remote.is_multicast:
                    made.group_receiver = _group_receiver(remote, local, dstport, where)
        except BaseException:
            made.close()
            raise
        return made

    try:
        return in_namespace(namespace, make)
    except FileNotFoundError:
        raise KernelError(f"the VXLAN underlay's namespace {namespace} does not exist") from None

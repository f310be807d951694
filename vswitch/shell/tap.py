"""Tap devices from /dev/net/tun, with the virtio-net header and the offloads that make bulk TCP cheap.

Facts from drivers/net/tun.c and include/uapi/linux/if_tun.h (see ../shared/design.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Final

from ..config.topology import valid_ifname

TUN_PATH: Final = "/dev/net/tun"
TUNSETIFF: Final = 0x400454CA
TUNSETOFFLOAD: Final = 0x400454D0
TUNSETVNETHDRSZ: Final = 0x400454D8
TUNGETFEATURES: Final = 0x800454CF
TUNSETCARRIER: Final = 0x400454E2  # _IOW('T', 226, int), Linux 5.0+: the tap's carrier, as a cable's

IFF_TAP: Final = 0x0002
IFF_MULTI_QUEUE: Final = 0x0100
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000
IFF_TUN_EXCL: Final = 0x8000  # fail with EBUSY rather than attach to an existing tap

TUN_F_CSUM: Final = 0x01
TUN_F_TSO4: Final = 0x02
TUN_F_TSO6: Final = 0x04
TUN_F_TSO_ECN: Final = 0x08
TUN_F_USO4: Final = 0x20
TUN_F_USO6: Final = 0x40

BASE_OFFLOADS: Final = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
USO_OFFLOADS: Final = TUN_F_USO4 | TUN_F_USO6  # Linux 6.2+: both or neither

IFREQ: Final = struct.Struct("16sH22x")


class TapError(Exception):
    """The kernel would not give us the tap we asked for; the message says why, for a person."""


@dataclass
class Tap:
    """An open tap: the fd the datapath reads and writes, and what the kernel granted."""

    fd: int
    name: str
    offloads: int

    def close(self) -> None:
        """Closing the last fd of a non-persistent tap deletes the link, wherever it was moved."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tap(name: str, offloads: bool = True) -> Tap:
    """Create tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), non-blocking, offloads enabled (or,
    with offloads False, none: the namespace's stack hands over complete, MTU-sized frames).

    Raises TapError with a sentence a user can act on.
    """
    if not valid_ifname(name):
        raise TapError(f"invalid interface name {name!r}")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun)") from None
    except PermissionError:
        raise TapError(f"cannot open {TUN_PATH}: run as root (CAP_NET_ADMIN)") from None
    try:
        try:
            fcntl.ioctl(
                fd, TUNSETIFF, IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL)
            )
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TapError(f"interface {name} already exists") from None
            if exc.errno == errno.EPERM:
                raise TapError("creating a tap needs CAP_NET_ADMIN: run as root") from None
            raise TapError(f"TUNSETIFF {name}: {exc.strerror}") from None
        if not offloads:
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
            return Tap(fd, name, 0)
        return Tap(fd, name, enable_offloads(fd))
    except BaseException:
        os.close(fd)
        raise


def enable_offloads(fd: int) -> int:
    """Ask for checksum and TSO offloads, and USO where the kernel knows it (an unknown bit is EINVAL)."""
    for flags in (BASE_OFFLOADS | USO_OFFLOADS, BASE_OFFLOADS):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
            return flags
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise TapError(f"TUNSETOFFLOAD: {exc.strerror}") from None
    return 0


def tun_features() -> int:
    """The IFF_* flags this kernel's tun driver supports (TUNGETFEATURES)."""
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        out = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
        return int(struct.unpack("I", out)[0])
    finally:
        os.close(fd)


def set_carrier(fd: int, up: bool) -> None:
    """The tap's carrier on or off: off, the interface in its namespace shows NO-CARRIER and its
    stack stops sending (network emulation's --carrier)."""
    try:
        fcntl.ioctl(fd, TUNSETCARRIER, struct.pack("i", int(up)))
    except OSError as exc:
        raise TapError(f"TUNSETCARRIER: {exc.strerror}") from None

"""Kernel plumbing through pyroute2 (netlink): namespaces, links, addresses, routes.

Startup and teardown only; nothing here runs per packet. Errors become KernelError with a sentence a
user can act on. Every function that creates something returns what teardown needs to remove it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

T = TypeVar("T")

IFA_F_NODAD = 0x02  # include/uapi/linux/if_addr.h: skip duplicate address detection
IFA_F_TENTATIVE = 0x40  # not usable yet: duplicate address detection is running
IFF_UP = 0x1  # include/uapi/linux/if.h

NETNS_DIR = "/run/netns"


STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (blocked, so they wait) for the length of the block.

    pyroute2 makes a namespace in a forked helper: a Ctrl-C that interrupts the parent while it waits
    leaves the helper to finish after the caller's clean-up has already swept, and the namespace
    stays. Held, the signal lands once the caller has recorded what it made.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class KernelError(Exception):
    """The kernel refused a step of the plumbing."""


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_inode(name: str) -> int | None:
    """Whether a named namespace exists (its inode; the kernel reuses inodes: see netns_cookie)."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14)


def in_namespace(name: str | None, work: Callable[[], T]) -> T:
    """work() run inside the named namespace (None: here), on a thread of its own that ends right
    after: setns(2) moves only the calling thread, and what work makes there (a socket) stays in
    that namespace for good. Raises FileNotFoundError when there is no such namespace, and whatever
    work raised."""
    if name is None:
        return work()
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into {name}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(work())
        except BaseException as exc:  # handed to the caller's thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def netns_cookie(name: str) -> int | None:
    """The named namespace's cookie: a 64-bit number the kernel gives each namespace and never
    reuses, unlike its inode (a namespace made after ours was removed can get ours). None: no such
    namespace."""

    def probe() -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")

    try:
        return in_namespace(name, probe)
    except OSError:
        return None


def address_mtu(namespace: str | None, address: IPv4Address) -> int:
    """The MTU of the interface that holds address in namespace (a multicast group is sent there: it
    has no unicast route). KernelError when no interface has it."""
    try:
        with open_existing_namespace(namespace) as ipr:
            for entry in ipr.get_addr(family=socket.AF_INET):
                if entry.get_attr("IFA_ADDRESS") == str(address) or entry.get_attr("IFA_LOCAL") == str(
                    address
                ):
                    return int(ipr.get_links(entry["index"])[0].get_attr("IFLA_MTU"))
    except FileNotFoundError:
        raise KernelError(f"namespace {namespace} does not exist") from None
    where = f"namespace {namespace}" if namespace else "the root namespace"
    raise KernelError(f"{address} is not an address in {where}")


def route_mtu(namespace: str | None, destination: IPv4Address) -> int:
    """The MTU toward destination in namespace: the route's own (RTAX_MTU) if it has one, else the
    MTU of the interface the route leaves by. KernelError when nothing routes there."""
    try:
        with open_existing_namespace(namespace) as ipr:
            routes = ipr.route("get", dst=str(destination))
            if not routes:
                raise KernelError(f"no route to {destination}")
            route = routes[0]
            metrics = route.get_attr("RTA_METRICS")
            mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
            if mtu:
                return int(mtu)
            link = ipr.get_links(route.get_attr("RTA_OIF"))[0]
            return int(link.get_attr("IFLA_MTU"))
    except NetlinkError as exc:
        where = f"namespace {namespace}" if namespace else "the root namespace"
        raise KernelError(f"no route to {destination} in {where}: {os.strerror(exc.code)}") from None
    except FileNotFoundError:
        raise KernelError(f"namespace {namespace} does not exist") from None


MS_BIND = 0x1000  # include/uapi/linux/mount.h
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2  # include/linux/fs.h (umount2)


def _libc_call(result: int, what: str) -> None:
    """Raise OSError with errno for a libc call that returned non-zero."""
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _share_netns_dir(libc: ctypes.CDLL) -> None:
    """/run/netns as iproute2 makes it: a mount of its own, shared, so a namespace bound under it is
    seen from every mount namespace (and `ip netns` finds ours)."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    directory = NETNS_DIR.encode()
    if libc.mount(b"", directory, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    # EINVAL: not a mount point yet; bind it on itself, then share it
    _libc_call(libc.mount(directory, directory, b"none", MS_BIND | MS_REC, None), f"binding {NETNS_DIR}")
    _libc_call(libc.mount(b"", directory, b"none", MS_SHARED | MS_REC, None), f"sharing {NETNS_DIR}")


def _own_cookie() -> int:
    """The cookie of the calling thread's network namespace."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def create_netns(
    name: str, on_created: Callable[[int, int | None], None] | None = None
) -> tuple[int, int | None]:
    """Make namespace name; return its inode and cookie (the cookie proves it is ours later).

    The namespace is made on a thread of ours (unshare), not in a forked helper as pyroute2 does: a
    SIGKILL while such a helper works leaves it to finish and name a namespace nobody recorded.
    on_created(inode, cookie) runs once the namespace exists and before it has a name (only this
    thread holds it until then): the caller's ledger records it there, so a kill at any instant
    leaves either a namespace that dies with the thread, or one the ledger names. A kill between the
    mount point's creation and the bind mount leaves an empty file at /run/netns/NAME, which
    remove_netns_placeholder removes.
    """
    path = netns_path(name)
    made: list[tuple[int, int | None]] = []
    failure: list[BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _libc_call(libc.unshare(CLONE_NEWNET), "unshare")
            own = "/proc/thread-self/ns/net"
            inode, cookie = os.stat(own).st_ino, _own_cookie()
            if on_created is not None:
                on_created(inode, cookie)
            made.append((inode, cookie))
            _share_netns_dir(libc)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
            try:
                _libc_call(libc.mount(own.encode(), path.encode(), b"none", MS_BIND, None), "bind mount")
            except OSError:
                os.unlink(path)
                raise
        except BaseException as exc:  # handed to the caller's thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=make, name=f"netns-create-{name}")
    thread.start()
    thread.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError):
            raise KernelError(f"cannot create namespace {name}: {exc.strerror or exc}") from None
        raise exc
    return made[0]


def remove_netns(name: str, inode: int, cookie: int | None = None) -> bool:
    """Remove namespace name if it is still the one we created; True when it was removed.
    The cookie decides when it was recorded (a ledger from before it was: the inode)."""
    if (netns_cookie(name) != cookie) if cookie is not None else (netns_inode(name) != inode):
        return False
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False
    return True


def remove_netns_placeholder(name: str) -> bool:
    """Remove /run/netns/NAME if it is an empty file with nothing mounted on it: the mount point
    create_netns made before a kill stopped it short of the bind mount. Only for a name the ledger
    records (a namespace mounted there is another's, and stays). True when one was removed."""
    path = netns_path(name)
    try:
        info = os.lstat(path)
        directory = os.stat(NETNS_DIR)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != 0 or info.st_dev != directory.st_dev:
        return False  # a bound namespace is on nsfs: another st_dev
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def remove_netns_named(name: str) -> None:
    """Remove a namespace the caller made itself (the bench, tests), tolerating only 'already gone'."""
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _ipr(namespace: str | None) -> IPRoute:
    """Netlink in namespace, which must exist (flags=0: opened as it is, never made). A path (an
    attached namespace: /proc/PID/ns/net, a bind mount) whose process exited meanwhile fails instead
    of leaving a namespace vswitch made where it must make none; and a name is reached by a helper
    process pyroute2 forks, which outlives a SIGKILL of ours: allowed to make the namespace, it could
    bring one back after `vswitch down` removed it."""
    return IPRoute() if namespace is None else IPRoute(netns=namespace, flags=0)


def open_existing_namespace(namespace: str | None) -> IPRoute:
    """Netlink inside namespace (None: the root), which must already exist.

    Asked for a namespace by name, pyroute2 creates it unless flags=0: a debug command or a clean-up
    would then bring back a namespace the user deleted. Raises FileNotFoundError when there is none.
    """
    return IPRoute() if namespace is None else IPRoute(netns=namespace, flags=0)


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_exists(namespace: str | None, ifname: str) -> bool:
    with _ipr(namespace) as ipr:
        return link_index(ipr, ifname) is not None


LOOPBACK = IPv4Interface("127.0.0.1/8")  # what the kernel gives lo when it comes up (inetdev_event)


@dataclass(frozen=True)
class LoState:
    up: bool
    bare: bool  # no 127.0.0.1: bringing lo up adds it, putting lo back down must take it off


def lo_state(namespace: str) -> LoState | None:
    """Whether lo is up in namespace, and bare: asked before set_lo_up, so the ledger can say what
    to put back before anything changed. None: the namespace has no lo."""
    with _ipr(namespace) as ipr:
        index = link_index(ipr, "lo")
        if index is None:
            return None
        up = bool(ipr.get_links(index)[0]["flags"] & IFF_UP)
        ours = [a for a in ipr.get_addr(family=socket.AF_INET, index=index)
                if a.get_attr("IFA_LOCAL") == str(LOOPBACK.ip)]  # fmt: skip
        return LoState(up, not ours)


def set_lo_up(namespace: str) -> bool:
    """Bring lo up in namespace; True when it was down (so it is ours to put back)."""
    with _ipr(namespace) as ipr:
        index = link_index(ipr, "lo")
        if index is None:
            return False
        was_down = not ipr.get_links(index)[0]["flags"] & IFF_UP
        if was_down:
            ipr.link("set", index=index, state="up")
        return bool(was_down)


def set_lo_down(namespace: str, cookie: int | None, bare: bool = False) -> bool:
    """Put lo back down in a namespace vswitch did not make but brought lo up in, if that namespace
    is still the same one (its cookie); True when it was put down. bare: lo had no 127.0.0.1 before,
    and the kernel added it when lo came up; it goes too (IPv6's ::1 goes with the link going down),
    so the namespace is as it was."""
    if cookie is None or netns_cookie(namespace) != cookie:
        return False
    with open_existing_namespace(namespace) as ipr:
        index = link_index(ipr, "lo")
        if index is None:
            return False
        ipr.link("set", index=index, state="down")
        if bare:
            try:
                ipr.addr("del", index=index, address=str(LOOPBACK.ip), prefixlen=LOOPBACK.network.prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:  # never added: a kill before lo came up
                    raise
    return True


def place_tap(
    tap_name: str,
    namespace: str | None,
    ifname: str,
    address: IPv4Interface | None,
    txqueuelen: int = 1000,
    mtu: int = 1500,
    address6: IPv6Interface | None = None,
    ipv6_conf: dict[str, int] | None = None,
) -> str:
    """Move a root-namespace tap into namespace as ifname, address it, bring it up; return its MAC.
    ipv6_conf: the link's net.ipv6.conf settings, made before it comes up (set_ipv6_conf)."""
    try:
        with IPRoute() as root:
            index = link_index(root, tap_name)
            if index is None:
                raise KernelError(f"tap {tap_name} disappeared before it could be placed")
            root.link("set", index=index, txqlen=txqueuelen, mtu=mtu)
            if namespace is not None:
                root.link("set", index=index, net_ns_fd=namespace)
        with _ipr(namespace) as ipr:
            index = link_index(ipr, tap_name)
            if index is None:
                raise KernelError(f"tap {tap_name} did not arrive in namespace {namespace}")
            if ifname != tap_name:
                if link_index(ipr, ifname) is not None:
                    where = f"namespace {namespace}" if namespace else "the root namespace"
                    raise KernelError(f"{where} already has an interface named {ifname}")
                ipr.link("set", index=index, ifname=ifname)
            if ipv6_conf:
                set_ipv6_conf(namespace, ifname, ipv6_conf)
            if address is not None:
                ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            if address6 is not None:
                # No duplicate address detection: the addresses are ours to hand out, and DAD would
                # leave them tentative (unusable) for a second or two after the link comes up.
                ipr.addr("add", index=index, address=str(address6.ip), prefixlen=address6.network.prefixlen,
                         family=socket.AF_INET6, flags=IFA_F_NODAD)  # fmt: skip
            ipr.link("set", index=index, state="up")
            link = ipr.get_links(index)[0]
            return str(link.get("IFLA_ADDRESS") or link.get("address"))
    except NetlinkError as exc:
        raise KernelError(f"configuring {ifname} in {namespace or 'root'}: {os.strerror(exc.code)}") from None
    except FileNotFoundError:  # pyroute2 opens /run/netns/NAME itself
        raise KernelError(f"namespace {namespace} does not exist") from None


def readdress(
    namespace: str | None, ifname: str, old: IPv4Interface | None, new: IPv4Interface, mtu: int
) -> None:
    """A moved port's interface: the old address off, the new one on, the new segment's MTU; taken
    down and up again around it, as a replugged cable would be: what the old segment taught it goes
    (its IPv6 address and default route from the old router's advertisements, its neighbours), and
    coming up it solicits the new segment's router at once."""
    try:
        with _ipr(namespace) as ipr:
            index = link_index(ipr, ifname)
            if index is None:
                raise KernelError(f"no interface {ifname} in {namespace or 'the root namespace'}")
            ipr.link("set", index=index, state="down")
            ipr.link("set", index=index, mtu=mtu)
            if old is not None and old != new:
                ipr.addr("del", index=index, address=str(old.ip), prefixlen=old.network.prefixlen)
            if old != new:
                ipr.addr("add", index=index, address=str(new.ip), prefixlen=new.network.prefixlen)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise KernelError(
            f"readdressing {ifname} in {namespace or 'root'}: {os.strerror(exc.code)}"
        ) from None


def set_ipv6_conf(namespace: str | None, ifname: str, settings: dict[str, int]) -> None:
    """Write net.ipv6.conf.IFNAME.KEY for each setting, in namespace. Netlink cannot set these (the
    kernel takes only the token and the address generation mode that way), and /proc/sys/net is the
    writer's own namespace's, so the writes run on a thread inside it (in_namespace)."""

    def write() -> None:
        for key, value in settings.items():
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/{key}", "w") as conf:
                conf.write(str(value))

    try:
        in_namespace(namespace, write)
    except OSError as exc:
        raise KernelError(f"setting IPv6 options of {ifname} in {namespace or 'root'}: {exc}") from None


def slaac_address(namespace: str | None, ifname: str, prefix: IPv6Network) -> IPv6Interface | None:
    """The address ifname has taken by SLAAC in prefix, once it is usable (not tentative), or None."""
    with open_existing_namespace(namespace) as ipr:
        index = link_index(ipr, ifname)
        if index is None:
            return None
        for msg in ipr.get_addr(family=socket.AF_INET6, index=index):
            address = IPv6Address(msg.get("IFA_ADDRESS"))
            flags = msg.get("IFA_FLAGS") or msg["flags"]
            if address in prefix and not flags & IFA_F_TENTATIVE:
                return IPv6Interface(f"{address}/{msg['prefixlen']}")
    return None


def add_route(
    namespace: str | None,
    dst: IPv4Network | IPv6Network,
    gateway: IPv4Address | IPv6Address | None,
    ifname: str,
    replace: bool = False,
) -> None:
    """A route in namespace; replace: over one to the same destination (a port moved)."""
    with _ipr(namespace) as ipr:
        index = link_index(ipr, ifname)
        if index is None:
            raise KernelError(f"no interface {ifname} in {namespace or 'the root namespace'}")
        kwargs: dict[str, object] = {"dst": str(dst), "oif": index}
        if dst.version == 6:
            kwargs["family"] = socket.AF_INET6
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        try:
            ipr.route("replace" if replace else "add", **kwargs)
        except NetlinkError as exc:
            raise KernelError(
                f"adding route {dst} in {namespace or 'root'}: {os.strerror(exc.code)}"
            ) from None

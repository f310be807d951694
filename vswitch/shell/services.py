"""The router's services on the shell's side: building them from the topology, the DNS upstream's
sockets, the lease file, and each made namespace's resolv.conf.

The core decides (core/dhcp.py, core/dns.py); this module only moves bytes and files:
- `Upstream` sends the questions the DNS core queues (its `outbox`) from a UDP socket opened in the
  uplink's namespace, connected to the resolver so only its answers come in, and asks again over TCP
  when an answer comes back truncated (RFC 7766 5); every TCP exchange is bounded by the core's
  timeout, after which the core answers the client SERVFAIL.
- `LeaseFile` rewrites `NAME.leases.json` in the state folder when the leases change (checked once a
  second); the ledger lists it, so `down` after a SIGKILL removes it too.
- `write_resolv_conf` gives a namespace vswitch made its own `/etc/netns/NS/resolv.conf` (so a DHCP
  client run there under `ip netns exec` rewrites that, not the host's /etc/resolv.conf). One that
  exists is never overwritten; the ledger records what was made, and undo removes only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..core.counters import Event
from . import kernel

if TYPE_CHECKING:
    from ..config.topology import Topology
    from ..core.datapath import Datapath
    from ..core.wire import Frame
    from ..services.dhcp import DhcpServer
    from ..services.dns import DnsServer, Outgoing

log = logging.getLogger("vswitch")

NETNS_ETC: Final = Path("/etc/netns")
LEASE_FILE_INTERVAL: Final = 1.0
TCP_MAX: Final = 16  # TCP retries to the upstream at once; more wait for the core's timeout
_LENGTH: Final = struct.Struct("!H")


def build(topology: Topology, events: Any) -> tuple[DhcpServer | None, DnsServer | None]:
    """The DHCP and DNS servers the topology asks for (routed segments only; the uplink never)."""
    if not topology.routed:
        return None, None
    spec = topology.services
    dhcp: DhcpServer | None = None
    if spec.dhcp:
        from ..services.dhcp import DhcpServer, Reservation, Scope

        scopes = {}
        for index, segment in enumerate(topology.segments):
            assert segment.gateway is not None
            gateway = segment.gateway.ip
            # Option 121: each static route, via its own gateway when that is on this segment (no
            # detour through us), else via us; the default route goes first (dhcp.py).
            routes = tuple(
                (route.prefix, route.via if route.via in segment.subnet else gateway)
                for route in topology.routes
                if isinstance(route.via, IPv4Address) and route.prefix.version == 4
            )
            scopes[index] = Scope(
                index,
                segment.subnet,
                gateway,
                tuple(r for r in spec.dhcp_ranges if r[0] in segment.subnet),
                segment.mtu,
                spec.dns,
                routes,
            )
        reservations = {host.mac: Reservation(host.address, host.name) for host in spec.dhcp_hosts}
        dhcp = DhcpServer(
            scopes,
            spec.lease_time,
            topology.name if spec.dns else None,
            reservations,
            events=events,
        )
    dns: DnsServer | None = None
    if spec.dns:
        from ..services.dns import DnsServer

        networks: list[Any] = [s.subnet for s in topology.segments]
        networks += [s.subnet6 for s in topology.segments if s.subnet6 is not None]
        dns = DnsServer(topology.name, networks, spec.dns_upstream is not None, dhcp, events)
    return dhcp, dns


class Upstream:
    """The DNS core's way out: a socket in the uplink's namespace, connected to the resolver."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        datapath: Datapath,
        dns: DnsServer,
        send: Callable[[Sequence[tuple[int, Frame]]], None],
        namespace: str | None,
        address: IPv4Address | IPv6Address,
        port: int,
    ) -> None:
        self.loop, self.datapath, self.dns, self.send = loop, datapath, dns, send
        self.namespace, self.server = namespace, (str(address), port)
        self.family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.sock: socket.socket | None = None
        self._flush_due = False
        self._tcp: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        """The UDP socket, made in the uplink's namespace (a thread there: kernel.in_namespace)."""

        def make() -> socket.socket:
            sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.server)  # a random source port (RFC 5452 9.2), the resolver's answers only
            except OSError:
                sock.close()
                raise
            return sock

        self.sock = kernel.in_namespace(self.namespace, make)
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self.dns.wake = self.wake

    def close(self) -> None:
        self.dns.wake = None
        for task in self._tcp:
            task.cancel()
        if self.sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def wake(self) -> None:
        """The core queued a question: send it once the batch in hand is done."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        outbox, self.dns.outbox = self.dns.outbox, []
        for out in outbox:
            if out.tcp:
                if len(self._tcp) < TCP_MAX:
                    task = self.loop.create_task(self._ask_tcp(out))
                    self._tcp.add(task)
                    task.add_done_callback(self._tcp.discard)
                continue
            if self.sock is None:
                continue
            try:
                self.sock.send(out.wire)
            except OSError as exc:  # no route, the namespace's link down: the client gets SERVFAIL later
                self._error(f"sending to {self.server[0]}: {exc.strerror}")

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(64):  # a budget, as for a port
            try:
                wire = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED: an ICMP port unreachable came back
                self._error(f"{self.server[0]}:{self.server[1]}: {exc.strerror}")
                return
            self.send(self.datapath.dns_upstream_reply(wire, self.loop.time()))

    async def _ask_tcp(self, out: Outgoing) -> None:
        """The question again over TCP, two-byte length first (RFC 1035 4.2.2)."""
        try:
            sock = await self.loop.run_in_executor(
                None, kernel.in_namespace, self.namespace, self._tcp_socket
            )
            with sock:
                async with asyncio.timeout(self.dns.timeout):
                    await self.loop.sock_connect(sock, self.server)
                    await self.loop.sock_sendall(sock, _LENGTH.pack(len(out.wire)) + out.wire)
                    (length,) = _LENGTH.unpack(await self._read(sock, 2))
                    wire = await self._read(sock, length)
        except (OSError, TimeoutError, EOFError) as exc:
            self._error(f"TCP to {self.server[0]}: {exc}")
            return
        self.send(self.datapath.dns_upstream_reply(wire, self.loop.time(), over_tcp=True))

    def _tcp_socket(self) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        return sock

    async def _read(self, sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = await self.loop.sock_recv(sock, size - len(data))
            if not chunk:
                raise EOFError("the upstream closed the connection")
            data += chunk
        return data

    def _error(self, message: str) -> None:
        self.datapath.counters.events[Event.DNS_UPSTREAM_ERROR] += 1
        log.warning("dns upstream: %s", message)


class LeaseFile:
    """NAME.leases.json beside the state file: the bound leases, rewritten when they change."""

    def __init__(
        self,
        path: Path,
        dhcp: DhcpServer,
        names: Callable[[], dict[int, str]],
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        """on_error: told of a write that failed (the instance counts and logs it); else it is logged."""
        self.path, self.dhcp, self.names = path, dhcp, names
        self.on_error = on_error
        self.written = -1
        self._timer: asyncio.TimerHandle | None = None
        self._clock: Callable[[], float] = time.monotonic  # the loop's, once started (the leases')

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write now, then check once every LEASE_FILE_INTERVAL until stop()."""
        self._clock = loop.time
        self.write_if_changed()
        self._timer = loop.call_later(LEASE_FILE_INTERVAL, self.start, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def write_if_changed(self) -> None:
        if self.dhcp.version == self.written:
            return
        self.written = self.dhcp.version
        now, wall = self._clock(), time.time()
        rows = self.dhcp.table(now, self.names())
        for row in rows:  # the file outlives the process's clock: absolute times too
            at = wall + float(str(row["expires_in"]))
            row["expires"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"leases": rows, "written": time.time()}, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only state folder: the leases still work, the file is stale
            if self.on_error is not None:
                self.on_error(exc)
            else:
                log.warning("cannot write %s: %s", self.path, exc.strerror)


def resolv_conf_text(nameservers: list[str], domain: str | None) -> str:
    lines = ["# Written by vswitch for this namespace; removed when vswitch stops."]
    if not nameservers:
        lines.append("# No DNS server here: the namespace's segments have no router with DNS.")
    lines += [f"nameserver {server}" for server in nameservers[:3]]  # resolv.conf(5): at most 3
    if domain:
        lines.append(f"search {domain}")
    lines.append("options edns0")  # answers over 512 bytes come whole over UDP (we serve no TCP)
    return "\n".join(lines) + "\n"


def write_resolv_conf(namespace: str, text: str, record: Callable[..., Any]) -> bool:
    """/etc/netns/NAMESPACE/resolv.conf with text, unless one is there (it is the user's, kept).
    record(kind, **fields) is the ledger's, called before anything is made. True if written."""
    folder = NETNS_ETC / namespace
    path = folder / "resolv.conf"
    if path.exists():
        return False
    made = [str(d) for d in (NETNS_ETC, folder) if not d.exists()]
    record("resolv-conf", path=str(path), folders=made)
    for d in made:
        Path(d).mkdir(mode=0o755, exist_ok=True)
    with open(path, "x", encoding="ascii") as handle:  # "x": never over a file that appeared since
        handle.write(text)
    return True


def remove_resolv_conf(path: str, folders: list[str]) -> None:
    """Undo write_resolv_conf: the file (a DHCP client may have rewritten it: it is still ours), then
    the folders it made, newest first, if nothing else was put in them."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    for folder in reversed(folders):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(folder)  # ENOTEMPTY: someone else's files are there now, and stay

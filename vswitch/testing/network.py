"""A network of real namespaces for one test, under the names the test gives its hosts.

The test says "client" and "server"; the namespaces are PREFIX-client and PREFIX-server, PREFIX being
the network's instance name (the plugin's: "vt" + 6 hex for the pytest run + a counter, so two runs,
or two networks of one run, never meet). Underneath is an in-process `vswitch.api.Switch`: vswitch
makes the namespaces, records them in its state file and removes them when the network closes, and
its control socket is what `assert_reachable` asks `pingall --explain`'s questions of and what
`capture` streams from, the same server the command line talks to.

Usable without pytest: `with Network(ports=["client", "server"]) as net: ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any, Final, Literal

from ..api import Impaired, Partitioned, Switch
from ..config.topology import ConfigError, check_instance, check_namespace, parse_port
from ..shell.kernel import netns_inode, netns_path, stop_signals_held
from ..shell.state import pid_alive, socket_path
from ..tools.bench.process import terminate
from ..tools.debug import pingall
from ..tools.debug.common import call, unb64
from .support import wait_for

RUN_TIMEOUT: Final = 60.0  # net.run's default bound, seconds
STOP_TIMEOUT: Final = 5.0  # SIGTERM to SIGKILL for a program still running at teardown
CAPTURE_CONNECT_TIMEOUT: Final = 10.0
QUIET: Final = 0.05  # a stopping capture takes frames until none came for this long (seconds) ...
DRAIN_LIMIT: Final = 1.0  # ... or for this long at most
FORWARD_RE: Final = re.compile(r"\s*(tcp|udp):(\d+)=([^:]+):(\d+)\s*")

Family = Literal[4, 6]


class Network:
    """A switch (started by start() or `with`) and its namespaces, named for one test. Ports,
    segments, uplink and forwards are what `vswitch.api.Switch` takes (the command line's words), with
    the test's own host names where the command line has namespaces: `ports=["client",
    "server=10.0.0.9/24"]`, `segments={"lan": ["client"], "dmz": ["server"]}`, `uplink="wan"`,
    `forwards=["tcp:8080=server:80"]`. Every helper takes those names too."""

    def __init__(
        self,
        ports: Sequence[str] = (),
        *,
        segments: dict[str, Sequence[str]] | None = None,
        uplink: str | None = None,
        forwards: Sequence[str] = (),
        prefix: str | None = None,
        subnet: str | None = None,
        subnet6: str | None = None,
        dhcp: bool = True,
        dns: bool = True,
        dns_upstream: str | None = None,
        lease_time: float | str | None = None,
        dhcp_hosts: Sequence[str] = (),
        start_timeout: float = 15.0,
    ) -> None:
        """prefix: the instance name, and the namespaces' prefix (default "vt" + 8 hex). ValueError for
        a topology vswitch refuses, with the command line's words."""
        self.name = prefix or f"vt{secrets.token_hex(4)}"
        self._namespaces: dict[str, str | None] = {}  # host name -> namespace (None: the root's host port)
        self._labels: dict[str, str] = {}  # host name -> the switch's port label
        self._hosts: dict[str, str] = {}  # the switch's port label -> host name
        self._processes: list[tuple[str, subprocess.Popen[Any]]] = []
        self._captures: list[Capture] = []
        self._started = False
        try:
            check_instance(self.name)
            mapped_ports = [self._port(text) for text in ports]
            mapped_segments: dict[str, Sequence[str]] = {
                seg: [self._port(text) for text in members] for seg, members in (segments or {}).items()
            }
            mapped_uplink = None if uplink is None else self._uplink(uplink)
            mapped_forwards = [self._forward(text) for text in forwards]
            self.switch = Switch(
                mapped_ports,
                segments=mapped_segments or None,
                uplink=mapped_uplink,
                forwards=mapped_forwards,
                subnet=subnet,
                subnet6=subnet6,
                name=self.name,
                start_timeout=start_timeout,
                dhcp=dhcp,
                dns=dns,
                dns_upstream=dns_upstream,
                lease_time=lease_time,
                dhcp_hosts=dhcp_hosts,
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    # --- names ---------------------------------------------------------------------------------------
    def _claim(self, host: str, label: str, namespace: str | None) -> None:
        if host in self._labels:
            raise ValueError(f"{host!r} is named twice in this network")
        self._labels[host], self._hosts[label], self._namespaces[host] = label, host, namespace

    def _namespace_for(self, host: str) -> str:
        namespace = f"{self.name}-{host}"
        check_namespace(namespace)
        return namespace

    def _port(self, text: str) -> str:
        """One port in the port grammar, its namespace renamed into this network's."""
        spec = parse_port(text)
        text = text.strip()
        if spec.attached:
            raise ValueError(
                f"port {text!r}: a test network makes its own namespaces; attach a process's or a "
                "container's with net.switch.add_port() once it runs"
            )
        if spec.namespace is None:  # the host port: the root namespace, named as vswitch names it
            self._claim(spec.label, spec.label, None)
            return text
        namespace = self._namespace_for(spec.namespace)
        self._claim(spec.namespace, namespace, namespace)
        return namespace + text[len(spec.namespace) :]

    def _uplink(self, text: str) -> str:
        """`NS[=ADDR/PREFIX][,via=GW]`, NS renamed."""
        head, comma, options = text.partition(",")
        host, eq, address = head.partition("=")
        host = host.strip()
        check_namespace(host)
        namespace = self._namespace_for(host)
        self._claim(host, namespace, namespace)
        return f"{namespace}{eq}{address}{comma}{options}"

    def _forward(self, text: str) -> str:
        """`PROTO:PORT=HOST:PORT`, HOST renamed to its port's label (an unknown one is left for the
        switch to refuse in its own words)."""
        match = FORWARD_RE.fullmatch(text)
        if match is None:
            return text
        proto, port, host, target = match.groups()
        return f"{proto}:{port}={self._labels.get(host, host)}:{target}"

    @property
    def hosts(self) -> list[str]:
        """The test's names of the ports (the uplink's too), in the order given."""
        return list(self._labels)

    def namespace(self, host: str) -> str | None:
        """The namespace behind a host name (None: the host port, in the root namespace)."""
        self._known(host)
        return self._namespaces[host]

    def label(self, host: str) -> str:
        """The switch's name of the port (what `vswitch stats`, `link` and `capture` call it)."""
        self._known(host)
        return self._labels[host]

    def _known(self, host: str) -> None:
        if host not in self._labels:
            raise KeyError(f"no host {host!r} in this network (it has {', '.join(self._labels)})")

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Network:
        """Build and serve. A namespace of this network's names that already exists is not ours: refused
        (vswitch would use it and leave it, and the test would share it with its owner)."""
        taken = [ns for ns in self._namespaces.values() if ns is not None and netns_inode(ns) is not None]
        if taken:
            raise RuntimeError(f"namespace {', '.join(taken)} exists already: not this network's")
        # Held (Ctrl-C, SIGTERM and SIGHUP wait until it is up) so that the switch's thread starts with
        # them blocked, as do the threads it starts: a signal for the test then always lands on the
        # test's own thread, and never behind a teardown that holds it (a Python handler runs on the
        # main thread whichever thread the kernel handed the signal to).
        with stop_signals_held():
            self.switch.start()  # undone all of it if anything interrupts it
        self._started = True
        return self

    def close(self) -> None:
        """Stop the captures and the programs, then the switch, which removes the namespaces; raise if one
        is left. Every step runs even when one before it failed; the first error is raised at the end."""
        errors: list[BaseException] = []
        for capture in self._captures:
            _attempt(capture.stop, errors)
        self._captures.clear()
        for program, proc in self._processes:
            _attempt(lambda proc=proc, program=program: _stop_process(proc, program), errors)
        self._processes.clear()
        if self._started:
            for namespace in self._made():
                _attempt(lambda ns=namespace: _stop_strays(ns), errors)
        _attempt(self.switch.stop, errors)
        self._started = False
        left = [ns for ns in self._made() if netns_inode(ns) is not None]
        if left and not errors:
            errors.append(RuntimeError(f"namespace {', '.join(left)} still there after the switch stopped"))
        if errors:
            raise errors[0]

    def _made(self) -> list[str]:
        return [ns for ns in self._namespaces.values() if ns is not None]

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- programs ------------------------------------------------------------------------------------
    def _argv(self, host: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        if isinstance(argv, str | bytes):
            raise TypeError("argv is a list of arguments (['curl', '-s', url]), not a shell string")
        namespace = self.namespace(host)
        words = [os.fspath(arg) for arg in argv]
        if not words:
            raise ValueError("argv is empty: name the program to run")
        return words if namespace is None else ["ip", "netns", "exec", namespace, *words]

    def run(
        self, host: str, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv in host's namespace to the end: subprocess.run's keywords, and unless given,
        capture_output=True, text=True and timeout=60 (TimeoutExpired after it, the program killed).
        A program that leaves a daemon behind needs stdout and stderr of its own (DEVNULL, a file):
        captured, run waits until the daemon closes the pipes too."""
        options: dict[str, Any] = {"text": True, "timeout": RUN_TIMEOUT}
        if not {"stdout", "stderr", "capture_output"} & kwargs.keys():
            options["capture_output"] = True
        options.update(kwargs)
        return subprocess.run(self._argv(host, argv), **options)

    def popen(
        self, host: str, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start argv in host's namespace (subprocess.Popen's keywords); when the network closes it gets
        SIGTERM, then SIGKILL 5 s later, and is reaped."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(host, argv), **kwargs)
        self._processes.append((f"{os.fspath(argv[0])} in {host}", proc))
        return proc

    def wait_listening(self, host: str, tcp_port: int, timeout: float = 10.0) -> None:
        """Until something listens on TCP tcp_port in host's namespace (`ss`, polled), or TimeoutError:
        start a server with popen(), then this, then the client."""

        def listening() -> bool:
            out = self.run(host, ["ss", "-Hltn", "sport", "=", f":{tcp_port}"], timeout=5.0)
            return out.returncode == 0 and bool(out.stdout.strip())

        wait_for(listening, timeout, f"a listener on TCP port {tcp_port} in {host}")

    # --- addresses -------------------------------------------------------------------------------------
    def _port_info(self, host: str) -> dict[str, Any]:
        label = self.label(host)
        for port in self.switch.ports:
            if port["port"] == label:
                return port
        raise KeyError(f"{host} is not a port of the running switch")

    def address(self, host: str) -> str:
        """host's IPv4 address (no prefix); KeyError for one with none (=dhcp)."""
        address = self._port_info(host)["address"]
        if not address:
            raise KeyError(f"{host} has no IPv4 address of vswitch's (a =dhcp port?)")
        return str(IPv4Interface(address).ip)

    def address6(self, host: str) -> str:
        """host's IPv6 address (no prefix): --subnet6's on a switched segment, SLAAC's on a routed one."""
        address = self._port_info(host).get("address6")
        if not address:
            raise KeyError(f"{host} has no IPv6 address (give subnet6=)")
        return str(IPv6Interface(address).ip)

    @property
    def uplink_address(self) -> str:
        """The router's own address on the uplink: what the outside reaches the forwards at."""
        uplink = self.switch.topology.uplink
        if uplink is None:
            raise KeyError("this network has no uplink")
        return str(uplink.address.ip)

    # --- reachability ----------------------------------------------------------------------------------
    def _target(self, host: str, family: Family) -> str:
        return self.address(host) if family == 4 else self.address6(host)

    def reaches(self, a: str, b: str, family: Family = 4, count: int = 3, timeout: float = 1.0) -> bool:
        """Whether a ping from a's namespace to b's address is answered: up to count pings, one at a
        time, each waiting timeout seconds for its reply; True at the first answer."""
        namespace, address = self.namespace(a), self._target(b, family)
        return any(pingall.ping(namespace, address, 1, timeout, family) for _ in range(count))

    def assert_reachable(
        self, a: str, b: str, family: Family = 4, count: int = 3, timeout: float = 1.0
    ) -> None:
        """AssertionError unless a's ping to b is answered (see reaches); its message is what
        `vswitch pingall --explain` says about the pair: where the echo stops and why."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        if self.reaches(a, b, family, count, timeout):
            return
        lines = self.explain(a, b, family)
        raise AssertionError(
            f"{a} ({self.label(a)}) cannot reach {b} ({self.label(b)}, {self._target(b, family)}): "
            f"no answer to {count} ping(s); pingall --explain says:\n"
            + "\n".join(f"    {line}" for line in lines)
        )

    def assert_unreachable(
        self, a: str, b: str, family: Family = 4, count: int = 2, timeout: float = 1.0
    ) -> None:
        """AssertionError if any of count pings (0.2 s apart, timeout seconds for the last reply) from a
        to b is answered."""
        __tracebackhide__ = True
        namespace, address = self.namespace(a), self._target(b, family)
        if pingall.ping(namespace, address, count, timeout, family):
            raise AssertionError(f"{a} reaches {b} ({address}): its ping was answered")

    def explain(self, a: str, b: str, family: Family = 4) -> list[str]:
        """`vswitch pingall --explain`'s reasons for the pair a -> b, asked of this switch (its control
        socket: the kernel checks of both namespaces, the neighbour tables, the echo and its reply
        traced through a copy of the switch). Ctrl-C and SIGTERM wait until it is done: its netlink
        sockets are made in forked children of this process, which must not take a signal meant for
        it (a KeyboardInterrupt there would unwind a copy of the test)."""
        args = argparse.Namespace(name=self.name)
        with stop_signals_held():
            return self._explain(args, a, b, family)

    def _explain(self, args: argparse.Namespace, a: str, b: str, family: Family) -> list[str]:
        try:
            info = call(args, "debug-info")
            src, dst = _by_label(info, self.label(a)), _by_label(info, self.label(b))
            if family == 4:
                return pingall.explain(args, info, src, dst)
            matrix = pingall.v6_matrix(info)
            if matrix is None:
                return ["no port has an IPv6 address"]
            return pingall.explain6(args, info, matrix, src, dst)
        except Exception as exc:  # the explanation is a help, the failed ping the finding
            return [f"(pingall --explain could not run: {type(exc).__name__}: {exc})"]

    # --- network emulation ---------------------------------------------------------------------------
    def impair(self, host: str, direction: str = "both", **settings: Any) -> Impaired:
        """Switch.impair on host's port (delay=0.04, loss=0.3, rate=10e6, down=True, ...: seconds,
        fractions, bits a second); as a context manager it clears the link when the block ends."""
        return self.switch.impair(self.label(host), direction, **settings)

    def clear_link(self, host: str, direction: str = "both") -> dict[str, Any]:
        return self.switch.clear_link(self.label(host), direction)

    def partition(
        self, sources: str | Sequence[str], targets: str | Sequence[str], two_way: bool = True
    ) -> Partitioned:
        """Switch.partition between hosts (a side: "a", "a,b" or a list); as a context manager it heals
        when the block ends (every partition: the switch removes them all at once)."""
        return self.switch.partition(self._side(sources), self._side(targets), two_way)

    def heal(self) -> int:
        return self.switch.heal()

    def _side(self, side: str | Sequence[str]) -> list[str]:
        names = side.split(",") if isinstance(side, str) else list(side)
        return [self.label(name.strip()) for name in names if name.strip()]

    def links(self) -> dict[str, Any]:
        """As `vswitch link --json` (ports under the switch's labels, see label())."""
        return self.switch.links()

    def stats(self) -> dict[str, Any]:
        """As `vswitch stats --json` (ports under the switch's labels, see label())."""
        return self.switch.stats()

    # --- capture -----------------------------------------------------------------------------------------
    def capture(
        self,
        hosts: str | Sequence[str],
        count: int | None = None,
        timeout: float | None = None,
        filter: str | None = None,
    ) -> Capture:
        """Start capturing both directions of hosts' ports (the switch's capture stream): attached when
        this returns, so traffic made next is seen. It ends after count frames, after timeout seconds,
        on stop() or the end of its `with` block, or when the network closes; filter is capture's
        language ("icmp", "tcp port 80", "host 10.0.0.2 and udp")."""
        names = [hosts] if isinstance(hosts, str) else list(hosts)
        labels = [self.label(name) for name in names]
        capture = Capture(self.name, labels, {self.label(n): n for n in names}, count, timeout, filter)
        self._captures.append(capture)
        return capture


def _by_label(info: dict[str, Any], label: str) -> dict[str, Any]:
    for port in info["ports"]:
        if port["port"] == label:
            return dict(port)
    raise KeyError(label)


def _attempt(step: Any, errors: list[BaseException]) -> None:
    try:
        step()
    except Exception as exc:
        errors.append(exc)


def _stop_process(proc: subprocess.Popen[Any], program: str) -> None:
    terminate(proc, program, STOP_TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):  # a pipe whose reader went: nothing more to flush
                stream.close()


def pids_in(namespace: str) -> list[int]:
    """The processes whose network namespace is the named one (what `ip netns pids` lists)."""
    try:
        target = os.stat(netns_path(namespace))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def _stop_strays(namespace: str) -> None:
    """SIGTERM, then SIGKILL after 5 s, to what still runs in a namespace of the network (a daemon a
    program forked, a process the test started itself): the namespace is the network's, so is it."""
    strays = pids_in(namespace)
    for pid in strays:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while (alive := [pid for pid in strays if pid_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class CapturedFrame:
    """One line of the capture stream: the host's port, "rx" (the switch read it from the port: the
    namespace sent it), "tx" (the switch wrote it: the namespace received it) or a link event of an
    impaired port ("link:out:lost", ...), the time (seconds since the epoch) and the Ethernet frame."""

    host: str
    direction: str
    time: float
    data: bytes

    @property
    def packet(self) -> Any:
        """The frame as scapy dissects it (Ether / IP / ...), .time and .sniffed_on set."""
        import scapy.layers.dhcp  # binds BOOTP/DHCP under UDP 67/68 (as capture's summary does)
        import scapy.layers.dns  # binds DNS under UDP 53
        import scapy.layers.inet
        import scapy.layers.inet6  # noqa: F401  (binds IPv6 under Ether, ICMPv6 and NDP under it)
        from scapy.layers.l2 import Ether

        packet = Ether(self.data)
        packet.time = self.time
        packet.sniffed_on = self.host
        return packet


class Capture:
    """Frames of a running capture (Network.capture), collected by a thread from the control socket's
    capture stream. `frames` has every line; `packets` the frames that crossed (rx and tx) as scapy
    packets. wait() blocks until enough have come; stop() (or leaving the `with` block) ends it."""

    def __init__(
        self,
        instance: str,
        labels: list[str],
        hosts: dict[str, str],
        count: int | None,
        timeout: float | None,
        filter: str | None,
    ) -> None:
        self.count, self.dropped = count, 0
        self._hosts = hosts
        self._frames: list[CapturedFrame] = []
        self._changed = threading.Condition()
        self._stopping = False
        self._ended = False
        self._error: str | None = None
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(CAPTURE_CONNECT_TIMEOUT)
            self._sock.connect(str(socket_path(instance)))
            ask = {"cmd": "capture", "ports": labels, "filter": filter, "count": count or 0}
            self._sock.sendall(json.dumps(ask).encode() + b"\n")
            first, rest = self._reply()
            if not first.get("ok"):
                raise ValueError(f"capture refused: {first.get('error')}")
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)
        self._wake_r, self._wake_w = os.pipe()  # stop() wakes the reader through it
        self._thread = threading.Thread(target=self._read, args=(rest,), name="vswitch-capture", daemon=True)
        with stop_signals_held():  # the reader never takes a signal meant for the test (Network.start)
            self._thread.start()

    def _reply(self) -> tuple[dict[str, Any], bytes]:
        """The stream's first line (sent once the observers are attached) and what came after it."""
        data = b""
        while b"\n" not in data:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ValueError("the switch closed the capture stream before answering")
            data += chunk
        line, _, rest = data.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply, rest

    def _read(self, pending: bytes) -> None:
        """The stream's lines into frames, until the switch ends it (the count), the timeout, or
        stop(): then what is still arriving is taken until the stream is quiet for QUIET seconds (the
        switch writes what it saw a moment after it saw it), DRAIN_LIMIT seconds at most."""
        drain_until: float | None = None
        try:
            while True:
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    self._take(json.loads(line))
                now = time.monotonic()
                if self._stopping and drain_until is None:
                    drain_until = now + DRAIN_LIMIT
                if drain_until is not None:
                    wait = min(QUIET, drain_until - now)
                else:
                    wait = 3600.0 if self._deadline is None else self._deadline - now
                if wait <= 0:
                    return
                readable, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [], wait)
                if self._wake_r in readable:
                    os.read(self._wake_r, 64)  # stop(): the next turn drains
                elif readable:
                    chunk = self._sock.recv(1 << 20)
                    if not chunk:  # the count was reached, or the switch went
                        return
                    pending += chunk
                elif drain_until is not None:
                    return  # quiet: nothing more on its way
                elif self._deadline is not None and time.monotonic() >= self._deadline:
                    return
        except (OSError, ValueError) as exc:
            self._error = str(exc)
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _take(self, record: dict[str, Any]) -> None:
        if record.get("ok") is False:
            self._error = str(record.get("error"))
            return
        label = str(record["port"])
        frame = CapturedFrame(
            self._hosts.get(label, label), str(record["dir"]), float(record["t"]), unb64(record["data"])
        )
        with self._changed:
            self._frames.append(frame)
            self.dropped = int(record.get("dropped", 0))
            self._changed.notify_all()

    @property
    def frames(self) -> list[CapturedFrame]:
        with self._changed:
            return list(self._frames)

    @property
    def packets(self) -> list[Any]:
        """The frames that crossed the ports (not an impaired link's losses), as scapy packets."""
        return [f.packet for f in self.frames if f.direction in ("rx", "tx")]

    @property
    def running(self) -> bool:
        with self._changed:
            return not self._ended

    def wait(self, count: int | None = None, timeout: float = 10.0) -> list[Any]:
        """Until the capture holds count frames that crossed (default: the capture's count; without
        either, until it ends), or it ended, or timeout seconds; the packets then."""
        want = count if count is not None else self.count
        deadline = time.monotonic() + timeout

        def enough() -> bool:
            crossed = sum(1 for f in self._frames if f.direction in ("rx", "tx"))
            return self._ended or (want is not None and crossed >= want)

        with self._changed:
            while not enough() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
        return self.packets

    def stop(self) -> list[Any]:
        """End the capture: what is still on its way is taken first (see _read), then the stream is
        closed (the switch removes its observers); the packets."""
        if not self._stopping:
            self._stopping = True
            os.write(self._wake_w, b"x")
            self._thread.join(DRAIN_LIMIT + 5.0)
            self._sock.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self.packets

    @property
    def error(self) -> str | None:
        """What ended the stream if not the count, the timeout or stop() (the switch's error line, or
        the socket's), else None."""
        return self._error

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


__all__ = ["Capture", "CapturedFrame", "Network", "pids_in"]

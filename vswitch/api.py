"""Run a switch inside your own Python process and put a hook on its packet path.

    from vswitch.api import Switch

    def no_icmp(port: str, frame: bytes) -> bytes | None:
        # frame is Ethernet (no virtio-net header); return it (or new bytes) to forward, None to drop
        return None if frame[12:14] == b"\\x08\\x00" and frame[23] == 1 else frame

    with Switch(ports=["ns1", "ns2"]) as sw:       # root: makes namespaces ns1, ns2 on 10.0.0.0/24
        sw.hook = no_icmp                          # ICMP now dies, counted as drop reason "hook"
        ...                                        # ip netns exec ns1 ping 10.0.0.2 -> fails
        print(sw.stats()["drops"])                 # {'hook': 3}
        sw.hook = None                             # back to the full-speed path

The switch is a normal instance (its control socket answers `vswitch status --name NAME`, capture,
trace ...). Its event loop runs in a background thread; leaving the `with` block stops it and removes
everything it created. The hook runs on that thread, once per received frame, before the datapath:
keep it short. A returned frame keeps the original virtio-net header when its length is unchanged (so
checksum offload stays valid); a frame of another length gets a zero header, so a TSO super-frame must
not be resized by a hook. A trunk's frames are hooked as the trunk carries them (tagged, on the trunk's
label); what arrives from a VXLAN tunnel's underlay is not hooked.

Network emulation (README "Network emulation") is a method away, in seconds, fractions and bits a second:

    with Switch(ports=["ns1", "ns2"]) as sw:
        with sw.impair("ns1", delay=0.05, jitter=0.005, loss=0.01):   # both directions of ns1's link
            ...                                    # 100 ms more round trip to ns1, 1 % lost each way
        # cleared here
        with sw.partition("ns1", ["ns2"]):         # ns1 and ns2 cannot reach each other
            ...
        # healed here (every partition: see Switch.partition)
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .config import links, services, topology
from .config.topology import ConfigError
from .core.emulation import Direction, Impairment
from .core.wire import VNET_HDR_LEN, ZERO_VNET_HDR
from .shell.control import CommandError
from .shell.instance import Instance, StartError
from .shell.kernel import stop_signals_held
from .shell.loop import new_loop

PacketHook = Callable[[str, bytes], "bytes | None"]


class Switch:
    """An in-process vswitch: ports=[namespaces] (one L2 segment) or segments={name: [namespaces]}."""

    def __init__(
        self,
        ports: Sequence[str] = (),
        *,
        segments: dict[str, Sequence[str]] | None = None,
        uplink: str | None = None,
        forwards: Sequence[str] = (),
        subnet: str | None = None,
        subnet6: str | None = None,
        vxlan: dict[str, str] | None = None,
        trunks: Sequence[str] = (),
        mirrors: Sequence[str] = (),
        name: str | None = None,
        start_timeout: float = 15.0,
        dhcp: bool = True,
        dns: bool = True,
        dns_upstream: str | None = None,
        lease_time: float | str | None = None,
        dhcp_hosts: Sequence[str] = (),
    ) -> None:
        """forwards: ["tcp:8080=ns3:80", ...], as --forward takes them (DNAT from the uplink's address to
        a port; needs uplink); vxlan: {segment: "VNI,local=ADDR,netns=NS,remote=ADDR..."}, as --vxlan
        takes it after the '=';
        trunks: ["NS=SEGMENT:VID,...[,native=SEGMENT]", ...], as --trunk takes them; mirrors:
        ["SRC=DST[,in|out|both]", ...], as --mirror takes them (a SPAN port DST with SRC's frames);
        subnet6: as --subnet6 (routed: a /48-/60, a /64 per segment, the hosts by SLAAC); dhcp, dns,
        dns_upstream, lease_time (seconds, or "1h"), dhcp_hosts (["MAC=ADDR[,NAME]", ...]): the router's
        services, as --no-dhcp, --no-dns, --dns-upstream, --lease-time and --dhcp-host."""
        req = topology.Request()
        req.name = name or f"api{secrets.token_hex(3)}"
        if ports:
            req.ports = topology.parse_ports(",".join(ports))
        if subnet is not None:
            req.subnet = topology.parse_subnet(subnet)
        if subnet6 is not None:
            req.subnet6 = topology.parse_subnet6(subnet6)
        for seg_name, members in (segments or {}).items():
            req.segments.append(topology.parse_segment(f"{seg_name}={','.join(members)}"))
        if uplink is not None:
            req.uplink = topology.parse_uplink(uplink)
        req.forwards = [topology.parse_forward(text) for text in forwards]
        req.trunks = [topology.parse_trunk(text) for text in trunks]
        req.mirrors = [topology.parse_mirror(text) for text in mirrors]
        for seg_name, spec in (vxlan or {}).items():
            req.vxlan[seg_name] = topology.parse_vxlan(f"{seg_name}={spec}")[1]
        req.services.dhcp, req.services.dns = dhcp, dns
        if dns_upstream is not None:
            req.services.dns_upstream = services.parse_dns_upstream(dns_upstream)
        if lease_time is not None:
            seconds = (
                services.parse_duration(lease_time, "lease_time")
                if isinstance(lease_time, str)
                else lease_time
            )
            req.services.lease_time = services.check_lease_time(float(seconds), "lease_time")
        req.services.dhcp_hosts = [services.parse_dhcp_host(text) for text in dhcp_hosts]
        self.topology = topology.build(req)
        self.name = self.topology.name
        self.start_timeout = start_timeout
        self.instance: Instance | None = None
        self._hook: PacketHook | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._stopping = threading.Event()  # stop() was asked for, perhaps before serving began

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Switch:
        """Build and serve; whatever interrupts this (a Ctrl-C included) undoes it all before rising:
        `with` never reaches __exit__ when __enter__ raises."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from .tools.debug import SERVED

        self._stopping.clear()
        self._error = None
        instance = Instance(self.topology, control=SERVED)
        # Held, as `vswitch up` holds them: a Ctrl-C mid-build would otherwise land between making a
        # namespace and recording it (pyroute2 makes it in a forked helper), and it would stay.
        with stop_signals_held():
            instance.build()  # raises StartError with everything undone
            self.instance = instance
        ready = threading.Event()
        loop = self._loop = new_loop()

        def serving() -> None:
            ready.set()
            if self._stopping.is_set():  # stop() came before serve() had anything to stop
                instance.stop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(instance.serve(ready=serving, signals=False))
            except BaseException as exc:  # reported to the caller of start()
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name=f"vswitch-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(self.start_timeout) or self._error is not None:
            raise StartError(f"in-process switch {self.name} did not start: {self._error}")

    # --- live ports ---------------------------------------------------------------------------------
    def add_port(self, spec: str, segment: str | None = None, address: str | None = None) -> dict[str, Any]:
        """A port while the switch runs, in the port grammar (README "Ports"): `ns4`, `pid:1234`,
        `web=/run/c1/net`; its description, as `status` shows it."""
        described: dict[str, Any] = self._live(
            lambda instance: instance.add_port_live(spec, segment, address)
        )
        return described

    def remove_port(self, port: str) -> None:
        self._live(lambda instance: instance.remove_port_live(port))

    def move_port(self, port: str, segment: str) -> dict[str, Any]:
        described: dict[str, Any] = self._live(lambda instance: instance.move_port_live(port, segment))
        return described

    def _live(self, change: Callable[[Instance], Coroutine[Any, Any, Any]]) -> Any:
        """Run a live change on the switch's loop (its thread owns the datapath); its errors raise here
        as ValueError with the control socket's words."""
        instance, loop = self.instance, self._loop
        if instance is None or loop is None:
            raise RuntimeError(f"switch {self.name} is not running")
        try:
            return asyncio.run_coroutine_threadsafe(change(instance), loop).result(timeout=30.0)
        except (CommandError, ConfigError) as exc:
            raise ValueError(str(exc)) from None

    def stop(self) -> None:
        """Stop forwarding and remove every namespace, tap and file this switch created."""
        with stop_signals_held():  # a second Ctrl-C waits until everything is removed
            self._stop_held()

    def _stop_held(self) -> None:
        instance, loop, thread = self.instance, self._loop, self._thread
        if instance is None:
            return
        if loop is not None and thread is not None and thread.is_alive():
            self._stopping.set()  # before the call below, so serving() sees one or the other
            loop.call_soon_threadsafe(instance.stop)
            thread.join(10.0)
            if thread.is_alive():
                # Closing the taps under a loop that still reads them could hand their fd numbers to
                # something else mid-read: leave them to the process's exit (or `vswitch down`).
                raise RuntimeError(
                    f"in-process switch {self.name} did not stop within 10 s (a hook that never returns?)"
                )
        instance.teardown()
        if loop is not None:
            loop.close()
        self.instance = None

    def __enter__(self) -> Switch:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- the hook ----------------------------------------------------------------------------------
    @property
    def hook(self) -> PacketHook | None:
        return self._hook

    @hook.setter
    def hook(self, fn: PacketHook | None) -> None:
        """fn(port label, Ethernet frame) -> frame to forward, or None to drop (counted as 'hook')."""
        instance = self._running()
        self._hook = fn
        shell = instance.shell
        assert shell is not None
        if fn is None:
            shell.hook = None
            return
        labels = {p.id: p.label for p in instance.ports}
        labels.update((t.trunk.port, t.trunk.name) for t in instance.trunks)

        def shell_hook(port: int, pkt: bytes, _now: float) -> bytes | None:
            frame = pkt[VNET_HDR_LEN:]
            out = fn(labels.get(port, str(port)), frame)
            if out is None:
                return None
            if out == frame:
                return pkt
            header = pkt[:VNET_HDR_LEN] if len(out) == len(frame) else ZERO_VNET_HDR
            return header + bytes(out)

        shell.hook = shell_hook  # one attribute store: the IO thread picks it up on its next batch

    # --- views -------------------------------------------------------------------------------------
    def _running(self) -> Instance:
        if self.instance is None or self.instance.shell is None:
            raise RuntimeError("the switch is not running: use `with Switch(...) as sw:` or start()")
        return self.instance

    @property
    def ports(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self._running().ports]

    def address(self, namespace: str) -> str:
        """The IPv4 address (no prefix) of the port in namespace."""
        for port in self._running().ports:
            if port.label == namespace and port.address is not None:
                return str(port.address.ip)
        raise KeyError(namespace)

    def leases(self) -> list[dict[str, Any]]:
        """The DHCP leases in force (as `vswitch leases --json`), read on the switch's loop."""
        instance, loop = self._running(), self._loop
        assert loop is not None

        async def read() -> list[dict[str, Any]]:
            return instance.leases(asyncio.get_running_loop().time())

        return asyncio.run_coroutine_threadsafe(read(), loop).result(timeout=5.0)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (per port, drops by reason); read across threads, so approximate."""
        return dict(self._running().datapath.counters.snapshot())

    # --- network emulation --------------------------------------------------------------------------
    def impair(
        self,
        port: str,
        direction: str = "both",
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        distribution: str = "uniform",
        loss: float = 0.0,
        loss_burst: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        rate: float = 0.0,
        burst: int = 0,
        latency: float = 0.0,
        limit: int = 0,
        down: bool = False,
        flap: tuple[float, float] | None = None,
        carrier: bool = False,
        filter: str | None = None,
        seed: int | None = None,
    ) -> Impaired:
        """Impair port's link at once, in direction "in" (what its namespace sends), "out" (what it is
        sent) or "both", replacing what it had there; as `vswitch link PORT` with times in seconds,
        loss, duplicate, reorder and corrupt as fractions (0.01 is 1 %), rate in bits a second, burst
        in bytes, flap as (up, down) seconds. Returns an Impaired: as a context manager, leaving it
        clears that port in those directions. ValueError for a bad value or port."""
        directions = self._directions(direction)
        try:
            impairment = links.checked(
                Impairment(
                    delay=delay,
                    jitter=jitter,
                    distribution=distribution,
                    loss=loss,
                    loss_burst=loss_burst,
                    duplicate=duplicate,
                    reorder=reorder,
                    corrupt=corrupt,
                    rate=rate,
                    burst=burst,
                    latency=latency,
                    limit=limit,
                    down=down,
                    flap=flap,
                    carrier=carrier,
                    filter=filter,
                    seed=seed,
                ),
                toml=True,  # the words of keyword arguments: loss_burst, not --loss-burst
            )
            if filter is not None:
                links.check_filter(filter, "filter")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        entry = self._on_loop(lambda instance: instance.set_link(port, directions, impairment))
        return Impaired(self, port, directions, entry)

    def clear_link(self, port: str, direction: str = "both") -> dict[str, Any]:
        """Remove port's impairment in those directions (what is queued still leaves at its time)."""
        directions = self._directions(direction)
        entry: dict[str, Any] = self._on_loop(lambda instance: instance.clear_link(port, directions))
        return entry

    def links(self) -> dict[str, Any]:
        """The impaired links, the partitions and the carriers taken down (as `vswitch link --json`)."""
        described: dict[str, Any] = self._on_loop(lambda instance: instance.links())
        return described

    def partition(
        self, sources: str | Sequence[str], targets: str | Sequence[str], two_way: bool = True
    ) -> Partitioned:
        """Drop frames from the sources' ports to the targets' (and back, two_way), as `vswitch partition`;
        each side a port, "ns1,ns2", or a list. Returns a Partitioned: as a context manager, leaving it
        heals, and healing removes EVERY partition (the switch has no removal of one partition)."""
        src, dst = _sides(sources), _sides(targets)
        result = self._on_loop(lambda instance: instance.partition(src, dst, two_way))
        return Partitioned(self, list(result["partitions"]))

    def heal(self) -> int:
        """Remove every partition; how many there were."""
        result = self._on_loop(lambda instance: instance.heal())
        return int(result["healed"])

    @staticmethod
    def _directions(direction: str) -> tuple[Direction, ...]:
        try:
            return links.parse_directions(direction, "direction")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def _on_loop(self, call: Callable[[Instance], Any]) -> Any:
        """Run call(instance) on the switch's loop (its thread owns the emulator and the datapath); its
        errors raise here as ValueError with the control socket's words."""
        instance, loop = self._running(), self._loop
        assert loop is not None

        async def run() -> Any:
            return call(instance)

        try:
            return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=5.0)
        except (CommandError, ConfigError) as exc:
            raise ValueError(str(exc)) from None


def _sides(side: str | Sequence[str]) -> list[str]:
    names = side.split(",") if isinstance(side, str) else list(side)
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ValueError("a partition needs a port on each side")
    return names


class Impaired:
    """An impairment Switch.impair set: `entry` is the port's link as set (settings, queue, counts);
    clear() (or leaving the `with` block) removes it in the directions it was set in."""

    def __init__(self, switch: Switch, port: str, directions: tuple[Direction, ...], entry: dict[str, Any]):
        self.switch, self.port, self.directions, self.entry = switch, port, directions, entry

    def clear(self) -> None:
        if self.switch.instance is not None:  # a stopped switch took its impairments with it
            self.switch.clear_link(self.port, "both" if len(self.directions) == 2 else self.directions[0])

    def __enter__(self) -> Impaired:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.clear()


class Partitioned:
    """A partition Switch.partition made: `partitions` lists them all as `vswitch link` does; heal()
    (or leaving the `with` block) removes every partition, this one and any other."""

    def __init__(self, switch: Switch, partitions: list[str]):
        self.switch, self.partitions = switch, partitions

    def heal(self) -> None:
        if self.switch.instance is not None:
            self.switch.heal()

    def __enter__(self) -> Partitioned:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.heal()


__all__ = ["Impaired", "PacketHook", "Partitioned", "Switch"]

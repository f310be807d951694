"""Shared by the debug commands: port lookup on the server, the streaming client, scapy expressions."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ...config.topology import ConfigError, check_instance
from ...shell.control import CommandError, ControlError, LineWriter, no_socket, request
from ...shell.state import socket_path

if TYPE_CHECKING:
    from ...shell.instance import Instance, LivePort
    from ...shell.loop import Shell

MAX_PORTS: Final = 4096  # ports one capture stream may ask for


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise CommandError("data is not base64") from None


# --- server side -------------------------------------------------------------------------------------
def live_port(instance: Instance, label: Any) -> LivePort:
    for port in instance.ports:
        if port.label == label:
            return port
    names = instance.datapath.counters.names
    known = ", ".join(
        [p.label for p in instance.ports]
        + [names[t.port] for t in instance.datapath.tunnels]
        + [t.name for t in instance.datapath.trunks]
    )
    raise CommandError(f"no port {label!r}: ports are {known}")


def shell_of(instance: Instance) -> Shell:
    if instance.shell is None:
        raise CommandError("the switch is not forwarding yet")
    return instance.shell


class SubPort(NamedTuple):
    """A port with no tap of its own, as a stream sees it: a VXLAN remote's (outer True: what it
    carries is the outer packet, an Ethernet frame of zero MACs, shell.loop.OUTER_ETHERNET) or a trunk's
    VLAN port (the frames as on the trunk's tap, tags included); label is what the user asked for."""

    id: int
    label: str
    outer: bool


def stream_ports(instance: Instance, label: Any) -> list[LivePort] | list[SubPort]:
    """A port by label: a namespace's (or the host's); a tunnel's (vx42: every remote's port); or one
    remote's (vx42@10.250.0.2)."""
    names = instance.datapath.counters.names
    for trunk in instance.datapath.trunks:
        if label == trunk.name:
            return [SubPort(port, label, outer=False) for port in trunk.ports]
        for port in trunk.ports:
            if label == names[port]:
                return [SubPort(port, label, outer=False)]
    for tunnel in instance.datapath.tunnels:
        if label == names[tunnel.port]:
            return [SubPort(port, label, outer=True) for port in tunnel.addresses]
        for port in tunnel.addresses:
            if label == names[port]:
                return [SubPort(port, label, outer=True)]
    return [live_port(instance, label)]


def requested_ports(instance: Instance, req: dict[str, Any]) -> list[LivePort | SubPort]:
    """The ports a stream asks for ("ports": a list of labels, or "port": one), each once, in order."""
    labels = req.get("ports")
    if labels is None:
        labels = [req.get("port")]
    if not isinstance(labels, list) or not 0 < len(labels) <= MAX_PORTS:
        raise CommandError(f'"ports" must be a list of 1 to {MAX_PORTS} port names')
    ports = [port for label in labels for port in stream_ports(instance, label)]
    return list({port.id: port for port in ports}.values())


def port_stream_setup(
    instance: Instance, req: dict[str, Any], writer: LineWriter, many: bool = False
) -> tuple[list[LivePort | SubPort], Callable[[bytes], bool], Shell] | None:
    """What capture and live trace both need: the port ("port"; with many, `requested_ports`), the
    filter and the shell; or, for a bad request, an error line already written to the client and
    None."""
    from ...core.bpf import FilterError, compile_filter

    try:
        ports: list[LivePort | SubPort] = (
            requested_ports(instance, req) if many else [live_port(instance, req.get("port"))]
        )
        return ports, compile_filter(req.get("filter")), shell_of(instance)
    except (CommandError, FilterError) as exc:
        writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
        return None


async def client_gone(reader: asyncio.StreamReader) -> None:
    """Return when a streaming command's client goes away (EOF or an error). Whatever it sends
    meanwhile is read and thrown away in small pieces: read() would keep all of it until EOF."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        return


# --- client side -------------------------------------------------------------------------------------
def instance_socket(args: argparse.Namespace) -> Path:
    try:
        check_instance(args.name)
    except ConfigError as exc:
        raise ControlError(str(exc)) from None
    return socket_path(args.name)


def call(args: argparse.Namespace, cmd: str, timeout: float = 10.0, **fields: Any) -> Any:
    return request(instance_socket(args), cmd, timeout=timeout, **fields)


def stream(path: Path, cmd: str, **fields: Any) -> Generator[dict[str, Any], None, None]:
    """Open a streaming command and yield its JSON lines; the first (the reply) is checked, not yielded.

    Closing the generator (or Ctrl-C in the loop around it) closes the socket, which ends the stream on
    the server.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise no_socket(path) from None
        except ConnectionRefusedError:
            raise ControlError(f"no running instance at {path}") from None
        sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        lines = sock.makefile("rb")
        first = lines.readline()
        if not first:
            raise ControlError(f"instance at {path} closed the connection")
        reply = json.loads(first)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error")))
        for line in lines:
            yield json.loads(line)
    finally:
        sock.close()


def scapy_names() -> dict[str, Any]:
    """The names a packet expression may use: scapy's layer classes and its Rand* value makers."""
    import scapy.all as scapy_all
    from scapy.packet import Packet

    names: dict[str, Any] = {}
    for name, value in vars(scapy_all).items():
        if name.startswith("_"):
            continue
        if (isinstance(value, type) and issubclass(value, Packet)) or name.startswith("Rand"):
            names[name] = value
    return names


def evaluate(expression: str) -> Any:
    """Evaluate the user's own scapy expression, e.g. "Ether()/IP(dst='10.0.0.2')/ICMP()".

    This is not a sandbox: it runs the command line's text as Python, on the user's own machine, with
    the user's own privileges; builtins are removed only so that typos fail early and plainly.
    """
    from scapy.layers.l2 import Ether
    from scapy.packet import Packet

    try:
        packet = eval(expression, {"__builtins__": {}}, scapy_names())
    except Exception as exc:
        raise ValueError(f"cannot evaluate {expression!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(packet, Packet):
        raise ValueError(f"{expression!r} is not a scapy packet")
    if not isinstance(packet, Ether):
        raise ValueError(f"{expression!r} must start with Ether(...): vswitch ports carry Ethernet frames")
    return packet


def debug_info(instance: Instance, _req: dict[str, Any]) -> Any:
    """status, plus the router's interfaces (their MACs are what a namespace's gateway resolves to)."""
    info = instance.status()
    info["router_interfaces"] = [] if instance.router is None else instance.router.interfaces_table()
    return info


def port_info(info: dict[str, Any], label: str) -> dict[str, Any]:
    for port in info["ports"]:
        if port["port"] == label:
            return dict(port)
    for trunk in info.get("trunks", []):  # a trunk: no address, and no one segment of its own
        if trunk["port"] == label:
            return {**trunk, "address": None, "address6": None, "segment": None}
    known = ", ".join(p["port"] for p in info["ports"])
    raise ControlError(f"no port {label!r}: ports are {known}")


def gateway_mac(info: dict[str, Any], segment: str) -> str | None:
    for iface in info.get("router_interfaces", []):
        if iface["name"] == segment:
            return str(iface["mac"])
    return None


def next_hop_mac(info: dict[str, Any], label: str, dst_ip: str) -> str:
    """The MAC a host on port label would send to for dst_ip: the destination itself on its segment,
    else its gateway (the router's interface), else broadcast."""
    from ipaddress import IPv4Address, IPv4Interface

    me = port_info(info, label)
    if me["address"] and IPv4Address(dst_ip) in IPv4Interface(me["address"]).network:
        for port in info["ports"]:
            if port["address"] and IPv4Interface(port["address"]).ip == IPv4Address(dst_ip):
                return str(port["mac"])
    return gateway_mac(info, me["segment"]) or "ff:ff:ff:ff:ff:ff"


def _gateway_ip(info: dict[str, Any], segment: str) -> str | None:
    for iface in info.get("router_interfaces", []):
        if iface["name"] == segment:
            return str(iface["address"]).split("/")[0]
    return None


def fill_ether(packet: Any, info: dict[str, Any], label: str, toward_port: bool) -> Any:
    """Set the Ether addresses the user left out, so scapy never resolves them on the host's links.

    toward_port=False (trace): the frame comes from the namespace: its MAC, to its next hop.
    toward_port=True (inject): the frame goes into the namespace: to its MAC, from the gateway's.
    """
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    me = port_info(info, label)
    ether = packet[Ether]
    if packet.haslayer(IP) and "src" not in packet[IP].fields:
        if not toward_port and me["address"]:
            packet[IP].src = me["address"].split("/")[0]
        elif toward_port and (gateway := _gateway_ip(info, me["segment"])):
            packet[IP].src = gateway
    if toward_port:
        ether.dst = ether.fields.get("dst", me["mac"])
        ether.src = ether.fields.get("src", gateway_mac(info, me["segment"]) or "02:00:00:00:00:01")
    else:
        ether.src = ether.fields.get("src", me["mac"])
        if "dst" not in ether.fields:
            ether.dst = (
                next_hop_mac(info, label, packet[IP].dst) if packet.haslayer(IP) else "ff:ff:ff:ff:ff:ff"
            )
    return packet

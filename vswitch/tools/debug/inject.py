"""`vswitch inject`: deliver a crafted frame into the namespace behind a port, as if the switch sent it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ...core.wire import ZERO_VNET_HDR
from ...shell.control import CommandError
from .common import b64, call, evaluate, fill_ether, live_port, shell_of, unb64

if TYPE_CHECKING:
    from ...shell.instance import Instance


def inject_command(instance: Instance, req: dict[str, Any]) -> Any:
    port = live_port(instance, req.get("port"))
    frame = unb64(req.get("data"))
    if len(frame) < 14:
        raise CommandError(f"a frame needs at least 14 bytes (an Ethernet header), got {len(frame)}")
    # A zero virtio-net header: no offload, the checksums in the frame are taken as they are.
    sent = shell_of(instance).inject(port.id, ZERO_VNET_HDR + frame)
    if not sent:
        raise CommandError(f"the kernel refused the frame on {port.label} (see `vswitch stats` drops)")
    return {"port": port.label, "bytes": len(frame)}


def cmd_inject(args: argparse.Namespace) -> int:
    packet = evaluate(args.packet)
    frame = bytes(fill_ether(packet, call(args, "debug-info"), args.port, toward_port=True))
    result = call(args, "inject", port=args.port, data=b64(frame))
    print(f"injected {result['bytes']} bytes into {result['port']}: {packet.summary()}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inject",
        help="write a crafted frame (a scapy expression) into the namespace behind PORT",
        description=(
            "PACKET is your own scapy expression, evaluated on your machine with scapy's layer names "
            "and no builtins. Ether addresses left out default to the port's MAC (dst) and its gateway's "
            "(src)."
        ),
    )
    p.add_argument("port", metavar="PORT")
    p.add_argument("packet", metavar="PACKET", help="e.g. \"Ether()/IP(dst='10.0.0.2')/UDP(dport=9)/'hi'\"")
    p.add_argument("--name", default="default")

"""Packet-level debugging: capture, trace, inject, pingall, doctor, and the Prometheus endpoint.

Importing this package registers its control-socket commands (capture, trace, trace-live, inject,
debug-info) in the switch process. scapy is imported only inside the client-side handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..control import ControlError
from . import capture, common, doctor, inject, pingall, trace
from .bpf import FilterError
from .pcap import PcapError

Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """One line on stderr and exit status 1 for an error the user can act on."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ControlError, FilterError, PcapError, ValueError, OSError) as exc:
            print(f"vswitch {args.command}: error: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: Any) -> dict[str, Handler]:
    capture.add_parser(sub)
    trace.add_parser(sub)
    inject.add_parser(sub)
    pingall.add_parser(sub)
    doctor.add_parser(sub)
    return {
        "capture": _guarded(capture.cmd_capture),
        "trace": _guarded(trace.cmd_trace),
        "inject": _guarded(inject.cmd_inject),
        "pingall": _guarded(pingall.cmd_pingall),
        "doctor": _guarded(doctor.cmd_doctor),
    }


__all__ = ["common", "register"]

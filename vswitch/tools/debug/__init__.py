"""Packet-level debugging: capture, trace, inject, pingall, doctor, top, and the Prometheus endpoint.

`SERVED` is the whole control table a switch serves: the shell's own commands and this package's
server sides (capture, trace, trace-live, inject, debug-info). The CLI and the Python API both hand it
to the instance they start. scapy is imported only inside the client-side handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Final

from ...core.bpf import FilterError
from ...shell.commands import BASE
from ...shell.control import ControlError, ControlTable
from ...shell.instance import Instance
from . import capture, common, doctor, inject, pingall, top, trace
from .pcap import PcapError

Handler = Callable[[argparse.Namespace], int]

SERVED: Final[ControlTable[Instance]] = BASE.merged(
    ControlTable(
        commands={
            "debug-info": common.debug_info,
            "trace": trace.trace_command,
            "inject": inject.inject_command,
        },
        streams={"capture": capture.capture_stream, "trace-live": trace.trace_live},
    )
)


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
    top.add_parser(sub)
    return {
        "capture": _guarded(capture.cmd_capture),
        "trace": _guarded(trace.cmd_trace),
        "inject": _guarded(inject.cmd_inject),
        "pingall": _guarded(pingall.cmd_pingall),
        "doctor": _guarded(doctor.cmd_doctor),
        "top": _guarded(top.cmd_top),
    }


__all__ = ["SERVED", "common", "register"]

"""Stopping the bench's helper programs (iperf3 servers, vde_switch, OVS's daemons) the same way."""

from __future__ import annotations

import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any], program: str, timeout: float) -> list[str]:
    """SIGTERM, then SIGKILL if it is still there after timeout seconds; a line for the report if so."""
    if proc.poll() is not None:
        return []
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
        return [f"{program} ignored SIGTERM for {timeout:g}s; killed"]
    return []

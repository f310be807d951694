"""Stopping the bench's helper programs (iperf3 servers, vde_switch, OVS's daemons) and the `vswitch
up` it ran, the same way everywhere; and the checkout the figures were measured on."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ...shell.state import state_path


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


def stop_instance(
    proc: subprocess.Popen[Any], instance: str, stop_timeout: float, command_timeout: float
) -> list[str]:
    """A `vswitch up` the bench started: SIGTERM, SIGKILL after stop_timeout, then `vswitch down` if
    its state file is still there (what a killed one left); a line for the report for each mishap."""
    problems: list[str] = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            problems.append(f"vswitch {instance} ignored SIGTERM; killed")
            proc.kill()
            proc.wait(stop_timeout)
    if state_path(instance).exists():
        down = subprocess.run(
            [sys.executable, "-m", "vswitch", "down", "--name", instance],
            capture_output=True,
            text=True,
            timeout=command_timeout + stop_timeout,
        )
        if down.returncode != 0:
            problems.append(f"vswitch down --name {instance}: {down.stderr.strip()}")
    return problems


def checkout_state(checkout: Path) -> dict[str, Any]:
    """The commit the figures were measured on, and whether vswitch/ had uncommitted changes then."""

    def git(*argv: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(checkout), *argv], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--", "vswitch")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "vswitch_uncommitted": bool(status) if status is not None else None,
    }

"""Stopping the bench's helper programs (iperf3 servers, vde_switch, OVS's daemons) and the `vswitch
up` it ran, the same way everywhere; and the checkout the figures were measured on."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


class NotReady(Exception):
    """`vswitch up` exited, or did not print its port table in time; str() is the sentence."""


def spawn_vswitch(argv: list[str], work: Path, stem: str) -> tuple[subprocess.Popen[bytes], Path]:
    """argv (a `vswitch up ... --json`) in a session of its own, its stdout in work/STEM.out and its
    stderr in work/STEM.err; returned at once, so the caller holds it (to stop) before any wait."""
    out_path = work / f"{stem}.out"
    with open(out_path, "wb") as out, open(work / f"{stem}.err", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
    return proc, out_path


def wait_port_table(proc: subprocess.Popen[bytes], out_path: Path, timeout: float) -> None:
    """Poll until the `vswitch up --json` spawn_vswitch started has printed its port table (its
    namespaces, taps and routes are up); NotReady, with its stderr, if it exits first or takes longer."""
    deadline = time.monotonic() + timeout
    while not out_path.read_bytes().strip():
        if proc.poll() is not None:
            why = out_path.with_suffix(".err").read_text(errors="replace").strip()
            raise NotReady(f"vswitch up exited {proc.returncode}: {why}")
        if time.monotonic() > deadline:
            raise NotReady(f"vswitch up was not ready within {timeout:g}s")
        time.sleep(0.05)


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

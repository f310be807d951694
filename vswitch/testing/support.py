"""What the pytest plugin needs before any network exists: whether this machine can run one, and a
poll with a deadline. Standard library only: the plugin loads in every pytest run on a machine where
vswitch is installed, so nothing heavy is imported until a test asks for a network."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Final, TypeVar

TUN_DEVICE: Final = "/dev/net/tun"

T = TypeVar("T")


def skip_reason() -> str | None:
    """Why a vswitch network cannot be built here, or None when it can: root (namespaces, taps and
    netlink need CAP_NET_ADMIN and CAP_SYS_ADMIN), a /dev/net/tun that opens, and the `ip` command
    (programs are run in a namespace by `ip netns exec`)."""
    euid = os.geteuid()
    if euid != 0:
        return f"vswitch networks need root (this test runs as uid {euid})"
    if not os.path.exists(TUN_DEVICE):
        return f"vswitch networks need {TUN_DEVICE} (the tun module; in a container, the device passed in)"
    try:
        os.close(os.open(TUN_DEVICE, os.O_RDWR))
    except OSError as exc:
        return f"vswitch networks need {TUN_DEVICE}, which does not open: {exc.strerror or exc}"
    if shutil.which("ip") is None:
        return "vswitch networks need the ip command (iproute2)"
    return None


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll predicate() until it is truthy and return its value; TimeoutError naming `what` at the
    deadline. The way to wait for a state in a test, instead of sleeping for a guess."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, left))

"""Real networks for tests: `Network` (namespaces named for one test, on an in-process switch) and the
pytest plugin around it (`plugin`: the vswitch_net fixtures, installed with vswitch).

The names below load on first use: the plugin imports this package in every pytest run, and a run
that builds no network should not pay for the switch's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .support import skip_reason, wait_for

if TYPE_CHECKING:
    from .network import Capture, CapturedFrame, Network

_LAZY = ("Capture", "CapturedFrame", "Network")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import network

        return getattr(network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Capture", "CapturedFrame", "Network", "skip_reason", "wait_for"]

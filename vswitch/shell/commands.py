"""The control requests the shell answers itself: status and the tables (`BASE`)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from .control import CommandError, ControlTable
from .instance import Instance


def _status(instance: Instance, _req: dict[str, Any]) -> Any:
    return instance.status()


def _fdb(instance: Instance, _req: dict[str, Any]) -> Any:
    return instance.fdb(asyncio.get_running_loop().time())


def _stats(instance: Instance, _req: dict[str, Any]) -> Any:
    datapath, router = instance.datapath, instance.router
    snapshot = datapath.counters.snapshot()
    # The tables' sizes as they are now, for `vswitch top` and scripts.
    tables: dict[str, Any] = {"fdb": {seg.name: len(seg.switch.fdb) for seg in datapath.segments}}
    if router is not None:
        tables["arp"] = len(router.arp.entries)
        if router.v6 is not None:
            tables["nd"] = len(router.v6.nd.entries)
        if router.nat is not None:
            tables["conntrack"] = len(router.nat.conntrack)
        snapshot["router"] = {
            "drops": dict(sorted(datapath.router_drops().items())),
            "events": dict(sorted(router.events.items())),
        }
    if datapath.flows is not None:
        tables["flow_cache"] = len(datapath.flows)
    snapshot["tables"] = tables
    return snapshot


def _router(instance: Instance) -> Any:
    if instance.router is None:
        raise CommandError("this instance has no router: start it with --segment or --uplink")
    return instance.router


def _routes(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).routes_table()


def _arp(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).arp_table(asyncio.get_running_loop().time())


def _conntrack(instance: Instance, _req: dict[str, Any]) -> Any:
    return _router(instance).conntrack_table(asyncio.get_running_loop().time())


BASE: Final[ControlTable[Instance]] = ControlTable(
    {
        "status": _status,
        "fdb": _fdb,
        "stats": _stats,
        "routes": _routes,
        "arp": _arp,
        "conntrack": _conntrack,
    }
)

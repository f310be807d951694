"""The control requests the shell answers itself: status, the tables and live ports (`BASE`)."""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..config.topology import ConfigError
from ..core.emulation import DIRECTIONS, Direction, Impairment
from ..core.nat import FRAGMENT_MAX, HELD_DATAGRAMS_MAX
from ..services.dhcp import LEASES_MAX
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
        if router.dhcp is not None:
            tables["leases"] = len(router.dhcp.leases)
        if router.dns is not None:
            tables["dns_cache"] = len(router.dns.cache)
        snapshot["router"] = {
            "drops": dict(sorted(datapath.router_drops().items())),
            "events": dict(sorted(router.events.items())),
        }
    if datapath.flows is not None:
        tables["flow_cache"] = len(datapath.flows)
    if router is not None:
        tables["arp_pending"] = len(router.arp.pending)
        if router.nat is not None:
            tables["nat_mappings"] = len(router.nat.mappings)
            # NAT's fragment memory: first fragments' rewrites kept for their datagrams' later ones, and
            # the datagrams whose later fragments wait for their first (bounded: limits in the README).
            tables["nat_fragments"] = len(router.nat.fragments)
            tables["nat_held"] = len(router.nat.held)
    snapshot["tables"] = tables
    snapshot["bounds"] = _bounds(instance)
    if instance.loop_lag is not None:
        snapshot["loop_lag"] = instance.loop_lag.snapshot()
    if instance.shell is not None and instance.shell.emulator.configured:
        snapshot["emulation"] = instance.links()
    return snapshot


def _bounds(instance: Instance) -> dict[str, Any]:
    """The most each table in `tables` may hold (README "Limits and bounds"), for a soak to check."""
    datapath, router = instance.datapath, instance.router
    bounds: dict[str, Any] = {
        # the learned entries are bounded; the router's own (static) MACs come on top
        "fdb": {seg.name: seg.switch.fdb.max_entries + seg.switch.fdb.statics for seg in datapath.segments}
    }
    if router is not None:
        bounds["arp"] = router.arp.cache_max
        bounds["arp_pending"] = router.arp.pending_max
        if router.v6 is not None:
            bounds["nd"] = router.v6.nd.cache_max
        if router.nat is not None:
            bounds["conntrack"] = router.nat.conntrack.max_flows
            bounds["nat_mappings"] = router.nat.conntrack.max_flows  # a mapping has at least one flow
            bounds["nat_fragments"] = FRAGMENT_MAX
            bounds["nat_held"] = HELD_DATAGRAMS_MAX
        if router.dhcp is not None:
            bounds["leases"] = LEASES_MAX * len(router.dhcp.scopes)
        if router.dns is not None:
            bounds["dns_cache"] = router.dns.cache_max
    if datapath.flows is not None:
        bounds["flow_cache"] = datapath.flows.max_entries * datapath.flows.table_count
    return bounds


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


def _leases(instance: Instance, _req: dict[str, Any]) -> Any:
    _router(instance)
    return instance.leases(asyncio.get_running_loop().time())


async def _port(instance: Instance, req: dict[str, Any]) -> Any:
    """{"op": "add", "spec", "segment"?, "address"?} | {"op": "del", "port"} | {"op": "move", "port",
    "segment"}: a port changed while the switch runs (Instance.add_port_live and the others)."""
    op = req.get("op")
    try:
        if op == "add":
            return await instance.add_port_live(str(req["spec"]), req.get("segment"), req.get("address"))
        if op == "del":
            return await instance.remove_port_live(str(req["port"]))
        if op == "move":
            return await instance.move_port_live(str(req["port"]), str(req["segment"]))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    except KeyError as exc:
        raise CommandError(f"port {op}: {exc.args[0]} is missing") from None
    raise CommandError(f"port: unknown operation {op!r} (add, del, move)")


def _directions(value: Any) -> tuple[Direction, ...]:
    if value in (None, "both"):
        return DIRECTIONS
    if value in DIRECTIONS:
        return (value,)
    raise CommandError(f"link: direction {value!r}: in, out or both")


def _link(instance: Instance, req: dict[str, Any]) -> Any:
    """{"op": "set", "port", "direction"?, "impairment": Impairment.settings()} | {"op": "clear", "port",
    "direction"?} | {"op": "list"}: network emulation (core/emulation.py)."""
    op = req.get("op", "list")
    if op == "list":
        return instance.links()
    port = req.get("port")
    if not isinstance(port, str):
        raise CommandError(f"link {op}: a port name is missing")
    directions = _directions(req.get("direction"))
    if op == "set":
        fields = req.get("impairment")
        if not isinstance(fields, dict):
            raise CommandError("link set: the impairment is missing")
        try:
            impairment = Impairment.from_settings(fields)
        except ValueError as exc:
            raise CommandError(f"link {port}: {exc}") from None
        return instance.set_link(port, directions, impairment)
    if op == "clear":
        return instance.clear_link(port, directions)
    raise CommandError(f"link: unknown operation {op!r} (set, clear, list)")


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise CommandError(f"partition: {what} must be a list of port names")
    return value


def _partition(instance: Instance, req: dict[str, Any]) -> Any:
    """{"sources": [ports], "targets": [ports], "two_way": bool}."""
    two_way = req.get("two_way", True)
    if not isinstance(two_way, bool):
        raise CommandError("partition: two_way must be true or false")
    return instance.partition(
        _names(req.get("sources"), "sources"), _names(req.get("targets"), "targets"), two_way
    )


def _heal(instance: Instance, _req: dict[str, Any]) -> Any:
    return instance.heal()


BASE: Final[ControlTable[Instance]] = ControlTable(
    {
        "status": _status,
        "fdb": _fdb,
        "stats": _stats,
        "routes": _routes,
        "arp": _arp,
        "conntrack": _conntrack,
        "leases": _leases,
        "port": _port,
        "link": _link,
        "partition": _partition,
        "heal": _heal,
    }
)

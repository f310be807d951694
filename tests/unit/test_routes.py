"""Longest-prefix match: longest wins, default route, connected beats static, no route."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch.core.routes import Route, RouteError, RouteTable


def ip(text: str) -> int:
    return int(IPv4Address(text))


@pytest.fixture
def table() -> RouteTable:
    t = RouteTable()
    t.add_connected(IPv4Network("10.0.1.0/24"), 0)
    t.add_connected(IPv4Network("198.18.0.0/24"), 2)
    t.add(Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1")))
    t.add(Route(IPv4Network("10.9.0.0/16"), IPv4Address("10.0.1.254")))
    t.add(Route(IPv4Network("10.9.9.0/24"), IPv4Address("198.18.0.9"), 2))
    return t


def test_longest_prefix_wins(table: RouteTable) -> None:
    assert table.lookup(ip("10.9.9.5")) == (2, ip("198.18.0.9"))
    assert table.lookup(ip("10.9.8.5")) == (0, ip("10.0.1.254"))


def test_connected_is_direct(table: RouteTable) -> None:
    assert table.lookup(ip("10.0.1.77")) == (0, None)


def test_default_route(table: RouteTable) -> None:
    assert table.lookup(ip("8.8.8.8")) == (2, ip("198.18.0.1"))


def test_no_route_without_default() -> None:
    t = RouteTable()
    t.add_connected(IPv4Network("10.0.1.0/24"), 0)
    assert t.lookup(ip("10.0.2.1")) is None


def test_connected_beats_static_for_same_prefix(table: RouteTable) -> None:
    table.add(Route(IPv4Network("10.0.1.0/24"), IPv4Address("198.18.0.1")))
    assert table.lookup(ip("10.0.1.5")) == (0, None)


def test_host_route_and_device_route() -> None:
    t = RouteTable()
    t.add_connected(IPv4Network("10.0.1.0/24"), 0)
    t.add(Route(IPv4Network("10.0.1.9/32"), None, 3))
    assert t.lookup(ip("10.0.1.9")) == (3, None)
    assert t.lookup(ip("10.0.1.8")) == (0, None)


def test_bad_routes_raise() -> None:
    t = RouteTable()
    t.add_connected(IPv4Network("10.0.1.0/24"), 0)
    with pytest.raises(RouteError):
        t.add(Route(IPv4Network("10.5.0.0/16"), IPv4Address("10.7.0.1")))
    with pytest.raises(RouteError):
        t.add(Route(IPv4Network("10.5.0.0/16")))
    with pytest.raises(RouteError):
        t.add(Route(IPv4Network("10.5.0.0/16"), IPv4Address("10.0.1.7"), 4))


def test_only_present_lengths_are_probed(table: RouteTable) -> None:
    assert [level[0] for level in table._levels] == [24, 16, 0]


def test_table_rows(table: RouteTable) -> None:
    rows = table.table()
    assert rows[0]["prefix"] in ("10.0.1.0/24", "198.18.0.0/24", "10.9.9.0/24")
    assert {"prefix": "0.0.0.0/0", "via": "198.18.0.1", "iface": 2, "type": "static"} in rows

"""Many ports in one process: 64 namespaces on one switch still forward, and all go away again."""

from __future__ import annotations

import pytest

from .conftest import Env, namespaces, pings

pytestmark = pytest.mark.root

PORTS = 64


def test_64_ports_in_one_process_forward_and_tear_down(env: Env) -> None:
    names = [env.ns(f"p{i}") for i in range(PORTS)]
    sw = env.switch(*names)
    assert len(sw.request("status")["ports"]) == PORTS
    # Far apart on the port list, both directions, and a pair in the middle.
    for src, dst in ((0, PORTS - 1), (PORTS - 1, 0), (17, 42)):
        assert pings(names[src], f"10.0.0.{dst + 1}"), f"{names[src]} -> 10.0.0.{dst + 1}"
    fdb = {row["port"] for row in sw.query("fdb")}
    assert {names[0], names[PORTS - 1], names[17], names[42]} <= fdb
    assert sw.stop() == 0
    assert not namespaces(env.prefix)
    assert not sw.state_path.exists() and not sw.socket_path.exists()

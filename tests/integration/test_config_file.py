"""`vswitch up -c topology.toml`: the routed topology from a file, and bad files refused cleanly."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import UPLINK_ADDRESS, UPSTREAM_ADDRESS, Env, addresses_of, links, namespaces, pings, read_line

pytestmark = pytest.mark.root

UPLINKS = {
    "string": 'uplink = "{wan}"',
    "table": 'uplink = {{ namespace = "{wan}", address = "198.18.0.2/24", via = "198.18.0.1" }}',
}


@pytest.mark.parametrize("uplink", list(UPLINKS))
def test_routed_topology_from_a_toml_file(env: Env, uplink: str) -> None:
    name = env.instance_name()
    ns1, ns2, ns3, wan = (env.ns(t) for t in ("1", "2", "3", "w"))
    config = env.tmp / "topology.toml"
    config.write_text(
        f'name = "{name}"\n'
        + UPLINKS[uplink].format(wan=wan)
        + f"""
forward = ["tcp:8080={ns3}:80"]
route = ["10.99.0.0/24=via 10.2.0.2"]
ageing = 42.5
fdb_max = 512

[[segment]]
name = "lan"
ports = ["{ns1}", "{ns2}"]

[[segment]]
name = "dmz"
ports = ["{ns3}"]
subnet = "10.2.0.0/24"
"""
    )
    sw = env.switch(args=["-c", str(config)], name=name)
    assert addresses_of(sw) == {ns1: "10.1.0.2", ns2: "10.1.0.3", ns3: "10.2.0.2", wan: UPSTREAM_ADDRESS}
    assert pings(ns1, "10.2.0.2") and pings(ns3, "10.1.0.3"), "across segments"
    assert pings(ns2, UPSTREAM_ADDRESS), "out through the uplink"
    status = sw.query("status")
    assert (status["ageing"], status["fdb_max"]) == (42.5, 512)
    assert {(r["prefix"], r["via"]) for r in sw.query("routes")} >= {
        ("10.99.0.0/24", "10.2.0.2"),
        ("0.0.0.0/0", UPSTREAM_ADDRESS),
    }
    server = env.peer(ns3, "http-serve", "--bind", "10.2.0.2", "--port", "80", "--timeout", "20")
    assert read_line(server, 15, "HTTP server in ns3") == "ready"
    got = env.run_peer(
        wan, "http-get", "--url", f"http://{UPLINK_ADDRESS}:8080/", "--timeout", "10", timeout=20
    )
    assert got["status"] == 200, "the forward from the file works"


BAD_FILES = {
    "syntax-error": ('name = "{name}"\n[[segment]\nname = "lan"\n', "invalid TOML"),
    "unknown-key": ('name = "{name}"\nports = ["{ns1}", "{ns2}"]\ncolour = "blue"\n', "colour"),
    "segment-without-ports": ('name = "{name}"\n[[segment]]\nname = "lan"\n', "needs name and ports"),
    "forward-to-a-stranger": (
        'name = "{name}"\nuplink = "{ns2}"\nforward = ["tcp:80=nobody:80"]\n'
        '[[segment]]\nname = "lan"\nports = ["{ns1}"]\n',
        "not a port",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_one_error_line_exit_2_and_nothing_left(env: Env, case: str) -> None:
    name = env.instance_name()
    text, expected = BAD_FILES[case]
    config = env.tmp / "bad.toml"
    config.write_text(text.format(name=name, ns1=env.ns("1"), ns2=env.ns("2")))
    root_before = set(links(None))
    try:
        proc = env.vswitch("up", "-c", str(config), "--name", name)
    except subprocess.TimeoutExpired:
        env.vswitch("down", "--name", name)
        pytest.fail("vswitch up accepted a bad file and kept running")
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("vswitch: error: "), proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""
    assert namespaces(env.prefix) == set()
    assert not env.run_dir.exists() or list(env.run_dir.iterdir()) == []
    assert {n for n in set(links(None)) - root_before if n.startswith("vs")} == set()

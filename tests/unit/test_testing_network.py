"""vswitch.testing without the kernel: how a test's host names become namespaces and port labels, what
the factory refuses, Switch's forwards, the skip reasons, and the SIGTERM handler's behaviour in the
process that took it and in a fork of it (pyroute2 forks to make a namespace's netlink socket)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vswitch import api
from vswitch.config.topology import PROTOCOLS, ConfigError, ForwardSpec
from vswitch.testing import Network, plugin, support


def test_host_names_become_the_networks_namespaces_and_labels() -> None:
    net = Network(["client", "server=10.0.0.9/24", "probe:eth1"], prefix="vtabc1231")
    assert net.hosts == ["client", "server", "probe"]
    assert net.namespace("client") == net.label("client") == "vtabc1231-client"
    ports = {p.label: p for p in net.switch.topology.ports}
    assert str(ports["vtabc1231-server"].address) == "10.0.0.9/24"
    assert ports["vtabc1231-probe"].ifname == "eth1"
    assert net.switch.name == net.name == "vtabc1231"


def test_segments_uplink_and_forwards_are_renamed_too() -> None:
    net = Network(
        segments={"lan": ["client"], "dmz": ["server"]},
        uplink="wan=198.18.5.2/24,via=198.18.5.1",
        forwards=["tcp:8080=server:80", "udp:5353=client:53"],
        prefix="vtabc1232",
    )
    topology = net.switch.topology
    assert topology.uplink is not None and topology.uplink.namespace == "vtabc1232-wan"
    assert str(topology.uplink.upstream) == "198.18.5.1"
    assert topology.forwards == [
        ForwardSpec(PROTOCOLS["tcp"], 8080, "vtabc1232-server", 80),
        ForwardSpec(PROTOCOLS["udp"], 5353, "vtabc1232-client", 53),
    ]
    assert net.uplink_address == "198.18.5.2"
    assert net.namespace("wan") == "vtabc1232-wan"


def test_the_host_port_keeps_its_name_and_runs_in_the_root_namespace() -> None:
    net = Network(["a", "host"], prefix="vtabc1233")
    assert net.namespace("host") is None and net.label("host") == "host"
    assert net._argv("host", ["ip", "link"]) == ["ip", "link"]
    assert net._argv("a", ["ping", "-c1", "10.0.0.1"]) == [
        "ip",
        "netns",
        "exec",
        "vtabc1233-a",
        "ping",
        "-c1",
        "10.0.0.1",
    ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ports": ["a", "web=pid:1234"]}, "makes its own namespaces"),
        ({"ports": ["a", "a"]}, "named twice"),
        ({"ports": ["a"], "forwards": ["tcp:80=nobody:80"]}, "needs an --uplink"),
        ({"ports": ["a", "b"], "uplink": "wan", "forwards": ["tcp:80=nobody:80"]}, "not a port"),
        ({"ports": ["a" * 60]}, "invalid namespace name"),
        ({"ports": ["a"], "prefix": "Not_An_Instance"}, "instance"),
    ],
)
def test_a_topology_vswitch_refuses_is_one_value_error(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Network(**kwargs)  # type: ignore[arg-type]


def test_programs_take_argument_lists_of_known_hosts() -> None:
    net = Network(["a", "b"], prefix="vtabc1234")
    with pytest.raises(TypeError, match="not a shell string"):
        net.run("a", "ping -c1 10.0.0.2")  # a str is a Sequence[str] to mypy: refused at run time
    with pytest.raises(ValueError, match="argv is empty"):
        net.popen("a", [])
    with pytest.raises(KeyError, match="no host 'c'"):
        net.run("c", ["true"])


def test_switch_takes_forwards_as_the_command_line_does() -> None:
    sw = api.Switch(segments={"lan": ["a"], "dmz": ["b"]}, uplink="w", forwards=["tcp:8080=b:80"])
    assert sw.topology.forwards == [ForwardSpec(PROTOCOLS["tcp"], 8080, "b", 80)]
    with pytest.raises(ConfigError, match="needs an --uplink"):
        api.Switch(ports=["a", "b"], forwards=["tcp:8080=b:80"])
    with pytest.raises(ConfigError, match="expected PROTO:PORT=NS:PORT"):
        api.Switch(ports=["a", "b"], uplink="w", forwards=["8080=b"])


def test_skip_reasons(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert support.skip_reason() == "vswitch networks need root (this test runs as uid 1000)"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(support, "TUN_DEVICE", str(tmp_path / "tun"))
    assert (
        support.skip_reason()
        == f"vswitch networks need {tmp_path}/tun (the tun module; in a container, the device passed in)"
    )
    monkeypatch.setattr(support, "TUN_DEVICE", "/dev/null")  # opens: the next check
    monkeypatch.setattr("vswitch.testing.support.shutil.which", lambda _name: None)
    assert support.skip_reason() == "vswitch networks need the ip command (iproute2)"


def test_wait_for_returns_the_value_or_times_out_naming_what() -> None:
    values = iter([None, 0, "here"])
    assert support.wait_for(lambda: next(values), 5, "a value", interval=0.001) == "here"
    with pytest.raises(TimeoutError, match="waiting for nothing"):
        support.wait_for(lambda: None, 0.05, "nothing", interval=0.01)


@pytest.fixture
def taken() -> Iterator[None]:
    assert plugin._SIGNALS.take()
    yield
    plugin._SIGNALS.give_back()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_is_raised_as_terminated_while_a_network_is_up(taken: None) -> None:
    with pytest.raises(plugin.Terminated, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; this is only a bound


def test_a_fork_dies_of_sigterm_instead_of_unwinding_a_copy_of_the_test(taken: None) -> None:
    pid = os.fork()
    if pid == 0:  # the child: pyroute2's, in life
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os._exit(3)  # reached only if the handler raised (or returned)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM

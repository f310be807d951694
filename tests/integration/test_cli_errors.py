"""Bad command lines for `vswitch up`: one error line, exit status 2, nothing made in the kernel."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from .conftest import VSWITCH, Env, namespaces

pytestmark = pytest.mark.root

# Each case builds `vswitch up` arguments from a namespace-name maker, so any namespace a buggy
# start-up created would carry the test's prefix and be caught (and removed).
Case = Callable[[Callable[[str], str]], list[str]]
CASES: dict[str, Case] = {
    "empty-ports": lambda ns: ["--ports", ""],
    "empty-item": lambda ns: ["--ports", f"{ns('a')},,{ns('b')}"],
    "duplicate-ports": lambda ns: ["--ports", f"{ns('a')},{ns('b')},{ns('a')}"],
    "namespace-with-slash": lambda ns: ["--ports", f"{ns('a')},bad/name"],
    "namespace-dotdot": lambda ns: ["--ports", f"{ns('a')},.."],
    "interface-too-long": lambda ns: ["--ports", f"{ns('a')}:abcdefghijklmnop,{ns('b')}"],
    "subnet-too-small": lambda ns: ["--ports", f"{ns('a')},{ns('b')},{ns('c')}", "--subnet", "10.0.0.0/30"],
    "subnet-invalid": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--subnet", "10.0.0.300/24"],
    "address-without-prefix": lambda ns: ["--ports", f"{ns('a')}:eth0=10.0.0.9,{ns('b')}"],
    "missing-ports": lambda ns: [],
    "ageing-zero": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--ageing", "0"],
    "ageing-negative": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--ageing", "-5"],
    "ageing-not-a-number": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--ageing", "soon"],
    "fdb-max-zero": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--fdb-max", "0"],
    "bad-instance-name": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--name", "Has Space"],
    "port-mac-max-zero": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--port-mac-max", "0"],
    "storm-limit-words": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--storm-limit", "fast"],
    "storm-limit-per-minute": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--storm-limit", "10ppm"],
    "loop-guard-negative": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--loop-guard", "-1"],
    "loop-guard-hold-zero": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--loop-guard-hold", "0"],
    "port-security-unknown": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--port-security", ns("c")],
    "port-security-empty": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--port-security", f"{ns('a')},"],
    "mirror-without-port": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--mirror", ns("a")],
    "mirror-bad-direction": lambda ns: [
        "--ports",
        f"{ns('a')},{ns('b')}",
        "--mirror",
        f"{ns('a')}={ns('m')},up",
    ],
    "mirror-of-no-port": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--mirror", f"{ns('z')}={ns('m')}"],
    "mirror-onto-a-port": lambda ns: ["--ports", f"{ns('a')},{ns('b')}", "--mirror", f"{ns('a')}={ns('b')}"],
    "mirror-with-address": lambda ns: [
        "--ports",
        f"{ns('a')},{ns('b')}",
        "--mirror",
        f"{ns('a')}={ns('m')}=10.0.0.9/24",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_up_command_line(env: Env, case: str) -> None:
    args = CASES[case](env.ns)
    if "--name" not in args:
        args += ["--name", env.instance_name()]
    proc = env.vswitch("up", *args)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vswitch: error: ")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert namespaces(env.prefix) == set()
    assert not env.run_dir.exists() or list(env.run_dir.iterdir()) == []


@pytest.mark.parametrize("command", ["status", "fdb", "stats"])
def test_query_without_a_running_instance(env: Env, command: str) -> None:
    proc = env.vswitch(command, "--name", env.instance_name(), "--json")
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vswitch: error: "), proc.stderr
    assert "no running instance" in lines[0]
    assert proc.returncode != 0
    assert proc.stdout == ""


def test_up_without_capabilities_says_so_and_makes_nothing(env: Env) -> None:
    """Root with an empty capability bounding set (setpriv) is 'not root' as far as the kernel cares."""
    argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *VSWITCH, "up", "--ports", env.ns("a")]
    proc = subprocess.run(
        [*argv, "--name", env.instance_name()], capture_output=True, text=True, timeout=30, env=env.environ
    )
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vswitch: error: "), proc.stderr
    assert "CAP_NET_ADMIN" in lines[0] and "CAP_SYS_ADMIN" in lines[0]
    assert proc.returncode == 1
    assert namespaces(env.prefix) == set()


def test_up_without_dev_net_tun_says_so_and_makes_nothing(env: Env) -> None:
    """A private mount namespace where /dev/net is empty: the tun device is really not there."""
    script = 'mount -t tmpfs none /dev/net && exec "$@"'
    argv = ["unshare", "--mount", "sh", "-c", script, "sh", *VSWITCH, "up", "--ports", env.ns("a")]
    proc = subprocess.run(
        [*argv, "--name", env.instance_name()], capture_output=True, text=True, timeout=30, env=env.environ
    )
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vswitch: error: "), proc.stderr
    assert "/dev/net/tun" in lines[0]
    assert proc.returncode == 1
    assert namespaces(env.prefix) == set()

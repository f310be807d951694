"""Start-up, stop and clean-up of `vswitch up` against the real kernel: it removes exactly what it made."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import netns

from vswitch.shell.kernel import remove_netns_named

from .conftest import (
    CLI_TIMEOUT,
    STOP_TIMEOUT,
    VSWITCH,
    Env,
    Switch,
    create_namespace,
    ipv4_addresses,
    links,
    namespaces,
    new_root_links,
    pings,
)

pytestmark = pytest.mark.root

KEEP_IF, KEEP_ADDR = "keep0", "192.0.2.1/24"


@dataclass
class Started:
    """A running switch over two namespaces it created and one the test made beforehand."""

    sw: Switch
    created: list[str]
    existing: str
    existing_before: dict[str, Any]
    root_before: set[str]
    taps: list[str]


def start_with_existing(env: Env) -> Started:
    root_before = set(links(None))
    existing = env.ns("pre")
    create_namespace(existing, [(KEEP_IF, KEEP_ADDR)])
    existing_before = links(existing)
    created = [env.ns("a"), env.ns("b")]
    sw = env.switch(created[0], existing, created[1])
    assert namespaces(env.prefix) == {*created, existing}
    assert "eth0" in links(existing)
    assert pings(created[0], "10.0.0.2") and pings(created[1], "10.0.0.2")
    taps = sw.tap_names()
    assert len(taps) == 3
    return Started(sw, created, existing, existing_before, root_before, taps)


def assert_all_gone(env: Env, s: Started) -> None:
    """Nothing vswitch made is left; the pre-existing namespace and its own interface are untouched."""
    assert namespaces(env.prefix) == {s.existing}, "created namespaces must go, the test's must stay"
    after = links(s.existing)
    assert set(after) == {"lo", KEEP_IF}, "vswitch's eth0 must be gone, nothing else touched"
    assert ("UP" in after["lo"]["flags"]) == ("UP" in s.existing_before["lo"]["flags"]), "lo as it was"
    keep, keep_before = after[KEEP_IF], s.existing_before[KEEP_IF]
    assert (keep["ifindex"], keep["address"]) == (keep_before["ifindex"], keep_before["address"])
    assert ipv4_addresses(keep) == [KEEP_ADDR]
    assert "UP" in keep["flags"]
    root = set(links(None))
    assert not set(s.taps) & root, "a tap came back to the root namespace"
    assert new_root_links(s.root_before) == set()
    assert not s.sw.socket_path.exists()
    assert not s.sw.state_path.exists()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_removes_everything_it_created(env: Env, sig: signal.Signals) -> None:
    s = start_with_existing(env)
    assert s.sw.stop(sig) == 0
    assert "stopped" in s.sw.stdout()
    assert s.sw.stderr() == ""
    assert_all_gone(env, s)


def test_sigkill_then_down_removes_the_leftovers(env: Env) -> None:
    s = start_with_existing(env)
    pid = s.sw.pid
    assert s.sw.stop(signal.SIGKILL) == -signal.SIGKILL
    # The kernel closed the taps with the process; the namespaces and the ledger outlive it.
    assert namespaces(env.prefix) == {*s.created, s.existing}
    assert s.sw.state_path.exists()
    ledger = s.sw.ledger()
    assert ledger["pid"] == pid
    assert {r["name"] for r in ledger["records"] if r["kind"] == "netns"} == set(s.created)

    down = env.vswitch("down", "--name", s.sw.name)
    assert down.returncode == 0, down.stderr
    assert down.stderr == ""
    for ns in s.created:
        assert f"removed namespace {ns}" in down.stdout
    assert s.existing not in down.stdout
    assert_all_gone(env, s)


def test_down_keeps_a_namespace_of_the_same_name_made_since(env: Env) -> None:
    """After SIGKILL the user removes one of our namespaces and makes another of that name: the
    kernel often hands it the same inode, so only the namespace cookie tells it is not ours."""
    s = start_with_existing(env)
    assert s.sw.stop(signal.SIGKILL) == -signal.SIGKILL
    theirs = s.created[0]
    remove_netns_named(theirs)
    netns.create(theirs)
    try:
        down = env.vswitch("down", "--name", s.sw.name)
        assert down.returncode == 0, down.stderr
        assert f"kept namespace {theirs}: it is not the one vswitch made" in down.stdout
        assert theirs in namespaces(env.prefix)
    finally:
        remove_netns_named(theirs)
    assert_all_gone(env, s)


def test_down_with_nothing_to_do_succeeds(env: Env) -> None:
    down = env.vswitch("down", "--name", env.instance_name())
    assert down.returncode == 0, down.stderr
    assert down.stderr == ""
    assert "nothing to remove" in down.stdout


def test_second_instance_with_the_same_name_fails_and_leaves_the_first_alone(env: Env) -> None:
    first_ns = [env.ns("a"), env.ns("b")]
    first = env.switch(*first_ns)
    ledger_before = first.ledger()
    other = [env.ns("x"), env.ns("y")]
    proc = env.vswitch("up", "--ports", ",".join(other), "--name", first.name)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vswitch: error:"), proc.stderr
    assert "already running" in lines[0]
    assert namespaces(env.prefix) == set(first_ns), "the failed start must not create namespaces"
    assert first.alive()
    assert first.ledger() == ledger_before
    assert first.query("status")["pid"] == first.pid
    assert pings(first_ns[0], "10.0.0.2")


def test_failure_half_way_rolls_back(env: Env) -> None:
    """The second port's namespace already has an eth0: start-up fails after making the first port."""
    root_before = set(links(None))
    first, clash, third = env.ns("a"), env.ns("pre"), env.ns("c")
    create_namespace(clash, [("eth0", KEEP_ADDR)])
    clash_before = links(clash)
    name = env.instance_name()
    proc = env.vswitch("up", "--ports", f"{first},{clash},{third}", "--name", name)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vswitch: error:"), proc.stderr
    assert "eth0" in lines[0]
    assert namespaces(env.prefix) == {clash}, "the namespace vswitch made must be removed again"
    after = links(clash)
    assert set(after) == {"lo", "eth0"}
    assert after["eth0"]["ifindex"] == clash_before["eth0"]["ifindex"]
    assert ipv4_addresses(after["eth0"]) == [KEEP_ADDR]
    assert new_root_links(root_before) == set()
    assert not (env.run_dir / f"{name}.json").exists()
    assert not (env.run_dir / f"{name}.sock").exists()


def test_an_unreadable_state_file_is_one_error_line_for_up_and_down(env: Env) -> None:
    """A truncated state file (a full disk, an editor): both commands say which file and what to do."""
    name = env.instance_name()
    env.run_dir.mkdir(parents=True, exist_ok=True)
    state = env.run_dir / f"{name}.json"
    state.write_text('{"instance": ')
    for argv in (["up", "--ports", env.ns("a"), "--name", name], ["down", "--name", name]):
        proc = env.vswitch(*argv)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert str(state) in lines[0] and "remove that file" in lines[0]
    assert namespaces(env.prefix) == set()
    state.unlink()


def test_a_run_dir_too_long_for_a_unix_socket_is_one_error_line_and_nothing_left(env: Env) -> None:
    """sun_path holds 108 bytes: the control socket cannot be made, start-up undoes everything."""
    long_dir = env.run_dir / ("d" * 120)
    environ = {**env.environ, "VSWITCH_RUN_DIR": str(long_dir)}
    argv = [*VSWITCH, "up", "--ports", f"{env.ns('a')},{env.ns('b')}", "--name", env.instance_name()]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, env=environ)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("vswitch: error: cannot open the control socket")
    assert namespaces(env.prefix) == set()
    assert not any(long_dir.glob("*.json"))


@pytest.mark.parametrize(
    ("ignored", "sig", "stops"),
    [(signal.SIGINT, signal.SIGINT, True), (signal.SIGHUP, signal.SIGHUP, False)],
    ids=["background-job-still-takes-ctrl-c", "nohup-keeps-running"],
)
def test_signals_ignored_at_start(
    env: Env, ignored: signal.Signals, sig: signal.Signals, stops: bool
) -> None:
    """A shell starts a background job with SIGINT ignored (`make up &`): Ctrl-C must still stop it
    and remove what it made. Under nohup, SIGHUP is ignored, and a hangup must leave it running."""
    names = [env.ns("a"), env.ns("b")]
    sw = Switch(env, env.instance_name(), names, [])
    sw.ignored = (ignored,)
    env.switches.append(sw)
    sw.start()
    assert sw.proc is not None
    sw.proc.send_signal(sig)
    if stops:
        assert sw.proc.wait(timeout=STOP_TIMEOUT) == 0
        assert namespaces(env.prefix) == set()
    else:
        assert pings(names[0], "10.0.0.2")  # it kept forwarding after the hangup
        assert sw.proc.poll() is None and namespaces(env.prefix) == set(names)
        assert sw.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL-then-down"])
def test_lo_brought_up_in_a_namespace_vswitch_did_not_make_is_put_back_down(env: Env, stop: str) -> None:
    """vswitch brings lo up in every namespace it serves; in one it did not make, it puts lo back
    as it found it when it goes (a SIGKILL leaves that to `vswitch down`)."""
    theirs, ours = env.ns("lo"), env.ns("b")
    netns.create(theirs)  # lo starts down in a new namespace
    assert "UP" not in links(theirs)["lo"]["flags"]
    sw = env.switch(theirs, ours)
    assert "UP" in links(theirs)["lo"]["flags"]
    if stop == "SIGTERM":
        assert sw.stop(signal.SIGTERM) == 0
    else:
        assert sw.stop(signal.SIGKILL) == -signal.SIGKILL
        down = env.vswitch("down", "--name", sw.name)
        assert down.returncode == 0 and f"put lo back down in namespace {theirs}" in down.stdout
    assert "UP" not in links(theirs)["lo"]["flags"]
    assert namespaces(env.prefix) == {theirs}

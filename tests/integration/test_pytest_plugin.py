"""The pytest plugin (issue 21) tested on itself: inner pytest runs, with pytester (pytest's own fixture
for plugin tests) or as processes of their own, that build real networks through the installed entry
point, and the outer test checks what they leave: nothing.

Inner tests print a RECORD line per network (its instance name, namespaces, programs' pids) so the
outer test can look for exactly those afterwards; nothing else on the machine is looked at. Runs
at the same time prove their overlap by files each waits for (polled with a deadline); the one sleep
is the README's, a 2 s partition, which is the fault under test and not a wait for a state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Loaded here, so that the in-process inner runs share one copy (pytester unloads what a run loaded).
import vswitch.testing.network  # noqa: F401
from vswitch.shell.state import pid_alive, socket_path, state_path
from vswitch.testing import skip_reason

from .conftest import namespaces, wait_for

pytest_plugins = ["pytester"]

README = Path(__file__).parents[2] / "README.md"
RUN_TIMEOUT = 90.0  # an inner pytest process, start to end


def records(lines: list[str]) -> list[dict[str, Any]]:
    """The RECORD lines inner tests printed (run with -s), parsed."""
    return [json.loads(line.split("RECORD ", 1)[1]) for line in lines if "RECORD " in line]


def assert_gone(record: dict[str, Any]) -> None:
    """Nothing of a recorded network is left: no namespace of its run's prefix ("vt" + 6 hex, as `ip
    netns list` would show them), no state file or control socket, none of its programs."""
    name = record["name"]
    assert namespaces(name[:8]) == set(), f"namespaces of {name}'s run left behind"
    assert not any(os.path.exists(f"/run/netns/{ns}") for ns in record["namespaces"])
    assert not state_path(name).exists() and not socket_path(name).exists()
    for pid in record.get("pids", []):
        assert not pid_alive(pid), f"process {pid} of {name} still runs"


# Inner tests share this prologue: the RECORD line.
PROLOGUE = """
import json, os, subprocess, sys, time
from pathlib import Path
import pytest
from vswitch.testing import wait_for

def record(net, **more):
    names = [net.namespace(h) for h in net.hosts]
    print("RECORD", json.dumps({"name": net.name, "namespaces": names, **more}))
"""


def inner(pytester: pytest.Pytester, source: str, name: str = "test_inner") -> None:
    pytester.makepyfile(**{name: PROLOGUE + source})


# --- the machine -------------------------------------------------------------------------------------
def test_this_machine_runs_the_fixtures_without_skipping() -> None:
    """The CI runs as root with /dev/net/tun: the plugin must not skip here (a skip would hide every
    test of it as passed-by-absence)."""
    assert skip_reason() is None


# --- reachability --------------------------------------------------------------------------------------
def test_reachability_passes_and_a_failure_names_pingall_explains_reason(pytester: pytest.Pytester) -> None:
    inner(
        pytester,
        """
def test_reaches(vswitch_net):
    net = vswitch_net(ports=["client", "server"])
    record(net)
    net.assert_reachable("client", "server")
    net.assert_reachable("server", "client")

def test_partitioned(vswitch_net):
    net = vswitch_net(ports=["client", "server"])
    record(net)
    with net.partition("client", "server"):
        net.assert_unreachable("client", "server")
        net.assert_reachable("client", "server", count=1)

def test_unreachable_fails_when_reachable(vswitch_net):
    net = vswitch_net(ports=["client", "server"])
    record(net)
    net.assert_unreachable("client", "server")
""",
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *AssertionError: client (vt*-client) cannot reach server (vt*-server, 10.0.0.2): "
            "no answer to 1 ping(s); pingall --explain says:",
            "E *switch, echo request: partitioned: vt*-client -> vt*-server: dropped (partitioned)*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["E *AssertionError: client reaches server (10.0.0.2): its ping was answered"]
    )
    recorded = records(result.outlines)
    assert len(recorded) == 3 and len({r["name"] for r in recorded}) == 3
    assert all(
        re.fullmatch(r"vt[0-9a-f]{6}\d+-(client|server)", ns) for r in recorded for ns in r["namespaces"]
    )
    for record in recorded:
        assert_gone(record)


# --- teardown ------------------------------------------------------------------------------------------
def test_a_test_that_raises_midway_leaves_no_namespace_or_program(pytester: pytest.Pytester) -> None:
    inner(
        pytester,
        """
def test_raises(vswitch_net):
    net = vswitch_net(segments={"lan": ["a"], "dmz": ["b"]}, uplink="wan")
    sleeper = net.popen("a", ["sleep", "300"])
    # A daemon, not a child of ours (and holding no pipe of run's, which would wait for it to close).
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    net.run("b", ["setsid", "-f", "sleep", "301"], check=True, **quiet)
    from vswitch.testing.network import pids_in
    daemon = wait_for(lambda: pids_in(net.namespace("b")), 10, "the daemon in b")
    record(net, pids=[sleeper.pid, *daemon])
    net.assert_reachable("a", "wan")
    raise RuntimeError("midway")
""",
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *RuntimeError: midway"])
    (record,) = records(result.outlines)
    assert len(record["pids"]) == 2 and len(record["namespaces"]) == 3
    assert_gone(record)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_of_pytest_still_remove_the_network(pytester: pytest.Pytester, sig: int) -> None:
    """A signal to the pytest process alone (not its children) while the test waits: KeyboardInterrupt
    (SIGINT) or Terminated (SIGTERM) unwinds it, pytest tears down, and exits 2 (interrupted)."""
    ready = pytester.path / "ready.json"
    inner(
        pytester,
        f"""
def test_waits_for_a_signal(vswitch_net):
    net = vswitch_net(segments={{"lan": ["a"], "dmz": ["b"]}}, uplink="wan")
    sleeper = net.popen("a", ["sleep", "300"])
    record(net, pids=[sleeper.pid])
    Path({str(ready)!r}).write_text(json.dumps({{"name": net.name}}))
    wait_for(lambda: False, 60, "the outer test's signal")
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "the inner test's network")
        assert proc.poll() is None, "the inner pytest ended before it was signalled"
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    if sig == signal.SIGTERM:
        assert "Terminated: SIGTERM: the vswitch networks are removed before pytest exits" in out, out
    else:
        assert "KeyboardInterrupt" in out, out
    (record,) = records(out.splitlines())
    assert_gone(record)


# --- scope, marker, skip --------------------------------------------------------------------------------
def test_module_scope_shares_a_network_and_function_scope_does_not(pytester: pytest.Pytester) -> None:
    inner(
        pytester,
        """
@pytest.fixture(scope="module")
def shared(vswitch_net_module):
    return vswitch_net_module(ports=["a", "b"])

def test_one(shared):
    record(shared)
    shared.assert_reachable("a", "b")

def test_two(shared, vswitch_net):
    own = vswitch_net(ports=["a", "b"])
    record(shared)
    record(own)
    own.assert_reachable("a", "b")
    shared.assert_reachable("b", "a")
""",
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    one, two_shared, two_own = records(result.outlines)
    assert one == two_shared and two_own["name"] != one["name"]
    assert two_own["name"][:8] == one["name"][:8]  # one run, one prefix, a counter apiece
    for record in (one, two_own):
        assert_gone(record)


def test_the_fixtures_mark_their_tests_and_skip_them_without_root(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner(
        pytester,
        """
@pytest.fixture
def two_hosts(vswitch_net):  # through another fixture: marked all the same
    return vswitch_net(ports=["a", "b"])

def test_uses_the_fixture(two_hosts):
    pass

@pytest.mark.vswitch
def test_marked_by_hand():
    pass

def test_plain():
    pass
""",
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-m", "not vswitch")
    result.assert_outcomes(passed=1, deselected=2)
    with monkeypatch.context() as patched:
        patched.setattr(os, "geteuid", lambda: 1000)
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.re_match_lines(
        [r"SKIPPED \[2\] .*vswitch networks need root \(this test runs as uid 1000\)"]
    )
    with monkeypatch.context() as patched:
        patched.setattr("vswitch.testing.support.TUN_DEVICE", str(pytester.path / "no-tun"))
        result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-m", "vswitch")
    result.assert_outcomes(skipped=2, deselected=1)
    result.stdout.re_match_lines(
        [rf"SKIPPED \[2\] .*vswitch networks need {re.escape(str(pytester.path))}/no-tun "]
    )


# --- emulation, programs, capture ---------------------------------------------------------------------
def test_an_impairment_and_a_partition_are_undone_when_their_block_ends(pytester: pytest.Pytester) -> None:
    inner(
        pytester,
        """
def test_impair(vswitch_net):
    net = vswitch_net(ports=["a", "b"])
    record(net)
    with net.impair("b", loss=1.0):
        net.assert_unreachable("a", "b")
        with pytest.raises(AssertionError, match="impaired link: .*-b out: loss 100%"):
            net.assert_reachable("a", "b", count=1)
    assert net.links()["links"] == []
    net.assert_reachable("a", "b")
    with net.partition("a", ["b"]):
        net.assert_unreachable("b", "a")
    assert net.links()["partitions"] == []
    net.assert_reachable("b", "a")
""",
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (record,) = records(result.outlines)
    assert_gone(record)


def test_run_popen_forwards_and_capture_on_a_routed_network(pytester: pytest.Pytester) -> None:
    inner(
        pytester,
        """
def test_routed(vswitch_net, tmp_path):
    net = vswitch_net(segments={"lan": ["client"], "dmz": ["server"]}, uplink="wan",
                      forwards=["tcp:8080=server:80"])
    record(net)
    with pytest.raises(TypeError, match="not a shell string"):
        net.run("client", "ping -c1 10.2.0.2")
    (tmp_path / "index.html").write_text("inside\\n")
    net.popen("server", [sys.executable, "-m", "http.server", "80", "-d", tmp_path],
              stderr=subprocess.DEVNULL)
    net.wait_listening("server", 80)
    got = net.run("wan", ["curl", "-sf", "--max-time", "10", f"http://{net.uplink_address}:8080/"])
    assert (got.returncode, got.stdout) == (0, "inside\\n")
    with net.capture("server", filter="icmp") as cap:
        net.assert_reachable("client", "server")
        packets = cap.wait(2)
    request, reply = packets[:2]
    assert request["IP"].src == net.address("client") and request["ICMP"].type == 8
    assert reply["IP"].dst == net.address("client") and reply["ICMP"].type == 0
    assert [f.direction for f in cap.frames[:2]] == ["tx", "rx"] and request.sniffed_on == "server"
    with net.capture("client", filter="icmp") as cap:
        net.assert_reachable("client", "server")
    assert len(cap.packets) == 2  # what was on its way when the block ended was taken first
    counted = net.capture(["client", "server"], count=3)
    net.assert_reachable("server", "client")
    assert len(counted.wait()) == 3
    wait_for(lambda: not counted.running, 5, "the counted capture to end")
""",
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (record,) = records(result.outlines)
    assert_gone(record)


# --- two runs at once ---------------------------------------------------------------------------------
TWO_RUNS = """
SYNC = Path(os.environ["PT_SYNC"])
ME, OTHER = os.environ["PT_SIDE"], os.environ["PT_OTHER"]

def written(path):
    return path.exists() and path.read_text()

def test_side(vswitch_net):
    net = vswitch_net(ports=["a", "b"])  # the same host names, the same addresses, in both runs
    record(net)
    net.assert_reachable("a", "b")
    mine = [net.namespace("a"), net.namespace("b")]
    (SYNC / f"{ME}.tmp").write_text(json.dumps(mine))
    (SYNC / f"{ME}.tmp").rename(SYNC / f"{ME}.up")
    theirs = json.loads(wait_for(lambda: written(SYNC / f"{OTHER}.up"), 60, "the other run's network"))
    # Both networks are up now: the other stays until it has seen our .checked.
    assert not set(theirs) & set(mine)
    assert all(os.path.exists(f"/run/netns/{ns}") for ns in theirs)
    net.assert_reachable("a", "b")
    net.assert_reachable("b", "a")
    (SYNC / f"{ME}.checked").touch()
    wait_for(lambda: (SYNC / f"{OTHER}.checked").exists(), 60, "the other run's checks")
"""


def test_two_pytest_runs_at_once_get_distinct_names_and_leave_each_other_alone(
    pytester: pytest.Pytester,
) -> None:
    inner(pytester, TWO_RUNS)
    sync = pytester.mkdir("sync")
    runs = {}
    for side, other in (("one", "two"), ("two", "one")):
        environ = {**os.environ, "PT_SYNC": str(sync), "PT_SIDE": side, "PT_OTHER": other}
        runs[side] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "test_inner.py"],
            cwd=pytester.path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    outs = {}
    try:
        for side, proc in runs.items():
            outs[side], _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    for side, proc in runs.items():
        assert proc.returncode == 0, outs[side]
        assert "1 passed" in outs[side], outs[side]
    (one,), (two,) = records(outs["one"].splitlines()), records(outs["two"].splitlines())
    assert one["name"][:8] != two["name"][:8], "two runs, one prefix"
    assert not set(one["namespaces"]) & set(two["namespaces"])
    assert {p.name for p in sync.iterdir()} == {"one.up", "two.up", "one.checked", "two.checked"}
    assert_gone(one)
    assert_gone(two)


# --- the README's examples ----------------------------------------------------------------------------
def readme_examples() -> str:
    """The first python block of the README's pytest section, as it stands."""
    text = README.read_text()
    section = text.split("## Testing your network programs with pytest\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README's pytest section has no python block"
    return match.group(1)


def test_the_readme_examples_run_as_written(pytester: pytest.Pytester) -> None:
    code = readme_examples()
    assert code.count("\ndef test_") == 2
    pytester.makepyfile(test_readme=code)
    pytester.makeconftest(
        """
import json
import pytest

@pytest.fixture
def vswitch_net(vswitch_net):  # the plugin's, each network it makes recorded
    def make(*args, **kwargs):
        net = vswitch_net(*args, **kwargs)
        print("RECORD", json.dumps({"name": net.name, "namespaces": [net.namespace(h) for h in net.hosts]}))
        return net
    return make
"""
    )
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2)
    recorded = records(result.outlines)
    assert len(recorded) == 2
    for record in recorded:
        assert_gone(record)

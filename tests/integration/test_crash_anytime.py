"""Crash at any moment (issue 22), the short version of `make stress-crash`: `vswitch up` SIGKILLed once
at a random moment of each kind (start-up, its build, running after live port changes, during one,
teardown idle and after changes), then `vswitch down`; nothing of vswitch's is left and the user's
namespace and attached process are exactly as they were (vswitch/tools/stress/crash.py checks it).
Each seed is fresh and printed on failure with the command that repeats it.

Then the steps that make it so, each where a kill would otherwise leave something: a namespace
recorded before it has a name, a never-mounted mount point and half-written files removed by `down`
(and only its instance's), lo put back down without the address coming up gave it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from vswitch.shell import kernel
from vswitch.tools.stress.crash import KINDS, User, line, run_iteration, snapshot

from .conftest import Env, make_world, namespaces

pytestmark = pytest.mark.root


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """This test's world, its namespaces named vcr + 6 hex; everything in it removed afterwards."""
    with make_world(tmp_path, "vcr") as world:
        yield world


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    """The user's namespace and attached process, shared by the kinds (each checks them untouched):
    made once, as the stress run does, since settling its links takes a second. Named vcr + 4 hex,
    and removed at the end."""
    with User.made("vcr") as world:
        yield world


@pytest.mark.parametrize("kind", KINDS)
def test_a_kill_at_a_random_moment_then_down_leaves_nothing_and_touches_nothing(
    env: Env, user: User, kind: str
) -> None:
    seed = secrets.randbelow(1 << 31)
    result = run_iteration(seed, kind, env.prefix, user)
    assert result.ok, line(1, 1, result)
    assert result.moment.startswith(("SIGKILL", "SIGTERM")), result.moment
    assert result.kind == kind and user.touched() == []
    assert namespaces(env.prefix) == set(), "nothing of the iteration's is left"


def test_a_namespace_is_recorded_before_it_has_a_name(env: Env) -> None:
    name = env.ns("rec")
    seen: list[tuple[int, int | None, bool]] = []

    def on_created(inode: int, cookie: int | None) -> None:
        seen.append((inode, cookie, os.path.lexists(kernel.netns_path(name))))

    inode, cookie = kernel.create_netns(name, on_created)
    assert seen == [(inode, cookie, False)], "recorded first, named after"
    assert kernel.netns_inode(name) == inode and kernel.netns_cookie(name) == cookie
    assert kernel.remove_netns(name, inode, cookie) and name not in namespaces(env.prefix)


def test_down_removes_a_never_mounted_mount_point_and_half_written_files_of_its_instance_only(
    env: Env,
) -> None:
    name, other = env.instance_name(), env.instance_name()
    placeholder, theirs = env.ns("ph"), env.ns("theirs")
    Path(kernel.netns_path(placeholder)).touch()  # a kill between the mount point and the bind mount
    netns.create(theirs)  # recorded by name, but another namespace than the one made (its cookie)
    records = [
        {"kind": "netns", "name": theirs, "inode": 1, "cookie": 1},
        {"kind": "netns", "name": placeholder, "inode": 2, "cookie": 2},
    ]
    run = env.run_dir
    run.mkdir(mode=0o700)
    (run / f"{name}.json").write_text(json.dumps({"instance": name, "pid": 0, "records": records}))
    dead = _dead_pid()
    half_written = [run / f"{name}.tmp", run / f"{name}.leases.tmp", run / f"{name}.{dead}.claim"]
    kept = [run / f"{other}.tmp", run / f"{other}.{dead}.claim", run / f"{name}.{os.getpid()}.claim"]
    for path in half_written + kept:
        path.write_text("{")

    down = env.vswitch("down", "--name", name)
    assert down.returncode == 0 and down.stderr == "", down.stderr
    said = down.stdout.splitlines()
    assert f"removed {kernel.netns_path(placeholder)}: a mount point never mounted" in said
    assert f"kept namespace {theirs}: it is not the one vswitch made" in said
    assert not os.path.lexists(kernel.netns_path(placeholder))
    assert theirs in namespaces(env.prefix)
    assert [p.name for p in half_written if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == [], "another instance's, or a live start-up's"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in kept)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lo_brought_up_in_a_bare_namespace_is_put_back_exactly(env: Env) -> None:
    name = env.ns("lo")
    netns.create(name)
    before = snapshot(name)
    lo = kernel.lo_state(name)
    assert lo is not None and not lo.up and lo.bare, "a new namespace: lo down, no 127.0.0.1"
    assert kernel.set_lo_up(name)
    assert snapshot(name) != before, "lo up, with 127.0.0.1 and ::1"
    assert kernel.set_lo_down(name, kernel.netns_cookie(name), bare=True)
    assert snapshot(name) == before
    assert kernel.set_lo_down(name, kernel.netns_cookie(name), bare=True), "twice (down after a kill): same"
    assert snapshot(name) == before


def test_the_users_world_goes_with_the_harness() -> None:
    with User.made("vcr") as made:
        assert made.sleeper is not None and made.sleeper.poll() is None
        assert made.namespace in namespaces(made.tag) and made.touched() == []
    assert made.sleeper.poll() is not None, "the attached process is killed, not left sleeping"
    assert namespaces(made.tag) == set()

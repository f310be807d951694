"""A namespace the user deleted under a running switch: pingall --explain and doctor report it missing
and never bring it back (pyroute2 creates a namespace it is asked for by name unless told not to)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vswitch.shell.kernel import remove_netns_named

from .conftest import NETNS_DIR, Env, make_world

pytestmark = pytest.mark.root


@pytest.fixture
def renv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("rcf" + 6 hex)."""
    with make_world(tmp_path, "rcf") as world:
        yield world


def test_a_deleted_namespace_is_reported_missing_and_not_recreated(renv: Env) -> None:
    gone, kept = renv.ns("a"), renv.ns("b")
    sw = renv.switch(gone, kept)
    remove_netns_named(gone)
    assert not (NETNS_DIR / gone).exists()

    pingall = renv.vswitch("pingall", "--name", sw.name, "--explain", "--timeout", "0.5", timeout=60)
    assert pingall.returncode == 1, pingall.stderr
    assert "0/2 reachable" in pingall.stdout
    assert not (NETNS_DIR / gone).exists(), "pingall --explain recreated the deleted namespace"
    # Both directions name the absence; none describes the insides of a namespace made afresh.
    assert f"{gone}: the namespace is missing" in pingall.stdout
    assert f"{gone} (reply path): the namespace is missing" in pingall.stdout
    assert "lo is down" not in pingall.stdout
    assert f"{gone}: link eth0 is missing" not in pingall.stdout

    doctor = renv.vswitch("doctor", "--name", sw.name)
    assert doctor.returncode == 1
    assert not (NETNS_DIR / gone).exists(), "doctor recreated the deleted namespace"
    problems = [line for line in doctor.stdout.splitlines() if line.startswith("PROBLEM")]
    assert problems == [f"PROBLEM  {gone}: the namespace is missing"], doctor.stdout
    assert (NETNS_DIR / kept).exists()

    assert sw.stop() == 0
    assert not (NETNS_DIR / gone).exists()
    assert not (NETNS_DIR / kept).exists()

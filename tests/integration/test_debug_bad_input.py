"""Against a running switch: a capture filter of thousands of terms costs no frame; bad
control requests get error replies and the switch keeps serving; clients still connected at shutdown
are ended cleanly (no traceback, no "Task was destroyed but it is pending!")."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vswitch.tools.debug.trace import MAX_LIVE_TRACES

from .conftest import VSWITCH, Env, Switch, make_world, netns_exec, wait_for

pytestmark = pytest.mark.root

REPLY_TIMEOUT = 10.0


@pytest.fixture
def renv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("rfx" + 6 hex)."""
    with make_world(tmp_path, "rfx") as world:
        yield world


class Connection:
    """One raw connection to the control socket: a line out, a line back."""

    def __init__(self, sw: Switch) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(str(sw.socket_path))
        self.lines = self.sock.makefile("rb")

    def ask(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line + b"\n")
        reply = self.lines.readline()
        assert reply, f"the switch closed the connection instead of answering {line[:40]!r}"
        answer: dict[str, Any] = json.loads(reply)
        return answer

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def request(cmd: str, **fields: Any) -> bytes:
    return json.dumps({"cmd": cmd, **fields}).encode()


def test_a_capture_filter_of_3000_terms_costs_no_frame(renv: Env) -> None:
    a, b = renv.ns("a"), renv.ns("b")
    sw = renv.switch(a, b)
    long_filter = " or ".join(["tcp"] * 3000) + " or icmp"
    cap = subprocess.Popen(
        [*VSWITCH, "capture", b, "--count", "4", "--filter", long_filter, "--name", sw.name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=renv.environ,
    )  # fmt: skip
    renv.peers.append(cap)

    def captured() -> bool:  # the capture starts asynchronously: ping until it has seen 4 frames
        if cap.poll() is None:
            netns_exec(a, ["ping", "-n", "-c", "1", "-W", "1", "10.0.0.2"], check=False)
        return cap.poll() is not None

    wait_for(captured, 30, "the capture of 4 ICMP frames")
    out, err = cap.communicate(timeout=REPLY_TIMEOUT)
    assert cap.returncode == 0, err
    assert len(out.splitlines()) == 4 and "ICMP" in out
    proc = netns_exec(a, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2"], check=False)
    assert proc.returncode == 0, proc.stdout
    drops = sw.request("stats")["ports"][b]["drops"]
    assert drops.get("internal-error", 0) == 0, drops
    assert "Traceback" not in sw.stderr()


def test_bad_requests_are_answered_and_clients_left_at_shutdown_end_cleanly(renv: Env) -> None:
    a, b = renv.ns("a"), renv.ns("b")
    sw = renv.switch(a, b)
    client = Connection(sw)
    nested = client.ask(b"[" * 100_000 + b"]" * 100_000)
    assert nested["ok"] is False and "nested too deeply" in nested["error"]
    then = client.ask(request("trace", port=a, data="AAAAAAAAAAAAAAAAAAAA", then="ab"))
    assert then["ok"] is False and '"then"' in then["error"]
    assert client.ask(request("status"))["result"]["instance"] == sw.name
    for cmd in ("capture", "trace-live"):
        deep = Connection(sw)
        reply = deep.ask(request(cmd, port=a, filter="(" * 5000))
        assert reply["ok"] is False and "nested deeper than" in reply["error"], reply
        deep.close()
    huge = Connection(sw)
    reply = huge.ask(request("trace-live", port=a, count=10**6))
    assert reply["ok"] is False and str(MAX_LIVE_TRACES) in reply["error"], reply
    huge.close()

    # Still connected at shutdown: the idle client, a capture and a live trace.
    streams = [Connection(sw), Connection(sw)]
    assert streams[0].ask(request("capture", port=a))["ok"] is True
    assert streams[1].ask(request("trace-live", port=b, count=MAX_LIVE_TRACES))["ok"] is True
    assert sw.stop() == 0
    for conn in [client, *streams]:
        conn.close()
    stderr = sw.stderr()
    assert "Task was destroyed" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert not sw.socket_path.exists()

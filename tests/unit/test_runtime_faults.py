"""Runtime faults (issue 22), the parts that need no kernel objects: over-mtu frames, a run of EIO
writes as one link-down episode, a ledger whose folder cannot be written, a control client that stops
reading, the control socket's file removed, and the CLI's words for a missing socket.

The shell runs over AF_UNIX datagram socketpairs (as in test_shell.py); the control server listens on a
real Unix socket in a temporary directory. tests/integration/test_runtime_faults.py does the same
faults to a real switch.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Bench, H, drain_wire, frame, learn, make_readable, vnet_header

import vswitch.shell.control as control
from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath
from vswitch.core.wire import VNET_HDR_LEN
from vswitch.shell.control import ControlError, ControlServer, ControlTable, LineWriter, no_socket
from vswitch.shell.loop import MTU_OVERHEAD, READ_SIZE, Shell
from vswitch.shell.state import Ledger, process_start

MTU = 200
DEADLINE = 5.0


# --- a port's MTU raised inside its namespace -----------------------------------------------------------
def test_a_frame_over_the_mtu_plus_a_tagged_header_is_dropped_as_over_mtu(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    learn(bench)
    bench.shell.set_port_mtu(0, MTU)
    fits = frame(H[0], H[1], size=MTU + MTU_OVERHEAD)
    over = frame(H[0], H[1], size=MTU + MTU_OVERHEAD + 1)
    with caplog.at_level(logging.WARNING, logger="vswitch"):
        for pkt in (fits, over, over, over):
            bench.wires[0].send(pkt)
        make_readable(bench.shell, 0)
    assert drain_wire(bench.wires[1]) == [fits]
    assert bench.datapath.counters.drops[0] == Counter({Drop.OVER_MTU: 3})
    # One line for the three (rate-limited), naming the port, the frame's size and the MTU.
    lines = [r.getMessage() for r in caplog.records if "over the segment's MTU" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"port p0: dropped a {MTU + MTU_OVERHEAD + 1}-byte frame")
    assert f"MTU {MTU} " in lines[0]


def test_a_gso_super_frame_over_the_mtu_passes(bench: Bench) -> None:
    """A TSO stack hands over 64 KB super-frames with gso_type set: their segments fit the MTU."""
    learn(bench)
    bench.shell.set_port_mtu(0, MTU)
    tso = frame(H[0], H[1], vnet=vnet_header(1, 1, 54, MTU - 40, 34, 16), size=4 * MTU)
    bench.wires[0].send(tso)
    make_readable(bench.shell, 0)
    assert drain_wire(bench.wires[1]) == [tso]
    assert not bench.datapath.counters.drops[0]


def test_a_port_moved_to_a_segment_of_another_mtu_gets_its_limit(bench: Bench) -> None:
    learn(bench)
    bench.shell.set_port_mtu(0, MTU)
    bench.shell.set_port_mtu(0, 2 * MTU)  # what Instance.move_port_live does
    pkt = frame(H[0], H[1], size=MTU + MTU_OVERHEAD + 1)
    bench.wires[0].send(pkt)
    make_readable(bench.shell, 0)
    assert drain_wire(bench.wires[1]) == [pkt]


def test_a_port_without_an_mtu_refuses_only_a_full_buffer(bench: Bench) -> None:
    learn(bench)
    assert bench.shell._max_frame[1] == READ_SIZE - 1
    big = frame(H[1], H[0], size=9000)
    bench.wires[1].send(big)
    make_readable(bench.shell, 1)
    assert drain_wire(bench.wires[0]) == [big]


# --- a port's link set down inside its namespace: writes fail with EIO -----------------------------------
def eio_to_port_1(monkeypatch: pytest.MonkeyPatch, bench: Bench) -> None:
    """Writes to port 1's fd fail with EIO, as a tap's do while its link is down (tun_get_user)."""
    target = bench.shell._fd_list[1]
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if fd == target:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_write(fd, data)

    # The drains bind os.write when made: make them again around the patched one.
    monkeypatch.setattr(os, "write", write)
    for port in range(3):
        bench.shell._drain_of[port] = bench.shell._drainer(port, bench.shell._reader_of[port])


def test_a_run_of_eio_writes_is_one_link_down_episode_until_a_frame_passes(
    bench: Bench, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    learn(bench)
    eio_to_port_1(monkeypatch, bench)
    counters = bench.datapath.counters
    with caplog.at_level(logging.WARNING, logger="vswitch"):
        for _ in range(5):
            bench.wires[0].send(frame(H[0], H[1]))
        make_readable(bench.shell, 0)
        bench.shell._write_plain(1, frame(H[2], H[1]))  # the non-inlined writer too
    assert counters.drops[1][Drop.TX_ERROR] == 6
    assert counters.events[Event.PORT_LINK_DOWN] == 1
    down = [r.getMessage() for r in caplog.records]
    assert down == ["port p1: link is down in its namespace; frames to it are dropped"]
    timer = bench.shell._link_timer
    assert timer is not None

    # Still down at the timer: nothing passed, the episode goes on, the timer is armed again.
    bench.shell._check_links_up()
    assert counters.events[Event.PORT_LINK_UP] == 0
    assert bench.shell._link_timer is not None

    # Up: a frame read from the port shows it (a link that is down sends nothing).
    monkeypatch.undo()
    bench.wires[1].send(frame(H[1], H[0]))
    make_readable(bench.shell, 1)
    with caplog.at_level(logging.WARNING, logger="vswitch"):
        bench.shell._check_links_up()
    assert counters.events[Event.PORT_LINK_UP] == 1
    assert caplog.records[-1].getMessage() == "port p1: link is up again; forwarding to it"
    assert bench.shell._link_timer is None  # no port down: no timer


def test_other_write_errors_are_tx_errors_without_an_episode(bench: Bench) -> None:
    bench.shell._tx_failed(1, OSError(errno.EINVAL, "Invalid argument"))
    assert bench.datapath.counters.drops[1][Drop.TX_ERROR] == 1
    assert Event.PORT_LINK_DOWN not in bench.datapath.counters.events
    assert bench.shell._link_timer is None


def test_a_port_removed_while_down_ends_its_episode(bench: Bench) -> None:
    bench.shell._tx_failed(1, OSError(errno.EIO, "Input/output error"))
    bench.shell.detach(1)
    bench.shell._check_links_up()
    assert bench.shell._link_timer is None


# --- a port's tap gone ---------------------------------------------------------------------------------
def test_a_tap_gone_is_logged_by_name_and_no_longer_read(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vswitch"):
        assert bench.shell._read_failed(2, OSError(errno.EBADFD, os.strerror(errno.EBADFD)))
    assert not bench.shell.reading(2)
    assert bench.datapath.counters.events[Event.PORT_GONE] == 1
    assert caplog.records[-1].getMessage().startswith("port p2: its tap is gone")


# --- the state folder cannot be written ------------------------------------------------------------------
@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("VSWITCH_RUN_DIR", str(tmp_path / "run"))
    made = Ledger("rtf")
    made.claim()
    made.record("netns", name="rtf-a")
    # The folder gone from under it (root writes through any mode bits): every rewrite fails.
    made.path = tmp_path / "gone" / "rtf.json"
    return made


def test_a_ledger_write_that_fails_raises_until_told_where_to_report(ledger: Ledger) -> None:
    with pytest.raises(FileNotFoundError):
        ledger.record("tap", name="vs1")


def test_a_ledger_write_that_fails_is_reported_and_the_list_in_memory_stays_exact(ledger: Ledger) -> None:
    failures: list[OSError] = []
    ledger.on_write_error = failures.append
    tap = ledger.record("tap", name="vs1")
    ledger.forget(tap)
    ledger.release()  # nothing there: not an error
    assert [entry["kind"] for entry in ledger.records] == ["netns"]
    assert [exc.errno for exc in failures] == [errno.ENOENT, errno.ENOENT]
    assert not list(ledger.path.parent.parent.glob("**/*.tmp"))


def test_undo_goes_on_when_the_state_file_cannot_be_rewritten(ledger: Ledger, tmp_path: Path) -> None:
    from vswitch.shell.instance import undo

    made = tmp_path / "made.leases.json"
    made.write_text("{}")
    ledger.records = [{"kind": "file", "path": str(made)}, {"kind": "file", "path": str(tmp_path / "x")}]
    failures: list[OSError] = []
    ledger.on_write_error = failures.append
    assert undo(ledger) == []
    assert not made.exists()
    assert ledger.records == [] and len(failures) == 2


# --- the control socket ------------------------------------------------------------------------------------
def table(ended: asyncio.Event | None = None) -> ControlTable[object]:
    """status, and flood: a stream of req["lines"] lines of 1 KB, drained after each (as capture
    does); ended is set when it stops."""

    async def flood(_i: object, req: dict[str, Any], _r: asyncio.StreamReader, writer: LineWriter) -> None:
        line = b"x" * 1023 + b"\n"
        try:
            for _ in range(int(req["lines"])):
                writer.write(line)
                await writer.drain()
        finally:
            if ended is not None:
                ended.set()

    return ControlTable({"status": lambda _i, _r: "serving"}, {"flood": flood})


def run(scenario: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    finally:
        loop.close()


async def status(path: Path) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b'{"cmd": "status"}\n')
        return json.loads(await asyncio.wait_for(reader.readline(), DEADLINE))
    finally:
        writer.close()


def test_a_client_that_never_reads_is_disconnected_and_the_others_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(control, "DRAIN_LIMIT", 0.5)
    events: Counter[str] = Counter()

    async def scenario() -> None:
        ended = asyncio.Event()
        server = ControlServer(object(), tmp_path / "c.sock", table(ended), events=events)
        await server.start()
        try:
            _reader, stalled = await asyncio.open_unix_connection(str(server.path))
            stalled.write(b'{"cmd": "flood", "lines": 100000}\n')  # 100 MB if it were read
            await asyncio.sleep(0.1)
            assert not ended.is_set()
            assert await status(server.path) == {"ok": True, "result": "serving"}  # while it stalls
            await asyncio.wait_for(ended.wait(), DEADLINE)
            assert events == Counter({Event.CONTROL_CLIENT_STALLED: 1})
            assert await status(server.path) == {"ok": True, "result": "serving"}
            stalled.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="vswitch"):
        run(scenario)
    [line] = [r.getMessage() for r in caplog.records if "stopped reading" in r.getMessage()]
    # It had at most the transport's high-water mark and one line waiting here when it went.
    waiting = int(line.split("(")[1].split()[0])
    assert 0 < waiting <= control.CLIENT_BUFFER + 1024, line


def test_a_removed_control_socket_is_made_again_and_open_connections_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(control, "SOCKET_CHECK_INTERVAL", 0.05)
    events: Counter[str] = Counter()

    async def scenario() -> None:
        server = ControlServer(object(), tmp_path / "c.sock", table(), events=events)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            first = server.path.stat().st_ino
            server.path.unlink()
            while not server.path.exists() or Event.CONTROL_SOCKET_RESTORED not in events:
                await asyncio.sleep(0.01)
            assert server.path.stat().st_ino != first
            assert await status(server.path) == {"ok": True, "result": "serving"}
            writer.write(b'{"cmd": "status"}\n')  # the connection made before goes on
            assert json.loads(await asyncio.wait_for(reader.readline(), DEADLINE))["ok"] is True
            writer.close()
            # A file that is not ours put at the path is replaced too, once.
            server.path.unlink()
            server.path.write_text("not a socket")
            while events[Event.CONTROL_SOCKET_RESTORED] < 2:
                await asyncio.sleep(0.01)
            assert await status(server.path) == {"ok": True, "result": "serving"}
            await asyncio.sleep(0.2)
            assert events[Event.CONTROL_SOCKET_RESTORED] == 2
        finally:
            await server.close()
        assert not server.path.exists()

    with caplog.at_level(logging.WARNING, logger="vswitch"):
        run(scenario)
    restored = [r.getMessage() for r in caplog.records if "listening on it again" in r.getMessage()]
    assert restored == [f"control: the socket {tmp_path / 'c.sock'} was removed; listening on it again"] * 2


def test_a_missing_socket_of_a_running_instance_is_told_apart_from_no_instance(tmp_path: Path) -> None:
    path = tmp_path / "sw.sock"
    assert str(no_socket(path)) == f"no running instance at {path}"  # no state file
    state = path.with_suffix(".json")
    state.write_text(json.dumps({"pid": os.getpid(), "started": process_start(os.getpid()), "records": []}))
    with pytest.raises(ControlError) as raised:
        control.request(path, "status")
    assert str(raised.value).startswith(f"the control socket {path} is missing, but the instance is running")
    assert f"(pid {os.getpid()})" in str(raised.value)
    # A pid that runs, but is another process than the one that wrote the file (a recycled pid).
    state.write_text(json.dumps({"pid": os.getpid(), "started": 1, "records": []}))
    assert str(no_socket(path)) == f"no running instance at {path}"
    state.write_text("{not json")
    assert str(no_socket(path)) == f"no running instance at {path}"


def test_vnet_header_length_is_what_the_limit_counts() -> None:
    """set_port_mtu's limit is in buffer bytes: the vnet header, then the frame."""
    shell = Shell(Datapath(), asyncio.new_event_loop())
    try:
        shell.set_port_mtu(4, 1500)
        assert shell._max_frame[4] == VNET_HDR_LEN + 1500 + MTU_OVERHEAD
        shell.set_port_mtu(4, 65535)
        assert shell._max_frame[4] == READ_SIZE - 1
    finally:
        shell.loop.close()

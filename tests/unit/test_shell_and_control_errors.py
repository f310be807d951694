"""The IO edges: what observers, hooks, filters and control clients do wrong costs one
frame or one request, never the port or the server; one busy-poll spin at a time; bounded live traces.

The shell runs over AF_UNIX datagram socketpairs (as in test_shell.py); the control server listens on a
real Unix socket in a temporary directory, on the same event loop as the shell, in front of a small
stand-in for a running instance (a real Datapath and Shell, ports with a label and an id).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from conftest import drain_wire, frame, mac, make_readable, socketpair_ports

import vswitch.tools.debug.trace as trace_module
from vswitch.core.bpf import MAX_NESTING, FilterError, compile_filter
from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath
from vswitch.core.wire import VNET_HDR_LEN
from vswitch.shell.control import ControlServer, ControlTable
from vswitch.shell.loop import Shell
from vswitch.tools.debug import SERVED
from vswitch.tools.debug.trace import MAX_LIVE_TRACES

if TYPE_CHECKING:
    from vswitch.shell.instance import Instance

H = [mac(i) for i in range(3)]  # host i lives behind port i
DEADLINE = 5.0


@dataclass
class Port:
    id: int
    label: str


@dataclass
class Bench:
    """Three ports on one segment; the test holds the far end of each (the wire)."""

    loop: asyncio.AbstractEventLoop
    shell: Shell
    datapath: Datapath
    wires: list[socket.socket]
    ports: list[Port]
    router: None = None
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def instance(self) -> Instance:
        """This bench as the running instance the control handlers expect (datapath, shell, ports)."""
        return cast("Instance", self)

    def status(self) -> dict[str, Any]:
        return {"instance": "bench"}

    def readable(self, port: int) -> None:
        make_readable(self.shell, port)

    def send(self, port: int, *frames: bytes) -> None:
        """Frames arrive on port, and the shell reads them (as the loop would call it)."""
        for data in frames:
            self.wires[port].send(data)
        self.readable(port)

    def received(self, port: int) -> list[bytes]:
        return drain_wire(self.wires[port])

    def step(self) -> None:
        """One turn of the event loop: what was scheduled runs; what that schedules waits."""
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()


@pytest.fixture
def bench() -> Iterator[Bench]:
    loop = asyncio.new_event_loop()
    datapath = Datapath()
    shell = Shell(datapath, loop)
    wires, inner = socketpair_ports(datapath, shell, 3)
    world = Bench(loop, shell, datapath, wires, [Port(i, f"p{i}") for i in range(3)])
    world.sockets += wires + inner
    for port, host in enumerate(H):  # every host speaks once: the FDB knows where each lives
        world.send(port, frame(host, H[(port + 1) % 3]))
    for port in range(3):
        world.received(port)
    try:
        yield world
    finally:
        shell.detach_all()
        loop.close()
        for end in world.sockets:
            end.close()


def to_1(size: int = 100) -> bytes:
    return frame(H[0], H[1], size=size)


BAD_SIZE = 333  # the frame size the faulty observers and hooks below choke on


# --- 1. observers and the hook are guarded like receive -------------------------------------------------
def test_an_observer_that_raises_costs_its_frame_only(bench: Bench) -> None:
    def observer(direction: str, pkt: bytes) -> None:
        if len(pkt) - VNET_HDR_LEN == BAD_SIZE:
            raise RuntimeError("observer bug")

    bench.shell.observe(0, observer)
    good, bad = to_1(), to_1(BAD_SIZE)
    bench.send(0, good, bad, good)  # raised out of the reader callback before the fix
    assert bench.received(1) == [good, good]
    assert bench.datapath.counters.drops[0][Drop.INTERNAL_ERROR] == 1


def test_an_observer_failing_on_every_frame_is_counted_per_frame_and_logged_once(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(direction: str, pkt: bytes) -> None:
        raise RecursionError("a filter too deep")

    bench.shell.observe(0, observer)
    with caplog.at_level(logging.ERROR, logger="vswitch"):
        bench.send(0, *[to_1() for _ in range(40)])
        bench.send(0, to_1())
    assert bench.datapath.counters.drops[0][Drop.INTERNAL_ERROR] == 41
    assert len([r for r in caplog.records if "observer raised" in r.getMessage()]) == 1
    bench.shell.unobserve(0, observer)
    bench.send(0, to_1())
    assert bench.received(1) == [to_1()]  # the port itself never stopped working


def test_a_tx_observer_that_raises_does_not_lose_the_frame_it_saw(bench: Bench) -> None:
    def observer(direction: str, pkt: bytes) -> None:
        raise RuntimeError("observer bug")

    bench.shell.observe(1, observer)
    bench.send(0, to_1(), to_1(200))
    assert bench.received(1) == [to_1(), to_1(200)]  # the second was never read before the fix
    assert bench.datapath.counters.events["observer-error"] == 2
    assert bench.datapath.counters.drops[1][Drop.INTERNAL_ERROR] == 0


def test_a_hook_that_raises_is_a_hook_drop_of_that_frame(bench: Bench) -> None:
    def hook(port: int, pkt: bytes, now: float) -> bytes | None:
        if len(pkt) - VNET_HDR_LEN == BAD_SIZE:
            raise ValueError("user hook bug")
        return pkt

    bench.shell.hook = hook
    good, bad = to_1(), to_1(BAD_SIZE)
    bench.send(0, bad, good, bad, good)
    assert bench.received(1) == [good, good]
    assert bench.datapath.counters.drops[0][Drop.HOOK] == 2
    assert bench.datapath.counters.drops[0][Drop.INTERNAL_ERROR] == 0


# --- 4. busy poll: one spin, however the reads fall between its slices ----------------------------------
def count_spin_slices(shell: Shell) -> list[float]:
    """Record each time a busy-poll slice starts (the shell schedules slices through self._spin)."""
    slices: list[float] = []
    spin = shell._spin

    def counted(*args: Any) -> None:
        slices.append(time.perf_counter())
        spin(*args)

    shell._spin = counted  # type: ignore[method-assign]
    return slices


def test_a_read_between_spin_slices_does_not_start_another_spin(bench: Bench) -> None:
    bench.shell.busy_poll = 60.0  # longer than the test: the spin only ends when detached
    slices = count_spin_slices(bench.shell)
    bench.send(0, to_1())  # starts the spin; its first slice ends and waits for its turn
    assert len(slices) == 1
    for _ in range(5):
        bench.send(0, to_1())  # traffic in the gap is read by the reader callback ...
        before = len(slices)
        bench.step()
        assert len(slices) - before == 1  # ... and one spin slice runs per turn, not one more each time
    assert len(bench.received(1)) == 6
    bench.shell.detach_all()
    before = len(slices)
    bench.step()
    bench.step()
    assert len(slices) == before  # detaching ended the spin: no slice is left scheduled


def test_while_traffic_flows_one_spin_runs_and_it_stops_once_idle(bench: Bench) -> None:
    bench.shell.busy_poll = 0.05
    slices = count_spin_slices(bench.shell)
    bench.send(0, to_1())
    flowing_until = time.monotonic() + 0.3  # traffic for six busy-poll periods, every frame in a gap
    while time.monotonic() < flowing_until:
        bench.send(0, to_1())
        before = len(slices)
        bench.step()
        assert len(slices) - before == 1  # never a second spin, and the one spin does not lapse
    deadline = time.monotonic() + DEADLINE
    while bench.shell._spinning:
        assert time.monotonic() < deadline, "the spin did not stop once traffic did"
        bench.step()
    before = len(slices)
    bench.step()
    assert len(slices) == before


# --- 2. filters: flat and/or chains, bounded nesting ----------------------------------------------------
def test_a_long_or_chain_matches_without_recursing_per_term() -> None:
    udp = to_1()[VNET_HDR_LEN:]
    assert compile_filter(" or ".join(["tcp"] * 3000) + " or udp")(udp)
    assert not compile_filter(" or ".join(["tcp"] * 3000))(udp)
    assert compile_filter(" and ".join(["udp"] * 3000))(udp)
    assert not compile_filter(" && ".join(["ip"] * 3000) + " && tcp")(udp)
    assert compile_filter("not " * 5001 + "tcp")(udp)


def test_deep_parentheses_are_a_clean_parse_error() -> None:
    udp = to_1()[VNET_HDR_LEN:]
    assert compile_filter("(" * MAX_NESTING + "udp" + ")" * MAX_NESTING)(udp)
    for text in ("(" * 5000, "(" * 5000 + "udp" + ")" * 5000, "!(" * 3000 + "udp" + ")" * 3000):
        with pytest.raises(FilterError, match="nested deeper than") as raised:
            compile_filter(text)
        assert len(str(raised.value)) < 200  # the message quotes the filter, shortened


# --- 5 and 3. the control socket --------------------------------------------------------------------------
Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STATUS = {"ok": True, "result": {"instance": "bench"}}  # what the bench answers to "status"


def serve(
    bench: Bench,
    scenario: Callable[[ControlServer[Instance], Path], Awaitable[None]],
    table: ControlTable[Instance] = SERVED,
) -> None:
    """Run scenario against a control server for this bench (serving what a switch serves), on the
    bench's loop; close it after."""

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="rfx") as tmp:
            server = ControlServer(bench.instance, Path(tmp) / "control.sock", table)
            await server.start()
            try:
                await asyncio.wait_for(scenario(server, server.path), 30)
            finally:
                await server.close()

    bench.loop.run_until_complete(run())


async def connect(path: Path) -> Client:
    return await asyncio.open_unix_connection(str(path), limit=1 << 22)


async def ask(client: Client, line: bytes) -> dict[str, Any]:
    reader, writer = client
    writer.write(line + b"\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), DEADLINE)
    assert reply, f"the server closed the connection instead of answering {line[:40]!r}"
    answer: dict[str, Any] = json.loads(reply)
    return answer


def request(cmd: str, **fields: Any) -> bytes:
    return json.dumps({"cmd": cmd, **fields}).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving(bench: Bench) -> None:
    def boom(_instance: Instance, _req: dict[str, Any]) -> Any:
        raise KeyError("a bug\nover two lines")

    table = SERVED.merged(ControlTable({"rfx-boom": boom}))
    data = b64(to_1()[VNET_HDR_LEN:])

    async def scenario(_server: ControlServer[Instance], path: Path) -> None:
        client = await connect(path)
        nested = await ask(client, b"[" * 100_000 + b"]" * 100_000)
        assert nested["ok"] is False and "nested too deeply" in nested["error"]
        then = await ask(client, request("trace", port="p0", data=data, then="ab"))
        assert then == {"ok": False, "error": '"then" is a list of {"port", "data"} objects'}
        bug = await ask(client, request("rfx-boom"))
        assert bug["ok"] is False and bug["error"].startswith("internal error: KeyError")
        assert "\n" not in bug["error"]
        assert await ask(client, request("status")) == STATUS
        client[1].close()

    serve(bench, scenario, table)


@pytest.mark.parametrize("cmd", ["trace-live", "capture"])
def test_a_stream_with_a_filter_too_deep_is_refused_with_a_reply(bench: Bench, cmd: str) -> None:
    async def scenario(_server: ControlServer[Instance], path: Path) -> None:
        client = await connect(path)
        reply = await ask(client, request(cmd, port="p0", filter="(" * 5000))
        assert reply["ok"] is False and "nested deeper than" in reply["error"]
        assert await ask(await connect(path), request("status")) == STATUS

    serve(bench, scenario)
    assert not bench.shell._observers


def test_a_live_trace_count_beyond_the_cap_is_refused(bench: Bench) -> None:
    async def scenario(_server: ControlServer[Instance], path: Path) -> None:
        for count in (10**6, MAX_LIVE_TRACES + 1, -1, "many"):
            reply = await ask(await connect(path), request("trace-live", port="p0", count=count))
            assert reply["ok"] is False and "count" in reply["error"], reply

    serve(bench, scenario)
    assert not bench.shell._observers


def test_a_live_trace_never_makes_more_traces_than_asked_and_lets_go_when_the_client_goes(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []
    real_trace = trace_module.trace

    def counted(*args: Any) -> trace_module.Trace:
        made.append(1)
        return real_trace(*args)

    monkeypatch.setattr(trace_module, "trace", counted)
    count = 3

    async def scenario(_server: ControlServer[Instance], path: Path) -> None:
        reader, writer = await connect(path)
        writer.write(request("trace-live", port="p0", count=count) + b"\n")
        assert json.loads(await reader.readline()) == {"ok": True, "result": "tracing"}
        for _ in range(5):  # frames keep matching while the client does not read
            bench.send(0, *[to_1() for _ in range(40)])
            await asyncio.sleep(0)  # a turn for the stream's task to send what it has
        assert len(made) == count
        records = [json.loads(line) for line in (await reader.read()).splitlines()]  # then EOF
        assert [r["port"] for r in records] == ["p0"] * count
        assert not bench.shell._observers

        # A client that goes away before its traces: the observer (and the traces it holds) go too.
        reader, writer = await connect(path)
        writer.write(request("trace-live", port="p0", count=MAX_LIVE_TRACES) + b"\n")
        assert json.loads(await reader.readline())["ok"] is True
        bench.send(0, to_1())
        writer.close()
        deadline = time.monotonic() + DEADLINE
        while bench.shell._observers:
            assert time.monotonic() < deadline, "the live trace outlived its client"
            await asyncio.sleep(0.01)

    serve(bench, scenario)
    assert len(made) == count + 1


def test_close_ends_the_connections_still_open(bench: Bench) -> None:
    """Clients still connected at shutdown (an idle one, a live trace, a capture) are ended and awaited
    by close(), not left pending for the loop's close to destroy ("Task was destroyed but it is
    pending!")."""

    async def scenario(server: ControlServer[Instance], path: Path) -> None:
        ours = asyncio.all_tasks()  # the test's own; every other task is a connection's
        idle = await connect(path)
        assert (await ask(idle, request("status")))["ok"] is True
        live, capture = await connect(path), await connect(path)
        live[1].write(request("trace-live", port="p0") + b"\n")
        capture[1].write(request("capture", port="p1") + b"\n")
        for stream in (live, capture):
            assert json.loads(await stream[0].readline())["ok"] is True
        assert len(bench.shell._observers) == 2
        await server.close()
        assert asyncio.all_tasks() - ours == set()  # none pending (all_tasks lists the pending only)
        assert await asyncio.wait_for(idle[0].read(), DEADLINE) == b""  # EOF: the server hung up
        assert await asyncio.wait_for(live[0].read(), DEADLINE) == b""
        assert await asyncio.wait_for(capture[0].read(), DEADLINE) == b""
        assert not bench.shell._observers
        for _reader, writer in (idle, live, capture):
            writer.close()

    serve(bench, scenario)


def test_a_streaming_client_that_keeps_talking_is_not_buffered() -> None:
    """capture and live trace watch for the client to leave: what it sends meanwhile is thrown away
    as it comes. StreamReader.read() would keep it all until EOF (4 MB here; the peak shows it)."""
    import tracemalloc

    from vswitch.tools.debug.common import client_gone

    chunk = b"x" * 65536

    async def run() -> None:
        reader = asyncio.StreamReader()
        watcher = asyncio.ensure_future(client_gone(reader))
        for _ in range(64):
            reader.feed_data(chunk)
            await asyncio.sleep(0)  # one turn of the loop: the watcher reads what came
        reader.feed_eof()
        await asyncio.wait_for(watcher, DEADLINE)

    tracemalloc.start()
    try:
        asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak

"""TOML numbers and tables give one ConfigError sentence, ageing is a finite time, a /32
uplink says why it has no upstream, and the Python API undoes a start that a Ctrl-C interrupts."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vswitch import api
from vswitch.config.topology import (
    ConfigError,
    Request,
    Topology,
    build,
    parse_ports,
    parse_uplink,
    request_from_toml,
)
from vswitch.core.fdb import Fdb
from vswitch.shell.kernel import STOP_SIGNALS

PORTS = 'ports = ["a", "b"]\n'

BAD_TOML = {
    "ageing = nan": "ageing",
    "ageing = inf": "ageing",
    'ageing = "x"': "ageing",
    "ageing = [1]": "ageing",
    "ageing = true": "ageing",
    "ageing = 0": "ageing",
    'fdb_max = "x"': "fdb_max",
    "fdb_max = 1.5": "fdb_max",
    "fdb_max = true": "fdb_max",
    'txqueuelen = "x"': "txqueuelen",
    "flow_cache = 1.5": "flow_cache",
    'host_routes = "no"': "host_routes",
}


@pytest.mark.parametrize("line", list(BAD_TOML))
def test_a_bad_toml_number_is_one_config_error_naming_the_key(line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        request_from_toml(PORTS + line + "\n")
    assert BAD_TOML[line] in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["segment = 5\n", 'segment = "lan"\n', "segment = [5]\n"])
def test_segment_must_be_a_list_of_tables(text: str) -> None:
    with pytest.raises(ConfigError, match="segment"):
        request_from_toml(text)


def test_good_toml_numbers_still_load() -> None:
    req = request_from_toml(PORTS + "ageing = 30\nfdb_max = 5\ntxqueuelen = 100\nflow_cache = 0\n")
    assert (req.ageing, req.fdb_max, req.txqueuelen, req.flow_cache) == (30.0, 5, 100, 0)
    assert isinstance(req.ageing, float)
    assert request_from_toml(PORTS + "ageing = 0.5\n").ageing == 0.5


@pytest.mark.parametrize("ageing", [math.nan, math.inf, -1.0, 0.0])
def test_validate_refuses_an_ageing_that_is_no_time(ageing: float) -> None:
    """The command line's path: positive_float lets inf through, so build() must stop it."""
    with pytest.raises(ConfigError, match="ageing"):
        build(Request(ports=parse_ports("a,b"), ageing=ageing))


@pytest.mark.parametrize("ageing", [math.nan, math.inf, 0.0])
def test_fdb_refuses_an_ageing_that_would_never_pass(ageing: float) -> None:
    with pytest.raises(ValueError, match="ageing"):
        Fdb(ageing=ageing)


def test_a_32_uplink_without_via_says_there_is_no_room_for_the_upstream() -> None:
    with pytest.raises(ConfigError, match="no room for the upstream address"):
        parse_uplink("up=10.0.0.1/32")
    with pytest.raises(ConfigError, match="no room for the upstream address"):
        request_from_toml('uplink = { namespace = "up", address = "10.0.0.1/32" }\n')


def test_a_31_uplink_takes_the_other_address_as_upstream() -> None:
    assert str(parse_uplink("up=10.0.0.0/31").upstream) == "10.0.0.1"


# --- the Python API under Ctrl-C --------------------------------------------------------------------
class FakeInstance:
    """Stands in for Instance (no kernel): records what start() and stop() do to it."""

    made: list[FakeInstance] = []
    # Set by a test: runs on the loop's thread once serve() begins, before it can be stopped.
    on_serve: Callable[[FakeInstance], None] = staticmethod(lambda _instance: None)

    def __init__(self, topology: Topology, control: object = None) -> None:
        self.topology = topology
        self.control = control
        self.shell = None
        self.masked_during_build: set[int | signal.Signals] = set()
        self.stop_calls = 0
        self.torn_down = False
        self._stop: asyncio.Event | None = None
        FakeInstance.made.append(self)

    def build(self) -> None:
        self.masked_during_build = set(signal.pthread_sigmask(signal.SIG_BLOCK, set()))

    async def serve(self, ready: Callable[[], None] | None = None, signals: bool = True) -> None:
        FakeInstance.on_serve(self)
        deadline = time.monotonic() + 5.0
        # Like a real serve() still setting up: a stop() now finds nothing to stop yet.
        while not self.stop_calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._stop = asyncio.Event()
        if ready is not None:
            ready()
        await self._stop.wait()

    def stop(self) -> None:
        self.stop_calls += 1
        if self._stop is not None:
            self._stop.set()

    def teardown(self) -> None:
        self.torn_down = True


@pytest.fixture
def fake_instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeInstance]]:
    monkeypatch.setattr(api, "Instance", FakeInstance)
    FakeInstance.made = []
    FakeInstance.on_serve = staticmethod(lambda _instance: None)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield FakeInstance
    finally:
        signal.signal(signal.SIGINT, previous)


def test_start_holds_ctrl_c_and_sigterm_while_the_kernel_side_is_built(
    fake_instance: type[FakeInstance],
) -> None:
    fake_instance.on_serve = staticmethod(lambda instance: instance.stop())
    sw = api.Switch(ports=["a", "b"])
    sw.start()
    sw.stop()
    (made,) = fake_instance.made
    assert {signal.SIGINT, signal.SIGTERM} <= made.masked_during_build
    assert not STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # released afterwards


def test_ctrl_c_while_start_waits_stops_the_switch_and_removes_it(fake_instance: type[FakeInstance]) -> None:
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    fake_instance.on_serve = staticmethod(lambda _instance: signal.pthread_kill(main, signal.SIGINT))
    sw = api.Switch(ports=["a", "b"], start_timeout=10.0)
    with pytest.raises(KeyboardInterrupt):
        sw.start()
    (made,) = fake_instance.made
    assert made.torn_down  # __exit__ never runs for a failed __enter__: start() itself cleaned up
    assert sw.instance is None
    assert sw._thread is not None and not sw._thread.is_alive()  # serving stopped, not left running

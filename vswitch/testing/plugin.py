"""The pytest plugin, installed with vswitch (entry point pytest11 `vswitch`): real networks as fixtures.

    def test_the_client_reaches_the_server(vswitch_net):
        net = vswitch_net(ports=["client", "server"])
        net.assert_reachable("client", "server")

- `vswitch_net` (function scope) and `vswitch_net_module` (module scope) are factories: each call
  builds and starts a `vswitch.testing.Network` (the arguments are `Network`'s), named PREFIX-HOST
  with PREFIX "vt" + 6 hex for this pytest run (none of the machine's namespaces or instances start
  with it) + a counter. At the fixture's teardown every network it made is closed: programs stopped,
  namespaces removed, whether the test passed, failed or was interrupted.
- Interrupted: Ctrl-C is KeyboardInterrupt, after which pytest still tears its fixtures down. While a
  network is up, SIGTERM and SIGHUP (if nobody else handles them) are raised as `Terminated`, a
  KeyboardInterrupt, so they tear down too (pytest then exits 2, "interrupted"). Teardown holds SIGINT,
  SIGTERM and SIGHUP until it is done, as `vswitch up` does. Only SIGKILL leaves namespaces behind
  (`vswitch down --name PREFIX` removes them, as for any killed instance).
- Every test that uses a fixture (itself or through another fixture) is marked `vswitch` (`-m "not
  vswitch"` leaves them out); a test marked `vswitch` by hand gets the same skip: without root, a
  /dev/net/tun that opens, or the ip command, it is skipped with the reason (support.skip_reason).
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import pytest

from .support import skip_reason

if TYPE_CHECKING:
    from .network import Network

MARKER: Final = "vswitch"
FIXTURES: Final = ("vswitch_net", "vswitch_net_module")
# Networks per run: the instance name ("vt" + 6 hex + the counter) may have 12 characters.
MAX_NETWORKS: Final = 9999
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP came while a vswitch network was up: raised as Ctrl-C is, so that pytest
    runs every teardown (and removes the networks) before it exits."""


class Run:
    """One pytest session's names, and the networks it has up (for pytest_unconfigure's last look)."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._count = 0
        self._lock = threading.Lock()
        self.live: list[Network] = []

    @property
    def prefix(self) -> str:
        """The run's "vt" + 6 hex, which no namespace under /run/netns and no instance starts with."""
        with self._lock:
            if self._token is None:
                self._token = _fresh_prefix()
            return self._token

    def next_name(self) -> str:
        prefix = self.prefix
        with self._lock:
            self._count += 1
            if self._count > MAX_NETWORKS:
                raise RuntimeError(f"more than {MAX_NETWORKS} vswitch networks in one pytest run")
            return f"{prefix}{self._count}"


def _fresh_prefix() -> str:
    from ..shell.kernel import NETNS_DIR
    from ..shell.state import run_dir

    def taken(directory: str) -> list[str]:
        try:
            return os.listdir(directory)
        except FileNotFoundError:
            return []

    for _ in range(64):
        prefix = f"vt{secrets.token_hex(3)}"
        if not any(name.startswith(prefix) for name in taken(NETNS_DIR) + taken(str(run_dir()))):
            return prefix
    raise RuntimeError(f"no free vt+6-hex prefix in {NETNS_DIR}")


RUN: Final = pytest.StashKey[Run]()


class _StopSignals:
    """SIGTERM and SIGHUP raise Terminated while at least one network is up (counted), then go back to
    what they were. Only signals still at their default are taken, and only on the main thread (where
    Python runs handlers): a handler of the user's or of another plugin is left alone.

    A fork inherits the handler: pyroute2 makes a namespace's netlink socket in a forked child and
    ends it with SIGTERM. Raised there, Terminated would unwind a copy of pytest, whose teardown would
    remove the networks under the real one; so in any process but the one that took the signals the
    handler dies of the signal, as by default."""

    def __init__(self) -> None:
        self._users = 0
        self._saved: dict[signal.Signals, Any] = {}
        self.owner = os.getpid()

    def take(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        self._users += 1
        if self._users == 1:
            self.owner = os.getpid()
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self._saved[sig] = signal.signal(sig, _terminated)
        return True

    def give_back(self) -> None:
        self._users -= 1
        if self._users == 0:
            for sig, old in self._saved.items():
                signal.signal(sig, old)
            self._saved.clear()


def _terminated(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != _SIGNALS.owner:  # a fork of ours: die as the default would have
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    raise Terminated(f"{signal.Signals(signum).name}: the vswitch networks are removed before pytest exits")


_SIGNALS: Final = _StopSignals()


def _networks(request: pytest.FixtureRequest) -> Iterator[Callable[..., Network]]:
    """The factory both fixtures yield, and the teardown of what it made."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from ..shell.kernel import stop_signals_held
    from .network import Network

    run = request.config.stash[RUN]
    made: list[tuple[Network, bool]] = []

    def make(ports: Sequence[str] = (), **options: Any) -> Network:
        """Build and start a network: vswitch_net(ports=["a", "b"]), or segments=, uplink=, forwards=
        (all Network's arguments). Its names are this run's; it is closed at the fixture's teardown."""
        net = Network(ports, prefix=run.next_name(), **options)
        made.append((net, _SIGNALS.take()))  # before start: a SIGTERM from here on tears it down
        run.live.append(net)
        net.start()
        return net

    try:
        yield make
    finally:
        errors: list[Exception] = []
        with stop_signals_held():  # a second Ctrl-C waits until the networks are gone
            for net, took in reversed(made):
                try:
                    net.close()
                except Exception as exc:
                    errors.append(exc)
                finally:
                    run.live.remove(net)
                    if took:
                        _SIGNALS.give_back()
        if errors:
            raise errors[0]


@pytest.fixture
def vswitch_net(request: pytest.FixtureRequest) -> Iterator[Callable[..., Network]]:
    """A factory of vswitch networks for this test: net = vswitch_net(ports=["client", "server"])."""
    yield from _networks(request)


@pytest.fixture(scope="module")
def vswitch_net_module(request: pytest.FixtureRequest) -> Iterator[Callable[..., Network]]:
    """vswitch_net for a whole module: the networks live until its last test is done."""
    yield from _networks(request)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: builds real networks of namespaces (vswitch_net, vswitch_net_module); needs root "
        "and /dev/net/tun, skipped without them",
    )
    config.stash[RUN] = Run()


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m vswitch` must see the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if set(FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(MARKER)


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(MARKER) is not None and (reason := skip_reason()) is not None:
        pytest.skip(reason)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The last resort: a network whose fixture teardown never ran (an interrupt between two
    finalizers) is closed here, before the process exits."""
    run = config.stash.get(RUN, None)
    if run is None:
        return
    for net in list(reversed(run.live)):
        try:
            net.close()
        except Exception as exc:
            print(f"vswitch: closing network {net.name} at exit: {exc}")
        run.live.remove(net)


__all__ = ["FIXTURES", "MARKER", "Run", "Terminated", "skip_reason", "vswitch_net", "vswitch_net_module"]

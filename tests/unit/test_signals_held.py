"""stop_signals_held: a Ctrl-C during a namespace's creation waits until the name is recorded."""

from __future__ import annotations

import signal
import threading

import pytest

from vswitch.shell.kernel import STOP_SIGNALS, stop_signals_held


def test_ctrl_c_waits_for_the_end_of_the_block() -> None:
    reached: list[str] = []
    with pytest.raises(KeyboardInterrupt), stop_signals_held():
        # To this thread, whose mask holds it: a signal to the process may go to another thread that
        # an earlier test left running (an executor's), which does not hold it.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        reached.append("recorded")  # still running: the signal is held, not delivered
    assert reached == ["recorded"]
    assert not STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # mask restored


def test_a_mask_held_before_stays_held() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with stop_signals_held():
            pass
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

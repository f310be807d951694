"""Who owns a ledger: a live process counts, its zombie or a recycled pid does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vswitch.shell.state import DEFAULT_RUN_DIR, RUN_DIR_ENV, pid_alive, process_start, run_dir


def test_a_running_process_is_alive_and_its_start_time_identifies_it() -> None:
    started = process_start(os.getpid())
    assert started is not None
    assert pid_alive(os.getpid(), started)
    assert not pid_alive(os.getpid(), started + 1)  # same pid, another start: a recycled pid


def test_an_exited_but_unreaped_child_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(child.pid)
    try:
        # Poll /proc (not wait(), which would reap it) until the child is a zombie.
        for _ in range(1000):
            with open(f"/proc/{child.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            os.sched_yield()
            subprocess.run(["true"], check=True)  # let time pass without sleeping on a guess
        assert started is None or not pid_alive(child.pid, started)
        assert process_start(child.pid) is None
    finally:
        child.wait(5)


def test_no_such_process() -> None:
    assert not pid_alive(0)
    assert process_start(2**22 + 12345) is None


def test_an_empty_run_dir_setting_is_the_default_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, "")
    assert run_dir() == DEFAULT_RUN_DIR
    monkeypatch.setenv(RUN_DIR_ENV, "/tmp/elsewhere")
    assert run_dir() == Path("/tmp/elsewhere")
    monkeypatch.delenv(RUN_DIR_ENV)
    assert run_dir() == DEFAULT_RUN_DIR

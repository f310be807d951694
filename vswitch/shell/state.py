"""The ownership ledger: everything an instance creates, written down the moment it exists.

Teardown, start-up rollback and `vswitch down` after a SIGKILL all undo exactly the ledger, newest
first, and nothing else. The file is rewritten atomically (write, fsync, rename) on every change, so a
kill at any instant leaves a ledger that names everything that outlives the process.

A running instance whose state folder turns unwritable (remounted read-only, full) keeps its ledger in
memory: with `on_write_error` set, a failed rewrite goes to it instead of raising, so forwarding and
teardown go on (teardown still removes everything the list in memory names).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "VSWITCH_RUN_DIR"
DEFAULT_RUN_DIR = Path("/run/vswitch")


def run_dir() -> Path:
    """VSWITCH_RUN_DIR, or /run/vswitch when it is unset or empty (an empty one would mean the current
    directory: a state file and a control socket wherever the command happened to run)."""
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)


def state_path(instance: str) -> Path:
    return run_dir() / f"{instance}.json"


def socket_path(instance: str) -> Path:
    return run_dir() / f"{instance}.sock"


def lease_path(instance: str) -> Path:
    """The DHCP leases of a running instance (shell/services.py LeaseFile), JSON."""
    return run_dir() / f"{instance}.leases.json"


def stray_files(instance: str) -> list[Path]:
    """What a kill mid-write leaves of instance's in the run folder, once no instance of that name
    runs: the ledger's next version (NAME.tmp) and the lease file's (NAME.leases.tmp), written only
    while a state file exists, and NAME.PID.claim of a start-up whose PID is gone (Ledger.claim).
    Instance names have no dots, so another instance's files never match."""
    directory = run_dir()
    found: list[Path] = []
    if not state_path(instance).exists():
        halves = (state_path(instance).with_suffix(".tmp"), lease_path(instance).with_suffix(".tmp"))
        found += [path for path in halves if path.exists()]
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            parts = path.name.split(".")
            claim = len(parts) == 3 and parts[0] == instance and parts[1].isdigit() and parts[2] == "claim"
            if claim and not pid_alive(int(parts[1])):
                found.append(path)
    return sorted(found)


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when
    there is no such process, or only its zombie (it has exited; its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # field 3, the state: zombie or dead
        return None
    return int(fields[19])


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True while that very process runs: a recycled pid with another start time does not count."""
    now_started = process_start(pid) if pid > 0 else None
    if now_started is None:
        return False
    return started is None or started == now_started


class Ledger:
    """An append-and-remove list of records ({"kind": ..., fields}) persisted as JSON."""

    def __init__(
        self,
        instance: str,
        pid: int | None = None,
        records: list[dict[str, Any]] | None = None,
        started: int | None = None,
    ):
        self.instance = instance
        self.pid = os.getpid() if pid is None else pid
        self.started = process_start(self.pid) if pid is None else started
        self.records: list[dict[str, Any]] = list(records or [])
        self.path = state_path(instance)
        # Told of a rewrite (or removal) of the state file that failed, instead of a raise: set once
        # the instance runs; until then (start-up) a failure stops it.
        self.on_write_error: Callable[[OSError], None] | None = None

    @classmethod
    def load(cls, instance: str) -> Ledger | None:
        try:
            data = json.loads(state_path(instance).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OSError(f"state file {state_path(instance)} is unreadable: {exc}") from None
        started = data.get("started")
        return cls(
            instance,
            int(data.get("pid", 0)),
            list(data.get("records", [])),
            None if started is None else int(started),
        )

    def owner_alive(self) -> bool:
        return self.pid != os.getpid() and pid_alive(self.pid, self.started)

    def claim(self) -> None:
        """Create the state file, exclusively: a second instance of the same name fails here
        (FileExistsError). Written whole first, then linked into place: an interruption at any point
        leaves either no state file or a complete one, never an empty one that blocks the name."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._write_tmp(f".{os.getpid()}.claim")
        try:
            os.link(tmp, self.path)
        finally:
            os.unlink(tmp)

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        entry = {"kind": kind, **fields}
        self.records.append(entry)
        self._save()
        return entry

    def forget(self, entry: dict[str, Any]) -> None:
        self.records.remove(entry)
        self._save()

    def newest_first(self) -> Iterator[dict[str, Any]]:
        yield from reversed(list(self.records))

    def release(self) -> None:
        """Remove the state file once everything it names is gone."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._failed(exc)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            os.replace(self._write_tmp(".tmp"), self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # written, but not renamed into place
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if self.on_write_error is None:
            raise exc
        self.on_write_error(exc)

    def _write_tmp(self, suffix: str) -> Path:
        """The ledger as JSON in a file beside the state file, synced, mode 0600."""
        tmp = self.path.with_suffix(suffix)
        body = json.dumps(
            {"instance": self.instance, "pid": self.pid, "started": self.started, "records": self.records},
            indent=1,
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover file keeps its mode through O_TRUNC
        with open(fd, "w") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

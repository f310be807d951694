"""A private Open vSwitch for one bench run: its own database, ovsdb-server and ovs-vswitchd.

Nothing is shared with a system OVS, if the machine has one. Everything OVS writes (the database and
its lock, the db socket, the unixctl sockets, pidfiles, logs, the bridges' management sockets) goes
into one directory the bench owns: OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR and OVS_SYSCONFDIR point there
and every program also gets its paths explicitly. Both daemons are our subprocesses (no --detach,
no --monitor), in sessions of their own so a Ctrl-C reaches only the bench, which stops them in
order: ovs-vswitchd, then ovsdb-server, each SIGTERM and then SIGKILL at a deadline.

ovs-vswitchd runs inside a namespace (`ip netns exec`, which execs it: the child's pid is the
daemon's). Its ports, the netdev datapath's `ovs-netdev` tap and the bridge's internal port are all
created there, never in the root namespace, and all vanish with that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .process import terminate

PROGRAMS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
SCHEMA = "vswitch.ovsschema"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 15.0
POLL = 0.05


class OvsError(Exception):
    """OVS could not be started, configured or stopped; str() is one sentence for the user."""


def schema_path() -> Path:
    """The installed vswitch.ovsschema: $OVS_PKGDATADIR, else share/openvswitch beside ovsdb-tool's bin."""
    candidates: list[Path] = []
    if os.environ.get("OVS_PKGDATADIR"):
        candidates.append(Path(os.environ["OVS_PKGDATADIR"]) / SCHEMA)
    tool = shutil.which("ovsdb-tool")
    if tool is not None:
        candidates.append(Path(tool).resolve().parents[1] / "share" / "openvswitch" / SCHEMA)
    for path in candidates:
        if path.is_file():
            return path
    raise OvsError(f"no {SCHEMA} found (looked in {', '.join(str(p) for p in candidates) or 'nothing'})")


def version() -> str:
    """'Open vSwitch 3.1.0', from `ovs-vswitchd --version`."""
    proc = subprocess.run(
        ["ovs-vswitchd", "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    # "ovs-vswitchd (Open vSwitch) 3.1.0"
    return first.replace("ovs-vswitchd (Open vSwitch)", "Open vSwitch").strip() or "Open vSwitch"


class PrivateOvs:
    """ovsdb-server and ovs-vswitchd for one bridge, all state in `directory`, removed by stop()."""

    def __init__(self, directory: Path, namespace: str) -> None:
        self.directory = directory
        self.namespace = namespace  # where ovs-vswitchd runs, and so where its ports are created
        self.db_server: subprocess.Popen[bytes] | None = None
        self.vswitchd: subprocess.Popen[bytes] | None = None

    @property
    def db_socket(self) -> Path:
        return self.directory / "db.sock"

    @property
    def env(self) -> dict[str, str]:
        private = str(self.directory)
        dirs = ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR")
        return {**os.environ, **dict.fromkeys(dirs, private)}

    def _daemon_args(self, program: str) -> list[str]:
        d = self.directory
        return [
            f"--pidfile={d / program}.pid",
            f"--unixctl={d / program}.ctl",
            f"--log-file={d / program}.log",
            "--no-chdir",
            "-vconsole:off",  # the log file has it all; the console file keeps only a fatal start-up error
        ]

    def _spawn(self, argv: list[str], program: str) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{program}.out", "wb") as out:
            return subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    # --- starting ----------------------------------------------------------------------------------
    def start(self, tso: bool = True) -> None:
        """A fresh database, ovsdb-server on it, the global options, then ovs-vswitchd in the namespace.

        userspace-tso-enable is read once, when ovs-vswitchd first sees the configuration, so it is in
        the database before the daemon starts.
        """
        missing = [p for p in PROGRAMS if shutil.which(p) is None]
        if missing:
            raise OvsError(f"missing program(s): {', '.join(missing)}")
        self.directory.mkdir(parents=True)  # new per run: never an old database
        db = self.directory / "conf.db"
        self._command(["ovsdb-tool", "create", str(db), str(schema_path())])
        self.db_server = self._spawn(
            ["ovsdb-server", str(db), f"--remote=punix:{self.db_socket}", *self._daemon_args("ovsdb-server")],
            "ovsdb-server",
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.db_socket.exists():
            self._check_alive(self.db_server, "ovsdb-server")
            if time.monotonic() > deadline:
                raise OvsError(f"ovsdb-server made no socket within {START_TIMEOUT:g}s")
            time.sleep(POLL)
        settings = ["--", "set", "Open_vSwitch", ".", f"other_config:userspace-tso-enable={str(tso).lower()}"]
        self.vsctl("--no-wait", "init", *settings)
        argv = ["ip", "netns", "exec", self.namespace, "ovs-vswitchd", f"unix:{self.db_socket}"]
        self.vswitchd = self._spawn([*argv, *self._daemon_args("ovs-vswitchd")], "ovs-vswitchd")

    def configure(self, *commands: str) -> None:
        """One ovs-vsctl transaction, returning once ovs-vswitchd has applied it (or failing early if
        the daemon dies meanwhile, with its log)."""
        assert self.vswitchd is not None
        vsctl = subprocess.Popen(
            self._vsctl_argv(commands, START_TIMEOUT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT + 5
        try:
            while vsctl.poll() is None:
                self._check_alive(self.vswitchd, "ovs-vswitchd")
                if time.monotonic() > deadline:
                    raise OvsError(f"ovs-vswitchd did not apply the configuration within {START_TIMEOUT:g}s")
                time.sleep(POLL)
        finally:
            if vsctl.poll() is None:
                vsctl.kill()
            _, err = vsctl.communicate(timeout=COMMAND_TIMEOUT)
        if vsctl.returncode != 0:
            raise OvsError(f"ovs-vsctl exited {vsctl.returncode}: {err.decode(errors='replace').strip()}")

    def interfaces(self) -> dict[str, dict[str, object]]:
        """Interface name -> {ofport, error} as ovs-vswitchd recorded them in the database."""
        out = self.vsctl("--no-wait", "--format=json", "--columns=name,ofport,error", "list", "Interface")
        table = json.loads(out)
        rows: dict[str, dict[str, object]] = {}
        for name, ofport, error in table["data"]:
            # OVSDB JSON: a set is ["set", [...]] (empty: no value), a scalar is itself.
            rows[str(name)] = {"ofport": _scalar(ofport), "error": _scalar(error)}
        return rows

    def vsctl(self, *args: str) -> str:
        """ovs-vsctl against our database only; OvsError with its stderr when it fails."""
        return self._command(self._vsctl_argv(args, COMMAND_TIMEOUT))

    def _vsctl_argv(self, args: tuple[str, ...] | list[str], timeout: float) -> list[str]:
        return ["ovs-vsctl", f"--db=unix:{self.db_socket}", f"--timeout={timeout:g}", *args]

    def _command(self, argv: list[str]) -> str:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=COMMAND_TIMEOUT + 5,
            start_new_session=True,
        )
        if proc.returncode != 0:
            raise OvsError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def _check_alive(self, proc: subprocess.Popen[bytes], program: str) -> None:
        if proc.poll() is not None:
            raise OvsError(f"{program} exited {proc.returncode}: {self.log_tail(program)}")

    def log_tail(self, program: str, lines: int = 3) -> str:
        """The last warnings and errors of a daemon (its log, else its console output)."""
        for suffix in (".log", ".out"):
            try:
                text = (self.directory / f"{program}{suffix}").read_text(errors="replace")
            except OSError:
                continue
            serious = [
                line for line in text.splitlines() if "|WARN|" in line or "|ERR|" in line or "|EMER|" in line
            ]
            chosen = serious or [line for line in text.splitlines() if line.strip()]
            if chosen:
                return " / ".join(chosen[-lines:])
        return "(no log)"

    # --- stopping ----------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """ovs-vswitchd, then ovsdb-server: SIGTERM, SIGKILL at the deadline; then the directory."""
        problems: list[str] = []
        for proc, program in ((self.vswitchd, "ovs-vswitchd"), (self.db_server, "ovsdb-server")):
            if proc is not None:
                problems.extend(terminate(proc, program, STOP_TIMEOUT))
        problems.extend(self._stop_strays())
        shutil.rmtree(self.directory, ignore_errors=True)
        return problems

    def _stop_strays(self) -> list[str]:
        """A daemon whose Popen we never got back (a Ctrl-C between fork and return) is found by its
        pidfile, and killed only if its command line names our private directory."""
        problems: list[str] = []
        known = {p.pid for p in (self.vswitchd, self.db_server) if p is not None}
        for pidfile in self.directory.glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if pid in known or str(self.directory).encode() not in cmdline:
                continue
            os.kill(pid, signal.SIGKILL)
            problems.append(f"{pidfile.stem} pid {pid} was not ours to wait for; killed")
        return problems


def _scalar(value: object) -> object:
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        items = value[1]
        return items[0] if isinstance(items, list) and len(items) == 1 else None
    return value

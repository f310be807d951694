"""Debian's real DHCP clients and DNS tools, run inside network namespaces without touching the host.

Clients: busybox `udhcpc`, ISC `dhclient` (with Debian's /sbin/dhclient-script) and `dhcpcd` 9 (with
Debian's dhcpcd-run-hooks). DNS tools: `dig` and `getent` (glibc's resolver, so /etc/nsswitch.conf and
the namespace's resolv.conf apply).

Why `ip netns exec` alone is not safe
-------------------------------------
`ip netns exec NS` gives a new network namespace and a mount namespace with /sys remounted and every
file of /etc/netns/NS bind-mounted over /etc/FILE, and nothing else: the filesystem, /run, the UTS
hostname and the pid space are the host's. So, left alone:

- dhclient writes /var/lib/dhcp/dhclient*.leases and /run/dhclient*.pid, and dhclient-script writes
  /etc/resolv.conf through a temp file `$(readlink -f /etc/resolv.conf).dhclient-new.$$` in the host's
  /etc (it then `cat`s it over resolv.conf, "to handle binds (e.g. ip netns exec)", and removes it;
  a client killed mid-script leaves it behind). It calls `hostname NEW` when the host's name is empty,
  `(none)`, `localhost` or the previous lease's name, and its timesyncd exit hook rewrites
  /run/systemd/timesyncd.conf.d and restarts systemd-timesyncd when /run/systemd/system exists.
  `dhclient -r`/`-x` SIGTERM the pid in its pid file: a stale host pid file means killing a stranger.
- dhcpcd keeps its DUID, secret and leases in /var/lib/dhcpcd and its pid file and control sockets in
  /run/dhcpcd: `dhcpcd -n IF` in a namespace would talk to a host dhcpcd's socket. Its resolv.conf hook
  does `cat new > /etc/resolv.conf; chmod 644 /etc/resolv.conf`, its hostname hook writes
  /proc/sys/kernel/hostname, its timesyncd/chrony/ntp hooks write under /run.
- glibc's getent asks nscd (/run/nscd/socket) or systemd-resolved (/run/systemd/resolve) when they run
  on the host: answers from outside the namespace.

The arrangement (every client, helper and getent call)
-------------------------------------------------------
    ip netns exec NS unshare --mount --propagation private --uts sh -c WRAPPER ... CLIENT ARGV

`unshare --mount --propagation private` makes a second, private mount namespace, so nothing WRAPPER
mounts propagates anywhere; `--uts` gives the client its own hostname (a copy of the host's; set to
`hostname=` when given), so dhclient-script's and dhcpcd's hostname changes stay private. WRAPPER then:

1. mounts a tmpfs at STATE/ovl (STATE: a harness temp dir, `ClientState`), for overlay upper dirs;
2. binds the namespace's resolv.conf (/etc/netns/NS/resolv.conf, if the caller made one, see
   `namespace_resolv_conf`) over STATE/resolv.conf, a private file otherwise;
3. mounts an overlay on /etc (lower: the host's /etc, upper: the tmpfs): every write to /etc lands in
   the tmpfs (dhclient-script's temp file, dhcpcd's exit hook, anything), the host's /etc is read-only
   in effect. /etc/resolv.conf is replaced (in the upper dir) by a plain file and STATE/resolv.conf is
   bound over it, so the client's resolv.conf write reaches exactly the namespace's file (a bind mount:
   `cat >` works, `mv` onto it would fail with EBUSY; none of the three scripts used here does `mv`),
   and the other files of /etc/netns/NS are bound again over the overlay (read them, writes stay
   private), as ip netns exec had done;
4. mounts an overlay on /var/lib the same way and binds STATE/var-lib-dhcp and STATE/var-lib-dhcpcd
   over /var/lib/dhcp and /var/lib/dhcpcd (made in the overlay if the host has none): leases, DUID;
5. binds STATE/run over /run: pid files, dhcpcd's control sockets and hook state, the event log
   (below). The host's /run (nscd, systemd, /run/netns) is out of sight;
6. mounts a tmpfs on /tmp; sets the hostname if asked; `exec`s the client, whose pid is then the pid of
   our Popen (neither ip netns exec nor unshare fork).

STATE outlives one process: a later helper (`dhclient -r`, `dhcpcd -n`/`-N`/`-k`/`-U`) runs in a new
private mount namespace over the same STATE, so it finds the running client's pid file, lease file and
control socket (a unix socket works across mount namespaces). Nothing reaches the host's files; the
only host paths written are STATE (under the temp dir, removed by `ClientState.close`) and, through the
bind, /etc/netns/NS/resolv.conf when the caller made it. `HostFiles` snapshots the places that would
change if any of this leaked.

Scripts and events
------------------
dhclient and dhcpcd run their distro scripts (/sbin/dhclient-script, /usr/lib/dhcpcd/dhcpcd-run-hooks
and their hook directories) unchanged. Debian's busybox ships no /etc/udhcpc/default.script (the
separate `udhcpc` package does, for ifconfig); UDHCPC_SCRIPT here plays that script's role with
iproute2: address/prefix, MTU, default route, resolv.conf (domain, search, nameservers). To know when
a client has bound, renewed or released without guessing, a harness hook is added in the private
overlay (/etc/dhcp/dhclient-exit-hooks.d/zz-hx-events, appended to /etc/dhcpcd.exit-hook; the udhcpc
script logs itself): each script run appends `@@ REASON`, the client's variables and `@@.` to
/run/hx-events (STATE/run/hx-events). `Event` is one such run; one still being written (no `@@.` yet:
the lines come from several writes) is not read.

Processes
---------
Every client runs in the foreground (`udhcpc -f`, `dhclient -d`, `dhcpcd -B`) in its own session.
`Client.stop` SIGTERMs it and then SIGKILLs whatever is left of: its session, its descendants, and every
process in its private mount namespace (which only it and its children can be in: dhcpcd's privsep
helpers, hook scripts), then waits for it. Every wait has a deadline; nothing sleeps to synchronise.
Pid files in STATE are removed after a stop, so a later `dhclient -r` cannot signal a reused pid.
(dhcpcd's -n/-N/-k reach the daemon by signal through its pid file, not through the control socket,
when it runs for one interface; the same private /run/dhcpcd keeps both away from a host dhcpcd.)

Known limits: dhcpcd 9.4.1 with privsep prints nothing for `-U` (dump lease) without a running
manager, even with the lease on stdin, so dhcpcd's variables come from the event log instead.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, ip_address
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TypeVar

from pyroute2 import IPRoute

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
DEFAULT_TIMEOUT = 30.0  # a client's whole exchange (dhcpcd's ARP probe of the offered address takes ~5 s)
HELPER_TIMEOUT = 15.0  # one short helper process (dig, getent, dhclient -r, dhcpcd -n)
STOP_TIMEOUT = 5.0  # SIGTERM to SIGKILL
POLL = 0.05

ClientKind = Literal["udhcpc", "dhclient", "dhcpcd"]
T = TypeVar("T")


class ClientError(RuntimeError):
    """A client or tool failed or timed out; the message carries its output."""


def _poll(predicate: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    """predicate()'s first truthy value, polled until the deadline; ClientError(what()) then."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ClientError(f"timed out after {timeout:g}s: {what()}")
        time.sleep(POLL)


# --- host files ------------------------------------------------------------------------------------------
HOST_DIRS = (
    "/var/lib/dhcp", "/var/lib/dhcpcd", "/run/dhcpcd", "/etc/netns", "/etc/dhcp",
    "/run/systemd/timesyncd.conf.d", "/run/resolvconf", "/run/udhcpc",
)  # fmt: skip
HOST_FILES = (
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/dhcpcd.conf",
    "/etc/dhcpcd.exit-hook",
    "/etc/dhcpcd.enter-hook",
)
HOST_GLOBS = (("/etc", "resolv.conf.*"), ("/run", "dhclient*"), ("/run", "udhcpc*"), ("/run", "dhcpcd*"))
_CONTENT_LIMIT = 1 << 20  # keep (and diff) the bytes of files up to this size; hash the rest


@dataclass(frozen=True)
class FileState:
    kind: str  # file, dir, link, other
    mode: int
    ino: int
    mtime_ns: int
    size: int
    sha256: str
    content: bytes | None  # None: a directory, or too large to keep
    target: str = ""  # a symlink's target


def _file_state(path: Path) -> FileState:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return FileState(
            "link", st.st_mode, st.st_ino, st.st_mtime_ns, st.st_size, "", None, os.readlink(path)
        )
    if stat.S_ISDIR(st.st_mode):
        return FileState("dir", st.st_mode, st.st_ino, st.st_mtime_ns, 0, "", None)
    if not stat.S_ISREG(st.st_mode):
        return FileState("other", st.st_mode, st.st_ino, st.st_mtime_ns, st.st_size, "", None)
    data = path.read_bytes()
    keep = data if len(data) <= _CONTENT_LIMIT else None
    return FileState(
        "file", st.st_mode, st.st_ino, st.st_mtime_ns, len(data), hashlib.sha256(data).hexdigest(), keep
    )


@dataclass(frozen=True)
class HostFiles:
    """What the host's DHCP/DNS client files look like: /etc/resolv.conf (bytes, inode, mtime, mode),
    every file under /var/lib/dhcp, /var/lib/dhcpcd, /run/dhcpcd, /etc/netns, /etc/dhcp and the like,
    /etc/resolv.conf.*, /run/dhclient*, and the kernel hostname. Only what exists is listed (a directory
    appearing is a change too)."""

    files: Mapping[str, FileState]
    hostname: str

    @classmethod
    def take(cls, *, extra: Iterable[str | Path] = (), exclude: Collection[str | Path] = ()) -> HostFiles:
        """Snapshot now. extra: more files or directories (recursively) to watch; exclude: path prefixes
        to leave out (a test's own /etc/netns/NS while it exists)."""
        skip = [str(p).rstrip("/") for p in exclude]
        seen: dict[str, FileState] = {}

        def add(path: Path) -> None:
            name = str(path)
            if any(name == s or name.startswith(s + "/") for s in skip):
                return
            try:
                state = _file_state(path)
            except FileNotFoundError:
                return
            seen[name] = state
            if state.kind == "dir":
                try:
                    children = sorted(path.iterdir())
                except FileNotFoundError:
                    return
                for child in children:
                    add(child)

        for name in (*HOST_FILES, *HOST_DIRS, *map(str, extra)):
            add(Path(name))
        for directory, pattern in HOST_GLOBS:
            for path in sorted(Path(directory).glob(pattern)):
                add(path)
        return cls(dict(sorted(seen.items())), socket.gethostname())

    def only(self, keep: Callable[[str], bool]) -> HostFiles:
        """The snapshot without the paths keep() rejects (another test's /etc/netns/NS, say)."""
        return HostFiles({k: v for k, v in self.files.items() if keep(k)}, self.hostname)

    def diff(self, before: HostFiles) -> list[str]:
        """Human-readable differences from `before` (empty: unchanged)."""
        lines: list[str] = []
        if self.hostname != before.hostname:
            lines.append(f"hostname: {before.hostname!r} -> {self.hostname!r}")
        for path in sorted(before.files.keys() - self.files.keys()):
            lines.append(f"removed: {path}")
        for path in sorted(self.files.keys() - before.files.keys()):
            now = self.files[path]
            shown = f" ({now.content[:200]!r})" if now.content is not None else ""
            lines.append(f"added: {path} [{now.kind}]{shown}")
        for path in sorted(self.files.keys() & before.files.keys()):
            old, new = before.files[path], self.files[path]
            if old == new:
                continue
            if old.kind == new.kind == "dir" and old.mode == new.mode and old.ino == new.ino:
                continue  # a directory's mtime follows its entries, which are compared one by one
            what = [
                f"{label} {a} -> {b}"
                for label, a, b in (
                    ("kind", old.kind, new.kind), ("mode", oct(old.mode), oct(new.mode)),
                    ("inode", old.ino, new.ino), ("mtime_ns", old.mtime_ns, new.mtime_ns),
                    ("size", old.size, new.size), ("target", old.target, new.target),
                )
                if a != b
            ]  # fmt: skip
            lines.append(f"changed: {path}: {', '.join(what) or 'content'}")
            if old.content is not None and new.content is not None and old.content != new.content:
                a = old.content.decode(errors="replace").splitlines()
                b = new.content.decode(errors="replace").splitlines()
                lines.extend("    " + d for d in difflib.unified_diff(a, b, "before", "after", lineterm=""))
        return lines

    def assert_unchanged(self, before: HostFiles | None = None) -> None:
        """Raise AssertionError listing every difference between `before` and now.

        Two spellings: `before.assert_unchanged()` (compare with a fresh snapshot, same extra/exclude
        as the defaults) and `HostFiles.take(...).assert_unchanged(before)`."""
        now, then = (self, before) if before is not None else (HostFiles.take(), self)
        changes = now.diff(then)
        if changes:
            raise AssertionError("host files changed:\n  " + "\n  ".join(changes))


def assert_unchanged(
    before: HostFiles, *, extra: Iterable[str | Path] = (), exclude: Collection[str | Path] = ()
) -> None:
    """Take a snapshot now (with the same extra/exclude as `before`'s) and fail on any difference."""
    HostFiles.take(extra=extra, exclude=exclude).assert_unchanged(before)


# --- namespaces ------------------------------------------------------------------------------------------
def check_namespace(ns: str, ifname: str | None = None) -> None:
    """Refuse a name that is not a named namespace, or that is the host's own network namespace (a
    /run/netns entry bound to init's): a DHCP client there would configure the real interfaces."""
    if not ns or "/" in ns or ns in (".", ".."):
        raise ClientError(f"not a namespace name: {ns!r}")
    path = NETNS_DIR / ns
    try:
        ino = path.stat().st_ino
    except FileNotFoundError:
        raise ClientError(f"no namespace {ns!r} in {NETNS_DIR}") from None
    for own in ("/proc/1/ns/net", "/proc/self/ns/net"):
        try:
            same = os.stat(own).st_ino == ino
        except OSError:  # /proc/1 may be out of reach (a container's init); our own is the one that counts
            continue
        if same:
            raise ClientError(f"namespace {ns!r} is the host's network namespace ({own}): refusing")
    if ifname is not None:
        with IPRoute(netns=ns) as ipr:
            if not ipr.link_lookup(ifname=ifname):
                raise ClientError(f"no interface {ifname!r} in namespace {ns!r}")


def netns_resolv_conf_path(ns: str) -> Path:
    return ETC_NETNS / ns / "resolv.conf"


@contextlib.contextmanager
def namespace_resolv_conf(ns: str, content: str = "") -> Iterator[Path]:
    """/etc/netns/NS/resolv.conf for the block: what `ip netns exec NS` shows as /etc/resolv.conf (so
    getent and the clients' scripts see and write the namespace's own). Removed afterwards, with
    /etc/netns/NS and /etc/netns when this made them and they are empty."""
    check_namespace(ns)
    path = netns_resolv_conf_path(ns)
    if path.exists():
        raise ClientError(f"{path} exists already: not ours to replace")
    made = [d for d in (ETC_NETNS, path.parent) if not d.exists()]
    for d in made:
        d.mkdir(mode=0o755)
    try:
        path.write_text(content)
        path.chmod(0o644)
        yield path
    finally:
        path.unlink(missing_ok=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


# --- the private mount namespace ----------------------------------------------------------------------------
WRAPPER = r"""
set -eu
S=$1 NS=$2 NSRESOLV=$3 NAME=$4
shift 4
mount -t tmpfs -o mode=0700,size=16m hx-ovl "$S/ovl"
mkdir "$S/ovl/etc" "$S/ovl/etc.work" "$S/ovl/lib" "$S/ovl/lib.work"
[ -z "$NSRESOLV" ] || mount --bind "$NSRESOLV" "$S/resolv.conf"
mount -t overlay hx-etc -o "lowerdir=/etc,upperdir=$S/ovl/etc,workdir=$S/ovl/etc.work" /etc
rm -f /etc/resolv.conf
: > /etc/resolv.conf
mount --bind "$S/resolv.conf" /etc/resolv.conf
if [ -d "/etc/netns/$NS" ]; then
    for f in "/etc/netns/$NS"/*; do
        b=${f##*/}
        if [ -f "$f" ] && [ "$b" != resolv.conf ]; then
            [ -e "/etc/$b" ] || : > "/etc/$b"
            mount --bind "$f" "/etc/$b"
        fi
    done
fi
mount -t overlay hx-varlib -o "lowerdir=/var/lib,upperdir=$S/ovl/lib,workdir=$S/ovl/lib.work" /var/lib
mkdir -p /var/lib/dhcp /var/lib/dhcpcd
mount --bind "$S/var-lib-dhcp" /var/lib/dhcp
mount --bind "$S/var-lib-dhcpcd" /var/lib/dhcpcd
mount --bind "$S/run" /run
mkdir -p /etc/dhcp/dhclient-exit-hooks.d
cp /run/hx-hook.sh /etc/dhcp/dhclient-exit-hooks.d/zz-hx-events
cat /run/hx-hook.sh >> /etc/dhcpcd.exit-hook
mount -t tmpfs -o mode=1777,size=16m hx-tmp /tmp
[ -z "$NAME" ] || printf '%s\n' "$NAME" > /proc/sys/kernel/hostname
exec "$@"
"""

# Sourced by dhclient-script (exit hook) and dhcpcd-run-hooks (exit hook): one event per script run.
EVENT_HOOK = r"""
# vswitch test harness: log this script run (private overlay copy; not on the host)
{
    printf '@@ %s\n' "$reason"
    env | grep -E '^(interface|reason|new_|old_|requested_|medium)' || :
    printf '@@.\n'
} >> /run/hx-events 2>/dev/null || :
"""

# udhcpc's script: the role of the `udhcpc` package's /etc/udhcpc/default.script, with iproute2.
UDHCPC_SCRIPT = r"""#!/bin/sh
# vswitch test harness udhcpc script: address/prefix, mtu, default route, resolv.conf; logs each event.
log_event() {
    {
        printf '@@ %s\n' "$1"
        env | grep -E '^(interface|ip|mask|subnet|broadcast|router|dns|domain|search|hostname|mtu)=' || :
        env | grep -E '^(lease|serverid|message|siaddr|sname|boot_file|staticroutes|opt[0-9]+)=' || :
        printf '@@.\n'
    } >> /run/hx-events
}
case "$1" in
    deconfig)
        ip link set dev "$interface" up
        ip -4 addr flush dev "$interface"
        ip -4 route flush dev "$interface"
        ;;
    bound|renew)
        [ -z "${mtu:-}" ] || ip link set dev "$interface" mtu "$mtu"
        [ "$1" = renew ] || ip -4 addr flush dev "$interface"
        ip -4 addr replace "$ip/${mask:-32}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        router=${router%% *}
        if [ -n "$router" ]; then
            onlink=
            [ "${mask:-32}" != 32 ] || onlink=onlink
            ip -4 route replace default via "$router" dev "$interface" $onlink
        fi
        if [ -n "${dns:-}${domain:-}${search:-}" ]; then
            {
                [ -z "${domain:-}" ] || echo "domain $domain"
                [ -z "${search:-}" ] || echo "search $search"
                for s in ${dns:-}; do echo "nameserver $s"; done
            } > /etc/resolv.conf
        fi
        ;;
esac
log_event "$1"
exit 0
"""


class ClientState:
    """A client's private files, on the host side: a temp dir seen inside as /run (STATE/run),
    /var/lib/dhcp and /var/lib/dhcpcd, plus the private resolv.conf used when the namespace has none.
    Share one between calls to keep a lease (and dhcpcd's DUID) across runs; close() removes it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="hx-dhcp-"))
        for sub in ("run", "var-lib-dhcp", "var-lib-dhcpcd", "ovl"):
            (self.path / sub).mkdir(mode=0o755)
        (self.path / "resolv.conf").write_text("")
        (self.path / "run" / "hx-hook.sh").write_text(EVENT_HOOK)
        script = self.path / "run" / "hx-udhcpc.script"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        (self.path / "run" / "hx-events").write_text("")

    @property
    def run(self) -> Path:
        return self.path / "run"

    def events(self) -> list[Event]:
        try:
            text = (self.run / "hx-events").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_events(text)

    def remove_pid_files(self) -> None:
        for path in [*self.run.glob("*.pid"), *(self.run / "dhcpcd").glob("*.pid")]:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> ClientState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wrapped(ns: str, state: ClientState, argv: Sequence[str], hostname: str | None = None) -> list[str]:
    """The argv that runs `argv` in ns inside the private mount and UTS namespace over state."""
    nsresolv = netns_resolv_conf_path(ns)
    return [
        "ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "--uts",
        "sh", "-c", WRAPPER, "hx-wrap", str(state.path), ns, str(nsresolv) if nsresolv.is_file() else "",
        hostname or "", *argv,
    ]  # fmt: skip


# --- processes ----------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, session) of pid, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def _mntns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _family(leader: int, mntns: str | None) -> set[int]:
    """Live processes that are `leader`'s: its session, its descendants, its private mount namespace."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            table[int(entry)] = info
    ours = {pid for pid, (_, _, sid) in table.items() if sid == leader}
    if leader in table:
        ours.add(leader)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    if mntns is not None and mntns != _mntns(os.getpid()):
        ours |= {pid for pid in table if _mntns(pid) == mntns}
    ours.discard(os.getpid())
    return ours


def _kill_family(leader: int, mntns: str | None) -> None:
    for pid in _family(leader, mntns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_bounded(
    argv: Sequence[str], timeout: float, what: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """argv in its own session, bounded in time; on timeout the session is killed and ClientError raised
    with its output; when check, a nonzero exit raises too. Leftovers of the session are killed."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_family(proc.pid, None)
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
        raise ClientError(
            f"{what}: timed out after {timeout:g}s\nstdout: {out.strip()}\nstderr: {err.strip()}"
        ) from None
    finally:
        if proc.returncode is not None:
            _kill_family(
                proc.pid, None
            )  # a leftover in its session (the pid is not reused while it is a sid)
    if check and proc.returncode != 0:
        raise ClientError(f"{what}: exited {proc.returncode}\nstdout: {out.strip()}\nstderr: {err.strip()}")
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


# --- events and results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One run of the client's script: reason (udhcpc: deconfig/bound/renew/leasefail/nak; dhclient and
    dhcpcd: PREINIT, BOUND, RENEW, REBIND, REBOOT, RELEASE, EXPIRE, FAIL, STOP, ...) and its variables."""

    reason: str
    env: Mapping[str, str]


def parse_events(text: str) -> list[Event]:
    """The events of an event log. The last one counts once its `@@.` is there (a script writes its
    lines in several writes: read too early, its variables would be missing); an earlier one without
    it (its script was killed) counts as it is, since another began after it."""
    events: list[Event] = []
    reason: str | None = None
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line == "@@.":
            if reason is not None:
                events.append(Event(reason, env))
            reason, env = None, {}
        elif line.startswith("@@ "):
            if reason is not None:
                events.append(Event(reason, env))
            reason, env = line[3:].strip(), {}
        elif reason is not None and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return events


BOUND_REASONS: Mapping[ClientKind, frozenset[str]] = {
    "udhcpc": frozenset({"bound", "renew"}),
    "dhclient": frozenset({"BOUND", "RENEW", "REBIND", "REBOOT"}),
    "dhcpcd": frozenset({"BOUND", "RENEW", "REBIND", "REBOOT", "STATIC"}),
}
RELEASE_REASONS: Mapping[ClientKind, frozenset[str]] = {
    "udhcpc": frozenset({"deconfig"}),
    "dhclient": frozenset({"RELEASE"}),
    "dhcpcd": frozenset(
        {"RELEASE", "STOP"}
    ),  # -k in one-interface mode: "releasing lease", then STOP, STOPPED
}


@dataclass(frozen=True)
class ResolvConf:
    nameservers: list[str]
    domain: str | None
    search: list[str]


def parse_resolv_conf(text: str) -> ResolvConf:
    servers: list[str] = []
    domain: str | None = None
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
        elif len(words) >= 2 and words[0] == "domain":
            domain = words[1]
        elif words and words[0] == "search":
            search = words[1:]
    return ResolvConf(servers, domain, search)


@dataclass(frozen=True)
class DhcpResult:
    """What the namespace looks like after a client ran: the kernel's view (address, default route, link
    MTU, the address's valid lifetime), the namespace's resolv.conf as a process inside sees it, and what
    the client itself reported (its last bound event, its lease file)."""

    client: ClientKind
    ifname: str
    address: IPv4Interface | None  # the leased address on ifname (else the first, not 169.254/16)
    addresses: list[IPv4Interface]
    router: IPv4Address | None  # the main table's default route via ifname
    mtu: int  # the link's MTU (udhcpc's script and dhclient-script set it from option 26)
    route_mtu: int | None  # the default route's mtu metric (dhcpcd 9 puts option 26 there, not on the link)
    valid_lft: int | None  # the kernel's remaining valid lifetime of `address` (None: forever)
    dns: list[str]
    domain: str | None
    search: list[str]
    resolv_conf: str
    lease_time: int | None  # as the client reported it (option 51)
    server_id: IPv4Address | None  # option 54, as the client reported it
    reported: Mapping[str, str]  # the client's own variables for the lease (names as its script sees them)
    events: list[Event] = field(default_factory=list)
    output: str = ""


@dataclass(frozen=True)
class KernelView:
    addresses: list[tuple[IPv4Interface, int | None]]  # with the remaining valid lifetime (None: forever)
    router: IPv4Address | None
    mtu: int
    route_mtu: int | None


def kernel_view(ns: str, ifname: str) -> KernelView:
    """ifname's IPv4 addresses, the main table's default route via it (and its mtu metric), and the link
    MTU, in ns, by netlink."""
    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise ClientError(f"no interface {ifname!r} in namespace {ns!r}")
        index = found[0]
        mtu = int(ipr.get_links(index)[0].get("IFLA_MTU"))
        addresses: list[tuple[IPv4Interface, int | None]] = []
        for msg in ipr.get_addr(family=socket.AF_INET, index=index):
            local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            cache = msg.get("IFA_CACHEINFO")
            valid = cache.get("ifa_valid") if cache is not None else None
            addresses.append(
                (
                    IPv4Interface(f"{local}/{msg['prefixlen']}"),
                    None if valid in (None, 0xFFFFFFFF) else int(valid),
                )
            )
        router, route_mtu = None, None
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            if route["dst_len"] == 0 and route.get("RTA_OIF") == index and route.get("RTA_GATEWAY"):
                router = IPv4Address(route.get("RTA_GATEWAY"))
                metrics = route.get("RTA_METRICS")
                route_mtu = metrics.get("RTAX_MTU") if metrics is not None else None
                break
    return KernelView(addresses, router, mtu, int(route_mtu) if route_mtu else None)


def namespace_resolv_conf_text(ns: str, state: ClientState | None = None) -> str:
    """The namespace's /etc/resolv.conf as `ip netns exec NS cat /etc/resolv.conf` shows it, when
    /etc/netns/NS/resolv.conf exists; else (no such file: it would be the host's) the private copy the
    client wrote in state."""
    if netns_resolv_conf_path(ns).is_file() or state is None:
        if not netns_resolv_conf_path(ns).is_file():
            return ""
        return run_bounded(
            ["ip", "netns", "exec", ns, "cat", "/etc/resolv.conf"], HELPER_TIMEOUT, "cat resolv.conf"
        ).stdout
    return (state.path / "resolv.conf").read_text()


_REPORTED_KEYS: Mapping[ClientKind, tuple[str, str]] = {  # (lease time, server id) in the client's vars
    "udhcpc": ("lease", "serverid"),
    "dhclient": ("new_dhcp_lease_time", "new_dhcp_server_identifier"),
    "dhcpcd": ("new_dhcp_lease_time", "new_dhcp_server_identifier"),
}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def read_result(client: ClientKind, ns: str, ifname: str, state: ClientState, output: str = "") -> DhcpResult:
    """A DhcpResult for ns/ifname now: the kernel, the namespace's resolv.conf, the client's last lease."""
    events = state.events()
    bound = [e for e in events if e.reason in BOUND_REASONS[client]]
    reported = dict(bound[-1].env) if bound else {}
    if client == "dhclient":
        reported.update({f"lease:{k}": v for k, v in dhclient_lease(state, ifname).items()})
    view = kernel_view(ns, ifname)
    usable = [(a, lft) for a, lft in view.addresses if not a.ip.is_link_local]
    leased = reported.get("ip" if client == "udhcpc" else "new_ip_address")
    usable.sort(key=lambda pair: str(pair[0].ip) != leased)  # the client's own address first
    resolv = namespace_resolv_conf_text(ns, state)
    parsed = parse_resolv_conf(resolv)
    lease_key, server_key = _REPORTED_KEYS[client]
    server = reported.get(server_key)
    return DhcpResult(
        client=client, ifname=ifname,
        address=usable[0][0] if usable else None, addresses=[a for a, _ in view.addresses],
        router=view.router, mtu=view.mtu, route_mtu=view.route_mtu,
        valid_lft=usable[0][1] if usable else None,
        dns=parsed.nameservers, domain=parsed.domain, search=parsed.search, resolv_conf=resolv,
        lease_time=_int(reported.get(lease_key)), server_id=IPv4Address(server) if server else None,
        reported=reported, events=events, output=output,
    )  # fmt: skip


def dhclient_lease(state: ClientState, ifname: str) -> dict[str, str]:
    """The last lease in dhclient's lease file, flattened (`option NAME VALUE;` -> NAME: VALUE)."""
    try:
        text = (state.path / "var-lib-dhcp" / f"dhclient.{ifname}.leases").read_text()
    except FileNotFoundError:
        return {}
    blocks = re.findall(r"lease \{(.*?)\}", text, re.S)
    if not blocks:
        return {}
    out: dict[str, str] = {}
    for line in blocks[-1].splitlines():
        line = line.strip().rstrip(";")
        if line.startswith("option "):
            _, name, value = [*line.split(None, 2), ""][:3]
            out[name] = value.strip('"')
        elif line:
            key, _, value = line.partition(" ")
            out[key] = value.strip('"')
    return out


# --- clients ------------------------------------------------------------------------------------------------
CLIENT_COMMS = {"udhcpc": ("busybox", "udhcpc"), "dhclient": ("dhclient",), "dhcpcd": ("dhcpcd",)}


def udhcpc_argv(
    ifname: str,
    *,
    hostname: str | None,
    fqdn: str | None,
    oneshot: bool,
    timeout: float,
    request: Sequence[str],
) -> list[str]:
    tries = max(1, int(timeout) // 2)
    argv = [
        "busybox",
        "udhcpc",
        "-f",
        "-i",
        ifname,
        "-s",
        "/run/hx-udhcpc.script",
        "-t",
        str(tries),
        "-T",
        "2",
    ]
    argv += ["-q", "-n"] if oneshot else ["-A", "2"]
    if hostname:
        argv += ["-x", f"hostname:{hostname}"]
    if fqdn:
        argv += ["-F", fqdn]
    for option in request:
        argv += ["-O", option]
    return argv


def dhclient_argv(ifname: str, *extra: str) -> list[str]:
    """dhclient in the foreground (-d), verbose, with its pid and lease files named per interface in the
    private state (what Debian's ifupdown passes), the distro's /etc/dhcp/dhclient.conf and script."""
    return [
        "dhclient", "-4", "-d", "-v", *extra,
        "-pf", f"/run/dhclient.{ifname}.pid", "-lf", f"/var/lib/dhcp/dhclient.{ifname}.leases", ifname,
    ]  # fmt: skip


def dhcpcd_argv(ifname: str, *extra: str, hostname: str | None = None, fqdn: bool = False) -> list[str]:
    """dhcpcd for DHCPv4 only (-4: no RS, no DHCPv6), no IPv4LL fallback (-L), in the foreground (-B),
    with the distro's /etc/dhcpcd.conf and hooks."""
    argv = ["dhcpcd", "-4", "-L", "-B", *extra]
    if hostname:
        argv += ["-h", hostname]
    if fqdn:
        argv += ["-F", "both"]
    return [*argv, ifname]


class Client:
    """A kept-running DHCP client in ns (see the module docstring for how it is contained).

    result() waits for its first lease; renew(), rebind(), release() act the way its users would and
    wait for the script event that follows; stop() (also on leaving a with block) always reaps it and
    everything it started, without releasing; close() also removes the state it owns."""

    def __init__(
        self,
        kind: ClientKind,
        ns: str,
        ifname: str,
        argv: Sequence[str],
        *,
        state: ClientState | None = None,
        hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        check_namespace(ns, ifname)
        self.kind: ClientKind = kind
        self.ns, self.ifname, self.hostname, self.timeout = ns, ifname, hostname, timeout
        self.owns_state = state is None
        self.state = state if state is not None else ClientState()
        self.argv = list(argv)
        self._logs: list[Path] = []
        self._out = self._new_log()
        self._seen = self._started = len(self.state.events())  # events before this client ran
        self._mntns: str | None = None
        self.proc = subprocess.Popen(
            wrapped(ns, self.state, self.argv, hostname), stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    # views
    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        self._note_mntns()
        return self.proc.poll() is None

    def _new_log(self) -> BinaryIO:
        path = self.state.path / f"{self.kind}.{os.getpid()}.{time.monotonic_ns()}.out"
        self._logs.append(path)
        return path.open("wb")

    def output(self) -> str:
        """What the client printed (every run of it, for dhclient's renew-by-restart)."""
        if not self._out.closed:
            self._out.flush()
        return "".join(p.read_bytes().decode(errors="replace") for p in self._logs if p.exists())

    def events(self) -> list[Event]:
        return self.state.events()

    def _note_mntns(self) -> None:
        """Remember the client's private mount namespace once it runs the client binary."""
        if self._mntns is None and self.proc.poll() is None:
            try:
                comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
            except (FileNotFoundError, ProcessLookupError):
                return
            if comm in CLIENT_COMMS[self.kind]:
                self._mntns = _mntns(self.pid)

    def _describe(self, what: str) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited {code}"
        reasons = [e.reason for e in self.events()]
        return f"{self.kind} in {self.ns} ({what}; {state}; events {reasons}):\n{self.output().strip()}"

    def wait_event(
        self,
        reasons: Collection[str],
        *,
        after: int | None = None,
        timeout: float | None = None,
        exit_ok: bool = False,
    ) -> Event:
        """The first script event with a reason in `reasons` past index `after` (default: the events seen
        when the client started or last acted); ClientError with its output at the deadline or if it exits
        (unless exit_ok: a one-shot client exits after its last event)."""
        start = self._seen if after is None else after

        def found() -> Event | None:
            self._note_mntns()
            code = self.proc.poll()
            for event in self.events()[start:]:
                if event.reason in reasons:
                    return event
            if code is not None and not exit_ok:
                raise ClientError(self._describe(f"exited while waiting for {sorted(reasons)}"))
            if code is not None:
                raise ClientError(self._describe(f"exited without {sorted(reasons)}"))
            return None

        event = _poll(
            found,
            self.timeout if timeout is None else timeout,
            lambda: self._describe(f"waiting for {sorted(reasons)}"),
        )
        self._seen = len(self.events())
        return event

    def result(self, timeout: float | None = None) -> DhcpResult:
        """Wait for the first lease (a bound event) and read the namespace."""
        if not any(e.reason in BOUND_REASONS[self.kind] for e in self.events()[self._started : self._seen]):
            self.wait_event(BOUND_REASONS[self.kind], after=self._started, timeout=timeout)
        return read_result(self.kind, self.ns, self.ifname, self.state, self.output())

    def helper(
        self, argv: Sequence[str], what: str, timeout: float = HELPER_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """argv in a fresh private mount namespace over this client's state (its pid file, lease, socket)."""
        return run_bounded(
            wrapped(self.ns, self.state, argv, self.hostname), timeout, f"{what} in {self.ns}", check
        )

    # actions
    def renew(self, timeout: float | None = None) -> Event:
        """A renewal the client's users would trigger, and the script event that follows it.

        udhcpc: SIGUSR1 (RENEWING: a unicast DHCPREQUEST to the server; busybox 1.35 can lose an instant
        ACK to its own short-lived send socket bound to ciaddr:68, and then broadcasts the renew, ciaddr
        set, after -T seconds). dhcpcd: `dhcpcd -N IF` (it finds the daemon by the pid file in the private
        /run/dhcpcd and sends it SIGUSR1: RENEWING, unicast, event RENEW). dhclient has no renew command:
        it is stopped without a release (SIGTERM, what `dhclient -x` sends) and started again over the same
        lease file, so it sends a broadcast INIT-REBOOT DHCPREQUEST for the lease (event REBOOT)."""
        self._require_alive("renew")
        start = len(self.events())
        if self.kind == "udhcpc":
            os.kill(self.pid, signal.SIGUSR1)
        elif self.kind == "dhcpcd":
            self.helper(dhcpcd_argv(self.ifname, "-N"), "dhcpcd -N")
        else:
            self._restart()
        return self.wait_event(BOUND_REASONS[self.kind], after=start, timeout=timeout)

    def rebind(self, timeout: float | None = None) -> Event:
        """dhcpcd only: `dhcpcd -n IF` against this running instance (SIGHUP by the pid file: reload and
        rebind, a broadcast DHCPREQUEST with ciaddr set, event RENEW); other clients: renew()."""
        if self.kind != "dhcpcd":
            return self.renew(timeout)
        self._require_alive("rebind")
        start = len(self.events())
        self.helper(dhcpcd_argv(self.ifname, "-n"), "dhcpcd -n")
        return self.wait_event(BOUND_REASONS[self.kind], after=start, timeout=timeout)

    def release(self, timeout: float | None = None) -> Event:
        """Release the lease (a DHCPRELEASE, unicast to the server) and deconfigure, as its users would:
        udhcpc SIGUSR2 (it stays running, idle), `dhclient -r IF` (signals the running dhclient through
        the pid file, then releases; the running one exits), `dhcpcd -k IF` (SIGALRM by the pid file:
        the daemon releases, runs STOP and STOPPED, and exits). Returns the script event that follows."""
        self._require_alive("release")
        start = len(self.events())
        if self.kind == "udhcpc":
            os.kill(self.pid, signal.SIGUSR2)
        elif self.kind == "dhcpcd":
            self.helper(dhcpcd_argv(self.ifname, "-k"), "dhcpcd -k")
        else:
            self.helper(dhclient_argv(self.ifname, "-r"), "dhclient -r", timeout=timeout or HELPER_TIMEOUT)
        return self.wait_event(RELEASE_REASONS[self.kind], after=start, timeout=timeout, exit_ok=True)

    def _require_alive(self, what: str) -> None:
        if not self.alive():
            raise ClientError(self._describe(f"cannot {what}: not running"))

    def _restart(self) -> None:
        self.stop()
        self._out = self._new_log()
        self._mntns = None
        self._started = len(self.events())
        self.proc = subprocess.Popen(
            wrapped(self.ns, self.state, self.argv, self.hostname), stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (no release: udhcpc, dhclient and Debian's dhcpcd, `persistent`, leave the address),
        then SIGKILL to anything of its family left after timeout; reaped either way. Idempotent."""
        self._note_mntns()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        _kill_family(self.pid, self._mntns)
        self.proc.wait(timeout)
        with contextlib.suppress(ClientError):
            _poll(lambda: not _family(self.pid, self._mntns), timeout, lambda: "leftover processes")
        self.state.remove_pid_files()
        self._out.close()

    def close(self) -> None:
        self.stop()
        if self.owns_state:
            self.state.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_udhcpc(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    fqdn: str | None = None,
    request: Sequence[str] = (),
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """busybox udhcpc kept running (-f, no -q): renew() = SIGUSR1, release() = SIGUSR2, stop() = SIGTERM.
    hostname: option 12 (`-x hostname:NAME`); fqdn: option 81 (`-F NAME`); request: extra options to
    ask for (`-O mtu`...: udhcpc does not ask for the MTU unless told)."""
    argv = udhcpc_argv(ifname, hostname=hostname, fqdn=fqdn, oneshot=False, timeout=timeout, request=request)
    return Client("udhcpc", ns, ifname, argv, state=state, hostname=hostname, timeout=timeout)


def start_dhclient(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """ISC dhclient kept running in the foreground (`-d -v`). It sends option 12 from gethostname()
    (Debian's dhclient.conf: `send host-name = gethostname()`), so hostname= sets the private UTS name;
    None leaves the host's name, which it then sends."""
    return Client(
        "dhclient", ns, ifname, dhclient_argv(ifname), state=state, hostname=hostname, timeout=timeout
    )


def start_dhcpcd(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    fqdn: bool = False,
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """dhcpcd kept running (`-4 -L -B`): renew() = `dhcpcd -N`, rebind() = `dhcpcd -n`, release() =
    `dhcpcd -k`, all through its control socket in the private /run/dhcpcd. Debian's dhcpcd.conf sends
    no hostname; hostname= adds `-h NAME` (option 12), fqdn adds `-F both` (option 81)."""
    argv = dhcpcd_argv(ifname, "-t", str(max(1, int(timeout))), hostname=hostname, fqdn=fqdn)
    return Client("dhcpcd", ns, ifname, argv, state=state, hostname=hostname, timeout=timeout)


def _oneshot(client: Client, *, keep: bool) -> DhcpResult:
    """Wait for the lease; then (keep) stop a client that does not exit by itself, without releasing, or
    wait for a one-shot client to exit 0. The state is kept when the caller passed one."""
    try:
        client.result()
        if keep:
            client.stop()
        else:
            _poll(lambda: client.proc.poll() is not None, client.timeout, lambda: client._describe("exiting"))
            if client.proc.returncode != 0:
                raise ClientError(client._describe("one-shot run failed"))
        return read_result(client.kind, client.ns, client.ifname, client.state, client.output())
    finally:
        client.close()


def run_udhcpc(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    fqdn: str | None = None,
    request: Sequence[str] = (),
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DhcpResult:
    """One-shot `udhcpc -f -q -n`: exits once bound (the address stays), fails when no lease comes."""
    argv = udhcpc_argv(ifname, hostname=hostname, fqdn=fqdn, oneshot=True, timeout=timeout, request=request)
    return _oneshot(
        Client("udhcpc", ns, ifname, argv, state=state, hostname=hostname, timeout=timeout), keep=False
    )


def run_dhclient(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DhcpResult:
    """One-shot dhclient: `-1 -d -v` (try once), then stopped without a release (SIGTERM: the address
    stays). ISC dhclient has no exit-after-bind mode (`-1` only means "give up after one try"). Pass a
    state to `release_dhclient` it later."""
    argv = dhclient_argv(ifname, "-1")
    return _oneshot(
        Client("dhclient", ns, ifname, argv, state=state, hostname=hostname, timeout=timeout), keep=True
    )


def release_dhclient(
    ns: str, ifname: str, state: ClientState, *, hostname: str | None = None, timeout: float = HELPER_TIMEOUT
) -> Event:
    """`dhclient -r IF` over the lease in state (a one-shot run's): a DHCPRELEASE, then the script's
    RELEASE (the address goes)."""
    check_namespace(ns, ifname)
    state.remove_pid_files()  # no running dhclient of ours: nothing for -r to signal
    start = len(state.events())
    proc = run_bounded(
        wrapped(ns, state, dhclient_argv(ifname, "-r"), hostname), timeout, f"dhclient -r in {ns}"
    )
    for event in state.events()[start:]:
        if event.reason in RELEASE_REASONS["dhclient"]:
            return event
    raise ClientError(f"dhclient -r ran no RELEASE event:\n{proc.stdout}{proc.stderr}")


def run_dhcpcd(
    ns: str,
    ifname: str,
    *,
    hostname: str | None = None,
    fqdn: bool = False,
    state: ClientState | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> DhcpResult:
    """One-shot `dhcpcd -4 -L -B -1 -t T IF`: exits once bound; Debian's `persistent` keeps the address."""
    argv = dhcpcd_argv(ifname, "-1", "-t", str(max(1, int(timeout))), hostname=hostname, fqdn=fqdn)
    return _oneshot(
        Client("dhcpcd", ns, ifname, argv, state=state, hostname=hostname, timeout=timeout), keep=False
    )


# --- DNS tools ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DigStatus:
    rcode: str  # NOERROR, NXDOMAIN, REFUSED, SERVFAIL, ...
    flags: frozenset[str]  # qr aa tc rd ra ad cd
    answers: list[str]  # answer-section records, one line each (name ttl class type rdata)
    output: str

    @property
    def truncated(self) -> bool:
        return "tc" in self.flags


def _dig_argv(
    ns: str,
    name: str,
    server: str,
    type: str,
    reverse: bool,
    tcp: bool,
    port: int,
    extra: Sequence[str],
    timeout: float,
) -> list[str]:
    query = ["-x", name] if reverse else [name, type]
    wait = max(1, int(timeout))
    argv = [
        "dig",
        f"@{server}",
        "-p",
        str(port),
        f"+time={wait}",
        "+tries=1",
        *(["+tcp"] if tcp else []),
        *extra,
        *query,
    ]
    return ["ip", "netns", "exec", ns, *argv]


def dig(
    ns: str,
    name: str,
    *,
    server: str,
    type: str = "A",
    reverse: bool = False,
    tcp: bool = False,
    port: int = 53,
    extra: Sequence[str] = (),
    timeout: float = 3.0,
) -> list[str]:
    """The answer section's data (`dig +short`: one rdata per line; a CNAME chain shows its targets
    too); [] for NXDOMAIN or an empty answer. ClientError when no reply comes (dig exit 9)."""
    argv = _dig_argv(ns, name, server, type, reverse, tcp, port, ["+short", *extra], timeout)
    out = run_bounded(argv, timeout + HELPER_TIMEOUT, f"dig {name} in {ns}").stdout
    return [line for line in out.splitlines() if line and not line.startswith(";")]


def dig_status(
    ns: str,
    name: str,
    *,
    server: str,
    type: str = "A",
    reverse: bool = False,
    tcp: bool = False,
    port: int = 53,
    ignore_tc: bool = True,
    extra: Sequence[str] = (),
    timeout: float = 3.0,
) -> DigStatus:
    """The reply's rcode, header flags and answer records. ignore_tc (+ignore): report a truncated UDP
    reply as it came instead of retrying over TCP the way dig otherwise does."""
    options = ["+noall", "+comments", "+answer", *(["+ignore"] if ignore_tc else []), *extra]
    argv = _dig_argv(ns, name, server, type, reverse, tcp, port, options, timeout)
    out = run_bounded(argv, timeout + HELPER_TIMEOUT, f"dig {name} in {ns}").stdout
    header = re.search(r"->>HEADER<<-.*status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    if header is None:
        raise ClientError(f"dig {name} @{server} in {ns}: no reply header:\n{out}")
    answers = [line for line in out.splitlines() if line.strip() and not line.startswith(";")]
    return DigStatus(
        header.group(1), frozenset(flags.group(1).split()) if flags else frozenset(), answers, out
    )


GETENT_WRAPPER = 'set -eu; mount -t tmpfs -o size=1m hx-run /run; exec "$@"'


def getent(ns: str, database: str, key: str, *, timeout: float = 10.0) -> list[str]:
    """`getent DATABASE KEY` inside ns: glibc's resolver with /etc/netns/NS/* over /etc (ip netns exec),
    and a private empty /run so no host nscd or systemd-resolved answers. Lines; [] when not found."""
    check_namespace(ns)
    argv = [
        "ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
        "sh", "-c", GETENT_WRAPPER, "hx-getent", "getent", database, key,
    ]  # fmt: skip
    proc = run_bounded(argv, timeout, f"getent {database} {key} in {ns}", check=False)
    if proc.returncode == 2:  # key not found
        return []
    if proc.returncode != 0:
        raise ClientError(
            f"getent {database} {key} in {ns}: exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout.splitlines()


def getent_hosts(
    ns: str, name: str, *, family: Literal["any", "ipv4", "ipv6"] = "ipv4", timeout: float = 10.0
) -> list[str]:
    """The addresses glibc resolves `name` to inside ns (`getent ahostsv4`, `ahostsv6` or `ahosts`), in
    order, without repeats; [] when it does not resolve. getaddrinfo uses AI_ADDRCONFIG: in a namespace
    with no address configured (lo down included) even /etc/hosts names give []."""
    database = {"any": "ahosts", "ipv4": "ahostsv4", "ipv6": "ahostsv6"}[family]
    addresses: list[str] = []
    for line in getent(ns, database, name, timeout=timeout):
        words = line.split()
        if words and words[0] not in addresses:
            addresses.append(words[0])
    return addresses


def getent_reverse(ns: str, address: str, *, timeout: float = 10.0) -> list[str]:
    """The names glibc finds for an address inside ns (`getent hosts ADDR`: a PTR query)."""
    ip_address(address)
    names: list[str] = []
    for line in getent(ns, "hosts", address, timeout=timeout):
        names.extend(line.split()[1:])
    return names

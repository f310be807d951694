"""The router's DNS (README "DHCP and DNS on the routed segments") against real clients in real namespaces.

dig (bind9-dnsutils) asks the router's address on a segment, over IPv4 and over IPv6; getent goes
through glibc's resolver and the namespace's /etc/netns/NS/resolv.conf that vswitch wrote; rdisc6 reads
RDNSS and DNSSL out of a router advertisement. The upstream is tests/integration/dns_upstream.py, run in
the uplink's outside namespace: it logs every question it gets (`udp NAME TYPE`, `tcp NAME TYPE`), so a
test knows what the forwarder sent upstream, and what it kept to itself (the cache, single labels).

The lab most tests share (one instance for the module, torn down pass or fail): lan = a, b (10.1.0.0/24,
fd00:53::/64), dmz = c (10.2.0.0/24, fd00:53:0:1::/64), uplink w (198.18.0.1) with the upstream on it.
A test that reads counters or the upstream's log looks at what changed during it, with names of its
own. The instances with other options (no upstream, --no-dns, a kill) are each a test's own. The host's
/etc/resolv.conf is checked unchanged after every test and after the module.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    UPSTREAM_ADDRESS,
    Env,
    Switch,
    background_cli,
    create_namespace,
    make_world,
    namespaces,
    netns_exec,
    wait_for,
)

pytestmark = pytest.mark.root

UPSTREAM = Path(__file__).with_name("dns_upstream.py")
ZONE = "example.test"
SUBNET6 = IPv6Network("fd00:53::/48")
ROUTER = {"lan": "10.1.0.1", "dmz": "10.2.0.1"}
ROUTER6 = {"lan": "fd00:53::1", "dmz": "fd00:53:0:1::1"}
ETC_NETNS = Path("/etc/netns")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
DIG_TIMEOUT = 15.0  # the process; dig itself is bounded by +time and +tries


# --- the host's resolv.conf ----------------------------------------------------------------------------
def host_resolv_conf() -> tuple[Any, ...]:
    """/etc/resolv.conf as it is: the link itself (a symlink on some hosts), and the file it names, with
    its bytes, inode and mtime."""
    link = os.lstat(HOST_RESOLV_CONF)
    target = os.stat(HOST_RESOLV_CONF)
    return (
        (link.st_ino, link.st_mode, link.st_mtime_ns),
        os.readlink(HOST_RESOLV_CONF) if HOST_RESOLV_CONF.is_symlink() else None,
        (target.st_dev, target.st_ino, target.st_size, target.st_mtime_ns, target.st_ctime_ns),
        HOST_RESOLV_CONF.read_bytes(),
    )


@pytest.fixture(scope="module", autouse=True)
def host_resolv_conf_module() -> Iterator[None]:
    """Taken before anything of this module (the shared lab included) and checked after all of it."""
    before = host_resolv_conf()
    yield
    assert host_resolv_conf() == before, "the host's /etc/resolv.conf changed during the module"


@pytest.fixture(autouse=True)
def host_resolv_conf_each() -> Iterator[None]:
    before = host_resolv_conf()
    yield
    assert host_resolv_conf() == before, "the host's /etc/resolv.conf changed during the test"


# --- worlds ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def dns_world(tmp: Path) -> Iterator[Env]:
    """make_world with this file's prefix ("vsn" + 6 hex); afterwards no /etc/netns entry of it is left."""
    with make_world(tmp, "vsn") as world:
        yield world
    left = sorted(p.name for p in ETC_NETNS.glob(f"{world.prefix}*")) if ETC_NETNS.is_dir() else []
    assert not left, f"left in {ETC_NETNS}: {left}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with dns_world(tmp_path) as world:
        yield world


# --- clients ----------------------------------------------------------------------------------------------
@dataclass
class Dig:
    status: str | None  # NOERROR, NXDOMAIN, ... or None: no answer at all
    flags: set[str]
    answers: list[tuple[str, str, str]]  # (owner, type, data)
    size: int | None  # MSG SIZE rcvd
    text: str

    def data(self, rdtype: str) -> list[str]:
        return [d for _, t, d in self.answers if t == rdtype]


def dig(ns: str, server: str, *query: str, time_s: int = 2) -> Dig:
    """`dig +time=N +tries=1 @server QUERY...` in ns, parsed (dig's exit status is not asked: a
    "connection refused" or a timeout is a Dig with no status)."""
    argv = ["dig", f"+time={time_s}", "+tries=1", f"@{server}", *query]
    proc = netns_exec(ns, argv, timeout=DIG_TIMEOUT, check=False)
    text = proc.stdout + proc.stderr
    status = re.search(r"->>HEADER<<- opcode: \w+, status: (\w+)", text)
    flags = re.search(r";; flags: ([a-z ]*);", text)
    size = re.search(r"MSG SIZE\s+rcvd: (\d+)", text)
    answers: list[tuple[str, str, str]] = []
    section = re.search(r";; ANSWER SECTION:\n(.*?)(?:\n\n|\Z)", text, re.DOTALL)
    if section:
        for line in section.group(1).splitlines():
            owner, _ttl, _cls, rdtype, data = line.split(None, 4)
            answers.append((owner.lower(), rdtype, data.strip()))
    return Dig(
        status.group(1) if status else None,
        set(flags.group(1).split()) if flags else set(),
        answers,
        int(size.group(1)) if size else None,
        text,
    )


def getent(ns: str, database: str, key: str) -> list[list[str]]:
    """`getent DATABASE KEY` in ns (glibc's resolver, the namespace's resolv.conf): its rows, split."""
    proc = netns_exec(ns, ["getent", database, key], timeout=DIG_TIMEOUT, check=False)
    assert proc.returncode == 0, f"getent {database} {key} in {ns}: exit {proc.returncode} {proc.stderr}"
    return [line.split() for line in proc.stdout.splitlines() if line.strip()]


def dns_events(sw: Switch) -> dict[str, int]:
    """The router's dns-* event counters, from `vswitch stats --json`."""
    events = sw.query("stats")["router"]["events"]
    return {k: int(v) for k, v in events.items() if k.startswith("dns-")}


def grew(before: dict[str, int], after: dict[str, int], event: str) -> int:
    return after.get(event, 0) - before.get(event, 0)


def dns_cache(sw: Switch) -> int:
    return int(sw.query("stats")["tables"]["dns_cache"])


def resolv_conf(ns: str) -> Path:
    return ETC_NETNS / ns / "resolv.conf"


def directives(text: str) -> list[tuple[str, str]]:
    """resolv.conf's (keyword, rest) lines, comments left out."""
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            keyword, _, rest = line.strip().partition(" ")
            rows.append((keyword, rest.strip()))
    return rows


# --- the shared lab -----------------------------------------------------------------------------------------
@dataclass
class Lab:
    env: Env
    sw: Switch
    ns: dict[str, str]  # "a", "b", "c", "w" -> namespace (= port name)
    ip: dict[str, str]  # "a", "b", "c" -> IPv4 address
    ip6: dict[str, str]  # "a", "b", "c" -> SLAAC address
    upstream_log: Path

    @property
    def domain(self) -> str:
        return self.sw.name

    def fqdn(self, host: str) -> str:
        return f"{self.ns[host]}.{self.domain}."

    def upstream_lines(self) -> list[str]:
        return self.upstream_log.read_text().splitlines()

    def asked(self, transport: str, name: str, rdtype: str = "A") -> int:
        """How many times the upstream was asked name over transport."""
        return self.upstream_lines().count(f"{transport} {name.lower().rstrip('.')}. {rdtype}")


def start_upstream(env: Env, outside: str, log: Path) -> None:
    """dns_upstream.py in the outside namespace, its log to a file; listening once this returns, and
    stopped with the env's peers (SIGTERM, then SIGKILL) pass or fail."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", outside, sys.executable, str(UPSTREAM), UPSTREAM_ADDRESS,
             "--lifetime", "600"],
            stdout=out, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    env.peers.append(proc)

    def ready() -> bool:
        if proc.poll() is not None:
            assert proc.stderr is not None
            pytest.fail(f"dns_upstream.py exited {proc.returncode}: {proc.stderr.read().strip()}")
        return log.read_text().startswith("ready\n")

    wait_for(ready, 15, "the upstream DNS server to listen")


def start_lab(env: Env, *extra: str) -> Switch:
    ns = {t: env.ns(t) for t in ("a", "b", "c", "w")}
    return env.router(
        "--segment", f"lan={ns['a']},{ns['b']}", "--segment", f"dmz={ns['c']}", "--subnet6", str(SUBNET6),
        "--uplink", ns["w"], *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with dns_world(tmp_path_factory.mktemp("dns")) as world:
        sw = start_lab(world, "--dns-upstream", UPSTREAM_ADDRESS)
        ns = {t: world.ns(t) for t in ("a", "b", "c", "w")}
        by_ns = {p["namespace"]: p for p in sw.table["ports"]}
        ip = {t: by_ns[ns[t]]["address"].split("/")[0] for t in ("a", "b", "c")}
        ip6 = {t: str(by_ns[ns[t]]["address6"]).split("/")[0] for t in ("a", "b", "c")}
        assert ip == {"a": "10.1.0.2", "b": "10.1.0.3", "c": "10.2.0.2"}, sw.table
        assert all(IPv6Address(a) in SUBNET6 for a in ip6.values()), sw.table
        log = world.tmp / "upstream.log"
        start_upstream(world, ns["w"], log)
        yield Lab(world, sw, ns, ip, ip6, log)


# --- 1. local names over IPv4 and IPv6 -------------------------------------------------------------------
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_ports_forward_and_reverse_in_both_families(lab: Lab, family: str) -> None:
    server = ROUTER["lan"] if family == "ipv4" else ROUTER6["lan"]
    a = lab.ns["a"]
    for host in ("b", "c"):  # c is on the other segment: the names are the instance's, not a segment's
        fqdn = lab.fqdn(host)
        forward = dig(a, server, fqdn, "A")
        assert forward.status == "NOERROR" and "aa" in forward.flags, forward.text
        assert forward.answers == [(fqdn, "A", lab.ip[host])], forward.text
        reverse = dig(a, server, "-x", lab.ip[host])
        assert reverse.status == "NOERROR" and "aa" in reverse.flags, reverse.text
        assert reverse.data("PTR") == [fqdn], reverse.text
        forward6 = dig(a, server, fqdn, "AAAA")
        assert forward6.status == "NOERROR" and "aa" in forward6.flags, forward6.text
        assert [ip_address(x) for x in forward6.data("AAAA")] == [ip_address(lab.ip6[host])], forward6.text
        assert not forward6.data("A"), forward6.text
        reverse6 = dig(a, server, "-x", lab.ip6[host])
        assert reverse6.status == "NOERROR" and "aa" in reverse6.flags, reverse6.text
        assert reverse6.data("PTR") == [fqdn], reverse6.text


def test_the_slaac_address_answered_is_the_one_the_namespace_has(lab: Lab) -> None:
    out = netns_exec(lab.ns["b"], ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]).stdout
    held = {ip_address(m) for m in re.findall(r"inet6 ([0-9a-f:]+)/64", out)}
    answered = dig(lab.ns["a"], ROUTER6["lan"], lab.fqdn("b"), "AAAA").data("AAAA")
    assert answered and {ip_address(x) for x in answered} <= held, (answered, out)


def test_names_that_do_not_exist_are_nxdomain_and_stay_local(lab: Lab) -> None:
    a = lab.ns["a"]
    server = ROUTER["lan"]
    before = dns_events(lab.sw)
    missing = dig(a, server, f"nosuch.{lab.domain}.", "A")
    assert missing.status == "NXDOMAIN" and "aa" in missing.flags, missing.text
    private = dig(a, server, "-x", "192.168.77.77")  # RFC 6303: a private reverse name nobody holds
    assert private.status == "NXDOMAIN" and "aa" in private.flags, private.text
    ours_unheld = dig(a, ROUTER6["lan"], "-x", "fd00:53::dead")
    assert ours_unheld.status == "NXDOMAIN", ours_unheld.text
    # A single label: a port's bare name is answered, any other is NXDOMAIN and never asked upstream.
    bare = dig(a, server, f"{lab.ns['b']}.", "A")
    assert bare.status == "NOERROR" and bare.data("A") == [lab.ip["b"]], bare.text
    unknown_label = f"{lab.env.prefix}nohost"
    single = dig(a, server, f"{unknown_label}.", "A")
    assert single.status == "NXDOMAIN", single.text
    # A barrier: a name the forwarder does send, asked after. Once the upstream logged it, it would
    # have logged the single label before it, had that been forwarded.
    barrier = f"barrier-{lab.env.prefix}.{ZONE}"
    assert dig(a, server, barrier, "A").status == "NOERROR"
    wait_for(lambda: lab.asked("udp", barrier) == 1, 5, f"the upstream to log {barrier}")
    assert not [line for line in lab.upstream_lines() if unknown_label in line], lab.upstream_lines()
    assert not [line for line in lab.upstream_lines() if "192.168.77.77" in line or "77.77" in line]
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-nxdomain") >= 4, (before, after)
    assert grew(before, after, "dns-local") >= 5, (before, after)


# --- 2. glibc through the namespace's resolv.conf -----------------------------------------------------------
def test_getent_resolves_a_bare_port_name_through_the_namespaces_resolv_conf(lab: Lab) -> None:
    a = lab.ns["a"]
    seen = netns_exec(a, ["cat", "/etc/resolv.conf"]).stdout  # ip netns exec binds /etc/netns/NS over it
    rows = directives(seen)
    assert ("nameserver", ROUTER["lan"]) in rows and ("nameserver", ROUTER6["lan"]) in rows, seen
    assert ("search", lab.domain) in rows, seen
    assert seen == resolv_conf(a).read_text()
    for host in ("b", "c"):
        v4 = getent(a, "ahostsv4", lab.ns[host])  # the bare name: `search NAME` makes it NS.NAME
        assert {row[0] for row in v4} == {lab.ip[host]}, v4
        assert any(row[-1].rstrip(".") == lab.fqdn(host).rstrip(".") for row in v4), v4
        both = getent(a, "hosts", lab.ns[host])
        assert both and ip_address(both[0][0]) in {ip_address(lab.ip[host]), ip_address(lab.ip6[host])}, both
        assert both[0][1].rstrip(".") == lab.fqdn(host).rstrip("."), both
    reverse = getent(a, "hosts", lab.ip["c"])
    assert reverse[0][:2] == [lab.ip["c"], lab.fqdn("c").rstrip(".")], reverse
    nothing = netns_exec(a, ["getent", "hosts", f"{lab.env.prefix}nohost"], check=False)
    assert nothing.returncode == 2 and not nothing.stdout, nothing  # 2: not found


# --- 3. the forwarder ---------------------------------------------------------------------------------------
def test_upstream_answers_are_forwarded_then_cached(lab: Lab) -> None:
    a = lab.ns["a"]
    before = dns_events(lab.sw)
    first = dig(a, ROUTER["lan"], f"www.{ZONE}", "A")
    assert first.status == "NOERROR", first.text
    (address,) = first.data("A")
    assert ip_address(address) in ip_network("198.18.7.0/24"), first.text
    second = dig(a, ROUTER6["lan"], f"www.{ZONE}", "A")  # the same question over IPv6: the same cache
    assert second.status == "NOERROR" and second.data("A") == [address], second.text
    assert lab.asked("udp", f"www.{ZONE}") == 1, lab.upstream_lines()
    assert lab.asked("tcp", f"www.{ZONE}") == 0, lab.upstream_lines()
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-query") >= 2, (before, after)
    assert grew(before, after, "dns-forwarded") >= 1, (before, after)
    assert grew(before, after, "dns-cache-hit") >= 1, (before, after)


def test_upstream_nxdomain_is_passed_on(lab: Lab) -> None:
    name = f"missing-{lab.env.prefix}.{ZONE}"
    before = dns_events(lab.sw)
    answer = dig(lab.ns["c"], ROUTER["dmz"], name, "A")
    assert answer.status == "NXDOMAIN" and not answer.answers, answer.text
    assert lab.asked("udp", name) == 1, lab.upstream_lines()
    again = dig(lab.ns["c"], ROUTER["dmz"], name, "A")  # negative caching by the SOA (RFC 2308)
    assert again.status == "NXDOMAIN", again.text
    assert lab.asked("udp", name) == 1, lab.upstream_lines()
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-forwarded") >= 1 and grew(before, after, "dns-cache-hit") >= 1


def test_a_truncated_upstream_answer_is_asked_again_over_tcp(lab: Lab) -> None:
    name = f"tcponly.{ZONE}"
    before = dns_events(lab.sw)
    answer = dig(lab.ns["a"], ROUTER["lan"], name, "A")
    assert answer.status == "NOERROR" and answer.data("A") == ["198.18.7.200"], answer.text
    assert "tc" not in answer.flags, answer.text
    lines = lab.upstream_lines()
    udp, tcp = f"udp {name}. A", f"tcp {name}. A"
    assert lines.count(udp) == 1 and lines.count(tcp) == 1, lines
    assert lines.index(udp) < lines.index(tcp), lines
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-upstream-tcp") >= 1, (before, after)
    assert grew(before, after, "dns-forwarded") >= 1, (before, after)


def test_an_answer_too_big_for_a_plain_client_is_cut_with_tc(lab: Lab) -> None:
    name = f"big.{ZONE}"
    before = dns_events(lab.sw)
    plain = dig(lab.ns["b"], ROUTER["lan"], name, "TXT", "+noedns", "+ignore")
    assert plain.status == "NOERROR" and "tc" in plain.flags, plain.text
    assert plain.size is not None and plain.size <= 512, plain.text
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-truncated") >= 1, (before, after)
    # Positive control: the same answer over TCP from the upstream is whole (40 strings of 60 bytes).
    whole = dig(lab.ns["w"], UPSTREAM_ADDRESS, name, "TXT", "+tcp")
    assert whole.status == "NOERROR" and len(whole.data("TXT")) == 40, whole.text


def test_an_unanswered_question_gets_servfail_after_the_timeout(lab: Lab) -> None:
    name = f"slow.{ZONE}"
    before = dns_events(lab.sw)
    started = time.monotonic()
    answer = dig(lab.ns["a"], ROUTER["lan"], name, "A", time_s=8)  # outlives the forwarder's 3 s
    took = time.monotonic() - started
    assert answer.status == "SERVFAIL", answer.text
    assert took < 8, f"SERVFAIL came after {took:.1f}s: dig's own timeout, not the forwarder's"
    assert lab.asked("udp", name) >= 1, lab.upstream_lines()
    after = dns_events(lab.sw)
    assert grew(before, after, "dns-upstream-timeout") >= 1, (before, after)
    assert grew(before, after, "dns-forwarded") >= 1, (before, after)


# --- 6. RDNSS and DNSSL -------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, segment", [("a", "lan"), ("c", "dmz")])
def test_router_advertisements_carry_rdnss_and_dnssl(lab: Lab, host: str, segment: str) -> None:
    proc = netns_exec(lab.ns[host], ["rdisc6", "-1", "eth0"], timeout=20)
    rdnss = re.findall(r"Recursive DNS server\s*:\s*(\S+)", proc.stdout)
    dnssl = re.findall(r"DNS search list\s*:\s*(.+)", proc.stdout)
    assert [ip_address(x) for x in rdnss] == [ip_address(ROUTER6[segment])], proc.stdout
    assert [x.split() for x in dnssl] == [[lab.domain]], proc.stdout


# --- 9. capture and trace -----------------------------------------------------------------------------------
def dig_until_exit(proc: subprocess.Popen[str], ns: str, server: str, name: str) -> None:
    """Ask (bounded, one at a time) until a capture has seen enough and exits 0 (it attaches
    asynchronously: the first questions may go by unseen)."""

    def done() -> bool:
        if proc.poll() is None:
            dig(ns, server, name, "A")
        return proc.poll() is not None

    wait_for(done, 30, f"capture of DNS on {ns}")
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_capture_shows_the_question_and_the_answer(lab: Lab) -> None:
    from scapy.layers.dns import DNS
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    a, fqdn = lab.ns["a"], lab.fqdn("b")
    path = lab.env.tmp / "dns.pcap"
    # 4 frames of a strict question/answer sequence hold at least one whole exchange.
    cap = background_cli(
        lab.env, lab.sw, "capture", a, "-w", str(path), "--count", "4", "--filter", "udp port 53"
    )
    dig_until_exit(cap, a, ROUTER["lan"], fqdn)
    packets = rdpcap(str(path))
    assert len(packets) == 4
    queries = {p[DNS].id: p for p in packets if DNS in p and p[DNS].qr == 0}
    answers = [p for p in packets if DNS in p and p[DNS].qr == 1 and p[DNS].id in queries]
    assert answers, [p.summary() for p in packets]
    query, answer = queries[answers[0][DNS].id], answers[0]
    assert (query[IP].src, query[IP].dst, query[UDP].dport) == (lab.ip["a"], ROUTER["lan"], 53)
    assert (answer[IP].src, answer[IP].dst, answer[UDP].sport) == (ROUTER["lan"], lab.ip["a"], 53)
    assert query[DNS].qd[0].qname.decode().lower() == fqdn
    assert answer[DNS].rcode == 0 and answer[DNS].aa == 1 and answer[DNS].an[0].rdata == lab.ip["b"]
    # The summary lines name the protocol (scapy's DNS layer), with the port's directions.
    cap = background_cli(lab.env, lab.sw, "capture", a, "--count", "4", "--filter", "udp port 53")
    dig_until_exit(cap, a, ROUTER["lan"], fqdn)
    out = cap.communicate(timeout=15)[0]
    lines = out.splitlines()
    assert any(f" {a} in " in x and "DNS Qry" in x and fqdn.rstrip(".") in x for x in lines), out
    assert any(f" {a} out " in x and "DNS Ans" in x and lab.ip["b"] in x for x in lines), out


def test_trace_of_a_dns_question_commits_nothing(lab: Lab) -> None:
    a = lab.ns["a"]
    name = f"traced-{lab.env.prefix}.{ZONE}"
    cache, before = dns_cache(lab.sw), dns_events(lab.sw)
    expr = f"Ether()/IP(dst='{ROUTER['lan']}')/UDP(sport=33333, dport=53)/DNS(rd=1, qd=DNSQR(qname='{name}'))"
    out = lab.env.vswitch("trace", a, expr, "--name", lab.sw.name, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+DNS\s+.*upstream", out.stdout, re.MULTILINE), out.stdout
    assert "dns-query" in out.stdout and "dns-forwarded" in out.stdout, out.stdout
    local = lab.env.vswitch(
        "trace", a, expr.replace(name, lab.fqdn("b")), "--name", lab.sw.name, timeout=60
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert re.search(r"^\s+DNS\s+answered here", local.stdout, re.MULTILINE), local.stdout
    assert "dns-query" in local.stdout and f"-> port {a}" in local.stdout, local.stdout
    assert dns_cache(lab.sw) == cache
    assert dns_events(lab.sw) == before
    # Nothing went upstream, and nothing was cached: asked for real, the name goes up once, now.
    assert lab.asked("udp", name) == 0, lab.upstream_lines()
    real = dig(a, ROUTER["lan"], name, "A")
    assert real.status == "NOERROR", real.text
    assert lab.asked("udp", name) == 1, lab.upstream_lines()
    assert dns_cache(lab.sw) == cache + 1


# --- 4. no upstream -----------------------------------------------------------------------------------------
def test_without_an_upstream_other_names_are_refused_at_once(env: Env) -> None:
    sw = start_lab(env)  # an uplink, but no --dns-upstream
    a, b = env.ns("a"), env.ns("b")
    for server in (ROUTER["lan"], ROUTER6["lan"]):
        refused = dig(a, server, f"www.{ZONE}", "A")  # +time=2: an answer, not dig's timeout
        assert refused.status == "REFUSED" and not refused.answers, refused.text
        assert "ra" not in refused.flags, refused.text  # no recursion offered without an upstream
        local = dig(a, server, f"{b}.{sw.name}.", "A")
        assert local.status == "NOERROR" and local.data("A") == ["10.1.0.3"], local.text
    events = dns_events(sw)
    assert events.get("dns-refused", 0) >= 2 and "dns-forwarded" not in events, events


# --- 5 and 7: --no-dns; resolv.conf's lifecycle -------------------------------------------------------------
def test_no_dns_serves_nothing_and_writes_no_nameserver(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.router("--segment", f"lan={a},{b}", "--no-dns")
    conf = resolv_conf(a).read_text()  # still written: a DHCP client run there must not reach the host's
    assert not [k for k, _ in directives(conf) if k in ("nameserver", "search", "domain")], conf
    started = time.monotonic()
    nothing = dig(a, ROUTER["lan"], f"{b}.{sw.name}.", "A", time_s=1)
    assert nothing.status is None, nothing.text
    assert "connection refused" in nothing.text or "timed out" in nothing.text, nothing.text
    assert time.monotonic() - started < 10
    assert "dns-query" not in dns_events(sw)
    # Positive control: the router itself is there and answers on that address.
    assert netns_exec(a, ["ping", "-n", "-c", "1", "-W", "2", ROUTER["lan"]], check=False).returncode == 0


@contextlib.contextmanager
def users_resolv_conf(ns: str, text: str) -> Iterator[Path]:
    """/etc/netns/NS/resolv.conf made by the test (as a user would), removed afterwards, pass or fail."""
    folder = ETC_NETNS / ns
    made = [d for d in (ETC_NETNS, folder) if not d.exists()]
    for d in made:
        d.mkdir(mode=0o755, exist_ok=True)
    path = folder / "resolv.conf"
    try:
        path.write_text(text)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()


def file_state(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def test_resolv_conf_is_ours_while_running_and_a_users_is_kept(env: Env) -> None:
    made, theirs = env.ns("m"), env.ns("p")
    create_namespace(theirs)
    users = "# the user's own\nnameserver 192.0.2.53\nsearch users.example\n"
    with users_resolv_conf(theirs, users) as their_conf:
        kept = file_state(their_conf)
        sw = env.router("--segment", f"lan={made},{theirs}")  # no uplink: DNS for the local names only
        ours = resolv_conf(made)
        rows = directives(ours.read_text())
        assert ("nameserver", ROUTER["lan"]) in rows and ("search", sw.name) in rows, rows
        assert file_state(their_conf) == kept
        assert any(r["kind"] == "resolv-conf" and r["path"] == str(ours) for r in sw.ledger()["records"])
        assert not any(r["path"] == str(their_conf) for r in sw.ledger()["records"] if "path" in r)
        # The user's namespace is on the segment and asks the router by its address all the same.
        answer = dig(theirs, ROUTER["lan"], f"{made}.{sw.name}.", "A")
        assert answer.status == "NOERROR" and answer.data("A") == ["10.1.0.2"], answer.text
        refused = dig(theirs, ROUTER["lan"], f"www.{ZONE}", "A")  # no uplink, so no upstream either
        assert refused.status == "REFUSED", refused.text

        assert sw.stop(signal.SIGTERM) == 0, sw.stderr()
        assert not ours.exists() and not ours.parent.exists(), list(ours.parent.glob("*"))
        assert made not in namespaces(env.prefix)
        assert theirs in namespaces(env.prefix), "vswitch removed a namespace it did not make"
        assert file_state(their_conf) == kept


def test_resolv_conf_goes_with_down_after_a_sigkill(env: Env) -> None:
    a = env.ns("a")
    sw = env.router("--segment", f"lan={a}")
    conf = resolv_conf(a)
    assert ("search", sw.name) in directives(conf.read_text())
    assert sw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert conf.exists(), "a SIGKILL leaves it for `down`"  # the positive control for what follows
    down = env.vswitch("down", "--name", sw.name)
    assert down.returncode == 0, down.stderr
    assert f"removed {conf}" in down.stdout.splitlines(), down.stdout
    assert f"removed namespace {a}" in down.stdout, down.stdout
    assert not conf.exists() and not conf.parent.exists()
    assert not sw.state_path.exists()

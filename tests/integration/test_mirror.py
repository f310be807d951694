"""Port mirroring (issue 23) on real namespaces: `--mirror SRC=DST[,in|out|both]`, judged by tshark in
the mirror port's namespace and by packet sockets in the others.

Three ports a, b, c on one segment, a mirrored into m. Each protection has its negative control in the
same run: a ping between a and b is seen in m, one between b and c (a not mirrored) is not; a frame m
sends reaches nobody, the same frame sent by c reaches everyone. A capture that must miss something is
first seen to be running (it printed a packet), and it stops only after packets that came later.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    addresses_of,
    ipv4_addresses,
    links,
    namespaces,
    netns_exec,
    ping_until_exit,
    pings,
    read_line,
    wait_for,
)

pytestmark = pytest.mark.root

# One line per ICMP packet: source, destination, type (8 echo request, 0 echo reply); bounded by a count
# (-c, given per test) and a duration.
TSHARK = ["tshark", "-n", "-l", "-i", "eth0", "-f", "icmp", "-a", "duration:60",
          "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type"]  # fmt: skip
ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nobody's stack answers it

# Run inside a namespace: send argv[2] broadcast frames of ETHERTYPE out of eth0, payload argv[1].
SEND_FRAMES = f"""
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
    sock.bind(("eth0", 0))
    mac = sock.getsockname()[4]
    for _ in range(int(sys.argv[2])):
        payload = sys.argv[1].encode().ljust(46, b".")
        sock.send(b"\\xff" * 6 + mac + ({ETHERTYPE}).to_bytes(2, "big") + payload)
"""

# Run inside a namespace: print "ready", then collect the payload markers of ETHERTYPE frames on eth0
# until one is argv[1] (or 30 s pass), and print them as one JSON list.
RECEIVE_FRAMES = f"""
import json, socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons({ETHERTYPE})) as sock:
    sock.bind(("eth0", {ETHERTYPE}))
    sock.settimeout(30)
    print("ready", flush=True)
    seen = []
    while not seen or seen[-1] != sys.argv[1]:
        frame = sock.recv(2048)
        seen.append(frame[14:].rstrip(b".").decode())
print(json.dumps(seen))
"""


def mirrored(env: Env, direction: str = "") -> tuple[Switch, dict[str, str], str]:
    """a, b, c on one segment and a mirrored into m (direction "" is the default, both)."""
    a, b, c, m = (env.ns(tag) for tag in "abcm")
    sw = env.switch(a, b, c, args=["--mirror", f"{a}={m}{',' + direction if direction else ''}"])
    ip = addresses_of(sw)
    ip.update(a=ip[a], b=ip[b], c=ip[c])
    return sw, ip, m


def capture(env: Env, ns: str, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *TSHARK, "-c", str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    env.peers.append(proc)
    return proc


def ping_until_captured(proc: subprocess.Popen[str], ns: str, address: str) -> None:
    """Ping (one at a time) until the capture has printed a packet: from then on it is running."""
    stdout = proc.stdout
    assert stdout is not None

    def printed() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"tshark exited {proc.returncode}: {proc.communicate()[1].strip()}")
        netns_exec(ns, ["ping", "-n", "-c", "1", "-W", "1", address], check=False)
        return bool(select.select([stdout], [], [], 0.5)[0])

    wait_for(printed, 30, "tshark in the mirror namespace to see a ping")


def packets(out: str) -> list[tuple[str, str, str]]:
    rows = [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]
    assert all(len(row) == 3 for row in rows), out
    return rows  # type: ignore[return-value]


def test_mirror_sees_both_directions_of_a_ping_and_not_the_other_ports(env: Env) -> None:
    sw, ip, m = mirrored(env)
    a, b = env.ns("a"), env.ns("b")
    # A SPAN port: in no port table, no address, no IPv6; `status` shows it as the mirror of a.
    assert m not in {p["namespace"] for p in sw.table["ports"]}
    assert ipv4_addresses(links(m)["eth0"]) == []
    assert not [i for i in links(m)["eth0"].get("addr_info", []) if i["family"] == "inet6"]
    (mirror,) = sw.query("status")["mirrors"]
    assert (mirror["source"], mirror["port"], mirror["direction"], mirror["namespace"]) == (a, m, "both", m)

    tshark = capture(env, m, 6)
    ping_until_captured(tshark, a, ip["b"])
    assert pings(b, ip["c"], count=3)  # b and c talk while the capture runs: none of it may be seen
    out = ping_until_exit(tshark, a, ip["b"], "tshark to see 6 ICMP packets")
    seen = packets(out)
    assert (ip["a"], ip["b"], "8") in seen and (ip["b"], ip["a"], "0") in seen, seen
    assert all(ip["a"] in (src, dst) for src, dst, _ in seen), seen  # negative control: b <-> c unseen
    assert not [row for row in seen if ip["c"] in row], seen

    status = sw.env.vswitch("status", "--name", sw.name)
    assert f"mirror {a} -> {m} (both)" in status.stdout, status.stdout
    assert sw.query("status")["mirrors"][0]["copies"] >= 6
    refused = sw.env.vswitch("port", "del", a, "--name", sw.name)
    assert refused.returncode != 0 and f"port {a} is mirrored to {m}" in refused.stderr, refused.stderr

    assert sw.stop() == 0
    assert namespaces(env.prefix) == set(), "the mirror's namespace (and the ports') outlived vswitch"


@pytest.mark.parametrize(
    ("direction", "src", "dst", "icmp_type"), [("in", "a", "b", "8"), ("out", "b", "a", "0")]
)
def test_one_direction_is_only_what_the_source_sends_or_is_sent(
    env: Env, direction: str, src: str, dst: str, icmp_type: str
) -> None:
    """in: a's echo requests, never b's replies; out: the replies, never the requests (with both, the
    test above sees the two)."""
    _, ip, m = mirrored(env, direction)
    a = env.ns("a")
    tshark = capture(env, m, 4)
    out = ping_until_exit(tshark, a, ip["b"], f"tshark to see 4 ICMP packets ({direction})")
    assert set(packets(out)) == {(ip[src], ip[dst], icmp_type)}, out


def test_nothing_the_mirror_port_sends_reaches_a_segment(env: Env) -> None:
    """m's broadcasts are dropped (mirror-port) and reach neither a nor b; the same frame from c, sent
    after them, reaches both: had m's been forwarded, they would have come first."""
    sw, _, m = mirrored(env)
    a, b, c = (env.ns(tag) for tag in "abc")
    receivers = []
    for ns in (a, b):
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVE_FRAMES, "from-c"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        env.peers.append(proc)
        assert read_line(proc, 15, f"frame receiver in {ns}") == "ready"
        receivers.append(proc)

    def dropped() -> int:
        return int(sw.request("stats")["ports"][m]["drops"].get("mirror-port", 0))

    before = dropped()
    netns_exec(m, [sys.executable, "-c", SEND_FRAMES, "from-m", "5"])
    wait_for(lambda: dropped() >= before + 5, 10, "the switch to drop m's 5 frames as mirror-port")
    netns_exec(c, [sys.executable, "-c", SEND_FRAMES, "from-c", "1"])
    for ns, proc in zip((a, b), receivers, strict=True):
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == ["from-c"], f"{ns} received {out}"
    mac = sw.request("status")["mirrors"][0]["mac"]
    assert mac not in {row["mac"] for row in sw.request("fdb")}, "the mirror port's MAC was learned"

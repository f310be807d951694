"""Issue 13 against real namespaces: `vswitch capture A,B -w f.pcapng` and `--all` keep each frame's
port (one named interface per port) and direction (inbound: the switch read it from the port;
outbound: the switch wrote it to the port), read back with tshark and scapy; `-w x.pcap` with two
ports is refused with one line and exit status 2."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vswitch.shell.control import ControlError, request

from .conftest import (
    CLI_TIMEOUT,
    Env,
    addresses_of,
    background_cli,
    make_world,
    ping_until_exit,
)

pytestmark = pytest.mark.root

INBOUND, OUTBOUND = 1, 2  # the epb_flags direction bits, as tshark prints them


@pytest.fixture
def penv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("vsp" + 6 hex)."""
    with make_world(tmp_path, "vsp") as world:
        yield world


def shark_rows(path: Path) -> list[tuple[str, int, str, str]]:
    """(interface name, direction, ICMP type, IP source) per frame, as tshark reads the file."""
    fields = ["frame.interface_name", "frame.packet_flags_direction", "icmp.type", "ip.src"]
    shark = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True,
    )  # fmt: skip
    rows = []
    for line in shark.stdout.splitlines():
        name, direction, icmp_type, src = line.split("\t")
        rows.append((name, int(direction, 0), icmp_type, src))
    return rows


def check_file(path: Path, a: str, b: str, ip_a: str, count: int) -> None:
    """count ICMP frames; both ports in both directions; the request in on a and out on b, the reply
    in on b and out on a; scapy agrees on names and directions, and the stamps never go back."""
    from scapy.utils import PcapNgReader

    rows = shark_rows(path)
    assert len(rows) == count, rows
    for port in (a, b):
        assert {d for name, d, _t, _s in rows if name == port} == {INBOUND, OUTBOUND}, rows
    assert (a, INBOUND, "8", ip_a) in rows and (b, OUTBOUND, "8", ip_a) in rows, rows
    assert {(name, d) for name, d, t, _s in rows if t == "0"} == {(b, INBOUND), (a, OUTBOUND)}, rows

    reader = PcapNgReader(str(path))
    packets = list(reader)
    reader.close()
    assert {options.get("name") for _l, _s, options in reader.interfaces} >= {a.encode(), b.encode()}
    assert [(p.sniffed_on, p.direction) for p in packets] == [(n, d) for n, d, _t, _s in rows]
    stamps = [p.time for p in packets]
    assert stamps == sorted(stamps)  # one stream from the switch: in the order it saw the frames


def test_capture_two_ports_to_pcapng(penv: Env) -> None:
    a, b = penv.ns("a"), penv.ns("b")
    sw = penv.switch(a, b)
    ip = addresses_of(sw)
    path = penv.tmp / "ab.pcapng"
    # Each ping is 4 frames here (request in on a, out on b; reply in on b, out on a): 8 is two pings.
    cap = background_cli(penv, sw, "capture", f"{a},{b}", "-w", str(path), "-c", "8", "-f", "icmp")
    ping_until_exit(cap, a, ip[b], "capture of 8 ICMP frames on two ports")
    check_file(path, a, b, ip[a], 8)
    # The capture is trace's input as it is: the first frame, the echo request as it came in on a.
    traced = penv.vswitch("trace", a, "--pcap", str(path), "--index", "0", "--name", sw.name)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.splitlines()[0] == f"trace on port {a}", traced.stdout
    assert f"{ip[a]} > {ip[b]} ICMP" in traced.stdout and f"-> port {b}" in traced.stdout, traced.stdout


def test_capture_all_ports_to_pcapng(penv: Env) -> None:
    a, b, c = penv.ns("a"), penv.ns("b"), penv.ns("c")
    sw = penv.switch(a, b, c)
    ip = addresses_of(sw)
    path = penv.tmp / "all.out"  # no extension: several ports make it pcapng
    cap = background_cli(penv, sw, "capture", "--all", "-w", str(path), "-c", "8", "-f", "icmp")
    ping_until_exit(cap, a, ip[b], "capture of 8 ICMP frames with --all")
    check_file(path, a, b, ip[a], 8)
    info = subprocess.run(
        ["capinfos", "-I", str(path)], capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True
    )
    assert "Number of interfaces in file: 3" in info.stdout  # c too, though it saw nothing
    assert info.stdout.count("Time resolution = 0x09") == 3  # nanoseconds


def test_capture_several_ports_to_a_classic_pcap_is_refused(penv: Env) -> None:
    a, b = penv.ns("a"), penv.ns("b")
    sw = penv.switch(a, b)
    refused = penv.tmp / "x.pcap"
    for which in (f"{a},{b}", "--all"):
        out = penv.vswitch("capture", which, "-w", str(refused), "--name", sw.name)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "classic pcap holds one port" in lines[0], out.stderr
        assert not refused.exists()
    bad: list[tuple[object, str]] = [
        ([a, "nosuch"], "no port 'nosuch'"),
        ([], "a list of 1"),
        ("x", "a list"),
    ]
    for ports, error in bad:
        with pytest.raises(ControlError, match=error):  # the server's own checks, one reply line
            request(sw.socket_path, "capture", ports=ports)
    one = penv.tmp / "one.pcap"  # one port: classic pcap, as before
    cap = background_cli(penv, sw, "capture", a, "-w", str(one), "-c", "2", "-f", "icmp")
    ping_until_exit(cap, a, addresses_of(sw)[b], "capture of 2 ICMP frames to a classic pcap")
    assert one.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"


def test_capture_two_ports_prints_summaries_with_port_and_direction(penv: Env) -> None:
    a, b = penv.ns("a"), penv.ns("b")
    sw = penv.switch(a, b)
    ip = addresses_of(sw)
    cap = background_cli(penv, sw, "capture", f"{a},{b}", "-c", "8", "-f", "icmp")
    out = ping_until_exit(cap, a, ip[b], "8 summary lines on two ports")
    lines = out.splitlines()
    assert len(lines) == 8, out
    for port, arrow, kind in ((a, "in ", "echo-request"), (b, "out", "echo-request")):
        assert any(f" {port} {arrow} " in x and kind in x for x in lines), out
    for port, arrow in ((b, "in "), (a, "out")):
        assert any(f" {port} {arrow} " in x and "echo-reply" in x for x in lines), out

"""The router's DHCPv4 server (README "DHCP and DNS on the routed segments") against Debian's real
clients: busybox udhcpc, ISC dhclient with dhclient-script, dhcpcd 9 with its hooks.

Every client runs through tests/integration/clients.py: in its namespace, in a private mount and UTS
namespace where /etc, /var/lib, /run and /tmp are private and only the namespace's own resolv.conf
(/etc/netns/NS/resolv.conf, which vswitch wrote) is the real file. The host's DHCP/DNS files
(`HostFiles`) are snapshotted before the module and compared after it, and the host's /etc/resolv.conf
must be byte-identical.

The shared lab (one instance for the module, torn down pass or fail): segment lan (10.1.0.0/24,
MTU 1400) with a static port `a` (10.1.0.2) and `=dhcp` ports u (udhcpc), d (dhclient), p (dhcpcd),
r (a --dhcp-host reservation); a pool of 10.1.0.100-10.1.0.199 and a static route (option 121).
The three clients are started together (dhcpcd ARP-probes its address for ~5 s) and kept running;
the tests read them, renew them, and at the end release them. Expiry (a 4 s lease), live ports and
--no-dhcp each get an instance of their own, in the same world (namespace prefix `vsd` + 6 hex).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from .clients import (
    Client,
    ClientError,
    ClientState,
    DhcpResult,
    HostFiles,
    dig,
    getent_hosts,
    kernel_view,
    netns_resolv_conf_path,
    parse_resolv_conf,
    run_dhclient,
    run_udhcpc,
    start_dhclient,
    start_dhcpcd,
    start_udhcpc,
)
from .conftest import Env, Switch, background_cli, links, make_world, netns_exec, wait_for

pytestmark = pytest.mark.root

SUBNET = IPv4Network("10.1.0.0/24")
ROUTER = IPv4Address("10.1.0.1")
STATIC_A = IPv4Address("10.1.0.2")
POOL = (IPv4Address("10.1.0.100"), IPv4Address("10.1.0.199"))
MTU = 1400
ROUTE = IPv4Network("198.51.100.0/24")  # --route ROUTE=via STATIC_A: option 121, straight to a
RESERVED_MAC = "02:68:78:00:00:77"
RESERVED_ADDR = IPv4Address("10.1.0.50")  # outside the pool: a reservation is not the pool's
RESERVED_NAME = "reserved-host"
HOSTNAMES = {"udhcpc": "hx-udhcpc", "dhclient": "hx-dhclient", "dhcpcd": "hx-dhcpcd"}
ETC_NETNS = Path("/etc/netns")
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE",
              8: "INFORM"}  # fmt: skip


# --- the host ------------------------------------------------------------------------------------------
def not_netns(path: str) -> bool:
    """Every watched path but /etc/netns (other tests' namespaces come and go there meanwhile; ours are
    checked gone on their own)."""
    return path != str(ETC_NETNS) and not path.startswith(f"{ETC_NETNS}/")


@pytest.fixture(scope="module")
def host_files() -> Iterator[HostFiles]:
    """The host's DHCP/DNS client files before anything of this module; checked after all of it."""
    before = HostFiles.take()
    resolv = HOST_RESOLV_CONF.read_bytes()
    yield before
    HostFiles.take().only(not_netns).assert_unchanged(before.only(not_netns))
    assert HOST_RESOLV_CONF.read_bytes() == resolv, "the host's /etc/resolv.conf changed"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, host_files: HostFiles) -> Iterator[Env]:
    with make_world(tmp_path_factory.mktemp("dhcp"), "vsd") as env:
        yield env
    left = sorted(p.name for p in ETC_NETNS.glob(f"{env.prefix}*")) if ETC_NETNS.is_dir() else []
    assert not left, f"left in {ETC_NETNS}: {left}"
    left_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert env.prefix not in left_ns, left_ns


@contextlib.contextmanager
def own_instance(world: Env, *args: str) -> Iterator[Switch]:
    """A test's own `vswitch up`, stopped (and its ledger undone) when the test ends, pass or fail."""
    sw = world.router(*args)
    try:
        yield sw
    finally:
        problems = sw.cleanup()
        world.switches.remove(sw)
        assert not problems, problems


def test_host_files_catch_a_change(tmp_path: Path) -> None:
    """Positive control for the module's promise: HostFiles sees a rewritten resolv.conf and a
    dhclient-script temp file left beside it."""
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    before = HostFiles.take(extra=[watched])
    HostFiles.take(extra=[watched]).assert_unchanged(before)
    (watched / "resolv.conf").write_text("nameserver 192.0.2.99\n")
    (watched / "resolv.conf.dhclient-new.123").write_text("x")
    with pytest.raises(AssertionError) as caught:
        HostFiles.take(extra=[watched]).assert_unchanged(before)
    assert f"changed: {watched / 'resolv.conf'}" in str(caught.value)
    assert "+nameserver 192.0.2.99" in str(caught.value)
    assert f"added: {watched / 'resolv.conf.dhclient-new.123'}" in str(caught.value)


def test_harness_refuses_a_name_that_is_no_namespace(world: Env) -> None:
    with pytest.raises(ClientError, match="no namespace"):
        run_udhcpc(world.ns("missing"), "eth0", timeout=2)


# --- views of the switch -----------------------------------------------------------------------------------
def leases(sw: Switch) -> list[dict[str, Any]]:
    """`vswitch leases --name N --json`."""
    rows: list[dict[str, Any]] = sw.query("leases")
    return rows


def lease_of(sw: Switch, mac: str) -> dict[str, Any] | None:
    """The bound lease of mac, asked of the control socket (cheap enough to poll)."""
    rows: list[dict[str, Any]] = sw.request("leases")
    return next((row for row in rows if row["mac"] == mac), None)


def events(sw: Switch) -> dict[str, int]:
    """The router's event counters (`vswitch stats --json`: router.events)."""
    found = sw.query("stats")["router"]["events"]
    return {k: int(v) for k, v in found.items()}


def grew(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def lease_file(sw: Switch) -> list[dict[str, Any]]:
    path = sw.env.run_dir / f"{sw.name}.leases.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text())["leases"]
    return rows


def mac_of_link(ns: str) -> str:
    return str(links(ns)["eth0"]["address"])


def set_link(ns: str, *args: str) -> None:
    netns_exec(ns, ["ip", "link", "set", "dev", "eth0", *args])


def static_addresses(sw: Switch) -> set[IPv4Address]:
    ports = sw.query("status")["ports"]
    return {IPv4Interface(p["address"]).ip for p in ports if p["address"] and not p.get("leased")}


def routes(ns: str) -> list[dict[str, Any]]:
    out = netns_exec(ns, ["ip", "-j", "-4", "route", "show", "table", "main"]).stdout
    found: list[dict[str, Any]] = json.loads(out or "[]")
    return found


def resolv_conf_of(ns: str) -> str:
    """The namespace's /etc/resolv.conf, as a process in it sees it (vswitch's /etc/netns/NS file)."""
    return netns_exec(ns, ["cat", "/etc/resolv.conf"]).stdout


# --- captures ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dhcp:
    kind: str  # DISCOVER, OFFER, REQUEST, ACK, ...
    src_mac: str
    src: str
    dst: str
    xid: int
    ciaddr: str
    yiaddr: str


def dhcp_packets(path: Path) -> list[Dhcp]:
    """The DHCP messages of a pcap, in order (scapy)."""
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap

    out = []
    for pkt in rdpcap(str(path)):
        if DHCP not in pkt:
            continue
        opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple) and len(o) >= 2}
        kind = opts.get("message-type", 0)
        out.append(
            Dhcp(
                DHCP_TYPES.get(int(kind) if isinstance(kind, int) else 0, "?"),
                pkt[Ether].src,
                pkt[IP].src,
                pkt[IP].dst,
                int(pkt[BOOTP].xid),
                pkt[BOOTP].ciaddr,
                pkt[BOOTP].yiaddr,
            )
        )
    return out


def renew_while_capturing(world: Env, sw: Switch, port: str, renew: Callable[[], object], count: int) -> Path:
    """`vswitch capture PORT -w FILE.pcap -c COUNT -f 'udp port 67'` while renewing (one renewal at a
    time, each waited for) until the capture has its COUNT frames: it attaches asynchronously, so the
    first renewal may go by unseen."""
    path = world.tmp / f"{port}-{time.monotonic_ns()}.pcap"
    cap = background_cli(world, sw, "capture", port, "-w", str(path), "-c", str(count), "-f", "udp port 67")
    deadline = time.monotonic() + 30
    while cap.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"capture on {port} never saw {count} DHCP frames")
        renew()
        with contextlib.suppress(subprocess.TimeoutExpired):
            cap.wait(1.0)
    _, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    return path


def assert_requests_answered(packets: list[Dhcp], mac: str, address: str) -> None:
    """Every DHCPREQUEST of the client has our DHCPACK of the same xid, for its address, after it (the
    last frame may be a request whose answer fell past the capture's count)."""
    requests = [i for i, p in enumerate(packets) if p.kind == "REQUEST"]
    assert requests, packets
    answered = 0
    for i in requests:
        req = packets[i]
        assert req.src_mac == mac, packets
        acks = [p for p in packets[i + 1 :] if p.kind == "ACK" and p.xid == req.xid]
        if i == len(packets) - 1:
            continue
        assert acks, f"request {i} unanswered: {packets}"
        assert acks[0].src == str(ROUTER) and acks[0].yiaddr == address, packets
        answered += 1
    assert answered >= 1, packets
    assert not [p for p in packets if p.kind in ("NAK", "DISCOVER")], packets


# --- the shared lab -----------------------------------------------------------------------------------------
@dataclass
class Lab:
    world: Env
    sw: Switch
    ns: dict[str, str]  # tag -> namespace (= port name)
    clients: dict[str, Client]  # "udhcpc", "dhclient", "dhcpcd"
    results: dict[str, DhcpResult]  # their first leases
    resolv_before: dict[str, str]  # each client namespace's resolv.conf before its client ran
    macs: dict[str, str]  # client kind -> the link's MAC

    @property
    def domain(self) -> str:
        return self.sw.name

    def port(self, kind: str) -> str:
        return self.ns[{"udhcpc": "u", "dhclient": "d", "dhcpcd": "p"}[kind]]

    def address(self, kind: str) -> IPv4Address:
        result = self.results[kind]
        assert result.address is not None, result
        return result.address.ip

    def dig(self, name: str, **kwargs: Any) -> list[str]:
        """dig @router from the static port a."""
        return dig(self.ns["a"], name, server=str(ROUTER), **kwargs)


@pytest.fixture(scope="module")
def lab(world: Env) -> Iterator[Lab]:
    ns = {t: world.ns(t) for t in ("a", "u", "d", "p", "r")}
    sw = world.router(
        "--segment", f"lan={ns['a']},{ns['u']}=dhcp,{ns['d']}=dhcp,{ns['p']}=dhcp,{ns['r']}=dhcp",
        "--mtu", f"lan={MTU}", "--dhcp-range", f"{POOL[0]}-{POOL[1]}",
        "--dhcp-host", f"{RESERVED_MAC}={RESERVED_ADDR},{RESERVED_NAME}",
        "--route", f"{ROUTE}=via {STATIC_A}",
    )  # fmt: skip
    ports = {p["namespace"]: p for p in sw.table["ports"]}
    assert ports[ns["a"]]["address"] == f"{STATIC_A}/24", sw.table
    assert all(ports[ns[t]]["address"] is None for t in "udpr"), sw.table
    with contextlib.ExitStack() as stack:
        resolv_before: dict[str, str] = {}
        clients: dict[str, Client] = {}
        macs: dict[str, str] = {}
        for kind, tag in (("udhcpc", "u"), ("dhclient", "d"), ("dhcpcd", "p")):
            resolv_before[kind] = resolv_conf_of(ns[tag])
            macs[kind] = mac_of_link(ns[tag])
            # vswitch made the link with the segment's MTU: put it back to 1500, so the MTU a client
            # ends up with is the one it was told
            set_link(ns[tag], "mtu", "1500")
        hostname = HOSTNAMES
        starts: dict[str, Callable[[], Client]] = {
            "udhcpc": lambda: start_udhcpc(ns["u"], "eth0", hostname=hostname["udhcpc"], request=("mtu",)),
            "dhclient": lambda: start_dhclient(ns["d"], "eth0", hostname=hostname["dhclient"]),
            "dhcpcd": lambda: start_dhcpcd(ns["p"], "eth0", hostname=hostname["dhcpcd"]),
        }
        for kind, start in starts.items():
            clients[kind] = stack.enter_context(start())
        results = {kind: client.result() for kind, client in clients.items()}
        yield Lab(world, sw, ns, clients, results, resolv_before, macs)


# --- 1. each client's lease ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["udhcpc", "dhclient", "dhcpcd"])
def test_client_gets_address_route_dns_and_mtu(lab: Lab, kind: str) -> None:
    result, ns = lab.results[kind], lab.port(kind)
    assert result.address is not None, result
    address = result.address.ip
    assert result.address.network == SUBNET, result
    assert POOL[0] <= address <= POOL[1], result  # --dhcp-range
    assert address not in static_addresses(lab.sw) | {ROUTER}, result
    assert result.router == ROUTER, result
    assert result.server_id == ROUTER and result.lease_time == 3600, result.reported
    # the namespace's resolv.conf is vswitch's file; the client rewrote it, through the harness's bind
    before = lab.resolv_before[kind]
    assert f"nameserver {ROUTER}" in before and "Written by vswitch" in before, before
    now = resolv_conf_of(ns)
    assert now == result.resolv_conf and "Written by vswitch" not in now, now
    assert netns_resolv_conf_path(ns).read_text() == now
    assert result.dns == [str(ROUTER)], now
    assert result.domain == lab.domain, now
    search = [s.rstrip(".") for s in result.search]  # dhclient writes "search NAME."
    if kind == "dhcpcd":  # its resolv.conf hook writes `domain` and no `search` when they are the same
        assert search in ([], [lab.domain]), now
    else:
        assert search == [lab.domain], now
    # option 26 (the segment's MTU): udhcpc's script and dhclient-script set the link's; dhcpcd 9 puts
    # it on its routes instead
    if kind == "dhcpcd":
        assert (result.mtu, result.route_mtu) == (1500, MTU), result
        assert result.reported["new_interface_mtu"] == str(MTU), result.reported
        assert result.reported["new_domain_search"] == lab.domain, result.reported
    else:
        assert (result.mtu, result.route_mtu) == (MTU, None), result
    # the lease as vswitch shows it: the client's MAC, through its port, under the name it sent
    rows = [row for row in leases(lab.sw) if row["address"] == str(address)]
    assert len(rows) == 1, leases(lab.sw)
    row = rows[0]
    assert row["mac"] == lab.macs[kind] == mac_of_link(ns), row
    assert row["port"] == ns and row["hostname"] == HOSTNAMES[kind], row
    assert 3000 < row["expires_in"] <= 3600, row
    wait_for(lambda: any(r["mac"] == row["mac"] for r in lease_file(lab.sw)), 5, "the lease file")


def test_status_shows_leased_addresses(lab: Lab) -> None:
    ports = {p["namespace"]: p for p in lab.sw.query("status")["ports"]}
    for kind in lab.clients:
        port = ports[lab.port(kind)]
        assert port["address"] == f"{lab.address(kind)}/24" and port.get("leased") is True, port
    assert lab.sw.query("status")["services"]["leases"] >= 3


# --- 10. option 121 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dhclient", "dhcpcd"])
def test_classless_static_route_installed(lab: Lab, kind: str) -> None:
    """dhclient (Debian's rfc3442-classless-routes exit hook) and dhcpcd ask for option 121 and install
    it: the --route via its gateway on the segment (a, not the router), and the default route, which
    comes first in the option (a client that takes 121 ignores option 3)."""
    table = routes(lab.port(kind))
    route = [r for r in table if r["dst"] == str(ROUTE)]
    assert route and route[0].get("gateway") == str(STATIC_A), table
    default = [r for r in table if r["dst"] == "default"]
    assert default and default[0].get("gateway") == str(ROUTER), table
    if kind == "dhclient":
        assert lab.results[kind].reported.get("new_rfc3442_classless_static_routes"), lab.results[kind]


def test_udhcpc_without_121_script_has_no_route(lab: Lab) -> None:
    """Negative control for the above: the harness's udhcpc script installs only the default route."""
    table = routes(lab.port("udhcpc"))
    assert not [r for r in table if r["dst"] == str(ROUTE)], table
    assert lab.results["udhcpc"].reported.get("staticroutes"), lab.results["udhcpc"].reported


# --- 6. --dhcp-host -----------------------------------------------------------------------------------------
def test_reservation_gets_its_address_and_name(lab: Lab) -> None:
    r = lab.ns["r"]
    set_link(r, "address", RESERVED_MAC)  # a guest with a fixed MAC, as a reservation is made for
    assert mac_of_link(r) == RESERVED_MAC
    with ClientState() as state:
        result = run_udhcpc(r, "eth0", hostname="asks-another-name", state=state)  # no -O mtu
    assert result.address == IPv4Interface(f"{RESERVED_ADDR}/24"), result
    assert result.router == ROUTER, result
    # option 26 comes unrequested (busybox asks for it only with -O mtu): udhcpc's script set it
    assert result.reported.get("mtu") == str(MTU), result.reported
    row = lease_of(lab.sw, RESERVED_MAC)
    assert row is not None and row["address"] == str(RESERVED_ADDR), leases(lab.sw)
    assert row["hostname"] == RESERVED_NAME and row["port"] == r, row  # the reservation's name wins
    assert lab.dig(f"{RESERVED_NAME}.{lab.domain}") == [str(RESERVED_ADDR)]
    assert lab.dig(f"{r}.{lab.domain}") == [str(RESERVED_ADDR)]  # the =dhcp port by its own name
    assert lab.dig("asks-another-name." + lab.domain) == []


# --- 7. names in DNS ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["udhcpc", "dhclient", "dhcpcd"])
def test_client_hostname_in_dns(lab: Lab, kind: str) -> None:
    address, name, port = str(lab.address(kind)), HOSTNAMES[kind], lab.port(kind)
    assert lab.dig(f"{name}.{lab.domain}") == [address]
    assert lab.dig(f"{port}.{lab.domain}") == [address]
    assert sorted(lab.dig(address, reverse=True)) == sorted(
        [f"{name}.{lab.domain}.", f"{port}.{lab.domain}."]
    )
    # glibc in another namespace: its resolv.conf is vswitch's (search NAME), the single label is ours
    assert getent_hosts(lab.ns["a"], name) == [address]
    # and the client itself, through the resolv.conf its own script wrote
    assert getent_hosts(port, f"{name}.{lab.domain}") == [address]


def test_unknown_name_is_nxdomain(lab: Lab) -> None:
    """Negative control for the names: one nobody sent is not answered."""
    assert lab.dig(f"hx-nobody.{lab.domain}") == []
    assert getent_hosts(lab.ns["a"], "hx-nobody") == []


# --- 2. renewals --------------------------------------------------------------------------------------------
def aged(lab: Lab, mac: str) -> float:
    """The lease's expires_in once at least a second of it has gone (so a renewal shows)."""

    def old() -> float | None:
        row = lease_of(lab.sw, mac)
        assert row is not None, mac
        return float(row["expires_in"]) if row["expires_in"] <= 3600 - 1.0 else None

    return wait_for(old, 5, f"the lease of {mac} to age a second")


@pytest.mark.parametrize("kind", ["udhcpc", "dhcpcd"])
def test_forced_renewal_is_answered(lab: Lab, kind: str) -> None:
    """udhcpc SIGUSR1 / `dhcpcd -N`: a DHCPREQUEST (unicast, ciaddr set) and our DHCPACK, in a capture of
    the port; then `dhcpcd -n` (rebind, broadcast) too; the counters grow and the lease goes back up."""
    client, mac, address = lab.clients[kind], lab.macs[kind], str(lab.address(kind))
    before_expiry = aged(lab, mac)
    before = events(lab.sw)
    renewals: list[str] = []

    def renew() -> None:
        renewals.append(client.renew().reason)

    path = renew_while_capturing(lab.world, lab.sw, lab.port(kind), renew, 4)
    packets = dhcp_packets(path)
    assert_requests_answered(packets, mac, address)
    first = next(p for p in packets if p.kind == "REQUEST")
    assert first.ciaddr == address and first.src == address, packets  # RENEWING: from its address
    assert set(renewals) == {"renew" if kind == "udhcpc" else "RENEW"}, renewals
    if kind == "dhcpcd":
        renewals.append(client.rebind().reason)
    after = events(lab.sw)
    assert grew(before, after, "dhcp-request") >= len(renewals), (before, after)
    assert grew(before, after, "dhcp-ack") >= len(renewals), (before, after)
    assert grew(before, after, "dhcp-nak") == 0 and grew(before, after, "dhcp-discover") == 0
    row = lease_of(lab.sw, mac)
    assert row is not None and row["address"] == address, row
    assert row["expires_in"] > before_expiry, (row, before_expiry)
    view = kernel_view(lab.port(kind), "eth0")
    assert [a for a, _ in view.addresses] == [IPv4Interface(f"{address}/24")], view


# --- 3. the same MAC, the same address -------------------------------------------------------------------
def test_dhclient_init_reboot_gets_its_address_back(lab: Lab) -> None:
    """dhclient stopped without a release and started over its lease file: a broadcast DHCPREQUEST of
    the address it had (INIT-REBOOT, no DISCOVER), ACKed."""
    client, mac, address = lab.clients["dhclient"], lab.macs["dhclient"], str(lab.address("dhclient"))
    before_expiry = aged(lab, mac)
    before = events(lab.sw)
    event = client.renew()  # the harness restarts it: REBOOT
    assert event.reason == "REBOOT" and event.env["new_ip_address"] == address, event
    after = events(lab.sw)
    assert grew(before, after, "dhcp-ack") >= 1 and grew(before, after, "dhcp-request") >= 1, after
    assert grew(before, after, "dhcp-discover") == 0 and grew(before, after, "dhcp-nak") == 0, after
    row = lease_of(lab.sw, mac)
    assert row is not None and row["address"] == address and row["expires_in"] > before_expiry, row


# --- 4. RELEASE (and 3: back again after it) ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["udhcpc", "dhclient", "dhcpcd"])
def test_release_frees_the_lease_and_the_same_mac_comes_back(lab: Lab, kind: str) -> None:
    client, mac, address, ns = lab.clients[kind], lab.macs[kind], str(lab.address(kind)), lab.port(kind)
    name = HOSTNAMES[kind]
    assert lease_of(lab.sw, mac) is not None
    before = events(lab.sw)
    client.release()
    wait_for(lambda: lease_of(lab.sw, mac) is None, 10, f"{kind}'s lease to go after its release")
    assert all(row["mac"] != mac for row in leases(lab.sw)), leases(lab.sw)
    assert grew(before, events(lab.sw), "dhcp-release") == 1
    wait_for(lambda: all(r["mac"] != mac for r in lease_file(lab.sw)), 5, "the lease file to drop it")
    assert lab.dig(f"{name}.{lab.domain}") == []
    client.stop()
    if kind == "dhcpcd":
        return  # a second ARP-probed run costs ~5 s: udhcpc and dhclient show the same MAC's return
    # a new run from the same namespace (its MAC), with fresh client state: nothing of the old lease
    # on the client's side, so the address comes from the server's memory of the MAC
    run = run_udhcpc if kind == "udhcpc" else run_dhclient
    again = run(ns, "eth0", hostname=name)
    assert again.address is not None and str(again.address.ip) == address, again
    row = lease_of(lab.sw, mac)
    assert row is not None and row["address"] == address and row["hostname"] == name, row


# --- 8. leases belong to ports ---------------------------------------------------------------------------
def test_port_del_forgets_the_lease_and_port_add_dhcp_serves(world: Env) -> None:
    """A pool of 10.1.0.2-10.1.0.5 with a static port at .2: every address a client gets is one no
    static port has, a static port added live takes none a client has, `port del` forgets the lease."""
    p = {t: world.ns(t) for t in ("p0", "p1", "p2", "p3")}
    pool = {IPv4Address(f"10.1.0.{i}") for i in range(2, 6)}
    with own_instance(world, "--segment", f"lan={p['p0']},{p['p1']}=dhcp", "--dhcp-range",
                      "10.1.0.2-10.1.0.5") as sw:  # fmt: skip
        assert static_addresses(sw) == {STATIC_A}
        first = run_udhcpc(p["p1"], "eth0", hostname="first")
        assert first.address is not None and first.address.ip in pool - {STATIC_A}, first
        added = sw.env.vswitch("port", "add", p["p2"], "--name", sw.name, "--json")
        assert added.returncode == 0, added.stderr
        static = IPv4Interface(json.loads(added.stdout)["address"]).ip
        assert static in SUBNET and static not in (STATIC_A, first.address.ip), added.stdout
        added = sw.env.vswitch("port", "add", f"{p['p3']}=dhcp", "--name", sw.name, "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["address"] is None, added.stdout
        assert kernel_view(p["p3"], "eth0").addresses == []
        assert static_addresses(sw) == {STATIC_A, static}
        second = run_udhcpc(p["p3"], "eth0", hostname="second")
        left = pool - {STATIC_A, static, first.address.ip}
        assert second.address is not None and {second.address.ip} == left, (second, left)
        assert second.router == ROUTER, second
        rows = {row["port"]: row for row in leases(sw)}
        assert set(rows) == {p["p1"], p["p3"]} and rows[p["p3"]]["address"] == str(second.address.ip), rows
        before = events(sw)
        gone = sw.env.vswitch("port", "del", p["p1"], "--name", sw.name)
        assert gone.returncode == 0, gone.stderr
        wait_for(lambda: all(row["port"] != p["p1"] for row in sw.request("leases")), 5, "p1's lease to go")
        assert [row["port"] for row in leases(sw)] == [p["p3"]]
        assert grew(before, events(sw), "dhcp-port-leases-forgotten") == 1
        assert dig(p["p0"], f"first.{sw.name}", server=str(ROUTER)) == []
        assert dig(p["p0"], f"second.{sw.name}", server=str(ROUTER)) == [str(second.address.ip)]


# --- 5. expiry ----------------------------------------------------------------------------------------------
def test_lease_expires_unless_renewed(world: Env) -> None:
    """--lease-time 4s: a udhcpc that bound and exited (no release) loses its lease: gone from `vswitch
    leases`, the lease file and DNS. A dhclient kept running renews by itself at T1 (2 s) and keeps its
    lease throughout. (busybox udhcpc cannot be the one that stays: it takes any lease shorter than
    122 s as 122 s, so it would first renew after a minute.)"""
    e = {t: world.ns(t) for t in ("e0", "e1", "e2")}
    segment = f"lan={e['e0']},{e['e1']}=dhcp,{e['e2']}=dhcp"
    with (
        own_instance(world, "--segment", segment, "--lease-time", "4s") as sw,
        start_dhclient(e["e1"], "eth0", hostname="keeper") as keeper,
    ):
        kept = keeper.result()
        bound = time.monotonic()
        assert kept.lease_time == 4 and kept.address is not None, kept.reported
        assert kept.reported["new_dhcp_renewal_time"] == "2", kept.reported
        before = events(sw)
        stopped = run_udhcpc(e["e2"], "eth0", hostname="quitter")  # exits bound: no release
        assert stopped.lease_time == 4 and stopped.address is not None, stopped
        gone_mac, kept_mac = mac_of_link(e["e2"]), mac_of_link(e["e1"])
        assert lease_of(sw, gone_mac) is not None
        assert dig(e["e0"], f"quitter.{sw.name}", server=str(ROUTER)) == [str(stopped.address.ip)]
        start = time.monotonic()

        def expired() -> bool:
            assert lease_of(sw, kept_mac) is not None, "the renewing client lost its lease"
            return lease_of(sw, gone_mac) is None

        wait_for(expired, 4 + 15, "the stopped client's lease to expire")
        assert time.monotonic() - start > 1.0  # it was not gone at once: it expired
        rows = leases(sw)
        assert [row["mac"] for row in rows] == [kept_mac], rows
        wait_for(lambda: all(r["mac"] != gone_mac for r in lease_file(sw)), 15, "the lease file to drop it")
        wait_for(lambda: events(sw).get("dhcp-lease-expired", 0) >= 1, 15, "the expiry to be counted")
        assert dig(e["e0"], f"quitter.{sw.name}", server=str(ROUTER)) == []
        # the kept client renewed by itself, at least twice: past its first lease's end
        wait_for(
            lambda: [ev.reason for ev in keeper.events()].count("RENEW") >= 2,
            10,
            "two renewals by dhclient",
        )
        assert time.monotonic() - bound > 4.0  # its first lease is over, and it has one (expired())
        after = events(sw)
        assert grew(before, after, "dhcp-request") >= 3 and grew(before, after, "dhcp-ack") >= 3, after
        assert grew(before, after, "dhcp-nak") == 0, after
        row = lease_of(sw, kept_mac)
        assert row is not None and row["address"] == str(kept.address.ip), row
        assert 0 < row["expires_in"] <= 4, row
        assert keeper.alive()
        view = kernel_view(e["e1"], "eth0")
        assert [a for a, _ in view.addresses] == [kept.address], view
        assert dig(e["e0"], f"keeper.{sw.name}", server=str(ROUTER)) == [str(kept.address.ip)]


# --- 9. --no-dhcp -------------------------------------------------------------------------------------------
def test_no_dhcp_serves_nothing(world: Env) -> None:
    n = {t: world.ns(t) for t in ("n0", "n1")}
    with own_instance(world, "--segment", f"lan={n['n0']},{n['n1']}=dhcp", "--no-dhcp") as sw:
        assert sw.query("status")["services"]["dhcp"] is False
        with pytest.raises(ClientError) as failed:
            run_udhcpc(n["n1"], "eth0", timeout=4)
        assert "broadcasting discover" in str(failed.value)
        assert kernel_view(n["n1"], "eth0").addresses == []
        counted = events(sw)
        assert not [k for k in counted if k.startswith("dhcp")], counted
        assert leases(sw) == []
        # the resolv.conf is still vswitch's (DNS is on): nobody rewrote it
        assert parse_resolv_conf(resolv_conf_of(n["n1"])).nameservers == [str(ROUTER)]

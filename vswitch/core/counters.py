"""Named counters: per-port traffic and drops by reason, shared by the core and the IO shell.

The core counts what it received and what it dropped (with a reason); the shell counts what it
actually wrote, and the writes the kernel refused. Lists indexed by port id keep the hot path to one
index operation per counter.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Any


class Drop(StrEnum):
    """Every reason a packet can die in vswitch. The value is the counter's name."""

    # L2 classification (the kernel bridge's br_handle_frame checks, in its order)
    RUNT = "runt"  # shorter than the virtio-net header plus an Ethernet header
    BAD_VNET_HEADER = "bad-vnet-header"  # checksum offsets outside the frame
    SRC_MULTICAST = "src-multicast"  # a group address as source (IEEE 802 section 8.2)
    SRC_ZERO = "src-zero"  # 00:00:00:00:00:00 as source
    SRC_IS_SWITCH = "src-is-switch"  # a port claims a MAC the switch itself owns (static entry)
    RESERVED_GROUP = "reserved-group"  # 01:80:c2:00:00:0X, never forwarded (IEEE 802.1Q table 8-1)
    SAME_PORT = "same-port"  # destination learned on the ingress port; never reflect
    NO_DESTINATION = "no-destination"  # a flood with no other port to go to
    # IO shell
    TX_QUEUE_FULL = "tx-queue-full"  # the destination tap would block (EAGAIN); the kernel drops too
    TX_ERROR = "tx-error"  # the kernel refused the write (EINVAL, EIO, ...)
    TRUNCATED = "truncated"  # a read filled the whole buffer: the frame may have been cut
    OVER_MTU = "over-mtu"  # from a port, larger than its segment's MTU + 18 and not a GSO frame
    HOOK = "hook"  # a packet hook (Python API) returned None, or raised
    RX_ERROR = "rx-error"  # the kernel failed one read (the frame is lost; the port keeps going)
    INTERNAL_ERROR = "internal-error"  # a bug in vswitch raised on this frame; logged, port keeps going
    # L3 and NAT
    UNSUPPORTED_ETHERTYPE = "unsupported-ethertype"  # to the router's MAC, neither IPv4 nor ARP
    ARP_MALFORMED = "arp-malformed"  # not Ethernet/IPv4 ARP (RFC 826), short, or bad sender
    ARP_QUEUE_FULL = "arp-queue-full"  # oldest packet waiting on one next hop pushed out
    ARP_PENDING_FULL = "arp-pending-full"  # too many distinct next hops being resolved at once
    ARP_FAILED = "arp-failed"  # next hop did not answer (or is in the negative cache)
    IP_TRUNCATED = "ip-truncated"  # shorter than a minimal IPv4 header (RFC 1812 5.2.2)
    IP_BAD_VERSION = "ip-bad-version"  # version field is not 4
    IP_BAD_IHL = "ip-bad-ihl"  # header length below 5 words or beyond the frame
    IP_BAD_LENGTH = "ip-bad-length"  # total length below the header or beyond the frame
    IP_BAD_CHECKSUM = "ip-bad-checksum"  # header checksum does not verify
    IP_MARTIAN_SOURCE = "ip-martian-source"  # 0/8, 127/8, multicast or broadcast source
    IP_BROADCAST = "ip-broadcast"  # limited or directed broadcast: never forwarded (RFC 1812 5.3.5)
    IP_MULTICAST = "ip-multicast"  # multicast destination: we do not route multicast
    TTL_EXCEEDED = "ttl-exceeded"  # would leave with TTL 0 (RFC 1812 5.3.1)
    NO_ROUTE = "no-route"  # no route to the destination
    FRAG_NEEDED = "fragmentation-needed"  # too big for the egress MTU with DF set (RFC 1191)
    FRAG_UNSUPPORTED = "fragmentation-unsupported"  # too big without DF, but a GSO frame (or an MTU < 28)
    IP_BAD_FRAGMENT = "ip-bad-fragment"  # to be fragmented, but its data would end past 65,535 (RFC 791)
    TO_ROUTER = "to-router"  # addressed to the router and not something it answers
    L4_TRUNCATED = "l4-truncated"  # transport header cut short where the router must read it
    NAT_NO_FLOW = "nat-no-flow"  # TCP that is not a SYN and matches no tracked flow
    NAT_UNSOLICITED = "nat-unsolicited"  # inbound to the NAT address, no flow and no forward
    NAT_PORTS_EXHAUSTED = "nat-ports-exhausted"  # no free external port for a new mapping
    NAT_FRAGMENT = "nat-fragment"  # a later fragment needing NAT whose first never came (or no room to wait)
    NAT_ICMP_NO_FLOW = "nat-icmp-no-flow"  # ICMP error to the NAT address about no known flow
    NAT_UNSUPPORTED = "nat-unsupported"  # would need masquerading, but not TCP, UDP or ICMP echo
    NAT_CLASH = "nat-clash"  # the translated tuple is already tracked, or is the packet's own (src = dst)
    IP_MARTIAN_DESTINATION = "ip-martian-destination"  # 0/8, 127/8, 240/4 (RFC 1812 5.3.7)
    L4_BAD_CHECKSUM = "l4-bad-checksum"  # an ICMP message to the router that does not verify
    CONNTRACK_FULL = "conntrack-full"  # table full and every flow is established (assured)
    # IPv6 (RFC 8200, RFC 4443) and Neighbor Discovery (RFC 4861)
    IPV6_TRUNCATED = "ipv6-truncated"  # shorter than an IPv6 header
    IPV6_BAD_VERSION = "ipv6-bad-version"  # ethertype IPv6, version field not 6
    IPV6_BAD_LENGTH = "ipv6-bad-length"  # payload length beyond the frame, or 0 (a jumbogram)
    IPV6_MARTIAN_SOURCE = "ipv6-martian-source"  # multicast, loopback, or unspecified to unicast
    IPV6_MARTIAN_DESTINATION = "ipv6-martian-destination"  # unspecified or loopback
    IPV6_EXTENSION_TRUNCATED = "ipv6-extension-truncated"  # an extension header runs past the packet
    IPV6_EXTENSION_CHAIN_TOO_LONG = "ipv6-extension-chain-too-long"  # more than 8 extension headers
    IPV6_BAD_EXTENSION = "ipv6-bad-extension"  # hop-by-hop options not first (RFC 8200 4.1)
    IPV6_UNKNOWN_OPTION = "ipv6-unknown-option"  # a hop-by-hop option whose type says discard (4.2)
    IPV6_ROUTING_TYPE_0 = "ipv6-routing-type-0"  # deprecated source routing (RFC 5095)
    IPV6_LINK_LOCAL_DESTINATION = "ipv6-link-local-destination"  # fe80::/10 not ours: never routed
    IPV6_BEYOND_SCOPE = "ipv6-beyond-scope"  # a link-local source would leave its link (RFC 4443 3.1)
    IPV6_MULTICAST = "ipv6-multicast"  # a multicast destination the router does not listen to, to its MAC
    HOP_LIMIT_EXCEEDED = "hop-limit-exceeded"  # would leave with hop limit 0 (RFC 8200 3)
    PACKET_TOO_BIG = "packet-too-big"  # over the next hop's MTU: routers never fragment (RFC 8200 5)
    NPT_UNMAPPABLE = "npt-unmappable"  # NPTv6 finds no word to keep the address's sum (RFC 6296 3.5)
    ND_BAD_HOP_LIMIT = (
        "nd-bad-hop-limit"  # ND with a hop limit other than 255: from off-link (RFC 4861 6.1, 7.1)
    )
    ND_MALFORMED = "nd-malformed"  # short, code not 0, a bad option or target (RFC 4861 6.1, 7.1)
    ND_CLAIMS_ROUTER_ADDRESS = "nd-claims-router-address"  # an advertisement for one of our addresses
    ND_REDIRECT = "nd-redirect"  # a redirect sent to a router: only hosts follow them (RFC 4861 8.1)
    RA_GUARD = "ra-guard"  # a router advertisement from a port: a rogue router (RFC 6105)
    ND_QUEUE_FULL = "nd-queue-full"  # oldest packet waiting on one next hop pushed out
    ND_PENDING_FULL = "nd-pending-full"  # too many distinct next hops being resolved at once
    ND_FAILED = "nd-failed"  # next hop did not answer its solicitations (or is in the negative cache)
    # VXLAN (RFC 7348): what the underlay socket received, and what cannot go into the tunnel
    VXLAN_RUNT = "vxlan-runt"  # shorter than a VXLAN header and an inner Ethernet header
    VXLAN_BAD_FLAGS = "vxlan-bad-flags"  # I flag not set, or a reserved bit set (the kernel drops these)
    VXLAN_UNKNOWN_VNI = "vxlan-unknown-vni"  # a VNI no segment of ours carries
    VXLAN_UNKNOWN_REMOTE = "vxlan-unknown-remote"  # from an address that is not one of the VNI's remotes
    VXLAN_TOO_BIG = "vxlan-too-big"  # an inner frame over the tunnel's MTU (the underlay's minus 50)
    # 802.1Q trunks (IEEE 802.1Q): what a VLAN-aware switch refuses
    VLAN_UNKNOWN = "vlan-unknown"  # tagged on a trunk with a VID the trunk does not carry
    VLAN_UNTAGGED = "vlan-untagged"  # untagged on a trunk with no native segment
    VLAN_ON_ACCESS = "vlan-on-access"  # tagged on an access port of a segment that is on a trunk
    # The router's services: DHCPv4 (RFC 2131) and DNS
    DHCP_MALFORMED = "dhcp-malformed"  # not a BOOTREQUEST for Ethernet with a DHCP message type
    DHCP_NOT_SERVED = "dhcp-not-served"  # from a tunnel's remote, relayed, or on a segment without DHCP
    DHCP_CHADDR_MISMATCH = "dhcp-chaddr-mismatch"  # chaddr is not the frame's source MAC
    DHCP_RATE_LIMITED = "dhcp-rate-limited"  # over the server's token bucket (scapy's parse is slow)
    DHCP_POOL_EXHAUSTED = "dhcp-pool-exhausted"  # a DISCOVER with no free address (or at the lease bound)
    DNS_MALFORMED = "dns-malformed"  # shorter than a DNS header, or a response sent to the server
    DNS_PENDING_FULL = "dns-pending-full"  # too many questions already waiting for the upstream
    DNS_RATE_LIMITED = "dns-rate-limited"  # over the server's token bucket (dnspython's parse is slow)
    # Network emulation (emulation.py): an impaired link's stage, or a partition between two ports
    LINK_DOWN = "link-down"  # the link is set down, or in the down phase of a flap
    IMPAIR_LOSS = "impair-loss"  # lost on purpose (--loss, random or in a burst)
    IMPAIR_RATE = "impair-rate"  # would wait longer than the shaper's latency for tokens (--rate)
    IMPAIR_LIMIT = "impair-limit"  # the impaired link's queue is full (--limit)
    PARTITIONED = "partitioned"  # from a port on one side of a partition to one on the other
    # Protections (protect.py): what a port may send, and how much of the flooded kinds
    PORT_MAC_LIMIT = "port-mac-limit"  # a new source MAC beyond the port's --port-mac-max
    STORM_BROADCAST = "storm-broadcast"  # over the port's --storm-limit of broadcasts this second
    STORM_MULTICAST = "storm-multicast"  # over the port's --storm-limit of multicasts this second
    STORM_UNKNOWN_UNICAST = "storm-unknown-unicast"  # over the limit of floods to an unknown MAC
    LOOP_BLOCKED = "loop-blocked"  # from a port the loop guard has blocked (a MAC flapping onto it)
    SPOOFED_MAC = "spoofed-mac"  # --port-security: a source MAC that is not the port's own
    SPOOFED_IPV4 = "spoofed-ipv4"  # --port-security: an IPv4 source that is not one of the port's
    SPOOFED_ARP = "spoofed-arp"  # --port-security: an ARP sender (MAC or address) not the port's
    SPOOFED_IPV6 = "spoofed-ipv6"  # --port-security: an IPv6 source or ND target not the port's
    # Port mirroring (--mirror): a SPAN port only receives copies
    MIRROR_PORT = "mirror-port"  # sent by a mirror (SPAN) port: it never sends into a segment


class Event(StrEnum):
    """Notable things that are not drops, counted switch-wide. The value is the counter's name."""

    FDB_LEARNED = "fdb-learned"
    FDB_MOVES = "fdb-moves"
    FDB_FULL = "fdb-full"
    FDB_AGED = "fdb-aged"
    LOOP_DETECTED = "loop-detected"  # a MAC flapped between ports: the later port is blocked
    LOOP_RECOVERED = "loop-recovered"  # a blocked port's hold time ran out: it forwards again
    VXLAN_REMOTE_LEARNED = "vxlan-remote-learned"  # a VTEP heard from on a tunnel with a group
    ARP_PROBE = "arp-probe"
    ARP_EVICTED = "arp-evicted"
    ARP_LEARNED = "arp-learned"
    ARP_CHANGED = "arp-changed"
    ARP_RESOLVED = "arp-resolved"
    ARP_FAILED = "arp-failed"
    ARP_AGED = "arp-aged"
    ARP_ADDRESS_CONFLICT = "arp-address-conflict"
    ARP_REPLIED = "arp-replied"
    CONNTRACK_NEW = "conntrack-new"
    CONNTRACK_TCP_INVALID = "conntrack-tcp-invalid"
    CONNTRACK_REMOVED = "conntrack-removed"
    CONNTRACK_EXPIRED = "conntrack-expired"
    CONNTRACK_EARLY_DROP = "conntrack-early-drop"
    CONNTRACK_UNCONFIRMED = "conntrack-unconfirmed"
    CONNTRACK_ROUTED_FLOW = "conntrack-routed-flow"
    NAT_NEW_FLOW = "nat-new-flow"
    NAT_MAPPING_NEW = "nat-mapping-new"
    NAT_MAPPING_FREED = "nat-mapping-freed"
    NAT_FRAGMENT_EVICTED = "nat-fragment-evicted"
    NAT_FRAGMENT_RELEASED = "nat-fragment-released"
    NAT_FRAGMENT_TRANSLATED = "nat-fragment-translated"
    NAT_FRAGMENT_HELD = "nat-fragment-held"
    NAT_ICMP_ERROR_TRANSLATED = "nat-icmp-error-translated"
    ND_PROBE = "nd-probe"
    ND_EVICTED = "nd-evicted"
    ND_LEARNED = "nd-learned"
    ND_CHANGED = "nd-changed"
    ND_RESOLVED = "nd-resolved"
    ND_FAILED = "nd-failed"
    ND_AGED = "nd-aged"
    ND_ADVERTISED = "nd-advertised"  # answered a solicitation for one of our addresses
    ND_DAD_DEFENDED = "nd-dad-defended"  # someone probed for one of our addresses; we answered
    RA_SENT = "ra-sent"
    RA_SOLICITED = "ra-solicited"  # a router solicitation answered
    IPV6_MULTICAST_IGNORED = "ipv6-multicast-ignored"  # a flooded group we do not listen to (MLD, mDNS)
    ICMPV6_ECHO_REPLIED = "icmpv6-echo-replied"
    ICMPV6_RATE_LIMITED = "icmpv6-rate-limited"  # an error not sent: over RFC 4443 2.4(f)'s bucket
    ICMPV6_ERROR_ABOUT_ERROR_SUPPRESSED = "icmpv6-error-about-error-suppressed"
    ICMPV6_NO_ROUTE_SENT = "icmpv6-no-route-sent"
    ICMPV6_BEYOND_SCOPE_SENT = "icmpv6-beyond-scope-sent"
    ICMPV6_ADDRESS_UNREACHABLE_SENT = "icmpv6-address-unreachable-sent"
    ICMPV6_PORT_UNREACHABLE_SENT = "icmpv6-port-unreachable-sent"
    ICMPV6_PACKET_TOO_BIG_SENT = "icmpv6-packet-too-big-sent"
    ICMPV6_TIME_EXCEEDED_SENT = "icmpv6-time-exceeded-sent"
    ICMPV6_PARAMETER_PROBLEM_SENT = "icmpv6-parameter-problem-sent"
    NOT_FOR_ROUTER = "not-for-router"
    BROADCAST_IGNORED = "broadcast-ignored"
    ORIGINATED_NO_ROUTE = "originated-no-route"
    ICMP_ECHO_REPLIED = "icmp-echo-replied"
    ICMP_ERROR_ABOUT_ICMP_ERROR_SUPPRESSED = "icmp-error-about-icmp-error-suppressed"
    ICMP_RATE_LIMITED = "icmp-rate-limited"
    ICMP_ERROR_SENT = "icmp-error-sent"
    ICMP_NET_UNREACHABLE_SENT = "icmp-net-unreachable-sent"
    ICMP_HOST_UNREACHABLE_SENT = "icmp-host-unreachable-sent"
    ICMP_PROTOCOL_UNREACHABLE_SENT = "icmp-protocol-unreachable-sent"
    ICMP_PORT_UNREACHABLE_SENT = "icmp-port-unreachable-sent"
    ICMP_FRAG_NEEDED_SENT = "icmp-frag-needed-sent"
    ICMP_TIME_EXCEEDED_SENT = "icmp-time-exceeded-sent"
    IP_FRAGMENTED = "ip-fragmented"
    IP_FRAGMENTS_MADE = "ip-fragments-made"
    FLOW_CACHE_HITS = "flow-cache-hits"
    FLOW_CACHE_MISSES = "flow-cache-misses"
    FLOW_CACHE_FLUSHED = "flow-cache-flushed"
    FLOW_CACHE_FULL_SKIP = "flow-cache-full-skip"
    FLOW_CACHE_EVICTED = "flow-cache-evicted"
    # Runtime faults (issue 22): each also writes one log line
    PORT_GONE = "port-gone"  # the port's tap went away (`ip link del`, its namespace deleted)
    PORT_LINK_DOWN = "port-link-down"  # set down in its namespace: writes to it fail (EIO) until up
    PORT_LINK_UP = "port-link-up"  # frames pass to or from a port that was down again
    CONTROL_SOCKET_RESTORED = "control-socket-restored"  # its file was removed: listening again
    CONTROL_CLIENT_STALLED = "control-client-stalled"  # stopped reading its replies: disconnected
    STATE_WRITE_FAILED = "state-write-failed"  # the state file (ledger) could not be rewritten
    OBSERVER_ERROR = "observer-error"
    # DHCPv4: messages received by type, and what the server sent or decided
    DHCP_DISCOVER = "dhcp-discover"
    DHCP_REQUEST = "dhcp-request"
    DHCP_DECLINE = "dhcp-decline"  # a client found its address in use: held back for a while
    DHCP_RELEASE = "dhcp-release"
    DHCP_INFORM = "dhcp-inform"
    DHCP_OFFER = "dhcp-offer"
    DHCP_ACK = "dhcp-ack"
    DHCP_NAK = "dhcp-nak"
    DHCP_OTHER_SERVER = "dhcp-other-server"  # a REQUEST choosing another server: our offer is freed
    DHCP_LEASE_EXPIRED = "dhcp-lease-expired"
    DHCP_OFFER_EXPIRED = "dhcp-offer-expired"
    DHCP_PORT_LEASES_FORGOTTEN = "dhcp-port-leases-forgotten"  # a port left: its leases went with it
    # DNS: questions, and how they were answered
    DNS_QUERY = "dns-query"
    DNS_LOCAL = "dns-local"  # answered from the ports and leases (NXDOMAIN included)
    DNS_NXDOMAIN = "dns-nxdomain"  # a local name (or private reverse name) that does not exist
    DNS_REFUSED = "dns-refused"  # not local, and no upstream to ask
    DNS_CACHE_HIT = "dns-cache-hit"
    DNS_FORWARDED = "dns-forwarded"
    DNS_TRUNCATED = "dns-truncated"  # an answer over the client's UDP size, sent cut with TC set
    DNS_UPSTREAM_TCP = "dns-upstream-tcp"  # the upstream's UDP answer was truncated: asked again over TCP
    DNS_UPSTREAM_TIMEOUT = "dns-upstream-timeout"  # no answer in time: the client got SERVFAIL
    DNS_UPSTREAM_MALFORMED = "dns-upstream-malformed"
    DNS_UPSTREAM_MISMATCH = "dns-upstream-mismatch"  # an unknown id, or not our question: ignored
    DNS_UPSTREAM_ERROR = "dns-upstream-error"  # the socket to the upstream failed (the shell's)


class Counters:
    """Per-port rx/tx packets and bytes, per-port drops by reason, and switch-wide events."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.rx_packets: list[int] = []
        self.rx_bytes: list[int] = []
        self.tx_packets: list[int] = []
        self.tx_bytes: list[int] = []
        self.drops: list[Counter[str]] = []
        self.events: Counter[str] = Counter()
        # The flow cache's lookups (flowcache.py), plain ints on its per-packet path; shown as events.
        self.flow_cache_hits = 0
        self.flow_cache_misses = 0

    def journal_save(self) -> Any:
        """Every count, for a trace run to put back (journal.py)."""
        return (
            [list(column) for column in (self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes)],
            [Counter(per_port) for per_port in self.drops],
            Counter(self.events),
            self.flow_cache_hits,
            self.flow_cache_misses,
        )

    def journal_restore(self, saved: Any) -> None:
        columns, drops, events, hits, misses = saved
        for column, values in zip(
            (self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes),
            columns,
            strict=True,
        ):
            column[:] = values
        for per_port, values in zip(self.drops, drops, strict=True):
            per_port.clear()  # in place: the router holds a port's Counter while it decides
            per_port.update(values)
        self.events.clear()  # in place: the FDBs and the flow cache count into it
        self.events.update(events)
        self.flow_cache_hits = hits
        self.flow_cache_misses = misses

    def add_port(self, name: str) -> int:
        """Make room for one more port and return its id."""
        self.names.append(name)
        for column in (self.rx_packets, self.rx_bytes, self.tx_packets, self.tx_bytes):
            column.append(0)
        self.drops.append(Counter())
        return len(self.names) - 1

    def received(self, port: int, packets: int, nbytes: int) -> None:
        """Count a batch of frames read off port: nbytes is their length without the vnet headers."""
        self.rx_packets[port] += packets
        self.rx_bytes[port] += nbytes

    def drop(self, port: int, reason: str) -> None:
        self.drops[port][reason] += 1

    def total_drops(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for per_port in self.drops:
            total.update(per_port)
        return total

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy, for the control socket and tests."""
        return {
            "ports": {
                name: {
                    "rx_packets": self.rx_packets[i],
                    "rx_bytes": self.rx_bytes[i],
                    "tx_packets": self.tx_packets[i],
                    "tx_bytes": self.tx_bytes[i],
                    "drops": dict(sorted(self.drops[i].items())),
                }
                for i, name in enumerate(self.names)
            },
            "drops": dict(sorted(self.total_drops().items())),
            "events": dict(sorted(self.all_events().items())),
        }

    def all_events(self) -> Counter[str]:
        """The events, with the flow cache's hits and misses once it has seen a packet."""
        events = Counter(self.events)
        if self.flow_cache_hits or self.flow_cache_misses:
            events[Event.FLOW_CACHE_HITS] = self.flow_cache_hits
            events[Event.FLOW_CACHE_MISSES] = self.flow_cache_misses
        return events

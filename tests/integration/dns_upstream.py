"""A small authoritative DNS server for the tests' outside world, run inside the outside namespace.

It plays the resolver `--dns-upstream` points at (dnspython does the wire format, as in vswitch; the
server's logic is this file's, so a test knows exactly what the upstream said). Zone, under ZONE:
- NAME.ZONE A 198.18.7.N (N from the name's length), TTL 60; AAAA 2001:2::7;
- big.ZONE TXT: 40 strings of 60 bytes, about 2.5 KB: over UDP it comes back truncated (TC) to any
  client that cannot take it, so the forwarder has to ask again over TCP;
- tcponly.ZONE A: over UDP always TC with no answer; over TCP the answer 198.18.7.200;
- slow.ZONE: never answered (the forwarder's timeout answers SERVFAIL);
- anything else: NXDOMAIN with an SOA (negative TTL 30).
Each question is logged to stdout as one line, `udp NAME TYPE` or `tcp NAME TYPE`, flushed, so a test
counts what reached the upstream (caching, TCP fallback). Stops by itself after --lifetime seconds.

    python dns_upstream.py ADDRESS [--port 53] [--zone example.test] [--lifetime 120]
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct
import sys
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

BIG_STRINGS = 40


def answer(query: dns.message.Message, zone: dns.name.Name, tcp: bool) -> dns.message.Message | None:
    """The response to query, or None to stay silent."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    name, rdtype = question.name, question.rdtype
    if not name.is_subdomain(zone):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    label = name.relativize(zone).to_text().lower()
    if label == "slow":
        return None
    if label == "tcponly":
        if not tcp:
            response.flags |= dns.flags.TC
            return response
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "198.18.7.200"))
        return response
    if label == "big" and rdtype == dns.rdatatype.TXT:
        texts = [f'"{i:02d}' + "x" * 57 + '"' for i in range(BIG_STRINGS)]
        response.answer.append(dns.rrset.from_text_list(name, 60, "IN", "TXT", texts))
        return response
    if label in ("missing", "") or label.startswith("missing"):
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(
            dns.rrset.from_text(zone, 30, "IN", "SOA", f"ns.{zone} admin.{zone} 1 60 60 600 30")
        )
        return response
    if rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", f"198.18.7.{len(label) % 250 + 1}"))
    elif rdtype == dns.rdatatype.AAAA:
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "AAAA", "2001:2::7"))
    return response


def log(transport: str, query: dns.message.Message) -> None:
    q = query.question[0]
    print(transport, q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype), flush=True)


def serve(address: str, port: int, zone: dns.name.Name, lifetime: float) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.bind((address, port))
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ)
    sel.register(tcp, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            if key.fileobj is udp:
                wire, peer = udp.recvfrom(65535)
                try:
                    query = dns.message.from_wire(wire)
                except Exception:  # the test server ignores what it cannot read
                    continue
                log("udp", query)
                response = answer(query, zone, tcp=False)
                if response is not None:
                    size = max(query.payload, 512) if query.edns >= 0 else 512
                    udp.sendto(response.to_wire(max_size=size, prefer_truncation=True), peer)
            else:
                conn, _ = tcp.accept()
                with conn:
                    conn.settimeout(2.0)
                    try:
                        (length,) = struct.unpack("!H", _read(conn, 2))
                        query = dns.message.from_wire(_read(conn, length))
                    except (OSError, EOFError, ValueError, struct.error):
                        continue
                    except Exception:  # not DNS: drop the connection
                        continue
                    log("tcp", query)
                    response = answer(query, zone, tcp=True)
                    if response is not None:
                        wire = response.to_wire(max_size=65535)
                        conn.sendall(struct.pack("!H", len(wire)) + wire)


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--zone", default="example.test")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args(argv)
    serve(args.address, args.port, dns.name.from_text(args.zone), args.lifetime)


if __name__ == "__main__":
    main(sys.argv[1:])

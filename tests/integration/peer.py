"""A traffic peer run inside a namespace (`ip netns exec NS python peer.py ...`): plain sockets only
(and one raw socket, to send fragments in an order no stack would).

Receivers print `ready` once bound, so the test can start the sender without guessing; every mode
prints one JSON line with what it saw, and bounds itself in time with --timeout.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.server
import json
import random
import select
import socket
import socketserver
import struct
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

CHUNK = 1 << 20
STAMP = struct.Struct("!HI")  # payload size, index: a wrong, reordered or missing datagram shows up


def stream_chunks(total: int) -> list[int]:
    """Chunk sizes for `total` bytes (the last one short); the data comes from random.Random(seed)."""
    sizes = [CHUNK] * (total // CHUNK)
    if total % CHUNK:
        sizes.append(total % CHUNK)
    return sizes


def udp_payload(size: int, index: int) -> bytes:
    """Datagram `index` of length `size`: a stamp, then bytes that depend on both."""
    body = random.Random(size * 1_000_003 + index).randbytes(size - STAMP.size)
    return STAMP.pack(size, index) + body


def ready() -> None:
    print("ready", flush=True)


def tcp_recv(args: argparse.Namespace) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((args.bind, args.port))
        srv.listen(1)
        srv.settimeout(args.timeout)
        ready()
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(args.timeout)
            digest = hashlib.sha256()
            received = 0
            while chunk := conn.recv(1 << 18):
                digest.update(chunk)
                received += len(chunk)
    return {"bytes": received, "sha256": digest.hexdigest()}


def tcp_send(args: argparse.Namespace) -> dict[str, object]:
    deadline = time.monotonic() + args.timeout
    rng = random.Random(args.seed)
    digest = hashlib.sha256()
    sent = 0
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as conn:
        for size in stream_chunks(args.bytes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sent only {sent} of {args.bytes} bytes in {args.timeout}s")
            data = rng.randbytes(size)
            digest.update(data)
            conn.sendall(data)
            sent += size
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the receiver's close: everything was read
    return {"bytes": sent, "sha256": digest.hexdigest()}


def datagrams(sock: socket.socket, count: int, timeout: float) -> Iterator[tuple[bytes, Any]]:
    """(data, sender) for up to count datagrams, until timeout seconds have passed in all."""
    deadline = time.monotonic() + timeout
    for _ in range(count):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        sock.settimeout(left)
        try:
            yield sock.recvfrom(65536)
        except TimeoutError:
            return


def udp_recv(args: argparse.Namespace) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((args.bind, args.port))
        ready()
        got = [data.hex() for data, _ in datagrams(sock, args.count, args.timeout)]
    return {"datagrams": got}


def udp_send(args: argparse.Namespace) -> dict[str, object]:
    sizes = [int(s) for s in args.sizes.split(",")]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((args.host, args.port))
        for size in sizes:
            for index in range(args.count):
                sock.send(udp_payload(size, index))
                sent += 1
    return {"sent": sent}


def ones_complement(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data: written here, not imported, so the peer checks
    vswitch's arithmetic instead of sharing it."""
    data += b"\x00" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_fragments_reversed(args: argparse.Namespace) -> dict[str, object]:
    """One UDP datagram of --size bytes, sent as IPv4 fragments of --fragment bytes of data each,
    last fragment first (a raw socket with IP_HDRINCL: the kernel sends the headers we write)."""
    src = socket.inet_aton(args.source)
    dst = socket.inet_aton(args.host)
    payload = udp_payload(args.size, 0)
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    header = struct.pack("!HHHH", args.sport, args.port, udp_len, 0)
    checksum = ones_complement(pseudo + header + payload) or 0xFFFF
    datagram = struct.pack("!HHHH", args.sport, args.port, udp_len, checksum) + payload
    ident = random.randrange(1, 0xFFFF)
    pieces = []
    for offset in range(0, len(datagram), args.fragment):
        data = datagram[offset : offset + args.fragment]
        more = 0x2000 if offset + args.fragment < len(datagram) else 0
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident, more | offset // 8, 64,
                         socket.IPPROTO_UDP, 0, src, dst)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", ones_complement(ip)) + ip[12:]
        pieces.append(ip + data)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for piece in reversed(pieces):
            sock.sendto(piece, (args.host, 0))
    return {"fragments": len(pieces), "expected": payload.hex()}


class QuietHTTPServer(http.server.HTTPServer):
    """HTTPServer without its reverse DNS lookup of the bind address (10 s in a namespace with no DNS)."""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def http_serve(args: argparse.Namespace) -> dict[str, object]:
    """Answer --count GET requests with 'hello from BIND', then report each client's address."""
    clients: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            clients.append(self.client_address[0])
            body = f"hello from {args.bind}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *items: object) -> None:
            print(f"{self.client_address[0]} {format % items}", file=sys.stderr, flush=True)

    server = QuietHTTPServer((args.bind, args.port), Handler)
    server.timeout = args.timeout
    deadline = time.monotonic() + args.timeout
    ready()
    with server:
        while len(clients) < args.count and time.monotonic() < deadline:
            server.handle_request()
    return {"clients": clients}


def http_get(args: argparse.Namespace) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy from the env
    with opener.open(args.url, timeout=args.timeout) as response:
        return {"status": response.status, "body": response.read().decode()}


def udp_echo(args: argparse.Namespace) -> dict[str, object]:
    """Echo --count datagrams back to their sender; report who sent them."""
    peers: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.bind, args.port))
        ready()
        for data, peer in datagrams(sock, args.count, args.timeout):
            peers.append(f"{peer[0]}:{peer[1]}")
            sock.sendto(data, peer)
    return {"peers": peers}


def udp_ask(args: argparse.Namespace) -> dict[str, object]:
    """Send one datagram on a connected socket and wait for the answer, or for the ICMP error."""
    payload = args.payload.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((args.host, args.port))
        host, port = sock.getsockname()
        local = f"{host}:{port}"
        sock.settimeout(args.timeout)
        sock.send(payload)
        try:
            data = sock.recv(65536)
        except ConnectionRefusedError:
            return {"local": local, "reply": None, "error": "ConnectionRefusedError"}
        except TimeoutError:
            return {"local": local, "reply": None, "error": "timeout"}
    return {"local": local, "reply": data.decode(errors="replace"), "error": None}


def tcp_connect(args: argparse.Namespace) -> dict[str, object]:
    """Try one TCP connection; report how it ended and how long that took."""
    start = time.monotonic()
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as conn:
            local = conn.getsockname()
            result, detail = "connected", f"{local[0]}:{local[1]}"
    except ConnectionRefusedError:
        result, detail = "refused", ""
    except TimeoutError:
        result, detail = "timeout", ""
    except OSError as exc:
        result = "unreachable" if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "error"
        detail = str(exc)
    return {"result": result, "detail": detail, "elapsed": round(time.monotonic() - start, 3)}


def tcp_accept(args: argparse.Namespace) -> dict[str, object]:
    """Accept (and close) connections until a line arrives on stdin or --timeout; report the peers.

    The test decides when the observation ends (it writes a line), so nothing waits on a guess.
    """
    peers: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((args.bind, args.port))
        srv.listen(16)
        ready()
        deadline = time.monotonic() + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([srv, sys.stdin], [], [], left)
            if srv in readable:
                conn, peer = srv.accept()
                conn.close()
                peers.append(peer[0])
                print(f"accepted {peer[0]}", file=sys.stderr, flush=True)
            if sys.stdin in readable:
                break
    return {"peers": peers}


def tcp_hold(args: argparse.Namespace) -> dict[str, object]:
    """Connect, print the local address, keep the connection open until a line on stdin (or timeout)."""
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as conn:
        local = conn.getsockname()
        print(f"connected {local[0]}:{local[1]}", flush=True)
        select.select([sys.stdin], [], [], args.timeout)
    return {"local": f"{local[0]}:{local[1]}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("tcp-recv")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("tcp-send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("udp-recv")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("udp-send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--count", type=int, required=True)
    p = sub.add_parser("udp-fragments-reversed")
    p.add_argument("--source", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--fragment", type=int, default=1000, help="data bytes per fragment (a multiple of 8)")
    p = sub.add_parser("http-serve")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("http-get")
    p.add_argument("--url", required=True)
    p = sub.add_parser("udp-echo")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("udp-ask")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--payload", default="ping")
    for mode in ("tcp-connect", "tcp-hold"):
        p = sub.add_parser(mode)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("tcp-accept")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    for p in sub.choices.values():
        p.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    modes = {
        "tcp-recv": tcp_recv,
        "tcp-send": tcp_send,
        "udp-recv": udp_recv,
        "udp-send": udp_send,
        "udp-fragments-reversed": udp_fragments_reversed,
        "http-serve": http_serve,
        "http-get": http_get,
        "udp-echo": udp_echo,
        "udp-ask": udp_ask,
        "tcp-connect": tcp_connect,
        "tcp-accept": tcp_accept,
        "tcp-hold": tcp_hold,
    }
    print(json.dumps(modes[args.mode](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

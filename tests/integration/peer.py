"""A traffic peer run inside a namespace (`ip netns exec NS python peer.py ...`): plain sockets only.

Receivers print `ready` once bound, so the test can start the sender without guessing; every mode
prints one JSON line with what it saw, and bounds itself in time with --timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import struct
import sys
import time

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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
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


def udp_recv(args: argparse.Namespace) -> dict[str, object]:
    got: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((args.bind, args.port))
        ready()
        deadline = time.monotonic() + args.timeout
        while len(got) < args.count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            got.append(data.hex())
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
    for p in sub.choices.values():
        p.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    modes = {"tcp-recv": tcp_recv, "tcp-send": tcp_send, "udp-recv": udp_recv, "udp-send": udp_send}
    print(json.dumps(modes[args.mode](args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

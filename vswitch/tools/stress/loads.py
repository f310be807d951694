"""The soak's loads: small Python programs run inside the namespaces (`ip netns exec NS python -c`).

Each prints one JSON line of its counters every REPORT seconds and a last one with "done" when its
deadline has passed, so the soak can sample every stream without asking it anything. Every program
takes its own deadline in seconds and stops by itself.
"""

from __future__ import annotations

from typing import Final

REPORT: Final = 0.2  # seconds between a load's counter lines

# argv: host port pps seconds payload. A payload of `payload` bytes: the sequence number (8 bytes, big
# endian) and zeros. Paced on an absolute schedule (a late wake-up sends the packets that were due), so
# the rate holds on average whatever the sleep's granularity.
UDP_SENDER: Final = """
import json, socket, struct, sys, time
host, port, pps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, size = float(sys.argv[4]), int(sys.argv[5])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = bytes(max(0, size - 8))
start = time.monotonic()
sent = errors = 0
seq = 0
next_report = start
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = int((now - start) * pps) + 1
    while seq < due:
        try:
            sock.sendto(struct.pack("!Q", seq) + pad, (host, port))
            sent += 1
        except OSError:
            errors += 1
        seq += 1
    if now >= next_report:
        print(json.dumps({"sent": sent, "errors": errors}), flush=True)
        next_report = now + %(report)s
    time.sleep(0.002)
print(json.dumps({"sent": sent, "errors": errors, "done": True}), flush=True)
"""

# argv: host port seconds. Counts datagrams by sequence: received (unique), duplicates, reordered
# (arrived after a higher sequence), and the socket's own drops (SO_RXQ_OVFL: the kernel's count of
# datagrams it could not queue, a full receive buffer).
UDP_RECEIVER: Final = """
import json, select, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
SO_RXQ_OVFL = 40
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
sock.bind((host, port))
sock.setblocking(False)
print(json.dumps({"ready": True}), flush=True)
seen = bytearray(1 << 20)
received = duplicates = reordered = overflow = 0
highest = -1
start = time.monotonic()
next_report = start
while time.monotonic() - start < seconds:
    select.select([sock], [], [], 0.05)
    while True:
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, socket.CMSG_SPACE(4))
        except BlockingIOError:
            break
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                overflow = struct.unpack("I", value[:4])[0]
        if len(data) < 8:
            continue
        seq = struct.unpack_from("!Q", data)[0]
        while seq >= len(seen) * 8:
            seen.extend(bytes(len(seen)))
        byte, bit = divmod(seq, 8)
        if seen[byte] >> bit & 1:
            duplicates += 1
            continue
        seen[byte] |= 1 << bit
        received += 1
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    now = time.monotonic()
    if now >= next_report:
        print(json.dumps({"received": received, "duplicates": duplicates, "reordered": reordered,
                          "highest": highest, "socket_drops": overflow}), flush=True)
        next_report = now + %(report)s
print(json.dumps({"received": received, "duplicates": duplicates, "reordered": reordered,
                  "highest": highest, "socket_drops": overflow, "done": True}), flush=True)
"""

# argv: host port seconds. Accepts connections one at a time: reads the request line, answers, closes.
TCP_LISTENER: Final = """
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(512)
srv.settimeout(0.1)
print(json.dumps({"ready": True}), flush=True)
accepted = answered = errors = 0
start = time.monotonic()
next_report = start
while time.monotonic() - start < seconds:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        conn = None
    if conn is not None:
        accepted += 1
        try:
            conn.settimeout(2.0)
            if conn.recv(64):
                conn.sendall(b"ok\\n")
                answered += 1
        except OSError:
            errors += 1
        finally:
            conn.close()
    now = time.monotonic()
    if now >= next_report:
        print(json.dumps({"accepted": accepted, "answered": answered, "errors": errors}), flush=True)
        next_report = now + %(report)s
print(json.dumps({"accepted": accepted, "answered": answered, "errors": errors, "done": True}), flush=True)
"""

# argv: host port rate seconds. A new TCP connection every 1/rate seconds (a new NAT flow each: a new
# source port): send a line, read the answer to the server's FIN, then close with a reset (SO_LINGER 0,
# as busy HTTP clients do), so the flow's conntrack entry goes to CLOSE (10 s) and not TIME_WAIT (120 s).
NAT_CLIENT: Final = """
import errno, json, socket, struct, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
attempts = ok = 0
failed = {}
start = time.monotonic()
next_report = start
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = int((now - start) * rate) + 1
    while attempts < due:
        attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
            sock.sendall(b"hi\\n")
            answer = b""
            while chunk := sock.recv(64):
                answer += chunk
            if answer == b"ok\\n":
                ok += 1
            else:
                failed["bad-answer"] = failed.get("bad-answer", 0) + 1
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            failed[name] = failed.get(name, 0) + 1
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    if now >= next_report:
        print(json.dumps({"attempts": attempts, "ok": ok, "failed": failed}), flush=True)
        next_report = now + %(report)s
    time.sleep(0.002)
print(json.dumps({"attempts": attempts, "ok": ok, "failed": failed, "done": True}), flush=True)
"""

# argv: ifname rate seconds dst_mac. Ethernet frames with a new source MAC each (02:5a + a 32-bit
# counter: unicast, locally administered), to a unicast MAC nobody has (flooded on the segment),
# ethertype 0x88b5 (IEEE 802 local experimental), the sequence number in the payload.
MAC_SENDER: Final = """
import json, socket, struct, sys, time
ifname, rate, seconds, dst = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), bytes.fromhex(sys.argv[4])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((ifname, 0))
sent = errors = 0
start = time.monotonic()
next_report = start
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    due = int((now - start) * rate) + 1
    while sent + errors < due:
        seq = sent + errors
        src = b"\\x02\\x5a" + struct.pack("!I", seq)
        frame = dst + src + b"\\x88\\xb5" + struct.pack("!Q", seq) + bytes(38)
        try:
            sock.send(frame)
            sent += 1
        except OSError:
            errors += 1
    if now >= next_report:
        print(json.dumps({"sent": sent, "errors": errors}), flush=True)
        next_report = now + %(report)s
    time.sleep(0.002)
print(json.dumps({"sent": sent, "errors": errors, "done": True}), flush=True)
"""

# argv: ifname seconds. Counts the sender's frames (ethertype 0x88b5) by sequence number, and the
# packet socket's own drops (PACKET_STATISTICS).
MAC_RECEIVER: Final = """
import json, select, socket, struct, sys, time
ifname, seconds = sys.argv[1], float(sys.argv[2])
SOL_PACKET, PACKET_STATISTICS, PACKET_OUTGOING = 263, 6, 4
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
sock.bind((ifname, 0x88B5))
sock.setblocking(False)
print(json.dumps({"ready": True}), flush=True)
seen = set()
received = duplicates = socket_drops = 0
start = time.monotonic()
next_report = start
while time.monotonic() - start < seconds:
    select.select([sock], [], [], 0.05)
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except BlockingIOError:
            break
        if addr[2] == PACKET_OUTGOING or len(data) < 22:
            continue
        seq = struct.unpack_from("!Q", data, 14)[0]
        if seq in seen:
            duplicates += 1
        else:
            seen.add(seq)
            received += 1
    now = time.monotonic()
    if now >= next_report:
        socket_drops += struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        counts = {"received": received, "duplicates": duplicates, "socket_drops": socket_drops}
        print(json.dumps(counts), flush=True)
        next_report = now + %(report)s
socket_drops += struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
counts = {"received": received, "duplicates": duplicates, "socket_drops": socket_drops, "done": True}
print(json.dumps(counts), flush=True)
"""


def program(source: str) -> str:
    """The program's text with its report interval filled in."""
    return source % {"report": REPORT}

"""`python-floor`: the smallest forwarder with vswitch's IO, the floor vswitch's figures are held to.

What it does is pinned here, because the bench's ratios mean something only while it stays this:
- Taps: vswitch's own `open_tap` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking, checksum + TSO4/6
  + ECN offloads and USO where the kernel has it) and its own `place_tap` (moved into a namespace,
  txqueuelen DEFAULT_TXQUEUELEN, MTU 1500, addressed, up).
- Event loop: uvloop (vswitch's `new_loop`), one `add_reader` callback per tap.
- Reads: `io.FileIO.read(READ_SIZE)` per frame until it answers None (EAGAIN) or BATCH frames, the
  same buffer size and budget as vswitch's shell.
- Writes: `os.write` of each frame as read, virtio-net header included, to the other tap: A to B and
  B to A. No parsing, no table, no counters, no timers on the packet path. A full queue (EAGAIN) or
  any write error loses that frame, as it would in vswitch.

Whatever vswitch spends above it per packet is the switch itself: the decision, its counters, its
shape. Run by the bench as ``python -m vswitch.tools.bench.floor NS=ADDRESS NS=ADDRESS``; it prints
``ready`` once both taps are placed, forwards until SIGTERM or SIGINT, and exits by itself if the
bench that started it dies. Closing the taps' fds deletes them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
from collections.abc import Callable
from ipaddress import IPv4Interface

from ...config.topology import DEFAULT_TXQUEUELEN
from ...shell.kernel import KernelError, place_tap
from ...shell.loop import BATCH, READ_SIZE, new_loop
from ...shell.tap import Tap, TapError, open_tap

ORPHAN_CHECK = 1.0  # seconds between looks at whether the bench that started us is still there


def pump(read: Callable[[int], bytes | None], out_fd: int, gone: Callable[[], None]) -> None:
    """Move up to BATCH frames from one tap to the other, as they are."""
    write = os.write
    for _ in range(BATCH):
        try:
            frame = read(READ_SIZE)
        except OSError:  # the tap is gone (its namespace was removed): nothing more to forward
            gone()
            return
        if frame is None:
            return
        try:  # noqa: SIM105 - contextlib.suppress costs a context manager per frame
            write(out_fd, frame)
        except OSError:
            pass  # a full queue or a link gone: this frame is lost, like a switch's tx drop


def forward(loop: asyncio.AbstractEventLoop, a: Tap, b: Tap, gone: Callable[[], None]) -> None:
    """A's frames to B and B's to A, on loop; gone() when a tap can no longer be read."""
    for src, dst in ((a, b), (b, a)):
        reader = io.FileIO(src.fd, "rb", closefd=False)
        loop.add_reader(src.fd, pump, reader.read, dst.fd, gone)


def _spec(text: str) -> tuple[str, IPv4Interface]:
    namespace, sep, address = text.partition("=")
    if not sep or not namespace:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE=ADDRESS/PREFIX, got {text!r}")
    if "/" not in address:
        raise argparse.ArgumentTypeError(f"the address needs a prefix length (ADDRESS/PREFIX): {address!r}")
    try:
        return namespace, IPv4Interface(address)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IPv4 address with a prefix: {address!r}") from None


async def serve(a: Tap, b: Tap, parent: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def gone() -> None:
        for tap in (a, b):
            loop.remove_reader(tap.fd)
        stop.set()

    def orphaned() -> None:
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(ORPHAN_CHECK, orphaned)

    loop.call_later(ORPHAN_CHECK, orphaned)
    if os.getppid() != parent:  # it died while the taps were being placed
        return
    forward(loop, a, b, gone)
    print("ready", flush=True)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parent = os.getppid()  # before anything: a bench that dies while we start is noticed too
    parser = argparse.ArgumentParser(prog="python-floor", description=__doc__)
    parser.add_argument("hosts", nargs=2, type=_spec, metavar="NAMESPACE=ADDRESS/PREFIX")
    parser.add_argument("--tap-prefix", default="vsfloor", help="the taps are PREFIX0 and PREFIX1")
    args = parser.parse_args(argv)
    taps: list[Tap] = []
    try:
        for i, (namespace, address) in enumerate(args.hosts):
            tap = open_tap(f"{args.tap_prefix}{i}")
            taps.append(tap)
            place_tap(tap.name, namespace, "eth0", address, DEFAULT_TXQUEUELEN)
        loop = new_loop()
        try:
            loop.run_until_complete(serve(taps[0], taps[1], parent))
        finally:
            loop.close()
    except (TapError, KernelError) as exc:
        print(f"python-floor: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the taps were being placed: closed below all the same
        return 130
    finally:
        for tap in taps:
            tap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Network emulation: impairments per port and direction, and partitions, as sans-IO stages.

A stage sits between a port's tap and the pipeline: "in" holds what the namespace sends before the
switch decides, "out" holds what the switch sends to the namespace. Each frame put in comes out now, later
(queued with its due time), twice, changed, or not at all. Time is passed in and every random choice
comes from the stage's own generator, seeded per port and direction: the same seed and the same frames
give the same output times, drops and order (what the unit tests check exactly).

Where netem surprises people, a stage does not:
- jitter never reorders: a packet leaves no earlier than the one before it (netem reorders by default
  unless its rate or a pfifo child is used);
- a queue's limit is sized to the rate-delay product (at least 1000 packets), and its drops are counted
  apart from loss (netem's fixed 1000 drops silently at high rate x delay: iproute2/iproute2#56);
- rates are per wire packet: a TSO super-frame is cut to its MSS before loss, duplication, corruption,
  reordering or the rate apply, so 1 % loss is 1 % of wire packets and not bursts of 45. A frame that is
  only delayed keeps its offloads (one queue entry for up to 64 KB).
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from .counters import Drop
from .gso import GsoError, complete, segment
from .wire import ETH_HDR_LEN, GSO_ECN, VNET_HDR_LEN

Direction = Literal["in", "out"]
DIRECTIONS: Final[tuple[Direction, ...]] = ("in", "out")
DISTRIBUTIONS: Final = ("uniform", "normal")

# What a stage counts, by name (`vswitch link`, stats and metrics show them). Drops also go to the
# ledger under their Drop reason, on the stage's port.
WHAT: Final = (
    "passed",  # left at once, untouched
    "delayed",  # queued to leave later
    "lost",  # loss (random or in a burst)
    "duplicated",  # sent twice
    "reordered",  # sent ahead of the queue
    "corrupted",  # a bit flipped after the checksum was completed
    "rate-dropped",  # would have waited longer than the shaper's latency for tokens
    "limit-dropped",  # the stage's queue was full
    "down-dropped",  # the link was down (--down, or the down phase of a flap)
    "bypassed",  # not selected by the stage's filter: passed as if unimpaired
)

# Defaults and bounds
LIMIT_MIN: Final = 1000  # packets: the least a queue holds (netem's fixed limit)
LIMIT_MAX: Final = 1 << 20
DEFAULT_LIMIT_MAX: Final = 262144  # the default's cap: 262144 full frames are 400 MB at the worst
# Without a rate, the default limit takes the switch's own ceiling as the arrival rate: no vswitch
# process forwards more than this many frames a second (the flow cache's hit costs about 1 us).
SWITCH_PPS: Final = 1_000_000
DEFAULT_LATENCY: Final = 0.05  # seconds a packet may wait for tokens (tbf's `latency`) before a drop
BURST_TIME: Final = 0.005  # the default bucket holds this long at the rate ...
BURST_MIN: Final = 2 * 1514  # ... and at least two full frames
DELAY_MAX: Final = 60.0
RATE_MIN: Final = 8000.0  # 1 kB/s
RATE_MAX: Final = 100e9


@dataclass(frozen=True)
class Impairment:
    """What a stage does; every field's zero means "not this". Probabilities are 0..1, times seconds,
    the rate bits per second and the burst bytes."""

    delay: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"  # of the jitter: uniform in +-jitter, or normal with sigma = jitter
    loss: float = 0.0
    # The mean length of a loss burst, in packets: above 1, losses come in bursts (the Gilbert model, a
    # two-state Markov chain that loses every packet in its bad state) at the same long-run rate.
    loss_burst: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  # sent ahead of the queue (skipping the delay)
    corrupt: float = 0.0
    rate: float = 0.0
    burst: int = 0  # 0: the default (BURST_TIME at the rate, at least BURST_MIN)
    latency: float = 0.0  # 0: DEFAULT_LATENCY
    limit: int = 0  # packets; 0: the default (the rate-delay product, at least LIMIT_MIN)
    down: bool = False
    flap: tuple[float, float] | None = None  # (up seconds, down seconds), repeating from when it is set
    carrier: bool = False  # while down (or a flap's down phase), the carrier too, in the namespace
    filter: str | None = None  # a capture filter: only the frames it matches are impaired
    seed: int | None = None

    def check(self) -> Impairment:
        """self, or ValueError naming the option that is out of range."""
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"--{name} must be 0% to 100%, not {value * 100:g}%")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= DELAY_MAX):
                raise ValueError(f"--{name} must be 0 to {DELAY_MAX:g} s, not {value:g} s")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"--distribution must be uniform or normal, not {self.distribution!r}")
        if self.loss_burst and not (math.isfinite(self.loss_burst) and 1.0 <= self.loss_burst <= 1e6):
            raise ValueError(f"--loss-burst must be 1 to 1000000 packets, not {self.loss_burst:g}")
        if self.loss_burst > 1 and self.loss >= 1.0:
            raise ValueError("--loss-burst needs a --loss below 100%")
        if self.loss_burst > 1 and self.loss * (self.loss_burst + 1) > self.loss_burst:
            # Between bursts of mean length L at least one packet passes: the loss is at most L/(L+1).
            most = self.loss_burst / (self.loss_burst + 1) * 100
            raise ValueError(f"--loss-burst {self.loss_burst:g} allows a --loss of at most {most:.4g}%")
        if self.rate and not (math.isfinite(self.rate) and RATE_MIN <= self.rate <= RATE_MAX):
            raise ValueError(f"--rate must be 8kbit to 100gbit, not {self.rate:g} bit/s")
        if (self.burst or self.latency) and not self.rate:
            raise ValueError("--burst and --latency shape a --rate: give one")
        if not 0 <= self.burst <= 1 << 30:
            raise ValueError(f"--burst must be 0 to 1 GiB, not {self.burst}")
        if self.burst and self.burst < 1514:
            raise ValueError(f"--burst must hold a full frame (1514 bytes), not {self.burst}")
        if not (math.isfinite(self.latency) and 0.0 <= self.latency <= DELAY_MAX):
            raise ValueError(f"--latency must be 0 to {DELAY_MAX:g} s, not {self.latency:g} s")
        if not 0 <= self.limit <= LIMIT_MAX:
            raise ValueError(f"--limit must be 1 to {LIMIT_MAX} packets, not {self.limit}")
        if self.flap is not None:
            up, down = self.flap
            if not all(math.isfinite(t) and 0.001 <= t <= 86400 for t in (up, down)):
                raise ValueError("--flap UP/DOWN: each 1ms to 1d")
        if self.carrier and not (self.down or self.flap):
            raise ValueError("--carrier takes the carrier down with --down or a --flap: give one")
        if self.seed is not None and not 0 <= self.seed < 1 << 64:
            raise ValueError(f"--seed must be 0 to 2**64-1, not {self.seed}")
        return self

    @property
    def empty(self) -> bool:
        return self == Impairment(seed=self.seed, distribution=self.distribution)

    @property
    def effective_burst(self) -> int:
        return self.burst or max(BURST_MIN, int(self.rate / 8 * BURST_TIME))

    @property
    def effective_latency(self) -> float:
        return self.latency or DEFAULT_LATENCY

    @property
    def effective_limit(self) -> int:
        """The limit, or the rate-delay product: what can be in flight over the longest delay (plus, with
        a rate, the shaper's latency) at the rate, or at the switch's ceiling without one."""
        if self.limit:
            return self.limit
        spread = self.jitter if self.distribution == "uniform" else 4 * self.jitter
        window = self.delay + spread + (self.effective_latency if self.rate else 0.0)
        pps = self.rate / 8 / 64 if self.rate else SWITCH_PPS  # the shortest frames the rate can carry
        return min(DEFAULT_LIMIT_MAX, max(LIMIT_MIN, math.ceil(pps * window)))

    def settings(self) -> dict[str, Any]:
        """The fields that are set, as JSON-able values (the control socket and `vswitch link`)."""
        default = Impairment()
        return {
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in asdict(self).items()
            if value != getattr(default, key)  # not `in (0, None, ...)`: seed 0 is a seed
        }

    def summary(self) -> str:
        """The settings in words, as trace and `vswitch link` show them."""
        parts = []
        if self.delay or self.jitter:
            spread = f" +-{self.jitter * 1e3:g} ms ({self.distribution})" if self.jitter else ""
            parts.append(f"delay {self.delay * 1e3:g} ms{spread}")
        if self.loss:
            burst = f" in bursts of {self.loss_burst:g}" if self.loss_burst > 1 else ""
            parts.append(f"loss {self.loss * 100:g}%{burst}")
        parts += [f"{name} {getattr(self, name) * 100:g}%" for name in ("duplicate", "reorder", "corrupt")
                  if getattr(self, name)]  # fmt: skip
        if self.rate:
            parts.append(f"rate {_si(self.rate)}bit/s, burst {self.effective_burst} B")
        if self.down:
            parts.append("down")
        if self.flap is not None:
            parts.append(f"flap up {self.flap[0]:g} s / down {self.flap[1]:g} s")
        if self.carrier:
            parts.append("with the carrier")
        if self.filter:
            parts.append(f"frames matching {self.filter!r}")
        return ", ".join(parts) or "nothing"

    @classmethod
    def from_settings(cls, fields: dict[str, Any]) -> Impairment:
        """An Impairment from settings() (or the control socket): ValueError for an unknown or badly
        typed field."""
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown impairment {sorted(unknown)[0]!r}")
        values: dict[str, Any] = {}
        try:
            for key, value in fields.items():
                if key in ("down", "carrier"):
                    if not isinstance(value, bool):
                        raise TypeError
                    values[key] = value
                elif key in ("burst", "limit"):
                    values[key] = _integer(value)
                elif key == "seed":
                    values[key] = None if value is None else _integer(value)
                elif key == "flap":
                    if value is not None and not (isinstance(value, list | tuple) and len(value) == 2):
                        raise TypeError
                    values[key] = None if value is None else (_number(value[0]), _number(value[1]))
                elif key in ("distribution", "filter"):
                    if value is not None and not isinstance(value, str):
                        raise TypeError
                    values[key] = value if value is not None or key == "filter" else "uniform"
                else:
                    values[key] = _number(value)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"impairment {key!r}: {value!r} is not a valid value") from None
        return cls(**values).check()


def _si(value: float) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g} {prefix}"
    return f"{value:g} "


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _number(value: Any) -> float:
    """A JSON number as a float: not a bool, nor a string ("0.1" is not 0.1 s on the control socket)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    return float(value)


Selector = Callable[[bytes], bool]


class Stage:
    """One port's impairments in one direction: push() frames in, release() what is due.

    The queue is FIFO: due times never decrease (jitter does not reorder), so the head is the next to
    leave and the stage's deadline is the head's due time. Reordered packets skip the queue instead."""

    def __init__(
        self,
        impairment: Impairment,
        selector: Selector | None,
        ledger: Counter[str],
        seed_name: str,
        now: float,
    ) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()
        self.stats: Counter[str] = Counter()
        self.ledger = ledger
        self.seed_name = seed_name
        self.last_due = -math.inf  # the due time of the last packet queued: none may leave before it
        self.tat = -math.inf  # the shaper's theoretical arrival time (GCRA, ITU-T I.371)
        self.bad = False  # the Gilbert chain's state
        self.cleared = False  # cleared, but frames are still queued: it passes new ones behind them
        self.rng = random.Random()
        # Told of each frame a stage drops, duplicates, corrupts or reorders, by what it did (the
        # shell sets it while the port has observers: capture shows these as link events).
        self.observe: Callable[[str, bytes], None] | None = None
        self.configure(impairment, selector, now)

    def configure(self, impairment: Impairment, selector: Selector | None, now: float) -> None:
        """New settings. The packets already queued keep their times and order; new ones queue behind
        them. A seed reseeds the generator: the decisions from here on repeat for the same frames."""
        self.impairment = impairment
        self.selector = selector
        self.cleared = False
        self.since = now  # a flap's phase starts here
        if impairment.seed is not None:
            self.rng.seed(f"{impairment.seed}/{self.seed_name}", version=2)
            self.bad = False  # the chain starts over too, or a burst under way changes what repeats
        imp = impairment
        self.loss = imp.loss
        # Gilbert: p (good -> bad) and r (bad -> good) so that the long-run loss is p/(p+r) = loss and
        # a burst lasts 1/r packets on average.
        self.burst_r = 1.0 / imp.loss_burst if imp.loss_burst > 1 else 0.0
        self.burst_p = imp.loss * self.burst_r / (1.0 - imp.loss) if self.burst_r else 0.0
        self.per_packet = bool(imp.loss or imp.duplicate or imp.reorder or imp.corrupt or imp.rate)
        self.limit = imp.effective_limit
        self.tau = imp.effective_burst * 8 / imp.rate if imp.rate else 0.0  # the bucket's depth, seconds
        self.latency = imp.effective_latency
        self.normal = imp.distribution == "normal"

    def clear(self) -> None:
        """No impairment from now on; what is queued still leaves at its time, and new frames wait
        behind it (order is kept) until the queue is empty and the stage goes."""
        limit = self.limit
        self.configure(Impairment(), None, self.since)
        self.limit = max(self.limit, limit)  # what waits behind a long queue is not dropped for it
        self.cleared = True

    # --- the link's state --------------------------------------------------------------------------
    def down(self, now: float) -> bool:
        imp = self.impairment
        if imp.down:
            return True
        if imp.flap is None:
            return False
        falls, _rises = self._cycle(imp.flap, now)
        return now >= falls

    def next_transition(self, now: float) -> float | None:
        """When a flap next changes the link's state (after now), or None if it never does."""
        if self.impairment.flap is None:
            return None
        falls, rises = self._cycle(self.impairment.flap, now)
        return falls if falls > now else rises

    def _cycle(self, flap: tuple[float, float], now: float) -> tuple[float, float]:
        """The flap's cycle holding now: (when its down phase starts, when the next cycle starts). Every
        edge is computed one way, since + k * period (+ up), so that at the very time next_transition()
        gives, down() has changed: a modulo here and a floor there disagree by a rounding at an edge,
        and the carrier would miss a whole phase."""
        up, down = flap
        period = up + down
        k = math.floor((now - self.since) / period)
        if self.since + k * period > now:
            k -= 1
        elif self.since + (k + 1) * period <= now:
            k += 1
        return self.since + k * period + up, self.since + (k + 1) * period

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    # --- frames ------------------------------------------------------------------------------------
    def push(self, pkt: bytes, now: float, out: list[bytes]) -> None:
        """Take one frame (virtio-net header + Ethernet frame); what leaves now is appended to out."""
        if self.selector is not None and not self.selector(pkt[VNET_HDR_LEN:]):
            self.stats["bypassed"] += 1
            out.append(pkt)
            return
        if self.down(now):
            self._count("down-dropped", Drop.LINK_DOWN, pkt)
            return
        if not self.per_packet:
            self._queue(pkt, now, now, out)
            return
        if pkt[1] & ~GSO_ECN:  # a GSO super-frame: impaired as the wire packets it stands for
            try:
                pieces = segment(pkt)
            except GsoError:
                self._count("", Drop.BAD_VNET_HEADER, pkt)
                return
            for piece in pieces:
                self._packet(piece, now, out)
        else:
            self._packet(pkt, now, out)

    def _packet(self, pkt: bytes, now: float, out: list[bytes]) -> None:
        """One wire packet: loss, corruption, duplication, then reordering, the rate and the delay."""
        rng = self.rng
        if self.loss:
            if self.burst_r:
                if self.bad:
                    self.bad = rng.random() >= self.burst_r
                else:
                    self.bad = rng.random() < self.burst_p
                lost = self.bad
            else:
                lost = rng.random() < self.loss
            if lost:
                self._count("lost", Drop.IMPAIR_LOSS, pkt)
                return
        imp = self.impairment
        if imp.corrupt and rng.random() < imp.corrupt:
            pkt = self._corrupt(pkt)
            self._count("corrupted", None, pkt)
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            copies = 2
            self._count("duplicated", None, pkt)
        for _ in range(copies):
            if imp.reorder and rng.random() < imp.reorder:
                self._count("reordered", None, pkt)
                out.append(pkt)
                continue
            depart = now
            if imp.rate:
                if len(self.queue) >= self.limit:
                    self._count("limit-dropped", Drop.IMPAIR_LIMIT, pkt)
                    continue
                # The packet's own bytes count before it may leave, as in tbf: a bucket of B bytes
                # lets B bytes through at once (not B and one more packet), then the rate.
                tat = (self.tat if self.tat > now else now) + (len(pkt) - VNET_HDR_LEN) * 8 / imp.rate
                depart = tat - self.tau if tat - self.tau > now else now
                if depart - now > self.latency:
                    self._count("rate-dropped", Drop.IMPAIR_RATE, pkt)
                    continue
                self.tat = tat
            self._queue(pkt, now, depart, out)

    def _queue(self, pkt: bytes, now: float, depart: float, out: list[bytes]) -> None:
        """Hold pkt until depart + the delay (with jitter), never before the packet ahead of it."""
        imp = self.impairment
        due = depart + imp.delay
        if imp.jitter:
            rng = self.rng
            due += rng.gauss(0.0, imp.jitter) if self.normal else rng.uniform(-imp.jitter, imp.jitter)
            if due < depart:
                due = depart
        if due < self.last_due:
            due = self.last_due
        if due <= now and not self.queue:
            self.stats["passed"] += 1
            out.append(pkt)
            return
        if len(self.queue) >= self.limit:
            self._count("limit-dropped", Drop.IMPAIR_LIMIT, pkt)
            return
        self.last_due = due
        self.stats["delayed"] += 1
        self.queue.append((due, pkt))

    def _count(self, what: str, drop: Drop | None, pkt: bytes) -> None:
        """A frame the stage did `what` to: its count, the ledger's for a drop, and the observer."""
        if what:
            self.stats[what] += 1
        if drop is not None:
            self.ledger[drop] += 1
        if self.observe is not None and what:
            self.observe(what, pkt)

    def _corrupt(self, pkt: bytes) -> bytes:
        """pkt with one random bit flipped in its transport payload (its transport header if it has no
        payload; anything past the Ethernet header if it is not IP), after its checksum was completed
        and its offload flags cleared, so the receiver's stack checks it and finds it wrong."""
        try:
            frame = bytearray(complete(pkt))
        except GsoError:
            frame = bytearray(pkt)
        start, end = _corruptible(frame)
        if start >= end:
            return bytes(frame)
        bit = self.rng.randrange((end - start) * 8)
        frame[start + bit // 8] ^= 1 << (bit % 8)
        return bytes(frame)

    def release(self, now: float, out: list[bytes]) -> None:
        """Append what is due by now, in order."""
        queue = self.queue
        while queue and queue[0][0] <= now:
            out.append(queue.popleft()[1])

    def explain(self, pkt: bytes, now: float) -> str:
        """What this stage would do with pkt, without deciding it (no random draw, no tokens): trace."""
        if self.selector is not None and not self.selector(pkt[VNET_HDR_LEN:]):
            return "not selected by its filter: passes unimpaired"
        if self.down(now):
            return "the link is down: dropped (link-down)"
        held = f"; {len(self.queue)} frames queued ahead of it" if self.queue else ""
        return self.impairment.summary() + held

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "settings": self.impairment.settings(),
            "limit": self.limit,
            "queued": len(self.queue),
            "down": self.down(now),
            "stats": {what: self.stats[what] for what in WHAT if self.stats[what]},
        }


def _corruptible(frame: bytearray) -> tuple[int, int]:
    """Where a bit may flip, (start, end): an IPv4 or IPv6 (no extension headers) packet's transport
    payload, or its transport header when it carries no payload; past the Ethernet header otherwise.
    The end is the IP packet's, not the frame's: a flip in Ethernet padding would corrupt nothing."""
    l3 = VNET_HDR_LEN + ETH_HDR_LEN
    size = len(frame)
    if size < l3 + 20:
        return l3, size
    ethertype = frame[l3 - 2] << 8 | frame[l3 - 1]
    if ethertype == 0x0800:
        l4 = l3 + (frame[l3] & 0x0F) * 4
        proto = frame[l3 + 9]
        end = l3 + (frame[l3 + 2] << 8 | frame[l3 + 3])
    elif ethertype == 0x86DD and size >= l3 + 40:
        l4 = l3 + 40
        proto = frame[l3 + 6]
        end = l4 + (frame[l3 + 4] << 8 | frame[l3 + 5])
    else:
        return l3, size
    end = min(end, size)
    if end <= l4:  # lengths that do not add up (or a jumbogram): anywhere past the Ethernet header
        return l3, size
    if proto == 6 and end >= l4 + 13:
        payload = l4 + (frame[l4 + 12] >> 4) * 4
    elif proto == 17:
        payload = l4 + 8
    else:
        payload = l4
    return (payload, end) if payload < end else (l4, end)


@dataclass(frozen=True)
class Partition:
    """Frames from a port in `sources` to one in `targets` are dropped; two-way also the reverse."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    two_way: bool
    ports: frozenset[int] = frozenset()  # both sides' port ids: a removed port's partitions go

    def describe(self) -> str:
        arrow = "/" if self.two_way else "->"
        return f"{','.join(self.sources)} {arrow} {','.join(self.targets)}"


class Emulator:
    """Every port's stages and the partitions between ports. The shell asks it about each frame a port
    reads (ins) and each frame it writes (egress), releases what is due at deadline(), and applies
    the carrier changes it lists."""

    def __init__(self, ledgers: list[Counter[str]]) -> None:
        self.ledgers = ledgers  # the drop ledger, per port (Counters.drops)
        self.ins: dict[int, Stage] = {}
        self.outs: dict[int, Stage] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.partitions: list[Partition] = []
        self.carrier_down: set[int] = set()  # ports whose carrier this emulator took down
        self.carrier_changes: list[tuple[int, bool]] = []  # (port, up): for the shell to apply

    @property
    def active(self) -> bool:
        """Whether frames written to ports must pass through here (an out stage, or a partition)."""
        return bool(self.outs or self.blocked)

    @property
    def configured(self) -> bool:
        """Whether anything is impaired or partitioned (status shows the emulation then)."""
        return bool(self.ins or self.outs or self.partitions)

    def set(
        self,
        port: int,
        name: str,
        directions: Iterable[Direction],
        impairment: Impairment,
        selector: Selector | None,
        now: float,
    ) -> None:
        """Impair port (named name) in each direction given, keeping what its stages hold."""
        for direction in directions:
            stages = self.ins if direction == "in" else self.outs
            stage = stages.get(port)
            if stage is None:
                stages[port] = Stage(impairment, selector, self.ledgers[port], f"{name}/{direction}", now)
            else:
                stage.configure(impairment, selector, now)
        self._carrier(port, now)

    def clear(self, port: int, directions: Iterable[Direction], now: float) -> None:
        for direction in directions:
            stages = self.ins if direction == "in" else self.outs
            stage = stages.get(port)
            if stage is None:
                continue
            if stage.queue:
                stage.clear()
            else:
                del stages[port]
        self._carrier(port, now)

    def forget_port(self, port: int) -> None:
        """A removed port: its stages and queued frames go, and partitions stop naming it."""
        self.ins.pop(port, None)
        self.outs.pop(port, None)
        self.carrier_down.discard(port)
        self.blocked = {pair for pair in self.blocked if port not in pair}
        self.partitions = [part for part in self.partitions if port not in part.ports]
        self.carrier_changes = [change for change in self.carrier_changes if change[0] != port]

    def stage(self, port: int, direction: Direction) -> Stage | None:
        stage = (self.ins if direction == "in" else self.outs).get(port)
        return None if stage is None or stage.cleared else stage

    # --- partitions ------------------------------------------------------------------------------------
    def partition(self, sources: dict[str, int], targets: dict[str, int], two_way: bool) -> Partition:
        """Drop frames from sources to targets (and back, two_way); names are for listing."""
        if set(sources.values()) & set(targets.values()):
            raise ValueError("a port cannot be on both sides of a partition")
        for src in sources.values():
            for dst in targets.values():
                self.blocked.add((src, dst))
                if two_way:
                    self.blocked.add((dst, src))
        ports = frozenset((*sources.values(), *targets.values()))
        part = Partition(tuple(sources), tuple(targets), two_way, ports)
        self.partitions.append(part)
        return part

    def heal(self) -> int:
        """Remove every partition; returns how many there were."""
        count = len(self.partitions)
        self.blocked.clear()
        self.partitions.clear()
        return count

    def blocks(self, src: int, dst: int) -> bool:
        return (src, dst) in self.blocked

    # --- the timer ---------------------------------------------------------------------------------
    def deadline(self, now: float) -> float | None:
        """The earliest due frame, or flap edge of a stage that moves the carrier."""
        best: float | None = None
        for stages in (self.ins, self.outs):
            for stage in stages.values():
                due = stage.next_due()
                if due is not None and (best is None or due < best):
                    best = due
                if stage.impairment.carrier:
                    edge = stage.next_transition(now)
                    if edge is not None and (best is None or edge < best):
                        best = edge
        return best

    def release(self, now: float) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """What is due by now: (frames to forward as read from their port, frames to write to their
        port). Cleared stages that emptied go; flaps move carriers (carrier_changes)."""
        ingress: list[tuple[int, bytes]] = []
        egress: list[tuple[int, bytes]] = []
        for stages, into in ((self.ins, ingress), (self.outs, egress)):
            for port, stage in list(stages.items()):
                if stage.queue:
                    ready: list[bytes] = []
                    stage.release(now, ready)
                    into.extend((port, pkt) for pkt in ready)
                if stage.cleared and not stage.queue:
                    del stages[port]
                if stage.impairment.flap is not None:
                    self._carrier(port, now)
        return ingress, egress

    def _carrier(self, port: int, now: float) -> None:
        """Note a carrier change of port when its stages' --carrier says so."""
        want_down = any(
            stage is not None and stage.impairment.carrier and stage.down(now)
            for stage in (self.ins.get(port), self.outs.get(port))
        )
        if want_down and port not in self.carrier_down:
            self.carrier_down.add(port)
            self.carrier_changes.append((port, False))
        elif not want_down and port in self.carrier_down:
            self.carrier_down.discard(port)
            self.carrier_changes.append((port, True))

    def describe(self, names: list[str], now: float) -> dict[str, Any]:
        """The links and partitions, as `vswitch link` and stats show them."""
        links = []
        for port in sorted({*self.ins, *self.outs}):
            entry: dict[str, Any] = {"port": names[port]}
            for direction in DIRECTIONS:
                stage = (self.ins if direction == "in" else self.outs).get(port)
                if stage is not None:
                    entry[direction] = stage.describe(now)
            links.append(entry)
        return {
            "links": links,
            "partitions": [part.describe() for part in self.partitions],
            "carrier_down": sorted(names[port] for port in self.carrier_down),
        }

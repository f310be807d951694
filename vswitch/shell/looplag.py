"""The event loop's lag: how late a periodic timer fires, for `vswitch stats` and the metrics.

A frame waits while the loop is busy elsewhere (a long batch, a control request, a table sweep), and
no per-packet counter shows that. One timer every INTERVAL seconds measures it: the time between when
it was due and when it ran, on CLOCK_MONOTONIC (uvloop's loop.time() counts whole milliseconds).
Ten wake-ups a second and a few arithmetic operations each: nothing on the packet path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Final

INTERVAL: Final = 0.1  # seconds between measurements
RECENT: Final = 100  # measurements kept for the recent maximum (10 s at INTERVAL)


class LoopLag:
    """Start it on the running loop; `snapshot()` reads it (on the loop's thread), `stop()` ends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self.total = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=RECENT)
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.monotonic() + self.interval
        self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        self.last = lag
        self.max = max(self.max, lag)
        self.total += lag
        self.count += 1
        self.recent.append(lag)
        self._due = now + self.interval
        self._handle = self.loop.call_later(self.interval, self._tick)

    def snapshot(self) -> dict[str, Any]:
        """Seconds: the last measurement, the largest of the last RECENT, the largest and mean ever."""
        return {
            "interval": self.interval,
            "last": round(self.last, 6),
            "recent_max": round(max(self.recent, default=0.0), 6),
            "max": round(self.max, 6),
            "mean": round(self.total / self.count, 6) if self.count else 0.0,
            "count": self.count,
        }

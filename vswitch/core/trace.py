"""The pipeline's own record of what it did with a frame, for `vswitch trace`.

The core takes an optional tracer (None on the fast path, as aioquic takes its quic_logger): each
stage that decides something about the frame in hand tells it, in order, and every drop is reported
where it is counted, with the same reason the ledger gets. The tracer only listens; running a frame
with one changes nothing by itself (what keeps a trace from committing state is the journal, see
journal.py).
"""

from __future__ import annotations

from typing import Protocol


class Tracer(Protocol):
    def note(self, stage: str, text: str) -> None:
        """A stage's decision, e.g. ("route", "10.1.0.2 -> lan, directly connected")."""

    def drop(self, where: str, reason: str) -> None:
        """The frame (or a copy of it) died at `where` (a port name, or "router") for `reason`."""

"""The forwarding database: learning, refresh, ageing on a fake clock, the size limit, moves, statics."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import mac

from vswitch.core.counters import Drop
from vswitch.core.fdb import MIN_AGEING_INTERVAL, Fdb

A, B, C, D = mac(1), mac(2), mac(3), mac(4)
ROUTER = mac(0xFE)


def test_learn_records_port_and_schedules_one_pass() -> None:
    fdb = Fdb(ageing=10.0)
    assert fdb.next_deadline() is None
    assert fdb.learn(A, 1, now=5.0) is None
    assert fdb.lookup(A) == 1
    assert fdb.lookup(B) is None
    assert len(fdb) == 1
    assert fdb.events["fdb-learned"] == 1
    assert fdb.next_deadline() == 15.0
    # A second entry does not reschedule: the pass at 15 covers the oldest first.
    fdb.learn(B, 2, now=7.0)
    assert fdb.next_deadline() == 15.0


def test_entry_present_just_before_deadline_and_gone_at_it() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.learn(A, 1, now=0.0)
    assert fdb.age(9.999) == 0
    assert fdb.lookup(A) == 1
    assert fdb.age(10.0) == 1
    assert fdb.lookup(A) is None
    assert fdb.events["fdb-aged"] == 1
    assert fdb.next_deadline() is None


def test_pass_late_after_deadline_still_ages() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.learn(A, 1, now=0.0)
    assert fdb.age(1000.0) == 1
    assert len(fdb) == 0


@pytest.mark.parametrize(("seen", "ageing"), [(0.2, 1.1), (0.1, 0.7), (0.3, 3.3), (0.4, 0.3)])
def test_pass_at_exact_deadline_ages_despite_float_rounding(seen: float, ageing: float) -> None:
    """The deadline is seen + ageing; a pass at exactly that instant must find the entry stale,
    even where (seen + ageing) - ageing rounds below seen."""
    fdb = Fdb(ageing=ageing)
    fdb.learn(A, 1, now=seen)
    deadline = fdb.next_deadline()
    assert deadline is not None
    assert deadline == seen + ageing
    assert fdb.age(deadline) == 1
    assert fdb.lookup(A) is None


def test_refresh_postpones_ageing() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(A, 1, now=8.0)  # seen again: refreshed, not re-learned
    assert fdb.events["fdb-learned"] == 1
    assert fdb.age(10.0) == 0  # the pass runs on schedule and finds A fresh
    assert fdb.lookup(A) == 1
    assert fdb.next_deadline() == 18.0
    assert fdb.age(17.999) == 0
    assert fdb.lookup(A) == 1
    assert fdb.age(18.0) == 1
    assert fdb.lookup(A) is None


def test_pass_ages_only_stale_entries() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 2, now=5.0)
    assert fdb.age(10.0) == 1
    assert (fdb.lookup(A), fdb.lookup(B)) == (None, 2)
    assert fdb.next_deadline() == 15.0  # B's own deadline, well over a second away


def test_next_pass_is_at_least_min_interval_away() -> None:
    """Staggered entries share one pass a second rather than one pass each."""
    fdb = Fdb(ageing=10.0)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 2, now=0.25)
    assert fdb.age(10.0) == 1
    assert fdb.next_deadline() == 10.0 + MIN_AGEING_INTERVAL  # not B's 10.25
    assert fdb.lookup(B) == 2
    assert fdb.age(10.0 + MIN_AGEING_INTERVAL) == 1
    assert fdb.next_deadline() is None


def test_static_entry_never_ages_and_schedules_nothing() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.add_static(ROUTER, 7)
    assert fdb.next_deadline() is None
    fdb.learn(A, 1, now=0.0)
    assert fdb.age(1e9) == 1
    assert fdb.lookup(ROUTER) == 7
    assert fdb.next_deadline() is None
    assert fdb.table(now=1e9) == [(ROUTER, 7, 0.0, True)]


def test_static_entry_never_moves() -> None:
    fdb = Fdb()
    fdb.add_static(ROUTER, 7)
    assert fdb.learn(ROUTER, 1, now=0.0) is Drop.SRC_IS_SWITCH
    assert fdb.lookup(ROUTER) == 7
    assert fdb.events["fdb-moves"] == 0
    assert fdb.learn(ROUTER, 7, now=0.0) is None  # the owner itself may send from it
    assert fdb.lookup(ROUTER) == 7


def test_mac_move_updates_port_and_counts() -> None:
    fdb = Fdb()
    fdb.learn(A, 1, now=0.0)
    fdb.learn(A, 2, now=1.0)
    assert fdb.lookup(A) == 2
    assert fdb.events["fdb-moves"] == 1
    fdb.learn(A, 2, now=2.0)
    assert fdb.events["fdb-moves"] == 1
    assert len(fdb) == 1


def test_full_table_refuses_new_macs_but_keeps_known_ones() -> None:
    fdb = Fdb(ageing=10.0, max_entries=2)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 2, now=0.0)
    assert fdb.learn(C, 3, now=1.0) is None  # not the switch's own MAC: forwarded, just not learned
    assert fdb.lookup(C) is None
    assert fdb.events["fdb-full"] == 1
    assert len(fdb) == 2
    # Known hosts still refresh and move while full.
    fdb.learn(A, 3, now=9.0)
    assert fdb.lookup(A) == 3
    assert fdb.events["fdb-moves"] == 1
    assert fdb.age(10.0) == 1  # B aged, A (refreshed at 9) kept
    assert (fdb.lookup(A), fdb.lookup(B)) == (3, None)
    # Ageing freed a slot.
    fdb.learn(C, 3, now=10.0)
    assert fdb.lookup(C) == 3
    assert fdb.events["fdb-full"] == 1


def test_static_entries_do_not_count_against_the_limit() -> None:
    fdb = Fdb(max_entries=2)
    fdb.add_static(ROUTER, 7)
    fdb.add_static(mac(0xFD), 8)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 2, now=0.0)
    assert (fdb.lookup(A), fdb.lookup(B)) == (1, 2)
    assert fdb.events["fdb-full"] == 0
    fdb.learn(C, 3, now=0.0)
    assert fdb.lookup(C) is None
    assert fdb.events["fdb-full"] == 1


def test_static_over_a_learned_entry_frees_its_slot() -> None:
    fdb = Fdb(max_entries=1)
    fdb.learn(A, 1, now=0.0)
    fdb.add_static(A, 7)
    assert fdb.lookup(A) == 7
    fdb.learn(B, 2, now=0.0)
    assert fdb.lookup(B) == 2


def test_forget_port_flushes_learned_entries_only() -> None:
    fdb = Fdb(max_entries=2)
    fdb.add_static(ROUTER, 1)
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 1, now=0.0)
    fdb.forget_port(1)
    assert (fdb.lookup(A), fdb.lookup(B), fdb.lookup(ROUTER)) == (None, None, 1)
    # Both slots are free again.
    fdb.learn(C, 2, now=0.0)
    fdb.learn(D, 2, now=0.0)
    assert (fdb.lookup(C), fdb.lookup(D)) == (2, 2)
    assert fdb.events["fdb-full"] == 0


def test_forget_port_keeps_other_ports() -> None:
    fdb = Fdb()
    fdb.learn(A, 1, now=0.0)
    fdb.learn(B, 2, now=0.0)
    fdb.forget_port(1)
    assert (fdb.lookup(A), fdb.lookup(B)) == (None, 2)


def test_table_reports_age() -> None:
    fdb = Fdb()
    fdb.learn(A, 1, now=2.0)
    assert fdb.table(now=5.5) == [(A, 1, 3.5, False)]


def test_events_counter_is_shared() -> None:
    events: Counter[str] = Counter()
    fdb = Fdb(events=events)
    fdb.learn(A, 1, now=0.0)
    assert events["fdb-learned"] == 1


@pytest.mark.parametrize(("ageing", "max_entries"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_misuse_raises(ageing: float, max_entries: int) -> None:
    with pytest.raises(ValueError):
        Fdb(ageing=ageing, max_entries=max_entries)

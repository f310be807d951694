"""The seam every change of the pipeline's state goes through while a frame is traced.

`vswitch trace` runs the real pipeline (Datapath.receive) and must commit nothing: no MAC learned, no
neighbour, no conntrack flow or NAT mapping, no counter. Like OVS's ofproto/trace, which translates a
packet without installing anything, a trace run here attaches a `Journal` to every table; each table,
before it changes, hands the journal the thing it is about to change (`keep`), the journal takes a
copy of it the first time, and `rollback` puts every kept thing back as it was, in place (other parts
of the pipeline hold references to these tables and entries, so identities never change). With no
journal attached, as on the packet path, a table pays one attribute test on its slow mutations.

What is kept, and how:
- a dict, set, list, deque or Counter: a shallow copy, restored in place (order too: the tables'
  insertion order is their age order);
- any other object (a table, an FDB entry, a neighbour, a conntrack flow): its attributes, shallowly,
  containers among them copied as above; or, if it has them, its own ``journal_save`` and
  ``journal_restore`` (the counters, whose per-port lists hold Counters).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Protocol

_CONTAINERS = (dict, set, list, deque, Counter)


class Journaled(Protocol):
    """A table that reports its changes to a journal while one is attached."""

    journal: Journal | None


class Journal:
    def __init__(self) -> None:
        self._kept: dict[int, tuple[Any, Any]] = {}  # id -> (the object, its saved state)

    def keep(self, *things: Any) -> None:
        """These are about to change: save each (None is passed over), if not saved already."""
        for thing in things:
            if thing is not None and id(thing) not in self._kept:
                self._kept[id(thing)] = (thing, _save(thing))

    def rollback(self) -> None:
        """Put back everything kept, newest first, and forget it."""
        for thing, saved in reversed(list(self._kept.values())):
            _restore(thing, saved)
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


def keep(journal: Journal | None, *things: Any) -> None:
    """What a table calls before it changes: nothing at all while no trace runs."""
    if journal is not None:
        journal.keep(*things)


def _save(thing: Any) -> Any:
    if isinstance(thing, _CONTAINERS):
        return _copy(thing)
    save = getattr(thing, "journal_save", None)
    if save is not None:
        return save()
    return {name: _copy(value) for name, value in _attributes(thing).items() if name != "journal"}


def _restore(thing: Any, saved: Any) -> None:
    if isinstance(thing, _CONTAINERS):
        _put_back(thing, saved)
        return
    restore = getattr(thing, "journal_restore", None)
    if restore is not None:
        restore(saved)
        return
    for name, value in saved.items():
        current = getattr(thing, name)
        if isinstance(current, _CONTAINERS) and type(current) is type(value):
            _put_back(current, value)
        else:
            setattr(thing, name, value)


def _copy(value: Any) -> Any:
    if isinstance(value, Counter):
        return Counter(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set):
        return set(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, deque):
        return deque(value, value.maxlen)
    return value


def _put_back(current: Any, saved: Any) -> None:
    if isinstance(current, (dict, set)):
        current.clear()
        current.update(saved)
    else:  # list or deque
        current.clear()
        current.extend(saved)


def _attributes(thing: Any) -> dict[str, Any]:
    if hasattr(thing, "__dict__"):
        return dict(vars(thing))
    names = [name for cls in type(thing).__mro__ for name in getattr(cls, "__slots__", ())]
    return {name: getattr(thing, name) for name in names if hasattr(thing, name)}

"""Episode isolation for simulator classes that keep state outside their instances.

A Python class can keep state that no instance owns: a mutable default argument (BFCL's
`TwitterAPI.post_tweet(content, tags=[], mentions=[])` stores the default list in the
tweet it makes, and `mention` extends that list in place, so the next tweet posted
without mentions, in this episode or any later one, starts with them), a class
attribute, a module global. Copying an episode's instances does not copy these.

`OutsideState` finds, once per class and method, every such place a method can reach:
the defaults of the functions it runs (its own, the class's methods it names, the functions
of the simulator's package it names, transitively), the class attributes and the module globals it names.
Each episode owns private copies of them, made the first time one of its calls reaches
them; `Private.calling` puts the episode's copies in place for the length of a call and
the shared originals back after it (reading back whatever the call rebound). So an
episode sees its own writes, as one episode alone in a fresh process would, and never
another episode's; the originals are never written.

Not covered: state reached by other means than a name in the code (getattr with a
computed name, objects handed out by another library), and class attributes a call
creates rather than changes. One thread at a time may call: the swap is process-wide.
"""

from __future__ import annotations

import copy
import pickle
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

# values that cannot be changed in place: shared without a copy, but still swapped, so
# that a call that rebinds one (`global X; X = ...`) rebinds it for its episode only
_ATOMS = (str, bytes, int, float, complex, bool, type(None), range, frozenset)


class _Slot:
    """One place outside the instances: get/set by a holder and a key."""

    __slots__ = ("holder", "key", "kind", "blob")

    def __init__(self, holder: Any, key: str, kind: str):
        self.holder, self.key, self.kind = holder, key, kind  # kind: global, class, defaults, kwdefaults
        self.blob: bytes | None = None  # the original, pickled (copied from here for each episode)

    def get(self) -> Any:
        if self.kind == "global":
            return self.holder[self.key]
        return getattr(self.holder, self.key)

    def set(self, value: Any) -> None:
        if self.kind == "global":
            self.holder[self.key] = value
        else:
            setattr(self.holder, self.key, value)

    def fresh_copy(self) -> Any:
        """A private copy of the original value."""
        value = self.get()
        if _immutable(value):
            return value
        if self.blob is None:
            try:
                self.blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # not picklable: a deep copy each time
                self.blob = b""
        return pickle.loads(self.blob) if self.blob else copy.deepcopy(value)


def _immutable(value: Any) -> bool:
    if isinstance(value, _ATOMS):
        return True
    if type(value) is tuple:
        return all(_immutable(v) for v in value)
    return False


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _function(member: Any) -> types.FunctionType | None:
    member = getattr(member, "__func__", member)  # staticmethod, classmethod
    if isinstance(member, property):
        member = member.fget
    return member if isinstance(member, types.FunctionType) else None


class OutsideState:
    """The places outside its instances that each method of one class can reach."""

    def __init__(self, cls: type):
        self.cls = cls
        self._by_method: dict[str, tuple[_Slot, ...]] = {}

    def slots(self, method: str) -> tuple[_Slot, ...]:
        """Every outside place `method` can reach by name (computed once per method)."""
        known = self._by_method.get(method)
        if known is not None:
            return known
        found: list[_Slot] = []
        seen: set[int] = set()
        todo = [f for f in (_function(getattr(self.cls, method, None)),) if f is not None]
        members = {name: value for klass in reversed(self.cls.__mro__[:-1]) for name, value in vars(klass).items()}
        owners = {name: klass for klass in reversed(self.cls.__mro__[:-1]) for name in vars(klass)}
        package = self.cls.__module__.partition(".")[0]  # the simulator's own code, not the standard library
        while todo:
            func = todo.pop()
            if id(func) in seen:
                continue
            seen.add(id(func))
            for kind in ("__defaults__", "__kwdefaults__"):
                defaults = getattr(func, kind)
                values = defaults.values() if isinstance(defaults, dict) else defaults or ()
                if not all(_immutable(v) for v in values):
                    found.append(_slot(func, kind, "defaults"))
            module_globals = func.__globals__
            for name in _code_names(func.__code__):
                if name in members and not name.startswith("__"):
                    inner = _function(members[name])
                    if inner is not None:
                        todo.append(inner)
                    elif not isinstance(members[name], types.MemberDescriptorType | type):
                        found.append(_slot(owners[name], name, "class"))
                if name in module_globals:
                    value = module_globals[name]
                    if isinstance(value, types.FunctionType):
                        if (value.__module__ or "").partition(".")[0] == package:
                            todo.append(value)
                    elif not (isinstance(value, types.ModuleType | type | types.BuiltinFunctionType)
                              or type(value).__module__ == "typing"):
                        found.append(_slot(module_globals, name, "global"))
        unique = tuple({id(s): s for s in found}.values())
        self._by_method[method] = unique
        return unique


_SLOTS: dict[tuple[int, str], _Slot] = {}  # one per place, whichever classes reach it


def _slot(holder: Any, key: str, kind: str) -> _Slot:
    slot = _SLOTS.get((id(holder), key))
    if slot is None:
        slot = _SLOTS[(id(holder), key)] = _Slot(holder, key, kind)
    return slot


@cache
def outside_state(cls: type) -> OutsideState:
    return OutsideState(cls)


class Private:
    """One episode's own copies of the outside state of its classes."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}  # id(slot) -> this episode's value

    @contextmanager
    def calling(self, cls: type, method: str) -> Iterator[None]:
        """Run a call of `cls.method` with this episode's copies in place."""
        slots = outside_state(cls).slots(method)
        if not slots:
            yield
            return
        values = self.values
        originals = []
        for slot in slots:
            mine = values.get(id(slot), _MISSING)
            if mine is _MISSING:
                mine = values[id(slot)] = slot.fresh_copy()
            originals.append(slot.get())
            slot.set(mine)
        try:
            yield
        finally:
            for slot, original in zip(slots, originals, strict=True):
                values[id(slot)] = slot.get()  # the call may have rebound it
                slot.set(original)

    def run(self, cls: type, method: str, call: Callable[[], Any]) -> Any:
        with self.calling(cls, method):
            return call()


_MISSING = object()

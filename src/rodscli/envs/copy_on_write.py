"""Copy-on-write state for Python-class episodes whose state is one large database.

A toolkit such as tau2's `AirlineTools` holds a 4 MB pydantic database. Copying it for every
episode (about 1 s) and hashing all of it after every turn (about 0.5 s) makes replay and
scoring scale with the database. Here the database is built once per process (a *template*,
never written to) and an episode gets `private_copy(template)`: every dict in it becomes a
`CowDict` that holds the template's values and copies one only when it is read through the
dict (`d[k]`, `get`, `values`, `items`, `pop`, ...), so a call that changes three records
copies three records.

`state_digest(value)` hashes such a state as a Merkle tree: a dict is the hash of its keys'
entry hashes, and the entries the episode never read are the template's, hashed once per
process. Equal states give equal digests, whether or not a record was copied.

What the overlay cannot see: a toolkit that copies a whole dict at the C level (`dict(d)`,
`{**d}`) and then changes the copied values writes into the template.
"""

from __future__ import annotations

import copy
import enum
from typing import Any

from rodscli.envs.base import state_hash

_SCALARS = (str, int, float, bool, type(None))
ENABLED = True  # False: every episode deep-copies its template (the baseline of bench/tau2_replay.py)
SMALL = 16  # a dict this small is copied outright and hashed inline, whatever its kind


def _is_model(value: Any) -> bool:
    """A pydantic model instance (asked of its class: pydantic warns on instance access)."""
    cls = type(value)
    return hasattr(cls, "model_fields") and hasattr(cls, "model_copy")


def private_copy(value: Any) -> Any:
    """A copy of `value` that shares the template's data until it is read: models are
    copied field by field, dicts become `CowDict`s, anything else is deep-copied."""
    if isinstance(value, _SCALARS) or isinstance(value, enum.Enum):
        return value
    if not ENABLED:
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return CowDict(value) if len(value) > SMALL else copy.deepcopy(value)
    if _is_model(value):
        out = value.model_copy()  # shallow: a new field dict over the same values
        fields = out.__dict__
        for name, field_value in list(fields.items()):
            fields[name] = private_copy(field_value)
        return out
    return copy.deepcopy(value)


class CowDict(dict):
    """A dict over a template dict: it holds the template's values until one is read
    through it, and then a private copy of that value (the template stays as it was)."""

    __slots__ = ("_template", "_copied")

    def __init__(self, template: dict):
        super().__init__(template)
        self._template = template
        self._copied: set = set()  # keys whose value is this dict's own (copied or set)

    def _own(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        if key not in self._copied:
            value = private_copy(value)
            dict.__setitem__(self, key, value)
            self._copied.add(key)
        return value

    def untouched(self, key: Any) -> bool:
        """Whether `key` still holds the template's value."""
        return key not in self._copied

    def __getitem__(self, key: Any) -> Any:
        return self._own(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._own(key) if dict.__contains__(self, key) else default

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._copied.add(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return self._own(key)
        self[key] = default
        return default

    def pop(self, key: Any, *default: Any) -> Any:
        if dict.__contains__(self, key):
            value = self._own(key)
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple:
        key = next(reversed(dict.keys(self)))
        return key, self.pop(key)

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self._copied.add(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def values(self):  # type: ignore[override]
        return [self._own(k) for k in list(dict.keys(self))]

    def items(self):  # type: ignore[override]
        return [(k, self._own(k)) for k in list(dict.keys(self))]

    def copy(self) -> dict:
        return {k: copy.deepcopy(v) for k, v in self.items()}

    def __deepcopy__(self, memo: dict) -> dict:
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self):
        return (dict, (dict(dict.items(self)),))


# ------------------------------------------------------------------------------- digests

# id(template value) -> (the value, its digest): the value is kept so that its id stays its own
_TEMPLATE_DIGESTS: dict[int, tuple[Any, Any]] = {}
_MOD = 1 << 128


def _entry(value: Any) -> Any:
    """What a dict entry contributes: a scalar as it is, anything else as its digest."""
    if isinstance(value, _SCALARS):
        return value
    return state_hash(_tree(value))


def _cached(value: Any, compute: Any) -> Any:
    cached = _TEMPLATE_DIGESTS.get(id(value))
    if cached is None or cached[0] is not value:
        cached = _TEMPLATE_DIGESTS[id(value)] = (value, compute(value))
    return cached[1]


def _template_entry(value: Any) -> Any:
    return value if isinstance(value, _SCALARS) else _cached(value, _entry)


def _pair(key: Any, entry: Any) -> int:
    return int(state_hash([str(key), entry]), 16)


def _template_sum(d: dict) -> int:
    return _cached(d, lambda t: sum(_pair(k, _template_entry(v)) for k, v in t.items()) % _MOD)


def _dict_digest(d: dict) -> str:
    """A multiset hash of the dict's (key, entry) pairs: the sum of their hashes mod 2**128.
    A copy-on-write dict starts from its template's sum and corrects it for the keys it
    copied, set or deleted, so its digest costs what the episode touched."""
    if isinstance(d, CowDict):
        template = d._template
        total = _template_sum(template)
        for k in d._copied:
            if k in template:
                total -= _pair(k, _template_entry(template[k]))
            if dict.__contains__(d, k):
                total += _pair(k, _entry(dict.__getitem__(d, k)))
    else:
        total = sum(_pair(k, _entry(v)) for k, v in dict.items(d))
    return format(total % _MOD, "032x")


def _tree(value: Any) -> Any:
    """JSON data for `value` in which every dict is replaced by its digest."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, enum.Enum):
        return _tree(value.value)
    if isinstance(value, dict):
        if len(value) <= SMALL:  # by size alone, so a copy-on-write dict and a plain one agree
            return {"#small": {str(k): _tree(v) for k, v in dict.items(value)}}
        return {"#dict": _dict_digest(value)}
    if isinstance(value, list | tuple):
        return [_tree(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_tree(v) for v in value), key=repr)
    if _is_model(value):
        return {name: _tree(v) for name, v in value.__dict__.items()}
    if hasattr(value, "__dict__"):
        return {k: _tree(v) for k, v in sorted(vars(value).items()) if not k.startswith("_")}
    return str(value)


def state_digest(value: Any) -> str:
    """A hash of `value`'s state that is equal exactly when the states are equal, computed
    over copy-on-write data without copying or re-hashing what the episode never read."""
    return state_hash(_tree(value))


def holds_copy_on_write(value: Any) -> bool:
    """Whether `value` (an attribute) holds copy-on-write data at its top level."""
    if isinstance(value, CowDict):
        return True
    return _is_model(value) and any(isinstance(v, CowDict) for v in value.__dict__.values())

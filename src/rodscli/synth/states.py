"""The live state of an episode as synthesis sees it: each owner's state as bytes, kept
after every call (`OwnerStates`), its public state as JSON data to ground arguments in
(`live_state`), and the state an execution ended in (`FinalState`).

Everything here goes through the environment protocol (`Episode.state_owners`,
`tool_owner`, `save_state`, `restore_state`, `state_view`): no family is named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rodscli.envs.base import Episode, state_hash
from rodscli.synth.failures import CyclicState

VIEWS = 4096  # owner states kept converted to JSON data (and their entity lists) in one run (see OwnerStates.view)


class OwnerStates:
    """Each owner's state as bytes (`Episode.save_state`: cycles, objects and private
    attributes included), kept after every call: the state before a call is the one after
    the last call on its owner (a call changes only the owner it runs on, as Phi assumes),
    so each call is saved once. The bytes tell whether a call changed state, undo it, and
    tell a repeat of a known call on a known state."""

    def __init__(self, ep: Episode, views: dict | None = None):
        self.ep = ep
        self.owners = ep.state_owners()
        self._known = frozenset(self.owners)
        self.views = {} if views is None else views  # (owner, state bytes) -> its public state as JSON data
        self._tool_owners: dict[str, str] = {}  # tool -> the owner it runs on
        self.blobs: dict[str, bytes] = {}

    def before(self, name: str) -> tuple[str, bytes] | None:
        """The owner tool `name` runs on and its state now, or None (no owner, or unsavable)."""
        owner = self._tool_owners.get(name)
        if owner is None:
            owner = self._tool_owners[name] = self.ep.tool_owner(name)
        if owner not in self._known:
            self.blobs.clear()  # a call outside the owners: any of them may change
            return None
        blob = self.blob(owner)
        return None if blob is None else (owner, blob)

    def blob(self, owner: str) -> bytes | None:
        blob = self.blobs.get(owner)
        if blob is None and owner in self._known:
            blob = self.ep.save_state(owner)
            if blob is not None:
                self.blobs[owner] = blob
        return blob

    def view(self, owner: str) -> Any:
        """The owner's public state as JSON data (read-only: shared by equal states)."""
        blob = self.blob(owner)
        key = (owner, blob) if blob is not None else None
        view = self.views.get(key) if key else None
        if view is None:
            view = self.ep.state_view(owner)
            if key:
                self.keep(key, view)
        return view

    def keep(self, key: tuple, value: Any) -> Any:
        """Remember something derived from an owner's state (keyed by the state's bytes)."""
        if len(self.views) >= VIEWS:
            self.views.clear()
        self.views[key] = value
        return value

    def after(self, owner: str) -> bytes | None:
        """The owner's state after a call (None: it became unsavable)."""
        blob = self.ep.save_state(owner)
        if blob is None:
            self.blobs.pop(owner, None)
        else:
            self.blobs[owner] = blob
        return blob

    def restore(self, owner: str, blob: bytes) -> None:
        self.ep.restore_state(owner, blob)
        self.blobs[owner] = blob


def live_state(ep: Episode, owners: set | None = None, states: OwnerStates | None = None) -> Any:
    """The state to ground in, read now; `owners` limits it to those owners.

    Live views (JSON data already) are read as they are, never written; other owners'
    views are converted once per distinct state (by its bytes, through `states`); an
    episode without owners gives its snapshot.
    """
    try:
        names = ep.state_owners()
        if not names:
            return ep.snapshot()
        if ep.live_views:
            return {name: ep.state_view(name) for name in names}
        states = OwnerStates(ep) if states is None else states
        return {name: states.view(name) for name in sorted(names if owners is None else owners) if name in names}
    except RecursionError:  # a call made the simulator's state cyclic (a folder moved into itself)
        raise CyclicState("the state became cyclic") from None


def final_hash(ep: Episode, states: OwnerStates) -> str:
    return state_hash(live_state(ep, None, states))


@dataclass
class FinalState:
    """An episode's state after its last call: each owner's bytes (None when some owner
    cannot be saved, or the state is one whole), and the hash of its public state,
    computed when first asked."""

    blobs: dict[str, bytes] | None
    read: Callable[[], str]
    _hash: str | None = None

    def hash(self) -> str:
        if self._hash is None:
            self._hash = self.read()
        return self._hash

    def same(self, ep: Episode, views: dict | None = None) -> bool:
        """Whether `ep` is in this state: the same bytes of every owner, else the same hash."""
        states = OwnerStates(ep, views)
        if self.blobs is not None and {name: states.blob(name) for name in states.owners} == self.blobs:
            return True
        return final_hash(ep, states) == self.hash()

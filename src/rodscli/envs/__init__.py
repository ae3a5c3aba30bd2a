"""Environments: the protocol in `base`, families in builtin/, bfcl.py, pyclass.py, mcp.py."""

from rodscli.envs.base import (
    CallOutcome,
    Environment,
    Episode,
    ReferenceTrace,
    environment_for,
    offered_tools,
    open_episode,
    replay_reference,
    state_hash,
)

__all__ = [
    "CallOutcome",
    "Environment",
    "Episode",
    "ReferenceTrace",
    "environment_for",
    "offered_tools",
    "open_episode",
    "replay_reference",
    "state_hash",
]

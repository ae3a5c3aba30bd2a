"""Why a plan's execution stops: a step that could not be grounded or whose call still
failed after repairs (counted in the stats by `cause`)."""

from __future__ import annotations

from rodscli.synth.paths import parse_json


class StepFailed(Exception):
    """A plan step could not be grounded or its call failed (after repairs)."""

    def __init__(self, message: str, tool: str = ""):
        super().__init__(message)
        self.tool = tool  # the step's tool, when a call of it failed

    def cause(self) -> str:
        """Tool and reason in a few words (the simulator's error message when it gave one)."""
        text = str(self)
        parsed = parse_json(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            text = parsed["error"]
        return f"{self.tool}: {text[:80]}" if self.tool else text[:80]


class CyclicState(StepFailed):
    """A call made the state cyclic (a folder moved into itself): it cannot be read as JSON."""

"""Procedurally generated seed tasks for the built-in domains.

A task is told as a story: a random world (the initial state), then 1-5 user requests,
each an *intent* that picks real entities from the live state, phrases the request from a
fixed template and executes its reference calls on a live episode (language is written
from what exists, so every task replays by construction). Ids are never in the text: the
agent has to look them up, so calls depend on each other, within and across turns.

Skill types follow BFCL multi-turn:
- base: the story as told.
- miss_func: a tool needed by turn k is withheld until turn k+1. Turn k keeps its request
  and has an empty reference (the agent should say it cannot); turn k+1 says the function
  was added and carries turn k's calls.
- miss_param: turn k's request leaves out a required value (empty reference: the agent
  should ask); turn k+1 supplies the value and carries the calls.
- long_context: the same kind of story in a world with many distractor entities.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rodscli.envs.builtin import DOMAINS, domain_tools, new_episode
from rodscli.envs.pyclass import ClassEpisode
from rodscli.schemas import SKILLS

PER_SKILL = 60  # default tasks per domain and skill: 2 domains x 4 skills x 60 = 480 seeds
MAX_TURNS = 5
MAX_CALLS = 8
FUNCTION_ADDED = "The missing function has been added. Please go ahead with my last request."


@dataclass
class Turn:
    """One user request and its reference calls."""

    text: str
    vague: str | None = None  # the request with one required value left out (miss_param)
    clarify: str | None = None  # the next user message, which supplies that value
    calls: list[dict] = field(default_factory=list)


class Story:
    """A live episode plus what earlier turns talked about (`ctx`), for intents to build on."""

    def __init__(self, domain: str, initial_state: dict, rng: random.Random):
        self.rng = rng
        self.episode: ClassEpisode = new_episode(domain, initial_state)
        self.sim = next(iter(self.episode.instances.values()))
        self.ctx: dict[str, Any] = {}
        self.calls: list[dict] = []

    def run(self, name: str, /, **arguments: Any) -> Any:
        """Execute a reference call, record it, and give back its parsed result."""
        outcome = self.episode.call(name, arguments)
        if not outcome.ok:  # an intent chose something the state does not allow: a generator bug
            raise RuntimeError(f"reference call {name}({arguments}) failed: {outcome.result}")
        self.calls.append({"name": name, "arguments": arguments})
        return orjson.loads(outcome.result)


Intent = Callable[[Story], "Turn | None"]


def intent(calls: int, follow_up: bool = False) -> Callable[[Intent], Intent]:
    """Mark a story step: at most `calls` reference calls; follow-ups build on earlier turns."""

    def mark(fn: Intent) -> Intent:
        fn.calls = calls  # type: ignore[attr-defined]
        fn.follow_up = follow_up  # type: ignore[attr-defined]
        return fn

    return mark


def _weighted_order(rng: random.Random, options: list[Intent], ctx: dict) -> list[Intent]:
    # Efraimidis-Spirakis: sort by u^(1/w); follow-ups get weight 3 so stories hang together
    keyed = [(rng.random() ** (1.0 / (3.0 if getattr(o, "follow_up", False) else 1.0)), i, o) for i, o in enumerate(options)]
    return [o for _, _, o in sorted(keyed, reverse=True)]


def tell(domain: str, initial_state: dict, intents: list[Intent], rng: random.Random, n_turns: int) -> list[Turn]:
    """Tell a story of up to `n_turns` requests (at most MAX_CALLS reference calls in all)."""
    story = Story(domain, initial_state, rng)
    turns: list[Turn] = []
    for _ in range(n_turns):
        budget = MAX_CALLS - sum(len(t.calls) for t in turns)
        for step in _weighted_order(rng, [i for i in intents if i.calls <= budget], story.ctx):  # type: ignore[attr-defined]
            mark = len(story.calls)
            turn = step(story)
            if turn is not None:
                turn.calls = story.calls[mark:]
                turns.append(turn)
                break
            assert len(story.calls) == mark, f"{step.__name__} made calls and then declined"
        else:
            break
    return turns


def domain_module(domain: str) -> Any:
    """The module that generates the worlds and stories of a built-in domain."""
    if domain == "retail":
        from rodscli.envs.builtin import retail_seeds as mod
    else:
        from rodscli.envs.builtin import workspace_seeds as mod
    return mod


def make_task(domain: str, skill: str, index: int, seed: int = 0) -> dict:
    """Seed task number `index` of a domain and skill (deterministic in seed and index)."""
    mod = domain_module(domain)
    for attempt in range(50):
        rng = random.Random(f"rods-builtin:{seed}:{domain}:{skill}:{index}:{attempt}")
        state = mod.world(rng, large=skill == "long_context")
        max_story = MAX_TURNS - 1 if skill in ("miss_func", "miss_param") else MAX_TURNS
        turns = tell(domain, state, mod.INTENTS, rng, rng.randint(1, max_story))
        if not turns:
            continue
        texts = [t.text for t in turns]
        reference = [t.calls for t in turns]
        withheld: list[dict] = []
        if skill == "miss_func":
            # (turn, tool) pairs where the tool is first needed at that turn
            seen: set[str] = set()
            options = []
            for k, t in enumerate(turns):
                options += [(k, name) for name in sorted({c["name"] for c in t.calls} - seen)]
                seen |= {c["name"] for c in t.calls}
            k, tool = rng.choice(options)
            texts.insert(k + 1, FUNCTION_ADDED)
            reference.insert(k, [])
            withheld = [{"tool": tool, "turn": k + 1}]
        elif skill == "miss_param":
            options = [k for k, t in enumerate(turns) if t.vague]
            if not options:
                continue
            k = rng.choice(options)
            texts[k] = turns[k].vague  # type: ignore[assignment]
            texts.insert(k + 1, turns[k].clarify)  # type: ignore[arg-type]
            reference.insert(k, [])
        return {
            # another seed tells other stories in other worlds: its ids say so, so that
            # tasks of several seeds can be mixed (e.g. more SFT data) without clashing
            "id": f"{domain}-{skill}-{index:04d}" + (f"-s{seed}" if seed else ""),
            "env": "builtin",
            "domain": domain,
            "skill": skill,
            "origin": "seed",
            "parent_id": None,
            "generation": 0,
            "created_iter": None,
            "system_prompt": None,
            "user_turns": texts,
            "initial_state": state,
            "env_config": {},
            "tools": [t["function"]["name"] for t in domain_tools(domain)],
            "withheld": withheld,
            "reference": reference,
            "profile": None,
            "synthesis": None,
            "meta": {"generator": "rods-builtin-seeds/1", "seed": seed},
        }
    raise RuntimeError(f"could not tell a {skill} story for {domain} #{index}")  # a generator bug


def _profile(task: dict) -> dict | None:
    try:
        from rodscli.profile import compute_profile
    except ImportError:  # the profile module is optional until it lands
        return None
    return compute_profile(task)


def seed_tasks(domain: str | None = None, seed: int = 0, per_skill: int | None = None) -> list[dict]:
    """`per_skill` tasks (default PER_SKILL) for each skill type of one domain, or of all."""
    domains = [domain] if domain else list(DOMAINS)
    for d in domains:
        if d not in DOMAINS:
            from rodscli.errors import OptionError

            raise OptionError(f"unknown builtin domain {d!r} (known: {', '.join(DOMAINS)})", field="--domain")
    n = PER_SKILL if per_skill is None else per_skill
    tasks = [make_task(d, skill, i, seed) for d in domains for skill in SKILLS for i in range(n)]
    for task in tasks:
        task["profile"] = _profile(task)
    return tasks

"""The template writer: each candidate's user turns written from its executed calls.

One request per call (what the tool does, from its description, and every value the user
must give); a value that comes from an earlier result is left for the agent to look up
(the request points at the entry when it is picked from a listing). The seed's skill
augmentation is kept in the wording: miss_func (an empty turn, then "go ahead" once the
tool is offered), miss_param (one required value left out of the request and supplied by
the next user turn).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import orjson

from rodscli.envs.base import tool_name
from rodscli.synth.execute import Execution
from rodscli.synth.paths import follow
from rodscli.synth.plan import Plan, Source, Step, id_field
from rodscli.synth.write.base import Writer


def _phrase(schema: dict) -> str:
    desc = (schema.get("function", schema).get("description") or "").strip()
    desc = desc.split("Tool description:", 1)[-1].strip().split("\n")[0]  # BFCL puts the class blurb first
    desc = desc.split(". ")[0].split(";")[0].rstrip(".").strip()
    if not desc:
        return tool_name(schema).replace("_", " ")
    return desc[0].lower() + desc[1:]


def value_text(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    return orjson.dumps(value).decode()


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def _pick_phrase(src: Source, results: list[Any]) -> str | None:
    """How the user points at an entry of an earlier listing: by a field only it has, else by position.

    None when the value is not picked from a list (an id given back for the one entity asked about).
    """
    where = [i for i, step in enumerate(src.path) if isinstance(step, int)]
    if not where:
        return None
    cut = where[-1]
    try:
        siblings = follow(results[src.call], src.path[:cut])
        record = siblings[src.path[cut]]
    except (KeyError, TypeError, IndexError):
        return None
    if len(siblings) == 1:
        return "the only one listed"
    if not isinstance(record, dict):
        return ""  # a plain listing of names: the value itself is what the user says
    for f, v in record.items():
        if f == (src.path[cut + 1] if cut + 1 < len(src.path) else None) or isinstance(v, dict | list | bool) or v is None:
            continue
        if sum(1 for r in siblings if isinstance(r, dict) and r.get(f) == v) == 1:
            return f"the one whose {f.replace('_', ' ')} is {value_text(v)}"
    n = src.path[cut]
    return f"the {ORDINALS[n]} one listed" if n < len(ORDINALS) else f"number {n + 1} in the list"


def describe_call(call: dict, step: Step, schema: dict, said: set[str], results: list[Any], turn_start: int,
                  leave_out: str | None = None) -> str:
    """One request in words: what the tool does and every value the user must give.

    A value that comes from an earlier result is left for the agent to look up; the request
    still names it when the user already said it, points at the entry when it is picked
    from a listing, and says "the same as before" when it comes from an earlier turn.
    """
    parts = []
    for arg, v in call["arguments"].items():
        text, src, label = value_text(v), step.sources[arg], arg.replace("_", " ")
        if arg == leave_out:
            continue
        if src.kind == "list":
            parts.append(f"{label} from the results above")
            continue
        # a name read from a listing is something a person says (an id is not)
        named = isinstance(v, str) and _pick_phrase(src, results) is not None and not id_field(src.path)
        if src.kind != "flow" or text in said or named:
            parts.append(f"{label} {text}")
            said.add(text)
            continue
        pick = _pick_phrase(src, results)
        if pick == "":
            parts.append(f"{label} {text}")
            said.add(text)
        elif pick:
            parts.append(f"{label} of {pick}")
        elif src.call < turn_start:
            parts.append(f"the same {label} as before")
    text = _phrase(schema)
    return f"{text} with {', '.join(parts)}" if parts else text


OPENERS = ("Please {}.", "Could you {}?", "I need you to {}.", "{}, please.")
JOINERS = (", then ", "; after that, ", ", and then ")


def write_turn(calls: list[dict], steps: list[Step], index: dict, rng: random.Random, said: set[str],
               results: list[Any], leave_out: tuple[int, str] | None = None) -> str:
    start = min((s.index for s in steps), default=0)
    parts = [describe_call(c, s, index[c["name"]], said, results, start, leave_out[1] if leave_out and leave_out[0] == k else None)
             for k, (c, s) in enumerate(zip(calls, steps, strict=True))]
    body = rng.choice(JOINERS).join(parts)
    text = rng.choice(OPENERS).format(body)
    return text[0].upper() + text[1:]


def _missing_value(calls: list[dict], steps: list[Step], index: dict, rng: random.Random) -> tuple[int, str] | None:
    """A required, user-given argument of the turn's calls that the request can leave out."""
    options = []
    for k, (c, s) in enumerate(zip(calls, steps, strict=True)):
        params = index[c["name"]].get("function", {}).get("parameters") or {}
        for arg in params.get("required") or []:
            if arg in c["arguments"] and s.sources[arg].kind in ("state", "literal"):
                options.append((k, arg))
    return rng.choice(options) if options else None


def write_turns(plan: Plan, run: Execution, rng: random.Random) -> list[str]:
    """The user turns of a candidate, with the seed's skill augmentation in the wording."""
    seed = plan.seed
    by_turn: dict[int, list[Step]] = defaultdict(list)
    reference, index, results = run.reference, run.tools, run.parsed
    for s in run.steps:
        by_turn[s.turn].append(s)
    released = {w["turn"] for w in seed.get("withheld") or []}
    texts: list[str] = []
    said: set[str] = set()
    t = 0
    while t < plan.n_turns:
        calls = reference[t]
        nxt = t + 1
        if not calls and nxt < plan.n_turns and reference[nxt]:
            # an empty turn followed by the calls it asked for: miss_func or miss_param
            later, steps = reference[nxt], by_turn[nxt]
            if seed["skill"] == "miss_param" and nxt not in released:
                gap = _missing_value(later, steps, index, rng)
                if gap is not None:
                    k, arg = gap
                    texts.append(write_turn(later, steps, index, rng, said, results, leave_out=gap))
                    value = value_text(later[k]["arguments"][arg])
                    said.add(value)
                    texts.append(f"Sorry, the {arg.replace('_', ' ')} is {value}.")
                    t += 2
                    continue
            texts.append(write_turn(later, steps, index, rng, said, results))
            texts.append(seed["user_turns"][nxt] if nxt in released else "Please go ahead with my last request.")
            t += 2
            continue
        if not calls:
            texts.append(seed["user_turns"][t])  # an empty turn that asks nothing we can rephrase
        else:
            texts.append(write_turn(calls, by_turn[t], index, rng, said, results))
        t += 1
    return texts


class TemplateWriter(Writer):
    """Deterministic user turns (see the module doc)."""

    name = "template"

    def turns(self, plan: Plan, run: Execution, rng: random.Random) -> list[str]:
        return write_turns(plan, run, rng)

"""The teacher's three agents over verified candidates: Rewrite, Critique, Augment.

rods plans and executes programmatically (the API graph, live-state grounding, replay);
the teacher only works on words, and every word it writes passes a programmatic gate:

- **Rewrite**: each user turn in natural language. The rewrite replaces the template's
  turn only when it names every value the template names and no value the template kept
  back (one the agent must look up or ask for), and reads as prose (`gate_turn`).
- **Critique**: the teacher judges each candidate (clear, answerable by the reference
  calls, consistent with the world's state it is shown) as a JSON verdict validated
  against `VERDICT`; a candidate is rejected with the first failed check's reason, or
  `critique_invalid` when the answer holds no valid verdict (a teacher that cannot
  judge passes nothing).
- **Augment**: more candidates per plan. Each paraphrase is a copy of a candidate whose
  turns are said in other words (the same gate per turn); a long_context candidate's
  copies also open with a few sentences of distractor context that name no value of the
  task and nothing of its world (`gate_context`). Each copy is re-verified: its
  reference replays on a fresh episode.

The teacher's text is data: nothing it says raises, and none of it is ever trained on as
the teacher's tokens (candidates only carry user turns).
"""

from __future__ import annotations

import copy
import json
import re
import zlib
from collections import Counter
from typing import Any

import jsonschema

from rodscli.envs.base import replay_reference
from rodscli.synth.teacher.client import ChatClient, ChatRequest
from rodscli.synth.teacher.prompts import Prompt
from rodscli.synth.write import critique, value_text

VERDICT = {
    "type": "object",
    "required": ["clear", "answerable", "consistent"],
    "properties": {
        "clear": {"type": "boolean"},
        "answerable": {"type": "boolean"},
        "consistent": {"type": "boolean"},
        "reason": {"type": "string"},
    },
}
CHECKS = ("clear", "answerable", "consistent")  # in this order: the first false one is the reason
CRITIQUE_REASONS = ("critique_invalid",) + tuple(f"critique_not_{c}" for c in CHECKS)
STATE_CHARS = 2000  # the world's state shown to the critic, at most (compact JSON)


def request_seed(*parts: Any) -> int:
    """A sampling seed fixed by the run's seed and what is asked (stable across runs and processes)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def ask(prompt: Prompt, seed: int, **fields: str) -> ChatRequest:
    """One request: the filled prompt as the user's message, after its worked examples (small
    instruction-tuned models follow an instruction in the user turn far better than in a
    system message)."""
    return ChatRequest(prompt.messages(**fields), seed)


def task_values(task: dict) -> set[str]:
    """Every argument value of the reference, as the user would write it."""
    return {value_text(v) for turn in task["reference"] for c in turn for v in c["arguments"].values()}


def answer_text(text: str) -> str:
    """The teacher's answer without what small models wrap it in: a lead-in label, the
    surrounding double quotes, and anything after the first blank line."""
    text = text.strip().split("\n\n")[0].strip()
    text = re.sub(r"^(?:rewritten request|new request|request|rewrite|answer)\s*:\s*", "", text, flags=re.I)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


# the teacher answering as the assistant, or talking about the request instead of making it
NOT_A_REQUEST = re.compile(r"\b(?:I'll|I will|I'm here|I am here|I can|assist you|help you|your response|"
                           r"(?:the|this|your|my) (?:request|task)\b|request(?:ed)? (?:is|request)\b|"
                           r"here is|here's|^you can\b)", re.I)
NUMBER = re.compile(r"\d+(?:[.,:-]\d+)*")
QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def gate_turn(text: str, template: str, values: set[str]) -> bool:
    """Whether `text` may stand for the template's turn: the llm writer's critic (`critique`:
    prose of sensible length, about the same things, every value the template names of 3+
    characters and none it kept back), and, stricter for a teacher's free text: a user's
    request, not the assistant's answer or talk about "the request"; every number the
    template names (of any length) and no number or quoted value the template does not name."""
    if not text or "\n" in text or NOT_A_REQUEST.search(text) or not critique(text, template, values):
        return False
    numbers = set(NUMBER.findall(text))
    if numbers != set(NUMBER.findall(template)):
        return False
    return all((a or b) in template for a, b in QUOTED.findall(text))


def _named(template: str, values: set[str]) -> str:
    said = sorted(v for v in values if len(v.strip("'")) >= 2 and v.strip("'") in template)
    return ", ".join(said) if said else "(none)"


# ------------------------------------------------------------------------------- Rewrite


def salted(seed: int, attempt: int) -> tuple:
    """The parts of a request seed that name the run's seed and the critique attempt (a
    replacement candidate has its predecessor's id; the first attempt's seeds are as before)."""
    return (seed, attempt) if attempt else (seed,)


class Rewriter:
    """Rewrites every user turn of the candidates in place (kept only through the gate)."""

    def __init__(self, client: ChatClient, prompt: Prompt, seed: int = 0, attempt: int = 0):
        self.client, self.prompt, self.seed = client, prompt, salted(seed, attempt)

    def run(self, tasks: list[dict]) -> tuple[int, int]:
        """(turns rewritten, turns asked); each task records which of its turns were in
        synthesis.teacher.rewritten."""
        jobs, requests = [], []
        for t in tasks:
            values = task_values(t)
            for k, turn in enumerate(t["user_turns"]):
                jobs.append((t, k, values))
                requests.append(ask(self.prompt, request_seed(*self.seed, "rewrite", t["id"], k),
                                    values=_named(turn, values), request=turn))
        kept = 0
        for (t, k, values), answer in zip(jobs, self.client.complete(requests), strict=True):
            text = answer_text(answer)
            ok = gate_turn(text, t["user_turns"][k], values)
            t["synthesis"].setdefault("teacher", {}).setdefault("rewritten", []).append(ok)
            if ok:
                t["user_turns"][k] = text
                kept += 1
        return kept, len(jobs)


# ------------------------------------------------------------------------------- Critique


def parse_verdict(answer: str) -> dict | None:
    """The first JSON object in the answer that is a valid verdict, else None."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", answer):
        try:
            obj, _ = decoder.raw_decode(answer, m.start())
        except ValueError:
            continue
        if jsonschema.Draft202012Validator(VERDICT).is_valid(obj):
            return {k: obj[k] for k in (*CHECKS, "reason") if k in obj}
    return None


def _relevant(node: Any, needles: list[str], depth: int = 0) -> Any:
    """The state cut down to the entries that mention one of the task's values (the rest of a
    collection is left out; a collection with no such entry keeps its first two)."""
    if not isinstance(node, dict) or depth > 6:
        return node
    if node and all(isinstance(v, dict) for v in node.values()) and len(node) > 2:
        hits = {k: v for k, v in node.items()
                if any(n in k or n in json.dumps(v, ensure_ascii=False) for n in needles)}
        keep = hits or dict(list(node.items())[:2])
        return {k: _relevant(v, needles, depth + 1) for k, v in keep.items()}
    return {k: _relevant(v, needles, depth + 1) for k, v in node.items()}


def state_view(task: dict, limit: int = STATE_CHARS) -> str:
    needles = [v.strip("'") for v in task_values(task) if len(v.strip("'")) >= 3]
    text = json.dumps(_relevant(task.get("initial_state"), needles), ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + " ...(cut)"


def critique_message(task: dict) -> str:
    turns = "\n".join(f"{k + 1}. {u}" for k, u in enumerate(task["user_turns"]))
    calls = "\n".join(f"turn {k + 1}: {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})"
                      for k, turn in enumerate(task["reference"]) for c in turn)
    return f"Requests:\n{turns}\n\nTool calls:\n{calls or '(none)'}\n\nData (JSON):\n{state_view(task)}"


class Critic:
    """Judges each candidate: the teacher's verdict must pass every check."""

    def __init__(self, client: ChatClient, prompt: Prompt, seed: int = 0, attempt: int = 0):
        self.client, self.prompt, self.seed = client, prompt, salted(seed, attempt)

    def run(self, tasks: list[dict]) -> list[str | None]:
        """Per task, the rejection reason (one of CRITIQUE_REASONS), or None when it passed
        (its verdict is then recorded in synthesis.teacher.verdict)."""
        requests = [ask(self.prompt, request_seed(*self.seed, "critique", t["id"]), task=critique_message(t))
                    for t in tasks]
        reasons: list[str | None] = []
        for t, answer in zip(tasks, self.client.complete(requests), strict=True):
            verdict = parse_verdict(answer)
            failed = "invalid" if verdict is None else next((f"not_{c}" for c in CHECKS if not verdict[c]), None)
            if failed is None:
                t["synthesis"].setdefault("teacher", {})["verdict"] = verdict
            reasons.append(failed and f"critique_{failed}")
        return reasons


# ------------------------------------------------------------------------------- Augment


def _world_strings(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(str(k))
            _world_strings(v, out)
    elif isinstance(node, list):
        for v in node:
            _world_strings(v, out)
    elif isinstance(node, str):
        out.add(node)
    return out


def gate_context(text: str, task: dict) -> bool:
    """Distractor context may be added to a task only when it changes nothing the agent
    needs: prose of a few sentences, no digits, no value of the reference, and no name or
    word of the world's state (a distractor that names an entity could change the answer)."""
    if not text or len(text) > 600 or "\n" in text or re.search(r"\d|<|\{", text):
        return False
    if len(re.findall(r"[A-Za-z]+", text)) < 0.7 * len(text.split()):
        return False
    low = text.lower()
    needles = {v.strip("'").lower() for v in task_values(task)}
    needles |= {s.lower() for s in _world_strings(task.get("initial_state"), set()) if not s.islower()}
    return not any(len(n) >= 4 and re.search(rf"\b{re.escape(n)}\b", low) for n in needles)


class Augmenter:
    """`paraphrases` re-worded copies of each candidate (with distractor context for long_context)."""

    def __init__(self, client: ChatClient, paraphrase: Prompt, distract: Prompt, paraphrases: int = 1, seed: int = 0):
        self.client, self.paraphrase, self.distract = client, paraphrase, distract
        self.paraphrases, self.seed = paraphrases, seed

    def run(self, tasks: list[dict]) -> tuple[list[dict], Counter]:
        """The accepted copies, and the others counted by reason."""
        jobs, requests = [], []
        for t in tasks:
            values = task_values(t)
            for j in range(self.paraphrases):
                for k, turn in enumerate(t["user_turns"]):
                    jobs.append((t, j, k))
                    requests.append(ask(self.paraphrase, request_seed(self.seed, "paraphrase", t["id"], j, k),
                                        values=_named(turn, values), request=turn))
                if t["skill"] == "long_context":
                    topic = ", ".join(sorted({c["name"].replace("_", " ") for turn in t["reference"] for c in turn})[:3])
                    jobs.append((t, j, -1))
                    requests.append(ask(self.distract, request_seed(self.seed, "distract", t["id"], j),
                                        topic=topic or "a task"))
        answers: dict[tuple[str, int], dict[int, str]] = {}
        for (t, j, k), answer in zip(jobs, self.client.complete(requests), strict=True):
            answers.setdefault((t["id"], j), {})[k] = answer_text(answer)
        out, rejected = [], Counter()
        for t in tasks:
            values = task_values(t)
            for j in range(self.paraphrases):
                got = answers[(t["id"], j)]
                turns = [got[k] if gate_turn(got[k], u, values) else u for k, u in enumerate(t["user_turns"])]
                context = got.get(-1)
                if context is not None:
                    if not gate_context(context, t):
                        rejected["augment_context_rejected"] += 1
                        continue
                    turns[0] = f"{context} {turns[0]}"
                if turns == t["user_turns"]:
                    rejected["augment_unchanged"] += 1  # no paraphrase passed the gate
                    continue
                variant = copy.deepcopy(t)
                variant["id"] = f"{t['id']}a{j}"
                variant["user_turns"] = turns
                teacher = variant["synthesis"].setdefault("teacher", {})
                teacher.pop("verdict", None)
                teacher["augment_of"] = t["id"]
                teacher["augment"] = ["paraphrase"] + (["distractor_context"] if context is not None else [])
                if not replay_reference(variant).ok:  # re-verified on a fresh episode
                    rejected["augment_replay_failed"] += 1
                    continue
                out.append(variant)
        return out, rejected

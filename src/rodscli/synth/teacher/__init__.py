"""A teacher model in synthesis: Rewrite, Critique and Augment agents over any
OpenAI-compatible chat server (`rods synthesize --teacher-url URL --teacher-model NAME`).

`teach(candidates, opts, seed, replace)` runs the agents named in `opts.agents`, in the
paper's order (Rewrite -> Critique -> Augment), over candidates that already passed the
programmatic gates (execution, replay, profile, near-duplicates), and returns the
candidates to write and the teacher's counts for the provenance. A candidate the critique
rejects is replaced by `replace(candidate)` (the synthesizer's next attempt at the same
plan and variant, on a new world), rewritten and judged in turn, up to `opts.attempts`
candidates judged per variant.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rodscli.config import option
from rodscli.errors import OptionError
from rodscli.synth.teacher.agents import CRITIQUE_REASONS, Augmenter, Critic, Rewriter
from rodscli.synth.teacher.client import ChatClient
from rodscli.synth.teacher.prompts import load_prompts, provenance

AGENTS = ("rewrite", "critique", "augment")


@dataclass
class TeacherOptions:
    url: str | None = option(None, help="An OpenAI-compatible chat server's base URL (e.g. http://127.0.0.1:8000/v1): its model rewrites, critiques and augments the candidates. Without it, user turns come from the template writer.")
    model: str | None = option(None, help="The model name the teacher server serves (sent as `model`; required with --teacher-url).")
    key_env: str = option("RODS_TEACHER_API_KEY", help="Environment variable holding the teacher's API key (sent as a bearer token when set).")
    agents: str = option("rewrite,critique,augment", help="Teacher agents to run, comma-separated, in the order Rewrite -> Critique -> Augment.")
    attempts: int = option(3, help="Candidates the critique may judge per variant: one it rejects is replaced by a new one for the same plan (a new world), rewritten and judged again, this many in all (1: no replacement).")
    paraphrases: int = option(1, help="Augment: re-worded copies per candidate (long_context copies also get distractor context).")
    concurrency: int = option(4, help="Teacher requests in flight at once.")
    timeout: float = option(120.0, help="Seconds one teacher request may take before it is retried.")
    retries: int = option(3, help="Retries of a failed teacher request (exponential backoff from 1 s) before the run stops.")
    temperature: float = option(0.7, help="The teacher's sampling temperature.")
    max_tokens: int = option(160, help="Longest teacher answer, in tokens.")
    prompts: str | None = option(None, help="A directory whose rewrite.md / critique.md / paraphrase.md / distract.md replace the packaged prompts.")
    extra_body: str | None = option(None, help="A JSON object of request fields sent with every teacher request, for the server's own sampling settings (servers differ in their defaults): e.g. '{\"top_p\": 1.0, \"repeat_penalty\": 1.0}' for llama.cpp. It cannot set model, messages or stream.")

    def __post_init__(self) -> None:
        if self.url is None:
            return
        if not self.model:
            raise OptionError("--teacher-url needs --teacher-model (the model name the server serves)", field="--teacher-model")
        bad = [a for a in self.steps if a not in AGENTS]
        if bad or not self.steps:
            raise OptionError(f"unknown teacher agent(s) {', '.join(bad) or '(none)'} (known: {', '.join(AGENTS)})",
                              field="--teacher-agents")
        if self.paraphrases < 0 or self.concurrency < 1 or self.retries < 0 or self.timeout <= 0 or self.max_tokens < 1:
            raise OptionError("need --paraphrases >= 0, --teacher-concurrency >= 1, --teacher-retries >= 0, "
                              "--teacher-timeout > 0, --teacher-max-tokens >= 1", field="--teacher-concurrency")
        if self.attempts < 1:
            raise OptionError("need --teacher-attempts >= 1", field="--teacher-attempts")
        self.extra_fields()  # a bad --teacher-extra-body fails before any work

    def extra_fields(self) -> dict:
        """--teacher-extra-body as a dict ({} when not given)."""
        if self.extra_body is None:
            return {}
        try:
            extra = json.loads(self.extra_body)
        except ValueError as exc:
            raise OptionError(f"not JSON ({exc})", field="--teacher-extra-body") from None
        if not isinstance(extra, dict):
            raise OptionError("must be a JSON object of request fields", field="--teacher-extra-body")
        fixed = sorted(set(extra) & {"model", "messages", "stream"})
        if fixed:
            raise OptionError(f"cannot set {', '.join(fixed)} (rods sets them)", field="--teacher-extra-body")
        return extra

    @property
    def steps(self) -> list[str]:
        return [a.strip() for a in self.agents.split(",") if a.strip()]


def teach(candidates: list[dict], opts: TeacherOptions, seed: int = 0,
          replace: Callable[[dict], dict | None] | None = None) -> tuple[list[dict], dict]:
    """The candidates after the teacher's agents, and its counts (turns rewritten, rejections
    by reason, replacements, copies added, requests sent, the prompts' hashes). Without
    `replace` a rejected candidate is dropped."""
    prompts = load_prompts(opts.prompts)
    extra = opts.extra_fields()
    client = ChatClient(opts.url, opts.model, api_key_env=opts.key_env, concurrency=opts.concurrency,  # type: ignore[arg-type]
                        timeout=opts.timeout, retries=opts.retries, temperature=opts.temperature,
                        max_tokens=opts.max_tokens, extra=extra)
    stats: dict = {"url": opts.url, "model": opts.model, "agents": opts.steps, "given": len(candidates),
                   **({"extra_body": extra} if extra else {}),
                   "prompts": provenance({n: p for n, p in prompts.items()
                                          if (n if n in AGENTS else "augment") in opts.steps})}
    out = candidates
    if "critique" in opts.steps:
        out = judged(out, client, prompts, opts, seed, replace, stats)
    elif "rewrite" in opts.steps:
        stats["rewritten_turns"], stats["turns"] = Rewriter(client, prompts["rewrite"], seed).run(out)
    if "augment" in opts.steps and opts.paraphrases:
        copies, rejected = Augmenter(client, prompts["paraphrase"], prompts["distract"], opts.paraphrases, seed).run(out)
        stats["augmented"] = len(copies)
        stats["augment_rejected"] = dict(sorted(rejected.items()))
        out = out + copies
    stats["written"] = len(out)
    stats["requests"], stats["retried"] = client.requests, client.retried
    return out, stats


def judged(candidates: list[dict], client: ChatClient, prompts: dict, opts: TeacherOptions, seed: int,
           replace: Callable[[dict], dict | None] | None, stats: dict) -> list[dict]:
    """Rewrite (when asked) and Critique, in rounds: each candidate the critique rejects is
    replaced by a new one for its variant (`replace`), which is rewritten and judged in the
    next round, until one passes or `opts.attempts` were judged. The candidates that passed,
    in the order of the variants they stand for; the counts go into `stats`.

    A replacement records `synthesis.teacher.attempt` (1, 2, ...) and `replaces` (the
    reasons its predecessors were rejected for)."""
    passed: dict[int, dict] = {}
    pending = list(enumerate(candidates))
    history: dict[int, list[str]] = {}
    rejected: Counter = Counter()
    rewritten = turns = judged_n = made = unmade = 0
    for attempt in range(opts.attempts):
        tasks = [t for _, t in pending]
        if "rewrite" in opts.steps:
            k, n = Rewriter(client, prompts["rewrite"], seed, attempt).run(tasks)
            rewritten, turns = rewritten + k, turns + n
        judged_n += len(tasks)
        retry = []
        for (i, t), reason in zip(pending, Critic(client, prompts["critique"], seed, attempt).run(tasks), strict=True):
            if reason is None:
                passed[i] = t
            else:
                rejected[reason] += 1
                history.setdefault(i, []).append(reason)
                retry.append((i, t))
        if replace is None or attempt + 1 == opts.attempts:
            break
        pending = []
        for i, t in retry:
            new = replace(t)
            if new is None:  # no new candidate passed the programmatic gates within --attempts
                unmade += 1
                continue
            new["synthesis"]["teacher"] = {"attempt": attempt + 1, "replaces": list(history[i])}
            pending.append((i, new))
        made += len(pending)
        if not pending:
            break
    if "rewrite" in opts.steps:
        stats["rewritten_turns"], stats["turns"] = rewritten, turns
    stats["critique_rejected"] = {r: rejected.get(r, 0) for r in CRITIQUE_REASONS}
    stats["critique_attempts"] = {"per_variant": opts.attempts, "judged": judged_n, "replacements": made,
                                  "replaced": sum(1 for i in passed if i in history), "unmade": unmade}
    return [passed[i] for i in sorted(passed)]


def teacher_summary(stats: dict) -> str:
    """One line of the teacher's counts for the CLI."""
    parts = []
    if "turns" in stats:
        parts.append(f"{stats['rewritten_turns']}/{stats['turns']} turns rewritten")
    if "critique_rejected" in stats:
        parts.append("critique rejected " + (", ".join(f"{k}={v}" for k, v in stats["critique_rejected"].items())))
        tries = stats["critique_attempts"]
        parts.append(f"{tries['replaced']}/{tries['replacements']} replacements accepted "
                     f"(of {tries['judged']} judged; {tries['unmade']} not made)")
    if "augmented" in stats:
        parts.append(f"{stats['augmented']} augmented copies")
    parts.append(f"{stats['written']} written, {stats['requests']} requests")
    return "; ".join(parts)

"""A teacher model in synthesis: Rewrite, Critique and Augment agents over any
OpenAI-compatible chat server (`rods synthesize --teacher-url URL --teacher-model NAME`).

`teach(candidates, opts, seed)` runs the agents named in `opts.agents`, in the paper's order
(Rewrite -> Critique -> Augment), over candidates that already passed the programmatic
gates (execution, replay, profile, near-duplicates), and returns the candidates to write
and the teacher's counts for the provenance.
"""

from __future__ import annotations

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
    paraphrases: int = option(1, help="Augment: re-worded copies per candidate (long_context copies also get distractor context).")
    concurrency: int = option(4, help="Teacher requests in flight at once.")
    timeout: float = option(120.0, help="Seconds one teacher request may take before it is retried.")
    retries: int = option(3, help="Retries of a failed teacher request (exponential backoff from 1 s) before the run stops.")
    temperature: float = option(0.7, help="The teacher's sampling temperature.")
    max_tokens: int = option(160, help="Longest teacher answer, in tokens.")
    prompts: str | None = option(None, help="A directory whose rewrite.md / critique.md / paraphrase.md / distract.md replace the packaged prompts.")

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

    @property
    def steps(self) -> list[str]:
        return [a.strip() for a in self.agents.split(",") if a.strip()]


def teach(candidates: list[dict], opts: TeacherOptions, seed: int = 0) -> tuple[list[dict], dict]:
    """The candidates after the teacher's agents, and its counts (turns rewritten, rejections
    by reason, copies added, requests sent, the prompts' hashes)."""
    prompts = load_prompts(opts.prompts)
    client = ChatClient(opts.url, opts.model, api_key_env=opts.key_env, concurrency=opts.concurrency,  # type: ignore[arg-type]
                        timeout=opts.timeout, retries=opts.retries, temperature=opts.temperature,
                        max_tokens=opts.max_tokens)
    stats: dict = {"url": opts.url, "model": opts.model, "agents": opts.steps, "given": len(candidates),
                   "prompts": provenance({n: p for n, p in prompts.items()
                                          if (n if n in AGENTS else "augment") in opts.steps})}
    out = candidates
    if "rewrite" in opts.steps:
        stats["rewritten_turns"], stats["turns"] = Rewriter(client, prompts["rewrite"], seed).run(out)
    if "critique" in opts.steps:
        out, rejected = Critic(client, prompts["critique"], seed).run(out)
        stats["critique_rejected"] = {r: rejected.get(r, 0) for r in CRITIQUE_REASONS}
    if "augment" in opts.steps and opts.paraphrases:
        copies, rejected = Augmenter(client, prompts["paraphrase"], prompts["distract"], opts.paraphrases, seed).run(out)
        stats["augmented"] = len(copies)
        stats["augment_rejected"] = dict(sorted(rejected.items()))
        out = out + copies
    stats["written"] = len(out)
    stats["requests"], stats["retried"] = client.requests, client.retried
    return out, stats


def teacher_summary(stats: dict) -> str:
    """One line of the teacher's counts for the CLI."""
    parts = []
    if "turns" in stats:
        parts.append(f"{stats['rewritten_turns']}/{stats['turns']} turns rewritten")
    if "critique_rejected" in stats:
        parts.append("critique rejected " + (", ".join(f"{k}={v}" for k, v in stats["critique_rejected"].items())))
    if "augmented" in stats:
        parts.append(f"{stats['augmented']} augmented copies")
    parts.append(f"{stats['written']} written, {stats['requests']} requests")
    return "; ".join(parts)

"""The llm writer: a policy rewrites each template turn the way a person would say it; a
critic keeps the rewrite only when it names the same values (and no value the template
kept back)."""

from __future__ import annotations

import re

from rodscli.synth.write.template import TemplateWriter, value_text

REWRITE_PROMPT = ("Rewrite the user's request below the way a person would say it to an assistant. "
                  "Keep every quoted value exactly as written, add no value of your own, and answer "
                  "with the rewritten request only.")


def critique(rewrite: str, template: str, values: set[str]) -> bool:
    """Whether a rewrite may replace the template turn: it is a plain request of sensible
    length, names every value the template names, and no value the template kept back (a
    value the agent must look up or ask for)."""
    text = rewrite.strip()
    if not text or len(text) > 3 * len(template) + 80 or "<tool_call>" in text:
        return False
    # prose, not token soup: most whitespace-separated pieces are words, numbers or quoted values
    pieces = text.split()
    if sum(1 for p in pieces if re.fullmatch(r"[(\"']?[A-Za-z][a-z]*[)\"'.,;:!?]*|[$]?[\d.,:-]+|'[^']*'?", p)) < 0.7 * len(pieces):
        return False
    # still about the same things: most of the template's content words are there
    words = set(re.findall(r"[a-z]{4,}", template.lower()))
    if words and len(words & set(re.findall(r"[a-z]{4,}", text.lower()))) < 0.4 * len(words):
        return False
    for v in values:
        bare = v.strip("'")
        if len(bare) < 3:
            continue
        if (bare in template) != (bare in text):
            return False
    return True


class LLMWriter(TemplateWriter):
    """The template's user turns, then rewritten by a policy (`opts.policy`, run on
    `opts.backend`), turn by turn, in batches, once every candidate is accepted."""

    name = "llm"
    max_new_tokens = 96

    def revise(self, tasks: list[dict]) -> dict:
        if not tasks:
            return {}
        from rodscli.policy.chat import ChatFormat
        from rodscli.stages.rollout import RolloutOptions, load_backend

        self.backend = load_backend(self.opts.policy, RolloutOptions(backend=self.opts.backend, temperature=0.7,
                                                                            chat_template=self.opts.chat_template))
        try:
            self.chat = ChatFormat(self.backend.tokenizer)
            kept = self.rewrite(tasks)
        finally:
            self.backend.close()
        return {"rewritten_turns": kept, "turns": sum(len(t["user_turns"]) for t in tasks)}

    def prompt(self, turn: str) -> str:
        """The request to rewrite `turn`, rendered: the instructions as a system message, or
        at the head of the user message when the template has no system role (Gemma's
        raises on one, others drop it; `ChatFormat.opening` finds out by rendering)."""
        messages, _ = self.chat.opening(REWRITE_PROMPT, [], turn)
        return self.chat.render(messages)

    def rewrite(self, tasks: list[dict], batch: int = 32) -> int:
        """Rewrite the user turns of `tasks` in place; the number of turns rewritten."""
        from rodscli.policy.base import Request

        jobs = [(t, k) for t in tasks for k in range(len(t["user_turns"]))]
        kept = 0
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            requests = []
            for n, (t, k) in enumerate(chunk):
                requests.append(Request(self.chat.encode(self.prompt(t["user_turns"][k])), self.max_new_tokens,
                                        self.opts.seed + start + n))
            for (t, k), gen in zip(chunk, self.backend.generate(requests, self.chat.stop_ids), strict=True):
                ids = [i for i in gen.token_ids if i not in self.chat.stop_ids]
                text = self.chat.decode(ids).strip()
                values = {value_text(v) for turn in t["reference"] for c in turn for v in c["arguments"].values()}
                ok = gen.stopped and critique(text, t["user_turns"][k], values)
                t["synthesis"].setdefault("rewritten", []).append(ok)
                if ok:
                    t["user_turns"][k] = text
                    kept += 1
        return kept

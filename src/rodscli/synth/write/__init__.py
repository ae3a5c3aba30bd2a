"""Writers of user turns: `template` (deterministic) and `llm` (a policy rewrites each
template turn; a critic keeps a rewrite only when it names the same values)."""

from __future__ import annotations

from rodscli.synth.write.base import Writer
from rodscli.synth.write.llm import LLMWriter, critique
from rodscli.synth.write.template import TemplateWriter, value_text, write_turns

WRITERS: dict[str, type[Writer]] = {w.name: w for w in (TemplateWriter, LLMWriter)}

__all__ = ["WRITERS", "LLMWriter", "TemplateWriter", "Writer", "critique", "value_text", "write_turns"]

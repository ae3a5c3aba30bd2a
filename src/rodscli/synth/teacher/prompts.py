"""The teacher's prompts: one text file per agent step, shipped in the package (synth/teacher/prompts/).

rewrite.md (Rewrite), critique.md (Critique), paraphrase.md and distract.md (Augment). Each is
the user message of its step, with `$name` fields filled in per request (string.Template:
braces in a prompt are plain text): `$request` the user turn, `$values` the values it must
keep, `$task` the candidate shown to the critic, `$topic` the tools of a long_context task.
A file may open with worked examples (see
`Prompt.messages`). A directory given with `--teacher-prompts` replaces the packaged file
of each name it holds. Every prompt's sha256 and source go into the
output's provenance, so a candidate file says which prompts made it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from rodscli.errors import OptionError

NAMES = ("rewrite", "critique", "paraphrase", "distract")


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    source: str  # "package" or the file it was read from

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def fill(self, **fields: str) -> str:
        return Template(self.text).safe_substitute(fields).strip()

    def messages(self, **fields: str) -> list[dict]:
        """The chat messages of one request. A file is one user message, or worked examples
        first: sections headed by a line `### user` or `### assistant`, the last one the user
        message with the fields (small models copy a format shown in an earlier turn far
        more reliably than one described)."""
        parts = re.split(r"^### (user|assistant)[ \t]*$", self.fill(**fields), flags=re.M)
        if len(parts) == 1:
            return [{"role": "user", "content": parts[0].strip()}]
        return [{"role": role, "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2], strict=True)]


def load_prompts(directory: str | Path | None = None) -> dict[str, Prompt]:
    """The packaged prompts, each replaced by `directory`/<name>.md where that file exists."""
    root = resources.files("rodscli").joinpath("synth", "teacher", "prompts")
    prompts = {n: Prompt(n, root.joinpath(f"{n}.md").read_text(encoding="utf-8"), "package") for n in NAMES}
    if directory is not None:
        where = Path(directory)
        if not where.is_dir():
            raise OptionError(f"{where} is not a directory of prompt files ({', '.join(n + '.md' for n in NAMES)})",
                              field="--teacher-prompts")
        for n in NAMES:
            path = where / f"{n}.md"
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                if not text.strip():
                    raise OptionError("the prompt file is empty", field="--teacher-prompts", where=str(path))
                prompts[n] = Prompt(n, text, str(path))
    return prompts


def provenance(prompts: dict[str, Prompt]) -> dict[str, dict]:
    return {n: {"sha256": p.sha256, "source": p.source} for n, p in prompts.items()}

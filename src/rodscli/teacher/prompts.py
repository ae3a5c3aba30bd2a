"""The teacher's prompts: one text file per agent step, shipped in the package (teacher/prompts/).

rewrite.md (Rewrite), critique.md (Critique), paraphrase.md and distract.md (Augment). Each is
the user message of its step, with `$name` fields filled in per request (string.Template:
braces in a prompt are plain text): `$request` the user turn, `$values` the values it must
keep, `$task` the candidate shown to the critic, `$topic` the tools of a long_context task.
A directory given with `--teacher-prompts` replaces
the packaged file of each name it holds. Every prompt's sha256 and source go into the
output's provenance, so a candidate file says which prompts made it.
"""

from __future__ import annotations

import hashlib
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


def load_prompts(directory: str | Path | None = None) -> dict[str, Prompt]:
    """The packaged prompts, each replaced by `directory`/<name>.md where that file exists."""
    root = resources.files("rodscli").joinpath("teacher", "prompts")
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

"""What every rollout backend does: continue token-id prompts, token-in token-out.

A backend gets prompts as token ids (the conversation so far, never text) and returns the
ids it sampled with the behaviour log-prob of each, so the rollout keeps exactly what the
model saw and produced. Log-probs are those of the distribution actually sampled from:
softmax(logits / temperature), restricted to the top-p nucleus and renormalised. With
temperature 0 (greedy) the sampled distribution is a point mass, so the log-probs are
reported from softmax(logits) at temperature 1 instead (what an importance ratio against
the trained policy needs).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rodscli.errors import BackendError, InputError


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Request:
    """Continue `prompt_ids` with at most `max_new_tokens`, sampling with `seed`.

    `key` names the episode the prompt belongs to: a backend may keep state for it (the hf
    backend keeps its KV cache) until `release` is called with that key.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    seed: int
    key: str | None = None


@dataclass
class Generation:
    """The sampled ids (the stop token included when one was produced) and their log-probs."""

    token_ids: list[int]
    logprobs: list[float]
    stopped: bool  # True: ended on a stop token; False: hit max_new_tokens


class Backend(ABC):
    """A policy that continues token-id prompts. `stop_ids` end a reply."""

    name: str = ""
    policy_id: str = ""
    tokenizer: Any = None

    @abstractmethod
    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        """One generation per request, in order. Raises BackendError when it cannot run."""

    def release(self, keys: list[str]) -> None:  # noqa: B027 - optional hook
        """Forget the state kept for these episodes (they have ended)."""

    def max_in_flight(self, max_tokens: int) -> tuple[int, str] | None:
        """How many episodes of up to `max_tokens` tokens this backend can hold at once in the
        memory it has, and why (for the warning); None when it bounds its own memory (a server,
        vLLM's paged cache)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model / connections."""


def read_chat_template(path: str | Path) -> str:
    """The text of a `--chat-template` file (a Jinja chat template, as vLLM's option takes)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the chat template: {exc.strerror if isinstance(exc, OSError) else exc}",
                         where=str(path), field="--chat-template") from None
    if not text.strip():
        raise InputError("the chat template file is empty", where=str(path), field="--chat-template")
    return text


def load_tokenizer(policy: str | Path, chat_template: str | Path | None = None) -> Any:
    """The checkpoint's tokenizer with its chat template (or the `chat_template` file's), offline."""
    from transformers import AutoTokenizer

    path = Path(policy)
    if not path.is_dir():
        raise BackendError(f"policy checkpoint {str(policy)!r} is not a directory (run `rods init-policy --out {policy}`?)")
    template = read_chat_template(chat_template) if chat_template is not None else None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise BackendError(f"cannot load the tokenizer of {str(policy)!r}: {type(exc).__name__}: {exc}") from None
    if template is not None:
        tok.chat_template = template
    if not getattr(tok, "chat_template", None):
        raise BackendError(f"the tokenizer of {str(policy)!r} has no chat template: give one with --chat-template FILE")
    return tok


def policy_id(policy: str | Path) -> str:
    """Checkpoint path plus a hash of its weight files' names, sizes and first bytes."""
    path = Path(policy)
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return f"{path}@{h.hexdigest()}"


BACKENDS = ("hf", "vllm", "openai")

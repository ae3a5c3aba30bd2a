"""The `openai` backend: any OpenAI-compatible server, token ids in, token ids out.

Each reply is one `/completions` request whose prompt is the conversation's token ids (not
text), asking for the sampled tokens as ids with their log-probs. vLLM's server does this
with `return_tokens_as_token_ids` (tokens come back as "token_id:N"), `stop_token_ids`,
`skip_special_tokens: false` and `logprobs: 0` (the sampled token's log-prob only). A server
that cannot (no token-id prompts, no log-probs, tokens as text) gets a clear error, because
rods never re-tokenizes model text. Requests run concurrently (`concurrency` at once).

When a server ends a reply on a stop token but does not return that token, the reply is
marked stopped and the conversation closes the turn with the end-of-turn token itself
(loss mask 0: no log-prob came back for it).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rodscli.errors import BackendError
from rodscli.policy.base import Backend, Generation, Request, Sampling, load_tokenizer

TOKEN_ID_PREFIX = "token_id:"


def completion_request(model: str, req: Request, sampling: Sampling, stop_ids: list[int]) -> dict:
    """The JSON body of one `/completions` request for `req`."""
    return {
        "model": model,
        "prompt": list(req.prompt_ids),
        "max_tokens": req.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": req.seed,
        "logprobs": 0,
        "stop_token_ids": list(stop_ids),
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "return_tokens_as_token_ids": True,
    }


def parse_completion(body: Any, stop_ids: list[int], where: str) -> Generation:
    """The Generation in a `/completions` response, or a BackendError saying what is missing."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise BackendError(f"{where}: the response has no choices: {str(body)[:200]}") from None
    lp = choice.get("logprobs") or {}
    tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(logprobs, list) or len(tokens) != len(logprobs):
        raise BackendError(f"{where}: the server returned no per-token log-probs; rods needs a server that "
                           "supports `logprobs` on /completions (e.g. vLLM)")
    ids = []
    for tok in tokens:
        if not (isinstance(tok, str) and tok.startswith(TOKEN_ID_PREFIX) and tok[len(TOKEN_ID_PREFIX):].isdigit()):
            raise BackendError(f"{where}: the server returned tokens as text ({tok!r}), not ids; rods needs "
                               "`return_tokens_as_token_ids` (vLLM's OpenAI server) to keep token-in token-out")
        ids.append(int(tok[len(TOKEN_ID_PREFIX):]))
    values = [float(x) if x is not None else 0.0 for x in logprobs]
    finish = choice.get("finish_reason")
    stopped = finish == "stop" or bool(ids and ids[-1] in stop_ids)
    return Generation(ids, values, stopped)


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, policy: str | Path, sampling: Sampling, base_url: str, model: str | None = None,
                 concurrency: int = 16, timeout: float = 600.0, chat_template: str | Path | None = None):
        self.tokenizer = load_tokenizer(policy, chat_template)
        self.sampling = sampling
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model or str(policy)
        self.timeout = timeout
        self.policy_id = f"openai:{base_url.rstrip('/')}/{self.model}"
        self._pool = ThreadPoolExecutor(max_workers=concurrency)

    def _post(self, body: dict) -> Any:
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise BackendError(f"{self.url}: the server answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"cannot reach the OpenAI-compatible server at {self.url}: {reason}") from None
        except ValueError:
            raise BackendError(f"{self.url}: the server's answer is not JSON") from None

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        def one(req: Request) -> Generation:
            body = self._post(completion_request(self.model, req, self.sampling, stop_ids))
            return parse_completion(body, stop_ids, self.url)

        return list(self._pool.map(one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

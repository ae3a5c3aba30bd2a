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

import http.client
import json
import math
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from rodscli.errors import BackendError
from rodscli.policy.base import Backend, Generation, Request, Sampling, load_tokenizer

TOKEN_ID_PREFIX = "token_id:"
# a log-prob a little above 0 is float rounding of a certain token; more is not a log-prob
LOGPROB_SLACK = 1e-3


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


# the most bytes one response may have: a reply of 100k tokens with their log-probs is a few MB
MAX_RESPONSE_BYTES = 64 << 20


def parse_completion(body: Any, stop_ids: list[int], where: str, max_new_tokens: int | None = None,
                     vocab_size: int | None = None) -> Generation:
    """The Generation in a `/completions` response, or a BackendError naming what is wrong.

    Every field the rollout keeps is checked here, where the tokens arrive: the token ids
    (ASCII digits, inside the vocabulary), the log-probs (finite numbers, at most 0 give or
    take rounding), and the reply's length (at most `max_new_tokens`, what was asked for).
    """
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        raise BackendError(f"{where}: the response has no choices: {_excerpt(body)}")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BackendError(f"{where}: choices[0] is a {type(choice).__name__}, not an object: {_excerpt(choice)}")
    lp = choice.get("logprobs")
    lp = lp if lp is not None else {}
    if not isinstance(lp, dict):
        raise BackendError(f"{where}: choices[0].logprobs is a {type(lp).__name__}, not an object "
                           "with tokens and token_logprobs")
    tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(logprobs, list) or len(tokens) != len(logprobs):
        raise BackendError(f"{where}: the server returned no per-token log-probs; rods needs a server that "
                           "supports `logprobs` on /completions (e.g. vLLM)")
    if max_new_tokens is not None and len(tokens) > max_new_tokens:
        raise BackendError(f"{where}: the server returned {len(tokens)} tokens for a reply of at most "
                           f"{max_new_tokens} (max_tokens was ignored)")
    ids = []
    skip = len(TOKEN_ID_PREFIX)
    for tok in tokens:
        if type(tok) is str and tok.startswith(TOKEN_ID_PREFIX):
            digits = tok[skip:]
            if 0 < len(digits) <= 12 and digits.isascii() and digits.isdigit():  # not "²", not 5,000 digits
                ids.append(int(digits))
                continue
        i = len(ids)
        if isinstance(tok, str) and not tok.startswith(TOKEN_ID_PREFIX):
            raise BackendError(f"{where}: the server returned tokens as text ({_excerpt(tok)}), not ids; rods "
                               "needs `return_tokens_as_token_ids` (vLLM's OpenAI server) to keep token-in token-out")
        raise BackendError(f"{where}: token {i} is not a token id: {_excerpt(tok)}")
    if vocab_size is not None and ids and max(ids) >= vocab_size:
        i = next(i for i, t in enumerate(ids) if t >= vocab_size)
        raise BackendError(f"{where}: token {i} has id {ids[i]}, outside the tokenizer's vocabulary "
                           f"of {vocab_size} (is the server running another model?)")
    values = []
    for x in logprobs:
        if type(x) is float and -math.inf < x <= LOGPROB_SLACK:  # the common case: one comparison
            values.append(x if x <= 0.0 else 0.0)
        elif x is None:  # no log-prob for this token: scored as 0 (certain)
            values.append(0.0)
        elif type(x) is int and x <= 0:
            values.append(float(x))
        else:
            raise BackendError(f"{where}: log-prob {len(values)} is {_excerpt(x)}, not a finite number <= 0")
    finish = choice.get("finish_reason")
    stopped = finish == "stop" or bool(ids and ids[-1] in stop_ids)
    return Generation(ids, values, stopped)


def _excerpt(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def read_response(resp: Any, deadline: float, where: str) -> Any:
    """A response's JSON body, read before `deadline` (time.monotonic) and at most
    MAX_RESPONSE_BYTES long; a BackendError says which limit broke or why it is not JSON."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BackendError(f"{where}: the response is larger than {MAX_RESPONSE_BYTES >> 20} MB")
        chunks.append(chunk)
    missing = getattr(resp, "length", None)  # http.client counts down the Content-Length
    if isinstance(missing, int) and missing > 0:
        raise BackendError(f"{where}: the answer was cut off after {size} bytes ({missing} more were announced)")
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"{where}: the server's answer is not JSON ({exc}; {size} bytes)") from None


class OpenAIBackend(Backend):
    """`timeout` bounds each request, from sending it to the last byte of the answer: a
    server that does not answer in time is an error (BackendError), not a hang."""

    name = "openai"

    def __init__(self, policy: str | Path, sampling: Sampling, base_url: str, model: str | None = None,
                 concurrency: int = 16, timeout: float = 600.0, chat_template: str | Path | None = None):
        self.tokenizer = load_tokenizer(policy, chat_template)
        self.vocab_size = len(self.tokenizer)
        self.sampling = sampling
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model or str(policy)
        self.timeout = timeout
        self.policy_id = f"openai:{base_url.rstrip('/')}/{self.model}"
        self._pool = ThreadPoolExecutor(max_workers=concurrency)

    def _post(self, body: dict) -> Any:
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return read_response(resp, deadline, self.url)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode(errors="replace")
            raise BackendError(f"{self.url}: the server answered {exc.code}: {detail}") from None
        except TimeoutError:
            raise BackendError(f"{self.url}: no complete answer within --timeout {self.timeout:g}s "
                               "(the server hung or is too slow)") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise BackendError(f"{self.url}: no answer within --timeout {self.timeout:g}s") from None
            raise BackendError(f"cannot reach the OpenAI-compatible server at {self.url}: {reason}") from None
        except http.client.HTTPException as exc:  # a truncated body, a broken status line
            raise BackendError(f"{self.url}: the server's answer is broken ({type(exc).__name__}: {exc})") from None

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        def one(req: Request) -> Generation:
            body = self._post(completion_request(self.model, req, self.sampling, stop_ids))
            return parse_completion(body, stop_ids, self.url, req.max_new_tokens, self.vocab_size)

        return list(self._pool.map(one, requests))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

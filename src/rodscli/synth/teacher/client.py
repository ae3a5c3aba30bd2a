"""A client for any OpenAI-compatible chat server (`/v1/chat/completions`): text in, text out.

The teacher of synthesis (vLLM, SGLang, TGI, `transformers serve`, a hosted API) is only
ever asked for text: no token ids, no log-probs, nothing of it is trained on. Requests run
`concurrency` at a time; a request that times out, cannot connect or gets a 429/5xx is
retried up to `retries` times with exponential backoff (`backoff` * 2**k seconds). A server
that stays down, refuses the request (another 4xx) or answers something that is not a chat
completion stops the run with one `BackendError` line: the caller writes no output.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rodscli.errors import BackendError

RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for: the messages and the sampling seed."""

    messages: list[dict]
    seed: int = 0


class ChatClient:
    """Chat completions from `base_url` (the part before `/chat/completions`, e.g.
    http://127.0.0.1:8000/v1) for model `model`. The API key, if any, is read from the
    environment variable `api_key_env` and sent as a bearer token."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "RODS_TEACHER_API_KEY",
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0,
                 temperature: float = 0.7, max_tokens: int = 160, extra: dict | None = None):
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise BackendError(f"the teacher URL must start with http:// or https:// (got {base_url!r})")
        self.url = base + "/chat/completions" if not base.endswith("/chat/completions") else base
        self.model = model
        self.api_key = os.environ.get(api_key_env) or None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.extra = dict(extra or {})  # server-specific fields (--teacher-extra-body), sent with every request
        self.concurrency = max(1, concurrency)
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0

    def body(self, req: ChatRequest) -> dict:
        """The JSON body of one request: fields every OpenAI-compatible server knows, then the
        caller's extra fields (which may replace temperature, max_tokens or seed)."""
        return {"model": self.model, "messages": req.messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": req.seed, "stream": False, **self.extra}

    def _post(self, body: dict) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            request = urllib.request.Request(self.url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:200].replace("\n", " ")
                last = f"the teacher at {self.url} answered HTTP {exc.code}: {detail}"
                if exc.code in RETRYABLE:
                    continue
                raise BackendError(last) from None
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
                last = f"cannot reach the teacher at {self.url}: {getattr(exc, 'reason', exc)}"
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise BackendError(f"the teacher at {self.url} answered something that is not JSON: "
                                   f"{raw[:120]!r}") from None
        raise BackendError(f"{last} (after {self.retries + 1} tries)")

    def text(self, answer: Any) -> str:
        """The assistant's text in a chat completion, or a BackendError: the server is not
        an OpenAI-compatible chat server. Empty text is an answer (the model's, kept as data)."""
        try:
            content = answer["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"the teacher at {self.url} did not answer a chat completion "
                               f"(no choices[0].message): {str(answer)[:160]}") from None
        if content is not None and not isinstance(content, str):
            raise BackendError(f"the teacher at {self.url} answered a non-text message: {str(content)[:160]}")
        return content or ""

    def complete(self, requests: list[ChatRequest]) -> list[str]:
        """The teacher's text for each request, in order (run `concurrency` at a time)."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = [pool.submit(lambda r=r: self.text(self._post(self.body(r)))) for r in requests]
            try:
                return [f.result() for f in futures]
            except BackendError:
                for f in futures:
                    f.cancel()
                raise

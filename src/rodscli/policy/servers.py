"""Several OpenAI-compatible servers as one rollout backend: requests spread, failures routed around.

`--base-url` given several times (or as a comma-separated list) names one server per GPU or
node, all serving the same checkpoint. Each request goes to the server with the fewest
requests in flight (ties: the one that has answered fewest), so the load spreads evenly.
A server that fails a request (unreachable, timed out, an error status, a broken answer:
any BackendError of the `openai` backend) is set aside for `retry_after` seconds and the
request goes to the next server; a set-aside server is still tried before giving up, and a
request fails only when every server has failed it, with each server's error in the message.
Since each request carries its own seed, which server answers does not change the rollout.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rodscli.errors import BackendError, OptionError
from rodscli.policy.base import Backend, Generation, Request


def split_urls(base_url: str | list[str]) -> list[str]:
    """Server base URLs from repeated --base-url options and/or comma-separated lists."""
    parts = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for p in parts for u in p.split(",") if u.strip()]
    if not urls:
        raise OptionError("--base-url names no server")
    if len(set(urls)) != len(urls):
        raise OptionError(f"--base-url names a server twice: {', '.join(urls)}")
    return urls


@dataclass
class Server:
    url: str
    client: Any  # the backend that talks to this one server
    inflight: int = 0
    answered: int = 0
    failed: int = 0
    down_until: float = 0.0
    last_error: str = ""


class ServerPool(Backend):
    """One backend over several single-server backends (`clients`, same tokenizer and model)."""

    name = "openai"

    def __init__(self, urls: list[str], clients: list[Backend], concurrency: int = 16, retry_after: float = 30.0):
        self.servers = [Server(u, c) for u, c in zip(urls, clients, strict=True)]
        self.tokenizer = clients[0].tokenizer
        model = getattr(clients[0], "model", "")
        self.policy_id = f"openai:{','.join(urls)}/{model}"
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency * len(urls))

    def _pick(self, tried: set[int]) -> Server | None:
        """The least busy server this request has not tried, preferring those not set aside."""
        now = time.monotonic()
        with self._lock:
            left = [(s.down_until > now, s.inflight, s.answered, i) for i, s in enumerate(self.servers) if i not in tried]
            if not left:
                return None
            server = self.servers[min(left)[3]]
            server.inflight += 1
            return server

    def call(self, req: Request, stop_ids: list[int]) -> Generation:
        tried: set[int] = set()
        while (server := self._pick(tried)) is not None:
            tried.add(self.servers.index(server))
            try:
                (gen,) = server.client.generate([req], stop_ids)
            except BackendError as exc:
                with self._lock:
                    server.failed += 1
                    server.down_until = time.monotonic() + self.retry_after
                    server.last_error = str(exc)
                continue
            else:
                with self._lock:
                    server.answered += 1
                return gen
            finally:
                with self._lock:
                    server.inflight -= 1
        errors = "; ".join(f"[{s.url}] {s.last_error}" for s in self.servers)
        raise BackendError(f"every one of the {len(self.servers)} rollout servers failed this request: {errors}")

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        return list(self._pool.map(lambda r: self.call(r, stop_ids), requests))

    def stats(self) -> list[dict]:
        """Per server: requests answered and failed (what `rods rollout -v` reports)."""
        return [{"url": s.url, "answered": s.answered, "failed": s.failed} for s in self.servers]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for s in self.servers:
            s.client.close()


RELOAD_ENDPOINT = "/update_weights_from_disk"


def reload(base_url: str | list[str], policy: str, endpoint: str = RELOAD_ENDPOINT, timeout: float = 1800.0) -> list[dict]:
    """Ask every server to load checkpoint `policy` from disk and wait for each answer.

    The request is SGLang's weight reload: POST {"model_path": policy} to the server's root
    (the base URL without /v1) + `endpoint`; a server answers once the new weights are in
    place. Servers without such an endpoint (vLLM's OpenAI server) are restarted by a
    SERVE_HOOK script instead (docs/scale-out.md). A server that refuses or cannot be reached
    is a BackendError naming it: the next rollout must not run on the old weights.
    """
    import json
    import urllib.error
    import urllib.request

    answers = []
    for url in split_urls(base_url):
        root = url[: -len("/v1")] if url.endswith("/v1") else url
        target = root + endpoint
        request = urllib.request.Request(target, data=json.dumps({"model_path": str(policy)}).encode(),
                                         headers={"Content-Type": "application/json"})
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise BackendError(f"{target}: the server refused to load {policy}: {exc.code} {exc.read(300).decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"{target}: cannot reach the server to load {policy}: {getattr(exc, 'reason', exc)}") from None
        except ValueError:
            raise BackendError(f"{target}: the server's answer is not JSON") from None
        if isinstance(body, dict) and body.get("success") is False:
            raise BackendError(f"{target}: the server did not load {policy}: {str(body.get('message', body))[:300]}")
        answers.append({"url": url, "seconds": round(time.monotonic() - start, 3)})
    return answers

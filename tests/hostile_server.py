"""A local OpenAI-compatible server that answers `/v1/completions` with scripted, hostile
bodies: what a broken or malicious server could send (tests/test_hostile_server.py,
tests/test_fuzz_rollout.py). `answer(request_body) -> bytes | Hang` decides each reply;
bytes go out as they are (with a Content-Length that may lie), `HANG` never answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply:
    """A raw answer: `body` bytes, sent with `status`; `length` overrides Content-Length."""

    def __init__(self, body: bytes, status: int = 200, length: int | None = None):
        self.body, self.status, self.length = body, status, length


HANG = object()  # the handler waits until the server closes, never answering


def completion(token_ids: list, logprobs: list | None = None, finish: str = "stop") -> dict:
    """A vLLM-shaped body for `token_ids` (ints become "token_id:N"; anything else is sent as given)."""
    tokens = [f"token_id:{t}" if isinstance(t, int) else t for t in token_ids]
    lps = [-0.5] * len(tokens) if logprobs is None else logprobs
    return {"object": "text_completion",
            "choices": [{"index": 0, "text": "", "finish_reason": finish,
                         "logprobs": {"tokens": tokens, "token_logprobs": lps}}]}


class HostileServer:
    def __init__(self, answer: Callable[[dict], object]):
        self.answer = answer
        self.closing = threading.Event()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                reply = server.answer(body)
                if reply is HANG:
                    server.closing.wait(60)
                    return
                if not isinstance(reply, Reply):
                    reply = Reply(json.dumps(reply).encode())
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(reply.length if reply.length is not None else len(reply.body)))
                self.end_headers()
                try:
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

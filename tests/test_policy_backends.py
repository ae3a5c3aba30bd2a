"""The openai and vllm backends.

openai: against a real HTTP server started here (stdlib http.server) that serves
`/v1/completions` from the tiny hf model the way vLLM's server does (token-id prompts,
"token_id:N" tokens, per-token log-probs). vllm: its request building and output
conversion on plain data; end to end only where vllm and a GPU exist.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rodscli import records
from rodscli.cli import main
from rodscli.envs.builtin import seed_tasks
from rodscli.errors import BackendError
from rodscli.policy.base import Request, Sampling
from rodscli.policy.openai import completion_request, parse_completion
from rodscli.policy.vllm import sampling_kwargs, to_generation
from rodscli.stages.rollout import RolloutOptions, load_backend, rollout


def few_tasks() -> list[dict]:
    return [t for i, t in enumerate(seed_tasks()) if i % 24 == 0][:2]


class CompletionServer:
    """/v1/completions from an hf backend, like vLLM's server. `mode`: "ok", "text_tokens"
    (tokens as text, as a server without return_tokens_as_token_ids), or "fail_after:N"."""

    def __init__(self, policy, mode: str = "ok"):
        from rodscli.policy.hf import HFBackend

        self.backend = HFBackend(policy, Sampling(), device="cpu")
        self.mode, self.lock, self.count = mode, threading.Lock(), 0
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = server.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path != "/v1/completions":
            return 404, {"error": "not found"}
        with self.lock:
            self.count += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            n = self.count
        try:
            if self.mode.startswith("fail_after:") and n > int(self.mode.split(":")[1]):
                return 500, {"error": {"message": "engine died"}}
            self.backend.sampling = Sampling(body["temperature"], body["top_p"])
            with self.lock:  # one forward pass at a time; requests still arrive concurrently
                (gen,) = self.backend.generate([Request(body["prompt"], body["max_tokens"], body["seed"])],
                                               body["stop_token_ids"])
            tokens = [f"token_id:{t}" if self.mode != "text_tokens" else self.backend.tokenizer.decode([t])
                      for t in gen.token_ids]
            choice = {"index": 0, "text": self.backend.tokenizer.decode(gen.token_ids),
                      "logprobs": {"tokens": tokens, "token_logprobs": gen.logprobs},
                      "finish_reason": "stop" if gen.stopped else "length"}
            return 200, {"object": "text_completion", "choices": [choice]}
        finally:
            with self.lock:
                self.inflight -= 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tiny_policy, request):
    srv = CompletionServer(tiny_policy, getattr(request, "param", "ok"))
    yield srv
    srv.close()


def test_openai_backend_gives_the_hf_rollouts(tiny_policy, server):
    """Same seed, same model behind the server: the same token ids as the hf backend."""
    tasks = few_tasks()
    opts = RolloutOptions(group_size=2, max_new_tokens=8, backend="openai", base_url=server.url, concurrency=4)
    via_server = rollout(tasks, load_backend(str(tiny_policy), opts), opts, seed=5)
    hf = RolloutOptions(group_size=2, max_new_tokens=8)
    direct = rollout(tasks, load_backend(str(tiny_policy), hf), hf, seed=5)
    assert [r["token_ids"] for r in via_server] == [r["token_ids"] for r in direct]
    assert [r["loss_mask"] for r in via_server] == [r["loss_mask"] for r in direct]
    assert all(r["backend"] == "openai" and r["policy_id"].startswith("openai:") for r in via_server)
    assert server.max_inflight >= 2  # requests were concurrent


@pytest.mark.parametrize("server", ["text_tokens"], indirect=True)
def test_server_without_token_ids_is_a_clear_error(tiny_policy, server, tmp_path, capsys):
    tasks, out = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    records.write_records(tasks, few_tasks()[:1], "task")
    argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(tasks), "--out", str(out), "--backend", "openai",
            "--base-url", server.url, "-G", "1", "--max-new-tokens", "4"]
    assert main(argv) == 2
    assert "return_tokens_as_token_ids" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("server", ["fail_after:3"], indirect=True)
def test_server_failing_mid_run_leaves_no_output(tiny_policy, server, tmp_path, capsys):
    tasks, out = tmp_path / "t.jsonl", tmp_path / "r.parquet"
    records.write_records(tasks, few_tasks(), "task")
    argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(tasks), "--out", str(out), "--backend", "openai",
            "--base-url", server.url, "-G", "2", "--max-new-tokens", "4", "--batch-size", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "500" in err and "engine died" in err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("r.")]  # no output, no temp file


def test_server_down_is_a_clear_error(tiny_policy, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tasks, out = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    records.write_records(tasks, few_tasks()[:1], "task")
    argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(tasks), "--out", str(out), "--backend", "openai",
            "--base-url", f"http://127.0.0.1:{port}/v1", "-G", "1"]
    assert main(argv) == 2
    assert "cannot reach the OpenAI-compatible server" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# request building and output conversion, on plain data


def test_completion_request_asks_for_ids_and_logprobs():
    body = completion_request("m", Request([5, 6, 7], 9, 123), Sampling(0.7, 0.9), [2, 3])
    assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 9 and body["seed"] == 123
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["stop_token_ids"] == [2, 3]
    assert body["logprobs"] == 0 and body["return_tokens_as_token_ids"] is True and body["skip_special_tokens"] is False


def test_parse_completion():
    ok = {"choices": [{"logprobs": {"tokens": ["token_id:4", "token_id:2"], "token_logprobs": [-0.5, -1.5]},
                       "finish_reason": "stop"}]}
    gen = parse_completion(ok, [2], "srv")
    assert gen.token_ids == [4, 2] and gen.logprobs == [-0.5, -1.5] and gen.stopped
    cut = {"choices": [{"logprobs": {"tokens": ["token_id:4"], "token_logprobs": [-0.5]}, "finish_reason": "length"}]}
    assert not parse_completion(cut, [2], "srv").stopped
    with pytest.raises(BackendError, match="no per-token log-probs"):
        parse_completion({"choices": [{"text": "hi", "finish_reason": "stop"}]}, [2], "srv")
    with pytest.raises(BackendError, match="not ids"):
        parse_completion({"choices": [{"logprobs": {"tokens": ["hi"], "token_logprobs": [-1.0]}}]}, [2], "srv")
    with pytest.raises(BackendError, match="no choices"):
        parse_completion({"error": "x"}, [2], "srv")


def test_vllm_sampling_params_per_request():
    kw = sampling_kwargs(Request([1, 2], 16, (1 << 62) + 7), Sampling(1.0, 0.95), [9])
    assert kw["logprobs"] == 0 and kw["max_tokens"] == 16 and kw["stop_token_ids"] == [9]
    assert kw["top_p"] == 0.95 and kw["skip_special_tokens"] is False
    assert 0 <= kw["seed"] < 1 << 31  # vLLM seeds are 32-bit


@dataclass
class Logprob:  # the shape of vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def test_vllm_output_conversion():
    gen = to_generation([4, 9], [{4: Logprob(-0.25, 1)}, {9: Logprob(-2.0, 3), 1: Logprob(-0.1, 1)}], "stop", [9])
    assert gen.token_ids == [4, 9] and gen.logprobs == [-0.25, -2.0] and gen.stopped
    assert not to_generation([4], [{4: -0.5}], "length", [9]).stopped
    with pytest.raises(BackendError, match="no per-token log-probs"):
        to_generation([4], None, "length", [9])
    with pytest.raises(BackendError, match="sampled token 4"):
        to_generation([4], [{5: Logprob(-1.0)}], "length", [9])


def test_vllm_missing_is_a_clear_error(tiny_policy):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="needs the vllm package"):
            load_backend(str(tiny_policy), RolloutOptions(backend="vllm"))
    else:
        pytest.skip("vllm is installed")


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_end_to_end(tiny_policy):
    pytest.importorskip("vllm")
    from test_rollout import assert_token_in_token_out

    from rodscli.policy.chat import ChatFormat

    opts = RolloutOptions(group_size=2, max_new_tokens=16, backend="vllm", gpu_memory_utilization=0.3)
    backend = load_backend(str(tiny_policy), opts)
    tasks = few_tasks()
    recs = rollout(tasks, backend, opts, seed=0)
    fmt = ChatFormat(backend.tokenizer)
    for rec in recs:
        assert_token_in_token_out(rec, next(t for t in tasks if t["id"] == rec["task_id"]), fmt)
        assert rec["n_model_tokens"] > 0 and rec["backend"] == "vllm"


def test_hf_prompt_inside_another_episodes_cache_needs_no_forward(tiny_policy):
    """A second episode of a prompt that a first episode has already gone past: its whole prefix is
    in the first one's kept KV cache, so nothing is left to compute (this used to be a forward pass
    over 0 new tokens, which failed) and it samples exactly what the first one sampled."""
    from rodscli.policy.hf import HFBackend

    backend = HFBackend(tiny_policy, Sampling(temperature=1.0), device="cpu")
    prompt = list(range(5, 45))
    first = backend.generate([Request(prompt, 6, seed=3, key="a")], stop_ids=[0])[0]
    second = backend.generate([Request(prompt, 6, seed=3, key="b")], stop_ids=[0])[0]
    assert second.token_ids == first.token_ids and second.logprobs == pytest.approx(first.logprobs, abs=1e-5)
    # and a one-token prompt (an empty prefix) as well
    assert len(backend.generate([Request([7], 3, seed=1, key="c")], stop_ids=[0])[0].token_ids) >= 1


def test_hf_backend_bounds_episodes_in_flight_by_the_memory_their_kv_caches_need(tiny_policy):
    """An episode of --max-tokens T holds up to 3 copies of T tokens of KV (2 x layers x kv heads
    x head dim x 4 bytes each in fp32); the backend allows as many as fit in half of the memory
    available. Too many at once used to end in the OOM killer's SIGKILL, with no message."""
    from rodscli.policy.hf import HFBackend

    backend = HFBackend(tiny_policy, Sampling(), device="cpu")
    cfg = backend.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    n, why = backend.max_in_flight(1000, available=2 * 5 * 3 * 1000 * per_token)
    assert n == 5 and "--max-tokens 1000" in why and "GiB" in why
    assert backend.max_in_flight(1000, available=1)[0] == 1  # never fewer than one
    n_here, _ = backend.max_in_flight(1000)  # this machine's MemAvailable
    assert n_here >= 1


def test_rollout_runs_fewer_episodes_at_once_when_the_backend_says_they_would_not_fit(tiny_policy):
    """The rollout stage takes the backend's bound instead of --batch-size, says so once, and
    still runs every episode."""
    from rodscli.policy.hf import HFBackend, kv_bytes_per_token
    from rodscli.reporter import Silent

    class SmallMemory(HFBackend):  # the real backend, told that memory has room for 2 episodes
        widest = 0

        def max_in_flight(self, max_tokens, available=None):
            return super().max_in_flight(max_tokens, available=2 * 2 * 3 * max_tokens * kv_bytes_per_token(self.model))

        def generate(self, requests, stop_ids):
            self.widest = max(self.widest, len(requests))
            return super().generate(requests, stop_ids)

    backend = SmallMemory(tiny_policy, Sampling(temperature=1.0), device="cpu")
    opts = RolloutOptions(group_size=4, max_new_tokens=4, max_tokens=2000, batch_size=32)
    reporter = Silent()
    out = rollout(few_tasks(), backend, opts, seed=1, reporter=reporter)
    assert len(out) == 8 and backend.widest == 2  # 8 episodes, never more than 2 at once
    assert len(reporter.warnings) == 1 and "running 2 episodes at a time instead of --batch-size 32" in reporter.warnings[0]

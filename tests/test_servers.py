"""Rollouts across several OpenAI-compatible servers, and handing a new checkpoint to them.

Real local servers (tests/test_policy_backends.py's CompletionServer: the tiny hf model
behind /v1/completions, the way vLLM's server answers), several at once on 127.0.0.1.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_policy_backends import CompletionServer, few_tasks

from rodscli import records
from rodscli.cli import main
from rodscli.errors import BackendError, OptionError
from rodscli.policy.servers import ServerPool, split_urls
from rodscli.policy.vllm import engine_kwargs
from rodscli.stages.rollout import RolloutOptions, load_backend, rollout


class ReloadingServer(CompletionServer):
    """A CompletionServer that also loads another checkpoint on SGLang's reload request."""

    loads: list[str]

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path != "/update_weights_from_disk":
            return super().answer(path, body)
        from rodscli.policy.base import Sampling
        from rodscli.policy.hf import HFBackend

        self.loads = [*getattr(self, "loads", []), body["model_path"]]
        with self.lock:
            self.backend = HFBackend(body["model_path"], Sampling(), device="cpu")
        return 200, {"success": True, "message": "loaded"}


@pytest.fixture
def servers(tiny_policy, request):
    modes = getattr(request, "param", ("ok", "ok"))
    started = [ReloadingServer(tiny_policy, mode) for mode in modes]
    yield started
    for s in started:
        s.close()


def hf_rollouts(policy, tasks, seed=5):
    opts = RolloutOptions(group_size=2, max_new_tokens=8)
    return rollout(tasks, load_backend(str(policy), opts), opts, seed=seed)


def pool_rollouts(policy, urls, tasks, seed=5):
    opts = RolloutOptions(group_size=2, max_new_tokens=8, backend="openai", base_url=",".join(urls), concurrency=2)
    backend = load_backend(str(policy), opts)
    try:
        return rollout(tasks, backend, opts, seed=seed), backend
    finally:
        backend.close()


def test_requests_spread_over_the_servers_and_give_the_hf_rollouts(tiny_policy, servers):
    tasks = few_tasks()
    got, backend = pool_rollouts(tiny_policy, [s.url for s in servers], tasks)
    assert isinstance(backend, ServerPool) and backend.policy_id.startswith("openai:")
    assert [r["token_ids"] for r in got] == [r["token_ids"] for r in hf_rollouts(tiny_policy, tasks)]
    answered = [s["answered"] for s in backend.stats()]
    assert all(n > 0 for n in answered) and abs(answered[0] - answered[1]) <= max(2, sum(answered) // 3)


@pytest.mark.parametrize("servers", [("fail_after:1", "ok")], indirect=True)
def test_a_failing_server_is_routed_around(tiny_policy, servers):
    tasks = few_tasks()[:1]
    got, backend = pool_rollouts(tiny_policy, [s.url for s in servers], tasks)
    assert [r["token_ids"] for r in got] == [r["token_ids"] for r in hf_rollouts(tiny_policy, tasks)]
    bad, good = backend.stats()
    assert bad["failed"] >= 1 and bad["answered"] == 1 and good["failed"] == 0


@pytest.mark.parametrize("servers", [("fail_after:0", "fail_after:0")], indirect=True)
def test_every_server_failing_is_one_clear_error(tiny_policy, servers, tmp_path, capsys):
    tasks, out = tmp_path / "t.jsonl", tmp_path / "r.jsonl"
    records.write_records(tasks, few_tasks()[:1], "task")
    argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(tasks), "--out", str(out), "--backend", "openai",
            "-G", "2", "--max-new-tokens", "4", *[a for s in servers for a in ("--base-url", s.url)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "every one of the 2 rollout servers failed" in err and all(s.url in err for s in servers)
    assert not out.exists()


def test_base_urls_are_checked():
    assert split_urls(["http://a/v1/", "http://b/v1,http://c/v1"]) == ["http://a/v1", "http://b/v1", "http://c/v1"]
    with pytest.raises(OptionError, match="twice"):
        split_urls("http://a/v1,http://a/v1/")
    with pytest.raises(OptionError, match="no server"):
        split_urls(" , ")


@pytest.mark.parametrize("servers", [("ok",)], indirect=True)
def test_reload_hands_the_next_checkpoint_to_the_servers(tiny_policy, servers, tmp_path, capsys):
    """`rods reload-servers` (the loop's SERVE_HOOK): afterwards the server samples from the new weights."""
    [server] = servers
    other = tmp_path / "other"  # the same policy with other weights (as a train-step would write)
    shutil.copytree(tiny_policy, other)
    weights = load_file(other / "model.safetensors")
    torch.manual_seed(7)
    save_file({k: v + 0.5 * torch.randn_like(v) for k, v in weights.items()}, other / "model.safetensors", metadata={"format": "pt"})
    tasks = few_tasks()[:1]
    before, _ = pool_rollouts(tiny_policy, [server.url], tasks)
    assert main(["reload-servers", "--policy", str(other), "--base-url", server.url]) == 0
    assert server.loads == [str(other.resolve())]
    after, _ = pool_rollouts(other, [server.url], tasks)
    assert [r["token_ids"] for r in after] == [r["token_ids"] for r in hf_rollouts(other, tasks)]
    assert [r["token_ids"] for r in after] != [r["token_ids"] for r in before]
    # a server without the endpoint: one clear error, exit 2
    assert main(["reload-servers", "--policy", str(other), "--base-url", server.url, "--endpoint", "/nope"]) == 2
    assert "refused to load" in capsys.readouterr().err


def test_reload_of_an_unreachable_server_is_an_error(tmp_path):
    from test_shard import free_port

    from rodscli.policy.servers import reload

    with pytest.raises(BackendError, match="cannot reach"):
        reload(f"http://127.0.0.1:{free_port()}/v1", str(tmp_path))


def test_vllm_tensor_parallel_size_reaches_the_engine():
    kw = engine_kwargs("/ckpt", 0.5, tensor_parallel_size=4)
    assert kw["tensor_parallel_size"] == 4 and kw["model"] == "/ckpt" and kw["gpu_memory_utilization"] == 0.5
    with pytest.raises(OptionError, match="tensor-parallel-size"):
        RolloutOptions(backend="vllm", tensor_parallel_size=0).check()

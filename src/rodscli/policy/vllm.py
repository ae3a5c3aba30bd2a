"""The `vllm` backend: vLLM in-process on a GPU, token ids in, token ids out.

Every reply is a `TokensPrompt` (the conversation's ids, never text) given to one
`LLM.generate` call with all the waiting episodes; each request carries its own
`SamplingParams` (its seed) with `logprobs=0`, so vLLM returns the sampled token's log-prob,
taken after temperature and top-p (`logprobs_mode="processed_logprobs"`, the distribution
sampled from). Prefix caching is on, so an episode's history is not recomputed each turn.
vLLM is imported only when this backend is chosen. The request building and the output
conversion are plain functions, tested without vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rodscli.errors import BackendError
from rodscli.policy.base import Backend, Generation, Request, Sampling, load_tokenizer, policy_id


def sampling_kwargs(req: Request, sampling: Sampling, stop_ids: list[int]) -> dict:
    """Keyword arguments of the `SamplingParams` of one request."""
    return {
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": req.max_new_tokens,
        "seed": req.seed & 0x7FFF_FFFF,
        "logprobs": 0,  # the sampled token's log-prob only
        "stop_token_ids": list(stop_ids),
        "skip_special_tokens": False,
        "detokenize": False,  # rods decodes the ids itself
    }


def _logprob_of(entry: Any, token_id: int) -> float:
    """The log-prob of `token_id` in one position's {id: Logprob | float} map."""
    value = entry.get(token_id) if isinstance(entry, dict) else None
    if value is None:
        raise BackendError(f"vLLM returned no log-prob for the sampled token {token_id}")
    return float(getattr(value, "logprob", value))


def to_generation(token_ids: list[int], logprobs: list[Any] | None, finish_reason: str | None,
                  stop_ids: list[int]) -> Generation:
    """A vLLM CompletionOutput's (token_ids, logprobs, finish_reason) as a Generation."""
    ids = [int(t) for t in token_ids]
    if logprobs is None or len(logprobs) != len(ids):
        raise BackendError("vLLM returned no per-token log-probs (SamplingParams.logprobs was not honoured)")
    values = [_logprob_of(entry, t) for entry, t in zip(logprobs, ids, strict=True)]
    stopped = finish_reason == "stop" or bool(ids and ids[-1] in stop_ids)
    return Generation(ids, values, stopped)


def engine_kwargs(policy: str | Path, gpu_memory_utilization: float, tensor_parallel_size: int = 1) -> dict:
    """Keyword arguments of `vllm.LLM`: bf16, prefix caching, log-probs after temperature and top-p,
    the model split over `tensor_parallel_size` GPUs."""
    return {"model": str(policy), "dtype": "bfloat16", "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size, "enable_prefix_caching": True, "logprobs_mode": "processed_logprobs"}


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, policy: str | Path, sampling: Sampling, gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, chat_template: str | Path | None = None):
        try:
            import vllm
        except ImportError:
            raise BackendError("--backend vllm needs the vllm package (pip install vllm) and a CUDA GPU") from None
        self.tokenizer = load_tokenizer(policy, chat_template)
        self.sampling = sampling
        self.policy_id = policy_id(policy)
        self._vllm = vllm
        kwargs = engine_kwargs(policy, gpu_memory_utilization, tensor_parallel_size)
        try:
            try:
                self.llm = vllm.LLM(**kwargs)
            except TypeError:  # vLLM before logprobs_mode (< 0.10.2): its log-probs are of the raw logits
                kwargs.pop("logprobs_mode")
                self.llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise BackendError(f"vLLM cannot load {str(policy)!r}: {type(exc).__name__}: {exc}") from None

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        if not requests:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [self._vllm.SamplingParams(**sampling_kwargs(r, self.sampling, stop_ids)) for r in requests]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                raise BackendError(f"vLLM ran out of GPU memory with a batch of {len(requests)}: lower --batch-size or --gpu-memory-utilization") from None
            raise
        return [to_generation(o.outputs[0].token_ids, o.outputs[0].logprobs, o.outputs[0].finish_reason, stop_ids)
                for o in outputs]

"""The `hf` backend: transformers on CPU or CUDA, every active episode in one batch.

One `generate` call continues all the episodes that wait for a reply together: their
prompts are left-padded into one batch, prefilled in one forward pass, then decoded step by
step with a KV cache until every row has stopped; rows that stopped are dropped from the
batch (and from the cache) as soon as half of them are done. Each row samples with its own
`torch.Generator` seeded from the request, so an episode's tokens do not depend on which
other episodes share its batch (up to float rounding of batched kernels on GPU), and a
fixed seed gives identical rollouts on CPU.

Not done: the KV cache is not kept across the turns of an episode; each reply prefills the
episode's whole history again (one batched forward pass, no re-tokenization).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rodscli.errors import BackendError
from rodscli.policy.base import Backend, Generation, Request, Sampling, load_tokenizer, policy_id


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"--device {device}: no CUDA device is available")
    return device


def load_model(policy: str | Path, device: str) -> Any:
    """The checkpoint's causal LM, bf16 on GPU, fp32 on CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise BackendError(f"cannot load the model of {str(policy)!r}: {type(exc).__name__}: {exc}") from None
    return model.to(device).eval()


def sample_next(logits: Any, sampling: Sampling, generators: list[Any]) -> tuple[Any, Any]:
    """Sample one token per row; return (ids, log-probs under the sampled distribution).

    Temperature scaling, then the top-p nucleus (smallest set of tokens whose probability
    reaches top_p), renormalised; greedy when temperature is 0 (log-probs at temperature 1).
    """
    import torch

    logits = logits.float()
    if sampling.temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        ids = logp.argmax(dim=-1)
        return ids, logp.gather(1, ids[:, None])[:, 0]
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_logp.exp().cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cum - sorted_logp.exp()) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    probs = logp.exp()
    ids = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])
    return ids, logp.gather(1, ids[:, None])[:, 0]


class HFBackend(Backend):
    name = "hf"

    def __init__(self, policy: str | Path, sampling: Sampling, device: str = "auto"):
        self.tokenizer = load_tokenizer(policy)
        self.device = pick_device(device)
        self.model = load_model(policy, self.device)
        self.sampling = sampling
        self.policy_id = policy_id(policy)

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        try:
            return self._generate(requests, stop_ids)
        except RuntimeError as exc:  # CUDA / CPU out of memory and friends
            if "out of memory" in str(exc).lower():
                raise BackendError(f"hf backend ran out of memory on {self.device} with a batch of {len(requests)}: lower --batch-size or --max-tokens") from None
            raise

    def _generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        import torch
        from transformers import DynamicCache

        n = len(requests)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        if n == 0:
            return []
        dev = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [torch.Generator(device=dev).manual_seed(r.seed & 0x7FFF_FFFF_FFFF_FFFF) for r in requests]
        budget = [r.max_new_tokens for r in requests]
        stop = torch.tensor(stop_ids, device=dev)
        rows = list(range(n))  # request index of each batch row
        active = set(rows)  # requests still generating
        cache = DynamicCache()
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                past_key_values=cache, use_cache=True).logits[:, -1]
            last_pos = positions[:, -1]
            while True:
                # finished rows still in the batch sample too; their draws are discarded
                next_ids, next_lp = sample_next(logits, self.sampling, [gens[i] for i in rows])
                ids_list, lp_list = next_ids.tolist(), next_lp.tolist()
                is_stop = torch.isin(next_ids, stop).tolist()
                for b, i in enumerate(rows):
                    if i not in active:
                        continue
                    out_ids[i].append(ids_list[b])
                    out_lp[i].append(lp_list[b])
                    if is_stop[b]:
                        stopped[i] = True
                    if is_stop[b] or len(out_ids[i]) >= budget[i]:
                        active.discard(i)
                if not active:
                    break
                if len(active) <= len(rows) // 2:  # compact: drop finished rows from batch and cache
                    live = [b for b, i in enumerate(rows) if i in active]
                    keep = torch.tensor(live, device=dev)
                    cache.batch_select_indices(keep)
                    mask, last_pos, next_ids = mask[keep], last_pos[keep], next_ids[keep]
                    rows = [rows[b] for b in live]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                last_pos = last_pos + 1
                logits = self.model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                                    past_key_values=cache, use_cache=True).logits[:, -1]
        return [Generation(out_ids[i], out_lp[i], stopped[i]) for i in range(n)]

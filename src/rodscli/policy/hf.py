"""The `hf` backend: transformers on CPU or CUDA, every active episode in one batch.

One `generate` call continues all the episodes that wait for a reply together, in two phases:

1. extend: each prompt, all but its last token, starts from the longest prefix that a kept
   KV cache shares with it: its own episode's, kept from its previous reply (keyed by
   `Request.key`), or another episode's (tasks of one domain share the system prompt and
   tool schemas); only the tokens after that prefix are computed. Identical prompts (the G
   samples of a task) are computed once. Rows with similar numbers of new tokens go in one
   forward pass: their caches left-padded to a common width, their new tokens right-padded.
2. decode: the rows' caches are left-padded into one batch, the last prompt token is fed,
   then every row samples step by step until all have stopped; rows that stopped leave the
   batch (and the cache) as soon as half of them are done, their KV saved for their next turn.

Positions are each row's own (padding never shifts them), so a cached KV is valid in any
batch. Each row samples with its own `torch.Generator` seeded from the request, so an
episode's tokens do not depend on which episodes share its batch (up to float rounding of
batched kernels), and a fixed seed gives identical rollouts on CPU.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
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


@dataclass
class _Prefix:
    """KV of one sequence: its token ids and, per layer, (keys, values) [heads, len, dim]."""

    ids: list[int]
    kv: list[tuple[Any, Any]]

    def crop(self, n: int) -> _Prefix:
        return _Prefix(self.ids[:n], [(k[:, :n], v[:, :n]) for k, v in self.kv])


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (binary search over slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _best_starts(jobs: dict[tuple[int, ...], list[int]], own: dict[tuple[int, ...], tuple[int, _Prefix]],
                 pool: list[_Prefix]) -> dict[tuple[int, ...], _Prefix]:
    """Each prompt's longest cached prefix: its own episode's, or, when that covers less than
    half of it, the longest any cache in `pool` shares with it."""
    starts = {}
    for want in jobs:
        n, best = own.get(want, (0, None))
        if 2 * n < len(want):  # its own history covers little: look at every kept cache
            as_list = list(want)
            for p in pool:
                m = _common_prefix(p.ids, as_list)
                if m > n:
                    n, best = m, p
        starts[want] = best.crop(n) if n else _Prefix([], [])
    return starts


def _next_chunk(jobs: dict[tuple[int, ...], list[int]], starts: dict[tuple[int, ...], _Prefix]) -> list[tuple[int, ...]]:
    """The prompts of the next forward pass, most new tokens first."""
    order = sorted(jobs, key=lambda w: len(w) - len(starts[w].ids), reverse=True)
    first = order[0]
    if 2 * len(starts[first].ids) < len(first) and len(order) > 1:
        return [first]  # mostly new: compute it alone, the others may share its prefix
    # similar numbers of new tokens share a forward pass (padding stays below half)
    s_max = len(first) - len(starts[first].ids)
    chunk: list[tuple[int, ...]] = []
    for want in order:
        s = len(want) - len(starts[want].ids)
        width = max(len(starts[w].ids) for w in [*chunk, want]) + s_max
        if chunk and (2 * s < s_max or (len(chunk) + 1) * s_max * width > _EXTEND_BUDGET):
            break
        chunk.append(want)
    return chunk


@functools.cache
def _growing_layer_class() -> type:
    """A transformers DynamicLayer that writes new KV into spare room at the end of its
    tensors instead of concatenating: one copy per new token, not one of the whole cache."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        room: tuple[Any, Any] | None = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self.get_seq_length(), key_states.shape[-2]
            room = self.room
            if room is None or room[0].shape[0] != key_states.shape[0] or n + m > room[0].shape[-2] \
                    or (n and room[0].data_ptr() != self.keys.data_ptr()):  # batch_select_indices made new tensors
                b, h, _, d = key_states.shape
                room = (key_states.new_empty((b, h, n + m + max(64, n // 2), d)),
                        value_states.new_empty((b, h, n + m + max(64, n // 2), value_states.shape[-1])))
                if n:
                    room[0][:, :, :n] = self.keys
                    room[1][:, :, :n] = self.values
                self.room = room
            room[0][:, :, n:n + m] = key_states
            room[1][:, :, n:n + m] = value_states
            self.keys, self.values = room[0][:, :, :n + m], room[1][:, :, :n + m]
            return self.keys, self.values

    return GrowingLayer


# extend-phase forward passes hold about this many attention scores (rows x new x total)
_EXTEND_BUDGET = 1 << 24
# an episode in flight holds its KV up to three times at once: kept between its turns, copied
# into the batch's cache, and that cache reallocated as it grows (measured: 32 SmolLM2-135M
# episodes of ~3,000 tokens, 45 KiB of KV per token, reached 14 GB of RSS before the OOM killer)
_KV_COPIES = 3
# the share of the memory available when the backend starts that its KV caches may take
_MEMORY_SHARE = 0.5


def available_memory(device: str) -> int | None:
    """Bytes free for the caches: the GPU's free memory, or Linux's MemAvailable; None when unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token takes over all layers."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


class HFBackend(Backend):
    name = "hf"

    def __init__(self, policy: str | Path, sampling: Sampling, device: str = "auto",
                 chat_template: str | Path | None = None):
        self.tokenizer = load_tokenizer(policy, chat_template)
        self.device = pick_device(device)
        self.model = load_model(policy, self.device)
        self.sampling = sampling
        self.policy_id = policy_id(policy)
        self._kept: dict[str, _Prefix] = {}  # episode key -> KV of the ids it has seen
        # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns on every call)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def release(self, keys: list[str]) -> None:
        for key in keys:
            self._kept.pop(key, None)

    def close(self) -> None:
        self._kept.clear()

    def max_in_flight(self, max_tokens: int, available: int | None = None) -> tuple[int, str] | None:
        """Episodes whose KV (up to `max_tokens` tokens each, _KV_COPIES copies) fit in half of
        the memory available now (`available` bytes when given)."""
        free = available_memory(self.device) if available is None else available
        if not free:
            return None
        per_token = kv_bytes_per_token(self.model)
        per_episode = max_tokens * per_token * _KV_COPIES
        n = max(1, int(_MEMORY_SHARE * free // per_episode))
        why = (f"an episode of --max-tokens {max_tokens} holds up to {per_episode / 2**30:.2f} GiB of KV cache "
               f"({per_token / 1024:.0f} KiB per token, {_KV_COPIES} copies); {free / 2**30:.1f} GiB is available on {self.device}")
        return n, why

    def generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        try:
            return self._generate(requests, stop_ids)
        except RuntimeError as exc:  # CUDA / CPU out of memory and friends
            if "out of memory" in str(exc).lower():
                self._kept.clear()
                raise BackendError(f"hf backend ran out of memory on {self.device} with a batch of {len(requests)}: lower --batch-size or --max-tokens") from None
            raise

    # -- phase 1: caches up to the last prompt token ----------------------------------

    def _prefixes(self, requests: list[Request]) -> list[_Prefix]:
        """For each request, the KV of all its prompt ids but the last.

        Each prompt starts from the longest prefix any kept KV shares with it: its own
        episode's (the history up to its last reply) or another episode's (the system
        prompt and tool schemas that tasks of one domain share). Identical prompts (the G
        samples of a task) are computed once. A prompt that shares little with anything kept
        is computed alone first, so that the prompts after it can start from it.
        """
        out, jobs, own = self._reuse_kept(requests)
        computed: list[_Prefix] = []
        while jobs:
            starts = _best_starts(jobs, own, list(self._kept.values()) + computed)
            for want in [w for w in jobs if len(starts[w].ids) == len(w)]:
                # all in another episode's cache (a later sample of a task another episode has
                # begun): nothing to compute, and a forward pass over 0 new tokens would fail
                computed.append(starts[want])
                for i in jobs.pop(want):
                    out[i] = starts[want]
            if not jobs:
                break
            chunk = _next_chunk(jobs, starts)
            for want, prefix in zip(chunk, self._extend([starts[w] for w in chunk], [list(w) for w in chunk]), strict=True):
                computed.append(prefix)
                for i in jobs.pop(want):
                    out[i] = prefix
        return out  # type: ignore[return-value]

    def _reuse_kept(self, requests: list[Request]) -> tuple[list[_Prefix | None], dict[tuple[int, ...], list[int]],
                                                            dict[tuple[int, ...], tuple[int, _Prefix]]]:
        """(each request's prefix when its episode's kept KV covers it, else None; the distinct
        prompts still to compute -> their rows; prompt -> what its episode's kept KV covers)."""
        out: list[_Prefix | None] = [None] * len(requests)
        jobs: dict[tuple[int, ...], list[int]] = {}
        own: dict[tuple[int, ...], tuple[int, _Prefix]] = {}
        for i, r in enumerate(requests):
            want = r.prompt_ids[:-1]
            kept = self._kept.get(r.key) if r.key is not None else None
            n = _common_prefix(kept.ids, want) if kept is not None else 0
            if kept is not None and n == len(want):
                out[i] = kept.crop(n)
                continue
            key = tuple(want)
            jobs.setdefault(key, []).append(i)
            if kept is not None:
                own[key] = (n, kept)
        return out, jobs, own

    def _extend(self, starts: list[_Prefix], wants: list[list[int]]) -> list[_Prefix]:
        """One forward pass: each start's cache (left-padded) plus its new ids (right-padded)."""
        import torch

        dev, n = self.device, len(starts)
        P = max(len(p.ids) for p in starts)
        S = max(len(w) - len(p.ids) for p, w in zip(starts, wants, strict=True))
        ids = torch.zeros((n, S), dtype=torch.long)
        mask = torch.zeros((n, P + S), dtype=torch.long)
        pos = torch.zeros((n, S), dtype=torch.long)
        for b, (p, w) in enumerate(zip(starts, wants, strict=True)):
            c, s = len(p.ids), len(w) - len(p.ids)
            ids[b, :s] = torch.tensor(w[c:])
            mask[b, P - c:P + s] = 1
            pos[b] = torch.arange(c, c + S)
        cache = self._batch_cache(starts, P)
        with torch.inference_mode():
            self._forward(cache, input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev))
        return [self._row(cache, b, P - len(p.ids), w) for b, (p, w) in enumerate(zip(starts, wants, strict=True))]

    def _forward(self, cache: Any, **inputs: Any) -> Any:
        """One forward pass that appends to `cache` in place; the last position's logits, (batch, vocab)."""
        return self.model(**inputs, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache}).logits[:, -1]

    def _batch_cache(self, prefixes: list[_Prefix], width: int) -> Any:
        """A DynamicCache holding each prefix's KV right-aligned in `width` columns."""
        from transformers import DynamicCache

        if width == 0:
            return self._growing(DynamicCache(config=self.model.config))
        ref = next(p for p in prefixes if p.ids)
        layers = []
        for layer, (k0, v0) in enumerate(ref.kv):
            keys = k0.new_zeros((len(prefixes), k0.shape[0], width, k0.shape[2]))
            values = v0.new_zeros((len(prefixes), v0.shape[0], width, v0.shape[2]))
            for b, p in enumerate(prefixes):
                if p.ids:
                    keys[b, :, width - len(p.ids):] = p.kv[layer][0]
                    values[b, :, width - len(p.ids):] = p.kv[layer][1]
            layers.append((keys, values))
        return self._growing(DynamicCache(ddp_cache_data=layers, config=self.model.config))

    def _growing(self, cache: Any) -> Any:
        for layer in cache.layers:
            if type(layer).__name__ == "DynamicLayer":
                layer.__class__ = _growing_layer_class()
        return cache

    @staticmethod
    def _row(cache: Any, b: int, first: int, ids: list[int]) -> _Prefix:
        """Row b's KV of `ids` (from column `first`), copied out of the batch."""
        end = first + len(ids)
        kv = [(layer.keys[b, :, first:end].clone(), layer.values[b, :, first:end].clone()) for layer in cache.layers]
        return _Prefix(list(ids), kv)

    # -- phase 2: sampling -------------------------------------------------------------

    def _generate(self, requests: list[Request], stop_ids: list[int]) -> list[Generation]:
        """Sample every reply in one batch: each row starts from its prompt's cached prefix
        (phase 1) and feeds one token per step; finished rows leave the batch once half of it
        is done, and every episode's KV is kept for its next turn."""
        import torch

        n = len(requests)
        if n == 0:
            return []
        out = [Generation([], [], False) for _ in range(n)]
        prefixes = self._prefixes(requests)
        P = max(len(p.ids) for p in prefixes)
        cache = self._batch_cache(prefixes, P)
        mask, last_pos, next_ids, gens = self._decode_inputs(requests, prefixes, P)
        stop = torch.tensor(stop_ids, device=self.device)
        rows = list(range(n))  # request index of each batch row
        active = set(rows)  # requests still generating
        fed = [0] * n  # generated tokens of each request that are in the cache

        def keep(b: int, i: int) -> None:  # save request i's KV (batch row b) for its next turn
            r = requests[i]
            if r.key is not None:
                ids = r.prompt_ids + out[i].token_ids[:fed[i]]
                self._kept[r.key] = self._row(cache, b, P - len(prefixes[i].ids), ids)

        with torch.inference_mode():
            while True:
                logits = self._forward(cache, input_ids=next_ids[:, None], attention_mask=mask, position_ids=last_pos[:, None])
                for i in rows:  # every token sampled so far has now been fed: it is in the cache
                    fed[i] = len(out[i].token_ids)
                # finished rows still in the batch sample too; their draws are discarded
                next_ids, next_lp = sample_next(logits, self.sampling, [gens[i] for i in rows])
                ids_list, lp_list = next_ids.tolist(), next_lp.tolist()
                is_stop = torch.isin(next_ids, stop).tolist()
                for b, i in enumerate(rows):
                    if i not in active:
                        continue
                    out[i].token_ids.append(ids_list[b])
                    out[i].logprobs.append(lp_list[b])
                    if is_stop[b]:
                        out[i].stopped = True
                    if is_stop[b] or len(out[i].token_ids) >= requests[i].max_new_tokens:
                        active.discard(i)
                if not active:
                    break
                if len(active) <= len(rows) // 2:  # compact: drop finished rows from batch and cache
                    live = [b for b, i in enumerate(rows) if i in active]
                    for b, i in enumerate(rows):
                        if i not in active:
                            keep(b, i)
                    sel = torch.tensor(live, device=self.device)
                    cache.batch_select_indices(sel)
                    mask, last_pos, next_ids = mask[sel], last_pos[sel], next_ids[sel]
                    rows = [rows[b] for b in live]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                last_pos = last_pos + 1
        for b, i in enumerate(rows):
            keep(b, i)
        return out

    def _decode_inputs(self, requests: list[Request], prefixes: list[_Prefix], width: int) -> tuple[Any, Any, Any, list[Any]]:
        """The first decoding step's attention mask (each prefix right-aligned in `width`
        columns, then the last prompt token), positions and input ids, and each request's generator."""
        import torch

        dev = self.device
        mask = torch.zeros((len(requests), width + 1), dtype=torch.long)
        for b, p in enumerate(prefixes):
            mask[b, width - len(p.ids):] = 1
        last_pos = torch.tensor([len(r.prompt_ids) - 1 for r in requests], device=dev)
        next_ids = torch.tensor([r.prompt_ids[-1] for r in requests], device=dev)
        gens = [torch.Generator(device=dev).manual_seed(r.seed & 0x7FFF_FFFF_FFFF_FFFF) for r in requests]
        return mask.to(dev), last_pos, next_ids, gens

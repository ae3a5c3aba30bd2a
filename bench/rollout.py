"""Rollout throughput of the `hf` backend against a naive multi-turn loop, same run.

    .venv/bin/python bench/rollout.py                       # CPU, the tiny policy (rods init-policy)
    .venv/bin/python bench/rollout.py --model qwen-0.5b     # CUDA: bf16, random Qwen2-shaped 0.5B
    .venv/bin/python bench/rollout.py --policy DIR --group-size 8   # any checkpoint, e.g. SmolLM2 (docs/real-models.md)

Both sides play the same built-in tasks x G episodes with the same limits and sampling
(temperature 1, max new tokens per reply, at most `max_steps_per_turn` tool-call steps):

- rods: stages/rollout.rollout with the hf backend (all episodes in flight step together,
  each episode's KV cache kept across its turns, the G samples of a task prefilled once);
- naive: one episode at a time; every turn re-renders the whole history with the chat
  template, tokenizes it and calls `model.generate` on it (log-probs from its scores).

Generated tokens/s = model tokens / wall seconds. Prints one JSON line with both and the
ratio rods / naive (target >= 5 on CPU), and the same ratio over this process's CPU seconds
(steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rodscli.envs.base import offered_tools, open_episode, tool_name
from rodscli.envs.builtin import seed_tasks
from rodscli.policy.base import Sampling, load_tokenizer
from rodscli.policy.chat import DEFAULT_SYSTEM_PROMPT, ChatFormat, parse_tool_calls, revealed_tools
from rodscli.policy.hf import HFBackend
from rodscli.stages.rollout import RolloutOptions, rollout

sys.path.insert(0, str(Path(__file__).parent))
import train  # noqa: E402  (bench/train.py: the tiny policy and the Qwen2.5-0.5B shape)


def make_policy(args, workdir: Path) -> Path:
    out = train.make_policy(argparse.Namespace(policy=args.policy, model="tiny"), workdir)
    if args.model == "qwen-0.5b" and not args.policy:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        vocab = len(load_tokenizer(out))  # the model samples only ids the tokenizer can decode
        AutoModelForCausalLM.from_config(train.qwen_config(vocab)).save_pretrained(out)
    return out


def naive_episode(task: dict, model, fmt: ChatFormat, opts: RolloutOptions, device: str) -> int:
    """One episode, re-rendering and re-tokenizing the full history every turn; model tokens."""
    tok = fmt.tokenizer
    n_tokens = 0
    with open_episode(task) as episode:
        # the messages rods renders (tools in the system prompt when the template drops them)
        messages, tools = fmt.opening(task.get("system_prompt") or DEFAULT_SYSTEM_PROMPT,
                                      offered_tools(task, episode, 0), task["user_turns"][0])
        for turn in range(len(task["user_turns"])):
            if turn:
                new = revealed_tools(task, episode, turn)
                if new:
                    messages += fmt.announce(new)
                messages.append({"role": "user", "content": task["user_turns"][turn]})
            offered = {tool_name(t) for t in offered_tools(task, episode, turn)}
            for _ in range(opts.max_steps_per_turn):
                ids = tok(fmt.render(messages, tools=tools), add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
                if ids.shape[1] + opts.max_new_tokens > opts.max_tokens:
                    return n_tokens
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=opts.temperature,
                                     top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, eos_token_id=fmt.stop_ids,
                                     pad_token_id=fmt.pad_id, return_dict_in_generate=True, output_scores=True)
                new_ids = out.sequences[0, ids.shape[1]:]
                model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # behaviour log-probs
                n_tokens += len(new_ids)
                text = fmt.decode(new_ids.tolist()).removesuffix(fmt.eot_text)
                messages.append({"role": "assistant", "content": text})
                _, calls = parse_tool_calls(text)
                if not calls:
                    break
                results = [(episode.call(c.name, c.arguments, offered).result if not c.error else c.problem) or ""
                           for c in calls]
                messages += fmt.tool_messages(results)
    return n_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="checkpoint directory (default: a fresh `rods init-policy`)")
    ap.add_argument("--model", choices=["tiny", "qwen-0.5b"], default="tiny")
    ap.add_argument("--tasks", type=int, default=8, help="built-in tasks (spread over domains and skills)")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--naive-episodes", type=int, default=None, help="episodes the naive loop plays (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    every = max(1, 480 // args.tasks)
    tasks = [t for i, t in enumerate(seed_tasks()) if i % every == 0][: args.tasks]
    opts = RolloutOptions(group_size=args.group_size, max_new_tokens=args.max_new_tokens, batch_size=len(tasks) * args.group_size)
    with tempfile.TemporaryDirectory() as tmp:
        policy = make_policy(args, Path(tmp))
        backend = HFBackend(policy, Sampling(opts.temperature, opts.top_p), device=args.device)
        fmt = ChatFormat(backend.tokenizer)
        dev = backend.device
        sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)

        rollout(tasks[:1], backend, RolloutOptions(group_size=1, max_new_tokens=4), seed=99)  # warm-up
        sync()
        t, c = time.perf_counter(), time.process_time()
        recs = rollout(tasks, backend, opts, seed=0)
        sync()
        rods_s, rods_cpu = time.perf_counter() - t, time.process_time() - c
        rods_tokens = sum(r["n_model_tokens"] for r in recs)

        episodes = [task for task in tasks for _ in range(args.group_size)][: args.naive_episodes]
        torch.manual_seed(0)
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            naive_tokens = sum(naive_episode(task, backend.model, fmt, opts, dev) for task in episodes)
        sync()
        naive_s, naive_cpu = time.perf_counter() - t, time.process_time() - c
    rods_tps, naive_tps = rods_tokens / rods_s, naive_tokens / naive_s
    print(json.dumps({
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        "model": args.policy or args.model, "params_M": round(sum(p.numel() for p in backend.model.parameters()) / 1e6, 1),
        "episodes": {"rods": len(recs), "naive": len(episodes)},
        "tokens": {"rods": rods_tokens, "naive": naive_tokens},
        "seconds": {"rods": round(rods_s, 2), "naive": round(naive_s, 2)},
        "tokens_per_s": {"rods": round(rods_tps, 1), "naive": round(naive_tps, 1)},
        "ratio": round(rods_tps / naive_tps, 2),
        # CPU seconds of this process: the same ratio, less exposed to other load on a shared machine
        "cpu_seconds": {"rods": round(rods_cpu, 2), "naive": round(naive_cpu, 2)},
        "ratio_cpu_time": round((rods_tokens / rods_cpu) / (naive_tokens / naive_cpu), 2),
    }))


if __name__ == "__main__":
    main()

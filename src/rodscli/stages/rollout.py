"""`rods rollout`: G episodes of every task against its environment, token-in token-out.

Each episode is a small state machine (`EpisodeRun`): it asks the backend for a reply to
its token ids, appends the reply as produced, executes the `<tool_call>` blocks in its own
environment episode, and inserts the tool results (or, after a reply without a tool call,
the next scripted user turn) as a new segment. The engine keeps up to `batch_size`
episodes in flight and sends all of their requests to the backend at once; a finished
episode's place goes to the next one waiting. Records come out in task order, sample
order, whatever order the episodes finished in.

Limits per episode end it with a finish_reason: max_steps (assistant steps inside one user
turn), max_tokens (the whole episode's token count, prompt included), timeout (wall clock),
env_error (the environment broke). A backend that fails raises BackendError: no output.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rodscli.config import option
from rodscli.envs.base import (
    ENV_ERROR,
    PARSE_ERROR,
    CallOutcome,
    offered_tools,
    open_episode,
    tool_name,
)
from rodscli.errors import BackendError, OptionError
from rodscli.policy.base import BACKENDS, Backend, Generation, Request
from rodscli.policy.chat import DEFAULT_SYSTEM_PROMPT, ChatFormat, Conversation, revealed_tools
from rodscli.reporter import Reporter, or_silent


@dataclass
class RolloutOptions:
    """Options of `rods rollout`."""

    group_size: int = option(4, help="Rollouts per task (G): one GRPO group per task.")
    backend: str = option("hf", help="Policy backend: hf (transformers, CPU/CUDA), vllm (in-process, GPU) or openai (an OpenAI-compatible server).")
    temperature: float = option(1.0, help="Sampling temperature (0 = greedy; log-probs are then reported at temperature 1).")
    top_p: float = option(1.0, help="Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.")
    max_new_tokens: int = option(256, help="Most tokens in one assistant reply (a reply cut off is closed and the episode goes on).")
    max_steps_per_turn: int = option(8, help="Most assistant replies with tool calls inside one user turn (finish_reason max_steps).")
    max_tokens: int = option(4096, help="Most tokens in a whole episode, prompt included (finish_reason max_tokens).")
    timeout: float = option(600.0, help="Wall-clock seconds an episode may take (finish_reason timeout); the openai backend also gives up on a request after this long (an error).")
    batch_size: int = option(32, help="Episodes in flight at once; their replies are generated together.")
    iteration: int | None = option(None, help="Loop iteration, recorded in each rollout and its group id.")
    device: str = option("auto", help="hf backend device: auto (cuda when available), cpu, cuda, cuda:N.")
    system_prompt: str | None = option(None, help="System prompt for tasks that have none (default: rods' built-in prompt).")
    chat_template: str | None = option(None, help="Jinja chat template file that replaces the checkpoint's own (as vLLM's --chat-template); needed when the checkpoint has none.")
    base_url: str = option("http://127.0.0.1:8000/v1", join=",", help="openai backend: the server's base URL; several servers (one per GPU or node) as --base-url repeated or a comma-separated list: requests spread over them and a failing server is routed around.")
    served_model: str | None = option(None, help="openai backend: model name on the server (default: the --policy path).")
    concurrency: int = option(16, help="openai backend: requests in flight at once.")
    gpu_memory_utilization: float = option(0.85, help="vllm backend: fraction of GPU memory vLLM may use.")
    tensor_parallel_size: int = option(1, help="vllm backend: GPUs one model is split over (tensor parallelism).")

    def check(self) -> None:
        if self.group_size < 1:
            raise OptionError(f"--group-size must be at least 1, got {self.group_size}")
        if self.backend not in BACKENDS:
            raise OptionError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for name in ("max_new_tokens", "max_steps_per_turn", "max_tokens", "batch_size", "concurrency", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise OptionError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.timeout <= 0:
            raise OptionError("--timeout must be positive")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and an episode's coordinates (stable across runs)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def group_id(task: dict, iteration: int | None) -> str:
    return task["id"] if iteration is None else f"{task['id']}@{iteration}"


@dataclass
class EpisodeRun:
    """One episode in flight: its conversation, environment episode and bookkeeping."""

    task: dict
    sample_index: int
    seed: int
    opts: RolloutOptions
    fmt: ChatFormat
    episode: Any = None
    conv: Conversation | None = None
    turn: int = 0
    step: int = 0
    n_requests: int = 0
    calls: list[dict] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_warning: str | None = None
    started: float = 0.0
    t_generate: float = 0.0
    t_env: float = 0.0
    t_total: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        t = time.perf_counter()
        self.episode = open_episode(self.task)
        tools = offered_tools(self.task, self.episode, 0)
        self.t_env += time.perf_counter() - t
        system = self.task.get("system_prompt") or self.opts.system_prompt or DEFAULT_SYSTEM_PROMPT
        self.conv = Conversation.start(self.fmt, system, tools, self.task["user_turns"][0])
        self.prompt_warning = prompt_room_warning(self.task["id"], len(self.conv), len(self.fmt.eot_ids), self.opts)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def request(self) -> Request | None:
        """The next reply to ask for, or None when a limit ends the episode first."""
        if time.perf_counter() - self.started > self.opts.timeout:
            self.finish("timeout")
            return None
        # room for the reply and the end-of-turn token that closes a reply cut off
        budget = min(self.opts.max_new_tokens, self.opts.max_tokens - len(self.conv) - len(self.fmt.eot_ids))
        if budget < 1:
            self.finish("max_tokens")
            return None
        self.n_requests += 1
        return Request(list(self.conv.token_ids), budget, derive_seed(self.seed, self.n_requests), key=self.key)

    @property
    def key(self) -> str:
        return f"{group_id(self.task, self.opts.iteration)}/{self.sample_index}"

    def advance(self, gen: Generation) -> None:
        """Take the model's reply: run its tool calls, then insert what comes next."""
        text, parsed = self.conv.add_reply(gen.token_ids, gen.logprobs)
        hit_budget = not gen.stopped and len(gen.token_ids) < self.opts.max_new_tokens
        if parsed:
            self._run_calls(parsed)
            if self.done:
                return
            self.step += 1
            if self.step >= self.opts.max_steps_per_turn:
                self.finish("max_steps")
                return
            if hit_budget:
                self.finish("max_tokens")
                return
            self._insert(lambda c: c.add_tool_results([(call["name"], call["result"] or "") for call in self.calls[-len(parsed):]]))
            return
        self.hashes.append(self._state_hash())
        if self.turn + 1 >= len(self.task["user_turns"]):
            self.finish("done")
            return
        if hit_budget:
            self.finish("max_tokens")
            return
        nxt = self.turn + 1
        new_tools = revealed_tools(self.task, self.episode, nxt)
        if self._insert(lambda c: c.add_user(self.task["user_turns"][nxt], new_tools)):
            self.turn, self.step = nxt, 0

    def _run_calls(self, parsed: list) -> None:
        t = time.perf_counter()
        offered = {tool_name(s) for s in offered_tools(self.task, self.episode, self.turn)}
        for call in parsed:
            if call.error:
                outcome = CallOutcome(f"Error: could not parse the tool call: {call.problem}", PARSE_ERROR)
            else:
                outcome = self.episode.call(call.name, call.arguments, offered)
            self.calls.append({"turn": self.turn, "step": self.step, "name": call.name, "arguments": call.arguments,
                               "raw": call.raw, "result": outcome.result, "error": outcome.error})
            if outcome.error == ENV_ERROR or self.episode.failed:
                self.t_env += time.perf_counter() - t
                self.finish("env_error")
                return
        self.t_env += time.perf_counter() - t
        if time.perf_counter() - self.started > self.opts.timeout:
            self.finish("timeout")

    def _insert(self, add: Callable[[Conversation], None]) -> bool:
        """Append a segment unless it would pass max_tokens (then the episode ends there)."""
        conv = self.conv
        marks = (len(conv), len(conv.messages), len(conv.template_messages))
        add(conv)
        if len(conv) + 1 > self.opts.max_tokens:  # no room left for even one reply token
            del conv.token_ids[marks[0]:], conv.logprobs[marks[0]:], conv.loss_mask[marks[0]:]
            del conv.messages[marks[1]:], conv.template_messages[marks[2]:]
            self.finish("max_tokens")
            return False
        return True

    def _state_hash(self) -> str:
        try:
            return self.episode.snapshot_hash()
        except Exception:  # a broken environment has no comparable state
            return ""

    def finish(self, reason: str) -> None:
        if self.done:
            return
        if len(self.hashes) < self.turn + 1:  # the turn in progress was reached: record its state
            self.hashes.append(self._state_hash())
        self.finish_reason = reason
        self.t_total = time.perf_counter() - self.started
        self.close()

    def close(self) -> None:
        if self.episode is not None:
            try:
                self.episode.close()
            finally:
                self.episode = None

    def record(self, backend: Backend, run_seed: int) -> dict:
        gid = group_id(self.task, self.opts.iteration)
        conv = self.conv
        return {
            "rollout_id": self.key,
            "task_id": self.task["id"],
            "group_id": gid,
            "sample_index": self.sample_index,
            "policy_id": backend.policy_id,
            "backend": backend.name,
            "iteration": self.opts.iteration,
            "seed": self.seed,
            "messages": conv.messages,
            "calls": self.calls,
            "token_ids": conv.token_ids,
            "logprobs": conv.logprobs,
            "loss_mask": conv.loss_mask,
            "finish_reason": self.finish_reason,
            "n_user_turns": len(self.task["user_turns"]),
            "n_turns_reached": self.turn + 1,
            "turn_state_hashes": self.hashes,
            "n_calls": len(self.calls),
            "n_model_tokens": sum(conv.loss_mask),
            "timings": {"generate": round(self.t_generate, 4), "env": round(self.t_env, 4), "total": round(self.t_total, 4)},
            "meta": {"run_seed": run_seed, "n_replies": self.n_requests},
        }


def prompt_room_warning(task_id: str, n_prompt: int, n_eot: int, opts: RolloutOptions) -> str | None:
    """Why replies will be cut short because the first prompt leaves less than
    --max-new-tokens of --max-tokens (None when there is room)."""
    room = opts.max_tokens - n_prompt - n_eot
    if room >= opts.max_new_tokens:
        return None
    fix = f"raise --max-tokens to at least {n_prompt + n_eot + opts.max_new_tokens}"
    if room < 1:
        return (f"task {task_id}: its prompt (system prompt, tools, first user turn) is {n_prompt} tokens, --max-tokens "
                f"{opts.max_tokens} leaves no room for a reply: its episodes end max_tokens with no model token; {fix}")
    return (f"task {task_id}: its prompt (system prompt, tools, first user turn) is {n_prompt} tokens, --max-tokens "
            f"{opts.max_tokens} leaves {room} for replies, fewer than --max-new-tokens {opts.max_new_tokens}; {fix}")


def _in_flight(backend: Backend, opts: RolloutOptions, on_warning) -> int:
    """--batch-size, or fewer when the backend says that many episodes would not fit in its
    memory (the hf backend's KV caches; an OOM kill leaves no message), with a warning."""
    bound = backend.max_in_flight(opts.max_tokens)
    if bound is None or bound[0] >= opts.batch_size:
        return opts.batch_size
    n, why = bound
    on_warning(f"{backend.name} backend: {why}; running {n} episodes at a time instead of --batch-size "
               f"{opts.batch_size} (fewer with a lower --batch-size or --max-tokens)")
    return n


def iter_rollouts(tasks: list[dict], backend: Backend, opts: RolloutOptions, seed: int = 0,
                  reporter: Reporter | None = None) -> Iterator[dict]:
    """Run G episodes per task; yield each rollout record as its episode finishes.
    A task whose prompt leaves less than --max-new-tokens of room is warned about once
    (`reporter.warn`)."""
    opts.check()
    on_warning = or_silent(reporter).warn
    warned: set[str] = set()
    fmt = ChatFormat(backend.tokenizer)
    waiting = deque(
        EpisodeRun(task, k, derive_seed(seed, task["id"], opts.iteration, k), opts, fmt)
        for task in tasks for k in range(opts.group_size)
    )
    active: list[EpisodeRun] = []
    in_flight = _in_flight(backend, opts, on_warning)
    try:
        while waiting or active:
            while waiting and len(active) < in_flight:
                run = waiting.popleft()
                active.append(run)
                run.start()
                if run.prompt_warning and run.task["id"] not in warned:
                    warned.add(run.task["id"])
                    on_warning(run.prompt_warning)
            asking: list[tuple[EpisodeRun, Request]] = []
            for run in active:
                req = run.request()
                if req is not None:
                    asking.append((run, req))
            if asking:
                t = time.perf_counter()
                gens = backend.generate([r for _, r in asking], fmt.stop_ids)
                dt = time.perf_counter() - t
                for (run, req), gen in zip(asking, gens, strict=True):
                    check_generation(gen, req, backend)
                    run.t_generate += dt
                    run.advance(gen)
            still = []
            for run in active:
                if run.done:
                    backend.release([run.key])
                    yield run.record(backend, seed)
                else:
                    still.append(run)
            active = still
    finally:
        backend.release([run.key for run in active])
        for run in active:
            run.close()


def check_generation(gen: Generation, req: Request, backend: Backend) -> None:
    """The limits every backend must keep, checked where the reply enters the episode: no
    more tokens than asked for (so --max-new-tokens and --max-tokens hold), one log-prob each."""
    if len(gen.token_ids) > req.max_new_tokens or len(gen.logprobs) != len(gen.token_ids):
        raise BackendError(f"the {backend.name} backend returned {len(gen.token_ids)} tokens and "
                           f"{len(gen.logprobs)} log-probs for a reply of at most {req.max_new_tokens} tokens")


def rollout(tasks: list[dict], backend: Backend, opts: RolloutOptions, seed: int = 0,
            reporter: Reporter | None = None, description: str = "rollout") -> list[dict]:
    """Rollout records of every task's G episodes, in task order then sample order; the
    episodes are counted as they finish (`reporter.track`, under `description`)."""
    reporter = or_silent(reporter)
    done = reporter.track(iter_rollouts(tasks, backend, opts, seed, reporter), description, total=len(tasks) * opts.group_size)
    return in_task_order(list(done), tasks)


def in_task_order(rollouts: list[dict], tasks: list[dict]) -> list[dict]:
    order = {t["id"]: i for i, t in enumerate(tasks)}
    return sorted(rollouts, key=lambda r: (order[r["task_id"]], r["sample_index"]))


def load_backend(policy: str, opts: RolloutOptions) -> Backend:
    """The backend `opts.backend` for checkpoint `policy` (heavy imports only when chosen)."""
    from rodscli.policy.base import Sampling

    sampling = Sampling(opts.temperature, opts.top_p)
    if opts.backend == "hf":
        from rodscli.policy.hf import HFBackend

        return HFBackend(policy, sampling, device=opts.device, chat_template=opts.chat_template)
    if opts.backend == "vllm":
        from rodscli.policy.vllm import VLLMBackend

        return VLLMBackend(policy, sampling, gpu_memory_utilization=opts.gpu_memory_utilization,
                           tensor_parallel_size=opts.tensor_parallel_size, chat_template=opts.chat_template)
    from rodscli.policy.openai import OpenAIBackend
    from rodscli.policy.servers import ServerPool, split_urls

    urls = split_urls(opts.base_url)
    clients = [OpenAIBackend(policy, sampling, base_url=u, model=opts.served_model, concurrency=opts.concurrency,
                             timeout=opts.timeout, chat_template=opts.chat_template) for u in urls]
    return clients[0] if len(urls) == 1 else ServerPool(urls, clients, opts.concurrency)

"""Policy commands: `init-policy`, `rollout`, `reload-servers` and the held-out `eval`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from rodscli import console, records
from rodscli.cli import Globals, app, out_file, out_folder, provenance
from rodscli.config import cli_options
from rodscli.errors import RodsError
from rodscli.policy.tiny import InitPolicyOptions
from rodscli.stages.eval import EvalOptions
from rodscli.stages.rollout import RolloutOptions


@app.command("init-policy")
@cli_options(InitPolicyOptions, skip=("max_positions",))
def init_policy(
    out: str = typer.Option(..., "--out", "-o", callback=out_folder, help="Checkpoint directory to create (a normal Hugging Face checkpoint)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the random weights (default: the global --seed)."),
    from_gguf: str = typer.Option(None, "--from-gguf", help="Instead: import this GGUF file (llama.cpp) as a plain Hugging Face checkpoint (needs the gguf extra)."),
    dtype: str = typer.Option("float32", "--dtype", help="--from-gguf: dtype of the saved weights (float32, bfloat16, float16)."),
    chat_template: str = typer.Option(None, "--chat-template", help="--from-gguf: Jinja chat template file to save instead of the file's own (or when it has none)."),
    opts: InitPolicyOptions = None,
) -> None:
    """Create the embedded tiny policy: a small Llama-style LM, a BPE tokenizer trained on the built-in domains, a Hermes/Qwen chat template.

    With --from-gguf FILE: write FILE's model, tokenizer and chat template as a plain checkpoint
    (de-quantized; ~100 s for SmolLM2-135M on 2 CPU cores), to use with every stage.
    """
    from rodscli.policy.tiny import init_policy as make

    if from_gguf is not None:
        from rodscli.policy.base import read_chat_template
        from rodscli.policy.gguf import import_gguf

        template = read_chat_template(chat_template) if chat_template is not None else None
        info = import_gguf(from_gguf, out, dtype=dtype, chat_template=template)
        console.info(f"wrote {info['out']}: {info['architecture']}, {info['n_params'] / 1e6:.1f}M parameters ({info['dtype']}), "
                     f"vocabulary {info['vocab_size']}, chat template {info['chat_template']} ({info['seconds']:.1f}s)")
        return
    info = make(out, opts, seed=Globals.seed if seed is None else seed)
    console.info(f"wrote {info['out']}: {info['n_params'] / 1e6:.2f}M parameters, vocabulary {info['vocab_size']}, "
                 f"tokenizer trained on {info['n_tasks']} tasks ({info['seconds']:.1f}s)")


@app.command()
@cli_options(RolloutOptions, flags={"group_size": ("--group-size", "-G")})
def rollout(
    policy: str = typer.Option(..., "--policy", help="Checkpoint directory (tokenizer and chat template; the weights too for hf and vllm)."),
    tasks: str = typer.Option(..., "--tasks", help="Tasks (.jsonl, .parquet, or - for JSONL on stdin)."),
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Rollouts (.jsonl, .parquet, or - for JSONL on stdout)."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (default: the global --seed); same seed, same rollouts on hf CPU."),
    opts: RolloutOptions = None,
) -> None:
    """Run G episodes of every task and write token-in-token-out rollouts."""
    from rodscli.stages import rollout as rollout_stage

    seed = Globals.seed if seed is None else seed
    task_list = records.read_all(tasks, "task", Globals.validate)
    engine = rollout_stage.load_backend(policy, opts)
    try:
        rows = rollout_stage.rollout(task_list, engine, opts, seed, reporter=console.BARS)
    finally:
        engine.close()
    records.write_records(out, rows, "rollout", validate=Globals.validate,
                          provenance_info=provenance([tasks, policy, *filter(None, [opts.chat_template])], backend=opts.backend,
                                                     policy_id=engine.policy_id))
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
    console.info(f"wrote {len(rows)} rollouts ({sum(r['n_model_tokens'] for r in rows)} model tokens; "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}) -> {out}")


@app.command("reload-servers")
def reload_servers(
    policy: str = typer.Option(..., "--policy", help="Checkpoint folder the servers should serve (a path they can read)."),
    base_url: list[str] = typer.Option(..., "--base-url", help="The servers' base URLs (repeat, or a comma-separated list), as given to rollout."),
    endpoint: str = typer.Option("/update_weights_from_disk", "--endpoint", help="Reload endpoint under each server's root (SGLang's by default)."),
) -> None:
    """Make every rollout server load a checkpoint from disk (a SERVE_HOOK for the loop; docs/scale-out.md)."""
    from rodscli.policy.servers import reload

    for answer in reload(base_url, str(Path(policy).resolve()), endpoint):
        console.info(f"{answer['url']} serves {policy} ({answer['seconds']:.1f} s)")


@app.command("eval")
@cli_options(EvalOptions, into="cfg")
@cli_options(RolloutOptions, skip=("group_size", "iteration", "system_prompt"), into="ropts")
def eval_(
    policy: str = typer.Option(..., "--policy", help="Policy checkpoint to evaluate (Hugging Face directory, or the model name with --backend openai)."),
    tasks: str = typer.Option(..., "--tasks", help="Held-out tasks (.jsonl or .parquet)."),
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Eval records: one per task, then per skill and overall (.jsonl, .parquet, or - for JSONL on stdout)."),
    episodes: str = typer.Option(None, "--episodes", callback=out_file, help="Also write the scored episodes here (for inspection)."),
    cfg: EvalOptions = None,
    ropts: RolloutOptions = None,
) -> None:
    """Greedy or pass@k episodes on held-out tasks: per-task, per-skill and overall success and progress."""
    from rich.table import Table

    from rodscli.stages import eval as eval_stage
    from rodscli.stages.rollout import load_backend

    if tasks == "-":
        raise RodsError("--tasks cannot be stdin: give a file", field="--tasks")
    greedy, k = cfg.greedy, cfg.k
    task_list = records.read_all(tasks, "task", Globals.validate)
    model = load_backend(policy, replace(ropts, temperature=0.0 if greedy else ropts.temperature))
    rows, scored = eval_stage.evaluate(task_list, model, cfg, ropts, Globals.seed, reporter=console.BARS)
    info = provenance([policy, tasks, *filter(None, [ropts.chat_template])], greedy=greedy, k=k, iteration=cfg.iteration)
    if episodes:
        records.write_records(episodes, scored, "scored", provenance_info=info, validate=Globals.validate)
    records.write_records(out, rows, "eval", provenance_info=info, validate=Globals.validate)
    table = Table(title=f"held-out eval of {policy} ({'greedy' if greedy else f'pass@{k}'})", title_justify="left")
    for header in ("skill", "tasks", "success", "progress", "call turns passed"):
        table.add_column(header, justify="right")
    for r in rows:
        if r["kind"] != "task":
            table.add_row(r["key"], str(r["n_tasks"]), f"{r['success']:.3f}", f"{r['progress']:.3f}", eval_stage.call_turns_text(r))
    if console.VERBOSITY >= 1:
        console.console.print(table)

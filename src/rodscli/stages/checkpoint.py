"""Training checkpoints of `rods train-step`: a plain Hugging Face folder plus the training state.

A checkpoint is what `save_pretrained` writes (fp32 safetensors, config), the input's other
files copied through (tokenizer, chat template, policy metadata), `train_state.json` (step
count, the trained parameters' names and shapes), `metrics.jsonl`, and the AdamW state in
one of two forms:

- `optimizer.pt`: the whole optimizer state dict (`torch.save`), written by an unsharded run;
- `optimizer/`: a `torch.distributed.checkpoint` folder, written by a sharded (FSDP2) run: each
  process writes its own shards, and any number of processes, sharded or not, reads it back
  (the loader reshards).

Either form is read by every run, sharded or not, so the next iteration may run on another
number of processes. A folder is written under a temp name and renamed, so it exists only
when complete. `--chat-template FILE` is written as the folder's `chat_template.jinja` (the
file transformers saves a template in, and reads before tokenizer_config.json's entry).

Training returns an `Update`; its `save(out)` is the one place a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rodscli import records
from rodscli.errors import InputError
from rodscli.reporter import Reporter, or_silent
from rodscli.stages import shard as sharding

OPTIMIZER_FILE = "optimizer.pt"
OPTIMIZER_DIR = "optimizer"
STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.jsonl"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# files save_pretrained writes (or that belong to one training state): everything else in the
# input checkpoint (tokenizer, chat template, policy metadata) is copied through unchanged
_OWN_FILES = {OPTIMIZER_FILE, STATE_FILE, METRICS_FILE, METRICS_FILE + ".meta.json", "config.json", "generation_config.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt", ".pth")


def read_state(policy: str | Path) -> dict:
    path = Path(policy) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"step": 0}


def check_policy(path: str | Path) -> None:
    if not (Path(path) / "config.json").is_file():
        raise InputError("not a Hugging Face checkpoint directory (no config.json)", where=str(path))


def load_model(policy: str | Path, device):
    import torch
    from transformers import AutoModelForCausalLM

    check_policy(policy)
    with _no_hf_bars():
        # fp32 master weights: bf16 weights would round away updates of lr ~1e-6
        model = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
    return model.to(device)


@contextlib.contextmanager
def _no_hf_bars():
    """transformers' own progress bars ("Loading weights", "Writing model shards") off inside the
    block and back on after if they were on: rods reports progress through its reporter only."""
    from transformers.utils import logging

    if not logging.is_progress_bar_enabled():
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def param_signature(model) -> list[list]:
    return [[n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad]


def _copy_through(src: Path, dst: Path) -> None:
    """Copy the checkpoint's other files (tokenizer, chat template, metadata) unchanged."""
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in _OWN_FILES and not f.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(f, dst / f.name)


@contextlib.contextmanager
def _atomic_dir(out: Path):
    """A temp folder beside `out`, moved into place on success (a crashed step leaves no checkpoint)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Update:
    """What one train-step produced, held in the launch's processes until it is saved.

    `metrics` is the metrics record, `state` the new train_state.json. `save(out)` writes the
    checkpoint folder: under a multi-process launch every process calls it (the processes save
    a sharded optimizer state together), the main one writes the folder, then the launch ends.
    An Update that is not saved is let go with `close()`, or by using it in a `with` block.
    """

    policy: Path  # the input checkpoint (its tokenizer and other files are copied through)
    metrics: dict
    state: dict
    is_main_process: bool  # this process writes the folder (and is the one that reports)
    model: Any = None  # what save_pretrained writes (main process); None: no update, the input's weights pass on
    optimizer: Any = None  # AdamW (None with LoRA): saved whole as optimizer.pt, or sharded with `sharded_model`
    sharded_model: Any = None  # the FSDP2 module whose optimizer state every process saves sharded
    launch: Any = None  # accelerate's Accelerator or a shard.ShardedLaunch; None: nothing to end
    chat_template: str | None = None  # --chat-template's text: the output's chat template
    closed: bool = field(default=False, init=False)  # saved or let go: the model is gone

    def save(self, out: str | Path, provenance_info: dict | None = None, validate: bool = True) -> Path:
        """Write the checkpoint folder `out` (metrics.jsonl with `provenance_info`), then end the launch."""
        if self.closed:  # its model is gone: a second save would pass the input's weights on as this update
            raise RuntimeError("this Update was already saved or closed")
        out = Path(out)
        try:
            stage = None
            if self.sharded_model is not None and self.optimizer is not None:
                stage = sharding.save_optimizer(self.launch, self.sharded_model, self.optimizer, out)
            if self.is_main_process:
                write_checkpoint(out, self.policy, self.model, None if stage else self.optimizer, self.state, self.metrics,
                                 provenance_info, validate, sharded_optimizer=stage, chat_template=self.chat_template)
            if self.launch is not None:
                self.launch.wait_for_everyone()
        finally:
            self.close()
        return out

    def close(self) -> None:
        """End the launch this update started (a launcher's process group is the caller's to end)."""
        launch, self.launch, self.closed = self.launch, None, True
        self.model = self.optimizer = self.sharded_model = None
        if launch is not None:
            getattr(launch, "close", lambda: None)()

    def __enter__(self) -> Update:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_checkpoint(out: Path, src: Path, model, optimizer, state: dict, metrics: dict, provenance_info: dict | None,
                     validate: bool, sharded_optimizer: Path | None = None, chat_template: str | None = None) -> None:
    """Weights (fp32 safetensors), tokenizer files, optimizer state, train state and metrics.

    `model` None: no update, the input's weights and optimizer state are passed on byte for
    byte. `sharded_optimizer`: a finished torch.distributed.checkpoint folder, moved in as
    `optimizer/` (instead of saving `optimizer`'s state dict as optimizer.pt). `chat_template`:
    the text to save as the checkpoint's chat template instead of the input's.
    """
    import torch

    with _atomic_dir(out) as tmp:
        _copy_through(src, tmp)
        if model is None:
            for f in sorted(src.iterdir()):
                if f.is_file() and (f.name.endswith(_WEIGHT_SUFFIXES) or f.name in ("config.json", "generation_config.json", OPTIMIZER_FILE)):
                    shutil.copy2(f, tmp / f.name)
            if (src / OPTIMIZER_DIR).is_dir():
                shutil.copytree(src / OPTIMIZER_DIR, tmp / OPTIMIZER_DIR)
        else:
            with _no_hf_bars():
                model.save_pretrained(tmp, safe_serialization=True)
            if sharded_optimizer is not None:
                os.replace(sharded_optimizer, tmp / OPTIMIZER_DIR)
            elif optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if chat_template is not None:
            _set_chat_template(tmp, chat_template)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        records.write_records(tmp / METRICS_FILE, [metrics], "metrics", provenance_info=provenance_info, validate=validate)


def _set_chat_template(folder: Path, template: str) -> None:
    """Make `template` the checkpoint's chat template the way transformers saves one: the
    chat_template.jinja file, and no older entry left in tokenizer_config.json to contradict it."""
    (folder / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        entries = json.loads(config.read_text(encoding="utf-8"))
        if entries.pop("chat_template", None) is not None:
            config.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def restore_optimizer(optimizer, model, policy: Path, state: dict, signature: list | None, options: dict,
                      reporter: Reporter | None = None) -> bool:
    """Load the AdamW moments saved with the input checkpoint when they belong to these parameters.

    `model` is the causal LM the optimizer trains (sharded or not), `signature` its trained
    parameters' names and shapes before any wrapping (None: LoRA, never restored), `options`
    this step's lr/betas/weight_decay, which win over the saved ones. Reads either form (see
    the module doc); with several processes every one of them calls this. Why it does not
    restore goes to `reporter.warn`.
    """
    import torch

    folder, file = policy / OPTIMIZER_DIR, policy / OPTIMIZER_FILE
    if signature is None or not (folder.is_dir() or file.exists()):
        return False
    if state.get("params") != signature:
        or_silent(reporter).warn(f"not restoring the optimizer state of {policy}: it belongs to other parameters")
        return False
    if folder.is_dir() or _is_sharded(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        if folder.is_dir():  # keyed by parameter name; the loader reshards to this layout
            osd = get_optimizer_state_dict(model, optimizer)
            dcp.load({"optimizer": osd}, checkpoint_id=str(folder))
            set_optimizer_state_dict(model, optimizer, osd)
        else:  # optimizer.pt (by parameter index) into a sharded model: name it, then shard it
            full = torch.load(file, map_location="cpu", weights_only=True)
            names = [n for n, _ in signature]
            full = {"state": {names[i]: v for i, v in full["state"].items()},
                    "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in full["param_groups"]]}
            set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    for group in optimizer.param_groups:
        group.update(options)
    return True


def _is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())

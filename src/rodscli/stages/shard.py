"""The processes of a `rods train-step` launch: data-parallel (DDP) or sharded (PyTorch FSDP2).

`--shard none` is DDP through accelerate: every process holds the whole model, gradients are
averaged after the last micro-batch. `--shard full` wraps each decoder layer and the root in
`torch.distributed.fsdp.fully_shard` (FSDP2): every process keeps 1/N of every weight,
gradient and AdamW moment, and all-gathers a layer's weights just before it runs.
`--shard hybrid` shards within a node and replicates across nodes (HSDP: a 2-D mesh,
replicas x LOCAL_WORLD_SIZE), so the all-gathers stay on a node's fast links.

Any launcher that sets the usual environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT: torchrun, `accelerate launch --multi_gpu`) works; a sharded run started without
one is a one-process group, so the same command runs on one CPU. gloo on CPU, NCCL on CUDA
(with gloo beside it for CPU tensors).

Both kinds answer the same questions (`num_processes`, `process_index`, `device`,
`is_main_process`, `prepare_model`, `no_sync`, `reduce`, `wait_for_everyone`), so the training
loop is written once. What differs: a sharded model's every forward and backward is a
collective, so every process runs the same number of micro-batches (`lockstep`); it
reduce-scatters every micro-batch's gradient (its shards accumulate, no `no_sync`); and its
checkpoint is gathered to rank 0 while its optimizer state is saved sharded (`gather_weights`,
`save_optimizer`: collectives, which every process calls).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from rodscli.errors import OptionError

SHARD_MODES = ("none", "full", "hybrid")


def launch(shard: str, bf16: bool = True):
    """The launch this process belongs to: accelerate's Accelerator (DDP) or a ShardedLaunch."""
    from accelerate.utils import parse_flag_from_env

    # accelerate's own FSDP plugin refuses a CPU and builds its optimizer its own way: rods
    # shards with PyTorch's FSDP2 itself (--shard full) under a plain multi-process launch
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP (--use_fsdp)"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed (--use_deepspeed)")):
        if parse_flag_from_env(flag):
            raise OptionError(f"train-step does not take accelerate's {name}: launch with --multi_gpu (or torchrun) "
                              "and pass --shard full to shard with PyTorch FSDP2")
    if shard not in SHARD_MODES:
        raise OptionError(f"--shard must be one of {', '.join(SHARD_MODES)}, got {shard!r}")
    if shard == "none":
        import torch
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return ShardedLaunch(shard, bf16)


class ShardedLaunch:
    """FSDP2 over the launch's processes (or a one-process group of its own)."""

    lockstep = True

    def __init__(self, shard: str, bf16: bool = True):
        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        cuda = torch.cuda.is_available()
        self.own_group = not dist.is_initialized()
        self._store_dir = None
        if self.own_group:
            backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
            if "WORLD_SIZE" in os.environ:  # torchrun / accelerate launch: env:// rendezvous
                dist.init_process_group(backend)
            else:  # started alone: a one-process group through a file store
                self._store_dir = tempfile.mkdtemp(prefix="rods-pg.")
                dist.init_process_group(backend, init_method=f"file://{self._store_dir}/store", rank=0, world_size=1)
        self.num_processes, self.process_index = dist.get_world_size(), dist.get_rank()
        self.is_main_process = self.process_index == 0
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.shard, self.bf16 = shard, bf16 and cuda
        kind = self.device.type
        if shard == "hybrid":
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.num_processes))
            if self.num_processes % per_node:
                raise OptionError(f"--shard hybrid needs the same number of processes on every node ({self.num_processes} processes, {per_node} on this node)")
            self.mesh = init_device_mesh(kind, (self.num_processes // per_node, per_node), mesh_dim_names=("replicate", "shard"))
        else:
            self.mesh = init_device_mesh(kind, (self.num_processes,))

    def prepare_model(self, module, reshard_after_forward: bool = True):
        """Shard each decoder layer, then the root (`module`: what the loop calls, grpo.TokenLogprobs)."""
        import torch
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw = {"mesh": self.mesh, "reshard_after_forward": reshard_after_forward}
        if self.bf16:  # bf16 compute and all-gathers, fp32 gradient reduction and master weights
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in decoder_layers(module):
            fully_shard(layer, **kw)
        fully_shard(module, **kw)
        return module

    def no_sync(self, module):
        return contextlib.nullcontext()  # FSDP reduce-scatters each micro-batch: the shards accumulate

    def reduce(self, tensor, reduction: str = "sum"):
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor if reduction == "sum" else tensor / self.num_processes

    def unwrap_model(self, module):
        return module

    def wait_for_everyone(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        """Leave the one-process group this launch started itself (a launcher's group is the CLI's to end)."""
        import torch.distributed as dist

        if self.own_group and dist.is_initialized():
            dist.destroy_process_group()
        if self._store_dir:
            shutil.rmtree(self._store_dir, ignore_errors=True)


@contextlib.contextmanager
def view_outputs_allowed():
    """FSDP2 warns, at every forward, that a wrapped module returned a view: TokenLogprobs does
    (gather().squeeze()) and the loss uses it out of place only. Silenced inside the block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        yield


def decoder_layers(module) -> list:
    """The transformer blocks: modules whose class Hugging Face lists in `_no_split_modules`."""
    names: set[str] = set()
    for m in module.modules():
        names |= set(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in module.modules() if type(m).__name__ in names]
    if not layers:
        raise OptionError(f"cannot shard {type(module).__name__}: the model names no decoder layer class (_no_split_modules)")
    return layers


def lockstep(batches: list, filler, accelerator) -> list:
    """This process's micro-batches, padded with zero-weight `filler` batches so that every
    process runs as many as the busiest one (FSDP's forward and backward are collectives;
    DDP syncs once per step, so one filler is enough where a process has nothing)."""
    if not getattr(accelerator, "lockstep", False):
        return batches or [filler]
    import torch
    import torch.distributed as dist

    count = torch.tensor([len(batches)], dtype=torch.long, device=accelerator.device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return batches + [filler] * (int(count.item()) - len(batches))


def local_bytes(model, optimizer, accelerator) -> dict:
    """Bytes of parameters and optimizer state one process holds, counted from the tensors it
    stores (a DTensor's local shard only); sharded: the largest over the processes."""
    import torch
    from torch.distributed.tensor import DTensor

    def size(t) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    counts = torch.tensor([sum(size(p) for p in model.parameters()),
                           sum(size(v) for s in optimizer.state.values() for v in s.values())], dtype=torch.long)
    if getattr(accelerator, "lockstep", False):
        import torch.distributed as dist

        counts = counts.to(accelerator.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return {"params": int(counts[0]), "optimizer": int(counts[1])}


def is_main_process() -> bool:
    """Rank 0 of the launch (RANK as a launcher sets it), or a process started alone."""
    import torch.distributed as dist

    return dist.get_rank() == 0 if dist.is_initialized() else int(os.environ.get("RANK", "0")) == 0


def gather_weights(launch, model) -> dict | None:
    """Collective: the full (unsharded) weights on rank 0, on the CPU; None on the other processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return full if launch.is_main_process else None


def save_optimizer(launch, model, optimizer, out: Path) -> Path:
    """Collective: the optimizer state saved sharded (torch.distributed.checkpoint), each process
    writing its own shards into one staging folder beside `out`; returns the folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    stage = out.parent / f".{out.name}.optimizer.tmp"  # the same name on every process: one folder
    if launch.is_main_process:
        shutil.rmtree(stage, ignore_errors=True)
        stage.parent.mkdir(parents=True, exist_ok=True)
    launch.wait_for_everyone()
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(stage))
    launch.wait_for_everyone()
    return stage

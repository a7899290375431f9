"""Where a run trains: one process, or one per GPU under `torchrun` (DDP), which of them speaks,
and the model as each process runs it (DDP, torch.compile).

torchrun starts one process per GPU and tells each its RANK (among all processes) and LOCAL_RANK
(its GPU on this machine). Each process binds its GPU before joining the process group, so NCCL
never guesses the device. Every rank reads the same files and builds the same model, so a line
that every rank would print is printed by rank 0 alone: one start-up line per run, not per rank.
"""

import atexit
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def is_main_process() -> bool:
    """Rank 0, or a run without torchrun; read from torchrun's RANK before the process group
    exists."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def setup_distributed(device_choice: str = "auto"):
    """-> (rank, world_size, device). Starts the process group when launched by torchrun: on CUDA
    after binding this rank's GPU (set_device, then init_process_group(device_id=...)), so that
    NCCL's communicator and every barrier use that GPU, never GPU 0 by default."""
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    # More ranks than GPUs (`make gpu-check` runs two on one GPU): they share the GPUs round robin
    # and join over gloo, which reduces CUDA tensors through the host; NCCL refuses two ranks on
    # one GPU.
    shared = use_cuda and ranks_here > 1 and ranks_here > torch.cuda.device_count()
    gpu = local_rank % torch.cuda.device_count() if shared else local_rank
    if use_cuda:
        torch.cuda.set_device(gpu)
    device = torch.device("cuda", gpu) if use_cuda else torch.device("cpu")
    if "RANK" in os.environ and not dist.is_initialized():
        nccl = use_cuda and not shared
        dist.init_process_group("nccl" if nccl else "gloo", device_id=device if nccl else None)
        # gloo threads may abort a bare exit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world_size, device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@dataclass
class Process:
    """Where this process trains and how: its rank among world_size, its device, bf16 or not."""

    rank: int
    world_size: int
    device: torch.device
    bf16: bool

    def autocast(self):
        return (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        )


def wrap_for_training(model: nn.Module, process: Process, compile_model: bool) -> nn.Module:
    """DDP over several processes, then torch.compile; checkpoints keep the unwrapped model."""
    if process.world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[process.device.index] if process.device.type == "cuda" else None
        )
    if compile_model:
        # torch 2.13's warm on-disk AOTAutograd cache returns a broken stage-1 graph ("invalid
        # shape dimension", pytorch/pytorch#185630): recompiling each run costs seconds, not a
        # crash.
        torch._functorch.config.enable_autograd_cache = False
        model = compile_for_training(model)
    return model


def compile_for_training(model: nn.Module) -> nn.Module:
    """torch.compile with every size symbolic from the first graph on (dynamic=True): text
    lengths, frame counts, batch sizes and target counts vary from batch to batch, and each kind
    of batch (images or videos, training or validation) is then one graph, not one per shape
    (tests/test_compile.py). Sizes 0 and 1 are still specialised: a batch whose longest video has
    one frame is a kind of its own."""
    return torch.compile(model, dynamic=True)

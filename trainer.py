"""The one training loop every stage uses (stage 0 pretraining, stage 1, stage 2).

It trains whatever parameters of the model require gradients (the stage scripts decide what is
frozen), on one CPU, one GPU or several processes under `torchrun` (DDP; gloo on CPU, NCCL on
CUDA). Next-token losses are summed over text tokens and divided by the number of text tokens in
the whole global batch (all micro-steps, all ranks), so one process and N processes with the same
global batch follow the same curve. Checkpoints (support/checkpoints.py) hold everything a resumed
run needs to continue the same curve: model, optimizer, scheduler, step and RNG state; the data
position follows from the step.
"""

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from support.batches import move_to, step_loader, workers_by_default
from support.checkpoints import CHECKPOINT_NAME, training_state
from support.model_spec import ModelSpec
from support.models import bf16_by_default
from support.processes import Process, all_reduce_sum, setup_distributed, wrap_for_training
from support.run_folder import (
    METRICS_NAME,
    append_metrics,
    keep_metrics_up_to,
    prepare_run_folder,
    resume_newest_readable,
    save_keeping,
)
from vit import num_parameters


@dataclass
class TrainConfig:
    out_dir: str = "runs/out"
    steps: int = 1000
    batch_size: int = 32  # global: samples per optimizer step, over all micro-steps and ranks
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8  # validation loss over this many fixed global batches of the val set
    log_every: int = 10
    save_every: int = 200
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool | None = None  # None: where it pays for itself within the run (compile_pays)
    # bf16 autocast; None: on for CUDA and for CPUs with native bf16 matmuls (bf16_by_default)
    bf16: bool | None = None
    # DataLoader worker processes per rank; None: 0 on the CPU, min(4, its CPUs) on CUDA (workers)
    num_workers: int | None = None
    resume: bool = False
    # delete an earlier run in out_dir and start afresh (a resumed run keeps it)
    overwrite: bool = False
    # the newest checkpoint and the ones before it, to resume from when it is broken
    keep_checkpoints: int = 2
    # checkpoints hold the frozen models too (to share), not a reference to their files
    self_contained: bool = False

    def uses_bf16(self, device: str | None = None) -> bool:
        """bf16 autocast on `device` (default: the configured one): --bf16, else its default."""
        return bf16_by_default(device or self.device) if self.bf16 is None else self.bf16

    def workers(self, device: str | None = None) -> int:
        """DataLoader worker processes per rank on `device` (default: the configured one):
        --num-workers, else its default (support.batches.workers_by_default)."""
        if self.num_workers is None:
            return workers_by_default(device or self.device)
        return self.num_workers


# ---------------------------------------------------------------------------------------------
# Optimization
# ---------------------------------------------------------------------------------------------


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(progress, 1.0))
    )


def decayed_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The weights of the linear layers (and the ViT's patch projection, a linear layer on patches):
    what weight decay applies to. Never norms, biases, embeddings, resampler latents, time
    embeddings."""
    return {m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def build_optimizer(model: nn.Module, config: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; weight decay on the linear layers' weights only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    decayed = decayed_parameters(model)
    groups = [
        {"params": [p for p in trainable if p in decayed], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


# On CPU torch.compile saved 6-16% of a ~200 ms toy step and cost 11-30 s of compilation
# (docs/benchmarks.md):
# ~20 ms x steps > 30 s from about 1,500 steps. On CUDA the runs are long and the gain is larger.
CPU_COMPILE_MIN_STEPS = 2000


def compile_pays(steps: int, use_cuda: bool) -> bool:
    """The default for --compile: on CUDA, or on CPU for runs long enough to earn the compilation
    back."""
    return use_cuda or steps >= CPU_COMPILE_MIN_STEPS


def forward_backward(
    model: nn.Module, loss_fn: Callable, batches: list[dict], process: Process
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate the gradients of one global batch -> (its mean token loss, its number of text
    tokens), both 0-dim tensors on the device: reading them waits for the device, which the loop
    does once per log interval (train).

    The loss, in one place. The decoder returns the SUM of the next-token cross-entropies over the
    target tokens of a micro-batch (palm_decoder.PaLMDecoder.forward, reduction="sum"; the targets
    are the loss_mask tokens: caption text, or the answer of a VQA sample; vlm.caption_loss passes
    it on). Here each sum is divided by the number of target tokens in the WHOLE global batch
    (every micro-step, every rank), so the gradient is that of the mean token loss over the global
    batch, whatever way it is split: shards holding different numbers of tokens, or 1 vs N
    processes, give the same step."""
    local_tokens = sum(batch["loss_mask"].sum() for batch in batches)
    global_tokens = all_reduce_sum(
        torch.as_tensor(local_tokens, device=process.device, dtype=torch.float)
    )
    step_loss = torch.zeros((), device=process.device)
    for micro, batch in enumerate(batches):
        last = micro == len(batches) - 1
        sync = nullcontext() if last or process.world_size == 1 else model.no_sync()
        with sync, process.autocast():
            loss_sum, _ = loss_fn(model, batch)
            # DDP averages gradients over ranks: scale back up by world_size.
            (loss_sum * process.world_size / global_tokens).backward()
        step_loss += loss_sum.detach().float()
    return all_reduce_sum(step_loss) / global_tokens, global_tokens


class NonFiniteWatch:
    """The first step whose loss or gradient norm was NaN or infinite, and both values at that
    step, kept on the device: updating it never waits for the device, so the loop learns of a
    non-finite step at its next host sync (train), not at the step itself."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)  # -1: none yet
        self.values = torch.zeros(2, dtype=torch.float64, device=device)  # (loss, grad norm)

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor):
        values = torch.stack([loss.double(), grad_norm.double()])  # (2,)
        first = torch.isfinite(values).all().logical_not() & (self.first_step < 0)
        self.first_step = torch.where(first, step, self.first_step)
        self.values = torch.where(first, values, self.values)

    def read(self, *step_values: torch.Tensor) -> list[float]:
        """One host sync: the 0-dim `step_values`, then the first non-finite step (or -1) and its
        loss and gradient norm."""
        step_values = torch.stack([value.double() for value in step_values])
        return torch.cat([step_values, self.first_step.double().reshape(1), self.values]).tolist()


def non_finite_cause(loss: float, grad_norm: float) -> str:
    if not math.isfinite(loss):
        return f"loss is {loss}"
    return f"gradient norm is {grad_norm} (loss {loss:.4f})"  # a finite loss, a gradient that isn't


VALIDATION_SEED = 1  # the validation batches' order, the same for every run


def validation_loader(
    val_set, collate: Callable, config: TrainConfig, process: Process
) -> torch.utils.data.DataLoader:
    """This rank's share of the eval_batches global batches of the validation set: built once per
    run and read at every evaluation, since the batches never change. Their order does not depend
    on the run's seed, so runs of different seeds (and the rows `make paper` pairs) are measured on
    the same samples."""
    return step_loader(val_set, collate, config, process, 0, config.eval_batches, VALIDATION_SEED)


@torch.no_grad()
def validation_loss(
    model: nn.Module, loss_fn: Callable, batches: torch.utils.data.DataLoader, process: Process
) -> float:
    """Mean token loss over the validation batches (validation_loader), over all ranks."""
    model.eval()
    total = torch.zeros(2, device=process.device)  # (loss sum, tokens)
    for batch in batches:
        with process.autocast():
            loss_sum, count = loss_fn(model, move_to(batch, process.device))
        total += torch.stack(
            [loss_sum.float(), torch.as_tensor(count, device=process.device, dtype=torch.float)]
        )
    model.train()
    total = all_reduce_sum(total)
    return (total[0] / total[1]).item()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    loss_fn: Callable,
    train_set,
    val_set,
    collate: Callable,
    config: TrainConfig,
    stage: str,
    spec: ModelSpec,
    frozen: dict | None = None,
) -> dict:
    """Train `model`'s trainable parameters; `loss_fn(model, batch) -> (loss_sum,
    num_target_tokens)`. train_set / val_set: a dataset or a list of groups (see StepBatches).

    `stage` and `spec` (from which the model can be rebuilt) go into every checkpoint, and `frozen`
    ({"vision" / "lm": checkpoints.frozen_reference}): the frozen models it references, not copies.
    The loss, gradient norm and token count stay on the device between log steps: the host waits
    for the device once per log, evaluation or save step, never at the other steps.
    Returns a summary: last train loss, validation losses, wall time."""
    if config.keep_checkpoints < 1:
        raise ValueError(f"--keep-checkpoints {config.keep_checkpoints}: expected 1 or more")
    rank, world_size, device = setup_distributed(config.device)
    is_main = rank == 0
    prepare_run_folder(config.out_dir, config.resume, config.overwrite, is_main)
    torch.manual_seed(config.seed)
    model.to(device)
    use_cuda = device.type == "cuda"
    process = Process(rank, world_size, device, config.uses_bf16(device.type))
    optimizer = build_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config)
    )
    checkpoint_path = os.path.join(config.out_dir, CHECKPOINT_NAME)
    metrics_path = os.path.join(config.out_dir, METRICS_NAME)

    start_step, newest_step = 0, None  # newest_step: the step checkpoint.pt holds
    if config.resume:
        start_step, newest_step = resume_newest_readable(
            config.out_dir,
            stage,
            spec,
            asdict(config),
            model,
            optimizer,
            scheduler,
            is_main,
            frozen,
        )
    if is_main:
        os.makedirs(config.out_dir, exist_ok=True)
        keep_metrics_up_to(metrics_path, start_step)
        print(
            f"[{stage}] trainable parameters: {num_parameters(model, trainable_only=True):,} of "
            f"{num_parameters(model):,}"
        )

    raw_model = model  # what checkpoints hold: unwrapped, uncompiled
    model = wrap_for_training(
        model,
        process,
        compile_pays(config.steps, use_cuda) if config.compile is None else config.compile,
    )
    summary = {"stage": stage, "val_loss": {}, "train_loss": None}
    model.train()
    micro_batches = iter(
        step_loader(train_set, collate, config, process, start_step, config.steps, seed=config.seed)
    )
    validation_batches = validation_loader(val_set, collate, config, process)
    progress = tqdm(
        range(start_step, config.steps), disable=not is_main, desc=stage, dynamic_ncols=True
    )
    started = time.time()
    watch = NonFiniteWatch(device)
    stop = partial(
        stop_on_non_finite,
        stage=stage,
        checkpoint_path=checkpoint_path,
        metrics_path=metrics_path,
        is_main=is_main,
    )
    for step in progress:
        batches = [move_to(next(micro_batches), device) for _ in range(config.grad_accum)]
        train_loss, global_tokens = forward_backward(model, loss_fn, batches, process)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
        # A non-finite step is not stopped here, which would wait for the device at every step:
        # its update spoils the weights, and the run stops at the next sync, before any save.
        watch.update(step, train_loss, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        done = step + 1
        log = done % config.log_every == 0 or done == start_step + 1
        evaluate = done % config.eval_every == 0 or done == config.steps
        save = done % config.save_every == 0 or done == config.steps
        if not (log or evaluate or save):
            continue  # the device runs ahead: the host waits for it once per log interval
        # the one host sync of the interval: this step's metrics and the watch
        read = watch.read(train_loss, grad_norm, global_tokens)
        loss, norm, tokens, first_bad_step, bad_loss, bad_norm = read
        if first_bad_step >= 0:
            stop(non_finite_cause(bad_loss, bad_norm), int(first_bad_step))
        summary["train_loss"] = loss
        record = {
            "step": done,
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": norm,
            "tokens": int(tokens),
            "elapsed_s": round(time.time() - started, 3),
        }
        if evaluate:
            record["val_loss"] = summary["val_loss"][done] = validation_loss(
                model, loss_fn, validation_batches, process
            )
        if is_main and (log or evaluate):
            append_metrics(metrics_path, record)
            progress.set_postfix(
                loss=f"{loss:.4f}",
                **({"val": f"{record['val_loss']:.4f}"} if evaluate else {}),
            )
        if save:
            # every rank holds the same weights; one sync for all of them
            finite = torch.stack([torch.isfinite(p).all() for p in raw_model.parameters()]).all()
            if not finite.item():
                stop("weights are not finite (not saved)", done)
            if is_main:
                newest_step = save_keeping(
                    config.out_dir,
                    training_state(
                        stage, spec, raw_model, optimizer, scheduler, done, asdict(config), frozen
                    ),
                    config.keep_checkpoints,
                    newest_step,
                )
            if dist.is_initialized():
                dist.barrier()
    summary["wall_s"] = time.time() - started
    return summary


def stop_on_non_finite(
    what: str, step: int, stage: str, checkpoint_path: str, metrics_path: str, is_main: bool
):
    """A NaN or infinite loss or gradient ends the run, logged under the step where it first
    happened. The loop reads it at its first host sync after that step (the next log, evaluation
    or save step: train), and always before saving, so the weights its updates spoiled, or any
    non-finite weights, are never saved."""
    if is_main:
        append_metrics(metrics_path, {"step": step, "error": what})
    if os.path.exists(checkpoint_path):
        advice = (
            f"The last good checkpoint is {checkpoint_path} (resume with --resume true after "
            "lowering --lr)"
        )
    else:
        advice = "No checkpoint was saved before it: start the run again with a lower --lr"
    raise FloatingPointError(f"[{stage}] {what} at step {step}; stopping. {advice}")

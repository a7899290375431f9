"""One training step of a stage's model as the stage scripts run it (kernel-work box): the model
on its device with optimizer, autocast and a batch (StepSetup.step: zero_grad, loss, backward,
clip, AdamW), the stage's loss, the tokens a step trains on, and the check after a step that
Figure 2's frozen boxes got no .grad while the trained parts did. Timed by bench/step.py and
bench/frozen_paths.py.
"""

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from bench.measure import time_calls
from bench.tools import DTYPES, Preset, build_stage_model, synthetic_batch, to_device
from stage0.scenes import scene_loss
from support.model_spec import ModelSpec
from support.processes import compile_for_training
from trainer import TrainConfig, build_optimizer
from vlm import VisionLanguageModel, caption_loss

STAGE_WHAT = {
    0: "stage 0: the ViT pretrained on scene labels, all of it trained",
    1: "stage 1: frozen ViT -> 1-layer resampler -> tiny LM, resampler and tiny LM trained",
    2: "stage 2: frozen ViT -> {adapter} adapter -> frozen large LM, adapter trained",
}


class GradientCheckError(AssertionError):
    pass


def check_gradients(model: torch.nn.Module) -> dict:
    """After a step: every frozen parameter (the ViT, the stage-2 LM, the VAdapter's unused
    embedding) has no .grad, every trained one has a finite one, and the adapter's (stage 0: the
    ViT's) is non-zero."""
    named = list(model.named_parameters())
    vlm = isinstance(model, VisionLanguageModel)
    frozen_with_grad = [name for name, p in named if not p.requires_grad and p.grad is not None]
    trained_without_grad = [
        name
        for name, p in named
        if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())
    ]
    trained_lm = [name for name, p in model.lm.named_parameters() if p.requires_grad] if vlm else []
    adapter_grads = [
        p.grad.float().norm()
        for p in (model.adapter if vlm else model).parameters()
        if p.grad is not None
    ]
    adapter_grad_norm = torch.stack(adapter_grads).norm().item() if adapter_grads else 0.0
    problems = []
    if frozen_with_grad:
        problems.append(
            "frozen parameters with a .grad: "
            f"{frozen_with_grad[:5]}{' ...' if len(frozen_with_grad) > 5 else ''}"
        )
    if trained_without_grad:
        problems.append(f"trained parameters without a finite .grad: {trained_without_grad[:5]}")
    if vlm and not model.train_lm and trained_lm:
        problems.append(f"the frozen LM has trainable parameters: {trained_lm[:5]}")
    if not adapter_grad_norm > 0:
        problems.append("no gradient reached the adapter")
    if problems:
        raise GradientCheckError("; ".join(problems))
    return {
        "frozen_tensors": sum(not p.requires_grad for _, p in named),
        "frozen_with_grad": 0,
        "trained_tensors_with_grad": sum(p.requires_grad for _, p in named),
        "lm_tensors_with_grad": sum(p.grad is not None for p in model.lm.parameters())
        if vlm
        else 0,
        "adapter_grad_norm": adapter_grad_norm,
    }


@dataclass
class StepSetup:
    """One model ready to train: the module steps run through (compiled or not), its optimizer, a
    batch."""

    model: VisionLanguageModel
    runner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trained: list
    batch: dict
    autocast: Callable
    device: torch.device

    def step(self, loss_fn: Callable) -> torch.Tensor:
        """What trainer.train does per optimizer step (one micro-step): zero, loss, backward, clip,
        AdamW -> the mean token loss, detached (on the device: reading it is the caller's sync)."""
        # the whole model: the naive path leaves grads on the ViT
        self.model.zero_grad(set_to_none=True)
        with self.autocast():
            loss_sum, target_tokens = loss_fn(self.runner, self.batch)
            loss = loss_sum / target_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.optimizer.step()
        return loss.detach()

    def timed_step(self, loss_fn: Callable) -> float:
        """Milliseconds for one step, the device synchronized on both sides."""
        return time_calls(lambda: self.step(loss_fn), 1, self.device)


def setup_step(spec: ModelSpec, preset: Preset, device: torch.device, compiled: bool) -> StepSetup:
    torch.manual_seed(0)
    model = build_stage_model(spec).to(device)
    model.train()
    if DTYPES[preset.dtype] == torch.bfloat16 and isinstance(model, VisionLanguageModel):
        # the frozen models' weights in bf16, as the stage scripts load them under bf16 autocast
        frozen = [model.vision] * (not model.train_vision) + [model.lm] * (not model.train_lm)
        for part in frozen:
            part.to(torch.bfloat16)
    optimizer = build_optimizer(model, TrainConfig(), device)
    bf16 = DTYPES[preset.dtype] == torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    batch = to_device(synthetic_batch(preset, spec), device)
    return StepSetup(
        model,
        compile_for_training(model) if compiled else model,  # as the trainer compiles
        optimizer,
        [p for p in model.parameters() if p.requires_grad],
        batch,
        autocast,
        device,
    )


def stage_loss(spec: ModelSpec) -> Callable:
    """The loss the stage's script trains with: scene labels (stage 0), captions (the frozen ViT
    under no_grad, no cache)."""
    return (
        scene_loss
        if spec.adapter == "scene-labels"
        else (lambda model, batch: caption_loss(model, batch))
    )


def batch_tokens(batch: dict, num_latents: int) -> dict:
    """Target tokens (the loss's) and LM positions ([visual tokens; text], padding included) per
    step."""
    B, text_width = batch["input_ids"].shape
    return {"target": int(batch["loss_mask"].sum()), "sequence": B * (num_latents + text_width)}

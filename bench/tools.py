"""What the benchmarks of the kernel-work box run: the model sizes (presets: a laptop CPU's toy
models, the paper-size models on CUDA, a quick one for tests), what a training step runs (each
stage's model, a batch, its model FLOPs) and the flags the attention and step benchmarks share.
How they measure: bench/measure.py. It imports no benchmark, so the imports run one way.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import attention as attn
import data
from palm_decoder import PALM_CONFIGS, PaLMConfig
from resampler import ResamplerConfig
from stage0 import scenes
from support.model_spec import ModelSpec, build_vlm
from support.models import bf16_by_default
from vit import VIT_CONFIGS, ViT, ViTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Presets: the model sizes the benchmarks run at
# ---------------------------------------------------------------------------------------------


@dataclass
class Preset:
    """The model configs whose attention shapes are benchmarked, and the data sizes they see."""

    vit: ViTConfig
    resampler: ResamplerConfig  # the VAdapter's 1-layer resampler, latents at the tiny LM's width
    lm: PaLMConfig  # the decoder that reads [visual tokens; text]
    batch: int
    text_len: int  # caption / question + answer tokens after the visual tokens
    frames: int  # video frames, each frame's patches enter the resampler together
    # what training runs in on that device: bf16 autocast on CUDA; on CPU the trainer's default
    # (device_and_preset)
    dtype: str
    tiny_lm: PaLMConfig  # step: the stage-1 decoder, then the VAdapter's tiny LM
    perceiver: ResamplerConfig  # step: the stage-2 baseline adapter


def make_preset(
    vit: ViTConfig, tiny_lm: PaLMConfig, lm: PaLMConfig, num_latents: int, **sizes
) -> Preset:
    """The adapters as the stage scripts build them by default (resampler.ResamplerConfig.for_lm /
    .for_perceiver), with `num_latents` visual tokens."""
    return Preset(
        vit,
        ResamplerConfig.for_lm(vit.dim, tiny_lm.dim, tiny_lm.num_heads, num_latents=num_latents),
        lm,
        tiny_lm=tiny_lm,
        perceiver=ResamplerConfig.for_perceiver(vit.dim, num_latents=num_latents),
        **sizes,
    )


# 16 patches
QUICK_VIT = ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, mlp_dim=64)
PRESETS = {
    # `make demo` on a laptop: toy ViT (64 patches), toy-tiny adapter LM (16 latents), toy-large LM,
    # batch 32, 8-frame videos.
    "cpu": make_preset(
        VIT_CONFIGS["toy"],
        PALM_CONFIGS["toy-tiny"],
        PALM_CONFIGS["toy-large"],
        16,
        batch=32,
        text_len=32,
        frames=8,
        dtype="float32",
    ),
    # Paper-size: ViT-B/16 (196 patches), tiny-108m adapter (64 latents), 1B LM.
    "cuda": make_preset(
        VIT_CONFIGS["B/16"],
        PALM_CONFIGS["tiny-108m"],
        PALM_CONFIGS["1b"],
        64,
        batch=32,
        text_len=64,
        frames=8,
        dtype="bfloat16",
    ),
    # For tests: the smallest shapes every backend runs (Dh 16 is flex's smallest).
    "quick": make_preset(
        QUICK_VIT,
        PaLMConfig(vocab_size=64, dim=32, depth=1, num_heads=2, max_seq_len=48),
        PaLMConfig(vocab_size=64, dim=32, depth=1, num_heads=2, max_seq_len=48),
        4,
        batch=2,
        text_len=8,
        frames=2,
        dtype="float32",
    ),
}


# ---------------------------------------------------------------------------------------------
# What a training step runs: each stage's model and loss, a batch, the model FLOPs
# ---------------------------------------------------------------------------------------------

# The synthetic world's scene labels (as stage0/synthetic.py writes them; a script, which benchmarks
# may
# not import): stage 0's heads read 6 shapes, 6 colours and 2 sizes per cell of a 2 x 3 grid.
SCENE_VOCABULARY = {
    "shape": ["circle", "square", "triangle", "diamond", "star", "cross"],
    "colour": ["red", "green", "blue", "yellow", "purple", "orange"],
    "size": ["small", "large"],
    "rows": ["top", "bottom"],
    "columns": ["left", "middle", "right"],
}
STAGES = {  # name -> (stage, adapter)
    "0": (0, "scene-labels"),
    "1": (1, "resampler"),
    "2-vadapter": (2, "vadapter"),
    "2-perceiver": (2, "perceiver"),
}


def with_backend(spec: ModelSpec, backend: str) -> ModelSpec:
    """The same model with every attention call on `backend`."""
    parts = ("vision", "resampler", "lm", "tiny_lm")
    return replace(
        spec,
        **{
            part: replace(config, attention_backend=backend)
            for part in parts
            if (config := getattr(spec, part)) is not None
        },
    )


def stage_spec(preset: Preset, stage: int, adapter: str, backend: str) -> ModelSpec:
    """The ModelSpec the stage scripts write, from the preset's configs, every attention call on
    `backend`."""
    if stage == 0:  # as stage0/pretrain.py vit: the whole ViT trained on scene labels
        spec = ModelSpec(lm=None, vision=preset.vit, adapter="scene-labels", train_vision=True)
    # as train_stage1.py: the resampler's latents go straight into the trained tiny LM
    elif stage == 1:
        spec = ModelSpec(
            vision=preset.vit,
            resampler=preset.resampler,
            lm=preset.tiny_lm,
            adapter="resampler",
            train_lm=True,
        )
    else:
        vadapter = adapter == "vadapter"
        spec = ModelSpec(
            vision=preset.vit,
            resampler=preset.resampler if vadapter else preset.perceiver,
            lm=preset.lm,
            tiny_lm=preset.tiny_lm if vadapter else None,
            adapter=adapter,
        )
    return with_backend(spec, backend)


def build_stage_model(spec: ModelSpec) -> nn.Module:
    """Stage 0: the ViT with its scene-label heads (scenes.SceneLabelModel); then Figure 2's VLM."""
    return (
        scenes.SceneLabelModel(ViT(spec.vision), SCENE_VOCABULARY)
        if spec.adapter == "scene-labels"
        else build_vlm(spec)
    )


def synthetic_batch(preset: Preset, spec: ModelSpec, seed: int = 0) -> dict:
    """A batch as the stage's collate makes it, random pixels. Stage 0: random scene labels. Then
    captions of random length between half of text_len and text_len (one at text_len, so the padded
    width is fixed), right-padded; the first token is the prompt, the rest are targets."""
    generator = torch.Generator().manual_seed(seed)
    size, B = preset.vit.image_size, preset.batch
    pixels = [torch.rand(3, size, size, generator=generator) for _ in range(B)]
    if spec.adapter == "scene-labels":
        cells = len(SCENE_VOCABULARY["rows"]) * len(SCENE_VOCABULARY["columns"])
        classes = scenes.num_classes(SCENE_VOCABULARY)
        return scenes.collate_scenes(
            [
                {
                    "pixels": p,
                    "targets": {
                        kind: torch.randint(
                            count, () if kind == "count" else (cells,), generator=generator
                        )
                        for kind, count in classes.items()
                    },
                }
                for p in pixels
            ]
        )
    lengths = torch.randint(preset.text_len // 2, preset.text_len + 1, (B,), generator=generator)
    lengths[0] = preset.text_len
    samples = [
        {
            "pixels": p,
            "input_ids": torch.randint(1, spec.lm.vocab_size, (int(length),), generator=generator),
            "loss_mask": torch.arange(int(length)) > 0,
            "image_id": i,
        }
        for i, (p, length) in enumerate(zip(pixels, lengths))
    ]
    return data.collate(samples, pad_id=0)


def to_device(value, device):
    """A batch (tensors, nested dicts of tensors: stage 0's targets) on `device`."""
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value.to(device) if torch.is_tensor(value) else value


def count_step_flops(spec: ModelSpec, batch: dict) -> dict:
    """Model FLOPs of one training step, forward and backward per part: every matmul, convolution
    and attention product, counted by torch.utils.flop_counter on a meta-device copy (no memory,
    no time) with `math` attention, the backward as autograd runs it, part by part."""
    with torch.device("meta"):
        model = build_stage_model(with_backend(spec, "math"))
    model.train()
    targets = int(batch["loss_mask"].sum()) if "loss_mask" in batch else 0
    batch = to_device(batch, "meta")
    counts = {}

    def counted(part, direction, fn):
        with FlopCounterMode(display=False) as counter:
            result = fn()
        counts.setdefault(part, {"forward": 0, "backward": 0})[direction] = (
            counter.get_total_flops()
        )
        return result

    # one part, all of it trained (the label heads are a few linear maps)
    if spec.adapter == "scene-labels":
        loss_sum, labels = counted("vision", "forward", lambda: scenes.scene_loss(model, batch))
        counted("vision", "backward", lambda: (loss_sum / labels).backward())
    else:
        # no_grad: no backward
        features = counted("vision", "forward", lambda: model.encode_images(batch["pixels"]))
        visual_tokens = counted("adapter", "forward", lambda: model.adapter(features))

        # the output layer at the target tokens only, as caption_loss runs it (return_logits=False)
        def lm_forward():
            hidden = model.lm(batch["input_ids"], prefix=visual_tokens, return_hidden=True)
            return model.lm.logits(hidden.flatten(0, 1)[:targets])  # (targets, V)

        logits = counted("lm", "forward", lm_forward)
        # Backward one part at a time, LM first, as autograd runs it: the gradient that reaches the
        # visual tokens is carried into the adapter's backward.
        lm_trained = [p for p in model.lm.parameters() if p.requires_grad]
        grads = counted(
            "lm",
            "backward",
            lambda: torch.autograd.grad(logits.float().sum(), [visual_tokens, *lm_trained]),
        )
        adapter_trained = [p for p in model.adapter.parameters() if p.requires_grad]
        counted(
            "adapter",
            "backward",
            lambda: torch.autograd.grad(visual_tokens, adapter_trained, grads[0]),
        )
    counts["total"] = sum(c["forward"] + c["backward"] for c in counts.values())
    return counts


# ---------------------------------------------------------------------------------------------
# Flags shared by the attention and step benchmarks
# ---------------------------------------------------------------------------------------------


def device_and_preset(args) -> tuple[torch.device, str, Preset]:
    """--device (default cuda when available), and --preset (default the device's; `quick` with
    --quick)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = "quick" if args.quick else args.preset or ("cuda" if device.type == "cuda" else "cpu")
    preset = PRESETS[name]
    if name == "cpu":  # what the trainer runs in by default on this machine's CPU
        preset = replace(preset, dtype="bfloat16" if bf16_by_default("cpu") else "float32")
    return device, name, preset


def backend_names(flag: str | None, default: list[str]) -> list[str]:
    """--backends a,b,c checked against attention.BACKENDS (and auto)."""
    backends = flag.split(",") if flag else default
    if unknown := [b for b in backends if b not in ("auto", *attn.BACKENDS)]:
        raise SystemExit(
            f"unknown backend(s) {unknown}; attention.BACKENDS has {list(attn.BACKENDS)} (and auto)"
        )
    return backends

"""Benchmarks for kernel work: every attention backend on the shapes the three models run, a full
training step of each stage, and our PaLM decoder against a Hugging Face decoder of the same size.

The kernel-work box. Adding an attention kernel is two lines in attention.py:
    def my_attention(q, k, v, mask=None): ...   # q (B, Hq, Sq, Dh), k/v (B, Hkv, Sk, Dh) -> (B, Hq, Sq, Dh)
    BACKENDS["mine"] = my_attention             # mask: attention.Mask (.mask_mod, .dense(...))
then run
    python benchmark.py attention               # every backend + auto; --backends mine,sdpa --cases decoder_causal
which checks the output and the gradients against `math` (INCORRECT and exit status 1 when a backend
is off by more than the tolerance) before timing anything.

Subcommands:
    attention   every backend in attention.BACKENDS, plus `auto`, on the ViT, resampler and decoder
                shapes derived from a preset of model configs (`--preset cpu|cuda`, `--quick`)
    step        a full training step (forward, backward, clip, AdamW) of the stage-1 model (frozen
                ViT -> 1-layer resampler -> trained tiny LM) and the stage-2 model (frozen ViT ->
                adapter -> frozen large LM), random weights and batches: ms/step, target tokens/s and
                LM positions/s, peak memory, model FLOP/s (MFU on CUDA), per attention backend, eager
                and compiled; checks that frozen parameters get no .grad and the adapter does.
                `--compare-frozen-paths`: the stage-2 step with the frozen ViT under autograd, under
                no_grad, and from data.FeatureCache
    reference   our PaLMDecoder against transformers' LlamaForCausalLM of the same width, depth,
                heads, vocabulary and sequence, forward+backward (needs `pip install transformers`)
"""
import argparse
import ctypes
import gc
import json
import math
import os
import re
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import attention as attn
import data
from palm_decoder import PALM_CONFIGS, PaLMConfig, PaLMDecoder
from resampler import ResamplerConfig
from trainer import TrainConfig, build_optimizer, move_to
from vit import VIT_CONFIGS, ViTConfig
from vlm import VisionLanguageModel, build_vlm, caption_loss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Max abs error allowed against `math` run in float32 on the same inputs. Gradients are compared
# with the tolerance times the largest reference gradient (at least 1): their scale grows with Sq.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
# FLOP convention (FlashAttention's benchmarks): forward = 4 * B * Hq * Sq * Sk * Dh, the two
# matmuls, masked-out entries counted as if computed; backward = 2.5 x forward (five matmuls, one of
# them recomputing Q K^T), so forward+backward = 3.5 x forward.
FORWARD_BACKWARD_FLOPS = 3.5


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, calls: int, device: torch.device) -> float:
    """Milliseconds per call of `calls` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / calls


def calls_per_repeat(fn: Callable, device: torch.device, min_repeat_ms: float) -> int:
    """Enough calls that one timed repeat lasts min_repeat_ms: a single sub-millisecond call is
    mostly timer and Python noise."""
    if min_repeat_ms <= 0:
        return 1
    once = time_calls(fn, 1, device)
    return max(1, math.ceil(min_repeat_ms / max(once, 1e-3)))


def machine(device: torch.device) -> str:
    """Where the numbers come from; on CPU the load average says how much others were running."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
            f"torch {torch.__version__}")


def summary(samples_ms: list[float]) -> dict:
    """Median and spread (interquartile range and min-max) of per-call times, ms."""
    quartiles = statistics.quantiles(samples_ms, n=4, method="inclusive") if len(samples_ms) > 1 else samples_ms * 3
    return {"median_ms": statistics.median(samples_ms), "p25_ms": quartiles[0], "p75_ms": quartiles[2],
            "min_ms": min(samples_ms), "max_ms": max(samples_ms), "repeats": len(samples_ms)}


# =============================================================================================
# attention: every backend on the shapes the models run
# =============================================================================================


@dataclass
class Preset:
    """The model configs whose attention shapes are benchmarked, and the data sizes they see."""

    vit: ViTConfig
    resampler: ResamplerConfig  # the VAdapter's 1-layer resampler, latents at the tiny LM's width
    lm: PaLMConfig  # the decoder that reads [visual tokens; text]
    batch: int
    text_len: int  # caption / question + answer tokens after the visual tokens
    frames: int  # video frames, each frame's patches enter the resampler together
    dtype: str  # what training runs in on that device (bf16 autocast on CUDA)
    tiny_lm: PaLMConfig  # step: the stage-1 decoder, then the VAdapter's tiny LM
    perceiver: ResamplerConfig  # step: the stage-2 baseline adapter


def resampler_for(vit: ViTConfig, tiny_lm: PaLMConfig, num_latents: int) -> ResamplerConfig:
    """As pretrain.py builds it: latents at the tiny LM's width, with its number of heads."""
    return ResamplerConfig(input_dim=vit.dim, dim=tiny_lm.dim, depth=1, num_latents=num_latents, num_heads=tiny_lm.num_heads)


def perceiver_for(vit: ViTConfig, num_latents: int) -> ResamplerConfig:
    """The baseline as train_stage2.py builds it by default: 6 layers at the ViT's width, 4 heads."""
    return ResamplerConfig(input_dim=vit.dim, dim=vit.dim, depth=6, num_latents=num_latents, num_heads=4)


def make_preset(vit: ViTConfig, tiny_lm: PaLMConfig, lm: PaLMConfig, num_latents: int, **sizes) -> Preset:
    return Preset(vit, resampler_for(vit, tiny_lm, num_latents), lm, tiny_lm=tiny_lm,
                  perceiver=perceiver_for(vit, num_latents), **sizes)


QUICK_VIT = ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, mlp_dim=64)  # 16 patches
PRESETS = {
    # `make demo` on a laptop: toy ViT (64 patches), toy-tiny adapter LM (16 latents), toy-large LM,
    # batch 32, 8-frame videos.
    "cpu": make_preset(VIT_CONFIGS["toy"], PALM_CONFIGS["toy-tiny"], PALM_CONFIGS["toy-large"], 16,
                       batch=32, text_len=32, frames=8, dtype="float32"),
    # Paper-size: ViT-B/16 (196 patches), tiny-108m adapter (64 latents), 1B LM.
    "cuda": make_preset(VIT_CONFIGS["B/16"], PALM_CONFIGS["tiny-108m"], PALM_CONFIGS["1b"], 64,
                        batch=32, text_len=64, frames=8, dtype="bfloat16"),
    # For tests: every case in well under a second per backend (Dh 16 is flex's smallest).
    "quick": make_preset(QUICK_VIT, PaLMConfig(vocab_size=64, dim=32, depth=1, num_heads=2, max_seq_len=48),
                         PaLMConfig(vocab_size=64, dim=32, depth=1, num_heads=2, max_seq_len=48), 4,
                         batch=2, text_len=8, frames=2, dtype="float32"),
}


@dataclass
class AttentionCase:
    """One attention call as a model makes it: q (B, Hq, Sq, Dh), k and v (B, Hkv, Sk, Dh), a mask."""

    name: str
    what: str
    batch: int
    heads_q: int
    heads_kv: int
    q_len: int
    kv_len: int
    head_dim: int
    mask: attn.Mask | None
    backward: bool = True  # False where the model only ever runs it under no_grad (decoding)

    @property
    def forward_flops(self) -> int:
        return 4 * self.batch * self.heads_q * self.q_len * self.kv_len * self.head_dim

    def visible_fraction(self, device) -> float:
        if self.mask is None:
            return 1.0
        return self.mask.dense(self.batch, self.q_len, self.kv_len, device).float().mean().item()

    def shape(self) -> str:
        return f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Sq={self.q_len} Sk={self.kv_len} Dh={self.head_dim}"


def attention_cases(preset: Preset, device="cpu") -> list[AttentionCase]:
    vit, resampler, lm, B = preset.vit, preset.resampler, preset.lm, preset.batch
    patches = vit.grid_size**2  # N
    latents = resampler.num_latents  # L: the visual tokens
    resampler_head_dim = resampler.dim // resampler.num_heads
    lm_head_dim = lm.head_dim or lm.dim // lm.num_heads
    sequence = latents + preset.text_len  # [visual tokens; text]
    long_batch = max(1, B * sequence // lm.max_seq_len)  # as many tokens as the batch of short sequences
    visual_prefix = torch.full((B,), latents, device=device)
    return [
        # ViT: patches attend to patches. (B, H, N, Dh) x (B, H, N, Dh)
        AttentionCase("vit_self", "ViT self-attention over the patches", B, vit.num_heads, vit.num_heads, patches, patches,
                      vit.dim // vit.num_heads, None),
        # Resampler: latents attend to [features; latents]. (B, H, L, Dh) x (B, H, N + L, Dh)
        AttentionCase("resampler_image", "resampler latents -> [patches; latents]", B, resampler.num_heads, resampler.num_heads,
                      latents, patches + latents, resampler_head_dim, None),
        # Video: every frame's patches in one set. (B, H, L, Dh) x (B, H, T * N + L, Dh)
        AttentionCase("resampler_video", f"resampler latents -> [{preset.frames} frames of patches; latents]", B,
                      resampler.num_heads, resampler.num_heads, latents, preset.frames * patches + latents,
                      resampler_head_dim, None),
        # LM over [visual; text], multi-query: (B, H, P + L, Dh) x (B, Hkv, P + L, Dh)
        AttentionCase("decoder_causal", "LM causal over [visual tokens; text], MQA", B, lm.num_heads, lm.num_kv_heads,
                      sequence, sequence, lm_head_dim, attn.causal()),
        AttentionCase("decoder_prefix_lm", "LM prefix-LM: visual tokens bidirectional, text causal", B, lm.num_heads,
                      lm.num_kv_heads, sequence, sequence, lm_head_dim, attn.prefix_lm(visual_prefix)),
        # The longest sequence the LM takes, same tokens per batch. (B', H, max_seq_len, Dh)
        AttentionCase("decoder_prefix_lm_long", f"LM prefix-LM at max_seq_len={lm.max_seq_len}", long_batch, lm.num_heads,
                      lm.num_kv_heads, lm.max_seq_len, lm.max_seq_len, lm_head_dim, attn.prefix_lm(visual_prefix[:long_batch])),
        # One new token against the cache, masked as PaLMDecoder.decode_step does. (B, H, 1, Dh) x (B, Hkv, S, Dh)
        AttentionCase("decode_step", "LM KV-cache decoding step", B, lm.num_heads, lm.num_kv_heads, 1, sequence, lm_head_dim,
                      attn.and_masks(attn.left_padding(torch.zeros(B, dtype=torch.long, device=device), sequence - 1),
                                     attn.causal(sequence - 1)),
                      backward=False),
    ]


def call_backend(backend: str) -> Callable:
    return lambda q, k, v, mask: attn.attention(q, k, v, mask, backend=backend)


def short_error(error: Exception) -> str:
    """`Type: first line of the message`, for the table and the JSON."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"[:200]


def max_abs_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return (got.float() - reference).abs().max().item()


def check_backend(fn, q, k, v, mask, grad_out, reference, reference_grads, dtype, backward) -> dict:
    """Errors against the float32 `math` reference; `error` instead where the backend cannot run."""
    tolerance = TOLERANCE[dtype]
    result = {"forward": {}, "forward_backward": {}}
    try:
        with torch.no_grad():
            result["forward"]["max_abs_error"] = max_abs_error(fn(q, k, v, mask), reference)
        result["forward"]["correct"] = result["forward"]["max_abs_error"] <= tolerance
    except Exception as error:  # a backend that cannot run this shape is reported, not fatal
        result["forward"]["error"] = short_error(error)
    if not backward:
        result["forward_backward"]["error"] = "inference only (decoding runs under no_grad)"
        return result
    try:
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        grads = torch.autograd.grad(fn(*leaves, mask), leaves, grad_out)
        scaled = [max_abs_error(g, g_ref) / max(1.0, g_ref.abs().max().item()) for g, g_ref in zip(grads, reference_grads)]
        result["forward_backward"]["max_abs_error"] = max(max_abs_error(g, g_ref) for g, g_ref in zip(grads, reference_grads))
        result["forward_backward"]["correct"] = max(scaled) <= tolerance
    except Exception as error:  # e.g. FlexAttention has no backward on CPU
        result["forward_backward"]["error"] = short_error(error)
    return result


def run_case(case: AttentionCase, backends: list[str], dtype, device, repeats: int, warmup: int,
             min_repeat_ms: float) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(case.batch, case.heads_q, case.q_len, case.head_dim, generator=generator)  # (B, Hq, Sq, Dh)
    k = torch.randn(case.batch, case.heads_kv, case.kv_len, case.head_dim, generator=generator)  # (B, Hkv, Sk, Dh)
    v = torch.randn(case.batch, case.heads_kv, case.kv_len, case.head_dim, generator=generator)
    grad_out = torch.randn(case.batch, case.heads_q, case.q_len, case.head_dim, generator=generator)
    q, k, v, grad_out = (t.to(device=device, dtype=dtype) for t in (q, k, v, grad_out))
    mask = case.mask  # its tensors are already on the device (attention_cases)

    # The reference: math in float32 on the same (already rounded) inputs.
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    reference = attn.attention(*leaves, mask, backend="math")
    reference_grads = torch.autograd.grad(reference, leaves, grad_out.float()) if case.backward else None
    reference = reference.detach()

    rows, timed = [], []  # timed: (row, mode, call) for every mode that ran, correct or not
    for backend in backends:
        fn = call_backend(backend)
        errors = check_backend(fn, q, k, v, mask, grad_out, reference, reference_grads, dtype, case.backward)
        row = {"case": case.name, "backend": backend, **errors}
        if backend == "auto":
            row["auto_chose"] = attn.choose_backend(q, k, v)
        rows.append(row)

        def forward(fn=fn):
            with torch.no_grad():
                fn(q, k, v, mask)

        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

        def forward_backward(fn=fn, leaves=leaves):
            torch.autograd.grad(fn(*leaves, mask), leaves, grad_out)

        for mode, call in (("forward", forward), ("forward_backward", forward_backward)):
            if "error" not in row[mode]:
                timed.append((row, mode, call))

    for _, _, call in timed:
        for _ in range(warmup):
            call()
    inner = [calls_per_repeat(call, device, min_repeat_ms) for _, _, call in timed]
    samples = [[] for _ in timed]
    # Backends take turns within each repeat, so that machine noise (other processes, clock
    # changes) falls on all of them alike instead of on whichever ran during the burst.
    for _ in range(repeats):
        for i, (_, _, call) in enumerate(timed):
            samples[i].append(time_calls(call, inner[i], device))
    for (row, mode, _), times in zip(timed, samples):
        stats = summary(times)
        flops = case.forward_flops * (1 if mode == "forward" else FORWARD_BACKWARD_FLOPS)
        row[mode].update(stats, gflops_per_s=flops / (stats["median_ms"] * 1e-3) / 1e9)
    return rows


MODE_HEADER = f"{'max err':>9} {'median ms':>9} {'[p25-p75]':<19} {'GFLOP/s':>8} {'':<9}"


def format_mode(result: dict) -> str:
    """One mode's cells, MODE_HEADER's width: error, median [p25-p75] ms, GFLOP/s, verdict."""
    if "max_abs_error" not in result:
        message = result["error"].split(": ", 1)[-1].split(". ")[0]  # the first sentence, without the exception type
        return f"n/a: {message}"[:len(MODE_HEADER)].ljust(len(MODE_HEADER))
    verdict = "ok" if result["correct"] else "INCORRECT"
    spread = f"[{result['p25_ms']:.3f}-{result['p75_ms']:.3f}]"
    return f"{result['max_abs_error']:>9.1e} {result['median_ms']:>9.3f} {spread:<19} {result['gflops_per_s']:>8.1f} {verdict:<9}"


def print_case(case: AttentionCase, rows: list[dict], device) -> None:
    print(f"\n{case.name}: {case.what}\n  {case.shape()}  mask: {case.mask.kind if case.mask else 'none'} "
          f"({case.visible_fraction(device):.0%} of scores visible)")
    print(f"  {'':<12} | {'forward':<{len(MODE_HEADER)}} | forward+backward")
    print(f"  {'backend':<12} | {MODE_HEADER} | {MODE_HEADER}")
    for row in rows:
        name = f"auto->{row['auto_chose']}" if row["backend"] == "auto" else row["backend"]
        print(f"  {name:<12} | {format_mode(row['forward'])} | {format_mode(row['forward_backward'])}".rstrip())


def auto_report(rows: list[dict]) -> list[dict]:
    """Per case and mode: `auto` against the fastest correct named backend (ratio of medians).

    It passes when within 10%, or when auto ran that very backend: the two rows then time the same
    kernel, and what separates them is machine noise plus choose_backend's few microseconds."""
    report = []
    for case in dict.fromkeys(r["case"] for r in rows):
        case_rows = [r for r in rows if r["case"] == case]
        auto = next((r for r in case_rows if r["backend"] == "auto"), None)
        for mode in ("forward", "forward_backward"):
            candidates = [r for r in case_rows if r["backend"] != "auto" and r[mode].get("correct") and "median_ms" in r[mode]]
            if auto is None or not candidates or "median_ms" not in auto[mode]:
                continue
            fastest = min(candidates, key=lambda r: r[mode]["median_ms"])
            ratio = auto[mode]["median_ms"] / fastest[mode]["median_ms"]
            report.append({"case": case, "mode": mode, "auto_chose": auto["auto_chose"], "fastest": fastest["backend"],
                           "ratio": ratio, "ok": ratio <= 1.10 or auto["auto_chose"] == fastest["backend"]})
    return report


def attention_main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset_name = "quick" if args.quick else args.preset or ("cuda" if device.type == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    dtype = DTYPES[args.dtype or preset.dtype]
    repeats = args.repeats or (2 if args.quick else 15)
    warmup, min_repeat_ms = (1, 0.0) if args.quick else (3, 20.0)
    backends = args.backends.split(",") if args.backends else [*attn.BACKENDS, "auto"]
    unknown = [b for b in backends if b not in ("auto", *attn.BACKENDS)]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; attention.BACKENDS has {list(attn.BACKENDS)} (and auto)")
    cases = attention_cases(preset, device)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; choose from {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]

    print(f"attention benchmark: preset {preset_name}, {dtype}; {machine(device)}")
    print(f"correctness: max abs error against math in float32 (gradients: relative to the largest reference gradient, "
          f"at least 1), INCORRECT above {TOLERANCE[dtype]:g}\n"
          f"timing: median [p25-p75] ms per call over {repeats} repeats, backends interleaved; forward under no_grad\n"
          f"GFLOP/s: forward 4*B*Hq*Sq*Sk*Dh, masked-out scores counted as computed; forward+backward "
          f"{FORWARD_BACKWARD_FLOPS} x forward")
    rows = []
    for case in cases:
        case_rows = run_case(case, backends, dtype, device, repeats, warmup, min_repeat_ms)
        print_case(case, case_rows, device)
        rows += case_rows

    auto = auto_report(rows)
    if auto:
        print("\nauto against the fastest correct backend (ratio of medians):")
        for line in auto:
            if not line["ok"]:
                verdict = "AUTO MORE THAN 10% SLOWER"
            else:
                verdict = "ok, chose it" if line["auto_chose"] == line["fastest"] else "ok, within 10%"
            print(f"  {line['case']:<24} {line['mode']:<17} auto->{line['auto_chose']:<6} fastest {line['fastest']:<6} "
                  f"{line['ratio']:5.2f}x  {verdict}")
    incorrect = sorted({(r["backend"], r["case"], mode) for r in rows for mode in ("forward", "forward_backward")
                        if r[mode].get("correct") is False})
    if args.json:
        meta = {"preset": preset_name, "preset_config": asdict(preset), "dtype": str(dtype), "machine": machine(device),
                "repeats": repeats, "tolerance": TOLERANCE[dtype],
                "flops": f"forward 4*B*Hq*Sq*Sk*Dh ignoring masks; forward_backward {FORWARD_BACKWARD_FLOPS} x forward"}
        shapes = {c.name: {**{f: getattr(c, f) for f in ("batch", "heads_q", "heads_kv", "q_len", "kv_len", "head_dim")},
                           "mask": c.mask.kind if c.mask else None} for c in cases}
        with open(args.json, "w") as file:
            json.dump({"meta": meta, "cases": shapes, "results": rows, "auto": auto}, file, indent=1)
    if incorrect:
        print("\nINCORRECT (over the tolerance against math):")
        for backend, case, mode in incorrect:
            print(f"  {backend} on {case} ({mode})")
        return 1
    return 0


# =============================================================================================
# step: a full training step of the stage-1 and stage-2 models (forward, backward, optimizer)
# =============================================================================================

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a pattern of the CUDA device name; the
# first match wins (H100 PCIe before H100 SXM).
PEAK_BF16_TFLOPS = [
    (r"H100.*PCIe", 756.0), (r"H100|H200|H800", 989.0), (r"A100|A800", 312.0), (r"L40S", 362.0),
    (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
]
STAGE_WHAT = {
    1: "stage 1: frozen ViT -> 1-layer resampler -> tiny LM, resampler and tiny LM trained",
    2: "stage 2: frozen ViT -> {adapter} adapter -> frozen large LM, adapter trained",
}
FLOPS_HELP = ("model FLOPs per step: every matmul, convolution and attention product the step runs, counted by "
              "torch.utils.flop_counter on a meta-device copy with `math` attention (masked-out scores counted as "
              "computed); forward of every part the data passes through, backward as autograd runs it: "
              "none for the ViT (no_grad), weight and input gradients (~2x forward) for trained parts, input "
              "gradients only (~1x forward) for the frozen stage-2 LM")


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for pattern, tflops in PEAK_BF16_TFLOPS if re.search(pattern, name)), None)


def stage_spec(preset: Preset, stage: int, adapter: str, backend: str) -> dict:
    """The build_vlm spec the stage scripts write, from the preset's configs, every attention call on `backend`."""
    on = lambda config: replace(config, attention_backend=backend)  # noqa: E731
    vision, tiny_lm, lm = on(preset.vit), on(preset.tiny_lm), on(preset.lm)
    if stage == 1:  # as train_stage1.py: the resampler's latents go straight into the trained tiny LM
        return {"vision": asdict(vision), "resampler": asdict(on(preset.resampler)), "lm": asdict(tiny_lm),
                "tiny_lm": None, "adapter": "resampler", "train_lm": True}
    resampler = preset.resampler if adapter == "vadapter" else preset.perceiver
    return {"vision": asdict(vision), "resampler": asdict(on(resampler)), "lm": asdict(lm),
            "tiny_lm": asdict(tiny_lm) if adapter == "vadapter" else None, "adapter": adapter, "train_lm": False}


def synthetic_batch(preset: Preset, vocab_size: int, seed: int = 0) -> dict:
    """A batch as data.collate makes it: random pixels, captions of random length between half of
    text_len and text_len (one at text_len, so the padded width is fixed), right-padded; the first
    token is the prompt, the rest are targets."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(preset.text_len // 2, preset.text_len + 1, (preset.batch,), generator=generator)
    lengths[0] = preset.text_len
    size = preset.vit.image_size
    samples = [{"pixels": torch.rand(3, size, size, generator=generator),
                "input_ids": torch.randint(1, vocab_size, (int(length),), generator=generator),
                "loss_mask": torch.arange(int(length)) > 0, "image_id": i} for i, length in enumerate(lengths)]
    return data.collate(samples, pad_id=0)


def count_step_flops(spec: dict, batch: dict) -> dict:
    """Model FLOPs of one training step, forward and backward per part (see FLOPS_HELP)."""
    spec = {**spec, **{part: {**spec[part], "attention_backend": "math"} for part in ("vision", "resampler", "lm", "tiny_lm")
                       if spec.get(part)}}
    with torch.device("meta"):
        model = build_vlm(spec)
    model.train()
    pixels, input_ids = batch["pixels"].to("meta"), batch["input_ids"].to("meta")
    counts = {part: {"forward": 0, "backward": 0} for part in ("vision", "adapter", "lm")}

    def counted(part, direction, fn):
        with FlopCounterMode(display=False) as counter:
            result = fn()
        counts[part][direction] = counter.get_total_flops()
        return result

    features = counted("vision", "forward", lambda: model.encode_images(pixels))  # no_grad: no backward
    visual_tokens = counted("adapter", "forward", lambda: model.adapter(features))
    logits, _ = counted("lm", "forward", lambda: model.lm(input_ids, prefix=visual_tokens))
    # Backward one part at a time, LM first, as autograd runs it: the gradient that reaches the
    # visual tokens is carried into the adapter's backward.
    lm_trained = [p for p in model.lm.parameters() if p.requires_grad]
    grads = counted("lm", "backward", lambda: torch.autograd.grad(logits.float().sum(), [visual_tokens, *lm_trained]))
    adapter_trained = [p for p in model.adapter.parameters() if p.requires_grad]
    counted("adapter", "backward", lambda: torch.autograd.grad(visual_tokens, adapter_trained, grads[0]))
    counts["total"] = sum(c["forward"] + c["backward"] for c in counts.values())
    return counts


def malloc_trim() -> None:
    """Hand free heap pages back to the OS (glibc), so the next RSS baseline is not inflated by
    memory that the last row freed but the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) for line in file if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def process_max_rss_kib() -> int:
    import resource  # POSIX only; Linux reads /proc instead

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)


class PeakMemory:
    """Peak memory above a baseline taken at start(). CUDA: torch.cuda.max_memory_allocated (tensors
    only, not the allocator's cache). CPU: the process's peak resident set size (VmHWM), reset to
    the current RSS through /proc/self/clear_refs; without that (not Linux) getrusage's ru_maxrss,
    a high-water mark of the whole process that cannot be reset."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        if device.type == "cuda":
            self.what = "torch.cuda.max_memory_allocated above the allocated memory at the start"
        elif self._reset_rss_peak():
            self.what = "peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS at the start"
        else:
            self.what = "getrusage ru_maxrss (process high-water mark, never reset) above the RSS at the start"

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
            return read_proc_status_kib("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        malloc_trim()
        self._reset_rss_peak()
        self.baseline = (read_proc_status_kib("VmRSS") or process_max_rss_kib()) * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (read_proc_status_kib("VmHWM") or process_max_rss_kib()) * 1024
        return (peak - self.baseline) / 2**20


class GradientCheckError(AssertionError):
    pass


def check_gradients(model: VisionLanguageModel) -> dict:
    """After a step: every frozen parameter (the ViT, the stage-2 LM, the VAdapter's unused
    embedding) has no .grad, every trained one has a finite one, and the adapter's is non-zero."""
    named = list(model.named_parameters())
    frozen_with_grad = [name for name, p in named if not p.requires_grad and p.grad is not None]
    trained_without_grad = [name for name, p in named if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())]
    trained_lm = [name for name, p in model.lm.named_parameters() if p.requires_grad]
    adapter_grads = [p.grad.float().norm() for p in model.adapter.parameters() if p.grad is not None]
    adapter_grad_norm = torch.stack(adapter_grads).norm().item() if adapter_grads else 0.0
    problems = []
    if frozen_with_grad:
        problems.append(f"frozen parameters with a .grad: {frozen_with_grad[:5]}{' ...' if len(frozen_with_grad) > 5 else ''}")
    if trained_without_grad:
        problems.append(f"trained parameters without a finite .grad: {trained_without_grad[:5]}")
    if not model.train_lm and trained_lm:
        problems.append(f"the frozen LM has trainable parameters: {trained_lm[:5]}")
    if not adapter_grad_norm > 0:
        problems.append("no gradient reached the adapter")
    if problems:
        raise GradientCheckError("; ".join(problems))
    return {"frozen_tensors": sum(not p.requires_grad for _, p in named), "frozen_with_grad": 0,
            "trained_tensors_with_grad": sum(p.requires_grad for _, p in named),
            "lm_tensors_with_grad": sum(p.grad is not None for p in model.lm.parameters()),
            "adapter_grad_norm": adapter_grad_norm}


@dataclass
class StepSetup:
    """One model ready to train: the module steps run through (compiled or not), its optimizer, a batch."""

    model: VisionLanguageModel
    runner: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trained: list
    batch: dict
    autocast: Callable
    device: torch.device

    def step(self, loss_fn: Callable) -> None:
        """What trainer.train does per optimizer step (one micro-step): zero, loss, backward, clip, AdamW."""
        self.model.zero_grad(set_to_none=True)  # the whole model: the naive path leaves grads on the ViT
        with self.autocast():
            loss_sum, target_tokens = loss_fn(self.runner, self.batch)
            (loss_sum / target_tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.optimizer.step()

    def timed_step(self, loss_fn: Callable) -> float:
        """Milliseconds for one step, the device synchronized on both sides."""
        return time_calls(lambda: self.step(loss_fn), 1, self.device)


def setup_step(spec: dict, preset: Preset, device: torch.device, compiled: bool) -> StepSetup:
    torch.manual_seed(0)
    model = build_vlm(spec).to(device)
    model.train()
    optimizer = build_optimizer(model, TrainConfig(), device)
    bf16 = DTYPES[preset.dtype] == torch.bfloat16
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    batch = move_to(synthetic_batch(preset, model.lm.config.vocab_size), device)
    return StepSetup(model, torch.compile(model) if compiled else model, optimizer,
                     [p for p in model.parameters() if p.requires_grad], batch, autocast, device)


def batch_tokens(batch: dict, num_latents: int) -> dict:
    """Target tokens (the loss's) and LM positions ([visual tokens; text], padding included) per step."""
    B, text_width = batch["input_ids"].shape
    return {"target": int(batch["loss_mask"].sum()), "sequence": B * (num_latents + text_width)}


def stage_rows(args, preset: Preset, device: torch.device, stage: int, backends: list[str], compile_modes: list[bool],
               memory: PeakMemory) -> list[dict]:
    """One stage's rows (backend x eager/compiled). Each model is built, stepped once (compiling,
    when compiled; timed apart) and warmed up alone, which is when its peak memory is taken; then
    the rows take turns step by step, so that machine noise falls on all of them alike (rows timed
    one after the other differed by up to 10% on the shared CPU machine for the same model)."""
    loss_fn = lambda model, batch: caption_loss(model, batch)  # noqa: E731  the frozen ViT under no_grad, no cache
    rows, setups = [], []
    for backend in backends:
        for compiled in compile_modes:
            row = {"stage": stage, "adapter": args.adapter if stage == 2 else "resampler", "backend": backend,
                   "compile": compiled}
            rows.append(row)
            try:
                memory.start()
                setup = setup_step(stage_spec(preset, stage, args.adapter, backend), preset, device, compiled)
                row["first_step_s"] = setup.timed_step(loss_fn) / 1e3
                for _ in range(args.warmup - 1):
                    setup.step(loss_fn)
                row["peak_memory_mib"] = memory.peak_mib()
                check_gradients(setup.model)
                setups.append((row, setup, []))
            except GradientCheckError as error:
                row["error"] = f"GRADIENT CHECK FAILED: {error}"
            except Exception as error:  # a backend that cannot train this model is reported, not fatal
                row["error"] = short_error(error)
    for _ in range(args.steps):
        for _, setup, times in setups:
            times.append(setup.timed_step(loss_fn))
    for row, setup, times in setups:
        row.update(summary(times), gradients=check_gradients(setup.model))
    del setups
    torch._dynamo.reset()  # the next stage's models would otherwise count against the recompile limit
    return rows


def step_rows(args, preset: Preset, device: torch.device, stages: list[int], backends: list[str],
              compile_modes: list[bool]) -> tuple[list[dict], dict]:
    memory = PeakMemory(device)
    peak = peak_bf16_flops(device)
    rows, flops = [], {}
    for stage in stages:
        spec = stage_spec(preset, stage, args.adapter, "math")
        batch = synthetic_batch(preset, spec["lm"]["vocab_size"])
        tokens = batch_tokens(batch, spec["resampler"]["num_latents"])
        flops[stage] = count_step_flops(spec, batch)
        print(f"\n{STAGE_WHAT[stage].format(adapter=args.adapter)}\n  {tokens['target']} target tokens, "
              f"{tokens['sequence']} LM positions per step; model GFLOP per step: "
              + ", ".join(f"{part} {c['forward'] / 1e9:.3g} fwd + {c['backward'] / 1e9:.3g} bwd"
                          for part, c in flops[stage].items() if part != "total")
              + f" = {flops[stage]['total'] / 1e9:.3g}")
        print(f"  {'backend':<8} {'mode':<8} {'ms/step [p25-p75]':<26} {'target tok/s':>12} {'LM pos/s':>10} "
              f"{'peak MiB':>9} {'GFLOP/s':>8} {'MFU':>6} {'1st step s':>10}")
        # A warm AOTAutograd cache (compiled graphs kept on disk from an earlier run) hands the stage-1
        # graph back with corrupted view shapes in torch 2.13 ("invalid shape dimension -6535...";
        # pytorch/pytorch#185630): compile with that cache off; inductor's FX graph cache stays on.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            stage_results = stage_rows(args, preset, device, stage, backends, compile_modes, memory)
        for row in stage_results:
            row.update(target_tokens=tokens["target"], sequence_tokens=tokens["sequence"])
            mode = "compile" if row["compile"] else "eager"
            if "error" in row:
                print(f"  {row['backend']:<8} {mode:<8} n/a: {row['error']}")
            else:
                seconds = row["median_ms"] / 1e3
                row.update(target_tokens_per_s=tokens["target"] / seconds, sequence_tokens_per_s=tokens["sequence"] / seconds,
                           model_gflops_per_s=flops[stage]["total"] / seconds / 1e9,
                           mfu=flops[stage]["total"] / seconds / peak if peak else None)
                spread = f"{row['median_ms']:.1f} [{row['p25_ms']:.1f}-{row['p75_ms']:.1f}]"
                mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
                print(f"  {row['backend']:<8} {mode:<8} {spread:<26} {row['target_tokens_per_s']:>12,.0f} "
                      f"{row['sequence_tokens_per_s']:>10,.0f} {row['peak_memory_mib']:>9.1f} "
                      f"{row['model_gflops_per_s']:>8.1f} {mfu:>6} {row['first_step_s']:>10.1f}")
            rows.append(row)
    return rows, {"flops": flops, "memory": memory.what, "peak_bf16_flops": peak}


# The stage-2 step with the frozen ViT run three (four) ways. `a` is the naive loop: the ViT's
# weights left trainable (frozen only by leaving them out of the optimizer), so autograd records its
# graph, keeps its activations and computes its weight gradients. `a_frozen` calls the ViT under
# grad mode too, but with requires_grad off: nothing in it requires grad, so autograd records
# nothing and it costs what `b` costs.
FROZEN_PATHS = {
    "a": "naive: ViT under autograd, its weights left requires_grad=True (not in the optimizer)",
    "a_frozen": "ViT called under grad mode, weights requires_grad=False (no graph: nothing requires grad)",
    "b": "encode_images: the frozen ViT under no_grad, every step",
    "c": "FeatureCache hits: every image id already cached (steady state after the first epoch)",
}


def frozen_path_losses(model: VisionLanguageModel, cache: data.FeatureCache) -> dict:
    def vision_under_grad(runner, batch):
        _, loss_sum = runner(batch["input_ids"], batch["loss_mask"], features=model.vision(batch["pixels"]), reduction="sum")
        return loss_sum, batch["loss_mask"].sum()

    return {"a": vision_under_grad, "a_frozen": vision_under_grad, "b": lambda runner, batch: caption_loss(runner, batch),
            "c": lambda runner, batch: caption_loss(runner, batch, cache)}


def compare_frozen_paths(args, preset: Preset, device: torch.device, backend: str) -> dict:
    """Stage-2 step times per path, interleaved step by step so that machine noise falls on all alike."""
    memory = PeakMemory(device)
    setup = setup_step(stage_spec(preset, 2, args.adapter, backend), preset, device, compiled=False)
    model, batch = setup.model, setup.batch
    cache = data.FeatureCache()
    cache.get_or_compute(batch["image_ids"], batch["pixels"], model.encode_images)
    losses = frozen_path_losses(model, cache)

    results = {path: {"what": what} for path, what in FROZEN_PATHS.items()}

    def run(path: str) -> float:
        """One step on `path` -> ms; afterwards the ViT is frozen again and the gradients are checked."""
        model.vision.requires_grad_(path == "a")
        milliseconds = setup.timed_step(losses[path])
        results[path]["vision_grads"] = any(p.grad is not None for p in model.vision.parameters())
        model.vision.requires_grad_(False)
        model.vision.zero_grad(set_to_none=True)  # the naive path's wasted ViT gradients
        check_gradients(model)
        return milliseconds

    for path in FROZEN_PATHS:
        for _ in range(args.warmup):
            run(path)
    times = {path: [] for path in FROZEN_PATHS}
    for _ in range(args.steps):
        for path in FROZEN_PATHS:
            times[path].append(run(path))
    for path in FROZEN_PATHS:  # one step each, alone, for its memory on top of model, optimizer and cache
        memory.start()
        run(path)
        results[path]["step_memory_mib"] = memory.peak_mib()
        results[path].update(summary(times[path]))
    gradients = check_gradients(model)  # after the last step (c): frozen LM without .grad, adapter with
    tokens = batch_tokens(batch, model.adapter.resampler.config.num_latents)
    for path in FROZEN_PATHS:
        results[path]["target_tokens_per_s"] = tokens["target"] / (results[path]["median_ms"] / 1e3)
    ratios = {f"{path}/c": results[path]["median_ms"] / results["c"]["median_ms"] for path in ("a", "a_frozen", "b")}

    print(f"\nfrozen paths: {STAGE_WHAT[2].format(adapter=args.adapter)}; attention {backend}, eager\n"
          f"  median [p25-p75] ms per step over {args.steps} interleaved repeats; step memory: {memory.what}, "
          f"during one step with model, optimizer state and cache already in place")
    print(f"  {'path':<10} {'ms/step [p25-p75]':<24} {'target tok/s':>12} {'/ (c)':>6} {'step MiB':>9} {'ViT .grad':>9}  what")
    for path in FROZEN_PATHS:
        r = results[path]
        spread = f"{r['median_ms']:.1f} [{r['p25_ms']:.1f}-{r['p75_ms']:.1f}]"
        print(f"  {'(' + path + ')':<10} {spread:<24} {r['target_tokens_per_s']:>12,.0f} "
              f"{r['median_ms'] / results['c']['median_ms']:>6.2f} {r['step_memory_mib']:>9.1f} "
              f"{'yes' if r['vision_grads'] else 'no':>9}  {r['what']}")
    print("  ratios: " + ", ".join(f"({k.replace('/', ')/(')}) = {v:.2f}" for k, v in ratios.items()))
    print(f"  gradients after the step: {gradients['frozen_tensors']} frozen tensors, none with a .grad "
          f"(the LM's {sum(1 for _ in model.lm.parameters())} included); {gradients['trained_tensors_with_grad']} "
          f"trained adapter tensors with a .grad (norm {gradients['adapter_grad_norm']:.3g} after clipping): ok")
    return {"backend": backend, "paths": results, "ratios": ratios, "gradients": gradients, "tokens": tokens,
            "memory": memory.what}


def default_step_backends(device: torch.device) -> list[str]:
    """Every backend that can train on the device: on CPU FlexAttention has no backward."""
    return [name for name in attn.BACKENDS if device.type == "cuda" or name != "flex"]


def step_main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset_name = "quick" if args.quick else args.preset or ("cuda" if device.type == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    args.steps = args.steps or (2 if args.quick else 20)
    args.warmup = (1 if args.quick else 3) if args.warmup is None else max(1, args.warmup)  # the first step is timed apart
    backends = args.backends.split(",") if args.backends else default_step_backends(device)
    unknown = [b for b in backends if b not in ("auto", *attn.BACKENDS)]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; attention.BACKENDS has {list(attn.BACKENDS)} (and auto)")
    compile_choice = args.compile or ("off" if args.quick else "both")
    compile_modes = {"both": [False, True], "on": [True], "off": [False]}[compile_choice]
    stages = [1, 2] if args.stage == "both" else [int(args.stage)]

    print(f"step benchmark: preset {preset_name}, {preset.dtype}{' autocast' if preset.dtype == 'bfloat16' else ''}; "
          f"{machine(device)}")
    print(f"batch {preset.batch}: {preset.resampler.num_latents} visual tokens + {preset.text_len // 2}-{preset.text_len} "
          f"text tokens (right-padded to {preset.text_len}), random pixels and ids; a step is zero_grad, caption loss "
          f"(the frozen ViT under no_grad, no feature cache), backward, clip, AdamW\n"
          f"tokens/s: target tokens (the loss's: text minus the prompt token) and LM positions (visual tokens + padded "
          f"text); {FLOPS_HELP}")
    report = {"meta": {"preset": preset_name, "preset_config": asdict(preset), "machine": machine(device),
                       "steps": args.steps, "warmup": args.warmup}}
    failed = False
    if args.compare_frozen_paths:
        backend = args.backends.split(",")[0] if args.backends else "auto"
        try:
            report["frozen_paths"] = compare_frozen_paths(args, preset, device, backend)
        except GradientCheckError as error:
            print(f"GRADIENT CHECK FAILED: {error}")
            failed = True
    else:
        rows, extra = step_rows(args, preset, device, stages, backends, compile_modes)
        report.update(rows=rows, **extra)
        print(f"\nms/step: median [p25-p75] over {args.steps} steps per row, the rows of a stage taking turns\n"
              f"peak MiB: {extra['memory']}, over the build, the first step and the warmup of that row alone: "
              f"weights, gradients, AdamW state, activations{' and pages the allocator kept' if device.type == 'cpu' else ''}")
        failed = any(row.get("error", "").startswith("GRADIENT CHECK FAILED") for row in rows)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1, default=str)
    return 1 if failed else 0


# =============================================================================================
# reference: our PaLMDecoder against a Hugging Face decoder of the same size
# =============================================================================================


def hugging_face_decoder(config: PaLMConfig):
    """The closest transformers architecture: Llama with one key/value head (MQA), SwiGLU of the
    same hidden width, rotary (same rotate-half pairing), no biases, tied embeddings. What differs:
    Llama's block is sequential with two RMSNorms (x + attn(norm1(x)), then + mlp(norm2(x))) where
    PaLM's is parallel on one bias-free LayerNorm; the parameter count differs only by the norms."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config object: nothing to download
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise SystemExit("`benchmark.py reference` needs transformers (a benchmark-only extra): "
                         "pip install -r requirements-bench.txt") from None
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.mlp_hidden_dim or 4 * config.dim,
        num_hidden_layers=config.depth, num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim or config.dim // config.num_heads, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps, attention_bias=False, mlp_bias=False, tie_word_embeddings=True, hidden_act="silu",
        attention_dropout=0.0,
    )
    hf_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_config)


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied embedding is one parameter, counted once


def reference_main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=args.vocab, dim=args.dim, depth=args.depth, num_heads=args.heads, num_kv_heads=1,
                        max_seq_len=args.seq, attention_backend=args.backend)
    ours, theirs = PaLMDecoder(config).to(device), hugging_face_decoder(config).to(device)
    input_ids = torch.randint(config.vocab_size, (args.batch, args.seq), device=device)  # (B, S)
    loss_mask = torch.ones_like(input_ids, dtype=torch.bool)
    loss_mask[:, 0] = False  # both predict tokens 1..S-1 from the positions before them

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(input_ids, loss_mask=loss_mask)[1].backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs(input_ids=input_ids, labels=input_ids).loss.backward()

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(args.warmup):
            step_ours()
            step_theirs()
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):  # alternate, so that machine noise falls on both alike
            times["ours"].append(time_calls(step_ours, 1, device))
            times["theirs"].append(time_calls(step_theirs, 1, device))

    ours_stats, theirs_stats = summary(times["ours"]), summary(times["theirs"])
    pair_ratio = statistics.median(a / b for a, b in zip(times["ours"], times["theirs"]))
    print(f"reference: forward+backward, dim {args.dim} depth {args.depth} heads {args.heads} (1 kv head) vocab {args.vocab} "
          f"seq {args.seq} batch {args.batch}, {'bf16 autocast' if device.type == 'cuda' else 'float32'}, "
          f"{args.repeats} alternating repeats; {machine(device)}")
    for name, model, stats in (("ours (PaLMDecoder, attention " + args.backend + ")", ours, ours_stats),
                               ("transformers LlamaForCausalLM (sdpa)", theirs, theirs_stats)):
        print(f"  {name:<44} {num_parameters(model):>12,} params  median {stats['median_ms']:8.2f} ms "
              f"[{stats['p25_ms']:.2f}-{stats['p75_ms']:.2f}]")
    print(f"  ours / theirs: {ours_stats['median_ms'] / theirs_stats['median_ms']:.3f} (ratio of medians), "
          f"{pair_ratio:.3f} (median of per-repeat ratios)\n"
          f"  same matmul shapes; Llama's block is sequential with two RMSNorms, PaLM's parallel on one LayerNorm")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "machine": machine(device), "ours": ours_stats,
                       "theirs": theirs_stats, "ratio_of_medians": ours_stats["median_ms"] / theirs_stats["median_ms"],
                       "median_pair_ratio": pair_ratio}, file, indent=1)
    return 0


# =============================================================================================
# Command line
# =============================================================================================


THREADS_HELP = "CPU threads (torch.set_num_threads); 1 is steadier when other processes keep the cores busy"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    attention_parser = commands.add_parser("attention", help="every attention backend on the models' shapes: check, then time")
    attention_parser.add_argument("--preset", choices=["cpu", "cuda"], help="which model sizes (default: the device's)")
    attention_parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats: a smoke run in seconds")
    attention_parser.add_argument("--backends", help="comma-separated (default: every attention.BACKENDS entry, and auto)")
    attention_parser.add_argument("--cases", help="comma-separated case names (default: all)")
    attention_parser.add_argument("--repeats", type=int, help="timed repeats per backend (default 15; 2 with --quick)")
    attention_parser.add_argument("--dtype", choices=list(DTYPES), help="default: the preset's (float32 cpu, bfloat16 cuda)")
    attention_parser.add_argument("--device", help="default: cuda when available")
    attention_parser.add_argument("--threads", type=int, help=THREADS_HELP)
    attention_parser.add_argument("--json", help="also write every number to this JSON file")

    step_parser = commands.add_parser("step", help="a full training step of the stage-1 / stage-2 models: tokens/s, memory, MFU")
    step_parser.add_argument("--preset", choices=["cpu", "cuda"], help="which model sizes (default: the device's)")
    step_parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps, no compile: a smoke run in seconds")
    step_parser.add_argument("--stage", choices=["1", "2", "both"], default="both")
    step_parser.add_argument("--adapter", choices=["vadapter", "perceiver"], default="vadapter", help="stage 2's adapter")
    step_parser.add_argument("--backends", help="comma-separated (default: every attention.BACKENDS entry that has a "
                             "backward on the device); --compare-frozen-paths uses the first (default auto)")
    step_parser.add_argument("--compile", choices=["both", "on", "off"], help="eager, torch.compile or both "
                             "(default both; off with --quick)")
    step_parser.add_argument("--steps", type=int, help="timed steps per row (default 20; 2 with --quick)")
    step_parser.add_argument("--warmup", type=int, help="untimed steps first, the first one timed apart (default 3; 1 with --quick)")
    step_parser.add_argument("--compare-frozen-paths", action="store_true",
                             help="instead: the stage-2 step (eager) with the frozen ViT under autograd, under no_grad, "
                             "and from the feature cache")
    step_parser.add_argument("--device", help="default: cuda when available")
    step_parser.add_argument("--threads", type=int, help=THREADS_HELP)
    step_parser.add_argument("--json", help="also write every number to this JSON file")

    reference_parser = commands.add_parser("reference", help="our PaLMDecoder against transformers' Llama of the same size")
    reference_parser.add_argument("--dim", type=int, default=256)
    reference_parser.add_argument("--depth", type=int, default=4)
    reference_parser.add_argument("--heads", type=int, default=8)
    reference_parser.add_argument("--vocab", type=int, default=1024)
    reference_parser.add_argument("--seq", type=int, default=128)
    reference_parser.add_argument("--batch", type=int, default=8)
    reference_parser.add_argument("--backend", default="auto", help="our attention backend (default auto)")
    reference_parser.add_argument("--repeats", type=int, default=20)
    reference_parser.add_argument("--warmup", type=int, default=3)
    reference_parser.add_argument("--device", help="default: cuda when available")
    reference_parser.add_argument("--threads", type=int, help=THREADS_HELP)
    reference_parser.add_argument("--json", help="also write the numbers to this JSON file")

    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"attention": attention_main, "step": step_main, "reference": reference_main}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

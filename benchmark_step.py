"""The training-step benchmark: a full step (forward, backward, clip, AdamW) of the stage-1 model
(frozen ViT -> 1-layer resampler -> trained tiny LM) and the stage-2 model (frozen ViT -> adapter
-> frozen large LM), random weights and batches, per attention backend, eager and compiled:
ms/step, target tokens/s and LM positions/s, peak memory, model FLOP/s (MFU on CUDA). It checks
after every row that frozen parameters get no .grad and the adapter does (Figure 2's frozen boxes).
`--compare-frozen-paths`: the stage-2 step with the frozen ViT under autograd, under no_grad, and
from feature_cache.FeatureCache.

    python benchmark.py step --preset cpu --stage both
    python benchmark.py step --compare-frozen-paths
Measured numbers and how to read them: docs/benchmarks.md.
"""
import json
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import attention as attn
import data
from benchmark_tools import DTYPES, PeakMemory, Preset, backend_names, device_and_preset, machine, short_error, summary, time_calls
from checkpoints import ModelSpec, build_vlm
from feature_cache import FeatureCache
from trainer import TrainConfig, build_optimizer, move_to
from vlm import VisionLanguageModel, caption_loss

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


def with_backend(spec: ModelSpec, backend: str) -> ModelSpec:
    """The same model with every attention call on `backend`."""
    parts = ("vision", "resampler", "lm", "tiny_lm")
    return replace(spec, **{part: replace(config, attention_backend=backend) for part in parts
                            if (config := getattr(spec, part)) is not None})


def stage_spec(preset: Preset, stage: int, adapter: str, backend: str) -> ModelSpec:
    """The ModelSpec the stage scripts write, from the preset's configs, every attention call on `backend`."""
    if stage == 1:  # as train_stage1.py: the resampler's latents go straight into the trained tiny LM
        spec = ModelSpec(vision=preset.vit, resampler=preset.resampler, lm=preset.tiny_lm, adapter="resampler", train_lm=True)
    else:
        vadapter = adapter == "vadapter"
        spec = ModelSpec(vision=preset.vit, resampler=preset.resampler if vadapter else preset.perceiver, lm=preset.lm,
                         tiny_lm=preset.tiny_lm if vadapter else None, adapter=adapter)
    return with_backend(spec, backend)


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


def count_step_flops(spec: ModelSpec, batch: dict) -> dict:
    """Model FLOPs of one training step, forward and backward per part (see FLOPS_HELP)."""
    with torch.device("meta"):
        model = build_vlm(with_backend(spec, "math"))
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


def setup_step(spec: ModelSpec, preset: Preset, device: torch.device, compiled: bool) -> StepSetup:
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
    the rows take turns step by step, so that machine noise falls on all of them alike (how much rows
    timed one after the other vary: docs/benchmarks.md)."""
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
        batch = synthetic_batch(preset, spec.lm.vocab_size)
        tokens = batch_tokens(batch, spec.resampler.num_latents)
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


def frozen_path_losses(model: VisionLanguageModel, cache: FeatureCache) -> dict:
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
    cache = FeatureCache()
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


def add_flags(parser) -> None:
    parser.add_argument("--preset", choices=["cpu", "cuda"], help="which model sizes (default: the device's)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 steps, no compile: a smoke run in seconds")
    parser.add_argument("--stage", choices=["1", "2", "both"], default="both")
    parser.add_argument("--adapter", choices=["vadapter", "perceiver"], default="vadapter", help="stage 2's adapter")
    parser.add_argument("--backends", help="comma-separated (default: every attention.BACKENDS entry that has a "
                        "backward on the device); --compare-frozen-paths uses the first (default auto)")
    parser.add_argument("--compile", choices=["both", "on", "off"], help="eager, torch.compile or both "
                        "(default both; off with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 20; 2 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, the first one timed apart (default 3; 1 with --quick)")
    parser.add_argument("--compare-frozen-paths", action="store_true",
                        help="instead: the stage-2 step (eager) with the frozen ViT under autograd, under no_grad, "
                        "and from the feature cache")


def main(args) -> int:
    device, preset_name, preset = device_and_preset(args)
    args.steps = args.steps or (2 if args.quick else 20)
    args.warmup = (1 if args.quick else 3) if args.warmup is None else max(1, args.warmup)  # the first step is timed apart
    trainable = [name for name in attn.BACKENDS if device.type == "cuda" or name != "flex"]  # no flex backward on CPU
    backends = backend_names(args.backends, trainable)
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


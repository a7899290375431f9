"""The training-step benchmark: a full step (forward, backward, clip, AdamW) of each stage's
model, random weights and batches, per attention backend, eager and compiled: stage 0 (the ViT
pretrained on scene labels), stage 1 (frozen ViT -> 1-layer resampler -> trained tiny LM) and stage
2 (frozen ViT -> VAdapter or perceiver adapter -> frozen large LM). Per row: ms/step, target
tokens/s and LM positions/s, peak memory, and the roofline readout: model FLOP/s and its fraction of
the matmul peak this run measures at its start (MFU on CUDA, in bf16). It checks after every row
that frozen parameters get no .grad and trained ones do (Figure 2's frozen boxes).
`--compare-frozen-paths`: the stage-2 step with the frozen ViT under autograd, under no_grad, and
from feature_cache.FeatureCache (bench/frozen_paths.py). The step and its gradient check:
bench/training_step.py.

    python -m bench step --preset cpu
    python -m bench step --compare-frozen-paths
Measured numbers and how to read them: docs/benchmarks.md.
"""

import json
from dataclasses import asdict, replace
from itertools import product

import torch

import attention as attn
from bench.frozen_paths import compare_frozen_paths
from bench.measure import PeakMemory, machine, matmul_peak, short_error, summary
from bench.tools import (
    DTYPES,
    STAGES,
    Preset,
    backend_names,
    count_step_flops,
    device_and_preset,
    stage_spec,
    synthetic_batch,
)
from bench.training_step import (
    STAGE_WHAT,
    GradientCheckError,
    batch_tokens,
    check_gradients,
    setup_step,
    stage_loss,
)
from support.flags import COUNT, NON_NEGATIVE

FLOPS_HELP = (
    "model FLOPs per step: every matmul, convolution and attention product the step runs "
    "(masked-out "
    "scores counted as computed), counted by torch.utils.flop_counter on a meta-device copy: "
    "forward of "
    "every part the data passes through; backward as autograd runs it: weight and input gradients "
    "(~2x "
    "forward) for trained parts, input gradients only (~1x forward) for the frozen stage-2 LM "
    "that the "
    "adapter's gradient flows through, none for the frozen ViT (no_grad: nothing trained before it)"
)


def stage_rows(
    args,
    preset: Preset,
    device: torch.device,
    stage: int,
    adapter: str,
    backends: list[str],
    compile_modes: list[bool],
    memory: PeakMemory,
    dtypes: list[str],
) -> list[dict]:
    """One stage's rows (dtype x backend x eager/compiled). Each model is built, stepped once
    (compiling, when compiled; timed apart) and warmed up alone, which is when its peak memory is
    taken; then the rows take turns step by step, so that machine noise falls on all of them alike
    (how much rows timed one after the other vary: docs/benchmarks.md)."""
    loss_fn = stage_loss(stage_spec(preset, stage, adapter, "math"))
    rows, setups = [], []
    for dtype, backend, compiled in product(dtypes, backends, compile_modes):
        row = {"stage": stage, "adapter": adapter, "dtype": dtype, "backend": backend}
        row["compile"] = compiled
        rows.append(row)
        try:
            memory.start()
            in_dtype = replace(preset, dtype=dtype)
            spec = stage_spec(in_dtype, stage, adapter, backend)
            setup = setup_step(spec, in_dtype, device, compiled)
            row["first_step_s"] = setup.timed_step(loss_fn) / 1e3
            for _ in range(args.warmup - 1):
                setup.step(loss_fn)
            row["peak_memory_mib"] = memory.peak_mib()
            check_gradients(setup.model)
            setups.append((row, setup, []))
        except GradientCheckError as error:
            row["error"] = f"GRADIENT CHECK FAILED: {error}"
        except Exception as error:  # a backend that cannot train this model: reported, not fatal
            row["error"] = short_error(error)
    for _ in range(args.steps):
        for _, setup, times in setups:
            times.append(setup.timed_step(loss_fn))
    for row, setup, times in setups:
        row.update(summary(times), gradients=check_gradients(setup.model))
    del setups
    # the next stage's models would otherwise count against the recompile limit
    torch._dynamo.reset()
    return rows


def step_rows(
    args,
    preset: Preset,
    device: torch.device,
    stages: list[str],
    backends: list[str],
    compile_modes: list[bool],
    peaks: dict[str, float],
) -> tuple[list[dict], dict]:
    memory = PeakMemory(device)
    rows, flops = [], {}
    for name in stages:
        stage, adapter = STAGES[name]
        spec = stage_spec(preset, stage, adapter, "math")
        batch = synthetic_batch(preset, spec)
        flops[name] = count_step_flops(spec, batch)
        tokens = (
            batch_tokens(batch, spec.resampler.num_latents)
            if stage > 0
            else {"target": 0, "sequence": 0}
        )
        print(
            f"\n{STAGE_WHAT[stage].format(adapter=adapter)}\n  "
            + (
                f"{tokens['target']} target tokens, {tokens['sequence']} LM positions"
                if stage > 0
                else f"{preset.batch} images"
            )
            + " per step; model GFLOP "
            "per step: "
            + ", ".join(
                f"{part} {c['forward'] / 1e9:.3g} fwd + {c['backward'] / 1e9:.3g} bwd"
                for part, c in flops[name].items()
                if part != "total"
            )
            + f" = {flops[name]['total'] / 1e9:.3g}"
        )
        print(
            f"  {'dtype':<9} {'backend':<8} {'mode':<8} {'ms/step [p25-p75]':<26} "
            f"{'target tok/s':>12} {'LM pos/s':>10} "
            f"{'peak MiB':>9} {'GFLOP/s':>8} {'of peak':>7} {'1st step s':>10}"
        )
        # A warm AOTAutograd cache (compiled graphs kept on disk from an earlier run) hands the
        # stage-1
        # graph back with corrupted view shapes in torch 2.13 ("invalid shape dimension -6535...";
        # pytorch/pytorch#185630): compile with that cache off; inductor's FX graph cache stays on.
        with torch._functorch.config.patch(enable_autograd_cache=False):
            stage_results = stage_rows(
                args, preset, device, stage, adapter, backends, compile_modes, memory, list(peaks)
            )
        for row in stage_results:
            row.update(target_tokens=tokens["target"], sequence_tokens=tokens["sequence"])
            mode = "compile" if row["compile"] else "eager"
            if "error" in row:
                print(f"  {row['dtype']:<9} {row['backend']:<8} {mode:<8} n/a: {row['error']}")
            else:
                seconds = row["median_ms"] / 1e3
                row.update(
                    target_tokens_per_s=tokens["target"] / seconds,
                    sequence_tokens_per_s=tokens["sequence"] / seconds,
                    model_gflops_per_s=flops[name]["total"] / seconds / 1e9,
                    fraction_of_peak=flops[name]["total"] / seconds / peaks[row["dtype"]],
                )
                spread = f"{row['median_ms']:.1f} [{row['p25_ms']:.1f}-{row['p75_ms']:.1f}]"
                per_s = (
                    f"{row['target_tokens_per_s']:>12,.0f} {row['sequence_tokens_per_s']:>10,.0f}"
                    if stage > 0
                    else f"{'-':>12} {'-':>10}"
                )
                print(
                    f"  {row['dtype']:<9} {row['backend']:<8} {mode:<8} {spread:<26} {per_s} "
                    f"{row['peak_memory_mib']:>9.1f} "
                    f"{row['model_gflops_per_s']:>8.1f} {row['fraction_of_peak']:>7.1%} "
                    f"{row['first_step_s']:>10.1f}"
                )
            rows.append(row)
    return rows, {"flops": flops, "memory": memory.what}


def add_flags(parser) -> None:
    parser.add_argument(
        "--preset", choices=["cpu", "cuda"], help="which model sizes (default: the device's)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny models, 2 steps, no compile: a smoke run in seconds",
    )
    parser.add_argument("--stage", choices=["0", "1", "2", "all"], default="all")
    parser.add_argument(
        "--adapter",
        choices=["vadapter", "perceiver", "both"],
        default="both",
        help="stage 2's adapter (--compare-frozen-paths: vadapter for both)",
    )
    parser.add_argument(
        "--backends",
        help="comma-separated (default: every attention.BACKENDS entry that has a "
        "backward on the device); --compare-frozen-paths uses the first (default auto)",
    )
    parser.add_argument(
        "--compile",
        choices=["both", "on", "off"],
        help="eager, torch.compile or both (default both; off with --quick)",
    )
    parser.add_argument(
        "--steps", type=COUNT, help="timed steps per row (default 20; 2 with --quick)"
    )
    parser.add_argument(
        "--warmup",
        type=NON_NEGATIVE,
        help="untimed steps first, the first one timed apart (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--dtype",
        help="float32, or bfloat16 autocast with the frozen weights in bfloat16, as training runs "
        "it; comma-separated for rows side by side (default: the trainer's on the device: "
        "bfloat16 on CUDA and on CPUs with bf16 matmuls)",
    )
    parser.add_argument(
        "--compare-frozen-paths",
        action="store_true",
        help="instead: the stage-2 step (eager) with the frozen ViT under autograd, under no_grad, "
        "and from the feature cache",
    )


def main(args) -> int:
    device, preset_name, preset = device_and_preset(args)
    dtypes = args.dtype.split(",") if args.dtype else [preset.dtype]
    if unknown := [name for name in dtypes if name not in DTYPES]:
        raise SystemExit(
            f"--dtype {args.dtype}: unknown {unknown}; expected some of {list(DTYPES)}"
        )
    args.steps = args.steps or (2 if args.quick else 20)
    # the first step is timed apart
    args.warmup = (1 if args.quick else 3) if args.warmup is None else max(1, args.warmup)
    # no flex backward on CPU
    trainable = [name for name in attn.BACKENDS if device.type == "cuda" or name != "flex"]
    backends = backend_names(args.backends, trainable)
    compile_choice = args.compile or ("off" if args.quick else "both")
    compile_modes = {"both": [False, True], "on": [True], "off": [False]}[compile_choice]
    stages = [
        name
        for name, (stage, adapter) in STAGES.items()
        if args.stage in ("all", str(stage)) and (stage < 2 or args.adapter in ("both", adapter))
    ]
    # what --compare-frozen-paths reads
    args.adapter = "vadapter" if args.adapter == "both" else args.adapter
    measured = {name: matmul_peak(device, DTYPES[name], args.quick) for name in dtypes}
    peaks = {name: peak for name, (peak, _) in measured.items()}

    autocast = {"float32": "float32", "bfloat16": "bfloat16 autocast, frozen weights in bfloat16"}
    print(
        f"step benchmark: preset {preset_name}; "
        f"{' and '.join(autocast.get(name, name) for name in dtypes)}; {machine(device)}"
    )
    for name, (peak, how) in measured.items():
        print(f"peak {name}: {peak / 1e9:,.1f} GFLOP/s, measured now ({how})")
    mfu = " (MFU)" if device.type == "cuda" else ""
    print(f"'of peak': model FLOP/s / the peak in the row's dtype{mfu}")
    print(
        f"batch {preset.batch}: {preset.resampler.num_latents} visual tokens + "
        f"{preset.text_len // 2}-{preset.text_len} text tokens (right-padded to "
        f"{preset.text_len}), random pixels, ids and labels; a step is zero_grad, the loss (stage "
        "0: scene labels; then captions, the frozen ViT under no_grad, no feature cache), "
        "backward, clip, AdamW\n"
        "tokens/s: target tokens (the loss's: text minus the prompt token) and LM positions "
        f"(visual tokens + padded text); {FLOPS_HELP}"
    )
    report = {
        "meta": {
            "preset": preset_name,
            "preset_config": asdict(preset),
            "dtypes": dtypes,
            "machine": machine(device),
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_flops_per_s": peaks,
            "peak_measured": {name: how for name, (_, how) in measured.items()},
        }
    }
    failed = False
    if args.compare_frozen_paths:
        backend = args.backends.split(",")[0] if args.backends else "auto"
        try:
            in_dtype = replace(preset, dtype=dtypes[0])
            report["frozen_paths"] = compare_frozen_paths(args, in_dtype, device, backend)
        except GradientCheckError as error:
            print(f"GRADIENT CHECK FAILED: {error}")
            failed = True
    else:
        rows, extra = step_rows(args, preset, device, stages, backends, compile_modes, peaks)
        report.update(rows=rows, **extra)
        print(
            f"\nms/step: median [p25-p75] over {args.steps} steps per row, the rows of a stage "
            "taking turns\n"
            f"peak MiB: {extra['memory']}, over the build, the first step and the warmup of that "
            "row alone: "
            "weights, gradients, AdamW state, "
            f"activations{' and pages the allocator kept' if device.type == 'cpu' else ''}"
        )
        failed = any(row.get("error", "").startswith("GRADIENT CHECK FAILED") for row in rows)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1, default=str)
    return 1 if failed else 0

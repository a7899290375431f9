"""The attention benchmark of the kernel-work box: every backend in
attention.BACKENDS, plus `auto`, on the attention calls the three models make (ViT self-attention,
resampler latents over [patches; latents], the PaLM decoder's multi-query causal / prefix-LM
attention and its KV-cache step), with shapes derived from the model presets.

The kernel-work box. Adding an attention kernel is two lines in attention.py:
    def my_attention(q, k, v, mask=None): ...
        # q (B, Hq, Sq, Dh), k and v (B, Hkv, Sk, Dh) -> (B, Hq, Sq, Dh)
        # mask: attention.Mask (.mask_mod, .dense(...))
    BACKENDS["mine"] = my_attention
then run
    python -m bench attention   # every backend + auto; --backends mine,sdpa --cases decoder_causal
which checks the output and the gradients against `math` (INCORRECT and exit status 1 when a backend
is off by more than the tolerance) before timing anything, on the models' shapes and at odd key
lengths (ODD_LENGTHS: 1, 7, 8, 24, 40, 100, 129).

`python -m bench step` (bench/step.py): a full training step of every stage's model per
backend, eager and compiled. Both benchmarks read their FLOP/s against a matmul peak they measure
first (MFU on CUDA). `python -m bench reference` (bench/reference.py):
our PaLMDecoder against transformers' Llama of the same size. Cases and correctness
checks: bench/attention_checks.py; presets: bench/tools.py; timing: bench/measure.py.
Numbers and their reading: docs/benchmarks.md.
"""

import argparse
import json
import math
from dataclasses import asdict
from typing import Callable

import torch

import attention as attn
from bench.attention_checks import (
    ODD_LENGTHS,
    ODD_LENGTHS_CASE,
    TOLERANCE,
    AttentionCase,
    attention_cases,
    call_backend,
    case_inputs,
    check_backend,
    check_odd_lengths,
)
from bench.measure import machine, matmul_peak, summary, time_calls
from bench.tools import DTYPES, backend_names, device_and_preset
from support.flags import COUNT

# FLOP convention (FlashAttention's benchmarks): forward = 4 * B * Hq * Sq * Sk * Dh, the two
# matmuls, masked-out entries counted as if computed; backward = 2.5 x forward (five matmuls, one of
# them recomputing Q K^T), so forward+backward = 3.5 x forward.
FORWARD_BACKWARD_FLOPS = 3.5


def calls_per_repeat(fn: Callable, device: torch.device, min_repeat_ms: float) -> int:
    """Enough calls that one timed repeat lasts min_repeat_ms: a single sub-millisecond call is
    mostly timer and Python noise."""
    if min_repeat_ms <= 0:
        return 1
    once = time_calls(fn, 1, device)
    return max(1, math.ceil(min_repeat_ms / max(once, 1e-3)))


def run_case(
    case: AttentionCase,
    backends: list[str],
    dtype,
    device,
    repeats: int,
    warmup: int,
    min_repeat_ms: float,
    peak: float,
) -> list[dict]:
    q, k, v, grad_out, reference, reference_grads = case_inputs(case, dtype, device)
    mask = case.mask  # its tensors are already on the device (attention_cases)
    rows, timed = [], []  # timed: (row, mode, call) for every mode that ran, correct or not
    for backend in backends:
        fn = call_backend(backend)
        errors = check_backend(
            fn, q, k, v, mask, grad_out, reference, reference_grads, dtype, case.backward
        )
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
        flops_per_s = flops / (stats["median_ms"] * 1e-3)
        row[mode].update(stats, gflops_per_s=flops_per_s / 1e9, fraction_of_peak=flops_per_s / peak)
    return rows


MODE_HEADER = (
    f"{'max err':>9} {'median ms':>9} {'[p25-p75]':<19} {'GFLOP/s':>8} {'of peak':>7} {'':<9}"
)


def format_mode(result: dict) -> str:
    """One mode's cells, MODE_HEADER's width: error, median [p25-p75] ms, GFLOP/s, fraction of peak,
    verdict."""
    if "max_abs_error" not in result:
        # the first sentence, without the exception type
        message = result["error"].split(": ", 1)[-1].split(". ")[0]
        return f"n/a: {message}"[: len(MODE_HEADER)].ljust(len(MODE_HEADER))
    verdict = "ok" if result["correct"] else "INCORRECT"
    spread = f"[{result['p25_ms']:.3f}-{result['p75_ms']:.3f}]"
    return (
        f"{result['max_abs_error']:>9.1e} {result['median_ms']:>9.3f} {spread:<19} "
        f"{result['gflops_per_s']:>8.1f} "
        f"{result['fraction_of_peak']:>7.1%} {verdict:<9}"
    )


def print_case(case: AttentionCase, rows: list[dict], device) -> None:
    print(
        f"\n{case.name}: {case.what}\n  {case.shape()}  mask: "
        f"{case.mask.kind if case.mask else 'none'} "
        f"({case.visible_fraction(device):.0%} of scores visible)"
    )
    print(f"  {'':<12} | {'forward':<{len(MODE_HEADER)}} | forward+backward")
    print(f"  {'backend':<12} | {MODE_HEADER} | {MODE_HEADER}")
    for row in rows:
        name = f"auto->{row['auto_chose']}" if row["backend"] == "auto" else row["backend"]
        forward, forward_backward = (
            format_mode(row["forward"]),
            format_mode(row["forward_backward"]),
        )
        print(f"  {name:<12} | {forward} | {forward_backward}".rstrip())


def auto_report(rows: list[dict]) -> list[dict]:
    """Per case and mode: `auto` against the fastest correct named backend (ratio of medians).

    It passes when within 10%, or when auto ran that very backend: the two rows then time the same
    kernel, and what separates them is machine noise plus choose_backend's few microseconds."""
    report = []
    for case in dict.fromkeys(r["case"] for r in rows):
        case_rows = [r for r in rows if r["case"] == case]
        auto = next((r for r in case_rows if r["backend"] == "auto"), None)
        for mode in ("forward", "forward_backward"):
            candidates = [
                r
                for r in case_rows
                if r["backend"] != "auto" and r[mode].get("correct") and "median_ms" in r[mode]
            ]
            if auto is None or not candidates or "median_ms" not in auto[mode]:
                continue
            fastest = min(candidates, key=lambda r: r[mode]["median_ms"])
            ratio = auto[mode]["median_ms"] / fastest[mode]["median_ms"]
            report.append(
                {
                    "case": case,
                    "mode": mode,
                    "auto_chose": auto["auto_chose"],
                    "fastest": fastest["backend"],
                    "ratio": ratio,
                    "ok": ratio <= 1.10 or auto["auto_chose"] == fastest["backend"],
                }
            )
    return report


def attention_main(args) -> int:
    device, preset_name, preset = device_and_preset(args)
    dtype = DTYPES[args.dtype or preset.dtype]
    repeats = args.repeats or (2 if args.quick else 15)
    warmup, min_repeat_ms = (1, 0.0) if args.quick else (3, 20.0)
    backends = backend_names(args.backends, [*attn.BACKENDS, "auto"])
    cases = attention_cases(preset, device)
    wanted = args.cases.split(",") if args.cases else [c.name for c in cases] + [ODD_LENGTHS_CASE]
    if unknown := sorted(set(wanted) - {c.name for c in cases} - {ODD_LENGTHS_CASE}):
        raise SystemExit(
            f"unknown case(s) {unknown}; choose from {[c.name for c in cases] + [ODD_LENGTHS_CASE]}"
        )
    cases = [c for c in cases if c.name in wanted]
    # Compiled backends get a graph per shape (and mode); past torch.compile's recompile_limit they
    # would run uncompiled, and the numbers below would time something else.
    graphs = 2 * (len(cases) + len(ODD_LENGTHS) * 2 + 1)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, graphs)

    peak, peak_how = matmul_peak(device, dtype, args.quick)
    print(
        f"attention benchmark: preset {preset_name}, {dtype}; {machine(device)}\npeak: "
        f"{peak / 1e9:,.1f} GFLOP/s, "
        f"measured now ({peak_how}); of peak: GFLOP/s / that "
        f"peak{' (MFU)' if device.type == 'cuda' else ''}"
    )
    print(
        "correctness: max abs error against math in float32 (gradients: relative to the largest "
        "reference gradient, "
        f"at least 1), INCORRECT above {TOLERANCE[dtype]:g}\n"
        f"timing: median [p25-p75] ms per call over {repeats} repeats, backends interleaved; "
        "forward under no_grad\n"
        "GFLOP/s: forward 4*B*Hq*Sq*Sk*Dh, masked-out scores counted as computed; "
        "forward+backward "
        f"{FORWARD_BACKWARD_FLOPS} x forward"
    )
    rows = []
    for case in cases:
        case_rows = run_case(case, backends, dtype, device, repeats, warmup, min_repeat_ms, peak)
        print_case(case, case_rows, device)
        rows += case_rows
    odd_rows = (
        check_odd_lengths(preset, backends, dtype, device) if ODD_LENGTHS_CASE in wanted else []
    )

    auto = auto_report(rows)
    if auto:
        print("\nauto against the fastest correct backend (ratio of medians):")
        for line in auto:
            if not line["ok"]:
                verdict = "AUTO MORE THAN 10% SLOWER"
            else:
                verdict = (
                    "ok, chose it" if line["auto_chose"] == line["fastest"] else "ok, within 10%"
                )
            print(
                f"  {line['case']:<24} {line['mode']:<17} auto->{line['auto_chose']:<6} fastest "
                f"{line['fastest']:<6} "
                f"{line['ratio']:5.2f}x  {verdict}"
            )
    incorrect = sorted(
        {
            (r["backend"], r["case"], mode)
            for r in rows + odd_rows
            for mode in ("forward", "forward_backward")
            if r[mode].get("correct") is False
        }
    )
    if args.json:
        meta = {
            "preset": preset_name,
            "preset_config": asdict(preset),
            "dtype": str(dtype),
            "machine": machine(device),
            "repeats": repeats,
            "tolerance": TOLERANCE[dtype],
            "peak_flops_per_s": peak,
            "flops": "forward 4*B*Hq*Sq*Sk*Dh ignoring masks; forward_backward "
            f"{FORWARD_BACKWARD_FLOPS} x forward",
        }
        shapes = {
            c.name: {
                **{
                    f: getattr(c, f)
                    for f in ("batch", "heads_q", "heads_kv", "q_len", "kv_len", "head_dim")
                },
                "mask": c.mask.kind if c.mask else None,
            }
            for c in cases
        }
        with open(args.json, "w") as file:
            json.dump(
                {
                    "meta": meta,
                    "cases": shapes,
                    "results": rows,
                    "auto": auto,
                    ODD_LENGTHS_CASE: odd_rows,
                },
                file,
                indent=1,
            )
    if incorrect:
        print("\nINCORRECT (over the tolerance against math):")
        for backend, case, mode in incorrect:
            print(f"  {backend} on {case} ({mode})")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Command line (python -m bench attention; the entry point is bench/__main__.py)
# ---------------------------------------------------------------------------------------------


def add_attention_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=["cpu", "cuda"], help="which model sizes (default: the device's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, 2 repeats: a smoke run in seconds"
    )
    parser.add_argument(
        "--backends", help="comma-separated (default: every attention.BACKENDS entry, and auto)"
    )
    parser.add_argument(
        "--cases",
        help=f"comma-separated case names, {ODD_LENGTHS_CASE} for the odd-length checks (default: "
        "all)",
    )
    parser.add_argument(
        "--repeats", type=COUNT, help="timed repeats per backend (default 15; 2 with --quick)"
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="default: the preset's (float32 cpu, bfloat16 cuda)"
    )

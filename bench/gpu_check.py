"""`make gpu-check` (`python -m bench gpu-check`): the CUDA default checked on one GPU in under 10
minutes (kernel-work box). One PASS / FAIL line per check, then a summary; the exit code is 1 when a
check fails. Without CUDA it says so in one line and exits 0.

  attention  FlexAttention forward and backward against `math` for every mask the models build,
             odd lengths, one key/value head, head_dim 256, bf16 and fp32 (attention_checks'
             tolerances, stated in the line)
  losses     the compiled bf16 default (`auto` attention, torch.compile, bf16 autocast, frozen
             weights in bf16) against eager fp32 SDPA over 20 steps of stage 1 and stage 2, both
             adapters: same init, same batches, every step's loss within 2e-2 (toy sizes: the
             `cpu` preset, so compiling takes seconds)
  graphs     graphs, graph breaks and recompiles of the compiled stage-1 and stage-2 forward over
             5 batches (bench/graphs.py); PASS with no graph break
  torchrun   train_stage2.py (perceiver, shipped stage-0 files, fp32) as 2 ranks on this GPU
             against 1 process with the same global batch: every step's loss within 1e-3
  step       `python -m bench step --preset cuda` for stage 2 (VAdapter), eager and compiled:
             ms/step and MFU; PASS when both rows run and pass the gradient check
"""

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import attention as attn
from bench.attention_checks import TOLERANCE, AttentionCase, case_inputs, check_backend
from bench.graphs import GraphCounts, compile_counts
from bench.measure import short_error
from bench.tools import PRESETS, Preset, stage_spec, synthetic_batch, to_device
from bench.training_step import setup_step, stage_loss

NO_CUDA = "no CUDA device: gpu-check needs one; nothing run"
CHECKS = ("attention", "losses", "graphs", "torchrun", "step")
REPO = Path(__file__).resolve().parent.parent
LENGTHS = (1, 7, 33, 127, 200)
LOSS_TOLERANCE = 2e-2
DDP_TOLERANCE = 1e-3
STAGES = ((1, "resampler"), (2, "vadapter"), (2, "perceiver"))


# ---------------------------------------------------------------------------------------------
# The checks, each device-agnostic where it can be: the CPU tests run them at tiny sizes
# ---------------------------------------------------------------------------------------------


def mask_cases(length: int, heads: int, head_dim: int, device) -> list[AttentionCase]:
    """Every mask the models build, at `length` keys, batch 2, multi-query (1 key/value head).
    Sample 0 has its visual span inside the text (after 2 prompt tokens), sample 1 at the start;
    sample 1 is padded (a third on the left, or half on the right)."""
    visual = min(4, length)
    starts = torch.tensor([min(2, length - visual), 0], device=device)
    span = attn.prefix_lm(starts + visual, prefix_starts=starts)
    left = torch.tensor([0, length // 3], device=device)
    real = torch.tensor([length, max(1, length // 2)], device=device)
    masks = {  # name -> (mask, queries)
        "causal": (attn.causal(), length),
        "prefix_lm_span": (span, length),
        "left_padding&causal": (attn.and_masks(attn.left_padding(left), attn.causal()), length),
        "left_padding&prefix_lm": (attn.and_masks(attn.left_padding(left), span), length),
        "key_padding": (attn.key_padding(real), 8),  # latents over padded frames' keys
        "decode_step": (
            attn.and_masks(attn.left_padding(left, length - 1), attn.causal(length - 1)),
            1,
        ),
    }
    return [
        AttentionCase(f"{name}@{length}", name, 2, heads, 1, queries, length, head_dim, mask)
        for name, (mask, queries) in masks.items()
    ]


def attention_check(
    device, backend="flex", dtypes=(torch.bfloat16, torch.float32), lengths=LENGTHS, head_dim=256
) -> tuple[bool, str]:
    """`backend` against float32 `math`, forward and backward, on every mask case."""
    wrong, errors, worst, count = [], [], {}, 0
    with torch._dynamo.config.patch(recompile_limit=256):  # a graph per mask kind and dtype
        for dtype in dtypes:
            for length in lengths:
                for case in mask_cases(length, 4, head_dim, device):
                    q, k, v, grad_out, reference, reference_grads = case_inputs(case, dtype, device)
                    result = check_backend(
                        lambda q, k, v, mask: attn.attention(q, k, v, mask, backend=backend),
                        *(q, k, v, case.mask, grad_out, reference, reference_grads, dtype, True),
                    )
                    count += 1
                    for mode, row in result.items():
                        label = f"{case.name} {str(dtype)[6:]} {mode}"
                        if "error" in row:
                            errors.append(f"{label}: {row['error']}")
                        elif not row["correct"]:
                            wrong.append(f"{label} (err {row['max_abs_error']:.1e})")
                        else:
                            name = str(dtype)[6:]
                            worst[name] = max(worst.get(name, 0.0), row["max_abs_error"])
    tolerances = ", ".join(f"{str(d)[6:]} {TOLERANCE[d]:g}" for d in dtypes)
    detail = (
        f"{backend} vs float32 math, {count} cases (6 masks x lengths {list(lengths)}, Hq 4, "
        f"Hkv 1, head_dim {head_dim}); tolerance max abs error {tolerances}, gradients relative "
        f"to the largest; worst passing {', '.join(f'{d} {e:.1e}' for d, e in worst.items())}"
    )
    if wrong or errors:
        return (
            False,
            f"{detail}; {len(wrong)} wrong: {wrong[:4]}; {len(errors)} failed: {errors[:2]}",
        )
    return True, detail


def loss_curve(
    preset: Preset, stage: int, adapter: str, backend: str, compiled: bool, steps: int, device
) -> list[float]:
    """The stage's training-step losses over `steps` batches (seeds 0, 1, ...), from seed-0
    weights, in the preset's dtype; read back once at the end (no sync per step)."""
    spec = stage_spec(preset, stage, adapter, backend)
    setup, loss_fn = setup_step(spec, preset, device, compiled), stage_loss(spec)
    losses = []
    for step in range(steps):
        setup.batch = to_device(synthetic_batch(preset, spec, seed=step), device)
        losses.append(setup.step(loss_fn))
    return torch.stack(losses).tolist()


def losses_check(preset: Preset, device, steps=20, compiled=True, stages=STAGES):
    """The compiled bf16 default against eager fp32 SDPA, every step within LOSS_TOLERANCE."""
    lines, passed = [], True
    for stage, adapter in stages:
        fast = loss_curve(
            replace(preset, dtype="bfloat16"), stage, adapter, "auto", compiled, steps, device
        )
        exact = loss_curve(
            replace(preset, dtype="float32"), stage, adapter, "sdpa", False, steps, device
        )
        gap = max(abs(a - b) for a, b in zip(fast, exact))
        passed &= gap <= LOSS_TOLERANCE
        lines.append(
            f"stage {stage} {adapter}: max gap {gap:.1e} ({exact[0]:.3f} -> {exact[-1]:.3f})"
        )
        torch._dynamo.reset()
    mode = "compiled" if compiled else "eager"
    return passed, (
        f"bf16 auto {mode} vs fp32 sdpa eager, {steps} steps, tolerance {LOSS_TOLERANCE:g}: "
        + "; ".join(lines)
    )


def step_graph_counts(
    preset: Preset, stage: int, adapter: str, device, backend="eager", batches=5
) -> GraphCounts:
    """Graphs, breaks and recompiles of the stage's compiled forward (the loss, as the trainer
    calls the compiled model) under the preset's autocast, over `batches` different batches."""
    spec = stage_spec(preset, stage, adapter, "auto")
    setup, loss_fn = setup_step(spec, preset, device, compiled=False), stage_loss(spec)

    def forward(batch):
        with setup.autocast():
            return loss_fn(setup.model, batch)

    calls = [(to_device(synthetic_batch(preset, spec, seed), device),) for seed in range(batches)]
    return compile_counts(forward, calls, backend)


def graphs_check(preset: Preset, device, stages=STAGES) -> tuple[bool, str]:
    counts = {f"stage {s} {a}": step_graph_counts(preset, s, a, device) for s, a in stages}
    detail = "; ".join(f"{name}: {c.line()}" for name, c in counts.items())
    return all(c.breaks == 0 for c in counts.values()), detail


def torchrun_check(device, steps=4) -> tuple[bool, str]:
    """train_stage2.py as 2 ranks and as 1 process, global batch 8, on the synthetic world."""
    with tempfile.TemporaryDirectory() as folder:
        world = "--train-images 40 --val-images 16 --test-images 8 --train-videos 16 "
        world += "--val-videos 8 --test-videos 4 --tokenizer stage0/tokenizer.model"
        run([sys.executable, "-m", "stage0.synthetic", "--out", f"{folder}/data", *world.split()])
        train = f"train_stage2.py --adapter perceiver --data {folder}/data --steps {steps} "
        train += "--vit stage0/vit.safetensors --lm stage0/large_lm.safetensors --batch-size 8 "
        train += f"--eval-every {steps} --eval-batches 1 --log-every 1 --bf16 false "
        train += f"--compile false --device {device.type} --overwrite true"
        train = train.split()
        run([sys.executable, *train, "--out-dir", f"{folder}/one"])
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        run([*launcher, "--nproc_per_node", "2", *train, "--out-dir", f"{folder}/two"])
        one, two = (logged_losses(f"{folder}/{name}") for name in ("one", "two"))
    gap = max(abs(one[step] - two[step]) for step in one) if sorted(one) == sorted(two) else 1.0
    return gap <= DDP_TOLERANCE, (
        f"train_stage2.py perceiver fp32, {steps} steps of global batch 8: 2 ranks on one "
        f"{device.type} (gloo) vs 1 process, max loss gap {gap:.1e} (tolerance {DDP_TOLERANCE:g})"
    )


def step_check(steps=5) -> tuple[bool, str]:
    """`python -m bench step` at the paper-size preset, stage 2 with the VAdapter, eager and
    compiled."""
    with tempfile.TemporaryDirectory() as folder:
        report_path = f"{folder}/step.json"
        flags = ["--preset", "cuda", "--stage", "2", "--adapter", "vadapter", "--backends", "auto"]
        flags += ["--steps", str(steps), "--warmup", "2", "--json", report_path]
        run([sys.executable, "-m", "bench", "step", *flags])
        rows = json.loads(Path(report_path).read_text())["rows"]
    summaries = [
        f"{'compiled' if row['compile'] else 'eager'} "
        + (
            f"n/a: {row['error']}"
            if "error" in row
            else f"{row['median_ms']:.1f} ms/step, MFU {row['fraction_of_peak']:.1%}"
        )
        for row in rows
    ]
    ok = len(rows) == 2 and not any("error" in row for row in rows)
    return ok, "bench step --preset cuda, stage 2 vadapter, bf16, auto: " + "; ".join(summaries)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {result.stderr[-600:]}")


def logged_losses(run_dir) -> dict:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines) if "loss" in row}


def add_flags(parser) -> None:
    parser.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help=f"comma-separated, in this order (default all): {','.join(CHECKS)}",
    )


def main(args) -> int:
    checks = args.checks.split(",")
    if unknown := [name for name in checks if name not in CHECKS]:
        raise SystemExit(f"--checks {args.checks}: unknown {unknown}; expected some of {CHECKS}")
    device = torch.device(args.device or "cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    torch.cuda.set_device(device)
    print(f"gpu-check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    toy = PRESETS["cpu"]
    run_check = {
        "attention": lambda: attention_check(device),
        "losses": lambda: losses_check(toy, device),
        "graphs": lambda: graphs_check(toy, device),
        "torchrun": lambda: torchrun_check(device),
        "step": step_check,
    }
    results, started = {}, time.time()
    for name in checks:
        began = time.time()
        try:
            passed, detail = run_check[name]()
        except Exception as error:  # a check that crashes is a failed check; the next ones run
            passed, detail = False, f"crashed: {short_error(error)}"
        results[name] = {"passed": passed, "detail": detail, "seconds": time.time() - began}
        print(f"{'PASS' if passed else 'FAIL'} {name} ({time.time() - began:.0f} s): {detail}")
        sys.stdout.flush()
    failed = [name for name, result in results.items() if not result["passed"]]
    print(
        f"gpu-check: {len(results) - len(failed)} of {len(results)} checks pass"
        + (f", FAIL: {', '.join(failed)}" if failed else "")
        + f"; {(time.time() - started) / 60:.1f} min"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0

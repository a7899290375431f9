"""benchmark_step.py: the training-step benchmark runs every stage through `benchmark.py step`,
compares the frozen-ViT paths, counts FLOPs as a real step runs them and as a hand count gives
them, reads them against a measured matmul peak, and checks that frozen parameters get no gradient
while the adapter does (quick preset, eager only: compiling is slow on CPU)."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import measure as benchmark_measure
from bench import tools as benchmark_tools
from bench import training_step as benchmark_training_step
from bench.__main__ import main as bench_main
from vlm import caption_loss


def test_step_quick_reports_tokens_per_second_memory_and_peak_for_every_stage(
    tmp_path, capsys, one_thread
):
    report = tmp_path / "step.json"
    assert bench_main(["step", "--quick", "--backends", "sdpa", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    rows = result["rows"]
    assert [(row["stage"], row["adapter"], row["backend"], row["compile"]) for row in rows] == [
        (0, "scene-labels", "sdpa", False),
        (1, "resampler", "sdpa", False),
        (2, "vadapter", "sdpa", False),
        (2, "perceiver", "sdpa", False),
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["peak_memory_mib"] >= 0 and row["model_gflops_per_s"] > 0
        assert row["fraction_of_peak"] == pytest.approx(
            row["model_gflops_per_s"] * 1e9 / result["meta"]["peak_flops_per_s"][row["dtype"]]
        )
        assert row["gradients"]["frozen_with_grad"] == 0
    for row in rows[1:]:
        assert (
            row["target_tokens_per_s"] > 0
            and row["sequence_tokens_per_s"] > row["target_tokens_per_s"]
        )
    assert rows[0]["gradients"]["frozen_tensors"] == 0  # stage 0 trains the whole ViT
    assert rows[2]["gradients"]["lm_tensors_with_grad"] == 0  # the frozen large LM
    printed = capsys.readouterr().out
    assert (
        "target tok/s" in printed
        and "peak MiB" in printed
        and "of peak" in printed
        and "peak float32: " in printed
    )
    assert all(f"stage {stage}:" in printed for stage in (0, 1, 2))


def test_frozen_paths_comparison_reports_three_times(tmp_path, capsys, one_thread):
    report = tmp_path / "frozen.json"
    assert bench_main(["step", "--quick", "--compare-frozen-paths", "--json", str(report)]) == 0
    result = json.loads(report.read_text())["frozen_paths"]
    paths = result["paths"]
    assert {"a", "b", "c"} <= set(paths)
    for path in ("a", "b", "c"):
        assert paths[path]["median_ms"] > 0 and paths[path]["target_tokens_per_s"] > 0
    assert (
        paths["a"]["vision_grads"]
        and not paths["b"]["vision_grads"]
        and not paths["c"]["vision_grads"]
    )
    # grad mode alone records nothing when no weight requires grad
    assert not paths["a_frozen"]["vision_grads"]
    assert set(result["ratios"]) >= {"a/c", "b/c"}
    assert "(a)/(c)" in capsys.readouterr().out


@pytest.mark.parametrize("adapter", ["vadapter", "perceiver"])
def test_stage2_step_grads_reach_the_adapter_and_no_frozen_parameter(adapter, one_thread):
    preset = benchmark_tools.PRESETS["quick"]
    setup = benchmark_training_step.setup_step(
        benchmark_tools.stage_spec(preset, 2, adapter, "sdpa"),
        preset,
        torch.device("cpu"),
        compiled=False,
    )
    setup.step(lambda model, batch: caption_loss(model, batch))
    model = setup.model
    assert all(p.grad is None for p in model.lm.parameters()) and all(
        not p.requires_grad for p in model.lm.parameters()
    )
    assert all(p.grad is None for p in model.vision.parameters())
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(
        name.startswith("adapter.") and p.grad is not None for name, p in trained
    )
    assert benchmark_training_step.check_gradients(model)["adapter_grad_norm"] > 0
    frozen_weight = next(model.lm.parameters())
    # as if the frozen LM had been given a gradient
    frozen_weight.grad = torch.zeros_like(frozen_weight)
    with pytest.raises(
        benchmark_training_step.GradientCheckError, match="frozen parameters with a .grad"
    ):
        benchmark_training_step.check_gradients(model)


@pytest.mark.parametrize("stage,adapter", [(0, "scene-labels"), (1, "resampler"), (2, "vadapter")])
def test_step_flop_count_matches_a_real_step(stage, adapter, one_thread):
    """The meta-device count, part by part, adds up to what FlopCounterMode sees in a real step; the
    frozen ViT has no backward, trained parts ~2x their forward, the frozen stage-2 LM ~1x."""
    preset = benchmark_tools.PRESETS["quick"]
    spec = benchmark_tools.stage_spec(preset, stage, adapter, "math")
    setup = benchmark_training_step.setup_step(spec, preset, torch.device("cpu"), compiled=False)
    with FlopCounterMode(display=False) as counter:
        setup.step(benchmark_training_step.stage_loss(spec))
    counts = benchmark_tools.count_step_flops(spec, setup.batch)
    assert counts["total"] == counter.get_total_flops()
    # all trained; the patch embedding needs no input gradient (the pixels), so a bit under 2x
    if stage == 0:
        assert 1.5 <= counts["vision"]["backward"] / counts["vision"]["forward"] <= 2.0
        return
    assert counts["vision"]["forward"] > 0 and counts["vision"]["backward"] == 0
    assert 1.8 <= counts["adapter"]["backward"] / counts["adapter"]["forward"] <= 2.2
    lm_ratio = counts["lm"]["backward"] / counts["lm"]["forward"]
    assert (1.8 <= lm_ratio <= 2.2) if stage == 1 else (1.0 <= lm_ratio <= 1.3)


def test_stage2_perceiver_flop_count_equals_a_hand_count():
    """One stage-2 perceiver step of the quick preset, counted by hand: 2 m n k per (m x k) @ (k x
    n) product; attention 4 B Sq Sk H Dh forward (Q K^T and P V), masked scores included. The frozen
    ViT runs forward only; the trained adapter's backward is weight + input gradients, 2x; the
    frozen LM's backward is input gradients only: 1x its projections, 2x its attention (dQ, dK,
    dS, dV: four products against two)."""
    preset = benchmark_tools.PRESETS["quick"]
    vit, perceiver, lm, B = preset.vit, preset.perceiver, preset.lm, preset.batch
    N, D, M, p = vit.grid_size**2, vit.dim, vit.mlp_dim, vit.patch_size
    vision = 2 * B * N * D * 3 * p * p + vit.depth * (
        2 * B * N * D * 3 * D + 4 * B * N * N * D + 2 * B * N * D * D + 2 * 2 * B * N * D * M
    )
    # latents see [patches; latents]
    L, R, keys = (
        perceiver.num_latents,
        perceiver.dim,
        N + perceiver.num_latents,
    )
    adapter = (
        perceiver.depth
        * (
            2 * B * L * R * R
            + 2 * B * keys * R * 2 * R
            + 4 * B * L * keys * R
            + 2 * B * L * R * R
            + 2 * 2 * B * L * R * perceiver.mlp_ratio * R
        )
        + 2 * B * L * R * lm.dim
    )
    S, T, Dh = L + preset.text_len, preset.text_len, lm.dim // lm.num_heads
    hidden, H, Hkv = 4 * lm.dim, lm.num_heads, lm.num_kv_heads
    projections = lm.depth * (
        2 * B * S * lm.dim * ((H + 2 * Hkv) * Dh + 2 * hidden)
        + 2 * B * S * (H * Dh + hidden) * lm.dim
    )
    lm_attention = lm.depth * 4 * B * S * S * H * Dh
    spec = benchmark_tools.stage_spec(preset, 2, "perceiver", "math")
    batch = benchmark_tools.synthetic_batch(preset, spec)
    # the output layer at the target tokens only
    logits = 2 * int(batch["loss_mask"].sum()) * lm.dim * lm.vocab_size
    assert 0 < batch["loss_mask"].sum() < B * T
    counts = benchmark_tools.count_step_flops(spec, batch)
    assert counts["vision"] == {"forward": vision, "backward": 0}
    assert counts["adapter"] == {"forward": adapter, "backward": 2 * adapter}
    assert counts["lm"] == {
        "forward": projections + lm_attention + logits,
        "backward": projections + 2 * lm_attention + logits,
    }
    assert counts["total"] == vision + 3 * adapter + 2 * projections + 3 * lm_attention + 2 * logits


def test_matmul_peak_is_the_best_timing_of_an_n_cubed_product(monkeypatch):
    timings = iter([9.0, 4.0, 2.0, 3.0, 2.5, 5.0])  # ms: the warm-up, then five repeats
    monkeypatch.setattr(benchmark_measure, "time_calls", lambda fn, calls, device: next(timings))
    peak, how = benchmark_measure.matmul_peak(torch.device("cpu"), torch.float32, quick=True)
    size = benchmark_measure.PEAK_MATMUL_SIZE["quick"]
    assert peak == 2 * size**3 / 2e-3 and f"{size}x{size}" in how and "float32" in how

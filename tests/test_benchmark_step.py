"""benchmark_step.py: the training-step benchmark runs both stages through `benchmark.py step`,
compares the frozen-ViT paths, counts FLOPs as a real step runs them, and checks that frozen
parameters get no gradient while the adapter does (quick preset, eager only: compiling is slow
on CPU)."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import benchmark
import benchmark_tools
import benchmark_step
from vlm import caption_loss


def test_step_quick_reports_tokens_per_second_and_memory_for_both_stages(tmp_path, capsys, one_thread):
    report = tmp_path / "step.json"
    assert benchmark.main(["step", "--quick", "--backends", "sdpa", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [(row["stage"], row["backend"], row["compile"]) for row in rows] == [(1, "sdpa", False), (2, "sdpa", False)]
    for row in rows:
        assert "error" not in row, row
        assert row["target_tokens_per_s"] > 0 and row["sequence_tokens_per_s"] > row["target_tokens_per_s"]
        assert row["peak_memory_mib"] >= 0 and row["model_gflops_per_s"] > 0
        assert row["gradients"]["frozen_with_grad"] == 0
    assert rows[1]["gradients"]["lm_tensors_with_grad"] == 0  # the frozen large LM
    printed = capsys.readouterr().out
    assert "target tok/s" in printed and "peak MiB" in printed and "stage 1:" in printed and "stage 2:" in printed


def test_frozen_paths_comparison_reports_three_times(tmp_path, capsys, one_thread):
    report = tmp_path / "frozen.json"
    assert benchmark.main(["step", "--quick", "--compare-frozen-paths", "--json", str(report)]) == 0
    result = json.loads(report.read_text())["frozen_paths"]
    paths = result["paths"]
    assert {"a", "b", "c"} <= set(paths)
    for path in ("a", "b", "c"):
        assert paths[path]["median_ms"] > 0 and paths[path]["target_tokens_per_s"] > 0
    assert paths["a"]["vision_grads"] and not paths["b"]["vision_grads"] and not paths["c"]["vision_grads"]
    assert not paths["a_frozen"]["vision_grads"]  # grad mode alone records nothing when no weight requires grad
    assert set(result["ratios"]) >= {"a/c", "b/c"}
    assert "(a)/(c)" in capsys.readouterr().out


@pytest.mark.parametrize("adapter", ["vadapter", "perceiver"])
def test_stage2_step_grads_reach_the_adapter_and_no_frozen_parameter(adapter, one_thread):
    preset = benchmark_tools.PRESETS["quick"]
    setup = benchmark_step.setup_step(benchmark_step.stage_spec(preset, 2, adapter, "sdpa"), preset, torch.device("cpu"), compiled=False)
    setup.step(lambda model, batch: caption_loss(model, batch))
    model = setup.model
    assert all(p.grad is None for p in model.lm.parameters()) and all(not p.requires_grad for p in model.lm.parameters())
    assert all(p.grad is None for p in model.vision.parameters())
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(name.startswith("adapter.") and p.grad is not None for name, p in trained)
    assert benchmark_step.check_gradients(model)["adapter_grad_norm"] > 0
    frozen_weight = next(model.lm.parameters())
    frozen_weight.grad = torch.zeros_like(frozen_weight)  # as if the frozen LM had been given a gradient
    with pytest.raises(benchmark_step.GradientCheckError, match="frozen parameters with a .grad"):
        benchmark_step.check_gradients(model)


@pytest.mark.parametrize("stage", [1, 2])
def test_step_flop_count_matches_a_real_step(stage, one_thread):
    """The meta-device count, part by part, adds up to what FlopCounterMode sees in a real step; the
    frozen ViT has no backward, trained parts ~2x their forward, the frozen stage-2 LM ~1x."""
    preset = benchmark_tools.PRESETS["quick"]
    spec = benchmark_step.stage_spec(preset, stage, "vadapter", "math")
    setup = benchmark_step.setup_step(spec, preset, torch.device("cpu"), compiled=False)
    with FlopCounterMode(display=False) as counter:
        setup.step(lambda model, batch: caption_loss(model, batch))
    counts = benchmark_step.count_step_flops(spec, setup.batch)
    assert counts["total"] == counter.get_total_flops()
    assert counts["vision"]["forward"] > 0 and counts["vision"]["backward"] == 0
    assert 1.8 <= counts["adapter"]["backward"] / counts["adapter"]["forward"] <= 2.2
    lm_ratio = counts["lm"]["backward"] / counts["lm"]["forward"]
    assert (1.8 <= lm_ratio <= 2.2) if stage == 1 else (1.0 <= lm_ratio <= 1.3)


def test_mfu_peak_table_matches_device_names(monkeypatch):
    expected = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
                "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12, "NVIDIA A10G": None}
    for name, peak in expected.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert benchmark_step.peak_bf16_flops(torch.device("cuda")) == peak, name
    assert benchmark_step.peak_bf16_flops(torch.device("cpu")) is None

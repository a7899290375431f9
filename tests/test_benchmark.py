"""benchmark.py: the attention benchmark derives its shapes from the presets, flags a wrong backend
as INCORRECT (exit status 1) and survives a backend without backward; the reference runs; the
training-step benchmark runs both stages, compares the frozen-ViT paths, counts FLOPs as a real
step runs them, and checks that frozen parameters get no gradient while the adapter does."""
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import attention
import benchmark
from palm_decoder import PaLMConfig, PaLMDecoder
from vlm import caption_loss


def no_scale_attention(q, k, v, mask=None):
    """Deliberately wrong: SDPA without the 1/sqrt(Dh) softmax scale."""
    dense = None if mask is None else mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=1.0, enable_gqa=q.shape[1] != k.shape[1])


def verdicts(row):
    return [row[mode]["correct"] for mode in ("forward", "forward_backward") if "correct" in row[mode]]


def test_cases_follow_the_model_presets():
    preset = benchmark.PRESETS["cpu"]
    cases = {case.name: case for case in benchmark.attention_cases(preset)}
    patches, latents = preset.vit.grid_size**2, preset.resampler.num_latents
    vit = cases["vit_self"]
    assert (vit.batch, vit.heads_q, vit.q_len, vit.kv_len, vit.head_dim) == (32, 4, 64, 64, 32)  # toy ViT
    assert cases["resampler_image"].kv_len == patches + latents
    assert cases["resampler_video"].kv_len == preset.frames * patches + latents
    for name in ("decoder_causal", "decoder_prefix_lm", "decoder_prefix_lm_long", "decode_step"):
        assert cases[name].heads_kv == preset.lm.num_kv_heads == 1  # PaLM's multi-query attention
    long, short = cases["decoder_prefix_lm_long"], cases["decoder_prefix_lm"]
    assert long.q_len == preset.lm.max_seq_len and long.batch * long.q_len <= short.batch * short.q_len  # same token budget
    assert cases["decode_step"].q_len == 1 and not cases["decode_step"].backward


def test_wrong_backend_is_flagged_incorrect(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(attention, "BACKENDS", {**attention.BACKENDS, "no_scale": no_scale_attention})
    report = tmp_path / "attention.json"
    status = benchmark.main(["attention", "--quick", "--backends", "math,sdpa,auto,no_scale", "--json", str(report)])
    assert status == 1
    results = json.loads(report.read_text())["results"]
    assert {row["case"] for row in results} == {case.name for case in benchmark.attention_cases(benchmark.PRESETS["quick"])}
    for row in results:
        if row["backend"] == "no_scale":
            assert verdicts(row) and not any(verdicts(row)), row
        else:
            assert verdicts(row) and all(verdicts(row)), row
    printed = capsys.readouterr().out
    assert "INCORRECT" in printed and "no_scale on vit_self (forward)" in printed


def test_flex_without_backward_is_reported_not_fatal(tmp_path):
    """One compiled case (a few seconds on CPU): flex's forward is checked; on CPU its backward is n/a."""
    report = tmp_path / "attention.json"
    assert benchmark.main(["attention", "--quick", "--backends", "math,flex", "--cases", "vit_self", "--json", str(report)]) == 0
    flex = next(row for row in json.loads(report.read_text())["results"] if row["backend"] == "flex")
    assert flex["forward"]["correct"] and flex["forward"]["median_ms"] > 0
    if not torch.cuda.is_available():
        assert "backward" in flex["forward_backward"]["error"]


def test_reference_against_transformers(tmp_path):
    pytest.importorskip("transformers")
    report = tmp_path / "reference.json"
    status = benchmark.main(["reference", "--dim", "32", "--depth", "2", "--heads", "4", "--vocab", "64", "--seq", "16",
                             "--batch", "2", "--repeats", "2", "--warmup", "1", "--json", str(report)])
    assert status == 0
    assert json.loads(report.read_text())["ratio_of_medians"] > 0
    config = PaLMConfig(vocab_size=64, dim=32, depth=2, num_heads=4, num_kv_heads=1, max_seq_len=16)
    ours, theirs = PaLMDecoder(config), benchmark.hugging_face_decoder(config)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    # Same sizes everywhere; Llama has two RMSNorms per block where PaLM shares one LayerNorm.
    assert count(theirs) - count(ours) == config.depth * config.dim


def test_reference_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(SystemExit, match="pip install"):
        benchmark.main(["reference", "--dim", "32", "--depth", "1", "--heads", "4", "--vocab", "64", "--seq", "16"])


# ---------------------------------------------------------------------------------------------
# step: the training step of both stages (quick preset, eager only: compiling costs 10-30 s here)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Steps of tiny models on two threads stall for whole scheduler slices while another process
    keeps a core busy (0.5 s became 6-19 s during a demo run); one thread does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    preset = benchmark.PRESETS["quick"]
    setup = benchmark.setup_step(benchmark.stage_spec(preset, 2, adapter, "sdpa"), preset, torch.device("cpu"), compiled=False)
    setup.step(lambda model, batch: caption_loss(model, batch))
    model = setup.model
    assert all(p.grad is None for p in model.lm.parameters()) and all(not p.requires_grad for p in model.lm.parameters())
    assert all(p.grad is None for p in model.vision.parameters())
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(name.startswith("adapter.") and p.grad is not None for name, p in trained)
    assert benchmark.check_gradients(model)["adapter_grad_norm"] > 0
    frozen_weight = next(model.lm.parameters())
    frozen_weight.grad = torch.zeros_like(frozen_weight)  # as if the frozen LM had been given a gradient
    with pytest.raises(benchmark.GradientCheckError, match="frozen parameters with a .grad"):
        benchmark.check_gradients(model)


@pytest.mark.parametrize("stage", [1, 2])
def test_step_flop_count_matches_a_real_step(stage, one_thread):
    """The meta-device count, part by part, adds up to what FlopCounterMode sees in a real step; the
    frozen ViT has no backward, trained parts ~2x their forward, the frozen stage-2 LM ~1x."""
    preset = benchmark.PRESETS["quick"]
    spec = benchmark.stage_spec(preset, stage, "vadapter", "math")
    setup = benchmark.setup_step(spec, preset, torch.device("cpu"), compiled=False)
    with FlopCounterMode(display=False) as counter:
        setup.step(lambda model, batch: caption_loss(model, batch))
    counts = benchmark.count_step_flops(spec, setup.batch)
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
        assert benchmark.peak_bf16_flops(torch.device("cuda")) == peak, name
    assert benchmark.peak_bf16_flops(torch.device("cpu")) is None

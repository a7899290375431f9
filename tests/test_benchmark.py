"""benchmark.py attention: the cases derive their shapes from the presets, a wrong backend is
flagged INCORRECT (exit status 1), and a backend without backward is reported, not fatal."""

import json

import torch
import torch.nn.functional as F

import attention
from bench import attention_checks as benchmark_checks
from bench import tools as benchmark_tools
from bench.__main__ import main as bench_main


def no_scale_attention(q, k, v, mask=None):
    """Deliberately wrong: SDPA without the 1/sqrt(Dh) softmax scale."""
    dense = None if mask is None else mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=dense, scale=1.0, enable_gqa=q.shape[1] != k.shape[1]
    )


def verdicts(row):
    return [
        row[mode]["correct"] for mode in ("forward", "forward_backward") if "correct" in row[mode]
    ]


def test_cases_follow_the_model_presets():
    preset = benchmark_tools.PRESETS["cpu"]
    cases = {case.name: case for case in benchmark_checks.attention_cases(preset)}
    patches, latents = preset.vit.grid_size**2, preset.resampler.num_latents
    vit = cases["vit_self"]
    # toy ViT
    assert (vit.batch, vit.heads_q, vit.q_len, vit.kv_len, vit.head_dim) == (
        32,
        4,
        64,
        64,
        32,
    )
    assert cases["resampler_image"].kv_len == patches + latents
    assert cases["resampler_video"].kv_len == preset.frames * patches + latents
    for name in ("decoder_causal", "decoder_prefix_lm", "decoder_prefix_lm_long", "decode_step"):
        assert cases[name].heads_kv == preset.lm.num_kv_heads == 1  # PaLM's multi-query attention
    long, short = cases["decoder_prefix_lm_long"], cases["decoder_prefix_lm"]
    # same token budget
    assert (
        long.q_len == preset.lm.max_seq_len and long.batch * long.q_len <= short.batch * short.q_len
    )
    assert cases["decode_step"].q_len == 1 and not cases["decode_step"].backward


def test_wrong_backend_is_flagged_incorrect(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(
        attention, "BACKENDS", {**attention.BACKENDS, "no_scale": no_scale_attention}
    )
    report = tmp_path / "attention.json"
    status = bench_main(
        ["attention", "--quick", "--backends", "math,sdpa,auto,no_scale", "--json", str(report)]
    )
    assert status == 1
    results = json.loads(report.read_text())["results"]
    assert {row["case"] for row in results} == {
        case.name for case in benchmark_checks.attention_cases(benchmark_tools.PRESETS["quick"])
    }
    for row in results:
        if row["backend"] == "no_scale":
            assert verdicts(row) and not any(verdicts(row)), row
        else:
            assert verdicts(row) and all(verdicts(row)), row
    printed = capsys.readouterr().out
    assert "INCORRECT" in printed and "no_scale on vit_self (forward)" in printed


def test_flex_without_backward_is_reported_not_fatal(tmp_path):
    """One compiled case: flex's forward is checked; on CPU its backward is n/a."""
    report = tmp_path / "attention.json"
    assert (
        bench_main(
            [
                "attention",
                "--quick",
                "--backends",
                "math,flex",
                "--cases",
                "vit_self",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    flex = next(
        row for row in json.loads(report.read_text())["results"] if row["backend"] == "flex"
    )
    assert flex["forward"]["correct"] and flex["forward"]["median_ms"] > 0
    if not torch.cuda.is_available():
        assert "backward" in flex["forward_backward"]["error"]


def wrong_in_the_tail(q, k, v, mask=None):
    """Deliberately wrong the way inductor's CPU FlexAttention was: right, except at key lengths 8
    mod 16."""
    out = attention.sdpa_attention(q, k, v, mask)
    return out + 1.0 if k.shape[2] % 16 == 8 else out


def test_a_backend_wrong_only_at_odd_key_lengths_is_flagged(monkeypatch, tmp_path, capsys):
    """The models' shapes are round numbers: only the odd-length checks catch this one."""
    monkeypatch.setattr(attention, "BACKENDS", {**attention.BACKENDS, "tail": wrong_in_the_tail})
    report = tmp_path / "attention.json"
    assert (
        bench_main(["attention", "--quick", "--backends", "math,sdpa,tail", "--json", str(report)])
        == 1
    )
    saved = json.loads(report.read_text())
    assert all(all(verdicts(row)) for row in saved["results"]), "every timed case is right"
    wrong = {
        row["case"]
        for row in saved["odd_lengths"]
        if row["backend"] == "tail" and not all(verdicts(row))
    }
    assert wrong == {
        f"{kind}_{length}" for kind in ("prefix_lm", "cross") for length in (8, 24, 40)
    }
    assert all(all(verdicts(row)) for row in saved["odd_lengths"] if row["backend"] != "tail")
    printed = capsys.readouterr().out
    assert (
        "key lengths 1, 7, 8, 24, 40, 100, 129" in printed
        and "tail on prefix_lm_24 (forward)" in printed
    )
    assert "INCORRECT at 8, 24, 40" in printed

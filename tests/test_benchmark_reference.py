"""benchmark_reference.py: our PaLMDecoder against transformers' Llama runs through `benchmark.py
reference`, the two have the same sizes, and without transformers it says how to install it."""

import json
import sys

import pytest

from bench import reference as benchmark_reference
from bench.__main__ import main as bench_main
from palm_decoder import PaLMConfig, PaLMDecoder
from vit import num_parameters


def test_reference_against_transformers(tmp_path):
    pytest.importorskip("transformers")
    report = tmp_path / "reference.json"
    status = bench_main(
        [
            "reference",
            "--dim",
            "32",
            "--depth",
            "2",
            "--heads",
            "4",
            "--vocab",
            "64",
            "--seq",
            "16",
            "--batch",
            "2",
            "--runs",
            "3",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(report),
        ]
    )
    assert status == 0
    result = json.loads(report.read_text())
    ratios = sorted(run["ratio_of_medians"] for run in result["runs"])
    assert len(ratios) == 3 and result["ratio"] == ratios[1] > 0  # the median run's
    # Linear-layer FLOPs by hand: per token and block, the fused input (q 32, k 8, v 8, gate 128, up
    # 128
    # wide) and output (32 + 128 wide) matmuls; the output layer on the 16 + 1 predicting slots; the
    # backward twice the forward (input and weight gradients, the embedding is trained).
    block = 2 * 32 * (32 + 8 + 8 + 128 + 128) + 2 * (32 + 128) * 32
    forward = 2 * (16 * 2 * block + (16 + 1) * 2 * 32 * 64)
    assert result["flops_per_step"] == 3 * forward
    assert 0 < result["ratio_floor"] < 1 and result["peak_flops_per_s"] > 0
    config = PaLMConfig(vocab_size=64, dim=32, depth=2, num_heads=4, num_kv_heads=1, max_seq_len=16)
    ours, theirs = PaLMDecoder(config), benchmark_reference.hugging_face_decoder(config)
    # Same sizes everywhere; Llama has two RMSNorms per block where PaLM shares one LayerNorm.
    assert num_parameters(theirs) - num_parameters(ours) == config.depth * config.dim


def test_reference_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(SystemExit, match="pip install"):
        bench_main(
            [
                "reference",
                "--dim",
                "32",
                "--depth",
                "1",
                "--heads",
                "4",
                "--vocab",
                "64",
                "--seq",
                "16",
            ]
        )

"""`make gpu-check` (bench/gpu_check.py) and the graph counter it reads (bench/graphs.py): without
CUDA it says so in one line and exits 0; its checks are device-agnostic where they can be, so they
run here at tiny sizes on the CPU (SDPA standing in for FlexAttention: no CPU backward)."""

import os
import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from bench.graphs import compile_counts
from bench.tools import PRESETS
from conftest import REPO


def test_make_gpu_check_without_cuda_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", "INSTALL=", f"PY={sys.executable}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == gpu_check.NO_CUDA


def test_unknown_check_is_refused():
    from bench.__main__ import main

    with pytest.raises(SystemExit, match="unknown \\['speed'\\]"):
        main(["gpu-check", "--checks", "attention,speed"])


def test_compile_counts_sees_one_graph_break_and_none():
    def with_break(x):
        y = x * 2
        if y.sum().item() > 0:  # a host sync: Dynamo breaks the graph here
            return y + 1
        return y - 1

    def without_break(x):
        return torch.where(x.sum() > 0, x * 2 + 1, x * 2 - 1)

    broken = compile_counts(with_break, [(torch.ones(3),)])
    assert broken.breaks == 1 and broken.graphs == 2 and broken.recompiles == 0
    assert "item()" in next(iter(broken.break_reasons))
    whole = compile_counts(without_break, [(torch.ones(3),), (-torch.ones(3),)])
    assert (whole.graphs, whole.breaks, whole.recompiles) == (1, 0, 0)
    assert "1 graphs, 0 graph breaks, 0 recompiles" == whole.line()
    # a new dtype fails the guards: traced again
    assert compile_counts(without_break, [(torch.ones(3),), (torch.ones(3).double(),)]).recompiles


def test_attention_check_runs_every_mask_at_odd_lengths(one_thread):
    passed, detail = gpu_check.attention_check(
        "cpu", backend="sdpa", dtypes=(torch.float32,), lengths=(1, 7), head_dim=16
    )
    assert passed, detail
    assert "12 cases" in detail and "float32 0.0001" in detail
    names = [case.what for case in gpu_check.mask_cases(7, 4, 16, "cpu")]
    assert names == [
        "causal",
        "prefix_lm_span",
        "left_padding&causal",
        "left_padding&prefix_lm",
        "key_padding",
        "decode_step",
    ]


def test_losses_check_compares_bf16_with_fp32_step_by_step(one_thread):
    passed, detail = gpu_check.losses_check(
        PRESETS["quick"], torch.device("cpu"), steps=2, compiled=False, stages=[(1, "resampler")]
    )
    assert passed, detail
    assert "stage 1 resampler: max gap" in detail


def test_step_graph_counts_traces_the_stage_forward(one_thread):
    counts = gpu_check.step_graph_counts(
        PRESETS["quick"], 2, "perceiver", torch.device("cpu"), batches=2
    )
    assert counts.graphs >= 1 and counts.breaks >= 0 and counts.recompiles >= 0


def test_torchrun_check_two_ranks_match_one_process():
    passed, detail = gpu_check.torchrun_check(torch.device("cpu"), steps=2)
    assert passed, detail

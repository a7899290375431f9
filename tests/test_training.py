"""The stage scripts (pretrain.py, train_stage1.py, train_stage2.py) on the trainer: the chain runs,
boundaries hold, DDP and resume keep the curve."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import data
import evaluate
import train_stage1
import train_stage2
import trainer
from conftest import REPO, toy_spec
from stage0 import pretrain, synthetic
from support import checkpoints, flags
from support.checkpoints import load_checkpoint, submodule_state
from support.feature_cache import FeatureCache
from support.model_spec import build_vlm
from support.models import load_lm, load_vision, load_vlm
from support.vlm_training import DataConfig, train_vlm

# fp32 on every CPU (the default is bf16 where the CPU has bf16 matmuls): the frozen models stay
# bit-identical to their files. tests/test_trainer.py checks the default itself.
FAST = [
    "--bf16",
    "false",
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--log-every",
    "1",
]


def losses(run_dir):
    lines = [
        json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny data folder and every stage run once, each loading the previous stage's checkpoint."""
    root = tmp_path_factory.mktemp("chain")
    data_dir = root / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stage0.synthetic",
            "--out",
            str(data_dir),
            "--train-images",
            "48",
            "--val-images",
            "16",
            "--test-images",
            "8",
            "--train-videos",
            "16",
            "--val-videos",
            "8",
            "--test-videos",
            "4",
            "--image-size",
            "32",
            "--num-frames",
            "2",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    small_vit = [
        "--vit-image-size",
        "32",
        "--vit-dim",
        "32",
        "--vit-depth",
        "1",
        "--vit-num-heads",
        "2",
        "--vit-mlp-dim",
        "64",
    ]
    small_lm = ["--lm-dim", "32", "--lm-depth", "1", "--lm-num-heads", "2"]
    common = ["--data", str(data_dir), *FAST]
    runs = {
        name: root / name
        for name in ("vit", "tiny_lm", "large_lm", "stage1", "vadapter", "perceiver", "mlp")
    }
    pretrain.main(
        [
            "vit",
            *common,
            *small_vit,
            *small_lm,
            "--num-latents",
            "4",
            "--max-frames",
            "2",
            "--out-dir",
            str(runs["vit"]),
        ]
    )
    pretrain.main(["lm", *common, *small_lm, "--out-dir", str(runs["tiny_lm"])])
    pretrain.main(
        [
            "lm",
            *common,
            "--lm-dim",
            "48",
            "--lm-depth",
            "2",
            "--lm-num-heads",
            "4",
            "--out-dir",
            str(runs["large_lm"]),
        ]
    )
    resampler = ["--resampler-num-latents", "4", "--resampler-max-frames", "2"]
    train_stage1.main(
        [
            *common,
            *resampler,
            "--vit",
            str(runs["vit"]),
            "--tiny-lm",
            str(runs["tiny_lm"]),
            "--out-dir",
            str(runs["stage1"]),
        ]
    )
    frozen = ["--vit", str(runs["vit"]), "--lm", str(runs["large_lm"])]
    train_stage2.main(
        [
            *common,
            *frozen,
            *resampler,
            "--adapter",
            "vadapter",
            "--stage1",
            str(runs["stage1"]),
            "--out-dir",
            str(runs["vadapter"]),
        ]
    )
    train_stage2.main(
        [
            *common,
            *frozen,
            *resampler,
            "--adapter",
            "perceiver",
            "--perceiver-depth",
            "2",
            "--out-dir",
            str(runs["perceiver"]),
        ]
    )
    train_stage2.main(
        [
            *common,
            *frozen,
            "--adapter",
            "mlp",
            "--self-contained",
            "true",
            "--out-dir",
            str(runs["mlp"]),
        ]
    )
    return data_dir, runs, common, frozen, resampler


def test_each_stage_writes_a_checkpoint_the_next_one_loads(chain):
    _, runs, *_ = chain
    stages = {
        "vit": "pretrain-vit",
        "tiny_lm": "pretrain-lm",
        "large_lm": "pretrain-lm",
        "stage1": "stage1",
        "vadapter": "stage2",
        "perceiver": "stage2",
        "mlp": "stage2",
    }
    for name, stage in stages.items():
        checkpoint = load_checkpoint(str(runs[name]), expected_stage=stage)
        assert checkpoint["step"] == 4
        assert set(checkpoint) >= {"model", "optimizer", "scheduler", "rng", "spec", "train_config"}
        assert not any(
            key.startswith("_orig_mod.") or key.startswith("module.") for key in checkpoint["model"]
        )
        assert len(losses(runs[name])) == 4
    for name in ("stage1", "vadapter", "perceiver", "mlp"):  # rebuilt from the file alone
        model, checkpoint = load_vlm(runs[name])
        assert all(
            torch.equal(model.state_dict()[key], tensor)
            for key, tensor in checkpoint["model"].items()
        )
    assert load_checkpoint(str(runs["stage1"]))["spec"].resampler.latents_in_keys is False, (
        "stage 1: the pooler"
    )


def test_stage2_trains_only_the_adapter_and_frozen_models_stay_bit_identical(chain):
    _, runs, *_ = chain
    vit = load_checkpoint(str(runs["vit"]))["model"]
    large_lm = load_checkpoint(str(runs["large_lm"]))["model"]
    stage1 = load_checkpoint(str(runs["stage1"]))["model"]
    for name in ("vadapter", "perceiver"):  # they reference the frozen models, by default
        checkpoint = load_checkpoint(str(runs[name]))
        assert set(checkpoint["frozen"]) == {"vision", "lm"}
        assert not any(key.startswith(("vision.", "lm.")) for key in checkpoint["model"])
    model = load_checkpoint(str(runs["mlp"]))["model"]  # --self-contained true: they are inside
    for key, tensor in large_lm.items():
        assert torch.equal(model[f"lm.{key}"], tensor), f"frozen large-LM tensor lm.{key} changed"
    for key, tensor in vit.items():
        if key.startswith("vision."):
            assert torch.equal(model[key], tensor), f"frozen ViT tensor {key} changed"
    # the optimizer holds exactly the adapter's trainable parameters
    for name in (
        "vadapter",
        "perceiver",
        "mlp",
    ):
        checkpoint = load_checkpoint(str(runs[name]))
        rebuilt = build_vlm(checkpoint["spec"])
        trainable = [p for n, p in rebuilt.named_parameters() if p.requires_grad]
        assert all(
            n.startswith("adapter.") for n, p in rebuilt.named_parameters() if p.requires_grad
        )
        optimizer = trainer.build_optimizer(rebuilt, trainer.TrainConfig(), torch.device("cpu"))
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert held == {id(p) for p in trainable}
        assert len(checkpoint["optimizer"]["state"]) == len(trainable)
    vadapter = load_checkpoint(str(runs["vadapter"]))["model"]
    changed = [
        k
        for k, t in stage1.items()
        if k.startswith("lm.") and not torch.equal(vadapter[f"adapter.tiny_{k}"], t)
    ]
    assert changed, "stage 2 trains the progressively aligned tiny LM it started from"
    assert torch.equal(
        vadapter["adapter.tiny_lm.token_embedding.weight"], stage1["lm.token_embedding.weight"]
    )


def test_checkpoints_reference_the_frozen_models_and_give_the_numbers_of_a_self_contained_one(
    chain, tmp_path, monkeypatch
):
    """Stage-2 checkpoints reference the frozen ViT and large LM (path, size, sha256), smaller by
    their size; resuming and evaluating one give the numbers a self-contained one gives, and
    `evaluate.py bundle` writes that self-contained file. A moved or changed frozen file is an error
    naming both files. Stage 2 reads its stage-1 checkpoint once."""
    data_dir, runs, common, frozen, resampler = chain
    reads, read = [], checkpoints.read_checkpoint_file
    monkeypatch.setattr(
        checkpoints, "read_checkpoint_file", lambda path: reads.append(Path(path)) or read(path)
    )
    stage2 = [
        *common,
        *frozen,
        *resampler,
        "--adapter",
        "vadapter",
        "--stage1",
        str(runs["stage1"]),
        "--tasks",
        "caption",
    ]
    referencing, contained, bundled = (
        tmp_path / "referencing",
        tmp_path / "contained",
        tmp_path / "bundled.pt",
    )
    train_stage2.main([*stage2, "--steps", "2", "--out-dir", str(referencing)])
    assert reads.count(runs["stage1"] / "checkpoint.pt") == 1
    train_stage2.main(
        [*stage2, "--steps", "2", "--self-contained", "true", "--out-dir", str(contained)]
    )
    evaluate.main(["bundle", str(referencing), "--out", str(bundled)])
    whole, shared = load_checkpoint(str(contained)), load_checkpoint(str(bundled))
    assert (
        whole["frozen"] == shared["frozen"] == {}
        and whole["model"].keys() == shared["model"].keys()
    )
    assert all(torch.equal(shared["model"][key], tensor) for key, tensor in whole["model"].items())
    frozen_bytes = sum(
        t.numel() * t.element_size()
        for k, t in whole["model"].items()
        if k.startswith(("vision.", "lm."))
    )
    sizes = [
        os.path.getsize(path)
        for path in (referencing / "checkpoint.pt", contained / "checkpoint.pt", bundled)
    ]
    print(
        f"stage-2 checkpoint bytes: referencing {sizes[0]:,}, self-contained {sizes[1]:,}, "
        f"bundled {sizes[2]:,}; "
        f"frozen tensors {frozen_bytes:,}"
    )
    assert sizes[1] == pytest.approx(sizes[0] + frozen_bytes, rel=0.02) and sizes[
        2
    ] == pytest.approx(sizes[1], rel=0.01)
    scores = [
        evaluate.evaluate_checkpoint(path, data_dir, "val", ["caption"], limit=4, max_new_tokens=4)
        for path in (referencing, contained, bundled)
    ]
    assert scores[0]["metrics"] == scores[1]["metrics"] == scores[2]["metrics"]
    assert scores[0]["samples"] == scores[1]["samples"] == scores[2]["samples"]
    # a frozen file moved: the resumed run gives its new path
    moved_lm = tmp_path / "moved" / "large_lm.pt"
    moved_lm.parent.mkdir()
    os.replace(runs["large_lm"] / "checkpoint.pt", moved_lm)
    try:
        with pytest.raises(
            FileNotFoundError,
            match=f"{referencing}.*references the frozen model "
            f"{runs['large_lm']}/checkpoint.pt .*not there any more",
        ):
            load_vlm(referencing)
        train_stage2.main(
            [
                *stage2,
                "--lm",
                str(moved_lm),
                "--steps",
                "4",
                "--resume",
                "true",
                "--out-dir",
                str(referencing),
            ]
        )
    finally:
        os.replace(moved_lm, runs["large_lm"] / "checkpoint.pt")
    train_stage2.main([*stage2, "--steps", "4", "--resume", "true", "--out-dir", str(contained)])
    assert losses(referencing) == losses(contained) and len(losses(contained)) == 4
    assert load_checkpoint(str(referencing))["frozen"]["lm"]["source"] == str(moved_lm), (
        "where it was at the last save"
    )
    other_lm = load_checkpoint(str(runs["large_lm"]))
    other_lm["model"][next(iter(other_lm["model"]))] += 1  # same shapes, other weights
    torch.save({**other_lm, "spec": other_lm["spec"].to_dict()}, tmp_path / "other_lm.pt")
    with pytest.raises(
        ValueError, match=f"{contained}.*bytes.*this run gives {tmp_path}/other_lm.pt"
    ):
        train_stage2.main(
            [
                *stage2,
                "--lm",
                str(tmp_path / "other_lm.pt"),
                "--steps",
                "5",
                "--resume",
                "true",
                "--out-dir",
                str(contained),
            ]
        )
    changed = load_checkpoint(str(referencing))
    changed["frozen"]["lm"] = {**changed["frozen"]["lm"], "source": str(tmp_path / "other_lm.pt")}
    torch.save({**changed, "spec": changed["spec"].to_dict()}, tmp_path / "changed.pt")
    with pytest.raises(
        ValueError,
        match=f"changed.pt was trained with the frozen model {tmp_path}/other_lm.pt .* but that "
        "file now is .*: it changed since",
    ):
        load_vlm(tmp_path / "changed.pt")


def test_wrong_stage_and_mismatched_config_fail_with_a_message(chain):
    data_dir, runs, common, frozen, resampler = chain
    with pytest.raises(ValueError, match="written by stage 'stage1'; expected 'stage2'"):
        load_checkpoint(str(runs["stage1"]), expected_stage="stage2")
    with pytest.raises(ValueError, match="written by stage 'stage2'"):
        train_stage2.main(
            [
                *common,
                *frozen,
                "--adapter",
                "vadapter",
                "--stage1",
                str(runs["vadapter"]),
                "--out-dir",
                str(runs["vadapter"].parent / "x"),
            ]
        )
    with pytest.raises(ValueError, match="config mismatch.*perceiver"):  # resume with another depth
        train_stage2.main(
            [
                *common,
                *frozen,
                *resampler,
                "--adapter",
                "perceiver",
                "--perceiver-depth",
                "3",
                "--out-dir",
                str(runs["perceiver"]),
                "--resume",
                "true",
                "--steps",
                "5",
            ]
        )


def stage1_command(chain, out_dir, steps, extra=()):
    data_dir, runs, common, frozen, resampler = chain
    args = [a for a in common if a not in FAST] + [
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--eval-every",
        "1000",
        "--log-every",
        "1",
        *resampler,
        *extra,
    ]
    return [
        sys.executable,
        "train_stage1.py",
        *args,
        "--vit",
        str(runs["vit"]),
        "--tiny-lm",
        str(runs["tiny_lm"]),
        "--out-dir",
        str(out_dir),
    ]


def test_killed_and_resumed_run_follows_the_uninterrupted_curve(chain, tmp_path):
    steps = 40
    straight = tmp_path / "straight"
    subprocess.run(
        stage1_command(chain, straight, steps), cwd=REPO, check=True, capture_output=True
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        stage1_command(chain, killed, steps, ["--save-every", "5"]),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (killed / "checkpoint.pt").exists() and len(losses(killed)) >= 12:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run was killed part way"
    saved_step = load_checkpoint(str(killed))["step"]
    assert 5 <= saved_step < steps
    subprocess.run(
        stage1_command(chain, killed, steps, ["--save-every", "5", "--resume", "true"]),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    expected, resumed = losses(straight), losses(killed)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in expected:
        assert abs(resumed[step] - expected[step]) < 1e-5, (step, resumed[step], expected[step])


def test_two_process_torchrun_matches_one_process(chain, tmp_path):
    """Same global batch of 8: one process, or two gloo ranks of 4 (with grad accumulation too)."""
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run(stage1_command(chain, single, 6), cwd=REPO, check=True, capture_output=True)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    command = stage1_command(chain, double, 6, ["--grad-accum", "2"])
    result = subprocess.run(torchrun + command[1:], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    final_one = load_checkpoint(str(single))["model"]
    final_two = load_checkpoint(str(double))["model"]
    assert max((final_one[k] - final_two[k]).abs().max().item() for k in final_one) < 1e-4


def test_resampler_flags_with_a_stage1_adapter_are_refused_or_honoured(chain, tmp_path):
    """--resampler-from-stage1 true carries the stage-1 pooler over as trained: a --resampler-* flag
    that changes it is an error naming it; a fresh front (the default) takes the flag."""
    _, runs, common, frozen, _ = chain
    stage2 = [
        *common,
        *frozen,
        "--adapter",
        "vadapter",
        "--stage1",
        str(runs["stage1"]),
        "--steps",
        "1",
    ]
    with pytest.raises(
        ValueError, match=r"--resampler-num-latents 8 \(stage 1: 4\).*--resampler-from-stage1 false"
    ):
        train_stage2.main(
            [
                *stage2,
                "--resampler-from-stage1",
                "true",
                "--resampler-num-latents",
                "8",
                "--out-dir",
                str(tmp_path / "refused"),
            ]
        )
    assert not (tmp_path / "refused").exists()
    # stage 1's value
    train_stage2.main(
        [
            *stage2,
            "--resampler-from-stage1",
            "true",
            "--resampler-num-latents",
            "4",
            "--out-dir",
            str(tmp_path / "same"),
        ]
    )
    train_stage2.main(
        [*stage2, "--resampler-num-latents", "8", "--out-dir", str(tmp_path / "fresh")]
    )
    assert load_checkpoint(str(tmp_path / "fresh"))["spec"].resampler.num_latents == 8
    with pytest.raises(
        ValueError, match="--cross-attention pooler chooses the VAdapter's fresh front"
    ):
        train_stage2.main(
            [
                *stage2,
                "--adapter",
                "mlp",
                "--cross-attention",
                "pooler",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(ValueError, match="--resampler-num-latents: --adapter mlp has no resampler"):
        train_stage2.main(
            [
                *stage2,
                "--adapter",
                "mlp",
                "--resampler-num-latents",
                "8",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )


def test_stage2_front_is_fresh_unless_carried_over(chain):
    """The paper's stage 2: a new 1-layer perceiver (or pooler) in front of the stage-1 tiny LM, its
    weights not the stage-1 pooler's; --resampler-from-stage1 true carries the pooler over
    exactly."""
    _, runs, common, frozen, resampler = chain
    vision, lm = load_vision(str(runs["vit"])), load_lm(str(runs["large_lm"]))
    stage1 = load_checkpoint(str(runs["stage1"]))
    pooler = submodule_state(stage1["model"], "adapter.")

    def front(*flags):
        args = train_stage2.parse_args([*common, *frozen, "--stage1", str(runs["stage1"]), *flags])
        adapter, config, _ = train_stage2.build_adapter(args, vision, lm)
        return adapter, config

    for cross_attention, latents_in_keys in (("perceiver", True), ("pooler", False)):
        adapter, config = front(*resampler, "--cross-attention", cross_attention)
        assert (config.depth, config.latents_in_keys, config.final_norm, config.input_dim) == (
            1,
            latents_in_keys,
            True,
            vision.config.dim,
        )
        assert adapter.resampler.latents.shape == pooler["latents"].shape
        assert not torch.equal(adapter.resampler.latents, pooler["latents"]), "a fresh front"
    adapter, config = front("--resampler-from-stage1", "true")
    assert config == stage1["spec"].resampler
    assert all(
        torch.equal(adapter.resampler.state_dict()[key], tensor) for key, tensor in pooler.items()
    )
    assert torch.equal(adapter.input_projection.weight, torch.eye(32)), (
        "the carried path starts as trained"
    )
    with pytest.raises(ValueError, match="--cross-attention pooler chooses"):
        front("--resampler-from-stage1", "true", "--cross-attention", "pooler")
    assert front("--resampler-depth", "6")[1].depth == 6  # the paper's Table 4 six-layer row


def test_bf16_and_compile_on_cpu_follow_fp32_eager_and_resume_eagerly(chain, tmp_path):
    """The CUDA defaults, bf16 autocast and torch.compile, run on CPU too: a few steps of stage 1
    and stage 2 follow fp32 eager within bf16's precision, and an eager fp32 run resumes the
    compiled run's checkpoint. Images only, one validation batch: each compiled graph costs 10-30 s
    here."""
    data_dir, runs, _, frozen, resampler = chain
    common = [
        "--data",
        str(data_dir),
        "--tasks",
        "caption",
        "--batch-size",
        "8",
        "--eval-every",
        "1000",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--save-every",
        "3",
        *resampler,
    ]
    eager, compiled = (
        ["--bf16", "false", "--compile", "false"],
        ["--bf16", "true", "--compile", "true"],
    )
    stages = {
        "stage1": (
            train_stage1.main,
            ["--vit", str(runs["vit"]), "--tiny-lm", str(runs["tiny_lm"])],
        ),
        "stage2": (
            train_stage2.main,
            [*frozen, "--adapter", "vadapter", "--stage1", str(runs["stage1"])],
        ),
    }
    for stage, (main, models) in stages.items():
        straight, mixed = tmp_path / f"{stage}_eager", tmp_path / f"{stage}_compiled"
        graphs = [counters["stats"]["unique_graphs"]]
        main([*common, *models, *eager, "--steps", "5", "--out-dir", str(straight)])
        graphs.append(counters["stats"]["unique_graphs"])
        main([*common, *models, *compiled, "--steps", "3", "--out-dir", str(mixed)])
        graphs.append(counters["stats"]["unique_graphs"])
        main(
            [*common, *models, *eager, "--steps", "5", "--out-dir", str(mixed), "--resume", "true"]
        )
        graphs.append(counters["stats"]["unique_graphs"])
        assert graphs[1] == graphs[0] and graphs[2] > graphs[1] and graphs[3] == graphs[2], (
            "compiled only when asked"
        )
        expected, got = losses(straight), losses(mixed)
        assert sorted(got) == list(range(1, 6)) and load_checkpoint(str(mixed))["step"] == 5
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=2e-2), (
                stage,
                step,
                got[step],
                expected[step],
            )
        assert any(abs(got[step] - expected[step]) > 1e-6 for step in (1, 2, 3)), (
            "the compiled steps ran in bf16"
        )


def test_frozen_models_load_in_bf16_without_a_random_initialisation(chain, monkeypatch):
    """load_vision / load_lm build on the meta device and assign the checkpoint's tensors: no
    initialiser touches real memory, and the weights are the checkpoint's, cast to the asked
    dtype."""
    _, runs, *_ = chain
    devices = []
    for name in ("normal_", "trunc_normal_"):
        real = getattr(torch.nn.init, name)

        def watched(*args, real=real, **kwargs):
            devices.append((args[0] if args else kwargs["tensor"]).device.type)
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, watched)
    vision, lm = (
        load_vision(str(runs["vit"]), torch.bfloat16),
        load_lm(str(runs["large_lm"]), torch.bfloat16),
    )
    assert devices and set(devices) == {"meta"}
    saved = load_checkpoint(str(runs["large_lm"]))["model"]
    assert all(
        torch.equal(tensor, saved[name].bfloat16()) for name, tensor in lm.state_dict().items()
    )
    assert all(
        p.dtype == torch.bfloat16 and p.device.type == "cpu"
        for p in [*vision.parameters(), *lm.parameters()]
    )


def test_frozen_bf16_weights_need_autocast_and_train_the_fp32_adapter_like_fp32(chain, tmp_path):
    _, runs, common, frozen, _ = chain
    stage2 = [
        *common,
        *frozen,
        "--adapter",
        "vadapter",
        "--stage1",
        str(runs["stage1"]),
        "--steps",
        "3",
        "--tasks",
        "caption",
        "--self-contained",
        "true",
    ]
    with pytest.raises(ValueError, match="--frozen-dtype bf16 needs bf16 autocast"):
        train_stage2.main(
            [*stage2, "--frozen-dtype", "bf16", "--out-dir", str(tmp_path / "refused")]
        )
    train_stage2.main(
        [*stage2, "--bf16", "true", "--frozen-dtype", "fp32", "--out-dir", str(tmp_path / "fp32")]
    )
    train_stage2.main(
        [*stage2, "--bf16", "true", "--frozen-dtype", "bf16", "--out-dir", str(tmp_path / "bf16")]
    )
    state = load_checkpoint(str(tmp_path / "bf16"))["model"]
    assert all(state[k].dtype == torch.bfloat16 for k in state if k.startswith(("vision.", "lm.")))
    assert all(state[k].dtype == torch.float32 for k in state if k.startswith("adapter."))
    expected, got = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert sorted(got) == [1, 2, 3] and all(
        got[s] == pytest.approx(expected[s], rel=2e-2) for s in got
    )


def test_batches_all_in_the_feature_cache_are_not_decoded_and_train_the_same(
    tmp_path, tokenizer, monkeypatch, one_thread
):
    """Once the feature cache holds every image or video of a batch, train_vlm fetches it without
    decoding pixels (data.VisionTextDataset.__getitems__), and the run's losses are those of a run
    that decodes every batch, bit for bit: images, videos of 2 and 3 frames, two micro-batches a
    step, an unreadable image skipped (--on-bad-sample skip)."""
    folder = tmp_path / "data"
    sizes = dict(train_images=4, val_images=2, test_images=1, train_videos=2, val_videos=1)
    synthetic.generate(
        folder, synthetic.WorldConfig(**sizes, test_videos=1, num_frames=3, image_size=32, seed=1)
    )
    (folder / data.TOKENIZER_FILE).write_bytes(tokenizer.model.serialized_model_proto())
    sorted((folder / "images" / "train").iterdir())[0].write_bytes(b"not an image")
    sorted(sorted((folder / "videos" / "train").iterdir())[0].iterdir())[-1].unlink()
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    data_config = DataConfig.from_flags(
        parser.parse_args(["--data", str(folder), "--on-bad-sample", "skip"]), None
    )
    spec = toy_spec("perceiver", vocab_size=tokenizer.vocab_size)
    loads, undecoded = [], Counter()
    load_pixels, fetched = data.load_pixels, FeatureCache.fetched

    def counted_load(path, *args, **kwargs):
        loads.append(path)
        return load_pixels(path, *args, **kwargs)

    def counted_fetch(cache, image_ids, features, num_frames, device):
        undecoded["image" if num_frames is None else "video"] += len(image_ids)
        return fetched(cache, image_ids, features, num_frames, device)

    monkeypatch.setattr(data, "load_pixels", counted_load)
    monkeypatch.setattr(FeatureCache, "fetched", counted_fetch)

    def run(name: str) -> tuple[dict, dict, int]:
        loads.clear()
        torch.manual_seed(0)
        config = trainer.TrainConfig(
            out_dir=str(tmp_path / name),
            **dict(steps=12, batch_size=8, grad_accum=2, eval_every=4, eval_batches=1),
            **dict(log_every=1, save_every=100, device="cpu", compile=False, bf16=False),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unreadable image, named
            summary = train_vlm(build_vlm(spec), data_config, "stage2", spec, config)
        return summary, losses(tmp_path / name), len(loads)

    skipping, skipping_losses, skipping_loads = run("skipping")
    with monkeypatch.context() as decode_all:
        decode_all.setattr(
            data.VisionTextDataset, "__getitems__", lambda self, indices: [self[i] for i in indices]
        )
        decoding, decoding_losses, decoding_loads = run("decoding")
    assert undecoded["image"] > 0 and undecoded["video"] > 0
    assert decoding_loads - skipping_loads == undecoded.total()
    assert skipping_losses == decoding_losses and sorted(skipping_losses) == list(range(1, 13))
    assert skipping["val_loss"] == decoding["val_loss"] and len(skipping["val_loss"]) == 3
    assert skipping["skipped_samples"] == decoding["skipped_samples"] == {"unreadable image": 1}


def test_worker_processes_decode_every_batch_and_train_as_one_process_does(
    tmp_path, tokenizer, monkeypatch, one_thread
):
    """--num-workers 2: the workers' datasets hold no feature cache (their copy would be stale), so
    every batch comes with its pixels, and the run's losses are those of --num-workers 0, which
    fetches the batches all in the cache without decoding them."""
    folder = tmp_path / "data"
    sizes = dict(train_images=4, val_images=2, test_images=1, train_videos=2, val_videos=1)
    synthetic.generate(
        folder, synthetic.WorldConfig(**sizes, test_videos=1, num_frames=2, image_size=32, seed=1)
    )
    (folder / data.TOKENIZER_FILE).write_bytes(tokenizer.model.serialized_model_proto())
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    data_config = DataConfig.from_flags(parser.parse_args(["--data", str(folder)]), None)
    spec = toy_spec("perceiver", vocab_size=tokenizer.vocab_size)
    undecoded, fetched = [], FeatureCache.fetched

    def counted_fetch(cache, image_ids, *arguments):
        undecoded.extend(image_ids)
        return fetched(cache, image_ids, *arguments)

    monkeypatch.setattr(FeatureCache, "fetched", counted_fetch)
    runs = {}
    for workers in (0, 2):
        undecoded.clear()
        torch.manual_seed(0)
        config = trainer.TrainConfig(
            out_dir=str(tmp_path / f"workers{workers}"),
            **dict(steps=8, batch_size=4, eval_every=4, eval_batches=1, num_workers=workers),
            **dict(log_every=1, save_every=100, device="cpu", compile=False, bf16=False),
        )
        summary = train_vlm(build_vlm(spec), data_config, "stage2", spec, config)
        runs[workers] = (summary["val_loss"], losses(config.out_dir), len(undecoded))
    assert runs[0][2] > 0 and runs[2][2] == 0, "cached batches skip decoding only without workers"
    assert runs[0][:2] == runs[2][:2] and sorted(runs[2][1]) == list(range(1, 9))


def test_the_stage_scripts_print_their_summary_from_rank_0_only(monkeypatch, capsys):
    """Under torchrun every rank runs the script: RANK 1 prints no "done" line, RANK 0 does (the
    models and the training are stand-ins: only the last line is under test). And stage 2's
    --checkpoint-lm reaches the frozen LM."""
    model = build_vlm(toy_spec("mlp"))
    trained = []
    for script in (train_stage1, train_stage2):
        monkeypatch.setattr(script, "load_vision", lambda path, *dtype_device: model.vision)
        monkeypatch.setattr(script, "load_lm", lambda path, *dtype_device, **device: model.lm)
        monkeypatch.setattr(script, "frozen_reference", lambda path: {"path": path})
        monkeypatch.setattr(script, "setup_distributed", lambda device: (0, 1, torch.device("cpu")))
        monkeypatch.setattr(
            script,
            "train_vlm",
            lambda *arguments: trained.append(arguments[0]) or {"train_loss": 0.5},
        )
    stage1 = ["--data", "d", "--vit", "v", "--tiny-lm", "t", "--bf16", "false"]
    stage2 = ["--data", "d", "--vit", "v", "--lm", "l", "--adapter", "mlp", "--bf16", "false"]
    for rank, printed in (("1", ""), ("0", "{'train_loss': 0.5}\n")):
        monkeypatch.setenv("RANK", rank)
        assert train_stage1.main(stage1) == {"train_loss": 0.5}
        assert capsys.readouterr().out == (printed and f"[stage1] done: {printed}")
        assert train_stage2.main(stage2) == {"train_loss": 0.5}
        assert capsys.readouterr().out == (printed and f"[stage2 mlp] done: {printed}")
    assert not trained[-1].lm.checkpoint_blocks, "the frozen LM keeps its activations by default"
    train_stage2.main([*stage2, "--checkpoint-lm", "true"])
    assert trained[-1].lm.checkpoint_blocks, "--checkpoint-lm true recomputes its blocks"

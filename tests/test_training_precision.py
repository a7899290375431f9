"""The stage scripts in other precisions: bf16 autocast and torch.compile on CPU follow fp32 eager,
frozen models load straight into bf16, and frozen bf16 weights train the fp32 adapter as fp32 ones
do."""

import pytest
import torch
from torch._dynamo.utils import counters

import train_stage1
import train_stage2
from conftest import losses
from support.checkpoints import load_checkpoint
from support.models import load_lm, load_vision


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

"""The stage scripts (pretrain.py, train_stage1.py, train_stage2.py) on the trainer: the chain runs
(the `chain` fixture of conftest.py), each stage loads the previous one's checkpoint, stage 2 trains
only its adapter from a fresh or carried-over front, wrong stages and flags are refused, and only
rank 0 prints."""

import pytest
import torch

import train_stage1
import train_stage2
import trainer
from conftest import losses, toy_spec
from support.checkpoints import load_checkpoint, submodule_state
from support.model_spec import build_vlm
from support.models import load_lm, load_vision, load_vlm


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

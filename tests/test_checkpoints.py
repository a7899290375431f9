"""checkpoints.py: the typed spec survives a weights-only round trip, a model is rebuilt from the
file alone, saving is atomic, frozen models are referenced by hash and load in bf16, errors are
clear. Resuming: test_checkpoints_resume.py."""

import hashlib
import os
import re
from dataclasses import replace

import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import data
from conftest import REPO, toy_spec
from palm_decoder import PaLMConfig
from support.checkpoints import (
    frozen_reference,
    load_checkpoint,
    save_checkpoint,
    submodule_state,
)
from support.model_spec import ModelSpec, build_vlm
from support.models import load_lm, load_tokenizer, load_vision


@pytest.mark.parametrize("adapter", ["resampler", "perceiver", "vadapter", "mlp"])
def test_a_model_is_rebuilt_from_the_file_alone(tmp_path, adapter):
    torch.manual_seed(0)
    spec = replace(toy_spec(adapter), adapter_init="lm" if adapter == "vadapter" else None)
    model = build_vlm(spec)
    save_checkpoint(
        tmp_path / "run" / "checkpoint.pt",
        {"stage": "stage2", "spec": spec.to_dict(), "model": model.state_dict(), "step": 3},
    )
    checkpoint = load_checkpoint(str(tmp_path / "run"))  # a run folder, or the file itself
    assert isinstance(checkpoint["spec"], ModelSpec) and checkpoint["spec"] == spec
    rebuilt = build_vlm(checkpoint["spec"])
    rebuilt.load_state_dict(checkpoint["model"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert list(tmp_path.joinpath("run").iterdir()) == [tmp_path / "run" / "checkpoint.pt"], (
        "no temp file left"
    )


def test_a_text_only_spec_round_trips():
    spec = ModelSpec(lm=PaLMConfig(vocab_size=50, dim=32, depth=1, num_heads=4))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["vision"] is None and spec.adapter == "none"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lm": {"vocab_size": 50}, "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"adapter": "resampler"}, "no 'lm'"),
        (
            {"lm": {"vocab_size": 50, "width": 3}},
            r"spec\['lm'\] has unknown field\(s\) \['width'\]",
        ),
    ],
)
def test_a_bad_spec_names_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_dict(values)


def test_mismatched_widths_and_bad_adapters_raise_clear_errors():
    spec = toy_spec("resampler")
    spec.resampler = replace(spec.resampler, dim=40)
    with pytest.raises(ValueError, match="LM's dim"):
        build_vlm(spec)
    with pytest.raises(
        ValueError,
        match=r"'linear'; expected one of \['resampler', 'perceiver', 'vadapter', 'mlp'\]",
    ):
        build_vlm(replace(toy_spec("perceiver"), adapter="linear"))
    with pytest.raises(ValueError, match="'vadapter' needs spec.resampler"):
        build_vlm(replace(toy_spec("vadapter"), resampler=None))


def test_the_vadapter_front_may_be_wider_than_the_tiny_lm():
    """The FC before the tiny LM maps the widths: no equality asked of the spec."""
    spec = toy_spec("vadapter", tiny_dim=32)
    spec.resampler = replace(spec.resampler, dim=40)
    model = build_vlm(spec)
    assert model.adapter.input_projection.weight.shape == (32, 40)
    assert model.visual_tokens(torch.randn(1, 3, 32, 32)).shape == (1, 4, 64)


def test_visual_tokens_of_each_adapter():
    """What the trainer leaves the text: the resampler's latents, or one token per patch for the
    MLP."""
    assert toy_spec("vadapter", num_latents=5).num_visual_tokens == 5
    assert toy_spec("mlp", image_size=48).num_visual_tokens == 36  # 6 x 6 patches of 8 pixels


def test_wrong_stage_missing_file_and_foreign_file_are_refused(tmp_path):
    spec = toy_spec()
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"stage": "stage1", "spec": spec.to_dict(), "model": {}}
    )
    with pytest.raises(ValueError, match="written by stage 'stage1'; expected 'stage2'"):
        load_checkpoint(str(tmp_path), expected_stage="stage2")
    with pytest.raises(ValueError, match="expected 'pretrain-lm' or 'stage2'"):
        load_checkpoint(str(tmp_path), expected_stage=("pretrain-lm", "stage2"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "absent"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"stage": "stage1", "model": {}, "step": 1})

    def crash(payload, file):
        with open(file, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"stage": "stage1", "model": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(str(path))["step"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_later_stages_take_the_vision_encoder_and_the_lm_out_of_a_stage1_checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = toy_spec("resampler")
    state = build_vlm(spec).state_dict()
    save_checkpoint(
        tmp_path / "checkpoint.pt", {"stage": "stage1", "spec": spec.to_dict(), "model": state}
    )
    vision, lm = load_vision(str(tmp_path)), load_lm(str(tmp_path))
    assert vision.config == spec.vision and lm.config == spec.lm
    for prefix, module in (("vision.", vision), ("lm.", lm)):
        for name, tensor in submodule_state(state, prefix).items():
            assert torch.equal(module.state_dict()[name], tensor), prefix + name
    with pytest.raises(ValueError, match="expected 'pretrain-lm' or 'stage1'"):
        save_checkpoint(
            tmp_path / "two" / "checkpoint.pt",
            {"stage": "stage2", "spec": spec.to_dict(), "model": state},
        )
        load_lm(str(tmp_path / "two"))


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    texts = ["a red circle", "two blue squares", "a green star above a cross"] * 4
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    assert (
        load_tokenizer(tmp_path / "tok.model", tokenizer.vocab_size).vocab_size
        == tokenizer.vocab_size
    )
    with pytest.raises(
        ValueError, match=f"has {tokenizer.vocab_size} pieces but the model's LM has vocab_size 64"
    ):
        load_tokenizer(tmp_path / "tok.model", 64)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty"])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(
        path,
        {
            "stage": "stage1",
            "spec": toy_spec().to_dict(),
            "model": build_vlm(toy_spec()).state_dict(),
        },
    )
    content = path.read_bytes()
    path.write_bytes(
        {"truncated": content[: len(content) // 2], "zeroed": bytes(len(content)), "empty": b""}[
            damage
        ]
    )
    with pytest.raises(
        ValueError, match=f"{re.escape(str(path))} cannot be read, truncated or corrupt"
    ) as error:
        load_checkpoint(str(tmp_path / "run"))
    assert type(error.value).__name__ == "CheckpointError"  # what resume falls back on
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_vision(str(path))


def test_frozen_references_hash_a_file_whole_and_an_hf_folder_by_its_ends(tmp_path):
    """A checkpoint file: sha256 of all its bytes, read again once rewritten. An hf: folder: each
    *.safetensors file's name, size and the sha256 of its first and last MiB (a same-size edit in
    the middle goes unseen, as documented)."""
    vit = tmp_path / "vit.pt"
    vit.write_bytes(b"weights" * 1000)
    assert frozen_reference(str(vit)) == {
        "source": str(vit),
        "bytes": 7000,
        "sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
    }
    vit.write_bytes(b"WEIGHTS" * 1000)
    os.utime(vit, ns=(1, 1))  # another modification time: the cached hash is not reused
    assert frozen_reference(str(vit))["sha256"] == hashlib.sha256(b"WEIGHTS" * 1000).hexdigest()
    folder = tmp_path / "gemma"
    folder.mkdir()
    shards = {
        "model-00001.safetensors": bytes(range(256)) * 10_000,
        "model-00002.safetensors": b"x" * 100,
    }
    for name, content in shards.items():
        (folder / name).write_bytes(content)
    (folder / "config.json").write_text("{}")
    lines = [
        f"{name} {len(content)} "
        f"{hashlib.sha256(content[: 2**20] + content[max(len(content) - 2**20, 0) :]).hexdigest()}"
        for name, content in shards.items()
    ]
    reference = frozen_reference(f"hf:{folder}")
    assert reference == {
        "source": f"hf:{folder}",
        "bytes": 2_560_100,
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }
    middle, end = (
        bytearray(shards["model-00001.safetensors"]),
        bytearray(shards["model-00001.safetensors"]),
    )
    middle[1_280_000] ^= 1
    end[-1] ^= 1
    for content, seen in ((middle, False), (end, True)):
        (folder / "model-00001.safetensors").write_bytes(content)
        os.utime(folder / "model-00001.safetensors", ns=(2 + seen, 2 + seen))
        assert (frozen_reference(f"hf:{folder}")["sha256"] != reference["sha256"]) is seen
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        frozen_reference(f"hf:{tmp_path / 'nowhere'}")


class MadeTensors(TorchDispatchMode):
    """Records the dtype of every tensor an operator makes off the meta device."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, op, types, args=(), kwargs=None):
        result = op(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self.dtypes.append(tensor.dtype)
        return result


@pytest.mark.parametrize("part", ["vit", "large_lm"])
def test_frozen_models_load_in_bf16_without_an_fp32_copy(part):
    """The shipped stage-0 files (bf16) read in bf16 come out in bf16 on the device asked for, and
    no operator made an fp32 tensor on the way (the file read straight in the frozen dtype, not
    widened to fp32 first and cast back)."""
    load = load_vision if part == "vit" else load_lm
    path = str(REPO / "stage0" / f"{part}.safetensors")
    with MadeTensors() as made:
        model = load(path, torch.bfloat16, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.float32 not in made.dtypes
    assert {p.dtype for p in load(path).parameters()} == {torch.float32}  # fp32 when asked

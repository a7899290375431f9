"""Hugging Face folders written here (no transformers) -> ViT / PaLMDecoder / the tokenizer: a
folder loads back exactly, sharded or not; a bad tensor, an unsupported config field or another
architecture is an error naming it; only local files are read; an untied output head is frozen."""

import json

import pytest
import torch
from hf_folders import LLAMA_CONFIG, llama_folder, siglip_folder, train_tokenizer
from safetensors.torch import save_file

import data
from palm_decoder import PaLMDecoder
from resampler import PerceiverResampler, ResamplerConfig
from support.models import load_lm, load_vision
from vit import ViT
from vlm import VAdapter

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.mark.parametrize("shards", [1, 3])
def test_a_written_folder_loads_back_exactly(tmp_path, shards):
    written = llama_folder(tmp_path / "llama", shards=shards)
    loaded = load_lm(f"hf:{tmp_path / 'llama'}")
    assert loaded.config == written.config and not loaded.config.tie_embeddings
    for name, tensor in written.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # trainable, like any module
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    vision = siglip_folder(tmp_path / "siglip")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            load_vision(f"hf:{tmp_path / 'siglip'}")(pixels), vision(pixels), atol=0, rtol=0
        )


def edit_tensors(folder, edit):
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
            "tensor 'model.layers.1.mlp.up_proj.weight' is missing",
        ),
        (
            lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}),
            "model.layers.0.self_attn.q_norm.weight",
        ),
        (
            lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.ones(24, 32)}),
            r"tensor 'model.layers.0.self_attn.k_proj.weight' has shape \(24, 32\)",
        ),
    ],
)
def test_a_bad_tensor_is_named(tmp_path, edit, message):
    llama_folder(tmp_path)
    edit_tensors(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        PaLMDecoder.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": "bert"}, "model_type 'bert' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope type 'llama3'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ],
)
def test_an_unsupported_config_field_is_named(tmp_path, changes, message):
    llama_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_CONFIG, **changes}))
    with pytest.raises(ValueError, match=message):
        PaLMDecoder.from_pretrained(tmp_path)


def test_a_vision_folder_of_another_architecture_is_named(tmp_path):
    siglip_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(
        ValueError, match="model_type 'bert' is not supported by ViT.from_pretrained"
    ):
        ViT.from_pretrained(tmp_path)


def test_loaders_read_local_files_only(tmp_path):
    for load in (ViT.from_pretrained, PaLMDecoder.from_pretrained):
        # a hub name is not a folder
        with pytest.raises(FileNotFoundError, match="google/siglip-base-patch16-224"):
            load("google/siglip-base-patch16-224")
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
            load(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        PaLMDecoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle is never read")
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors"):
        load_lm(f"hf:{tmp_path}")


def test_tokenizer_from_a_folder(tmp_path):
    texts = ["a red circle left of a blue square", "what colour is the circle? red"] * 20
    # Llama's ids, no pad
    train_tokenizer(
        tmp_path / "tokenizer.model", texts, 30, unk_id=0, bos_id=1, eos_id=2, pad_id=-1
    )
    tokenizer = data.Tokenizer(f"hf:{tmp_path}")
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)  # the file's own ids
    assert tokenizer.pad_id == tokenizer.eos_id  # no pad piece: pads with eos
    assert tokenizer.decode(tokenizer.encode("a red circle")) == "a red circle"
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.model"):
        data.Tokenizer(f"hf:{tmp_path}")


def test_vadapter_freezes_an_untied_output_head(tmp_path):
    tiny_lm = llama_folder(tmp_path)
    resampler = PerceiverResampler(
        ResamplerConfig(input_dim=32, dim=32, depth=1, num_latents=4, num_heads=4)
    )
    VAdapter(resampler, tiny_lm, lm_dim=48)  # freezes the tiny LM's output head
    assert (
        not tiny_lm.output_head.weight.requires_grad
        and not tiny_lm.token_embedding.weight.requires_grad
    )

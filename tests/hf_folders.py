"""Local Hugging Face folders for the test_hf*.py files: nothing may be fetched, every parameter
perturbed (norm scales and biases included, so that a mapping error cannot hide behind an init of
ones and zeros), and folders written here from our own models, the weight tables read backwards,
which need only safetensors."""

import json
import os

import sentencepiece
import torch
from safetensors.torch import save_file

from palm_decoder import PaLMConfig, PaLMDecoder
from support.hf_decoder import GEMMA_AND_LLAMA_WEIGHTS, palm_fields_from_hugging_face
from support.hf_weights import SIGLIP_VISION_WEIGHTS, expand_table, vit_fields_from_hugging_face
from vit import ViT, ViTConfig

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be fetched


def perturbed(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


LLAMA_CONFIG = {  # the older config.json spelling (rope_theta, rope_scaling) on purpose
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
SIGLIP_CONFIG = {
    "architectures": ["SiglipVisionModel"],
    "model_type": "siglip_vision_model",
    **VISION,
}


def folder_tensors(model, table: dict) -> dict:
    """Our state dict under the folder's names: the weight table read backwards."""
    state, tensors = model.state_dict(), {}
    for ours, theirs in table.items():
        names = (theirs,) if isinstance(theirs, str) else theirs
        # their table has no batch axis
        tensor = state[ours][0] if ours == "position_embedding" else state[ours]
        for name, piece in zip(names, tensor.chunk(len(names))):
            tensors[name] = piece.clone()
    return tensors


def write_folder(folder, config: dict, tensors: dict, shards: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = names[shard::shards]
        save_file({name: tensors[name] for name in part}, folder / file)
        weight_map.update({name: file for name in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def llama_folder(folder, vocab_size=100, shards=1, **changes):
    config = {**LLAMA_CONFIG, "vocab_size": vocab_size, **changes}
    torch.manual_seed(0)
    model = perturbed(PaLMDecoder(PaLMConfig(**palm_fields_from_hugging_face(config, folder))))
    table = {
        **GEMMA_AND_LLAMA_WEIGHTS,
        **({} if config["tie_word_embeddings"] else {"output_head.weight": "lm_head.weight"}),
    }
    write_folder(
        folder, config, folder_tensors(model, expand_table(table, model.config.depth)), shards
    )
    return model


def siglip_folder(folder):
    torch.manual_seed(0)
    model = perturbed(ViT(ViTConfig(**vit_fields_from_hugging_face(SIGLIP_CONFIG, folder)[0])))
    write_folder(
        folder,
        SIGLIP_CONFIG,
        folder_tensors(model, expand_table(SIGLIP_VISION_WEIGHTS, model.config.depth)),
    )
    return model


def train_tokenizer(path, texts, vocab_size, **ids):
    with open(path, "wb") as out:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=out,
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
            **ids,
        )

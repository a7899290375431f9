"""Local Hugging Face folders -> ViT / PaLMDecoder: parity with transformers, errors that name the
tensor or field at fault, local files only, and the stage scripts taking `hf:FOLDER`.

Parity tests build small random models with transformers from a config object (no download),
perturb every parameter (norm scales and biases included, so that a mapping error cannot hide
behind an init of ones and zeros), save them, load them into our modules and compare in float32.
They skip without transformers (a test-only extra: requirements-test.txt). The other tests write
folders themselves from our own models, the weight tables read backwards, and need only safetensors.
"""

import json
import os
import re
import socket

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may be fetched

import pytest
import sentencepiece
import torch
from PIL import Image
from safetensors.torch import save_file

import data
import train_stage1
import train_stage2
from evaluation.decoding import generate
from palm_decoder import PaLMConfig, PaLMDecoder
from resampler import PerceiverResampler, ResamplerConfig
from stage0 import synthetic
from support.checkpoints import load_checkpoint
from support.hf_decoder import GEMMA_AND_LLAMA_WEIGHTS, palm_fields_from_hugging_face
from support.hf_weights import SIGLIP_VISION_WEIGHTS, expand_table, vit_fields_from_hugging_face
from support.model_spec import build_vlm
from support.models import load_lm, load_vision
from vit import ViT, ViTConfig
from vlm import VAdapter

ATOL = 1e-4


def transformers_or_skip():
    return pytest.importorskip(
        "transformers",
        reason="parity with transformers needs the test-only extra "
        "(pip install -r requirements-test.txt)",
    )


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs with sockets refused: loading a folder must never reach for the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def perturbed(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def saved(model, folder):
    perturbed(model).save_pretrained(folder)
    return model


# ---------------------------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------------------------

VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100
)


@pytest.mark.parametrize(
    "architecture, hidden_act", [("CLIPVisionModel", "quick_gelu"), ("CLIPModel", "gelu")]
)
def test_clip_patch_features_match_transformers(tmp_path, architecture, hidden_act):
    transformers = transformers_or_skip()
    vision = transformers.CLIPVisionConfig(
        **VISION, hidden_act=hidden_act, attn_implementation="eager"
    )
    if architecture == "CLIPModel":  # the full model: its text tower and projections are left out
        config = transformers.CLIPConfig(vision_config=vision.to_dict(), text_config=TEXT)
        config._attn_implementation = "eager"
        hf = saved(transformers.CLIPModel(config), tmp_path)
    else:
        hf = saved(transformers.CLIPVisionModel(vision), tmp_path)
    ours = ViT.from_pretrained(tmp_path)
    assert ours.config.class_token and ours.config.pre_norm and not ours.config.patch_bias
    tower = getattr(hf, "vision_model", hf)
    # 48: the patch positions resized bicubically, the class token's kept, on both sides
    for side in (
        32,
        48,
    ):
        pixels = torch.randn(2, 3, side, side)
        with torch.no_grad():
            # What we match: post_layernorm on every token (CLIP applies it to the class token
            # only), class token dropped.
            hidden = tower(
                pixel_values=pixels, interpolate_pos_encoding=side != 32
            ).last_hidden_state
            # (2, N, 32)
            torch.testing.assert_close(
                ours(pixels), tower.post_layernorm(hidden)[:, 1:], atol=ATOL, rtol=0
            )


@pytest.mark.parametrize("architecture", ["SiglipVisionModel", "SiglipModel"])
def test_siglip_patch_features_match_transformers(tmp_path, architecture):
    transformers = transformers_or_skip()
    # with its pooling head
    vision = transformers.SiglipVisionConfig(**VISION, attn_implementation="eager")
    if architecture == "SiglipModel":
        config = transformers.SiglipConfig(vision_config=vision.to_dict(), text_config=TEXT)
        config._attn_implementation = "eager"
        hf = saved(transformers.SiglipModel(config), tmp_path)
    else:
        hf = saved(transformers.SiglipVisionModel(vision), tmp_path)
    ours = load_vision(f"hf:{tmp_path}")
    tower = getattr(hf, "vision_model", hf)
    for side in (32, 48):
        pixels = torch.randn(2, 3, side, side)
        with torch.no_grad():
            expected = tower(
                pixel_values=pixels, interpolate_pos_encoding=side != 32
            ).last_hidden_state  # (2, N, 32)
            torch.testing.assert_close(ours(pixels), expected, atol=ATOL, rtol=0)


def gemma(transformers, folder):
    """MQA with head_dim 16 != 32 / 4, GeGLU, (1 + w) RMSNorm, sqrt(dim) embedding scale, tied
    head."""
    config = transformers.GemmaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    return saved(transformers.GemmaForCausalLM(config), folder)


def llama(transformers, folder):
    """Grouped-query (2 key/value heads for 4), SwiGLU, RMSNorm, untied lm_head."""
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return saved(transformers.LlamaForCausalLM(config), folder)


@pytest.mark.parametrize("build", [gemma, llama])
def test_decoder_logits_match_transformers_with_and_without_a_prefix(tmp_path, build):
    hf = build(transformers_or_skip(), tmp_path)
    ours = load_lm(f"hf:{tmp_path}")
    assert ours.config.rope_base == 500.0 and ours.config.block == "sequential"
    input_ids = torch.randint(100, (2, 7))
    prefix = torch.randn(2, 3, 32)  # visual tokens: passed as embeddings, never scaled
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids)[0], hf(input_ids=input_ids).logits, atol=ATOL, rtol=0
        )
        # transformers scales token embeddings inside its embedding module (Gemma), not
        # inputs_embeds.
        embeddings = torch.cat([prefix, hf.get_input_embeddings()(input_ids)], dim=1)
        expected = hf(inputs_embeds=embeddings).logits[:, 3:]  # (2, 7, 100): the text positions
        torch.testing.assert_close(ours(input_ids, prefix=prefix)[0], expected, atol=ATOL, rtol=0)


def test_gemma_greedy_generation_with_the_kv_cache_matches_transformers(tmp_path):
    hf = gemma(transformers_or_skip(), tmp_path)
    ours = PaLMDecoder.from_pretrained(tmp_path)
    prompts = [[5, 17, 42, 8], [9, 3, 71, 20, 66, 14]]  # different lengths: ours pads on the left
    expected = []
    with torch.no_grad():
        for prompt in prompts:  # transformers without a cache: the full forward at every step
            ids = torch.tensor([prompt])
            for _ in range(5):
                ids = torch.cat(
                    [ids, hf(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1
                )
            expected.append(ids[0, len(prompt) :].tolist())
    assert generate(ours, prompts, max_new_tokens=5) == expected


# ---------------------------------------------------------------------------------------------
# Folders written here (no transformers): round trip, shards, errors
# ---------------------------------------------------------------------------------------------

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


def test_stages_take_hugging_face_folders_with_each_stage_on_its_lms_tokenizer(tmp_path):
    """Stage 1 decodes text with the tiny LM (a Llama folder), so its data uses the tiny LM's
    tokenizer; stage 2 decodes with the large LM (another Llama folder, another vocabulary), so its
    data uses the large LM's tokenizer. The tiny LM reads no token ids in stage 2."""
    world = tmp_path / "data"
    synthetic.generate(
        world,
        synthetic.WorldConfig(
            train_images=16,
            val_images=8,
            test_images=4,
            train_videos=0,
            val_videos=0,
            test_videos=0,
            image_size=32,
        ),
    )
    texts = data.training_texts(world)
    tiny, large = tmp_path / "tiny", tmp_path / "large"
    for folder, vocab_size in ((tiny, 60), (large, 90)):
        folder.mkdir()
        train_tokenizer(
            folder / "tokenizer.model", texts, vocab_size, pad_id=0, unk_id=1, bos_id=2, eos_id=3
        )
    tiny_vocab, large_vocab = (
        data.Tokenizer(f"hf:{folder}").vocab_size for folder in (tiny, large)
    )
    assert tiny_vocab != large_vocab
    llama_folder(tiny, vocab_size=tiny_vocab)  # untied head: VAdapter must freeze it in stage 2
    llama_folder(large, vocab_size=large_vocab, hidden_size=48, tie_word_embeddings=True)
    siglip_folder(tmp_path / "siglip")
    fast = [
        "--data",
        str(world),
        "--tasks",
        "caption",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--log-every",
        "1",
        "--resampler-num-latents",
        "4",
    ]
    vit = ["--vit", f"hf:{tmp_path / 'siglip'}"]
    train_stage1.main(
        [
            *fast,
            *vit,
            "--tiny-lm",
            f"hf:{tiny}",
            "--tokenizer",
            f"hf:{tiny}",
            "--out-dir",
            str(tmp_path / "stage1"),
        ]
    )
    # rebuilt from the file alone below
    train_stage2.main(
        [
            *fast,
            *vit,
            "--lm",
            f"hf:{large}",
            "--tokenizer",
            f"hf:{large}",
            "--adapter",
            "vadapter",
            "--stage1",
            str(tmp_path / "stage1"),
            "--out-dir",
            str(tmp_path / "stage2"),
            "--self-contained",
            "true",
        ]
    )
    checkpoint = load_checkpoint(str(tmp_path / "stage2"), expected_stage="stage2")
    assert (
        checkpoint["spec"].lm.vocab_size == large_vocab
        and checkpoint["spec"].tiny_lm.vocab_size == tiny_vocab
    )
    model = build_vlm(checkpoint["spec"])  # rebuilt from the file alone
    model.load_state_dict(checkpoint["model"])
    trained = {name for name, _ in model.trainable_parameters()}
    assert trained and all(name.startswith("adapter.") for name in trained)
    assert "adapter.tiny_lm.output_head.weight" not in trained
    # the tiny LM's tokenizer with the large LM: refused
    with pytest.raises(ValueError, match="vocab_size"):
        train_stage2.main(
            [
                *fast,
                *vit,
                "--lm",
                f"hf:{large}",
                "--tokenizer",
                f"hf:{tiny}",
                "--adapter",
                "vadapter",
                "--stage1",
                str(tmp_path / "stage1"),
                "--out-dir",
                str(tmp_path / "mismatch"),
            ]
        )
    # the data's own
    train_tokenizer(world / data.TOKENIZER_FILE, texts, 40, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
    assert data.Tokenizer(world / data.TOKENIZER_FILE).vocab_size != large_vocab
    # no --tokenizer: the fix is named
    with pytest.raises(ValueError, match=re.escape(f"give --tokenizer hf:{large} ")):
        train_stage2.main(
            [
                *fast,
                *vit,
                "--lm",
                f"hf:{large}",
                "--adapter",
                "vadapter",
                "--stage1",
                str(tmp_path / "stage1"),
                "--out-dir",
                str(tmp_path / "no_tokenizer"),
            ]
        )


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("width, height", [(53, 37), (29, 70)])
def test_pixels_match_transformers_image_processor(tmp_path, family, width, height):
    """The folder's preprocessor_config.json (statistics, resize mode) gives the pixels
    transformers' own processor gives: CLIP's short-side resize + centre crop, SigLIP's square
    resize, each with its folder's mean and std (SigLIP's here not the default 0.5, so the file is
    what is read)."""
    transformers = transformers_or_skip()
    if family == "clip":
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        transformers.CLIPVisionConfig(**VISION).save_pretrained(tmp_path)
    else:
        processor = transformers.SiglipImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]
        )
        transformers.SiglipVisionConfig(**VISION).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = ViTConfig(
        **vit_fields_from_hugging_face(
            json.loads((tmp_path / "config.json").read_text()), tmp_path
        )[0]
    )
    assert config.resize == ("crop" if family == "clip" else "square") and config.image_mean != (
        0.5,
        0.5,
        0.5,
    )
    image = tmp_path / "test.png"
    Image.fromarray(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy()).save(
        image
    )
    ours = data.load_pixels(image, config.image_size, **config.pixel_options())
    with Image.open(image) as opened:
        theirs = processor(images=opened, return_tensors="pt").pixel_values[0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


def test_unsupported_preprocessing_is_an_error_naming_the_field(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"resample": 2, "size": {"shortest_edge": 32}})
    )
    with pytest.raises(ValueError, match="resample=2"):
        vit_fields_from_hugging_face({"model_type": "clip_vision_model", **VISION}, tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 40}, "do_center_crop": True})
    )
    with pytest.raises(ValueError, match="shortest_edge 32"):
        vit_fields_from_hugging_face({"model_type": "clip_vision_model", **VISION}, tmp_path)

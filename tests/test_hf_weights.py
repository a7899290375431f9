"""Local Hugging Face folders -> ViT / PaLMDecoder: parity with transformers, for the patch
features, the decoder's logits, greedy generation and the image processor's pixels.

Parity tests build small random models with transformers from a config object (no download),
perturb every parameter, save them, load them into our modules and compare in float32. They skip
without transformers (a test-only extra: requirements-test.txt). Sockets are refused throughout
(conftest.py's no_network)."""

import json

import pytest
import torch
from hf_folders import VISION, perturbed
from PIL import Image

import data
from evaluation.decoding import generate
from palm_decoder import PaLMDecoder
from support.hf_weights import vit_fields_from_hugging_face
from support.models import load_lm, load_vision
from vit import ViT, ViTConfig

pytestmark = pytest.mark.usefixtures("no_network")
ATOL = 1e-4


def transformers_or_skip():
    return pytest.importorskip(
        "transformers",
        reason="parity with transformers needs the test-only extra "
        "(pip install -r requirements-test.txt)",
    )


def saved(model, folder):
    perturbed(model).save_pretrained(folder)
    return model


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

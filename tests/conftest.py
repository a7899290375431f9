"""Helpers shared by the test files: the repository root, one-thread runs, small model specs,
a small synthetic world and its tokenizer."""

import json
from pathlib import Path

import pytest
import torch

import data
from palm_decoder import PaLMConfig
from resampler import ResamplerConfig
from stage0 import synthetic
from support.model_spec import ModelSpec
from vit import ViTConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_spec(
    adapter: str = "resampler",
    *,
    vocab_size: int = 64,
    vision_dim: int = 48,
    lm_dim: int = 64,
    tiny_dim: int = 48,
    image_size: int = 32,
    num_latents: int = 4,
    max_frames: int = 4,
) -> ModelSpec:
    """A model small enough to train in a test: one ViT block on 8x8 patches, a 2-block LM, and for
    "vadapter" a 1-block tiny LM. The resampler is as wide as what reads its latents (the LM, or the
    tiny LM in the VAdapter), with 2 layers for the perceiver baseline, and absent for "mlp"; the LM
    trains in stage 1 only."""
    lm = PaLMConfig(vocab_size=vocab_size, dim=lm_dim, depth=2, num_heads=4, max_seq_len=128)
    tiny_lm = PaLMConfig(vocab_size=vocab_size, dim=tiny_dim, depth=1, num_heads=4, max_seq_len=128)
    return ModelSpec(
        vision=ViTConfig(
            image_size=image_size,
            patch_size=8,
            dim=vision_dim,
            depth=1,
            num_heads=4,
            mlp_dim=2 * vision_dim,
        ),
        resampler=None
        if adapter == "mlp"
        else ResamplerConfig(
            input_dim=vision_dim,
            dim=tiny_dim if adapter == "vadapter" else lm_dim,
            depth=2 if adapter == "perceiver" else 1,
            num_latents=num_latents,
            num_heads=4,
            max_frames=max_frames,
        ),
        lm=lm,
        tiny_lm=tiny_lm if adapter == "vadapter" else None,
        adapter=adapter,
        train_lm=adapter == "resampler",
    )


SMALL_WORLD = dict(
    train_images=40,
    val_images=8,
    test_images=8,
    train_videos=12,
    val_videos=3,
    test_videos=3,
    num_frames=4,
)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def world_texts(world: Path) -> list[str]:
    """The train split's image captions and "question: ... answer: ..." lines."""
    captions = data.read_captions(world / "captions_train.json").examples
    vqa = data.read_vqa(
        world / "questions_train.json",
        world / "annotations_train.json",
        world / "captions_train.json",
    ).examples
    return [e.target for e in captions] + [f"{e.prompt} {e.target}" for e in vqa]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A small synthetic world (seed 1, SMALL_WORLD) that the data, reader and generator tests only
    read."""
    out = tmp_path_factory.mktemp("world")
    synthetic.generate(out, synthetic.WorldConfig(seed=1, **SMALL_WORLD))
    return out


@pytest.fixture(scope="session")
def tokenizer(world, tmp_path_factory) -> data.Tokenizer:
    """A sentencepiece model trained on world_texts(world)."""
    return data.Tokenizer.train(
        world_texts(world), tmp_path_factory.mktemp("tok") / "shapes.model", vocab_size=400
    )

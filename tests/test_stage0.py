"""The shipped stage-0 stand-ins (stage0/, written by `make pretrain`) load and have the abilities
the method relies on: a frozen ViT whose features a linear probe reads, and LMs that use the text
before them. Measured on a freshly written world (seed 0: its test split is the demo's)."""

import pytest

import data
from conftest import REPO
from evaluation import diagnostics
from stage0 import synthetic
from support.models import load_lm, load_vision

STAGE0 = REPO / "stage0"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthetic.generate(
        out,
        synthetic.WorldConfig(
            train_images=1500,
            val_images=10,
            test_images=300,
            train_videos=2,
            val_videos=2,
            test_videos=2,
        ),
    )
    (out / data.TOKENIZER_FILE).write_bytes((STAGE0 / "tokenizer.model").read_bytes())
    return out


def test_the_shipped_files_are_small_and_load():
    # the weights and tokenizer; the code that makes them (stage0/*.py) lives beside them
    shipped = [
        path for path in STAGE0.iterdir() if path.suffix != ".py" and path.name != "__pycache__"
    ]
    sizes = {path.name: path.stat().st_size for path in shipped}
    assert set(sizes) == {
        "vit.safetensors",
        "vit_small.safetensors",
        "tiny_lm.safetensors",
        "large_lm.safetensors",
        "tokenizer.model",
    }
    assert sum(sizes.values()) <= 25 * 2**20
    tokenizer = data.Tokenizer(STAGE0 / "tokenizer.model")
    for name in ("tiny_lm", "large_lm"):
        assert (
            load_lm(str(STAGE0 / f"{name}.safetensors")).config.vocab_size == tokenizer.vocab_size
        )
    for name in ("vit", "vit_small"):
        assert (
            load_vision(str(STAGE0 / f"{name}.safetensors")).config.image_size
            == synthetic.WorldConfig().image_size
        )


@pytest.mark.parametrize("name", ["vit", "vit_small"])
def test_a_linear_probe_reads_shape_colour_and_count_from_the_frozen_vit(world, name):
    scores = diagnostics.vit_probe(str(STAGE0 / f"{name}.safetensors"), world)
    for kind, score in scores.items():
        assert score["accuracy"] >= 0.95, (
            f"{kind}: probe {score['accuracy']:.3f} (majority {score['majority']:.3f})"
        )


@pytest.mark.parametrize("name", ["large_lm", "tiny_lm"])
def test_the_lms_read_the_text_before_them(world, name):
    losses = diagnostics.lm_context(str(STAGE0 / f"{name}.safetensors"), world)
    assert losses["drop"] >= 0.30, losses
    assert losses["other_image"] > losses["same_image"]

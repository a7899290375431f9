"""evaluate.py show: the sheet of test items with each run's captions and answers, and the attention
maps drawn from the forward pass that wrote each caption. Untrained toy models on a tiny synthetic
data folder: what is checked is the wiring (the weights drawn, the sheet's size, reproducibility,
errors), not what the models say."""

import dataclasses

import pytest
import torch
from PIL import Image

import data
import evaluate
from conftest import toy_spec
from evaluation import show
from evaluation.attention_maps import cross_attention_layers
from evaluation.decoding import Decoding
from evaluation.pictures import GAP, LINE_HEIGHT, MARGIN, SCALE, WIDTH, font
from evaluation.tasks import caption_one
from resampler import PerceiverResampler, ResamplerConfig
from stage0 import synthetic
from support.model_spec import build_vlm
from support.models import load_vlm

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = Decoding(max_new_tokens=4)  # short captions: no line of the sheet wraps
WORLD = dict(
    train_images=30,
    val_images=2,
    test_images=6,
    train_videos=6,
    val_videos=1,
    test_videos=3,
    num_frames=4,
)


def small_spec(vocab_size, adapter):
    """32-wide toy model on 32x32 images (a 4x4 patch grid) and videos of up to 4 frames; stage 1
    with the CoCa pooler."""
    spec = toy_spec(adapter, vocab_size=vocab_size, vision_dim=32, lm_dim=32, tiny_dim=32)
    if adapter == "resampler":
        pooler = ResamplerConfig.for_pooler(32, 32, 4, num_latents=4, max_frames=4)
        spec = dataclasses.replace(spec, resampler=pooler)
    return spec


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny data folder with its tokenizer, and checkpoints of untrained toy models: a stage-1
    pooler run, a stage-2 VAdapter and a stage-2 2-layer perceiver -> (data folder, runs by
    adapter)."""
    folder = tmp_path_factory.mktemp("show")
    world = folder / "data"
    synthetic.generate(world, synthetic.WorldConfig(**WORLD))
    tokenizer = data.Tokenizer.train(
        data.training_texts(world), world / data.TOKENIZER_FILE, vocab_size=200
    )
    runs = {}
    for adapter, stage in (
        ("resampler", "stage1"),
        ("vadapter", "stage2"),
        ("perceiver", "stage2"),
    ):
        torch.manual_seed(0)
        spec = small_spec(tokenizer.vocab_size, adapter)
        runs[adapter] = folder / adapter
        runs[adapter].mkdir()
        checkpoint = {"stage": stage, "spec": spec.to_dict(), "model": build_vlm(spec).state_dict()}
        torch.save({**checkpoint, "step": 5}, runs[adapter] / "checkpoint.pt")
    return world, runs


def test_items_are_drawn_by_the_seed_half_of_them_videos(runs):
    world, _ = runs
    items = show.choose_items(world, 5, seed=3)
    assert [item.kind for item in items] == ["image"] * 3 + ["video"] * 2
    assert [item.image_id for item in items] == [
        item.image_id for item in show.choose_items(world, 5, seed=3)
    ]
    assert {item.image_id for item in show.choose_items(world, 5, seed=4)} != {
        item.image_id for item in items
    }
    for item in items:
        assert len(item.references) == synthetic.CAPTIONS_PER_ITEM
        assert 1 <= len(item.questions) <= show.QUESTIONS_PER_ITEM
        assert all(question.image_id == item.image_id for question in item.questions)


@pytest.mark.parametrize(
    "adapter, layers",
    [
        ("resampler", ["layer 1 of 1"]),
        ("vadapter", ["layer 1 of 1"]),
        ("perceiver", ["layer 1 of 2", "layer 2 of 2"]),
    ],
)
def test_the_attention_drawn_comes_from_the_forward_that_wrote_the_caption(runs, adapter, layers):
    """One resampler forward per caption, and the weights recorded are that forward's: one per
    latent and head over the keys (the patches of every frame, and the latents when they are keys
    too), the same weights the resampler gives its input features again, and the caption is what
    `evaluate.py caption` says."""
    world, run_dirs = runs
    model, _ = load_vlm(run_dirs[adapter])
    tokenizer = data.Tokenizer(world / data.TOKENIZER_FILE)
    video = sorted((world / "videos" / "test").iterdir())[0]
    resampler = next(m for m in model.modules() if isinstance(m, PerceiverResampler))
    inputs = []
    resampler.register_forward_hook(lambda module, args, output: inputs.append(args))
    with torch.no_grad():
        caption, weights = show.caption_with_attention(model, tokenizer, video, SHORT, "cpu")
    assert len(inputs) == 1, "one resampler forward per caption"
    assert caption == caption_one(
        run_dirs[adapter], video, world / data.TOKENIZER_FILE, None, SHORT
    )
    assert list(weights) == layers
    config, frames = resampler.config, 4
    patches = frames * model.vision.config.grid_size**2
    keys = patches + (config.num_latents if config.latents_in_keys else 0)
    again = cross_attention_layers(model)
    for name, recorded in weights.items():
        assert recorded.shape == (config.num_heads, config.num_latents, keys)
        torch.testing.assert_close(recorded.sum(-1), torch.ones(recorded.shape[:2]))
        again[name].record_attention = True
    with torch.no_grad():
        resampler(*inputs[0])
    for name, recorded in weights.items():
        torch.testing.assert_close(again[name].last_attention[0], recorded, atol=0, rtol=0)


def expected_sheet_height(items, runs: int) -> int:
    """The layout's arithmetic when no line wraps: a header (a line about the items, one per run),
    then per item its number and picture, beside it the references, one caption per run, and per
    question the question and one answer per run."""
    height = 2 * MARGIN + (1 + runs) * LINE_HEIGHT
    for item in items:
        picture = 32 * SCALE
        lines = len(item.references) + runs + len(item.questions) * (1 + runs)
        height += 2 * MARGIN + LINE_HEIGHT + GAP + max(picture, lines * LINE_HEIGHT)
    return height


def test_the_sheet_has_its_size_and_the_same_seed_the_same_bytes(runs, tmp_path):
    world, run_dirs = runs
    chosen = [run_dirs["vadapter"], run_dirs["perceiver"]]
    first = show.show_runs(chosen, world, tmp_path / "a", 3, 7, True, decoding=SHORT)
    again = show.show_runs(chosen, world, tmp_path / "b", 3, 7, True, decoding=SHORT)
    assert [path.name for path in first] == [show.SHEET, show.ATTENTION_MAPS]
    for one, other in zip(first, again):
        assert one.read_bytes() == other.read_bytes()
    items = show.choose_items(world, 3, 7)
    with Image.open(first[0]) as sheet:
        assert sheet.size == (WIDTH, expected_sheet_height(items, runs=2))
    alone = show.show_runs(chosen[:1], world, tmp_path / "c", 2, 7, decoding=SHORT)
    assert [path.name for path in alone] == [show.SHEET]  # no attention maps asked for
    with Image.open(alone[0]) as sheet:
        assert sheet.size == (WIDTH, expected_sheet_height(show.choose_items(world, 2, 7), 1))
    with Image.open(first[1]) as maps:
        assert maps.width >= WIDTH and maps.height > 3 * 2 * 32 * SCALE  # 3 items, 3 layers


def test_the_text_is_at_least_11_pixels_high():
    assert font().size >= 11 and font().getbbox("Hg")[3] - font().getbbox("Hg")[1] >= 11


def test_a_bad_run_or_item_count_is_an_error_naming_the_argument(runs, tmp_path, capsys):
    world, run_dirs = runs
    common = ["--data", str(world), "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        evaluate.main(["show", str(run_dirs["vadapter"]), str(tmp_path / "nope"), *common])
    assert "argument RUN: " in capsys.readouterr().err
    for items in ("0", "two"):
        with pytest.raises(SystemExit):
            evaluate.main(["show", str(run_dirs["vadapter"]), *common, "--items", items])
        assert "argument --items: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="--items 20 asks for 10 images; the test split .* has 6"):
        evaluate.main(["show", str(run_dirs["vadapter"]), *common, "--items", "20"])

"""data.py: image loading, the tokenizer, the prompt shared by training and evaluation, dataset,
collate and feature cache behave as the training and evaluation scripts expect; atomic writes; the
old command line named."""

import shutil
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image

import data
from conftest import REPO, load_json, world_texts
from support.batches import as_dataset
from support.feature_cache import FeatureCache

# --- pixels ----------------------------------------------------------------------------------


def test_any_pil_mode_loads_as_rgb(tmp_path):
    def loaded(image: Image.Image, name: str, **kwargs) -> torch.Tensor:
        image.save(tmp_path / name)
        pixels = data.load_image(tmp_path / name, 16, **kwargs)
        assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
        return pixels * 0.5 + 0.5  # back to [0, 1]

    assert torch.allclose(
        loaded(Image.new("L", (16, 16), 51), "grey.png"), torch.full((3, 16, 16), 0.2), atol=1e-6
    )
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert torch.allclose(
        loaded(palette, "palette.png")[:, 0, 0], torch.tensor([10, 200, 30]) / 255
    )
    palette.info["transparency"] = 1
    assert torch.allclose(loaded(palette, "palette_transparent.png"), torch.ones(3, 16, 16))
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.putpixel((8, 8), (255, 0, 0, 255))
    rgba_pixels = loaded(rgba, "rgba.png")
    assert torch.allclose(rgba_pixels[:, 0, 0], torch.ones(3)) and torch.allclose(
        rgba_pixels[:, 8, 8], torch.tensor([1.0, 0, 0])
    )
    cmyk = loaded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "cmyk.jpg")
    assert cmyk[0].mean() > 0.9 and cmyk[1:].mean() < 0.1  # no cyan, full magenta+yellow: red
    deep = Image.new("I;16", (16, 16), 32896)
    assert torch.allclose(
        loaded(deep, "deep.png"), torch.full((3, 16, 16), 128 / 255), atol=1 / 255
    )
    normalized = data.load_image(
        tmp_path / "grey.png", 16, mean=(0.2, 0.2, 0.2), std=(0.1, 0.1, 0.1)
    )
    assert torch.allclose(normalized, torch.zeros(3, 16, 16), atol=1e-5)


def test_short_side_is_resized_and_centre_cropped(tmp_path):
    array = np.zeros((40, 80, 3), dtype=np.uint8)  # (H, W, 3): left half black, right half white
    array[:, 40:] = 255
    array[:, :20] = (255, 0, 0)  # left quarter red: cropped away
    Image.fromarray(array).save(tmp_path / "wide.png")
    # (3, 20, 20) from the centre 40x40
    pixels = data.load_image(tmp_path / "wide.png", 20) * 0.5 + 0.5
    assert pixels.shape == (3, 20, 20)
    # bicubic may bleed at the edge
    assert pixels[:, :, 1:8].max() < 0.05 and pixels[:, :, 12:].min() > 0.95


# --- tokenizer, dataset, collate, cache -------------------------------------------------------


def test_tokenizer_round_trip_special_ids_and_determinism(world, tokenizer, tmp_path):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert 20 < tokenizer.vocab_size <= 400
    texts = world_texts(world) + [
        c["caption"] for c in load_json(world / "video_captions_train.json")["annotations"]
    ]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.unk_id not in ids and min(ids) > 3 and tokenizer.decode(ids) == text
    ids = tokenizer.encode("a red circle")
    assert (
        tokenizer.decode(
            [tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]
        )
        == "a red circle"
    )
    again = data.Tokenizer.train(world_texts(world), tmp_path / "again.model", vocab_size=400)
    assert (tmp_path / "again.model").read_bytes() == tokenizer.model.serialized_model_proto()
    assert (
        data.Tokenizer(tmp_path / "again.model").encode(texts[0])
        == again.encode(texts[0])
        == tokenizer.encode(texts[0])
    )


def test_tokenizer_needs_pad_bos_and_eos(tmp_path):
    model = tmp_path / "no_pad.model"
    with open(model, "wb") as out:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["a red circle"] * 20),
            model_writer=out,
            vocab_size=12,
            hard_vocab_limit=False,
            pad_id=-1,
            minloglevel=2,
        )
    with pytest.raises(data.DataError, match="pad_id"):
        data.Tokenizer(model)


def test_training_puts_the_prompt_evaluation_decodes_after_before_the_target(world, tokenizer):
    """Evaluation decodes after data.prompt_ids(tokenizer, example.prompt); training inputs start
    with exactly those ids, loss off, the visual tokens at the same place, so the model is asked as
    it was taught."""
    captions = data.read_captions(world / "captions_val.json").examples
    vqa = data.read_vqa(
        world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json"
    ).examples
    for example in (*captions[:2], *vqa[:3]):
        sample = data.VisionTextDataset([example], tokenizer, 32)[0]
        prompt, visual_start = data.prompt_ids(tokenizer, example.prompt)
        assert (
            sample["input_ids"][: len(prompt)].tolist() == prompt
            and sample["visual_start"] == visual_start
        )
        assert (
            not sample["loss_mask"][: len(prompt)].any()
            and sample["loss_mask"][len(prompt) :].all()
        )
    # The paper's prompt: [bos] Describe the following: <visual tokens> : <caption>
    before = [tokenizer.bos_id] + tokenizer.encode("Describe the following:")
    assert data.prompt_ids(tokenizer, "") == (before + tokenizer.encode(":"), len(before))
    question = "is there a red circle?"
    before = [tokenizer.bos_id] + tokenizer.encode("Answer the following:")
    assert data.prompt_ids(tokenizer, data.vqa_prompt(question)) == (
        before + tokenizer.encode(f": question: {question} answer:"),
        len(before),
    )
    batch = data.collate(
        [data.VisionTextDataset([e], tokenizer, 32)[0] for e in (captions[0], vqa[0])],
        tokenizer.pad_id,
    )
    assert batch["visual_start"].tolist() == [
        data.prompt_ids(tokenizer, e.prompt)[1] for e in (captions[0], vqa[0])
    ]


def test_vqa_batches_put_the_loss_on_answer_and_eos_only(world, tokenizer):
    read = data.read_vqa(
        world / "questions_train.json",
        world / "annotations_train.json",
        world / "captions_train.json",
    )
    dataset = data.VisionTextDataset(read.examples, tokenizer, 64)
    samples = [dataset[i] for i in range(6)]
    batch = data.collate(samples, tokenizer.pad_id)
    lengths = batch["lengths"].tolist()
    assert batch["pixels"].shape == (6, 3, 64, 64) and batch["input_ids"].shape == batch[
        "loss_mask"
    ].shape == (6, max(lengths))
    assert batch["input_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.bool
    assert batch["question_ids"] == [e.question_id for e in read.examples[:6]] and batch[
        "image_ids"
    ] == [e.image_id for e in read.examples[:6]]
    for row, example in enumerate(read.examples[:6]):
        ids, mask, length = batch["input_ids"][row], batch["loss_mask"][row], lengths[row]
        assert (
            ids[0] == tokenizer.bos_id
            and ids[length - 1] == tokenizer.eos_id
            and (ids[length:] == tokenizer.pad_id).all()
        )
        answer_length = len(tokenizer.encode(example.target)) + 1
        assert mask.tolist() == [False] * (length - answer_length) + [True] * answer_length + [
            False
        ] * (len(ids) - length)
        assert tokenizer.decode(ids[mask][:-1].tolist()) == example.target
        prompt_end = length - answer_length
        # after the visual tokens
        assert (
            tokenizer.decode(ids[batch["visual_start"][row] : prompt_end].tolist())
            == ": " + example.prompt
        )
    assert min(lengths) < max(lengths), "the check above must have covered padding"


def test_caption_and_video_batches(world, tokenizer):
    images = data.VisionTextDataset(
        data.read_captions(world / "captions_train.json").examples, tokenizer, 48
    )
    sample = images[0]
    prompt_length = len(data.prompt_ids(tokenizer, "")[0])
    assert sample["pixels"].shape == (3, 48, 48)
    assert sample["loss_mask"].tolist() == [False] * prompt_length + [True] * (
        len(sample["input_ids"]) - prompt_length
    )
    assert "question_id" not in sample
    vqa = data.read_vqa(
        world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json"
    )
    question = data.VisionTextDataset(vqa.examples, tokenizer, 48)[0]
    assert data.collate([sample, question], tokenizer.pad_id)["question_ids"] == [
        None,
        vqa.examples[0].question_id,
    ]
    videos = data.VisionTextDataset(
        data.read_captions(world / "video_captions_train.json", num_frames=4).examples,
        tokenizer,
        32,
    )
    loader = torch.utils.data.DataLoader(
        videos, batch_size=4, collate_fn=lambda s: data.collate(s, tokenizer.pad_id)
    )
    batch = next(iter(loader))
    assert batch["pixels"].shape == (4, 4, 3, 32, 32) and "question_ids" not in batch
    with pytest.raises(ValueError, match="mixes images"):
        data.collate([sample, videos[0]], tokenizer.pad_id)


def test_a_batch_whose_features_are_all_cached_is_fetched_without_decoding(
    world, tokenizer, tmp_path, monkeypatch
):
    """VisionTextDataset.__getitems__, reached through the DataLoader and the groups' dataset of
    support/batches.py: no pixels read for a batch whose images or videos are all in the feature
    cache, the usual decoding when one is not; skip mode and videos of different lengths too."""
    loads = []

    def counted(path, *args, **kwargs):
        loads.append(path)
        return load_pixels(path, *args, **kwargs)

    load_pixels = data.load_pixels
    monkeypatch.setattr(data, "load_pixels", counted)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    captions = data.read_captions(world / "captions_train.json").examples[:12]
    broken = replace(captions[0], image_id=999, path=tmp_path / "broken.png")
    images = data.VisionTextDataset([broken, *captions], tokenizer, 32, on_bad_sample="skip")
    video_captions = data.read_captions(world / "video_captions_train.json", num_frames=4)
    long, short = video_captions.examples[::5][:2]  # 5 captions per video
    (tmp_path / "short").mkdir()
    for frame in data.frame_files(short.path)[:2]:
        shutil.copy(frame, tmp_path / "short" / frame.name)
    videos = data.VisionTextDataset([long, replace(short, path=tmp_path / "short")], tokenizer, 32)
    cache = FeatureCache()
    images.feature_cache = videos.feature_cache = cache
    dataset, _ = as_dataset([images, videos])

    def fetch(indices: list[int]) -> dict:
        loads.clear()
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[indices], collate_fn=partial(data.collate, pad_id=0)
        )
        return next(iter(loader))

    def encode(pixels):  # (n, 3, S, S) -> (n, 1, 6); (n, T, 3, S, S) -> (n, T, 1, 6)
        return pixels.flatten(-3)[..., None, :6]

    with pytest.warns(UserWarning, match="skipping unreadable image"):
        decoded = fetch([0, 1, 6, 7])
    assert len(loads) == 5 and decoded["unreadable"] == [str(tmp_path / "broken.png")]
    computed = cache.get_or_compute(decoded["image_ids"], decoded["pixels"], encode)
    cached = fetch([0, 1, 6, 7])
    assert loads == [] and "pixels" not in cached and "unreadable" not in cached
    assert cached["image_ids"] == decoded["image_ids"] and torch.equal(
        cached["input_ids"], decoded["input_ids"]
    )
    features = cache.fetched(cached["image_ids"], cached["cached_features"], None, "cpu")
    assert torch.equal(features, computed)
    # one image not cached yet: the batch is decoded as usual
    assert captions[11].image_id not in decoded["image_ids"]
    assert "pixels" in fetch([1, 12]) and len(loads) == 2
    # videos: 4 and 2 frames
    decoded = fetch([13, 14])
    assert len(loads) == 2 and decoded["num_frames"].tolist() == [4, 2]
    computed = cache.get_or_compute(
        decoded["image_ids"], decoded["pixels"], encode, decoded["num_frames"]
    )
    cached = fetch([14, 13])
    assert loads == [] and "pixels" not in cached and cached["num_frames"].tolist() == [2, 4]
    features = cache.fetched(
        cached["image_ids"], cached["cached_features"], cached["num_frames"], "cpu"
    )
    assert torch.equal(features, computed[[1, 0]])


def test_write_atomically_replaces_whole_files_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "deep" / "results.json"
    data.write_atomically(path, lambda temporary: temporary.write_text("first"))
    data.write_atomically(path, lambda temporary: temporary.write_text("second"))

    def crash(temporary: Path) -> None:
        temporary.write_text("torn")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        data.write_atomically(path, crash)
    assert path.read_text() == "second" and [p.name for p in path.parent.iterdir()] == [
        "results.json"
    ]


def test_the_data_library_run_as_a_script_names_the_command_and_writes_nothing(tmp_path):
    """`python data.py --out DIR` was the command of earlier READMEs."""
    out = tmp_path / "world"
    run = subprocess.run(
        [sys.executable, "data.py", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode != 0 and "python -m stage0.synthetic --out DIR" in run.stderr
    assert not out.exists()

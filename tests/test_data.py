"""data.py: image loading, the tokenizer, the prompt shared by training and evaluation, dataset,
collate and feature cache behave as the training and evaluation scripts expect."""

import argparse
import json
import math
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from coco_files import karpathy_file, official_coco
from PIL import Image

import data
import trainer
from conftest import REPO, load_json, toy_spec, world_texts
from support import flags
from support.batches import as_dataset
from support.feature_cache import FeatureCache
from support.model_spec import build_vlm
from support.vlm_training import DataConfig, train_vlm

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


# --- a data folder: splits, empty tasks, real video folders, text budget, the run's counts -----


def test_a_karpathy_file_under_the_task_names_gives_disjoint_splits_with_restval_in_train(
    tmp_path, tokenizer
):
    karpathy = karpathy_file(tmp_path, splits=("train", "restval", "val", "test", "train"))
    # as docs/real_data.md says: real files (or symlinks) under the task names
    for split in (
        "train",
        "val",
        "test",
    ):
        (tmp_path / f"captions_{split}.json").symlink_to(karpathy)
    images = {
        split: set(data.read_task(tmp_path, "caption", split).images)
        for split in ("train", "val", "test")
    }
    assert images == {"train": {0, 1, 4}, "val": {2}, "test": {3}}
    train_texts = sorted(text for k in (0, 1, 4) for text in (f"A cat {k}.", f"Cat {k}"))
    # the tokenizer's corpus: train only
    assert sorted(data.training_texts(tmp_path)) == train_texts
    [test_set] = data.task_datasets(tmp_path, "test", tokenizer, 16)
    assert [e.image_id for e in test_set.examples] == [3, 3]


def test_a_task_without_a_usable_sample_is_named(tmp_path, tokenizer):
    path = official_coco(tmp_path)  # images 9, 25, 30 in train2014/
    content = load_json(path)
    content["images"] = [
        {**image, "file_name": f"train2014/{image['file_name']}"} for image in content["images"]
    ]
    (tmp_path / "captions_train.json").write_text(json.dumps(content))
    (tmp_path / "questions_train.json").write_text(
        json.dumps({"questions": [{"image_id": 777, "question": "Is it red?", "question_id": 1}]})
    )
    (tmp_path / "annotations_train.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {
                        "question_id": 1,
                        "image_id": 777,
                        "multiple_choice_answer": "yes",
                        "answers": [{"answer": "yes"}] * 10,
                    }
                ]
            }
        )
    )
    with pytest.warns(UserWarning), pytest.raises(data.DataError) as error:
        data.task_datasets(tmp_path, "train", tokenizer, 16, on_bad_sample="skip")
    for text in (
        "task 'vqa'",
        "split 'train'",
        "no usable sample",
        "questions_train.json",
        "1 x unknown image_id",
        "--tasks",
    ):
        assert text in str(error.value), str(error.value)
    [images] = data.task_datasets(tmp_path, "train", tokenizer, 16, ["caption"])
    assert len(images) == 6
    content["annotations"] = []
    (tmp_path / "captions_train.json").write_text(json.dumps(content))
    with pytest.raises(
        data.DataError, match="task 'caption' of split 'train' has no usable sample"
    ):
        data.task_datasets(tmp_path, "train", tokenizer, 16, ["caption"])
    # a split without the files of a task the folder holds: the missing file is named
    with pytest.raises(data.DataError, match="captions_val.json missing.* split 'val'"):
        data.task_datasets(tmp_path, "val", tokenizer, 16)
    with pytest.raises(
        data.DataError, match="no files for task.* of split 'val'; expected captions_val.json"
    ):
        data.task_datasets(tmp_path, "val", tokenizer, 16, ["caption"])


def test_video_folders_without_dataset_json_read_the_frame_count_from_the_folders(
    world, tmp_path, tokenizer
):
    (tmp_path / "videos").symlink_to(world / "videos")
    for name in (
        "video_captions_val.json",
        "video_questions_val.json",
        "video_annotations_val.json",
    ):
        (tmp_path / name).write_text((world / name).read_text())
    assert not (tmp_path / "dataset.json").exists()
    captions, questions = (
        data.task_datasets(tmp_path, "val", tokenizer, 32)[0].examples,
        data.read_task(tmp_path, "video_vqa", "val"),
    )
    assert len({e.image_id for e in captions}) == 3 and len(questions.examples) == len(
        data.read_task(world, "video_vqa", "val").examples
    )
    [videos] = data.task_datasets(tmp_path, "val", tokenizer, 32, ["video_caption"])
    # SMALL_WORLD's 4 frames, read from the folders
    assert videos[0]["pixels"].shape == (
        4,
        3,
        32,
        32,
    )


def test_texts_longer_than_max_text_tokens_are_cut_and_counted_before_any_sample_is_read(
    tmp_path, tokenizer
):
    image = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image)
    long_caption = "a red circle above a blue square " * 8
    examples = [
        data.Example(1, image, "", long_caption, source="captions_train.json: annotations[0]"),
        data.Example(1, image, "", "a red circle", source="captions_train.json: annotations[1]"),
    ]
    prompt = data.prompt_ids(tokenizer, "")[0]
    budget = len(prompt) + 12  # the prompt and 12 text tokens
    with pytest.warns(
        UserWarning,
        match=rf"1 of 2 texts are longer than max_text_tokens={budget} .*annotations\[0\]",
    ):
        dataset = data.VisionTextDataset(examples, tokenizer, 16, max_text_tokens=budget)
    assert dataset.truncated == 1  # counted when the data is read
    full = prompt + tokenizer.encode(long_caption) + [tokenizer.eos_id]
    cut, short = dataset[0], dataset[1]
    assert (
        cut["input_ids"].tolist() == full[:budget]
        and cut["loss_mask"].tolist() == [False] * len(prompt) + [True] * 12
    )
    assert short["input_ids"].tolist() == prompt + tokenizer.encode("a red circle") + [
        tokenizer.eos_id
    ]
    question = data.Example(
        2,
        image,
        data.vqa_prompt("is there a red circle above a blue square " * 3),
        "yes",
        7,
        source="questions_train.json: questions[3]",
    )
    with pytest.raises(
        data.DataError,
        match=rf"questions_train.json: questions\[3\] field 'question'.*max_text_tokens={budget}",
    ):
        data.VisionTextDataset([question, *examples], tokenizer, 16, max_text_tokens=budget)
    with pytest.warns(UserWarning) as caught:
        lenient = data.VisionTextDataset(
            [question, *examples], tokenizer, 16, on_bad_sample="skip", max_text_tokens=budget
        )
    assert any(
        "1 x prompt longer than max_text_tokens" in str(warning.message) for warning in caught
    )
    assert lenient.examples == examples and lenient.skipped == Counter(
        {"prompt longer than max_text_tokens": 1}
    )


def folder_with_a_long_caption_and_broken_images(tmp_path, tokenizer) -> Path:
    """Captions of 9 images, 6 train and 3 val: one train caption longer than the LM's context,
    and train images 2 and 3 unreadable."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for split, ids in (("train", range(1, 7)), ("val", range(7, 10))):
        images = [{"id": i, "file_name": f"images/{i}.png"} for i in ids]
        for i in ids:
            Image.new("RGB", (32, 32), (40 * i, 30, 30)).save(folder / f"images/{i}.png")
        captions = [{"image_id": i, "caption": "a red circle"} for i in ids]
        if split == "train":
            captions.append({"image_id": 1, "caption": "a red circle above a blue square " * 20})
        (folder / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions})
        )
    for broken in (2, 3):
        (folder / f"images/{broken}.png").write_bytes(b"not an image")
    (folder / "tokenizer.model").write_bytes(tokenizer.model.serialized_model_proto())
    return folder


def test_a_run_cuts_long_texts_skips_unreadable_images_and_counts_both_in_its_summary(
    tmp_path, tokenizer, one_thread
):
    """The whole path of --max-text-tokens and --on-bad-sample skip: a caption longer than the LM's
    context and two unreadable images neither stop training nor go unreported."""
    folder = folder_with_a_long_caption_and_broken_images(tmp_path, tokenizer)
    spec = toy_spec("resampler", vocab_size=tokenizer.vocab_size)
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    args = parser.parse_args(
        ["--data", str(folder), "--on-bad-sample", "skip", "--cache-features", "no"]
    )
    config = trainer.TrainConfig(
        out_dir=str(tmp_path / "run"),
        steps=2,
        batch_size=8,
        eval_every=2,
        eval_batches=1,
        save_every=100,
        device="cpu",
        compile=False,
        bf16=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train_vlm(
            build_vlm(spec), DataConfig.from_flags(args, None), "stage1", spec, config
        )
    assert summary["truncated_texts"] == 1 and summary["skipped_samples"] == {"unreadable image": 2}
    assert math.isfinite(summary["train_loss"])
    # the visual tokens' scale at step 0 and at the end, against the LM's text embeddings
    assert set(summary["visual_token_rms"]) == {"start", "end"}
    assert summary["visual_token_rms"]["end"] != summary["visual_token_rms"]["start"]
    assert summary["text_embedding_rms"] > 0
    # 128 positions - 4 visual tokens
    too_many = parser.parse_args(["--data", str(folder), "--max-text-tokens", "125"])
    with pytest.raises(ValueError, match="--max-text-tokens 125: expected 2 to 124"):
        train_vlm(build_vlm(spec), DataConfig.from_flags(too_many, None), "stage1", spec, config)


def test_start_up_lines_come_from_rank_0_only(tmp_path, tokenizer, monkeypatch, capsys):
    """Under torchrun every rank reads the same folder: the feature cache's line and the data's
    warnings (a text cut) come once per run, from rank 0, not once per rank."""
    folder = folder_with_a_long_caption_and_broken_images(tmp_path, tokenizer)
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    args = parser.parse_args(["--data", str(folder), "--on-bad-sample", "skip"])
    spec = toy_spec("resampler", vocab_size=tokenizer.vocab_size)
    # the loop itself is not run: a rank without its process group cannot join one
    monkeypatch.setattr("support.vlm_training.train", lambda *arguments: {})
    said = {}
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data_config = DataConfig.from_flags(args, None)
            train_vlm(build_vlm(spec), data_config, "stage1", spec, trainer.TrainConfig())
        said[rank] = (capsys.readouterr().out, [str(warning.message) for warning in caught])
    printed, warned = said["1"]
    assert printed == "" and not any("cut to it" in message for message in warned)
    printed, warned = said["0"]
    assert printed.startswith("feature cache: at most 8 GB") and "visual tokens' RMS" in printed
    assert any("cut to it" in message for message in warned)


def test_the_data_library_run_as_a_script_names_the_command_and_writes_nothing(tmp_path):
    """`python data.py --out DIR` was the command of earlier READMEs."""
    out = tmp_path / "world"
    run = subprocess.run(
        [sys.executable, "data.py", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode != 0 and "python -m stage0.synthetic --out DIR" in run.stderr
    assert not out.exists()

"""A data folder as the stage scripts read it (DataConfig, train_vlm): its splits, a task without a
usable sample, real video folders, the text budget, and the run's counts of what it cut and
skipped, said once from rank 0."""

import argparse
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import pytest
from coco_files import karpathy_file, official_coco
from PIL import Image

import data
import trainer
from conftest import load_json, toy_spec
from support import flags
from support.model_spec import build_vlm
from support.vlm_training import DataConfig, train_vlm


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

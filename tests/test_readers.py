"""readers.py: COCO captions (official and Karpathy), VQAv2 and their video variant read into
Examples, from the official layouts (coco_files.py) and from the synthetic world alike."""

import json

import pytest
import torch
from coco_files import karpathy_file, official_coco, official_vqa, write_image

import data
from conftest import REPO, load_json
from support import readers


def test_reads_official_coco_captions(tmp_path):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    assert len(read.examples) == 6 and set(read.images) == {9, 25, 30}
    assert read.references[25] == ["A red photo number 1.", "A red photo number 4."]
    assert all(e.prompt == "" and e.question_id is None for e in read.examples)
    pixels = data.load_pixels(read.images[9], 32)
    assert pixels.shape == (3, 32, 32) and torch.allclose(
        pixels[:, 16, 16], (torch.tensor([200, 30, 30]) / 255 - 0.5) / 0.5, atol=0.02
    )


def test_reads_karpathy_split_with_restval_as_train(tmp_path):
    entries = []
    for cocoid, (split, folder) in enumerate(
        [("train", "train2014"), ("restval", "val2014"), ("val", "val2014"), ("test", "val2014")]
    ):
        file_name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(tmp_path / folder / file_name)
        entries.append(
            {
                "filepath": folder,
                "filename": file_name,
                "imgid": cocoid + 50,
                "split": split,
                "cocoid": cocoid,
                "sentenceids": [0, 1],
                "sentences": [
                    {
                        "tokens": ["a", "cat"],
                        "raw": f"A cat {cocoid}.",
                        "imgid": cocoid,
                        "sentid": 0,
                    },
                    {"tokens": ["cat"], "raw": "Cat", "sentid": 1},
                ],
            }
        )
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    train = readers.read_captions(path, image_root=tmp_path, split="train")
    assert set(train.images) == {0, 1} and len(train.examples) == 4
    assert (
        train.references[1] == ["A cat 1.", "Cat"]
        and train.images[1] == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    )
    assert set(readers.read_captions(path, tmp_path, split="val").images) == {2}
    assert set(readers.read_captions(path, tmp_path, split="test").images) == {3}
    assert len(readers.read_captions(path, tmp_path).examples) == 8


def test_reads_vqav2_with_coco_file_names(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    read = readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert [(e.question_id, e.prompt, e.target) for e in read.examples] == [
        (42000, "question: What color is the photo? answer:", "red"),
        (73001, "question: How many cats? answer:", "2"),
    ]
    assert (
        read.references[42000] == ["red"] * 8 + ["Red", "pink"]
        and len(read.references[73001]) == 10
    )
    assert read.images[73] == tmp_path / "val2014" / "COCO_val2014_000000000073.jpg"
    questions_only = readers.read_vqa(questions, image_root=tmp_path / "val2014")  # test-dev style
    assert [e.target for e in questions_only.examples] == ["", ""]


def test_reads_the_synthetic_world_with_the_same_readers(world):
    captions = readers.read_captions(world / "captions_val.json")
    assert len(captions.examples) == 5 * 8 and all(
        len(r) == 5 for r in captions.references.values()
    )
    vqa = readers.read_vqa(
        world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json"
    )
    truth = {
        a["question_id"]: a["multiple_choice_answer"]
        for a in load_json(world / "annotations_val.json")["annotations"]
    }
    assert {e.question_id: e.target for e in vqa.examples} == truth
    assert all(
        e.prompt.startswith("question: ") and e.prompt.endswith("? answer:") for e in vqa.examples
    )
    videos = readers.read_vqa(
        world / "video_questions_val.json",
        world / "video_annotations_val.json",
        world / "video_captions_val.json",
        num_frames=4,
    )
    assert len(videos.examples) == 9 and all(p.is_dir() for p in videos.images.values())
    assert data.load_pixels(videos.examples[0].path, 64).shape == (4, 3, 64, 64)


def test_vqa_takes_its_images_from_every_split_of_a_karpathy_file(tmp_path):
    """VQAv2's splits are not Karpathy's: a Karpathy file under the captions names lends VQA all its
    images."""
    karpathy = karpathy_file(tmp_path)
    questions = tmp_path / "questions.json"
    questions.write_text(
        json.dumps(
            {
                "questions": [
                    {"image_id": i, "question": "Is it a cat?", "question_id": 10 * i}
                    for i in (0, 3)
                ]
            }
        )
    )
    read = readers.read_vqa(questions, images_path=karpathy)
    assert read.images == {
        0: tmp_path / "train2014" / "COCO_train2014_000000000000.jpg",
        3: tmp_path / "val2014" / "COCO_val2014_000000000003.jpg",
    }
    assert read.examples[1].source == f"{questions}: questions[1]"


def test_video_folders_of_any_frame_count_are_read_and_long_ones_sampled_to_max_frames(tmp_path):
    images = []
    for video_id, frames in ((1, 4), (2, 9), (3, 3), (4, 4)):
        for t in range(frames):
            write_image(
                tmp_path / "videos" / str(video_id) / f"frame_{t:03d}.png", colour=(10 * t, 0, 0)
            )
        images.append({"id": video_id, "file_name": f"videos/{video_id}"})
    path = tmp_path / "video_captions.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": [{"image_id": i, "caption": "a cat"} for i in (1, 2, 3, 4)],
            }
        )
    )
    read = readers.read_captions(path, videos=True)
    assert set(read.images) == {1, 2, 3, 4} and data.load_pixels(read.images[3], 16).shape == (
        3,
        3,
        16,
        16,
    )
    # frames 0, 2, 4, 6, 8 of 9: evenly spread
    sampled = data.load_pixels(read.images[2], 16, max_frames=5)
    every = data.load_pixels(read.images[2], 16)
    assert every.shape == (9, 3, 16, 16) and torch.equal(sampled, every[[0, 2, 4, 6, 8]])
    assert torch.equal(
        data.load_pixels(read.images[1], 16, max_frames=5), data.load_pixels(read.images[1], 16)
    )
    with pytest.raises(readers.DataError) as error:  # an image task meeting a frame folder
        readers.read_captions(path)
    assert "this is a folder" in str(error.value) and "num_frames" not in str(error.value)


def test_the_data_guide_says_what_the_video_reader_does():
    """docs/real_data.md once said a video folder with another frame count is a bad sample; the
    reader takes any count (test_video_folders_of_any_frame_count_...)."""
    guide = (REPO / "docs" / "real_data.md").read_text()
    assert (
        "another count is a bad sample" not in guide and "agreed\n  number of frames" not in guide
    )
    assert "with any number of frames" in guide

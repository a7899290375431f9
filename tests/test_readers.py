"""readers.py: COCO captions (official and Karpathy), VQAv2 and their video variant read into
Examples; bad input raises an error naming file and field, or is skipped and counted."""

import functools
import json
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import data
from conftest import REPO, load_json
from support import readers

# --- readers ---------------------------------------------------------------------------------


def write_image(path: Path, size=(40, 30), colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def official_coco(root: Path) -> Path:
    """A tiny captions_train2014.json with images in train2014/, as COCO ships them."""
    images = [
        {
            "id": i,
            "file_name": f"COCO_train2014_{i:012d}.jpg",
            "width": 40,
            "height": 30,
            "license": 1,
        }
        for i in (9, 25, 30)
    ]
    for image in images:
        write_image(root / "train2014" / image["file_name"])
    annotations = [
        {"id": 100 + k, "image_id": image["id"], "caption": f"A red photo number {k}."}
        for k, image in enumerate(images + images)
    ]
    path = root / "annotations" / "captions_train2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations})
    )
    return path


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


def official_vqa(root: Path) -> tuple[Path, Path]:
    for image_id in (42, 73):
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = [
        {"image_id": 42, "question": "What color is the photo?", "question_id": 42000},
        {"image_id": 73, "question": "How many cats?", "question_id": 73001},
    ]

    def human(*texts):
        return [
            {"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)
        ]

    annotations = [
        {
            "question_id": 42000,
            "image_id": 42,
            "question_type": "what color is the",
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": human(*["red"] * 8, "Red", "pink"),
        },
        {
            "question_id": 73001,
            "image_id": 73,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "2",
            "answers": human(*["2"] * 7, "two", "3", "2"),
        },
    ]
    questions_path, annotations_path = (
        root / "v2_OpenEnded_mscoco_val2014_questions.json",
        root / "v2_mscoco_val2014_annotations.json",
    )
    questions_path.write_text(
        json.dumps(
            {
                "info": {},
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "data_subtype": "val2014",
                "license": {},
                "questions": questions,
            }
        )
    )
    annotations_path.write_text(
        json.dumps(
            {
                "info": {},
                "data_type": "mscoco",
                "data_subtype": "val2014",
                "annotations": annotations,
            }
        )
    )
    return questions_path, annotations_path


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


# --- bad input -------------------------------------------------------------------------------


def break_coco(root: Path, case: str) -> tuple[Path, dict, str, str]:
    """Breaks one thing in a small COCO layout; returns (json, reader kwargs, text the error names,
    reason)."""
    path = official_coco(root)
    content = load_json(path)
    image = root / "train2014" / content["images"][1]["file_name"]
    kwargs = {"image_root": root / "train2014"}
    if case == "missing image file":
        image.unlink()
        named = (str(image), "'file_name'")
    elif case == "missing field":
        del content["annotations"][2]["caption"]
        named = (str(path), "annotations[2]", "'caption'")
    elif case == "missing file_name":
        del content["images"][1]["file_name"]
        named, case = (str(path), "images[1]", "'file_name'"), "missing field"
    elif case == "unknown image_id":
        content["annotations"][0]["image_id"] = 777
        named = (str(path), "'image_id'", "777")
    elif case == "empty caption":
        content["annotations"][4]["caption"] = "  "
        named = (str(path), "annotations[4]", "'caption'", "empty")
    elif case == "wrong frame count":
        for k, entry in enumerate(content["images"]):
            folder = root / "frames" / str(entry["id"])
            for t in range(3 if k == 1 else 4):
                write_image(folder / f"frame_{t:03d}.png")
            entry["file_name"] = f"frames/{entry['id']}"
        kwargs = {"image_root": root, "num_frames": 4}
        named = (str(root / "frames" / "25"), "'file_name'", "expected 4 frames")
    path.write_text(json.dumps(content))
    return path, kwargs, named, case


@pytest.mark.parametrize(
    "case",
    [
        "missing image file",
        "missing field",
        "missing file_name",
        "unknown image_id",
        "empty caption",
        "wrong frame count",
    ],
)
def test_bad_caption_data_raises_or_is_skipped_and_counted(tmp_path, case):
    path, kwargs, named, reason = break_coco(tmp_path, case)
    with pytest.raises(readers.DataError) as error:
        readers.read_captions(path, **kwargs)
    assert all(text in str(error.value) for text in named), str(error.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = readers.read_captions(path, **kwargs, on_bad_sample="skip")
    assert read.skipped == Counter({reason: 1})
    assert len(caught) == 1 and f"1 x {reason}" in str(caught[0].message)
    lost = 2 if case in ("missing image file", "missing file_name", "wrong frame count") else 1
    assert len(read.examples) == 6 - lost


def test_bad_vqa_annotation_raises_or_is_skipped(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    content = load_json(annotations)
    del content["annotations"][1]["multiple_choice_answer"]
    annotations.write_text(json.dumps(content))
    with pytest.raises(
        readers.DataError, match=r"annotations\[1\] field 'multiple_choice_answer'"
    ) as error:
        readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert str(annotations) in str(error.value)
    with pytest.warns(UserWarning, match="1 x missing annotation, 1 x missing field"):
        read = readers.read_vqa(
            questions, annotations, image_root=tmp_path / "val2014", on_bad_sample="skip"
        )
    assert [e.question_id for e in read.examples] == [42000]


def test_vqa_questions_on_a_skipped_image_are_left_out_and_counted_once(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    images = tmp_path / "image_info.json"
    images.write_text(
        json.dumps(
            {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 73)]}
        )
    )
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(readers.DataError, match=r"images\[0\] field 'file_name'"):
        readers.read_vqa(questions, annotations, images, image_root=tmp_path / "val2014")
    with pytest.warns(UserWarning):
        read = readers.read_vqa(
            questions, annotations, images, image_root=tmp_path / "val2014", on_bad_sample="skip"
        )
    assert [e.question_id for e in read.examples] == [73001] and read.skipped == Counter(
        {"missing image file": 1}
    )


def test_missing_top_level_list_or_json_file_always_raises(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "info": {}}))
    with pytest.raises(readers.DataError, match="top-level field 'annotations' is missing"):
        readers.read_captions(path, on_bad_sample="skip")
    with pytest.raises(readers.DataError, match="not found"):
        readers.read_captions(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="on_bad_sample"):
        readers.read_captions(official_coco(tmp_path), on_bad_sample="ignore")


def test_truncated_image_raises_in_dataset_or_is_replaced_by_the_next_sample(tmp_path, tokenizer):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    broken = read.images[25]
    broken.write_bytes(broken.read_bytes()[:200])
    strict = data.VisionTextDataset(read.examples, tokenizer, 32)
    with pytest.raises(readers.DataError) as error:
        strict[1]
    assert (
        str(broken) in str(error.value)
        and "'file_name'" in str(error.value)
        and "25" in str(error.value)
    )
    lenient = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [lenient[i]["image_id"] for i in range(len(lenient))]
    assert ids == [9, 30, 30, 9, 30, 30] and len(caught) == 1 and lenient.unreadable == {broken}


def karpathy_file(root: Path, splits=("train", "restval", "val", "test")) -> Path:
    """A tiny dataset_coco.json (Karpathy's split file): image cocoid k has split splits[k] and two
    sentences."""
    entries = []
    for cocoid, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        file_name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(root / folder / file_name)
        entries.append(
            {
                "filepath": folder,
                "filename": file_name,
                "imgid": cocoid + 50,
                "split": split,
                "cocoid": cocoid,
                "sentences": [
                    {"tokens": ["a", "cat"], "raw": f"A cat {cocoid}.", "sentid": 2 * cocoid},
                    {"tokens": ["cat"], "raw": f"Cat {cocoid}", "sentid": 2 * cocoid + 1},
                ],
            }
        )
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


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


def test_duplicate_image_ids_name_both_entries_or_are_skipped_and_counted(tmp_path):
    path = official_coco(tmp_path)  # images 9, 25, 30
    content = load_json(path)
    # COCO_train2014_000000000030.jpg now claims id 9: whose captions are 9's?
    content["images"][2]["id"] = 9
    content["annotations"] = [
        {**a, "image_id": 9 if a["image_id"] == 30 else a["image_id"]}
        for a in content["annotations"]
    ]
    # listed twice with the same file: harmless
    content["images"].append(dict(content["images"][1]))
    path.write_text(json.dumps(content))
    root = tmp_path / "train2014"
    with pytest.raises(readers.DataError) as error:
        readers.read_captions(path, image_root=root)
    for text in (
        "images[2]",
        "images[0]",
        "'id' is 9",
        "COCO_train2014_000000000009.jpg",
        "COCO_train2014_000000000030.jpg",
    ):
        assert text in str(error.value), str(error.value)
    with pytest.warns(UserWarning, match="2 x duplicate image id"):
        read = readers.read_captions(path, image_root=root, on_bad_sample="skip")
    assert read.skipped == Counter({"duplicate image id": 2}) and set(read.images) == {25}
    assert [e.image_id for e in read.examples] == [25, 25]

    karpathy = load_json(karpathy_file(tmp_path))
    karpathy["images"][1]["cocoid"] = 0
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    with pytest.raises(
        readers.DataError, match=r"images\[1\] field 'id' is 0, as in .*images\[0\]"
    ):
        readers.read_captions(tmp_path / "dataset_coco.json", split="train")
    with pytest.warns(UserWarning):
        read = readers.read_captions(
            tmp_path / "dataset_coco.json", split="train", on_bad_sample="skip"
        )
    assert read.examples == [] and read.skipped == Counter({"duplicate image id": 2})


@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_image_paths_outside_the_data_folder_are_refused(tmp_path, kind):
    path = official_coco(tmp_path / "data")
    outside = tmp_path / "elsewhere" / "secret.png"
    write_image(outside)
    content = load_json(path)
    content["images"][1]["file_name"] = (
        str(outside) if kind == "absolute" else "../../elsewhere/secret.png"
    )
    path.write_text(json.dumps(content))
    root = tmp_path / "data" / "train2014"
    with pytest.raises(readers.DataError) as error:
        readers.read_captions(path, image_root=root)
    assert all(
        text in str(error.value)
        for text in (str(path), "images[1]", "'file_name'", "outside the data folder")
    )
    with pytest.warns(UserWarning, match="1 x image path outside the data folder"):
        read = readers.read_captions(path, image_root=root, on_bad_sample="skip")
    assert set(read.images) == {9, 30} and len(read.examples) == 4

    karpathy = load_json(karpathy_file(tmp_path / "data"))
    karpathy["images"][0]["filepath"] = (
        str(tmp_path / "elsewhere") if kind == "absolute" else "../elsewhere"
    )
    karpathy["images"][0]["filename"] = "secret.png"
    (tmp_path / "data" / "dataset_coco.json").write_text(json.dumps(karpathy))
    with pytest.raises(
        readers.DataError,
        match=r"images\[0\] field 'filepath' \+ 'filename'.*outside the data folder",
    ):
        readers.read_captions(tmp_path / "data" / "dataset_coco.json", split="train")


def test_an_image_folder_that_is_a_symlink_is_inside_the_data_folder(tmp_path):
    official_coco(tmp_path / "store")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train2014").symlink_to(tmp_path / "store" / "train2014")
    content = load_json(tmp_path / "store" / "annotations" / "captions_train2014.json")
    content["images"] = [
        {**image, "file_name": f"train2014/{image['file_name']}"} for image in content["images"]
    ]
    (tmp_path / "data" / "captions_train.json").write_text(json.dumps(content))
    assert set(readers.read_captions(tmp_path / "data" / "captions_train.json").images) == {
        9,
        25,
        30,
    }


def write_png_header(path: Path, width: int, height: int) -> None:
    """A decompression bomb as PIL meets one: a small PNG whose header declares width x height
    pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_a_data_error_naming_file_and_field(tmp_path, tokenizer):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    # 400M pixels: over twice PIL's MAX_IMAGE_PIXELS
    write_png_header(read.images[25], 20_000, 20_000)
    with pytest.raises(readers.DataError) as error:
        data.VisionTextDataset(read.examples, tokenizer, 32)[1]
    for text in (
        str(read.images[25]),
        "'file_name'",
        "image_id 25",
        "decompression bomb",
        f"{path}: annotations[1]",
    ):
        assert text in str(error.value), str(error.value)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        sample = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")[1]
    assert sample["image_id"] == 30 and sample["unreadable"] == [str(read.images[25])]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_counts_every_unreadable_image_from_any_worker(tmp_path, tokenizer, workers):
    path = official_coco(tmp_path)  # images 9, 25, 30, two captions each
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    truncated, bomb = read.images[9], read.images[30]
    truncated.write_bytes(truncated.read_bytes()[:200])
    write_png_header(bomb, 20_000, 20_000)
    dataset = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        collate_fn=functools.partial(data.collate, pad_id=tokenizer.pad_id),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert all(image_id == 25 for batch in batches for image_id in batch["image_ids"])
    listed = [path for batch in batches for path in batch.get("unreadable", [])]
    assert sorted(set(listed)) == sorted([str(truncated), str(bomb)])
    if workers == 0:  # one process: each image is listed and named once
        assert len(listed) == 2 and dataset.unreadable == {truncated, bomb}
        assert sorted(str(w.message).split(": ")[1] for w in caught) == sorted(
            [str(truncated), str(bomb)]
        )


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


@pytest.mark.parametrize("count", [9, 11])
def test_a_vqa_annotation_without_ten_answers_is_a_bad_sample_named_by_question_id(tmp_path, count):
    """VQA accuracy is min(matches / 3, 1) averaged over the 10 human answers' leave-one-out
    subsets: another count is not VQAv2, so the annotation is refused (or skipped and counted)."""
    questions, annotations = official_vqa(tmp_path)
    content = load_json(annotations)
    content["annotations"][1]["answers"] = content["annotations"][1]["answers"][:1] * count
    annotations.write_text(json.dumps(content))
    with pytest.raises(
        readers.DataError, match=rf"question_id 73001\) field 'answers' has {count}"
    ):
        readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    with pytest.warns(UserWarning, match="1 x not 10 answers"):
        read = readers.read_vqa(
            questions, annotations, image_root=tmp_path / "val2014", on_bad_sample="skip"
        )
    assert [e.question_id for e in read.examples] == [42000]
    assert read.skipped["not 10 answers"] == 1


def test_the_data_guide_says_what_the_video_reader_does():
    """docs/real_data.md once said a video folder with another frame count is a bad sample; the
    reader takes any count (test_video_folders_of_any_frame_count_...)."""
    guide = (REPO / "docs" / "real_data.md").read_text()
    assert (
        "another count is a bad sample" not in guide and "agreed\n  number of frames" not in guide
    )
    assert "with any number of frames" in guide

"""readers.py: COCO captions (official and Karpathy), VQAv2 and their video variant read into
Examples; bad input raises an error naming file and field, or is skipped and counted."""

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import data
import readers
from conftest import load_json


# --- readers ---------------------------------------------------------------------------------

def write_image(path: Path, size=(40, 30), colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def official_coco(root: Path) -> Path:
    """A tiny captions_train2014.json with images in train2014/, as COCO ships them."""
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 40, "height": 30, "license": 1} for i in (9, 25, 30)]
    for image in images:
        write_image(root / "train2014" / image["file_name"])
    annotations = [{"id": 100 + k, "image_id": image["id"], "caption": f"A red photo number {k}."}
                   for k, image in enumerate(images + images)]
    path = root / "annotations" / "captions_train2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def test_reads_official_coco_captions(tmp_path):
    path = official_coco(tmp_path)
    read = readers.read_captions(path, image_root=tmp_path / "train2014")
    assert len(read.examples) == 6 and set(read.images) == {9, 25, 30}
    assert read.references[25] == ["A red photo number 1.", "A red photo number 4."]
    assert all(e.prompt == "" and e.question_id is None for e in read.examples)
    pixels = data.load_pixels(read.images[9], 32)
    assert pixels.shape == (3, 32, 32) and torch.allclose(pixels[:, 16, 16], (torch.tensor([200, 30, 30]) / 255 - 0.5) / 0.5, atol=0.02)


def test_reads_karpathy_split_with_restval_as_train(tmp_path):
    entries = []
    for cocoid, (split, folder) in enumerate([("train", "train2014"), ("restval", "val2014"), ("val", "val2014"), ("test", "val2014")]):
        file_name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(tmp_path / folder / file_name)
        entries.append({"filepath": folder, "filename": file_name, "imgid": cocoid + 50, "split": split, "cocoid": cocoid,
                        "sentenceids": [0, 1], "sentences": [{"tokens": ["a", "cat"], "raw": f"A cat {cocoid}.", "imgid": cocoid,
                                                              "sentid": 0}, {"tokens": ["cat"], "raw": "Cat", "sentid": 1}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    train = readers.read_captions(path, image_root=tmp_path, split="train")
    assert set(train.images) == {0, 1} and len(train.examples) == 4
    assert train.references[1] == ["A cat 1.", "Cat"] and train.images[1] == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    assert set(readers.read_captions(path, tmp_path, split="val").images) == {2}
    assert set(readers.read_captions(path, tmp_path, split="test").images) == {3}
    assert len(readers.read_captions(path, tmp_path).examples) == 8


def official_vqa(root: Path) -> tuple[Path, Path]:
    for image_id in (42, 73):
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = [{"image_id": 42, "question": "What color is the photo?", "question_id": 42000},
                 {"image_id": 73, "question": "How many cats?", "question_id": 73001}]
    human = lambda *texts: [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]
    annotations = [{"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
                    "multiple_choice_answer": "red", "answers": human(*["red"] * 8, "Red", "pink")},
                   {"question_id": 73001, "image_id": 73, "question_type": "how many", "answer_type": "number",
                    "multiple_choice_answer": "2", "answers": human(*["2"] * 7, "two", "3", "2")}]
    questions_path, annotations_path = root / "v2_OpenEnded_mscoco_val2014_questions.json", root / "v2_mscoco_val2014_annotations.json"
    questions_path.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                          "data_subtype": "val2014", "license": {}, "questions": questions}))
    annotations_path.write_text(json.dumps({"info": {}, "data_type": "mscoco", "data_subtype": "val2014", "annotations": annotations}))
    return questions_path, annotations_path


def test_reads_vqav2_with_coco_file_names(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    read = readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert [(e.question_id, e.prompt, e.target) for e in read.examples] == [
        (42000, "question: What color is the photo? answer:", "red"), (73001, "question: How many cats? answer:", "2")]
    assert read.references[42000] == ["red"] * 8 + ["Red", "pink"] and len(read.references[73001]) == 10
    assert read.images[73] == tmp_path / "val2014" / "COCO_val2014_000000000073.jpg"
    questions_only = readers.read_vqa(questions, image_root=tmp_path / "val2014")  # test-dev style
    assert [e.target for e in questions_only.examples] == ["", ""]


def test_reads_the_synthetic_world_with_the_same_readers(world):
    captions = readers.read_captions(world / "captions_val.json")
    assert len(captions.examples) == 5 * 8 and all(len(r) == 5 for r in captions.references.values())
    vqa = readers.read_vqa(world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json")
    truth = {a["question_id"]: a["multiple_choice_answer"] for a in load_json(world / "annotations_val.json")["annotations"]}
    assert {e.question_id: e.target for e in vqa.examples} == truth
    assert all(e.prompt.startswith("question: ") and e.prompt.endswith("? answer:") for e in vqa.examples)
    videos = readers.read_vqa(world / "video_questions_val.json", world / "video_annotations_val.json",
                           world / "video_captions_val.json", num_frames=4)
    assert len(videos.examples) == 9 and all(p.is_dir() for p in videos.images.values())
    assert data.load_pixels(videos.examples[0].path, 64).shape == (4, 3, 64, 64)


# --- bad input -------------------------------------------------------------------------------

def break_coco(root: Path, case: str) -> tuple[Path, dict, str, str]:
    """Breaks one thing in a small COCO layout; returns (json, reader kwargs, text the error names, reason)."""
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


@pytest.mark.parametrize("case", ["missing image file", "missing field", "missing file_name", "unknown image_id",
                                  "empty caption", "wrong frame count"])
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
    with pytest.raises(readers.DataError, match=r"annotations\[1\] field 'multiple_choice_answer'") as error:
        readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert str(annotations) in str(error.value)
    with pytest.warns(UserWarning, match="1 x missing annotation, 1 x missing field"):
        read = readers.read_vqa(questions, annotations, image_root=tmp_path / "val2014", on_bad_sample="skip")
    assert [e.question_id for e in read.examples] == [42000]


def test_vqa_questions_on_a_skipped_image_are_left_out_and_counted_once(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    images = tmp_path / "image_info.json"
    images.write_text(json.dumps({"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 73)]}))
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(readers.DataError, match=r"images\[0\] field 'file_name'"):
        readers.read_vqa(questions, annotations, images, image_root=tmp_path / "val2014")
    with pytest.warns(UserWarning):
        read = readers.read_vqa(questions, annotations, images, image_root=tmp_path / "val2014", on_bad_sample="skip")
    assert [e.question_id for e in read.examples] == [73001] and read.skipped == Counter({"missing image file": 1})


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
    assert str(broken) in str(error.value) and "'file_name'" in str(error.value) and "25" in str(error.value)
    lenient = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [lenient[i]["image_id"] for i in range(len(lenient))]
    assert ids == [9, 30, 30, 9, 30, 30] and len(caught) == 1 and lenient.unreadable == {broken}

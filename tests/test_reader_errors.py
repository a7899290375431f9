"""readers.py on bad input, one case at a time: a missing file or field, an unknown or duplicate id,
an empty caption, a wrong frame count, an image path outside the data folder, a VQA annotation
without ten answers. Each raises an error naming file and field, or is skipped and counted."""

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from coco_files import karpathy_file, official_coco, official_vqa, write_image

from conftest import load_json
from support import readers


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

"""Tiny data files in the official layouts, for the reader and data tests: COCO captions with images
in train2014/, VQAv2 questions and annotations, and Karpathy's split file."""

import json
from pathlib import Path

from PIL import Image


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

"""Writing files so that a crash never leaves a torn one (a temp file, then a rename), and the
writers' side of the formats support/readers.py reads: COCO captions and VQAv2 questions and
annotations of one split of generated items (stage0/synthetic.py).
"""

import json
import os
from pathlib import Path


def write_atomically(path: str | Path, write) -> None:
    """Calls write(temporary_path), then renames the temporary file to `path`: a crash never
    leaves a torn file. The temporary sits next to `path` (a rename is atomic within one file
    system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, content: dict) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(content)))


def write_split(out: Path, prefix: str, split: str, items: list[dict], info: dict) -> dict:
    """The writers' side of the formats support/readers.py reads: COCO captions, VQAv2 questions +
    annotations and the scenes of one split of generated items (stage0/synthetic.py); returns
    counts."""
    images = [
        {"id": i["id"], "file_name": i["file_name"], "width": i["size"], "height": i["size"]}
        for i in items
    ]
    captions = [
        {"id": i["id"] * 10 + k, "image_id": i["id"], "caption": c}
        for i in items
        for k, c in enumerate(i["captions"])
    ]
    questions, annotations = [], []
    for item in items:
        for k, (question, answer, question_type, answer_type, answers) in enumerate(
            item["questions"]
        ):
            question_id = item["id"] * 1000 + k  # VQAv2's own convention
            questions.append(
                {"image_id": item["id"], "question": question, "question_id": question_id}
            )
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": item["id"],
                    "question_type": question_type,
                    "answer_type": answer_type,
                    "multiple_choice_answer": answer,
                    "answers": answers,
                }
            )
    vqa_header = {"info": info, "data_type": "shapes", "data_subtype": split, "license": {}}
    write_json(
        out / f"{prefix}captions_{split}.json",
        {"info": info, "licenses": [], "images": images, "annotations": captions},
    )
    write_json(
        out / f"{prefix}questions_{split}.json",
        {**vqa_header, "task_type": "Open-Ended", "questions": questions},
    )
    write_json(
        out / f"{prefix}annotations_{split}.json", {**vqa_header, "annotations": annotations}
    )
    write_json(
        out / f"{prefix}scenes_{split}.json",
        {
            "scenes": [
                {"image_id": i["id"], "file_name": i["file_name"], **i["scene"]} for i in items
            ]
        },
    )
    return {"items": len(items), "captions": len(captions), "questions": len(questions)}

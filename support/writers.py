"""Writing files so that a crash never leaves a torn one (a temp file, then a rename), and never
over files a command did not write (a manifest of its own files, with their hashes); the writers'
side of the formats support/readers.py reads: COCO captions and VQAv2 questions and annotations
of one split of generated items (stage0/synthetic.py).
"""

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"  # in a folder a command writes into: its files, with their sha256


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


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def existing_targets(folder: Path, names: list[str], subfolders: list[str]) -> list[Path]:
    """What a command would write or replace in `folder` that is already there: the files
    `names`, and every file under `subfolders` (replaced whole)."""
    files = [folder / name for name in names if (folder / name).is_file()]
    for subfolder in subfolders:
        files += sorted(path for path in (folder / subfolder).rglob("*") if path.is_file())
    return files


def refuse_foreign_files(folder: Path, targets: list[Path], command: str) -> None:
    """A command never overwrites what it did not write: each of `targets` must be listed in the
    folder's manifest with its current hash (the command's own earlier output), else a
    FileExistsError names them and the flag that allows it."""
    own = read_manifest(folder)
    foreign = [
        path for path in targets if own.get(path.relative_to(folder).as_posix()) != sha256(path)
    ]
    if foreign:
        shown = ", ".join(str(path.relative_to(folder)) for path in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise FileExistsError(
            f"{folder}: {command} would replace {len(foreign)} file(s) it did not write: "
            f"{shown}{more}. Choose another folder, or pass --overwrite true to replace them"
        )


def read_manifest(folder: Path) -> dict:
    """{relative path: sha256} of the files the folder's manifest lists; {} without one."""
    manifest = folder / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def write_manifest(folder: Path, files: list[Path], add: bool = False) -> None:
    """Record `files` (written by this command) in the folder's manifest, with their sha256;
    add: keep the entries already there (a later step of the same command)."""
    own = read_manifest(folder) if add else {}
    own.update({path.relative_to(folder).as_posix(): sha256(path) for path in files})
    write_json(folder / MANIFEST, dict(sorted(own.items())))


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

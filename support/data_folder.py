"""A data folder: which files hold each task of a split (`TASK_FILES`), and reading one task with
the readers of support/readers.py. data.py builds the datasets a stage trains on from them.
"""

from pathlib import Path

from support.data_checks import DataError
from support.readers import Annotations, read_captions, read_vqa

# Files of each task in a data folder ({split} is filled in), as `python -m stage0.synthetic` writes
# them. Real COCO / VQAv2 files are used by giving them these names (or symlinks) in one folder.
TASK_FILES = {
    "caption": {"captions": "captions_{split}.json"},
    "vqa": {
        "questions": "questions_{split}.json",
        "annotations": "annotations_{split}.json",
        "images": "captions_{split}.json",
    },
    "video_caption": {"captions": "video_captions_{split}.json"},
    "video_vqa": {
        "questions": "video_questions_{split}.json",
        "annotations": "video_annotations_{split}.json",
        "images": "video_captions_{split}.json",
    },
}


SPLITS = ("train", "val", "test")


def available_tasks(
    folder: str | Path, split: str, requested: list[str] | None = None
) -> list[str]:
    """The tasks of `split` whose files are all in `folder`, of `requested` (None: every task).

    With requested=None every task the folder holds in any split is asked for: one whose first
    file (captions, or questions) exists for some split but that lacks a file of this split is an
    error naming the missing file, never a task silently left out."""
    folder, complete = Path(folder), []
    for task, files in TASK_FILES.items():
        if requested is not None and task not in requested:
            continue
        paths = [folder / name.format(split=split) for name in files.values()]
        missing = [path.name for path in paths if not path.exists()]
        if not missing:
            complete.append(task)
            continue
        first = next(iter(files.values()))
        held = [
            first.format(split=other)
            for other in SPLITS
            if (folder / first.format(split=other)).exists()
        ]
        if requested is None and held:
            needed = ", ".join(path.name for path in paths)
            raise DataError(
                f"{folder}: {', '.join(missing)} missing; the folder holds task {task!r} "
                f"({', '.join(held)}), whose split {split!r} needs {needed}. Add the file, or "
                "name the tasks to use (--tasks)"
            )
    return complete


def read_task(
    folder: str | Path,
    task: str,
    split: str,
    on_bad_sample: str = "error",
    allow_empty: bool = False,
) -> Annotations:
    """One task of one split; a Karpathy file under the captions names gives that split's images.
    A task without a usable sample is an error that names it, never a silent gap in the data
    (allow_empty: for a text corpus, which an empty task leaves whole)."""
    if task not in TASK_FILES:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_FILES)}")
    files = {
        role: Path(folder) / name.format(split=split) for role, name in TASK_FILES[task].items()
    }
    videos = task.startswith("video")
    if "captions" in files:
        read = read_captions(
            files["captions"], split=split, on_bad_sample=on_bad_sample, videos=videos
        )
    else:
        read = read_vqa(
            files["questions"],
            files["annotations"],
            files["images"],
            on_bad_sample=on_bad_sample,
            videos=videos,
        )
    if not read.examples and not allow_empty:
        skipped = (
            ", ".join(f"{count} x {reason}" for reason, count in sorted(read.skipped.items()))
            or "none"
        )
        raise DataError(
            f"{folder}: task {task!r} of split {split!r} has no usable sample in "
            f"{', '.join(sorted({path.name for path in files.values()}))} (skipped: {skipped}); "
            "fix the files, or leave the task out (--tasks of train_stage*.py and evaluate.py)"
        )
    return read

"""Readers: the annotation files of the input box of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896).

The paper trains on captioning and evaluates captioning (COCO-style references) and VQA (VQAv2
accuracy over 10 human answers), for images and for videos whose frames go through the same ViT.
These readers turn COCO captions (official or Karpathy split) and VQAv2 files into `Example`s;
a video is a folder of frames. Every check names the file, the field and what was expected; a
bad sample raises `DataError`, or with on_bad_sample="skip" is counted and reported once. Checked
here, before any training step: fields, ids (unique, known), image paths (present, inside the
data folder), frame counts; decoding is checked when a sample is loaded (data.py). The checks
are in support/data_checks.py; writing these formats, in support/writers.py.
"""

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from support.data_checks import BadSamples, DataError, inside_root, read_json, required, top_level
from support.images import frame_files


@dataclass
class Example:
    """One training pair before tokenization; the loss is on `target` (and EOS) only."""

    image_id: int
    path: Path  # an image file, or a folder of frames for a video
    prompt: str  # text before the target: "" for captions, vqa_prompt(question) for VQA
    target: str  # a caption, or the answer
    question_id: int | None = None
    # the file and entry it was read from, for messages: "captions.json: annotations[3]"
    source: str = ""


@dataclass
class Annotations:
    examples: list[Example]  # one per caption, or one per question
    images: dict[int, Path]  # image_id -> image file or frame folder
    # captions per image_id, or the 10 human answers per question_id
    references: dict[int, list[str]]
    skipped: Counter = field(default_factory=Counter)  # bad samples left out, per reason


HUMAN_ANSWERS = 10  # per VQAv2 question: VQA accuracy is min(matches / 3, 1) over them


def vqa_prompt(question: str) -> str:
    return f"question: {question} answer:"


def check_file(
    path: Path, num_frames: int | None, where: str, bad: BadSamples, videos: bool = False
) -> bool:
    """Cheap checks up front (existence, frame count); decoding errors surface in the dataset.
    An image unless `videos`; a video's frame count is num_frames, or any when None (collate pads
    a batch's videos to its longest, data.load_pixels samples long ones down to max_frames)."""
    # os.path, not Path.is_file: False, not OSError, for a name too long for the file system
    if not videos:
        if os.path.isfile(path):
            return True
        bad(
            "missing image file",
            f"{path}: image file not found ({where} field 'file_name'); expected an image file"
            + (
                " (this is a folder: videos are read by the video tasks, video_*.json)"
                if os.path.isdir(path)
                else ""
            ),
        )
        return False
    if not os.path.isdir(path):
        bad(
            "missing video folder",
            f"{path}: video folder not found ({where} field 'file_name'); expected a folder of "
            "frames",
        )
        return False
    found = len(frame_files(path))
    if found == 0 or (num_frames is not None and found != num_frames):
        bad(
            "wrong frame count",
            f"{path}: {found} frames ({where} field 'file_name'); "
            f"expected {num_frames or 'at least 1'} frames",
        )
        return False
    return True


def add_image(
    images: dict,
    first: dict,
    image_id: int,
    file: Path,
    where: str,
    num_frames: int | None,
    videos: bool,
    bad: BadSamples,
) -> None:
    """images[image_id] = file, or None for a bad entry (its annotations are then left out). An id
    listed twice with different files leaves out both: its annotations could describe either."""
    if image_id not in first:
        first[image_id] = (where, file)
        images[image_id] = file if check_file(file, num_frames, where, bad, videos) else None
    elif file != first[image_id][1]:
        # a bad first entry, or an earlier duplicate, was counted already
        counted = images[image_id] is None
        bad(
            "duplicate image id",
            f"{where} field 'id' is {image_id}, as in {first[image_id][0]}, with another file "
            f"({file}, not {first[image_id][1]}); expected unique ids: the annotations could "
            "describe either file",
            count=1 if counted else 2,
        )
        images[image_id] = None


def read_images(
    data: dict, path: Path, image_root: Path, num_frames: int | None, videos: bool, bad: BadSamples
) -> dict:
    """image_id -> path from a COCO `images` list; None for a skipped entry, whose annotations are
    then left out silently (counted once, under the image's reason)."""
    images, first = {}, {}
    for index, entry in enumerate(top_level(data, "images", path)):
        where = f"{path}: images[{index}]"
        image_id, file_name = (
            required(entry, "id", int, where, bad),
            required(entry, "file_name", str, where, bad),
        )
        if image_id is None:
            continue
        file = (
            None
            if file_name is None
            else inside_root(image_root, file_name, where, "'file_name'", bad)
        )
        if file is None:
            images.setdefault(image_id, None)
        else:
            add_image(images, first, image_id, file, where, num_frames, videos, bad)
    return images


def is_karpathy(data) -> bool:
    """Karpathy's split file: entries of `images` hold their own `sentences`; no `annotations`
    list."""
    images = data.get("images") if isinstance(data, dict) else None
    return (
        isinstance(images, list)
        and bool(images)
        and isinstance(images[0], dict)
        and "sentences" in images[0]
        and "annotations" not in data
    )


def read_captions(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    num_frames: int | None = None,
    on_bad_sample: str = "error",
    videos: bool = False,
) -> Annotations:
    """COCO captions: the official captions_*.json (images + annotations; `split` unused) or
    Karpathy's dataset_coco.json (`split` train/val/test, restval counted as train; None = all).
    Image paths are image_root / file_name (root defaults to the JSON's folder), inside the root.
    Videos (videos=True or num_frames given) are folders of num_frames frames (None: any number)."""
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    data, bad, videos = read_json(path), BadSamples(on_bad_sample), videos or num_frames is not None
    if is_karpathy(data):
        images, pairs = read_karpathy(data, path, image_root, split, num_frames, videos, bad)
    else:
        images, pairs = read_images(data, path, image_root, num_frames, videos, bad), []
        for index, annotation in enumerate(top_level(data, "annotations", path)):
            where = f"{path}: annotations[{index}]"
            image_id = required(annotation, "image_id", int, where, bad)
            caption = required(annotation, "caption", str, where, bad)
            if image_id is not None and image_id not in images:
                bad(
                    "unknown image_id",
                    f"{where} field 'image_id' is {image_id}; expected the id of an entry in "
                    "'images'",
                )
            elif image_id is not None and caption is not None:
                pairs.append((image_id, caption, where))
    pairs = [
        (image_id, caption, where)
        for image_id, caption, where in pairs
        if images[image_id] is not None
    ]
    images = {image_id: file for image_id, file in images.items() if file is not None}
    references = defaultdict(list)
    for image_id, caption, _ in pairs:
        references[image_id].append(caption)
    examples = [
        Example(image_id, images[image_id], "", caption, source=where)
        for image_id, caption, where in pairs
    ]
    return Annotations(examples, images, dict(references), bad.report(path))


def read_karpathy(
    data, path, image_root, split, num_frames, videos, bad
) -> tuple[dict, list[tuple[int, str, str]]]:
    """-> image_id -> path (None: a skipped entry), [(image_id, caption, where it is)] of
    `split`."""
    if split not in (None, "train", "restval", "val", "test"):
        raise DataError(
            f"{path}: split {split!r}; expected train (restval included), val or test, as in "
            "Karpathy's file"
        )
    wanted = None if split is None else ({"train", "restval"} if split == "train" else {split})
    images, first, pairs = {}, {}, []
    for index, entry in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if wanted is not None and required(entry, "split", str, where, bad) not in wanted:
            continue
        image_id = required(
            entry,
            "cocoid" if isinstance(entry, dict) and "cocoid" in entry else "imgid",
            int,
            where,
            bad,
        )
        file_name = required(entry, "filename", str, where, bad)
        fields = entry if isinstance(entry, dict) else {}  # not a dict: its fields are missing
        sentences, folder = fields.get("sentences"), fields.get("filepath") or ""
        if not isinstance(sentences, list) or not isinstance(folder, str):
            bad(
                "missing field",
                f"{where} field 'sentences' or 'filepath' is malformed; expected a list of "
                "{raw, tokens} and a folder name",
            )
            continue
        if image_id is None or file_name is None:
            continue
        file = inside_root(
            image_root, os.path.join(folder, file_name), where, "'filepath' + 'filename'", bad
        )
        if file is None:
            images.setdefault(image_id, None)
            continue
        add_image(images, first, image_id, file, where, num_frames, videos, bad)
        for number, sentence in enumerate(sentences):
            caption = required(sentence, "raw", str, f"{where}.sentences[{number}]", bad)
            if caption is not None:
                pairs.append((image_id, caption, f"{where}.sentences[{number}]"))
    return images, pairs


def read_vqa(
    questions_path: str | Path,
    annotations_path: str | Path | None = None,
    images_path: str | Path | None = None,
    image_root: str | Path | None = None,
    num_frames: int | None = None,
    on_bad_sample: str = "error",
    videos: bool = False,
) -> Annotations:
    """VQAv2 questions (+ annotations; without them, as for test-dev, targets are empty).
    VQAv2 names images by id only: paths come from the `images` list of a COCO-format JSON
    (`images_path`, e.g. captions_<split>.json; a Karpathy file lends all its splits' images), else
    from COCO's naming, COCO_<data_subtype>_<id:012d>.jpg. Videos: as in read_captions."""
    questions_path, bad, videos = (
        Path(questions_path),
        BadSamples(on_bad_sample),
        videos or num_frames is not None,
    )
    questions_data = read_json(questions_path)
    questions = top_level(questions_data, "questions", questions_path)
    if images_path is not None:
        images_path = Path(images_path)
        image_root = Path(image_root) if image_root is not None else images_path.parent
        images_data = read_json(images_path)
        images = (
            read_karpathy(images_data, images_path, image_root, None, num_frames, videos, bad)[0]
            if is_karpathy(images_data)
            else read_images(images_data, images_path, image_root, num_frames, videos, bad)
        )
    else:
        image_root = Path(image_root) if image_root is not None else questions_path.parent
        # no str.format on a template: a data_subtype holding braces would be read as fields
        coco_prefix = f"COCO_{questions_data.get('data_subtype', '')}_"
    # question_id -> (multiple_choice_answer, the human answers); None: two annotations differ
    answers = {}
    if annotations_path is not None:
        annotations_path = Path(annotations_path)
        for index, annotation in enumerate(
            top_level(read_json(annotations_path), "annotations", annotations_path)
        ):
            where = f"{annotations_path}: annotations[{index}]"
            question_id = required(annotation, "question_id", int, where, bad)
            answer = required(annotation, "multiple_choice_answer", str, where, bad)
            humans = annotation.get("answers") if isinstance(annotation, dict) else None
            if not isinstance(humans, list) or not all(
                isinstance(h, dict) and isinstance(h.get("answer"), str) for h in humans
            ):
                bad(
                    "missing field",
                    f"{where} field 'answers' is missing or malformed; expected a list of "
                    f"{{answer}}",
                )
            elif len(humans) != HUMAN_ANSWERS:
                bad(
                    "not 10 answers",
                    f"{where} (question_id {question_id}) field 'answers' has {len(humans)} "
                    f"answers; expected {HUMAN_ANSWERS}, the human answers VQA accuracy is "
                    "defined over",
                )
            elif question_id is not None and answer is not None:
                found = (answer, [h["answer"] for h in humans])
                if answers.setdefault(question_id, found) != found:
                    # two annotations of one question that differ: either could be the truth
                    bad(
                        "duplicate question id",
                        f"{where} field 'question_id' is {question_id}, as in an earlier "
                        "annotation, with other answers; expected one annotation per question",
                        count=1 if answers[question_id] is None else 2,
                    )
                    answers[question_id] = None
    examples, references = [], {}
    for index, entry in enumerate(questions):
        where = f"{questions_path}: questions[{index}]"
        values = [
            required(entry, name, kind, where, bad)
            for name, kind in (("question_id", int), ("image_id", int), ("question", str))
        ]
        if None in values:
            continue
        question_id, image_id, question = values
        if images_path is None:
            image_file = image_root / f"{coco_prefix}{image_id:012d}.jpg"
            if not check_file(
                image_file, num_frames, f"{where} (file named after field 'image_id')", bad, videos
            ):
                continue
        elif image_id not in images:
            bad(
                "unknown image_id",
                f"{where} field 'image_id' is {image_id}; expected the id of an entry in 'images' "
                f"of {images_path}",
            )
            continue
        elif (image_file := images[image_id]) is None:
            continue
        if annotations_path is not None and question_id not in answers:
            bad(
                "missing annotation",
                f"{annotations_path}: no annotation with field 'question_id' {question_id} "
                f"({where}); expected one per question",
            )
            continue
        if annotations_path is not None and answers[question_id] is None:
            continue  # its annotations differ: counted there
        answer, humans = answers.get(question_id, ("", []))
        references[question_id] = humans
        examples.append(
            Example(image_id, image_file, vqa_prompt(question), answer, question_id, source=where)
        )
    return Annotations(
        examples, {e.image_id: e.path for e in examples}, references, bad.report(questions_path)
    )

"""The synthetic shapes world, the offline stand-in for the input box of Figure 2 (PaLM2-VAdapter,
arXiv 2402.10896): images of 1-3 coloured shapes and videos of one shape that moves or changes
colour, each with 5 captions (as in COCO) and questions with 10 human answers (as in VQAv2),
written in the COCO-captions and VQAv2 formats so that one reader serves synthetic and real data;
the stored scenes let every caption and answer be checked. The scenes and their pixels are in
stage0/world.py, the captions and questions in stage0/captions.py; this file makes the items and
writes the folder. Making the dataset is its own small program (nanoGPT's
data/<name>/prepare.py): `python -m stage0.synthetic --out data/shapes`.
"""

import argparse
import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from data import TOKENIZER_FILE, Tokenizer, training_texts
from stage0.captions import (
    PLURALS,
    distinct,
    human_answers,
    image_caption,
    image_question,
    surface_variants,
    video_caption,
    video_questions,
)
from stage0.world import (
    COLOURS,
    COLUMNS,
    DIRECTIONS,
    POSITIONS,
    RELATIONS,
    ROWS,
    SHAPES,
    SIZE_WORDS,
    background,
    draw_shape,
    sample_objects,
)
from support.flags import COUNT, NON_NEGATIVE, Number, parse_bool
from support.writers import (
    MANIFEST,
    existing_targets,
    refuse_foreign_files,
    write_json,
    write_manifest,
    write_split,
)

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
CAPTIONS_PER_ITEM = 5  # as in COCO
QUESTIONS_PER_IMAGE, QUESTIONS_PER_VIDEO = 5, 3
ID_BLOCK = 1_000_000  # ids of (images|videos, split) live in separate blocks, unique across splits
# What this command writes into --out: it replaces these (and images/, videos/ whole) only when
# they are its own earlier output, listed in the folder's manifest with their hashes.
OUTPUT_NAMES = [
    f"{prefix}{kind}_{split}.json"
    for prefix in ("", "video_")
    for kind in ("captions", "questions", "annotations", "scenes")
    for split in SPLITS
] + ["dataset.json", TOKENIZER_FILE]
OUTPUT_FOLDERS = ["images", "videos"]
# The world flags' ranges; the others are counts (and the seed) that may be 0.
WORLD_RANGES = {"image_size": Number(int, low=16), "num_frames": Number(int, low=2)}

__all__ = ["GENERATOR_VERSION", "SPLITS", "CAPTIONS_PER_ITEM", "WorldConfig", "generate", "main"]
# The world's whole vocabulary is public here too: the tests check the written files against it.
__all__ += ["COLOURS", "COLUMNS", "DIRECTIONS", "POSITIONS", "RELATIONS", "ROWS", "SHAPES"]
__all__ += ["SIZE_WORDS", "PLURALS", "surface_variants"]


@dataclass
class WorldConfig:
    train_images: int = field(default=4000, metadata={"help": "images in the train split"})
    val_images: int = field(default=300, metadata={"help": "images in the val split"})
    test_images: int = field(default=300, metadata={"help": "images in the test split"})
    train_videos: int = field(default=600, metadata={"help": "videos in the train split"})
    val_videos: int = field(default=100, metadata={"help": "videos in the val split"})
    test_videos: int = field(default=100, metadata={"help": "videos in the test split"})
    image_size: int = field(
        default=64, metadata={"help": "side of the square images and frames, pixels"}
    )
    num_frames: int = field(default=8, metadata={"help": "frames per video"})
    seed: int = field(default=0, metadata={"help": "the same seed writes byte-identical files"})


def item_rng(seed: int, item_id: int) -> random.Random:
    # One generator per image or video, so val/test stay the same when the train count changes.
    return random.Random(f"{seed}:{item_id}")


def make_image(out: Path, split: str, item_id: int, config: WorldConfig) -> dict:
    rng = item_rng(config.seed, item_id)
    size = config.image_size
    objects = sample_objects(rng, size)
    image = Image.fromarray(background(rng, size))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj["shape"], obj["box"], COLOURS[obj["colour"]])
    file_name = f"images/{split}/{item_id:012d}.png"
    image.save(out / file_name)
    captions = distinct(lambda: image_caption(rng, objects), CAPTIONS_PER_ITEM)
    questions = distinct(lambda: image_question(rng, objects), QUESTIONS_PER_IMAGE)
    return {
        "id": item_id,
        "file_name": file_name,
        "size": size,
        "scene": {"objects": objects},
        "captions": captions,
        "questions": [(*q, human_answers(rng, q[1])) for q in questions],
    }


def make_video(out: Path, split: str, item_id: int, config: WorldConfig) -> dict:
    """One object that moves across a fixed background, or stays and changes colour once."""
    rng = item_rng(config.seed, item_id)
    size, frames = config.image_size, config.num_frames
    shape, size_name, motion = (
        rng.choice(SHAPES),
        rng.choice(list(SIZE_WORDS)),
        rng.choice(DIRECTIONS + ("colour",)),
    )
    side = max(3, int((0.2 if size_name == "small" else 0.3) * size))
    start, end = (
        rng.sample(list(COLOURS), 2) if motion == "colour" else [rng.choice(list(COLOURS))] * 2
    )
    change_frame = rng.randint(1, frames - 1) if motion == "colour" else frames
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    far = size - side  # a moving object crosses the whole frame, edge to edge
    boxes = []
    for t in range(frames):
        travelled = round(far * t / (frames - 1))
        x_t, y_t = {
            "left": (far - travelled, y),
            "right": (travelled, y),
            "up": (x, far - travelled),
            "down": (x, travelled),
        }.get(motion, (x, y))
        boxes.append([x_t, y_t, x_t + side, y_t + side])
    colours = [start if t < change_frame else end for t in range(frames)]
    folder = f"videos/{split}/{item_id:012d}"
    (out / folder).mkdir(parents=True)
    pixels = background(rng, size)
    for t in range(frames):
        frame = Image.fromarray(pixels)
        draw_shape(ImageDraw.Draw(frame), shape, boxes[t], COLOURS[colours[t]])
        frame.save(out / folder / f"frame_{t:03d}.png")
    video = {
        "shape": shape,
        "size": size_name,
        "motion": motion,
        "colours": colours,
        "boxes": boxes,
    }
    questions = rng.sample(video_questions(video), QUESTIONS_PER_VIDEO)
    return {
        "id": item_id,
        "file_name": folder,
        "size": size,
        "scene": video,
        "captions": distinct(lambda: video_caption(rng, video), CAPTIONS_PER_ITEM),
        "questions": [(*q, human_answers(rng, q[1])) for q in questions],
    }


def generate(out: str | Path, config: WorldConfig | None = None, overwrite: bool = False) -> dict:
    """Writes the world under `out`; returns the content of its dataset.json. Files already in
    `out` that this command did not write are refused (named), unless overwrite."""
    out, config = Path(out), config or WorldConfig()
    if config.num_frames < 2 or config.image_size < 16:
        raise ValueError(
            "need num_frames >= 2 (to see motion) and image_size >= 16 (to tell shapes apart)"
        )
    if not overwrite and not written_before_manifests(out):
        targets = existing_targets(out, OUTPUT_NAMES, OUTPUT_FOLDERS)
        refuse_foreign_files(out, targets, "python -m stage0.synthetic")
    for folder in OUTPUT_FOLDERS:
        if (out / folder).exists():  # stale files would join the new splits
            shutil.rmtree(out / folder)
    counts = {}
    for block, (kind, prefix, make) in enumerate(
        (("images", "", make_image), ("videos", "video_", make_video))
    ):
        for split_index, split in enumerate(SPLITS):
            count = getattr(config, f"{split}_{kind}")
            if count >= ID_BLOCK:
                raise ValueError(f"at most {ID_BLOCK - 1} {kind} per split")
            (out / kind / split).mkdir(parents=True, exist_ok=True)
            first_id = (3 * block + split_index) * ID_BLOCK + 1
            progress = tqdm(range(count), desc=f"{kind} {split}", leave=False)
            items = [make(out, split, first_id + i, config) for i in progress]
            info = {
                "description": "synthetic shapes world of stage0/synthetic.py",
                "version": GENERATOR_VERSION,
            }
            counts[f"{prefix}{split}"] = write_split(out, prefix, split, items, info)
    vocabulary = {
        "shape": SHAPES,
        "colour": list(COLOURS),
        "size": list(SIZE_WORDS),
        "rows": ROWS,
        "columns": COLUMNS,
    }
    # stage0/scenes.py reads the labels with it
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "options": dataclasses.asdict(config),
        "counts": counts,
        "scene_vocabulary": vocabulary,
    }
    write_json(out / "dataset.json", summary)
    write_manifest(out, existing_targets(out, OUTPUT_NAMES, OUTPUT_FOLDERS))
    return summary


def written_before_manifests(out: Path) -> bool:
    """A world this command wrote before it kept a manifest: its dataset.json, and no manifest."""
    dataset = out / "dataset.json"
    if (out / MANIFEST).exists() or not dataset.is_file():
        return False
    try:
        return "generator_version" in json.loads(dataset.read_text())
    except (ValueError, TypeError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the synthetic shapes world (COCO captions + VQAv2 formats)."
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. data/shapes")
    for option in dataclasses.fields(WorldConfig):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=WORLD_RANGES.get(option.name, NON_NEGATIVE),
            default=option.default,
            help=f"{option.metadata['help']} (default {option.default})",
        )
    parser.add_argument(
        "--vocab-size",
        type=COUNT,
        default=1000,
        help="sentencepiece vocabulary asked for; a small corpus gives fewer (default 1000)",
    )
    parser.add_argument(
        "--tokenizer", help="copy this sentencepiece model instead of training one (default: train)"
    )
    parser.add_argument(
        "--overwrite",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="replace files in --out that this command did not write (default false: refused)",
    )
    arguments, start = vars(parser.parse_args()), time.perf_counter()
    out, vocab_size, arguments_tokenizer, overwrite = (
        Path(arguments.pop("out")),
        arguments.pop("vocab_size"),
        arguments.pop("tokenizer"),
        arguments.pop("overwrite"),
    )
    try:
        summary = generate(out, WorldConfig(**arguments), overwrite=overwrite)
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None
    if arguments_tokenizer:  # the tokenizer the shipped stand-ins were pretrained with
        shutil.copyfile(arguments_tokenizer, out / TOKENIZER_FILE)
    tokenizer = (
        Tokenizer(out / TOKENIZER_FILE)
        if arguments_tokenizer
        else Tokenizer.train(training_texts(out), out / TOKENIZER_FILE, vocab_size)
    )
    write_manifest(out, [out / TOKENIZER_FILE], add=True)
    print(
        f"{json.dumps(summary['counts'])}\ntokenizer: {out / TOKENIZER_FILE} "
        f"({tokenizer.vocab_size} pieces)"
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

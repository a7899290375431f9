"""Data: the input box of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896), images or videos plus text.

The paper trains the adapters on captioning and evaluates captioning (COCO-style references) and
VQA (VQAv2 accuracy over 10 human answers), for images and for videos whose frames go through
the same ViT. This file holds, top to bottom:
1. a synthetic world of coloured shapes written to disk in the COCO-captions and VQAv2 formats,
   so the method runs offline and one reader serves synthetic and real data (`python data.py --out DIR`);
2. readers for COCO captions (official or Karpathy split), VQAv2, and their video variant;
3. image loading, a sentencepiece tokenizer, the dataset, `collate`, and a frozen-feature cache.
"""

import argparse
import dataclasses
import io
import json
import math
import random
import shutil
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from tqdm import tqdm


class DataError(ValueError):
    """A data file is missing, unreadable or lacks a field; the message names file, field and expectation."""


# ---------------------------------------------------------------------------------------------
# 1. The synthetic world
# ---------------------------------------------------------------------------------------------

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (150, 60, 190), "orange": (245, 130, 30)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
ROWS, COLUMNS = ("top", "bottom"), ("left", "middle", "right")
POSITIONS = tuple(f"{row} {column}" for row in ROWS for column in COLUMNS)
DIRECTIONS = ("left", "right", "up", "down")
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
CAPTIONS_PER_ITEM = 5  # as in COCO
QUESTIONS_PER_IMAGE, QUESTIONS_PER_VIDEO = 5, 3
HUMAN_ANSWERS = 10  # as in VQAv2
ID_BLOCK = 1_000_000  # ids of (images|videos, split) live in separate blocks, unique across splits


@dataclass
class WorldConfig:
    train_images: int = field(default=4000, metadata={"help": "images in the train split"})
    val_images: int = field(default=300, metadata={"help": "images in the val split"})
    test_images: int = field(default=300, metadata={"help": "images in the test split"})
    train_videos: int = field(default=600, metadata={"help": "videos in the train split"})
    val_videos: int = field(default=100, metadata={"help": "videos in the val split"})
    test_videos: int = field(default=100, metadata={"help": "videos in the test split"})
    image_size: int = field(default=64, metadata={"help": "side of the square images and frames, pixels"})
    num_frames: int = field(default=8, metadata={"help": "frames per video"})
    seed: int = field(default=0, metadata={"help": "the same seed writes byte-identical files"})


def item_rng(seed: int, item_id: int) -> random.Random:
    # One generator per image or video, so val/test stay the same when the train count changes.
    return random.Random(f"{seed}:{item_id}")


def background(rng: random.Random, size: int) -> np.ndarray:
    """A light base colour with a gentle gradient and some noise: (size, size, 3) uint8."""
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    base = np.array([rng.uniform(180, 240) for _ in range(3)])
    ramp = np.linspace(-1, 1, size)[:, None] if rng.random() < 0.5 else np.linspace(-1, 1, size)[None, :]
    gradient = rng.uniform(-20, 20) * ramp[..., None]  # (size,1,1) or (1,size,1)
    noise = noise_rng.normal(0, rng.uniform(0, 6), (size, size, 3))
    return np.clip(base + gradient + noise, 150, 255).astype(np.uint8)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple) -> None:
    # No anti-aliasing, so every pixel of a shape is exactly its colour (tests rely on it).
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1  # PIL includes the last pixel
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "star":
        radii = [radius if k % 2 == 0 else 0.45 * radius for k in range(10)]
        draw.polygon([(cx + r * math.sin(k * math.pi / 5), cy - r * math.cos(k * math.pi / 5))
                      for k, r in enumerate(radii)], fill=fill)
    elif shape == "cross":
        arm = (x1 - x0) / 6
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def sample_objects(rng: random.Random, size: int) -> list[dict]:
    """1-3 objects, each in its own cell of a 3x2 grid: they never overlap, and any two are
    separated left/right or above/below by whole boxes, so relations are never ambiguous."""
    cell_width, cell_height = size / 3, size / 2
    cells = rng.sample([(row, column) for row in range(2) for column in range(3)], rng.choice((1, 2, 2, 3, 3)))
    objects = []
    for row, column in sorted(cells):
        if objects and rng.random() < 0.25:  # repeats make counting captions ("two red circles") common
            colour, shape = objects[-1]["colour"], objects[-1]["shape"]
        else:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        size_name = rng.choice(list(SIZE_WORDS))
        side = max(3, int((0.5 if size_name == "small" else 0.85) * min(cell_width, cell_height)))
        left, top = math.ceil(column * cell_width), math.ceil(row * cell_height)
        x = rng.randint(left, int((column + 1) * cell_width) - side)
        y = rng.randint(top, int((row + 1) * cell_height) - side)
        objects.append({"shape": shape, "colour": colour, "size": size_name,
                        "position": f"{ROWS[row]} {COLUMNS[column]}", "box": [x, y, x + side, y + side]})
    return objects


def relations(a: dict, b: dict) -> list[str]:
    """The spatial relations that hold for 'a <relation> b', read from the boxes [x0, y0, x1, y1)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return [relation for relation, true in zip(RELATIONS, (ax1 <= bx0, bx1 <= ax0, ay1 <= by0, by1 <= ay0)) if true]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def definite(obj: dict) -> str:
    return f"the {obj['colour']} {obj['shape']}"


def size_adjective(rng: random.Random, size: str) -> str:
    return rng.choice(SIZE_WORDS[size] + ("", ""))  # often left out, as people do


def object_phrase(rng: random.Random, obj: dict) -> str:
    return article(" ".join(w for w in (size_adjective(rng, obj["size"]), obj["colour"], obj["shape"]) if w))


def group_phrases(rng: random.Random, objects: list[dict]) -> list[str]:
    """'a red circle', 'two small blue squares': one phrase per (colour, shape), in random order."""
    groups = defaultdict(list)
    for obj in objects:
        groups[obj["colour"], obj["shape"]].append(obj)
    phrases = []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            phrases.append(object_phrase(rng, members[0]))
        else:
            sizes = {m["size"] for m in members}
            adjective = size_adjective(rng, sizes.pop()) if len(sizes) == 1 else ""
            words = (NUMBER_WORDS[len(members)], adjective, colour, PLURALS[shape])
            phrases.append(" ".join(w for w in words if w))
    rng.shuffle(phrases)
    return phrases


def join_list(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def image_caption(rng: random.Random, objects: list[dict]) -> str:
    template = rng.randrange(6)
    phrases = group_phrases(rng, objects)
    listing = join_list(phrases)
    if template == 0:
        return listing
    if template == 1:
        return f"there {'is' if phrases[0].startswith('a') else 'are'} {listing}"
    if template == 2:
        return f"{rng.choice(('an image of', 'a picture of', 'a drawing of', 'a picture showing'))} {listing}"
    if template == 3:
        if len(objects) == 1:
            return "a single " + object_phrase(rng, objects[0]).split(" ", 1)[1]
        return f"{NUMBER_WORDS[len(objects)]} {rng.choice(('shapes', 'objects'))}: {listing}"
    # 'a red circle to the left of a red circle' says little: relate only differently named objects.
    pairs = [(a, b) for a in objects for b in objects if (a["colour"], a["shape"]) != (b["colour"], b["shape"])]
    if template == 4 or not pairs:
        where = rng.choice(("at the {}", "in the {}"))
        return " and ".join(f"{object_phrase(rng, obj)} {where.format(obj['position'])}" for obj in objects)
    a, b = rng.choice(pairs)
    joiner = rng.choice((" ", " is "))
    return f"{object_phrase(rng, a)}{joiner}{rng.choice(relations(a, b))} {object_phrase(rng, b)}"


def distinct(make, count: int) -> list:
    """Up to `count` different results of make() (random templates and synonyms)."""
    results = []
    for _ in range(50 * count):
        if len(results) == count:
            break
        made = make()
        if made is not None and made not in results:
            results.append(made)
    return results


def surface_variants(answer: str) -> list[str]:
    variants = [answer.capitalize(), answer + "."]
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        variants.append(NUMBER_WORDS[int(answer)])
    return variants


def human_answers(rng: random.Random, answer: str) -> list[dict]:
    """10 answers as people give them: mostly the truth (always at least 6 times verbatim, so it is
    the majority), sometimes spelled differently ('Red', 'two'), now and then wrong."""
    vocabulary = next((v for v in (list(COLOURS), SHAPES, POSITIONS, DIRECTIONS, ("yes", "no"))
                       if answer in v), [str(n) for n in range(5)])
    answers = []
    for k in range(HUMAN_ANSWERS):
        draw = rng.random()
        if k < 6 or draw < 0.6:
            answers.append((answer, "yes"))
        elif draw < 0.9:
            answers.append((rng.choice(surface_variants(answer)), "yes"))
        else:
            answers.append((rng.choice([v for v in vocabulary if v != answer]), "maybe"))
    rng.shuffle(answers)
    return [{"answer": a, "answer_confidence": c, "answer_id": i + 1} for i, (a, c) in enumerate(answers)]


def image_question(rng: random.Random, objects: list[dict]) -> tuple[str, str, str, str] | None:
    """One (question, answer, question_type, answer_type), or None if the drawn kind does not fit."""
    shapes, colours = Counter(o["shape"] for o in objects), Counter(o["colour"] for o in objects)
    pairs = Counter((o["colour"], o["shape"]) for o in objects)
    unique = [o for o in objects if pairs[o["colour"], o["shape"]] == 1]  # nameable as 'the red circle'
    kind, present = rng.randrange(7), rng.random() < 0.5  # present: about what is there, so yes/no and counts balance
    if kind == 0:
        obj = rng.choice(objects)
        if shapes[obj["shape"]] == 1:
            colour_word = rng.choice(("colour", "color"))
            return f"what {colour_word} is the {obj['shape']}?", obj["colour"], "what color is the", "other"
    elif kind == 1:
        obj = rng.choice(objects)
        if colours[obj["colour"]] == 1:
            return f"what shape is the {obj['colour']} object?", obj["shape"], "what shape is the", "other"
    elif kind == 2:
        shape = rng.choice(list(shapes) if present else SHAPES)
        colour = rng.choice(list(colours) if present else list(COLOURS))
        things = rng.choice(("shapes", "objects"))
        total = rng.choice(("how many shapes are there?", "how many objects are in the picture?"))
        question, count = rng.choice(((f"how many {PLURALS[shape]} are there?", shapes[shape]),
                                      (f"how many {colour} {things} are there?", colours[colour]), (total, len(objects))))
        return question, str(count), "how many", "number"
    elif kind == 3:
        colour, shape = rng.choice(list(pairs)) if present else (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        return f"is there {article(colour)} {shape}?", "yes" if (colour, shape) in pairs else "no", "is there a", "yes/no"
    elif kind == 4 and unique:
        obj = rng.choice(unique)
        return f"where is {definite(obj)}?", obj["position"], "where is the", "other"
    elif kind == 5 and len(unique) >= 2:
        a, b = rng.sample(unique, 2)
        relation = rng.choice(relations(a, b) if present else RELATIONS)
        return f"is {definite(a)} {relation} {definite(b)}?", "yes" if relation in relations(a, b) else "no", "is the", "yes/no"
    elif kind == 6 and unique and len(objects) >= 2:
        b = rng.choice(unique)
        relation = rng.choice(relations(rng.choice([o for o in objects if o is not b]), b))
        matching = [o for o in objects if o is not b and relation in relations(o, b)]
        if len(matching) == 1:
            return f"which shape is {relation} {definite(b)}?", matching[0]["shape"], "which shape is", "other"
    return None


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
    return {"id": item_id, "file_name": file_name, "size": size, "scene": {"objects": objects}, "captions": captions,
            "questions": [(*q, human_answers(rng, q[1])) for q in questions]}


MOTION_WORDS = {"left": ("to the left", "left", "leftwards"), "right": ("to the right", "right", "rightwards"),
                "up": ("up", "upwards"), "down": ("down", "downwards")}
FROM_TO = {"left": "from right to left", "right": "from left to right",
           "up": "from the bottom to the top", "down": "from the top to the bottom"}


def video_caption(rng: random.Random, video: dict) -> str:
    shape, motion, (start, end) = video["shape"], video["motion"], (video["colours"][0], video["colours"][-1])
    template = rng.randrange(5)
    subject = object_phrase(rng, {"shape": shape, "colour": start, "size": video["size"]})
    if motion != "colour":
        verb, direction = rng.choice(("moves", "slides", "travels", "goes")), rng.choice(MOTION_WORDS[motion])
        return (f"{subject} {verb} {direction}", f"{subject} moving {direction}",
                f"the {start} {shape} {verb} {direction}", f"{subject} {verb} {FROM_TO[motion]}",
                f"{subject} is moving {direction}")[template]
    colour_word = rng.choice(("colour", "color"))
    return (f"{article(shape)} changes {colour_word} from {start} to {end}", f"{subject} turns {end}",
            f"the {start} {shape} becomes {end}", f"{article(shape)} that turns from {start} to {end}",
            f"{subject} changing into {end}")[template]


def video_questions(video: dict) -> list[tuple[str, str, str, str]]:
    shape, motion, (start, end) = video["shape"], video["motion"], (video["colours"][0], video["colours"][-1])
    moves, changes = ("yes", "no") if motion != "colour" else ("no", "yes")
    questions = [(f"does the {shape} move?", moves, "does the", "yes/no"),
                 (f"does the {shape} change color?", changes, "does the", "yes/no")]
    if motion != "colour":
        return questions + [(f"which way does the {shape} move?", motion, "which way does the", "other"),
                            (f"in which direction is the {start} {shape} moving?", motion, "in which direction is",
                             "other"),
                            (f"what color is the {shape}?", start, "what color is the", "other"),
                            ("what shape is moving?", shape, "what shape is", "other")]
    return questions + [(f"what color does the {shape} turn?", end, "what color does the", "other"),
                        (f"what color is the {shape} at the start?", start, "what color is the", "other"),
                        (f"what color is the {shape} at the end?", end, "what color is the", "other"),
                        ("what shape changes color?", shape, "what shape", "other")]


def make_video(out: Path, split: str, item_id: int, config: WorldConfig) -> dict:
    """One object that moves across a fixed background, or stays and changes colour once."""
    rng = item_rng(config.seed, item_id)
    size, frames = config.image_size, config.num_frames
    shape, size_name, motion = rng.choice(SHAPES), rng.choice(list(SIZE_WORDS)), rng.choice(DIRECTIONS + ("colour",))
    side = max(3, int((0.2 if size_name == "small" else 0.3) * size))
    start, end = rng.sample(list(COLOURS), 2) if motion == "colour" else [rng.choice(list(COLOURS))] * 2
    change_frame = rng.randint(1, frames - 1) if motion == "colour" else frames
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    far = size - side  # a moving object crosses the whole frame, edge to edge
    boxes = []
    for t in range(frames):
        travelled = round(far * t / (frames - 1))
        x_t, y_t = {"left": (far - travelled, y), "right": (travelled, y), "up": (x, far - travelled),
                    "down": (x, travelled)}.get(motion, (x, y))
        boxes.append([x_t, y_t, x_t + side, y_t + side])
    colours = [start if t < change_frame else end for t in range(frames)]
    folder = f"videos/{split}/{item_id:012d}"
    (out / folder).mkdir(parents=True)
    pixels = background(rng, size)
    for t in range(frames):
        frame = Image.fromarray(pixels)
        draw_shape(ImageDraw.Draw(frame), shape, boxes[t], COLOURS[colours[t]])
        frame.save(out / folder / f"frame_{t:03d}.png")
    video = {"shape": shape, "size": size_name, "motion": motion, "colours": colours, "boxes": boxes}
    questions = rng.sample(video_questions(video), QUESTIONS_PER_VIDEO)
    return {"id": item_id, "file_name": folder, "size": size, "scene": video,
            "captions": distinct(lambda: video_caption(rng, video), CAPTIONS_PER_ITEM),
            "questions": [(*q, human_answers(rng, q[1])) for q in questions]}


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content))


def write_split(out: Path, prefix: str, split: str, items: list[dict]) -> dict:
    """COCO captions, VQAv2 questions + annotations and the scenes of one split; returns counts."""
    info = {"description": "synthetic shapes world of data.py", "version": GENERATOR_VERSION}
    images = [{"id": i["id"], "file_name": i["file_name"], "width": i["size"], "height": i["size"]} for i in items]
    captions = [{"id": i["id"] * 10 + k, "image_id": i["id"], "caption": c}
                for i in items for k, c in enumerate(i["captions"])]
    questions, annotations = [], []
    for item in items:
        for k, (question, answer, question_type, answer_type, answers) in enumerate(item["questions"]):
            question_id = item["id"] * 1000 + k  # VQAv2's own convention
            questions.append({"image_id": item["id"], "question": question, "question_id": question_id})
            annotations.append({"question_id": question_id, "image_id": item["id"], "question_type": question_type,
                                "answer_type": answer_type, "multiple_choice_answer": answer, "answers": answers})
    vqa_header = {"info": info, "data_type": "shapes", "data_subtype": split, "license": {}}
    write_json(out / f"{prefix}captions_{split}.json",
               {"info": info, "licenses": [], "images": images, "annotations": captions})
    write_json(out / f"{prefix}questions_{split}.json",
               {**vqa_header, "task_type": "Open-Ended", "questions": questions})
    write_json(out / f"{prefix}annotations_{split}.json", {**vqa_header, "annotations": annotations})
    write_json(out / f"{prefix}scenes_{split}.json",
               {"scenes": [{"image_id": i["id"], "file_name": i["file_name"], **i["scene"]} for i in items]})
    return {"items": len(items), "captions": len(captions), "questions": len(questions)}


def generate(out: str | Path, config: WorldConfig | None = None) -> dict:
    """Writes the world under `out`; returns the content of its dataset.json."""
    out, config = Path(out), config or WorldConfig()
    if config.num_frames < 2 or config.image_size < 16:
        raise ValueError("need num_frames >= 2 (to see motion) and image_size >= 16 (to tell shapes apart)")
    for folder in ("images", "videos"):
        if (out / folder).exists():
            if not (out / "dataset.json").exists():
                raise FileExistsError(f"{out / folder} exists but {out}/dataset.json does not; not overwriting")
            shutil.rmtree(out / folder)  # our own earlier output: stale files would join the new splits
    counts = {}
    for block, (kind, prefix, make) in enumerate((("images", "", make_image), ("videos", "video_", make_video))):
        for split_index, split in enumerate(SPLITS):
            count = getattr(config, f"{split}_{kind}")
            if count >= ID_BLOCK:
                raise ValueError(f"at most {ID_BLOCK - 1} {kind} per split")
            (out / kind / split).mkdir(parents=True, exist_ok=True)
            first_id = (3 * block + split_index) * ID_BLOCK + 1
            progress = tqdm(range(count), desc=f"{kind} {split}", leave=False)
            items = [make(out, split, first_id + i, config) for i in progress]
            counts[f"{prefix}{split}"] = write_split(out, prefix, split, items)
    summary = {"generator_version": GENERATOR_VERSION, "seed": config.seed, "options": dataclasses.asdict(config),
               "counts": counts}
    write_json(out / "dataset.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# 2. Readers: COCO captions (official or Karpathy), VQAv2; a video is a folder of frames
# ---------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Example:
    """One training pair before tokenization; the loss is on `target` (and EOS) only."""
    image_id: int
    path: Path  # an image file, or a folder of frames for a video
    prompt: str  # text before the target: "" for captions, vqa_prompt(question) for VQA
    target: str  # a caption, or the answer
    question_id: int | None = None


@dataclass
class Annotations:
    examples: list[Example]  # one per caption, or one per question
    images: dict[int, Path]  # image_id -> image file or frame folder
    references: dict[int, list[str]]  # captions per image_id, or the 10 human answers per question_id
    skipped: Counter = field(default_factory=Counter)  # bad samples left out, per reason


def vqa_prompt(question: str) -> str:
    return f"question: {question} answer:"


class BadSamples:
    """on_bad_sample="error" raises DataError at once; "skip" counts the reason and reports all
    counts in one warning at the end, so a single bad file never stops a run."""

    def __init__(self, on_bad_sample: str):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected 'error' or 'skip'")
        self.skip, self.counts = on_bad_sample == "skip", Counter()

    def __call__(self, reason: str, message: str) -> None:
        if not self.skip:
            raise DataError(message)
        self.counts[reason] += 1

    def report(self, source) -> Counter:
        if self.counts:
            counts = ", ".join(f"{count} x {reason}" for reason, count in sorted(self.counts.items()))
            warnings.warn(f"{source}: skipped bad samples: {counts}", stacklevel=3)
        return self.counts


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; expected a JSON annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def top_level(data: dict, key: str, path: Path) -> list:
    # Without the list itself the whole file is wrong: no "skip" for this.
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: top-level field '{key}' is missing; expected a list")
    return data[key]


def required(entry, name: str, kind: type, where: str, bad: BadSamples):
    """entry[name] if it is a `kind` (and not empty for text), else report and return None."""
    value = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        bad("missing field", f"{where} field '{name}' is missing or not {kind.__name__}; expected {kind.__name__}")
        return None
    if kind is str and not value.strip():
        bad(f"empty {name}", f"{where} field '{name}' is empty; expected a non-empty {name}")
        return None
    return value.strip() if kind is str else value


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def check_file(path: Path, num_frames: int | None, where: str, bad: BadSamples) -> bool:
    """Cheap checks up front (existence, frame count); decoding errors surface in the dataset."""
    if num_frames is None:
        if path.is_file():
            return True
        bad("missing image file", f"{path}: image file not found ({where} field 'file_name'); expected an image file"
            + (" (a folder is a video: pass num_frames)" if path.is_dir() else ""))
        return False
    if not path.is_dir():
        bad("missing video folder",
            f"{path}: video folder not found ({where} field 'file_name'); expected a folder of frames")
        return False
    found = len(frame_files(path))
    if found != num_frames:
        bad("wrong frame count", f"{path}: {found} frames ({where} field 'file_name'); expected {num_frames} frames")
        return False
    return True


def read_images(data: dict, path: Path, image_root: Path, num_frames: int | None, bad: BadSamples) -> dict:
    """image_id -> path from a COCO `images` list; None for a skipped entry, whose annotations are
    then left out silently (counted once, under the image's reason)."""
    images = {}
    for index, entry in enumerate(top_level(data, "images", path)):
        where = f"{path}: images[{index}]"
        image_id, file_name = required(entry, "id", int, where, bad), required(entry, "file_name", str, where, bad)
        if image_id is not None:
            good = file_name is not None and check_file(image_root / file_name, num_frames, where, bad)
            images[image_id] = image_root / file_name if good else None
    return images


def read_captions(path: str | Path, image_root: str | Path | None = None, split: str | None = None,
                  num_frames: int | None = None, on_bad_sample: str = "error") -> Annotations:
    """COCO captions: the official captions_*.json (images + annotations; `split` unused) or
    Karpathy's dataset_coco.json (`split` train/val/test, restval counted as train; None = all).
    Image paths are image_root / file_name (root defaults to the JSON's folder)."""
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    data, bad = read_json(path), BadSamples(on_bad_sample)
    first_image = (data.get("images") or [None])[0] if isinstance(data, dict) else None
    if "annotations" not in data and isinstance(first_image, dict) and "sentences" in first_image:
        images, pairs = read_karpathy(data, path, image_root, split, num_frames, bad)
    else:
        images = read_images(data, path, image_root, num_frames, bad)
        pairs = []
        for index, annotation in enumerate(top_level(data, "annotations", path)):
            where = f"{path}: annotations[{index}]"
            image_id = required(annotation, "image_id", int, where, bad)
            caption = required(annotation, "caption", str, where, bad)
            if image_id is not None and image_id not in images:
                bad("unknown image_id", f"{where} field 'image_id' is {image_id}; expected the id of an entry in 'images'")
            elif image_id is not None and images[image_id] is not None and caption is not None:
                pairs.append((image_id, caption))
        images = {image_id: file for image_id, file in images.items() if file is not None}
    references = defaultdict(list)
    for image_id, caption in pairs:
        references[image_id].append(caption)
    examples = [Example(image_id, images[image_id], "", caption) for image_id, caption in pairs]
    return Annotations(examples, images, dict(references), bad.report(path))


def read_karpathy(data, path, image_root, split, num_frames, bad) -> tuple[dict[int, Path], list[tuple[int, str]]]:
    wanted = None if split is None else ({"train", "restval"} if split == "train" else {split})
    images, pairs = {}, []
    for index, entry in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if wanted is not None and required(entry, "split", str, where, bad) not in wanted:
            continue
        image_id = required(entry, "cocoid" if "cocoid" in entry else "imgid", int, where, bad)
        file_name = required(entry, "filename", str, where, bad)
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            bad("missing field", f"{where} field 'sentences' is missing; expected a list of {{raw, tokens}}")
            continue
        if image_id is None or file_name is None:
            continue
        file = image_root / entry.get("filepath", "") / file_name
        if not check_file(file, num_frames, where, bad):
            continue
        images[image_id] = file
        for number, sentence in enumerate(sentences):
            caption = required(sentence, "raw", str, f"{where}.sentences[{number}]", bad)
            if caption is not None:
                pairs.append((image_id, caption))
    return images, pairs


def read_vqa(questions_path: str | Path, annotations_path: str | Path | None = None,
             images_path: str | Path | None = None, image_root: str | Path | None = None,
             num_frames: int | None = None, on_bad_sample: str = "error") -> Annotations:
    """VQAv2 questions (+ annotations; without them, as for test-dev, targets are empty).
    VQAv2 names images by id only: paths come from the `images` list of a COCO-format JSON
    (`images_path`, e.g. captions_<split>.json), else from COCO's naming, COCO_<data_subtype>_<id:012d>.jpg."""
    questions_path, bad = Path(questions_path), BadSamples(on_bad_sample)
    questions_data = read_json(questions_path)
    questions = top_level(questions_data, "questions", questions_path)
    if images_path is not None:
        images_path = Path(images_path)
        image_root = Path(image_root) if image_root is not None else images_path.parent
        images = read_images(read_json(images_path), images_path, image_root, num_frames, bad)
    else:
        image_root = Path(image_root) if image_root is not None else questions_path.parent
        coco_name = f"COCO_{questions_data.get('data_subtype', '')}_{{:012d}}.jpg"
    answers = {}  # question_id -> (multiple_choice_answer, the human answers)
    if annotations_path is not None:
        annotations_path = Path(annotations_path)
        for index, annotation in enumerate(top_level(read_json(annotations_path), "annotations", annotations_path)):
            where = f"{annotations_path}: annotations[{index}]"
            question_id = required(annotation, "question_id", int, where, bad)
            answer = required(annotation, "multiple_choice_answer", str, where, bad)
            humans = annotation.get("answers") if isinstance(annotation, dict) else None
            if not isinstance(humans, list) or not all(isinstance(h, dict) and isinstance(h.get("answer"), str)
                                                       for h in humans):
                bad("missing field", f"{where} field 'answers' is missing or malformed; expected a list of {{answer}}")
            elif question_id is not None and answer is not None:
                answers[question_id] = (answer, [h["answer"] for h in humans])
    examples, references = [], {}
    for index, entry in enumerate(questions):
        where = f"{questions_path}: questions[{index}]"
        values = [required(entry, name, kind, where, bad) for name, kind in
                  (("question_id", int), ("image_id", int), ("question", str))]
        if None in values:
            continue
        question_id, image_id, question = values
        if images_path is None:
            image_file = image_root / coco_name.format(image_id)
            if not check_file(image_file, num_frames, f"{where} (file named after field 'image_id')", bad):
                continue
        elif image_id not in images:
            bad("unknown image_id",
                f"{where} field 'image_id' is {image_id}; expected the id of an entry in 'images' of {images_path}")
            continue
        elif (image_file := images[image_id]) is None:
            continue
        if annotations_path is not None and question_id not in answers:
            bad("missing annotation", f"{annotations_path}: no annotation with field 'question_id' {question_id} "
                f"({where}); expected one per question")
            continue
        answer, humans = answers.get(question_id, ("", []))
        references[question_id] = humans
        examples.append(Example(image_id, image_file, vqa_prompt(question), answer, question_id))
    return Annotations(examples, {e.image_id: e.path for e in examples}, references, bad.report(questions_path))


# ---------------------------------------------------------------------------------------------
# 3. Pixels and tokens
# ---------------------------------------------------------------------------------------------

def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit grey (PNG 16-bit opens as I or I;16): scale to 8 bits, plain conversion clips to white.
        grey = np.asarray(image).astype(np.float64) / 257
        image = Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels keep arbitrary colours (often black); composite them on white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def load_image(path: str | Path, image_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """Any PIL mode -> RGB, short side resized to image_size, centre crop, normalized: (3, S, S)."""
    try:
        with Image.open(path) as image:
            image.load()
            image = to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of saying missing/truncated/corrupt
        raise DataError(f"{path}: cannot read image ({error}); expected a complete image file") from error
    width, height = image.size
    if min(width, height) != image_size:
        scale = image_size / min(width, height)
        image = image.resize((max(image_size, round(width * scale)), max(image_size, round(height * scale))),
                             Image.Resampling.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # (3, S, S)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def load_pixels(path: Path, image_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """An image file -> (3, S, S); a folder of frames -> (T, 3, S, S), frames in file-name order."""
    if Path(path).is_dir():
        return torch.stack([load_image(frame, image_size, mean, std) for frame in frame_files(Path(path))])
    return load_image(path, image_size, mean, std)


class Tokenizer:
    """Sentencepiece. Models trained here fix pad=0, unk=1, bos=2, eos=3 inside the model file; a
    given .model keeps its own ids, but must define pad, bos and eos.

    model_path: a .model file, or `hf:FOLDER` for the tokenizer.model of a local Hugging Face model
    folder (as `--lm hf:FOLDER`). Such a file may have no pad piece (Llama's has none; transformers
    users pad with eos): it then pads with eos, which is safe because padding is never a target and
    never attended to."""

    def __init__(self, model_path: str | Path):
        hugging_face = str(model_path).startswith("hf:")
        if hugging_face:
            folder = Path(str(model_path)[len("hf:"):])
            model_path = folder / "tokenizer.model"
            if not model_path.is_file():
                raise FileNotFoundError(f"{folder} has no tokenizer.model (a sentencepiece file); data.Tokenizer reads "
                                        "only sentencepiece (a tokenizer.json-only model such as Llama 3 is not supported)")
        self.model = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            self.model.pad_id(), self.model.unk_id(), self.model.bos_id(), self.model.eos_id())
        if hugging_face and self.pad_id < 0:
            self.pad_id = self.eos_id
        if min(self.pad_id, self.bos_id, self.eos_id) < 0:
            raise DataError(f"{model_path}: pad_id, bos_id, eos_id are {self.pad_id}, {self.bos_id}, {self.eos_id}; "
                            "expected all three defined (>= 0), as in models made by Tokenizer.train")

    @classmethod
    def train(cls, texts, model_path: str | Path, vocab_size: int) -> "Tokenizer":
        """Trains on `texts` (an iterable of strings); the same texts give the same model file."""
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            hard_vocab_limit=False,  # a small repetitive corpus may support fewer pieces than asked
            character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            num_threads=1, minloglevel=2)  # one thread: the same input always gives the same model
        model_path = Path(model_path)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = model_path.with_suffix(".tmp")
        temporary.write_bytes(model.getvalue())
        temporary.replace(model_path)
        return cls(model_path)

    @property
    def vocab_size(self) -> int:
        return self.model.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.model.encode(text)

    def decode(self, ids) -> str:
        return self.model.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id)])


# ---------------------------------------------------------------------------------------------
# 4. Dataset, batches, feature cache
# ---------------------------------------------------------------------------------------------

class VisionTextDataset(Dataset):
    """Samples {pixels (3,S,S) or (T,3,S,S), input_ids (L,), loss_mask (L,), image_id[, question_id]}
    with input_ids = [bos] + prompt + target + [eos] and loss_mask True on target + eos: the token
    at i is predicted from position i-1. The readers checked files up front; an image that fails
    to decode here raises DataError, or with on_bad_sample="skip" is replaced by the next
    readable sample (one warning; `unreadable` keeps the paths, per worker process)."""

    def __init__(self, examples: list[Example], tokenizer: Tokenizer, image_size: int,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), on_bad_sample: str = "error"):
        if not examples:
            raise DataError("no examples: the annotation files gave no usable sample")
        self.examples, self.tokenizer, self.image_size, self.mean, self.std = examples, tokenizer, image_size, mean, std
        self.skip = BadSamples(on_bad_sample).skip
        self.unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.examples)):
            example = self.examples[(index + offset) % len(self.examples)]
            if example.path in self.unreadable:
                continue
            try:
                pixels = load_pixels(example.path, self.image_size, self.mean, self.std)
            except DataError as error:
                message = f"{error} (field 'file_name' of image_id {example.image_id})"
                if not self.skip:
                    raise DataError(message) from error
                if not self.unreadable:
                    warnings.warn(f"skipping unreadable image: {message}; later ones are only listed in `unreadable`")
                self.unreadable.add(example.path)
                continue
            return self.sample(example, pixels)
        raise DataError(f"none of the {len(self.examples)} images could be read")

    def sample(self, example: Example, pixels: torch.Tensor) -> dict:
        prompt = [self.tokenizer.bos_id] + (self.tokenizer.encode(example.prompt) if example.prompt else [])
        target = self.tokenizer.encode(example.target) + [self.tokenizer.eos_id]
        sample = {"pixels": pixels, "input_ids": torch.tensor(prompt + target, dtype=torch.long),
                  "loss_mask": torch.tensor([False] * len(prompt) + [True] * len(target)), "image_id": example.image_id}
        if example.question_id is not None:
            sample["question_id"] = example.question_id
        return sample


def collate(samples: list[dict], pad_id: int) -> dict:
    """Right-pads to the longest sample: pixels (B,3,S,S) or (B,T,3,S,S), input_ids and loss_mask
    (B,L) (False on padding), lengths (B,), image_ids (and question_ids if any) as lists."""
    if len({s["pixels"].dim() if "pixels" in s else 0 for s in samples}) > 1:
        raise ValueError("collate: the batch mixes images (3,H,W) and videos (T,3,H,W); "
                         "use separate data loaders for image and video datasets")
    lengths = torch.tensor([len(s["input_ids"]) for s in samples])
    input_ids = torch.full((len(samples), int(lengths.max())), pad_id, dtype=torch.long)  # (B, L)
    loss_mask = torch.zeros(input_ids.shape, dtype=torch.bool)  # (B, L)
    for row, sample in enumerate(samples):
        input_ids[row, :lengths[row]] = sample["input_ids"]
        loss_mask[row, :lengths[row]] = sample["loss_mask"]
    batch = {"input_ids": input_ids, "loss_mask": loss_mask, "lengths": lengths}
    if "pixels" in samples[0]:  # text-only samples (LM pretraining) have none
        batch["pixels"] = torch.stack([s["pixels"] for s in samples])
        batch["image_ids"] = [s["image_id"] for s in samples]
    if any("question_id" in s for s in samples):  # None for captions mixed into a VQA batch
        batch["question_ids"] = [s.get("question_id") for s in samples]
    return batch


class FeatureCache:
    """Frozen-encoder features per image id, on CPU, so the encoder runs once per image over all
    epochs. Valid only while the encoder stays frozen and images are not augmented; ids must be
    unique across the splits sharing a cache (they are in COCO and in the synthetic world)."""

    def __init__(self):
        self.features: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.features)

    def get_or_compute(self, image_ids: list[int], pixels: torch.Tensor, encode_fn) -> torch.Tensor:
        """encode_fn maps pixels (n, ...) to features (n, ...); returns features (B, ...) on pixels' device."""
        missing = {}  # image_id -> its first row in the batch
        for row, image_id in enumerate(image_ids):
            if image_id not in self.features:
                missing.setdefault(image_id, row)
        if missing:
            with torch.no_grad():
                computed = encode_fn(pixels[list(missing.values())])
            for image_id, features in zip(missing, computed):
                self.features[image_id] = features.detach().to("cpu", copy=True)  # copy: not a view of the batch
        return torch.stack([self.features[image_id] for image_id in image_ids]).to(pixels.device)


# ---------------------------------------------------------------------------------------------
# 5. A data folder: which files hold each task, the tokenizer, the datasets a stage trains on
# ---------------------------------------------------------------------------------------------

# Files of each task in a data folder ({split} is filled in), as `python data.py` writes them. Real
# COCO / VQAv2 files are used by giving them these names (or symlinks) in one folder.
TASK_FILES = {
    "caption": {"captions": "captions_{split}.json"},
    "vqa": {"questions": "questions_{split}.json", "annotations": "annotations_{split}.json",
            "images": "captions_{split}.json"},
    "video_caption": {"captions": "video_captions_{split}.json"},
    "video_vqa": {"questions": "video_questions_{split}.json", "annotations": "video_annotations_{split}.json",
                  "images": "video_captions_{split}.json"},
}
TOKENIZER_FILE = "tokenizer.model"


def folder_num_frames(folder: str | Path) -> int | None:
    """Frames per video from the folder's dataset.json (None when absent: frames are not checked)."""
    info = Path(folder) / "dataset.json"
    return json.loads(info.read_text())["options"]["num_frames"] if info.exists() else None


def available_tasks(folder: str | Path, split: str) -> list[str]:
    return [task for task, files in TASK_FILES.items()
            if all((Path(folder) / name.format(split=split)).exists() for name in files.values())]


def read_task(folder: str | Path, task: str, split: str, on_bad_sample: str = "error") -> Annotations:
    if task not in TASK_FILES:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASK_FILES)}")
    files = {role: Path(folder) / name.format(split=split) for role, name in TASK_FILES[task].items()}
    num_frames = folder_num_frames(folder) if task.startswith("video") else None
    if "captions" in files:
        return read_captions(files["captions"], num_frames=num_frames, on_bad_sample=on_bad_sample)
    return read_vqa(files["questions"], files["annotations"], files["images"], num_frames=num_frames,
                    on_bad_sample=on_bad_sample)


def task_datasets(folder: str | Path, split: str, tokenizer: Tokenizer, image_size: int,
                  tasks: list[str] | None = None, on_bad_sample: str = "error") -> list[Dataset]:
    """The datasets a stage trains on, one per modality (a batch never mixes images and videos):
    [captions + VQA on images, captions + VQA on videos], leaving out what the folder lacks."""
    tasks = tasks or available_tasks(folder, split)
    missing = [task for task in tasks if task not in available_tasks(folder, split)]
    if missing:
        raise DataError(f"{folder}: no files for task(s) {missing} of split {split!r}; expected "
                        + ", ".join(name.format(split=split) for task in missing for name in TASK_FILES[task].values()))
    groups = []
    for modality in ([t for t in tasks if not t.startswith("video")], [t for t in tasks if t.startswith("video")]):
        examples = [e for task in modality for e in read_task(folder, task, split, on_bad_sample).examples]
        if examples:
            groups.append(VisionTextDataset(examples, tokenizer, image_size, on_bad_sample=on_bad_sample))
    return groups


def training_texts(folder: str | Path, split: str = "train") -> list[str]:
    """Every caption and every "question: ... answer: ..." line of a split: the tokenizer's corpus."""
    return [text for document in training_documents(folder, split, 1) for text in document]


def training_documents(folder: str | Path, split: str = "train", texts_per_document: int = 2,
                       seed: int = 0) -> list[list[str]]:
    """The LMs' text-only pretraining data: the captions and "question: ... answer: ..." lines of
    one image, shuffled and grouped `texts_per_document` at a time. Like sentences of one web
    page, a text is easier to predict after reading its neighbours, so the LM learns to use what
    came before: what it later does with the visual tokens placed before the text."""
    by_image = defaultdict(list)
    for task in available_tasks(folder, split):
        for e in read_task(folder, task, split).examples:
            by_image[e.image_id].append(f"{e.prompt} {e.target}".strip())
    rng, documents = random.Random(seed), []
    for image_id in sorted(by_image):
        texts = by_image[image_id]
        rng.shuffle(texts)
        documents += [texts[i:i + texts_per_document] for i in range(0, len(texts), texts_per_document)]
    return documents


class TextDataset(Dataset):
    """Text only, for language pretraining: each text of a document as [bos] text [eos], one after
    the other; the loss is on every token but the bos tokens (they are given, as in captioning)."""

    def __init__(self, documents: list[list[str]], tokenizer: Tokenizer):
        self.documents, self.tokenizer = documents, tokenizer

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> dict:
        ids, loss_mask = [], []
        for text in self.documents[index]:
            tokens = self.tokenizer.encode(text) + [self.tokenizer.eos_id]
            ids += [self.tokenizer.bos_id] + tokens
            loss_mask += [False] + [True] * len(tokens)
        return {"input_ids": torch.tensor(ids), "loss_mask": torch.tensor(loss_mask)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes world (COCO captions + VQAv2 formats).")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/shapes")
    for option in dataclasses.fields(WorldConfig):
        parser.add_argument(f"--{option.name.replace('_', '-')}", type=int, default=option.default,
                            help=f"{option.metadata['help']} (default {option.default})")
    parser.add_argument("--vocab-size", type=int, default=1000,
                        help="sentencepiece vocabulary asked for; a small corpus yields fewer pieces (default 1000)")
    arguments = vars(parser.parse_args())
    out = Path(arguments.pop("out"))
    start = time.perf_counter()
    vocab_size = arguments.pop("vocab_size")
    summary = generate(out, WorldConfig(**arguments))
    tokenizer = Tokenizer.train(training_texts(out), out / TOKENIZER_FILE, vocab_size)
    print(json.dumps(summary["counts"]))
    print(f"tokenizer: {out / TOKENIZER_FILE} ({tokenizer.vocab_size} pieces)")
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

"""The synthetic shapes world, the offline stand-in for the input box of Figure 2 (PaLM2-VAdapter,
arXiv 2402.10896): images of 1-3 coloured shapes and videos of one shape that moves or changes
colour, each with 5 captions (as in COCO) and questions with 10 human answers (as in VQAv2),
written in the COCO-captions and VQAv2 formats so that one reader serves synthetic and real data;
the stored scenes let every caption and answer be checked. Making the dataset is its own small
program (nanoGPT's data/<name>/prepare.py): `python -m stage0.synthetic --out data/shapes`.
"""

import argparse
import dataclasses
import json
import math
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data import TOKENIZER_FILE, Tokenizer, training_texts
from support.readers import write_json, write_split

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
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
    image_size: int = field(
        default=64, metadata={"help": "side of the square images and frames, pixels"}
    )
    num_frames: int = field(default=8, metadata={"help": "frames per video"})
    seed: int = field(default=0, metadata={"help": "the same seed writes byte-identical files"})


def item_rng(seed: int, item_id: int) -> random.Random:
    # One generator per image or video, so val/test stay the same when the train count changes.
    return random.Random(f"{seed}:{item_id}")


def background(rng: random.Random, size: int) -> np.ndarray:
    """A light base colour with a gentle gradient and some noise: (size, size, 3) uint8."""
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    base = np.array([rng.uniform(180, 240) for _ in range(3)])
    ramp = (
        np.linspace(-1, 1, size)[:, None]
        if rng.random() < 0.5
        else np.linspace(-1, 1, size)[None, :]
    )
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
        draw.polygon(
            [
                (cx + r * math.sin(k * math.pi / 5), cy - r * math.cos(k * math.pi / 5))
                for k, r in enumerate(radii)
            ],
            fill=fill,
        )
    elif shape == "cross":
        arm = (x1 - x0) / 6
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def sample_objects(rng: random.Random, size: int) -> list[dict]:
    """1-3 objects, each in its own cell of a 3x2 grid: never overlapping, relations never
    ambiguous."""
    cell_width, cell_height = size / 3, size / 2
    cells = rng.sample(
        [(row, column) for row in range(2) for column in range(3)], rng.choice((1, 2, 2, 3, 3))
    )
    objects = []
    for row, column in sorted(cells):
        if (
            objects and rng.random() < 0.25
        ):  # repeats make counting captions ("two red circles") common
            colour, shape = objects[-1]["colour"], objects[-1]["shape"]
        else:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        size_name = rng.choice(list(SIZE_WORDS))
        side = max(3, int((0.5 if size_name == "small" else 0.85) * min(cell_width, cell_height)))
        left, top = math.ceil(column * cell_width), math.ceil(row * cell_height)
        x, y = (
            rng.randint(left, int((column + 1) * cell_width) - side),
            rng.randint(top, int((row + 1) * cell_height) - side),
        )
        # On a 4-pixel lattice (half an 8-pixel patch): a shape shows a patch-based ViT few faces.
        x, y = x - x % 4 + (4 if x - x % 4 < left else 0), y - y % 4 + (4 if y - y % 4 < top else 0)
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "size": size_name,
                "position": f"{ROWS[row]} {COLUMNS[column]}",
                "box": [x, y, x + side, y + side],
            }
        )
    return objects


def relations(a: dict, b: dict) -> list[str]:
    """The spatial relations that hold for 'a <relation> b', read from the boxes [x0, y0, x1,
    y1)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return [
        relation
        for relation, true in zip(RELATIONS, (ax1 <= bx0, bx1 <= ax0, ay1 <= by0, by1 <= ay0))
        if true
    ]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def definite(obj: dict) -> str:
    return f"the {obj['colour']} {obj['shape']}"


def size_adjective(rng: random.Random, size: str) -> str:
    return rng.choice(SIZE_WORDS[size] + ("", ""))  # often left out, as people do


def object_phrase(rng: random.Random, obj: dict) -> str:
    return article(
        " ".join(w for w in (size_adjective(rng, obj["size"]), obj["colour"], obj["shape"]) if w)
    )


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
        return (
            f"{rng.choice(('an image of', 'a picture of', 'a drawing of', 'a picture showing'))} "
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            ""
            f"{listing}"
        )
    if template == 3:
        if len(objects) == 1:
            return "a single " + object_phrase(rng, objects[0]).split(" ", 1)[1]
        return f"{NUMBER_WORDS[len(objects)]} {rng.choice(('shapes', 'objects'))}: {listing}"
    # 'a red circle to the left of a red circle' says little: relate only differently named objects.
    pairs = [
        (a, b)
        for a in objects
        for b in objects
        if (a["colour"], a["shape"]) != (b["colour"], b["shape"])
    ]
    if template == 4 or not pairs:
        where = rng.choice(("at the {}", "in the {}"))
        return " and ".join(
            f"{object_phrase(rng, obj)} {where.format(obj['position'])}" for obj in objects
        )
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
    vocabulary = next(
        (v for v in (list(COLOURS), SHAPES, POSITIONS, DIRECTIONS, ("yes", "no")) if answer in v),
        [str(n) for n in range(5)],
    )
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
    return [
        {"answer": a, "answer_confidence": c, "answer_id": i + 1}
        for i, (a, c) in enumerate(answers)
    ]


def image_question(rng: random.Random, objects: list[dict]) -> tuple[str, str, str, str] | None:
    """One (question, answer, question_type, answer_type), or None if the drawn kind does not
    fit."""
    shapes, colours = Counter(o["shape"] for o in objects), Counter(o["colour"] for o in objects)
    pairs = Counter((o["colour"], o["shape"]) for o in objects)
    unique = [
        o for o in objects if pairs[o["colour"], o["shape"]] == 1
    ]  # nameable as 'the red circle'
    kind, present = (
        rng.randrange(7),
        rng.random() < 0.5,
    )  # present: about what is there, so yes/no and counts balance
    if kind == 0:
        obj = rng.choice(objects)
        if shapes[obj["shape"]] == 1:
            colour_word = rng.choice(("colour", "color"))
            return (
                f"what {colour_word} is the {obj['shape']}?",
                obj["colour"],
                "what color is the",
                "other",
            )
    elif kind == 1:
        obj = rng.choice(objects)
        if colours[obj["colour"]] == 1:
            return (
                f"what shape is the {obj['colour']} object?",
                obj["shape"],
                "what shape is the",
                "other",
            )
    elif kind == 2:
        shape = rng.choice(list(shapes) if present else SHAPES)
        colour = rng.choice(list(colours) if present else list(COLOURS))
        things = rng.choice(("shapes", "objects"))
        total = rng.choice(("how many shapes are there?", "how many objects are in the picture?"))
        question, count = rng.choice(
            (
                (f"how many {PLURALS[shape]} are there?", shapes[shape]),
                (f"how many {colour} {things} are there?", colours[colour]),
                (total, len(objects)),
            )
        )
        return question, str(count), "how many", "number"
    elif kind == 3:
        colour, shape = (
            rng.choice(list(pairs)) if present else (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        )
        return (
            f"is there {article(colour)} {shape}?",
            "yes" if (colour, shape) in pairs else "no",
            "is there a",
            "yes/no",
        )
    elif kind == 4 and unique:
        obj = rng.choice(unique)
        return f"where is {definite(obj)}?", obj["position"], "where is the", "other"
    elif kind == 5 and len(unique) >= 2:
        a, b = rng.sample(unique, 2)
        relation = rng.choice(relations(a, b) if present else RELATIONS)
        return (
            f"is {definite(a)} {relation} {definite(b)}?",
            "yes" if relation in relations(a, b) else "no",
            "is the",
            "yes/no",
        )
    elif kind == 6 and unique and len(objects) >= 2:
        b = rng.choice(unique)
        relation = rng.choice(relations(rng.choice([o for o in objects if o is not b]), b))
        matching = [o for o in objects if o is not b and relation in relations(o, b)]
        if len(matching) == 1:
            return (
                f"which shape is {relation} {definite(b)}?",
                matching[0]["shape"],
                "which shape is",
                "other",
            )
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
    return {
        "id": item_id,
        "file_name": file_name,
        "size": size,
        "scene": {"objects": objects},
        "captions": captions,
        "questions": [(*q, human_answers(rng, q[1])) for q in questions],
    }


MOTION_WORDS = {
    "left": ("to the left", "left", "leftwards"),
    "right": ("to the right", "right", "rightwards"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
}
FROM_TO = {
    "left": "from right to left",
    "right": "from left to right",
    "up": "from the bottom to the top",
    "down": "from the top to the bottom",
}


def video_caption(rng: random.Random, video: dict) -> str:
    shape, motion, (start, end) = (
        video["shape"],
        video["motion"],
        (video["colours"][0], video["colours"][-1]),
    )
    template = rng.randrange(5)
    subject = object_phrase(rng, {"shape": shape, "colour": start, "size": video["size"]})
    if motion != "colour":
        verb, direction = (
            rng.choice(("moves", "slides", "travels", "goes")),
            rng.choice(MOTION_WORDS[motion]),
        )
        return (
            f"{subject} {verb} {direction}",
            f"{subject} moving {direction}",
            f"the {start} {shape} {verb} {direction}",
            f"{subject} {verb} {FROM_TO[motion]}",
            f"{subject} is moving {direction}",
        )[template]
    colour_word = rng.choice(("colour", "color"))
    return (
        f"{article(shape)} changes {colour_word} from {start} to {end}",
        f"{subject} turns {end}",
        f"the {start} {shape} becomes {end}",
        f"{article(shape)} that turns from {start} to {end}",
        f"{subject} changing into {end}",
    )[template]


def video_questions(video: dict) -> list[tuple[str, str, str, str]]:
    shape, motion, (start, end) = (
        video["shape"],
        video["motion"],
        (video["colours"][0], video["colours"][-1]),
    )
    moves, changes = ("yes", "no") if motion != "colour" else ("no", "yes")
    questions = [
        (f"does the {shape} move?", moves, "does the", "yes/no"),
        (f"does the {shape} change color?", changes, "does the", "yes/no"),
    ]
    if motion != "colour":
        return questions + [
            (f"which way does the {shape} move?", motion, "which way does the", "other"),
            (
                f"in which direction is the {start} {shape} moving?",
                motion,
                "in which direction is",
                "other",
            ),
            (f"what color is the {shape}?", start, "what color is the", "other"),
            ("what shape is moving?", shape, "what shape is", "other"),
        ]
    return questions + [
        (f"what color does the {shape} turn?", end, "what color does the", "other"),
        (f"what color is the {shape} at the start?", start, "what color is the", "other"),
        (f"what color is the {shape} at the end?", end, "what color is the", "other"),
        ("what shape changes color?", shape, "what shape", "other"),
    ]


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


def generate(out: str | Path, config: WorldConfig | None = None) -> dict:
    """Writes the world under `out`; returns the content of its dataset.json."""
    out, config = Path(out), config or WorldConfig()
    if config.num_frames < 2 or config.image_size < 16:
        raise ValueError(
            "need num_frames >= 2 (to see motion) and image_size >= 16 (to tell shapes apart)"
        )
    for folder in ("images", "videos"):
        if (out / folder).exists():
            if not (out / "dataset.json").exists():
                raise FileExistsError(
                    f"{out / folder} exists but {out}/dataset.json does not; not overwriting"
                )
            shutil.rmtree(
                out / folder
            )  # our own earlier output: stale files would join the new splits
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
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "options": dataclasses.asdict(config),
        "counts": counts,
        "scene_vocabulary": vocabulary,
    }  # stage0/scenes.py reads the labels with it
    write_json(out / "dataset.json", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the synthetic shapes world (COCO captions + VQAv2 formats)."
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. data/shapes")
    for option in dataclasses.fields(WorldConfig):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=int,
            default=option.default,
            help=f"{option.metadata['help']} (default {option.default})",
        )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=1000,
        help="sentencepiece vocabulary asked for; a small corpus gives fewer (default 1000)",
    )
    parser.add_argument(
        "--tokenizer", help="copy this sentencepiece model instead of training one (default: train)"
    )
    arguments, start = vars(parser.parse_args()), time.perf_counter()
    out, vocab_size, arguments_tokenizer = (
        Path(arguments.pop("out")),
        arguments.pop("vocab_size"),
        arguments.pop("tokenizer"),
    )
    summary = generate(out, WorldConfig(**arguments))
    if arguments_tokenizer:  # the tokenizer the shipped stand-ins were pretrained with
        shutil.copyfile(arguments_tokenizer, out / TOKENIZER_FILE)
    tokenizer = (
        Tokenizer(out / TOKENIZER_FILE)
        if arguments_tokenizer
        else Tokenizer.train(training_texts(out), out / TOKENIZER_FILE, vocab_size)
    )
    print(
        f"{json.dumps(summary['counts'])}\ntokenizer: {out / TOKENIZER_FILE} "
        f"({tokenizer.vocab_size} pieces)"
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

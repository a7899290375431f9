"""The synthetic shapes world itself, what its images and videos show: the vocabulary (shapes,
colours, sizes, grid positions, directions, relations), scenes of 1-3 objects on a 3x2 grid, and
their pixels. Part of the offline stand-in for the input box of Figure 2 (PaLM2-VAdapter, arXiv
2402.10896), where the paper has WebLI images and VTP videos; stage0/captions.py says in words
what a scene shows, and stage0/synthetic.py writes the dataset.
"""

import math
import random

import numpy as np
from PIL import ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
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
    """1-3 objects, each in its own cell of a 3x2 grid: never overlapping, relations
    never ambiguous."""
    cell_width, cell_height = size / 3, size / 2
    cells = rng.sample(
        [(row, column) for row in range(2) for column in range(3)], rng.choice((1, 2, 2, 3, 3))
    )
    objects = []
    for row, column in sorted(cells):
        # Repeats make counting captions ("two red circles") common.
        if objects and rng.random() < 0.25:
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
    """The spatial relations that hold for 'a <relation> b', read from the boxes
    [x0, y0, x1, y1)."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return [
        relation
        for relation, true in zip(RELATIONS, (ax1 <= bx0, bx1 <= ax0, ay1 <= by0, by1 <= ay0))
        if true
    ]

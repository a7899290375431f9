"""docs/results_curves.png: every stage-2 run's validation loss against its step, one panel per
table of `make paper`, drawn with Pillow. Each row a colour, each seed a thin line of it, the
row's mean over the seeds a thick one. The picture behind the claim of faster convergence (the
area under these curves) and behind "past the drop": a claim read at the end of a run holds only
where the curves have flattened by then.

    python -m paper.tables plot docs/results.json --out docs/results_curves.png
"""

import json
import math
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw

from evaluation.pictures import TEXT, draw_lines, font, wrapped
from evaluation.report import COLOURS

WIDTH, HEIGHT = 1040, 440  # of one panel, in pixels
LEFT, TOP, BOTTOM = 70, 64, 56  # margins of the plot area inside a panel
LEGEND = 320  # the column right of the plot area that names the rows
GRID = "#e4e4e4"


def curves_of(results: dict, source: str) -> dict[str, list[tuple[str, list[list]]]]:
    """{table: [(row name, one (step, val loss) curve per seed)]}. A row derived from others (a
    gain row of "stronger") has no curve and no line; a table without a curve is an error."""
    panels = {}
    for table, rows in results.get("tables", {}).items():
        drawn = [
            (row["name"], [seed["curve"] for seed in row["seeds"]])
            for row in rows
            if row["seeds"] and all("curve" in seed for seed in row["seeds"])
        ]
        if not drawn:
            raise ValueError(
                f"{source}: no row of {table!r} has the field 'curve' in every seed (each run's "
                "validation loss per step); a results.json written before make paper kept "
                "curves? Rerun python -m paper.tables run"
            )
        panels[table] = drawn
    if not panels:
        raise ValueError(f"{source}: no 'tables' to draw")
    return panels


def mean_curve(curves: list[list]) -> list[tuple[int, float]]:
    """The seeds' mean loss at each step that every seed validated at."""
    steps = set.intersection(*({step for step, _ in curve} for curve in curves))
    losses = [dict(map(tuple, curve)) for curve in curves]
    return [(step, sum(seed[step] for seed in losses) / len(losses)) for step in sorted(steps)]


def axis(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round ticks (1, 2 or 5 x 10^k apart), the first at or below `low` and the
    last at or above `high`: the axis runs from the first to the last."""
    raw = max(high - low, 1e-9) / count
    power = 10 ** math.floor(math.log10(raw))
    spacing = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / spacing), math.ceil(high / spacing)
    return [round(i * spacing, 12) for i in range(first, max(last, first + 1) + 1)]


def tint(colour: str, whiteness: float = 0.55) -> tuple[int, int, int]:
    """The colour mixed with white: a seed's thin line, lighter than its row's mean."""
    return tuple(round(c + (255 - c) * whiteness) for c in ImageColor.getrgb(colour))


def panel(draw: ImageDraw.ImageDraw, top: int, title: str, rows: list) -> None:
    """One table: axes with ticks and grid, every seed's curve, every row's mean, the legend."""
    right, bottom = WIDTH - LEGEND, top + HEIGHT - BOTTOM
    curves = [curve for _, seeds in rows for curve in seeds]
    losses = [loss for curve in curves for _, loss in curve]
    x_ticks = axis(0, max(step for curve in curves for step, _ in curve), count=6)
    y_ticks = axis(min(losses), max(losses), count=8)
    digits = max(0, -math.floor(math.log10(y_ticks[1] - y_ticks[0])))

    def at(step: float, loss: float) -> tuple[float, float]:
        x = LEFT + (right - LEFT) * (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        y = bottom - (bottom - top - TOP) * (loss - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return x, y

    writing = font()
    draw.text((LEFT, top + 12), title, fill=TEXT, font=font(17))
    draw.text((8, top + TOP - 28), "validation loss", fill=TEXT, font=writing)
    for loss in y_ticks:
        y = at(0, loss)[1]
        draw.line([(LEFT, y), (right, y)], fill=GRID)
        draw.text((LEFT - 8, y), f"{loss:.{digits}f}", fill=TEXT, font=writing, anchor="rm")
    for step in x_ticks:
        x = at(step, y_ticks[0])[0]
        draw.line([(x, bottom), (x, bottom + 5)], fill=TEXT)
        draw.text((x, bottom + 8), f"{step:g}", fill=TEXT, font=writing, anchor="mt")
    draw.text(
        ((LEFT + right) / 2, bottom + 30), "stage-2 step", fill=TEXT, font=writing, anchor="mt"
    )
    draw.line([(LEFT, top + TOP), (LEFT, bottom), (right, bottom)], fill=TEXT)
    colours = [COLOURS[index % len(COLOURS)] for index in range(len(rows))]
    for (_, seeds), colour in zip(rows, colours):
        for curve in seeds:
            if len(curve) > 1:
                draw.line([at(*point) for point in curve], fill=tint(colour), width=1)
    for (_, seeds), colour in zip(rows, colours):
        mean = mean_curve(seeds)
        if len(mean) > 1:
            draw.line([at(*point) for point in mean], fill=colour, width=4, joint="curve")
    y = top + TOP
    for (name, seeds), colour in zip(rows, colours):
        draw.line([(right + 20, y + 10), (right + 50, y + 10)], fill=colour, width=4)
        y = draw_lines(draw, right + 58, y, wrapped(name, TEXT, LEGEND - 70)) + 4
    note = f"thin: one seed ({len(rows[0][1])} seeds); thick: their mean"
    draw_lines(draw, right + 20, y + 8, wrapped(note, "#555555", LEGEND - 30))


def plot(results: dict, path, titles: dict | None = None, source: str = "results") -> None:
    """The PNG at `path`: one panel per table of results.json's content, stacked; `titles` names
    each table after its number; `source` names the results in an error."""
    panels = curves_of(results, source)
    image = Image.new("RGB", (WIDTH, HEIGHT * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    for index, (table, rows) in enumerate(panels.items()):
        title = f"{table}: {titles[table]}" if titles and table in titles else table
        panel(draw, index * HEIGHT, title, rows)
    image.save(path)


def plot_file(results_json, out, titles: dict | None = None) -> None:
    """`python -m paper.tables plot`: the PNG again from a results.json already written."""
    plot(json.loads(Path(results_json).read_text()), out, titles, source=str(results_json))

"""paper/curves.py: docs/results_curves.png from results.json's per-seed validation curves, and
`python -m paper.tables plot` that draws it again from a results.json."""

import json
import re

import pytest
from PIL import Image, ImageColor

from paper import curves
from paper import tables as paper

STEPS = [25, 50, 75, 100]


def results() -> dict:
    """Table 2 with 2 rows x 3 seeds: the VAdapter's seeds flat at 0.5, 0.6 and 0.7 (their mean
    flat at 0.6), the perceiver's seeds falling from 0.9 to 0.8; and a gain row without curves."""
    vadapter = [{"curve": [[step, loss] for step in STEPS]} for loss in (0.5, 0.6, 0.7)]
    perceiver = [
        {"curve": [[step, 0.9 - 0.1 * i / 3 + shift] for i, step in enumerate(STEPS)]}
        for shift in (0.0, 0.01, 0.02)
    ]
    return {
        "tables": {
            "Table 2": [
                {"name": "PaLM2-VAdapter", "seeds": vadapter},
                {"name": "perceiver resampler (6 layers)", "seeds": perceiver},
                {"name": "VAdapter gain", "seeds": [{"cider_d": 0.1}] * 3},
            ]
        }
    }


def rows_of(image: Image.Image, x: int, colour) -> list[int]:
    """The y of every pixel of exactly `colour` in column x."""
    return [y for y in range(image.height) if image.getpixel((x, y)) == colour]


def test_the_plot_has_one_panel_per_table_and_the_same_input_gives_the_same_bytes(tmp_path):
    curves.plot(results(), tmp_path / "a.png", paper.TITLES)
    curves.plot(results(), tmp_path / "b.png", paper.TITLES)
    assert Image.open(tmp_path / "a.png").size == (curves.WIDTH, curves.HEIGHT)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    two = {"tables": {**results()["tables"], "Table 13": results()["tables"]["Table 2"]}}
    curves.plot(two, tmp_path / "two.png")
    assert Image.open(tmp_path / "two.png").size == (curves.WIDTH, 2 * curves.HEIGHT)


def test_a_row_s_mean_is_a_thick_line_of_its_colour_between_its_seeds_thin_lines(tmp_path):
    curves.plot(results(), tmp_path / "curves.png")
    image = Image.open(tmp_path / "curves.png").convert("RGB")
    x = (curves.LEFT + curves.WIDTH - curves.LEGEND) // 2  # mid-plot, between steps 25 and 100
    colour = ImageColor.getrgb(curves.COLOURS[0])
    mean = rows_of(image, x, colour)
    seeds = rows_of(image, x, curves.tint(curves.COLOURS[0]))
    assert len(mean) >= 3 and max(mean) - min(mean) == len(mean) - 1  # one thick line
    # seeds at 0.7 (top) and 0.5 (bottom), the one at 0.6 under the mean: midway between them
    assert len(seeds) == 2 and min(seeds) < min(mean) and max(mean) < max(seeds)
    assert abs((min(mean) + max(mean)) / 2 - (min(seeds) + max(seeds)) / 2) <= 1
    perceiver = rows_of(image, x, ImageColor.getrgb(curves.COLOURS[1]))
    assert perceiver and max(perceiver) < min(seeds)  # its losses, 0.85 or so, above 0.7


def test_the_mean_is_taken_at_the_steps_every_seed_validated_at():
    assert curves.mean_curve([[[25, 1.0], [50, 0.5]], [[25, 0.8]]]) == [(25, 0.9)]
    assert curves.axis(0.57, 0.9, count=8) == [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]


def test_plot_draws_again_from_a_results_json_and_names_the_file_and_field_when_curves_lack(
    tmp_path, capsys
):
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results()))
    paper.main(["plot", str(source), "--out", str(tmp_path / "again.png")])
    curves.plot(results(), tmp_path / "direct.png", paper.TITLES)
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    old = results()
    for row in old["tables"]["Table 2"]:
        for seed in row["seeds"]:
            seed.pop("curve", None)
    source.write_text(json.dumps(old))
    with pytest.raises(
        ValueError, match=re.escape(str(source)) + r": no row of 'Table 2' has the field 'curve'"
    ):
        curves.plot_file(source, tmp_path / "old.png")
    with pytest.raises(SystemExit):
        paper.main(["plot", str(source), "--out", str(tmp_path / "old.png")])
    assert str(source) in capsys.readouterr().err and not (tmp_path / "old.png").exists()

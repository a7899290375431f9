"""paper/versus.py: two make paper results paired seed by seed, each measure's B - A with its
interval and reading, against hand-computed cases."""

import json

import pytest

from paper import versus


def results(values: dict[str, list[float]]) -> dict:
    """A results.json with Table 2's two rows over seeds 1..n: {row name: final val losses}."""
    rows = [
        {
            "name": name,
            "seeds": [
                {"run": f"runs/paper/seed{i + 1}/{name}", "final_val_loss": value}
                for i, value in enumerate(losses)
            ],
        }
        for name, losses in values.items()
    ]
    return {"tables": {"Table 2": rows}}


def test_level_differ_and_undecided_against_hand_computed_intervals(tmp_path):
    a = {"same": [0.60, 0.62, 0.58], "moved": [0.60, 0.62, 0.58], "noisy": [0.60, 0.62, 0.58]}
    # same: B - A = +0.001, +0.002, +0.000: mean 0.001, sd 0.001, half width 4.303 * 0.001 /
    # sqrt(3) = 0.00248: [-0.0015, +0.0035], inside ±5% of 0.60 = ±0.030: level
    # moved: B - A = +0.10 +- 0.01: excludes zero: differ
    # noisy: B - A = +0.05, -0.05, +0.01: mean 0.0033, sd 0.050, half width 0.125: undecided
    b = {"same": [0.601, 0.622, 0.580], "moved": [0.70, 0.73, 0.67], "noisy": [0.65, 0.57, 0.59]}
    (tmp_path / "a.json").write_text(json.dumps(results(a)))
    (tmp_path / "b.json").write_text(json.dumps(results(b)))
    table = versus.compare(str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    lines = {line.split(" | ")[1]: line for line in table.splitlines() if "Table 2" in line}
    assert "+0.0010 [-0.0015, +0.0035] level" in lines["same"]
    assert lines["moved"].endswith("differ |") and "+0.1000" in lines["moved"]
    assert "undecided (" in lines["noisy"]
    assert list(lines) == ["same", "moved", "noisy"]  # A's order


def test_a_file_that_is_not_a_results_json_is_named(tmp_path):
    (tmp_path / "bad.json").write_text('{"claims": []}')
    with pytest.raises(SystemExit, match="bad.json: not a make paper results.json"):
        versus.read(str(tmp_path / "bad.json"))

"""Two `make paper` results of the same seeds side by side: does a change that should not move the
numbers (bf16 autocast for fp32, a faster kernel) leave them where they were?

Each row of each table is paired seed by seed (the same seed: the same data order and stage-1
start in both), and for each measure the difference B - A gets its 95% t-interval
(paper/stats.py). The reading: **level** (the interval inside ±5% of A's mean: the two agree),
**differ** (the interval excludes zero) or **undecided** (with the seeds it would take).

    python -m paper.versus docs/results_fp32.json docs/results.json
"""

import argparse
import json
import statistics
from pathlib import Path

from paper.stats import paired

MEASURES = {  # results.json field -> header
    "final_val_loss": "final val loss",
    "val_loss_area": "mean val loss over the run",
    "cider_d": "CIDEr-D",
    "vqa_accuracy": "VQA acc",
    "video_cider_d": "video CIDEr-D",
    "video_vqa_accuracy": "video VQA acc",
}


def read(path: str) -> dict:
    """{(table, row): {seed folder (seed1, ...): that seed's numbers}} of one results.json."""
    try:
        results = json.loads(Path(path).read_text())
        tables = results["tables"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"{path}: not a make paper results.json with 'tables' ({error})") from None
    rows = {}
    for table, table_rows in tables.items():
        for row in table_rows:
            by_seed = {
                Path(seed["run"]).parent.name: seed for seed in row["seeds"] if "run" in seed
            }
            rows[(table, row["name"])] = by_seed
    return rows


def verdict(values_a: list[float], values_b: list[float]) -> str:
    comparison = paired(values_b, values_a)  # B - A; level: inside 5% of A's mean
    words = {"holds": "differ", "fails": "differ", "level": "level", "undecided": "undecided"}
    reading = words[comparison.verdict]
    if reading == "undecided":
        needed = comparison.seeds_needed
        reading += f" ({needed} seeds)" if needed else " (over 1000 seeds)"
    form = "{:+.4f}"
    interval = f"[{form.format(comparison.low)}, {form.format(comparison.high)}]"
    return f"{form.format(comparison.mean)} {interval} {reading}"


def compare(path_a: str, path_b: str) -> str:
    """The markdown table: one line per row and measure the two results share."""
    a, b = read(path_a), read(path_b)
    lines = [
        f"B - A, B = {path_b}, A = {path_a}, paired by seed; 95% interval; level: inside ±5% of "
        "A's mean",
        "",
        "| table | row | measure | seeds | mean A | B - A [95% interval] reading |",
        "|---|---|---|---|---|---|",
    ]
    for key in [key for key in a if key in b]:  # A's order
        seeds = sorted(a[key].keys() & b[key].keys())
        for field, header in MEASURES.items():
            pairs = [(a[key][s].get(field), b[key][s].get(field)) for s in seeds]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if len(pairs) < 2:
                continue
            values_a, values_b = zip(*pairs)
            lines.append(
                f"| {key[0]} | {key[1]} | {header} | {len(pairs)} | "
                f"{statistics.fmean(values_a):.4f} | {verdict(values_a, values_b)} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="results.json A (e.g. the fp32 run)")
    parser.add_argument("b", help="results.json B, the same seeds")
    args = parser.parse_args(argv)
    print(compare(args.a, args.b))


if __name__ == "__main__":
    main()

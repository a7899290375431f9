"""What evaluate.py writes: results JSON, and stage-2 runs compared as the paper's table at our
scale, with their validation-loss curves.

The box after Figure 2's model, behind evaluate.py: each compared run is named by its adapter (the
VAdapter's front when it is not the paper's 1-layer perceiver), its curve is read from the run's
metrics.jsonl, and the rows are written as results.json, table.md, val_loss.csv and val_loss.png.
A comparison made before the blank-image scores existed gets them added (`evaluate.py blank`).
"""

import json
from pathlib import Path

import torch

import data
from evaluation.scoring import evaluate_checkpoint
from support.model_spec import ModelSpec
from support.run_folder import parse_metrics_line

COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]  # one per curve


def write_json(path: Path, content: dict) -> None:
    """Indented JSON; data.write_atomically, so a killed evaluation leaves no torn results file."""
    data.write_atomically(
        path, lambda temporary: temporary.write_text(json.dumps(content, indent=2, default=str))
    )


def default_results_path(checkpoint_path, split: str) -> Path:
    """results_<split>.json in the run folder, next to the checkpoint it scores."""
    return (
        Path(checkpoint_path) if Path(checkpoint_path).is_dir() else Path(checkpoint_path).parent
    ) / f"results_{split}.json"


def print_metrics(results: dict) -> None:
    for task, metrics in results["metrics"].items():
        print(
            f"{task:<14} "
            + "  ".join(
                f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                for name, value in metrics.items()
            )
        )


def run_name(spec: ModelSpec) -> str:
    if spec.adapter == "vadapter":
        front = spec.resampler
        # the paper's fresh 1-layer perceiver
        if front.latents_in_keys and front.feed_forward and front.depth == 1:
            return f"vadapter ({spec.adapter_init or 'stage1'})"
        kind = "pooler" if not front.latents_in_keys else f"{front.depth}-layer perceiver"
        return f"vadapter ({spec.adapter_init or 'stage1'}, {kind})"
    if spec.adapter == "perceiver":
        return f"perceiver (depth {spec.resampler.depth})"
    return spec.adapter


def validation_curve(run_dir) -> list[tuple[int, float]]:
    """(step, validation loss) pairs from a run's metrics.jsonl; a torn line (a killed write) is
    skipped."""
    records = map(parse_metrics_line, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return [
        (record["step"], record["val_loss"])
        for record in records
        if record and "val_loss" in record
    ]


def comparison_table(rows: list[dict]) -> str:
    """Markdown, like the paper's comparison: one row per adapter, and under it the same model's
    scores with every image blank (its text prior), where the run has them."""
    columns = [
        ("caption", "cider_d", "CIDEr-D"),
        ("vqa", "vqa_accuracy", "VQA acc"),
        ("video_caption", "cider_d", "video CIDEr-D"),
        ("video_vqa", "vqa_accuracy", "video VQA acc"),
    ]
    columns = [c for c in columns if any(c[0] in row["metrics"] for row in rows)]
    header = [
        "adapter",
        "trainable params",
        "val loss",
        f"steps to {rows[0]['baseline']}'s final val loss",
    ]
    lines = [
        "| " + " | ".join(header + [title for *_, title in columns]) + " |",
        "|" + "---|" * (len(header) + len(columns)),
    ]

    def scores(metrics: dict) -> list[str]:
        return [
            f"{metrics[task][metric]:.3f}" if task in metrics else "-"
            for task, metric, _ in columns
        ]

    for row in rows:
        reached = row["steps_to_baseline_final_loss"]
        cells = [
            row["adapter"],
            f"{row['trainable_parameters']:,}",
            f"{row['final_val_loss']:.4f}",
            f"{reached} of {row['step']}"
            if reached is not None
            else f"not reached in {row['step']}",
        ]
        lines.append("| " + " | ".join(cells + scores(row["metrics"])) + " |")
        if "blank_metrics" in row:
            blank = [f"{row['adapter']}, blank image", "", "", ""]
            lines.append("| " + " | ".join(blank + scores(row["blank_metrics"])) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path, size=(720, 440)) -> None:
    """Validation loss against step for every run, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 20, 60
    steps = [step for row in rows for step, _ in row["curve"]]
    losses = [loss for row in rows for _, loss in row["curve"]]
    low, high = min(losses), max(losses)

    def x(step):
        return left + (width - left - right) * step / max(steps)

    def y(loss):
        return top + (height - top - bottom) * (high - loss) / max(high - low, 1e-9)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line(
        [(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black"
    )
    for fraction in (0, 0.5, 1):
        loss, step = high - fraction * (high - low), fraction * max(steps)
        draw.text((4, y(loss) - 6), f"{loss:.3f}", fill="black")
        draw.text((x(step) - 10, height - bottom + 6), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 60, height - 24), "step (validation loss)", fill="black")
    for index, row in enumerate(rows):
        colour = COLOURS[index % len(COLOURS)]
        points = [(x(step), y(loss)) for step, loss in row["curve"]]
        draw.line(points, fill=colour, width=2) if len(points) > 1 else None
        draw.text((width - right - 220, top + 16 * index), row["adapter"], fill=colour)
    image.save(path)


@torch.no_grad()
def write_comparison(rows: list[dict], out_dir) -> str:
    """results.json, table.md, val_loss.csv and val_loss.png in out_dir; returns the table."""
    out_dir = Path(out_dir)
    table = comparison_table(rows)
    write_json(out_dir / "results.json", {"runs": rows})
    (out_dir / "table.md").write_text(table + "\n")
    with open(out_dir / "val_loss.csv", "w") as f:
        f.write("adapter,step,val_loss\n")
        f.writelines(
            f"{row['adapter']},{step},{loss:.6f}\n" for row in rows for step, loss in row["curve"]
        )
    plot_curves(rows, out_dir / "val_loss.png")
    return table


def scored_items(metrics: dict, samples: list[dict]) -> tuple:
    """Which test items a task scored: how many, and its samples' question ids (VQA) or image ids
    (captions)."""
    count = metrics.get("images", metrics.get("questions"))
    return count, [sample.get("question_id", sample["image_id"]) for sample in samples]


def add_blank_scores(results_path: Path, data_dir, split="test") -> int:
    """A `compare` results.json made before the blank-image scores existed: each row lacking them
    gets them -> how many rows were scored; table.md beside it is rewritten. The same items: a
    limit of the largest count a task scored takes what compare's limit took (a task with fewer
    items scored them all), checked against the counts and the sample ids."""
    results = json.loads(Path(results_path).read_text())
    missing = [row for row in results["runs"] if "blank_metrics" not in row]
    for row in missing:
        limit = max(scored_items(metrics, [])[0] for metrics in row["metrics"].values())
        blank = evaluate_checkpoint(
            row["run"], data_dir, split, list(row["metrics"]), limit, images=("blank",)
        )
        for task, metrics in row["metrics"].items():
            if scored_items(metrics, row["samples"][task]) != scored_items(
                blank["blank_metrics"][task], blank["blank_samples"][task]
            ):
                raise data.DataError(
                    f"{row['run']}: {task} with blank images scored other items than "
                    f"{results_path} did (is it split {split!r} of {data_dir}?)"
                )
        row["blank_metrics"], row["blank_samples"] = blank["blank_metrics"], blank["blank_samples"]
    if missing:
        write_json(Path(results_path), results)
        (Path(results_path).parent / "table.md").write_text(
            comparison_table(results["runs"]) + "\n"
        )
    return len(missing)

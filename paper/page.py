"""docs/results.md, written from `make paper`'s numbers (paper/tables.py): how it was run, each
table's cells (mean ± std over the seeds, a "blank image" line under each row), the runs still
falling at their end, and the claims with their paired intervals and verdicts (paper/claims.py).
"""

from paper.claims import summarize
from paper.runs import BLANK, SCORES

COLUMNS = [
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("steps_to_halfway", "steps halfway down the perceiver's drop", "{:.0f}"),
    ("final_val_loss", "val loss", "{:.4f}"),
    ("val_loss_area", "mean val loss over the run", "{:.4f}"),
    ("late_change", "val loss fall in the last 20% of steps", "{:.1%}"),
    ("cider_d", "CIDEr-D", "{:.3f}"),
    ("vqa_accuracy", "VQA acc", "{:.3f}"),
    ("video_cider_d", "video CIDEr-D", "{:.3f}"),
    ("video_vqa_accuracy", "video VQA acc", "{:.3f}"),
    ("oracle_fraction", "oracle gap closed", "{:.3f}"),
]


LATE_CHANGE_BAR = 0.02  # a run past its drop: its val loss falls less than this in its last 20%


def cell(seeds: list[dict], metric: str, form: str) -> str:
    """ "mean ± std" of one metric over the seeds; "-" where the row has no such metric."""
    if not any(metric in seed for seed in seeds):
        return "-"
    values = [seed[metric] for seed in seeds]
    summary = summarize(values)
    if summary["n"] == 0:
        return "not reached"
    text = form.format(summary["mean"]) + (
        f" ± {form.format(summary['std'])}" if summary["std"] else ""
    )
    return text + (
        f" ({summary['n']} of {len(values)} reached)" if summary["n"] < len(values) else ""
    )


def table_line(name: str, seeds: list[dict], prefix: str = "") -> str:
    """One row of a table; with a prefix (BLANK), its scores alone, under that prefix."""
    return (
        f"| {name} | "
        + " | ".join(
            cell(seeds, prefix + metric, form) if not prefix or metric in SCORES else ""
            for metric, _, form in COLUMNS
        )
        + " |"
    )


def markdown(results: dict, per_run: dict, tables: dict) -> str:
    """docs/results.md: how it was run, the stage-1 scores, every table (`tables`:
    paper.tables.TABLES), the claims."""
    settings = results["settings"]
    lines = [
        "# The paper's tables at toy scale (`make paper`)",
        "",
        f"Written by `{results['command']}` on {results['machine']}: "
        f"{results['wall_s'] / 60:.1f} minutes of wall time for the {results['runs_run']} runs "
        f"this invocation ran ({results['runs_skipped']} already finished were skipped). "
        f"Seeds {', '.join(map(str, settings['seeds']))} (stage 1 and stage 2 reseeded; stage 0 "
        f"and the data shared); stage 1 {settings['stage1_steps']} steps, stage 2 "
        f"{settings['stage2_steps']} steps, validation every {settings['eval_every']}; test "
        f"metrics on the first {settings['eval_limit'] or 'all'} images / questions per task. "
        "Each cell: mean ± sample standard deviation (n - 1) over the seeds. CIDEr-D is on the "
        "COCO tool's scale (the paper's figures are x100). \"steps halfway down the perceiver's "
        'drop": the first validation step at or below the loss halfway from the first to the '
        "final validation loss of the perceiver of the same seed and ViT, a loss the perceiver "
        'reaches in the middle of its run (a run that never reaches it is censored); "mean val '
        'loss over the run": the area under the '
        'validation curve divided by the steps it spans. Under each row, "blank image": the same '
        "models' scores with every image blank (zero pixels after the ViT's normalisation, the "
        "same items): what the frozen LM answers without seeing.",
        "",
        "Stage 1 (the tiny LM as the decoder), image CIDEr-D: "
        + ", ".join(
            f"{vit} ViT {cell(seeds, 'cider_d', '{:.3f}')}"
            for vit, seeds in results["stage1"].items()
        ),
        "",
    ]
    for table in results["tables"]:
        title, rows = tables[table]
        lines += [
            f"## {table}: {title}",
            "",
            "| row | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        for name, run in rows:
            lines.append(table_line(name, per_run[run]))
            if any(BLANK + score in seed for seed in per_run[run] for score in SCORES):
                lines.append(table_line(f"{name}, blank image", per_run[run], BLANK))
        lines.append("")
    falling = [
        f"{run} seed {seed} ({values['late_change']:.1%})"
        for run, per_seed in per_run.items()
        for seed, values in zip(settings["seeds"], per_seed)
        if values.get("late_change", 0) >= LATE_CHANGE_BAR
    ]
    lines += [
        "## Past the drop?",
        "",
        f"Runs whose validation loss still fell {LATE_CHANGE_BAR:.0%} or more over their last 20% "
        "of steps (a claim on them reads a curve mid-drop): "
        + (", ".join(falling) if falling else "none")
        + ".",
        "",
    ]
    lines += [
        "## The paper's claims",
        "",
        "Each claim on the seeds' paired differences (ours - theirs, signed so that > 0 favours "
        "the claim; the rows of one seed share data order and stage 1), with a 95% t-interval: "
        "**holds** or **fails** when it excludes zero, **level** when it lies inside ±5% of the "
        "baseline's mean, **undecided** otherwise, with the seeds the observed spread would need. "
        "A run that never reaches a target loss counts as the run length (censored): a bound.",
        "",
        "| claim | table | paper | ours vs theirs | difference [95% interval] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [claim_line(claim) for claim in results["claims"]]
    return "\n".join(lines) + "\n"


def claim_line(claim: dict) -> str:
    """One row of the claims table."""
    form = next(form for metric, _, form in COLUMNS if metric == claim["metric"])
    missing = "not reached" if claim["metric"] == "steps_to_halfway" else "-"
    rows = " vs ".join(
        missing if s["mean"] is None else f"{form.format(s['mean'])} ± {form.format(s['std'])}"
        for s in (claim["ours"], claim["theirs"])
    )
    verdict, interval = claim["verdict"], "-"
    if "interval" in claim:
        low, high = claim["interval"]
        interval = f"{form.format(claim['difference'])} [{form.format(low)}, {form.format(high)}]"
        censored = claim["censored"]["ours"] + claim["censored"]["theirs"]
        if censored:
            interval += f" ({censored} censored)"
        if verdict == "undecided":
            needed = claim["seeds_needed"]
            verdict += f" (needs {needed} seeds)" if needed else " (needs over 1000 seeds)"
    paper, table = claim["paper"], claim["table"]
    return f"| {claim['claim']} | {table} | {paper} | {rows} | {interval} | **{verdict}** |"

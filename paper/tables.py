"""`make paper`: the paper's tables (2, 3, 4, 13 and "stronger") at toy scale, with seeds.

Every run is a command of the project's own scripts: train_stage1.py, train_stage2.py, then
evaluate.py (test metrics, also with blank images; validation curve, trainable parameters) and
diagnostics.image_reliance (the fraction of the blanked -> text-oracle gap each adapter closes).
This command plans the runs, runs them (`--jobs 2`: two at a time, one thread each), skips the
finished ones (a run is finished when its evaluation output exists; an unfinished one resumes
from its checkpoint; a finished one lacking the blank-image scores gets only those), and writes
docs/results.md and docs/results.json: each cell the mean ± sample standard deviation over the
seeds, each paper claim judged on the seeds' paired differences: holds, fails, level or
undecided (paper/stats.py); and docs/results_curves.png, every run's validation curve
(paper/curves.py; `plot` draws it again from a results.json). Rows reuse runs: the
VAdapter of Table 2 is the same run in Tables 3, 4, 13 and "stronger". This file holds the tables
and the command; the runs are in paper/runs.py, the claims and how one is judged in
paper/claims.py.

    python -m paper.tables run --data data/shapes --stage0 stage0 --runs runs/paper --seeds 1,2,3 \\
        --out docs
    python -m paper.tables plot docs/results.json --out docs/results_curves.png
    python -m paper.tables reliance runs/paper/seed1/vadapter --data data/shapes --out reliance.json
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

# Reached through this module though not used in it: STAGE2_RUNS and steps_to_reach
# (tests/test_paper.py reads the whole of make paper through paper.tables).
from paper.claims import CLAIMS, judge, summarize
from paper.curves import plot, plot_file
from paper.runs import (
    BLANK,
    SCORES,
    VITS,
    add_diagnostics,
    collect,
    needed_runs,
    plan,
    run_jobs,
    write_reliance,
)
from paper.runs import STAGE2_RUNS as STAGE2_RUNS
from support.flags import COUNT, NON_NEGATIVE
from support.run_folder import steps_to_reach as steps_to_reach
from support.writers import write_atomically

TABLES = {  # table -> (title, [(row name, run)])
    "Table 2": (
        "PaLM2-VAdapter against the perceiver resampler baseline",
        [("PaLM2-VAdapter", "vadapter"), ("perceiver resampler (6 layers)", "perceiver")],
    ),
    "Table 3": (
        "the tiny LM's initialization",
        [
            ("random", "vadapter_random"),
            ("language-pretrained", "vadapter_lm"),
            ("progressively aligned (stage 1)", "vadapter"),
        ],
    ),
    "Table 4": (
        "the stage-2 cross-attention in front of the tiny LM",
        [
            ("attentional pooler", "vadapter_pooler"),
            ("1-layer perceiver", "vadapter"),
            ("6-layer perceiver", "vadapter_depth6"),
            ("1-layer perceiver without the final LayerNorm", "vadapter_no_final_norm"),
            ("stage-1 pooler carried over", "vadapter_carried"),
        ],
    ),
    "Table 13": (
        "an MLP adapter (LLaVA-1.5 style) as a third baseline",
        [
            ("MLP", "mlp"),
            ("PaLM2-VAdapter", "vadapter"),
            ("perceiver resampler (6 layers)", "perceiver"),
        ],
    ),
    "stronger": (
        "both adapters on two ViT sizes; a gain row is toy minus toy-small, seed by seed",
        [
            ("VAdapter, toy-small ViT", "vadapter_small"),
            ("VAdapter, toy ViT", "vadapter"),
            ("perceiver, toy-small ViT", "perceiver_small"),
            ("perceiver, toy ViT", "perceiver"),
            ("VAdapter gain", "vadapter_gain"),
            ("perceiver gain", "perceiver_gain"),
        ],
    ),
}
TITLES = {table: title for table, (title, _) in TABLES.items()}
COLUMNS = [
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("steps_to_baseline_final_loss", "steps to the perceiver's final val loss", "{:.0f}"),
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


def markdown(results: dict, per_run: dict) -> str:
    """docs/results.md: how it was run, the stage-1 scores, every table, the claims."""
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
        "COCO tool's scale (the paper's figures are x100). \"steps to the perceiver's final val "
        'loss": the first validation step at or below the final validation loss of the '
        'perceiver of the same seed and ViT; "mean val loss over the run": the area under the '
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
        title, rows = TABLES[table]
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
    missing = "not reached" if claim["metric"] == "steps_to_baseline_final_loss" else "-"
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


def run_paper(args) -> dict:
    """Every run (the unfinished ones), then the tables -> results.json's content."""
    started, load = time.time(), os.getloadavg()[0]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    tables = {table: TABLES[table] for table in args.tables}
    names = needed_runs([run for _, rows in tables.values() for _, run in rows])
    first, second = plan(args, names)
    ran = run_jobs(first, args.jobs, threads) + run_jobs(second, args.jobs, threads)
    runs = Path(args.runs)
    block = None
    if {"vadapter", "perceiver"} <= set(names):
        block = add_diagnostics(args, runs, args.seeds[0], args.threads or os.cpu_count() or 1)
    per_run = collect(runs, args.seeds, names)
    claims = [claim for claim in CLAIMS if claim.table in tables]
    settings = {
        key: getattr(args, key)
        for key in (
            "seeds",
            "stage1_steps",
            "stage2_steps",
            "eval_every",
            "eval_limit",
            "reliance_limit",
            "jobs",
            "train_flags",
            "tables",
        )
    }
    results = {
        "command": "python " + shlex.join(sys.argv),
        "settings": settings,
        "wall_s": time.time() - started,
        "runs_run": ran,
        "runs_skipped": len(first) + len(second) - ran,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f} "
        "at the start, "
        f"{args.jobs} runs at a time with {threads} thread(s) each",
        "diagnostics": block,
        "stage1": {
            vit: [
                {
                    "run": str(runs / f"seed{seed}" / f"stage1_{vit}"),
                    "cider_d": json.loads(
                        (runs / f"seed{seed}" / f"stage1_{vit}" / "eval.json").read_text()
                    )["metrics"]["caption"]["cider_d"],
                }
                for seed in args.seeds
            ]
            for vit in VITS
            if (runs / f"seed{args.seeds[0]}" / f"stage1_{vit}" / "eval.json").exists()
        },
        "tables": {
            table: [{"name": name, "seeds": per_run[run]} for name, run in rows]
            for table, (_, rows) in tables.items()
        },
        "claims": judge(claims, per_run, run_length=args.stage2_steps),
    }
    out = Path(args.out)
    write_atomically(
        out / "results.json", lambda temporary: temporary.write_text(json.dumps(results, indent=1))
    )
    (out / "results.md").write_text(markdown(results, per_run))
    plot(results, out / "results_curves.png", TITLES)
    return results


def parse_tables(text: str) -> list[str]:
    """--tables: "all", or comma-separated names of TABLES ("Table 2" or just "2", "stronger")."""
    if text.strip().lower() == "all":
        return list(TABLES)
    chosen = []
    for name in (part.strip() for part in text.split(",")):
        table = f"Table {name}" if name.isdigit() else name
        if table not in TABLES:
            raise argparse.ArgumentTypeError(
                f"{name!r}: expected all, or tables from {', '.join(TABLES)} (2 for Table 2)"
            )
        chosen.append(table)
    return chosen


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integers, e.g. 1,2,3"
        ) from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="every run of every table, then docs/results.md, .json and _curves.png"
    )
    run.add_argument(
        "--data",
        required=True,
        help="data folder (python -m stage0.synthetic --out DIR --tokenizer ...)",
    )
    run.add_argument(
        "--stage0",
        default="stage0",
        help=f"folder of the frozen stand-ins: {', '.join(VITS.values())}, "
        "tiny_lm.safetensors, large_lm.safetensors",
    )
    run.add_argument("--runs", default="runs/paper", help="folder for every run (seed<N>/<run>)")
    run.add_argument("--out", default="docs", help="folder for results.md and results.json")
    run.add_argument("--seeds", type=parse_seeds, default=[1, 2, 3, 4, 5, 6, 7, 8], metavar="1,2,3")
    run.add_argument(
        "--tables",
        type=parse_tables,
        default=["Table 2"],
        metavar="2,3,4,13,stronger|all",
        help="the tables to run and judge (default: Table 2, the paper's main claims)",
    )
    run.add_argument("--stage1-steps", type=COUNT, default=300)
    run.add_argument("--stage2-steps", type=COUNT, default=300)
    run.add_argument(
        "--eval-every",
        type=COUNT,
        default=25,
        help="validation loss every N steps (the convergence curve)",
    )
    run.add_argument(
        "--eval-limit",
        type=NON_NEGATIVE,
        default=100,
        help="test images / questions per task (0: all)",
    )
    run.add_argument(
        "--reliance-limit", type=COUNT, default=128, help="validation images for the oracle gap"
    )
    run.add_argument("--jobs", type=COUNT, default=2, help="runs at a time")
    run.add_argument("--threads", type=COUNT, help="threads per run (default: CPU cores / jobs)")
    run.add_argument(
        "--train-flags",
        default="",
        help='more flags for both training scripts, e.g. "--batch-size 8"',
    )
    reliance = commands.add_parser(
        "reliance", help="a stage-2 run's diagnostics.image_reliance, written as JSON"
    )
    reliance.add_argument("run", metavar="RUN_DIR")
    reliance.add_argument("--data", required=True)
    reliance.add_argument("--limit", type=COUNT, default=128)
    reliance.add_argument("--out", type=Path, required=True)
    redraw = commands.add_parser("plot", help="the curves' PNG again from a results.json")
    redraw.add_argument("results", metavar="RESULTS_JSON", type=Path)
    redraw.add_argument("--out", type=Path, required=True, metavar="PNG")
    args = parser.parse_args(argv)
    if args.command == "plot":
        try:
            return plot_file(args.results, args.out, TITLES)
        except ValueError as error:
            parser.error(str(error))
    if args.command == "reliance":
        write_reliance(args)
        return
    if args.jobs < 1 or not args.seeds:
        parser.error(
            f"--jobs {args.jobs} --seeds {args.seeds}: expected at least one job and one seed"
        )
    results = run_paper(args)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.md, .json, _curves.png in {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()

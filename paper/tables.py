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
from paper.claims import CLAIMS, judge
from paper.curves import plot, plot_file
from paper.page import markdown
from paper.runs import STAGE2_RUNS as STAGE2_RUNS
from paper.runs import (
    VITS,
    add_diagnostics,
    collect,
    needed_runs,
    plan,
    run_jobs,
    write_reliance,
)
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
        "command": "python -m paper.tables " + shlex.join(sys.argv[1:]),
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
    (out / "results.md").write_text(markdown(results, per_run, TABLES))
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
    run.add_argument("--seeds", type=parse_seeds, default=list(range(1, 13)), metavar="1,2,3")
    run.add_argument(
        "--tables",
        type=parse_tables,
        default=["Table 2"],
        metavar="2,3,4,13,stronger|all",
        help="the tables to run and judge (default: Table 2, the paper's main claims)",
    )
    run.add_argument("--stage1-steps", type=COUNT, default=300)
    run.add_argument("--stage2-steps", type=COUNT, default=400)
    run.add_argument(
        "--eval-every",
        type=COUNT,
        default=25,
        help="validation loss every N steps (the convergence curve)",
    )
    run.add_argument(
        "--eval-limit",
        type=NON_NEGATIVE,
        default=300,
        help="test images / questions per task (0: all); 300: every test image of the synthetic "
        "world, whose CIDEr-D at 100 images varied too much from seed to seed to decide",
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

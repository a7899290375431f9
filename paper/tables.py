"""`make paper`: the paper's tables (2, 3, 4, 13 and "stronger") at toy scale, with seeds.

Every run is a command of the project's own scripts: train_stage1.py, train_stage2.py, then
evaluate.py (test metrics, validation curve, trainable parameters) and diagnostics.image_reliance
(the fraction of the blanked -> text-oracle gap each adapter closes). This file plans the runs,
runs them (`--jobs 2`: two at a time, one thread each), skips the finished ones (a run is finished
when its evaluation output exists; an unfinished one resumes from its checkpoint), and writes
docs/results.md and docs/results.json: each cell the mean ± sample standard deviation over the
seeds, each paper claim marked holds / does not hold / within seed noise. Rows reuse runs: the
VAdapter of Table 2 is the same run in Tables 3, 4, 13 and "stronger".

    python -m paper.tables run --data data/shapes --stage0 stage0 --runs runs/paper --seeds 1,2,3
    --out docs python -m paper.tables reliance runs/paper/seed1/vadapter --data data/shapes --out
    reliance.json
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from evaluation import diagnostics
from support.readers import write_atomically, write_json
from support.run_folder import steps_to_reach

VITS = {
    "toy": "vit.safetensors",
    "toy-small": "vit_small.safetensors",
}  # frozen ViT sizes, files in --stage0
VADAPTER = [
    "--adapter",
    "vadapter",
    "--stage1",
    "{stage1}",
]  # {stage1}: the seed's stage-1 run on the same ViT
PERCEIVER = ["--adapter", "perceiver", "--perceiver-depth", "6"]
# Each stage-2 run once per seed: name -> (ViT, train_stage2.py flags).
STAGE2_RUNS = {
    "vadapter": ("toy", VADAPTER),
    "perceiver": ("toy", PERCEIVER),
    "vadapter_random": (
        "toy",
        ["--adapter", "vadapter", "--adapter-init", "random", "--tiny-lm", "{tiny_lm}"],
    ),
    "vadapter_lm": (
        "toy",
        ["--adapter", "vadapter", "--adapter-init", "lm", "--tiny-lm", "{tiny_lm}"],
    ),
    "vadapter_pooler": ("toy", VADAPTER + ["--cross-attention", "pooler"]),
    "vadapter_depth6": ("toy", VADAPTER + ["--resampler-depth", "6"]),
    "vadapter_no_final_norm": (
        "toy",
        VADAPTER + ["--resampler-final-norm", "false"],
    ),  # not the paper's: the baseline's ending
    "vadapter_carried": (
        "toy",
        VADAPTER + ["--resampler-from-stage1", "true"],
    ),  # not the paper's: the stage-1 pooler kept
    "mlp": ("toy", ["--adapter", "mlp"]),
    "vadapter_small": ("toy-small", VADAPTER),
    "perceiver_small": ("toy-small", PERCEIVER),
}
BASELINE = {
    "toy": "perceiver",
    "toy-small": "perceiver_small",
}  # whose final validation loss the others race to
GAINS = {
    "vadapter_gain": ("vadapter", "vadapter_small"),
    "perceiver_gain": ("perceiver", "perceiver_small"),
}
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
SCORES = {
    "cider_d": ("caption", "cider_d"),
    "vqa_accuracy": ("vqa", "vqa_accuracy"),
    "video_cider_d": ("video_caption", "cider_d"),
    "video_vqa_accuracy": ("video_vqa", "vqa_accuracy"),
}
COLUMNS = [
    ("trainable_parameters", "trainable params", "{:,.0f}"),
    ("steps_to_baseline_final_loss", "steps to the perceiver's final val loss", "{:.0f}"),
    ("final_val_loss", "val loss", "{:.4f}"),
    ("cider_d", "CIDEr-D", "{:.3f}"),
    ("vqa_accuracy", "VQA acc", "{:.3f}"),
    ("video_cider_d", "video CIDEr-D", "{:.3f}"),
    ("video_vqa_accuracy", "video VQA acc", "{:.3f}"),
    ("oracle_fraction", "oracle gap closed", "{:.3f}"),
]


@dataclass
class Claim:
    text: str
    paper: str  # the paper's own figures (DESIGN.md section 1)
    table: str
    ours: str  # the run the paper says is better ...
    theirs: str  # ... than this one
    metric: str = "cider_d"  # image CIDEr-D, the paper's headline figure
    higher_is_better: bool = True


HIGHER = "higher (its Table 2)"
CLAIMS = [
    Claim(
        "fewer parameters: the VAdapter trains fewer than the perceiver",
        "30-70% fewer than comparable LVLMs",
        "Table 2",
        "vadapter",
        "perceiver",
        "trainable_parameters",
        higher_is_better=False,
    ),
    Claim(
        "faster convergence: the VAdapter reaches the perceiver's final validation loss in fewer "
        "steps",
        "a higher CIDEr in 60K steps than the perceiver in 250K (about 3x)",
        "Table 2",
        "vadapter",
        "perceiver",
        "steps_to_baseline_final_loss",
        higher_is_better=False,
    ),
    Claim(
        "higher scores: image CIDEr-D",
        "83.0 vs 81.4 (ViT-B), 89.6 vs 82.4 (ViT-L)",
        "Table 2",
        "vadapter",
        "perceiver",
    ),
    Claim(
        "higher scores: video CIDEr-D", HIGHER, "Table 2", "vadapter", "perceiver", "video_cider_d"
    ),
    Claim(
        "higher scores: VQA accuracy", HIGHER, "Table 2", "vadapter", "perceiver", "vqa_accuracy"
    ),
    Claim(
        "higher scores: video VQA accuracy",
        HIGHER,
        "Table 2",
        "vadapter",
        "perceiver",
        "video_vqa_accuracy",
    ),
    Claim(
        "progressive alignment beats language pretraining only",
        "83.0 vs 81.3",
        "Table 3",
        "vadapter",
        "vadapter_lm",
    ),
    Claim(
        "language pretraining beats a random tiny LM",
        "81.3 vs 79.2",
        "Table 3",
        "vadapter_lm",
        "vadapter_random",
    ),
    Claim(
        "a 1-layer perceiver beats the attentional pooler in stage 2",
        "85.6 vs 81.1",
        "Table 4",
        "vadapter",
        "vadapter_pooler",
    ),
    Claim(
        "a 1-layer perceiver beats a 6-layer one in stage 2",
        "85.6 vs 70.3",
        "Table 4",
        "vadapter",
        "vadapter_depth6",
    ),
    Claim("the VAdapter beats an MLP adapter", "83.0 vs 80.3", "Table 13", "vadapter", "mlp"),
    Claim(
        "stronger scaling: the VAdapter gains more CIDEr-D from the larger ViT than the perceiver",
        "+6.6 vs +1.0 (ViT-B -> ViT-L)",
        "stronger",
        "vadapter_gain",
        "perceiver_gain",
    ),
]

# =============================================================================================
# The runs: what each one runs, and running them
# =============================================================================================


@dataclass
class Job:
    folder: Path
    commands: list  # argv lists, each run as `python <argv>`
    done: Path  # written last: a finished run


def plan(args) -> tuple[list[Job], list[Job]]:
    """-> (stage-1 jobs, stage-2 jobs), every seed; the stage-2 VAdapters read their seed's stage-1
    run."""
    stage0, runs, train_flags = Path(args.stage0), Path(args.runs), shlex.split(args.train_flags)
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    first, second = [], []
    for seed in args.seeds:
        common = [
            "--data",
            args.data,
            "--eval-every",
            str(args.eval_every),
            "--seed",
            str(seed),
            "--resume",
            "true",
        ]
        for vit, vit_file in VITS.items():
            folder = runs / f"seed{seed}" / f"stage1_{vit}"
            first.append(
                Job(
                    folder,
                    [
                        [
                            "train_stage1.py",
                            "--vit",
                            str(stage0 / vit_file),
                            "--tiny-lm",
                            str(stage0 / "tiny_lm.safetensors"),
                            "--out-dir",
                            str(folder),
                            "--steps",
                            str(args.stage1_steps),
                            *common,
                            *train_flags,
                        ],
                        [
                            "evaluate.py",
                            "checkpoint",
                            str(folder),
                            "--data",
                            args.data,
                            "--split",
                            "test",
                            "--tasks",
                            "caption",
                            *limit,
                            "--out",
                            str(folder / "eval.json"),
                        ],
                    ],
                    folder / "eval.json",
                )
            )
        for name, (vit, flags) in STAGE2_RUNS.items():
            folder = runs / f"seed{seed}" / name
            fill = {
                "stage1": str(runs / f"seed{seed}" / f"stage1_{vit}"),
                "tiny_lm": str(stage0 / "tiny_lm.safetensors"),
            }
            second.append(
                Job(
                    folder,
                    [
                        [
                            "train_stage2.py",
                            *[flag.format(**fill) for flag in flags],
                            "--vit",
                            str(stage0 / VITS[vit]),
                            "--lm",
                            str(stage0 / "large_lm.safetensors"),
                            "--out-dir",
                            str(folder),
                            "--steps",
                            str(args.stage2_steps),
                            *common,
                            *train_flags,
                        ],
                        [
                            "evaluate.py",
                            "compare",
                            str(folder),
                            "--data",
                            args.data,
                            *limit,
                            "--out",
                            str(folder / "eval"),
                        ],
                        [
                            "-m",
                            "paper.tables",
                            "reliance",
                            str(folder),
                            "--data",
                            args.data,
                            "--limit",
                            str(args.reliance_limit),
                            "--out",
                            str(folder / "eval" / "reliance.json"),
                        ],
                    ],
                    folder / "eval" / "reliance.json",
                )
            )
    return first, second


def run_command(argv: list[str], log: Path, threads: int) -> None:
    """`python argv`, its output appended to log; a failure names the command and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ python {shlex.join(argv)}\n")
        f.flush()
        returncode = subprocess.call(
            [sys.executable, *argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
    if returncode:
        raise RuntimeError(
            f"`python {shlex.join(argv)}` failed (exit {returncode}); its output is in {log}"
        )


def run_jobs(jobs: list[Job], workers: int, threads: int) -> int:
    """Run the unfinished jobs, `workers` at a time -> how many ran. Every job is tried; then the
    first failure is raised (the finished ones are kept: rerunning continues from there)."""
    todo = [job for job in jobs if not job.done.exists()]

    def run(job: Job):
        started = time.time()
        for argv in job.commands:
            run_command(argv, job.folder / "paper.log", threads)
        print(f"done {job.folder} in {time.time() - started:.0f} s", flush=True)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, job) for job in todo]
    for future in futures:
        future.result()
    return len(todo)


def write_reliance(args) -> None:
    write_json(args.out, diagnostics.image_reliance(args.run, args.data, "val", args.limit))


# =============================================================================================
# The tables: one metrics dict per seed, mean ± standard deviation, the claims
# =============================================================================================


def stage2_metrics(folder: Path, baseline: Path) -> dict:
    """One seed of one row: what evaluate.py compare and the reliance wrote in folder/eval."""
    row = json.loads((folder / "eval" / "results.json").read_text())["runs"][0]
    target = json.loads((baseline / "eval" / "results.json").read_text())["runs"][0][
        "final_val_loss"
    ]
    metrics = {
        "run": str(folder),
        "steps": row["step"],
        "trainable_parameters": row["trainable_parameters"],
        "final_val_loss": row["final_val_loss"],
        "steps_to_baseline_final_loss": steps_to_reach(row["curve"], target),
    }
    metrics.update(
        {
            name: row["metrics"][task][metric]
            for name, (task, metric) in SCORES.items()
            if task in row["metrics"]
        }
    )
    metrics["oracle_fraction"] = json.loads((folder / "eval" / "reliance.json").read_text())[
        "oracle_fraction"
    ]
    return metrics


def gain(larger: dict, smaller: dict) -> dict:
    """The toy ViT's metrics minus the toy-small ViT's, for one seed."""
    return {
        name: larger[name] - smaller[name]
        for name in ("final_val_loss", "oracle_fraction", *SCORES)
        if name in larger
    }


def collect(runs: Path, seeds: list[int]) -> dict[str, list[dict]]:
    """{run name: one metrics dict per seed} for every stage-2 run and gain row."""
    per_run = {
        name: [
            stage2_metrics(runs / f"seed{seed}" / name, runs / f"seed{seed}" / BASELINE[vit])
            for seed in seeds
        ]
        for name, (vit, _) in STAGE2_RUNS.items()
    }
    for name, (larger, smaller) in GAINS.items():
        per_run[name] = [gain(a, b) for a, b in zip(per_run[larger], per_run[smaller])]
    return per_run


def summarize(values: list) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not
    None."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(present),
        "std": statistics.stdev(present) if len(present) > 1 else 0.0,
        "n": len(present),
    }


def mark(ours: list, theirs: list, higher_is_better: bool = True) -> tuple[str, float | None]:
    """The claim "ours beats theirs" on per-seed values -> (verdict, the noise level used). Within
    seed noise: the means differ by at most twice the larger of the two rows' standard deviations. A
    None (a loss never reached) loses to any number."""
    if None in ours or None in theirs:
        return ("does not hold" if None in ours else "holds"), None
    a, b = summarize(ours), summarize(theirs)
    noise = 2 * max(a["std"], b["std"])
    difference = (a["mean"] - b["mean"]) * (1 if higher_is_better else -1)
    if abs(difference) <= noise:
        return "within seed noise", noise
    return ("holds" if difference > 0 else "does not hold"), noise


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


def judge(claims: list[Claim], per_run: dict) -> list[dict]:
    """Each claim with both rows' mean ± std, the verdict and the noise level it was judged
    against."""
    judged = []
    for claim in claims:
        ours, theirs = (
            [seed.get(claim.metric) for seed in per_run[name]]
            for name in (claim.ours, claim.theirs)
        )
        measured = any(claim.metric in seed for seed in per_run[claim.ours] + per_run[claim.theirs])
        verdict, noise = (
            mark(ours, theirs, claim.higher_is_better)
            if measured
            else ("not measured (no such task)", None)
        )
        judged.append(
            {
                "claim": claim.text,
                "table": claim.table,
                "paper": claim.paper,
                "verdict": verdict,
                "ours": summarize(ours),
                "theirs": summarize(theirs),
                "two_std": noise,
                "metric": claim.metric,
            }
        )
    return judged


def markdown(results: dict, per_run: dict) -> str:
    """docs/results.md: how it was run, the stage-1 scores, every table, the claims."""
    settings = results["settings"]
    lines = [
        "# The paper's tables at toy scale (`make paper`)",
        "",
        f"Written by `{results['command']}` on {results['machine']}: {results['wall_s'] / 60:.1f} "
        "minutes of wall "
        f"time for the {results['runs_run']} runs this invocation ran ({results['runs_skipped']} "
        "already finished "
        f"were skipped). Seeds {', '.join(map(str, settings['seeds']))} (stage 1 and stage 2 "
        "reseeded; stage 0 "
        "and the data shared); "
        f"stage 1 {settings['stage1_steps']} steps, stage 2 {settings['stage2_steps']} steps, "
        "validation every "
        f"{settings['eval_every']}; test metrics on the first {settings['eval_limit'] or 'all'} "
        "images / questions "
        "per task. Each cell: mean ± sample standard deviation (n - 1) over the seeds. CIDEr-D is "
        "on the COCO "
        "tool's scale (the paper's figures are x100). \"steps to the perceiver's final val "
        'loss": the first '
        "validation step at or below the final validation loss of the perceiver of the same seed "
        "and ViT.",
        "",
        "Stage 1 (the tiny LM as the decoder), image CIDEr-D: "
        + ", ".join(
            f"{vit} ViT {cell(seeds, 'cider_d', '{:.3f}')}"
            for vit, seeds in results["stage1"].items()
        ),
        "",
    ]
    for table, (title, rows) in TABLES.items():
        lines += [
            f"## {table}: {title}",
            "",
            "| row | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        lines += [
            f"| {name} | "
            + " | ".join(cell(per_run[run], metric, form) for metric, _, form in COLUMNS)
            + " |"
            for name, run in rows
        ]
        lines.append("")
    lines += [
        "## The paper's claims",
        "",
        "Within seed noise: the two means differ by at most twice the larger of "
        "the two rows' sample standard deviations.",
        "",
        "| claim | table | paper | ours | verdict |",
        "|---|---|---|---|---|",
    ]
    for claim in results["claims"]:
        form = next(form for metric, _, form in COLUMNS if metric == claim["metric"])
        missing = "not reached" if claim["metric"] == "steps_to_baseline_final_loss" else "-"
        ours = " vs ".join(
            missing if s["mean"] is None else f"{form.format(s['mean'])} ± {form.format(s['std'])}"
            for s in (claim["ours"], claim["theirs"])
        )
        noise = "" if claim["two_std"] is None else f" (2 std = {form.format(claim['two_std'])})"
        lines.append(
            f"| {claim['claim']} | {claim['table']} | {claim['paper']} | {ours} | "
            f"{claim['verdict']}{noise} |"
        )
    return "\n".join(lines) + "\n"


def add_diagnostics(args, runs: Path, seed: int, threads: int) -> dict:
    """The demo's diagnostics block (evaluate.py diagnostics), on the first seed's toy-ViT runs."""
    folder = runs / "diagnostics"
    if not (folder / "results.json").exists() or "diagnostics" not in json.loads(
        (folder / "results.json").read_text()
    ):
        rows = [
            json.loads((runs / f"seed{seed}" / name / "eval" / "results.json").read_text())["runs"][
                0
            ]
            for name in ("vadapter", "perceiver")
        ]
        write_json(folder / "results.json", {"runs": rows})
        stage0 = Path(args.stage0)
        run_command(
            [
                "evaluate.py",
                "diagnostics",
                str(folder / "results.json"),
                "--data",
                args.data,
                "--vit",
                str(stage0 / VITS["toy"]),
                "--large-lm",
                str(stage0 / "large_lm.safetensors"),
                "--tiny-lm",
                str(stage0 / "tiny_lm.safetensors"),
                "--stage1",
                str(runs / f"seed{seed}" / "stage1_toy"),
                "--limit",
                str(args.eval_limit),
            ],
            folder / "paper.log",
            threads,
        )
    return json.loads((folder / "results.json").read_text())["diagnostics"]


def run_paper(args) -> dict:
    """Every run (the unfinished ones), then the tables -> results.json's content."""
    started, load = time.time(), os.getloadavg()[0]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    first, second = plan(args)
    ran = run_jobs(first, args.jobs, threads) + run_jobs(second, args.jobs, threads)
    runs = Path(args.runs)
    block = add_diagnostics(args, runs, args.seeds[0], args.threads or os.cpu_count() or 1)
    per_run = collect(runs, args.seeds)
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
        },
        "tables": {
            table: [{"name": name, "seeds": per_run[run]} for name, run in rows]
            for table, (_, rows) in TABLES.items()
        },
        "claims": judge(CLAIMS, per_run),
    }
    out = Path(args.out)
    write_atomically(
        out / "results.json", lambda temporary: temporary.write_text(json.dumps(results, indent=1))
    )
    (out / "results.md").write_text(markdown(results, per_run))
    return results


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
        "run", help="every run of every table, then docs/results.md and .json"
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
    run.add_argument("--seeds", type=parse_seeds, default=[1, 2, 3], metavar="1,2,3")
    run.add_argument("--stage1-steps", type=int, default=300)
    run.add_argument("--stage2-steps", type=int, default=200)
    run.add_argument(
        "--eval-every",
        type=int,
        default=25,
        help="validation loss every N steps (the convergence curve)",
    )
    run.add_argument(
        "--eval-limit", type=int, default=100, help="test images / questions per task (0: all)"
    )
    run.add_argument(
        "--reliance-limit", type=int, default=128, help="validation images for the oracle gap"
    )
    run.add_argument("--jobs", type=int, default=2, help="runs at a time")
    run.add_argument("--threads", type=int, help="threads per run (default: CPU cores / jobs)")
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
    reliance.add_argument("--limit", type=int, default=128)
    reliance.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "reliance":
        write_reliance(args)
        return
    if args.jobs < 1 or not args.seeds:
        parser.error(
            f"--jobs {args.jobs} --seeds {args.seeds}: expected at least one job and one seed"
        )
    results = run_paper(args)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.md and results.json in {results['wall_s'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()

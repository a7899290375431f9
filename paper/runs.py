"""`make paper`'s runs: what each one runs, running them, and reading back their numbers.

After Figure 2's model, beside evaluate.py. Every run is a command of the project's own scripts:
train_stage1.py, train_stage2.py, then evaluate.py (test metrics with the real and with blank
images, validation curve, trainable parameters) and diagnostics.image_reliance (the fraction of
the blanked -> text-oracle gap each adapter closes). `--jobs 2` runs two at a time, one thread
each; a run is finished when its evaluation output exists, and an unfinished one resumes from its
checkpoint; a finished one evaluated before the blank-image scores existed gets only those
(evaluate.py blank). Rows reuse runs: the VAdapter of Table 2 is the same run in Tables 3, 4, 13
and "stronger". paper/tables.py turns the numbers read back here into the tables.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from evaluation import diagnostics
from paper.stats import curve_area, late_change
from support.run_folder import steps_to_reach
from support.writers import write_json

# frozen ViT sizes, files in --stage0
VITS = {
    "toy": "vit.safetensors",
    "toy-small": "vit_small.safetensors",
}
# {stage1}: the seed's stage-1 run on the same ViT
VADAPTER = [
    "--adapter",
    "vadapter",
    "--stage1",
    "{stage1}",
]
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
    # not the paper's: the baseline's ending
    "vadapter_no_final_norm": (
        "toy",
        VADAPTER + ["--resampler-final-norm", "false"],
    ),
    # not the paper's: the stage-1 pooler kept
    "vadapter_carried": (
        "toy",
        VADAPTER + ["--resampler-from-stage1", "true"],
    ),
    "mlp": ("toy", ["--adapter", "mlp"]),
    "vadapter_small": ("toy-small", VADAPTER),
    "perceiver_small": ("toy-small", PERCEIVER),
}
# whose final validation loss the others race to
BASELINE = {
    "toy": "perceiver",
    "toy-small": "perceiver_small",
}
GAINS = {
    "vadapter_gain": ("vadapter", "vadapter_small"),
    "perceiver_gain": ("perceiver", "perceiver_small"),
}

# =============================================================================================
# The runs: what each one runs, and running them
# =============================================================================================


@dataclass
class Job:
    folder: Path
    commands: list  # argv lists, each run as `python <argv>`
    done: Path  # written last: a finished run
    add_blank: list | None = None  # stage 2: the command adding the blank-image scores

    def todo(self) -> list:
        """The commands still to run: all of an unfinished run's; of a finished stage-2 run
        evaluated before the blank-image scores existed, the one adding them."""
        if not self.done.exists():
            return self.commands
        if self.add_blank and "blank_metrics" not in evaluation_row(self.folder):
            return [self.add_blank]
        return []


def evaluation_row(folder: Path) -> dict:
    """A stage-2 run's row of its `evaluate.py compare` results.json."""
    return json.loads((folder / "eval" / "results.json").read_text())["runs"][0]


def needed_runs(names: list[str]) -> list[str]:
    """The stage-2 runs that rows `names` (runs or gain rows) read: theirs, their gain rows'
    parts, and the baseline each races to, in STAGE2_RUNS order."""
    wanted = set()
    for name in names:
        wanted |= set(GAINS.get(name, (name,)))
    wanted |= {BASELINE[STAGE2_RUNS[name][0]] for name in wanted}
    return [name for name in STAGE2_RUNS if name in wanted]


def plan(args, names: list[str]) -> tuple[list[Job], list[Job]]:
    """-> (stage-1 jobs, stage-2 jobs) for the stage-2 runs `names` (needed_runs), every seed;
    the stage-2 VAdapters read their seed's stage-1 run on the same ViT."""
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
        for vit in dict.fromkeys(STAGE2_RUNS[name][0] for name in names):
            vit_file = VITS[vit]
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
        for name in names:
            vit, flags = STAGE2_RUNS[name]
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
                    [
                        "evaluate.py",
                        "blank",
                        str(folder / "eval" / "results.json"),
                        "--data",
                        args.data,
                    ],
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
    """Run what each job has still to do, `workers` at a time -> how many jobs ran. Every job is
    tried; then the first failure is raised (the finished ones are kept: rerunning continues from
    there)."""
    todo = [(job, commands) for job in jobs if (commands := job.todo())]

    def run(job: Job, commands: list):
        started = time.time()
        for argv in commands:
            run_command(argv, job.folder / "paper.log", threads)
        print(f"done {job.folder} in {time.time() - started:.0f} s", flush=True)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, job, commands) for job, commands in todo]
    for future in futures:
        future.result()
    return len(todo)


def write_reliance(args) -> None:
    write_json(args.out, diagnostics.image_reliance(args.run, args.data, "val", args.limit))


def add_diagnostics(args, runs: Path, seed: int, threads: int) -> dict:
    """The demo's diagnostics block (evaluate.py diagnostics), on the first seed's toy-ViT runs."""
    folder = runs / "diagnostics"
    if not (folder / "results.json").exists() or "diagnostics" not in json.loads(
        (folder / "results.json").read_text()
    ):
        rows = [evaluation_row(runs / f"seed{seed}" / name) for name in ("vadapter", "perceiver")]
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


# =============================================================================================
# Their outputs: one metrics dict per seed
# =============================================================================================

SCORES = {
    "cider_d": ("caption", "cider_d"),
    "vqa_accuracy": ("vqa", "vqa_accuracy"),
    "video_cider_d": ("video_caption", "cider_d"),
    "video_vqa_accuracy": ("video_vqa", "vqa_accuracy"),
}
BLANK = "blank_"  # the same score with every image blank: blank_cider_d, ...


def halfway_loss(curve: list[tuple[int, float]]) -> float:
    """Halfway from a curve's first validation loss to its final one: what the baseline reaches in
    the middle of its drop. (Its own final loss it reaches at its last step by construction, so
    racing to that would score the baseline the run's length whatever its pace.)"""
    return (curve[0][1] + curve[-1][1]) / 2


def stage2_metrics(folder: Path, baseline: Path) -> dict:
    """One seed of one row: what evaluate.py compare and the reliance wrote in folder/eval."""
    row = evaluation_row(folder)
    target = halfway_loss(evaluation_row(baseline)["curve"])
    metrics = {
        "run": str(folder),
        "steps": row["step"],
        "trainable_parameters": row["trainable_parameters"],
        "final_val_loss": row["final_val_loss"],
        "steps_to_halfway": steps_to_reach(row["curve"], target),
        "curve": row["curve"],  # (step, val loss): results.json keeps every run's curve
    }
    if len(row["curve"]) > 1:
        metrics["val_loss_area"] = curve_area(row["curve"])
        metrics["late_change"] = late_change(row["curve"])
    metrics.update(
        {
            prefix + name: row[prefix + "metrics"][task][metric]
            for prefix in ("", BLANK)
            for name, (task, metric) in SCORES.items()
            if task in row.get(prefix + "metrics", {})
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
        for name in ("final_val_loss", "val_loss_area", "oracle_fraction", *SCORES)
        if name in larger
    }


def collect(runs: Path, seeds: list[int], names: list[str]) -> dict[str, list[dict]]:
    """{run name: one metrics dict per seed} for the stage-2 runs `names` and the gain rows whose
    parts are among them."""
    per_run = {
        name: [
            stage2_metrics(
                runs / f"seed{seed}" / name,
                runs / f"seed{seed}" / BASELINE[STAGE2_RUNS[name][0]],
            )
            for seed in seeds
        ]
        for name in names
    }
    for name, (larger, smaller) in GAINS.items():
        if larger in per_run and smaller in per_run:
            per_run[name] = [gain(a, b) for a, b in zip(per_run[larger], per_run[smaller])]
    return per_run

"""make paper (paper.py): the aggregation, steps to a target loss, the claim marking, that every
command it runs parses with its script's own parser, and the whole orchestration with the
training and evaluation commands replaced by ones that write known numbers."""

import argparse
import importlib
import json
import math
from pathlib import Path

import pytest

from paper import claims as paper_claims
from paper import runs
from paper import tables as paper


def test_summarize_is_the_mean_and_sample_standard_deviation_of_the_numbers_given():
    summary = paper_claims.summarize([1.0, 2.0, 4.0])
    assert summary["mean"] == pytest.approx(7 / 3)
    # by hand: squared deviations 16/9, 1/9, 25/9 -> 42/9, over n - 1 = 2 -> 7/3
    assert summary["std"] == pytest.approx(math.sqrt(7 / 3)) and summary["n"] == 3
    assert paper_claims.summarize([5.0, None, 7.0]) == {
        "mean": 6.0,
        "std": pytest.approx(math.sqrt(2)),
        "n": 2,
    }
    assert paper_claims.summarize([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1}
    assert paper_claims.summarize([None]) == {"mean": None, "std": None, "n": 0}


def test_steps_to_reach_is_the_first_validation_step_at_or_below_the_target():
    curve = [(25, 0.9), (50, 0.7), (75, 0.72), (100, 0.6)]
    assert paper.steps_to_reach(curve, 0.71) == 50
    assert paper.steps_to_reach(curve, 0.7) == 50
    assert paper.steps_to_reach(curve, 0.65) == 100
    assert paper.steps_to_reach(curve, 0.5) is None


def test_the_race_is_to_halfway_down_the_baselines_drop():
    """Its own final loss the baseline reaches at its last step by construction; the halfway loss
    it reaches mid-run, so that its pace shows."""
    baseline = [(25, 0.9), (50, 0.85), (75, 0.7), (100, 0.62), (125, 0.6)]
    assert runs.halfway_loss(baseline) == pytest.approx(0.75)
    assert paper.steps_to_reach(baseline, runs.halfway_loss(baseline)) == 75
    assert paper.steps_to_reach(baseline, baseline[-1][1]) == 125


def test_judge_pairs_the_seeds_and_counts_a_never_reached_target_as_the_run_length():
    """Two claims on hand-made rows: a score where ours wins every seed, and steps to a target
    loss where ours never reached it at seed 2 (censored at the run length, 200 steps)."""
    claims = [
        paper_claims.Claim("score", "", "Table 2", "a", "b", "cider_d"),
        paper_claims.Claim("steps", "", "Table 2", "a", "b", "steps", higher_is_better=False),
        paper_claims.Claim("video", "", "Table 2", "a", "b", "video_cider_d"),
    ]
    per_run = {
        "a": [
            {"cider_d": 2.0, "steps": 50},
            {"cider_d": 2.1, "steps": None},
            {"cider_d": 1.9, "steps": 75},
        ],
        "b": [
            {"cider_d": 1.0, "steps": 100},
            {"cider_d": 1.2, "steps": 150},
            {"cider_d": 0.9, "steps": 100},
        ],
    }
    score, steps, video = paper_claims.judge(claims, per_run, run_length=200)
    # differences 1.0, 0.9, 1.0: mean 0.9667, s = 0.0577, half-width 4.303 * s / sqrt(3) = 0.1434
    assert score["verdict"] == "holds" and score["difference"] == pytest.approx(29 / 30)
    assert score["interval"][0] == pytest.approx(29 / 30 - 4.303 * 0.057735 / 3**0.5, abs=1e-4)
    # differences 50, -50, 25 with seed 2 censored on our side: never "holds"
    assert steps["censored"] == {"ours": 1, "theirs": 0} and steps["verdict"] == "undecided"
    assert steps["difference"] == pytest.approx(25 / 3)
    assert video["verdict"] == "not measured (no such task)"
    one_seed = {name: rows[:1] for name, rows in per_run.items()}
    assert paper_claims.judge(claims[:1], one_seed)[0]["verdict"].startswith("undecided")


def plan_args(tmp_path, **changes):
    args = dict(
        data=str(tmp_path / "data"),
        stage0="stage0",
        runs=str(tmp_path / "runs"),
        out=str(tmp_path / "docs"),
        seeds=[1, 2, 3],
        stage1_steps=2,
        stage2_steps=2,
        eval_every=1,
        eval_limit=4,
        reliance_limit=4,
        jobs=2,
        threads=1,
        train_flags="--batch-size 8 --eval-batches 1",
    )
    return argparse.Namespace(**{**args, **changes})


class Parsed(Exception):
    """Raised by the patched parse_args once a script's own parser has accepted a command line."""


def test_every_command_paper_runs_parses_with_its_scripts_own_parser(tmp_path, monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        # an unknown flag or bad value exits with code 2 instead
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    first, second = paper.plan(plan_args(tmp_path), list(paper.STAGE2_RUNS))
    assert len(first) == 3 * len(paper.VITS) and len(second) == 3 * len(paper.STAGE2_RUNS)
    for job in first + second:
        for argv in job.commands + ([job.add_blank] if job.add_blank else []):
            with pytest.raises(Parsed) as parsed:
                script = argv[1] if argv[0] == "-m" else argv[0].removesuffix(".py")
                importlib.import_module(script).main(argv[2 if argv[0] == "-m" else 1 :])
            namespace = vars(parsed.value.args[0])
            if argv[0].startswith("train_stage"):
                assert namespace["out_dir"] == str(job.folder) and namespace["seed"] == int(
                    job.folder.parent.name[4:]
                )
                assert namespace["batch_size"] == 8  # --train-flags reach the training scripts


BLANK_METRICS = {"caption": {"cider_d": 0.25}, "vqa": {"vqa_accuracy": 0.375}}


def fake_outputs(argv: list[str], log: Path, threads: int):
    """Stands in for paper.run_command: each evaluation writes numbers known from the run and
    seed."""

    def value(flag):
        return argv[argv.index(flag) + 1]

    if argv[0] == "train_stage1.py" or argv[0] == "train_stage2.py":
        Path(value("--out-dir")).mkdir(parents=True, exist_ok=True)
    elif argv[:2] == ["evaluate.py", "checkpoint"]:
        Path(value("--out")).write_text(json.dumps({"metrics": {"caption": {"cider_d": 2.0}}}))
    elif argv[:2] == ["evaluate.py", "compare"]:
        folder = Path(argv[2])
        seed, name = int(folder.parent.name[4:]), folder.name
        cider = {"vadapter": 1.8, "perceiver": 1.5, "vadapter_small": 1.0}.get(
            name, 1.2
        ) + 0.01 * seed
        final = {"vadapter": 0.5, "perceiver": 0.6}.get(name, 0.7)
        row = {
            "step": 100,
            "trainable_parameters": 700 if name.startswith("vadapter") else 1200,
            "curve": [(50, final + 0.05), (100, final)]
            if name != "vadapter"
            else [(50, 0.55), (100, 0.5)],
            "final_val_loss": final,
            "metrics": {"caption": {"cider_d": cider}, "vqa": {"vqa_accuracy": 0.5}},
            "blank_metrics": BLANK_METRICS,
        }
        Path(value("--out")).mkdir(parents=True, exist_ok=True)
        (Path(value("--out")) / "results.json").write_text(json.dumps({"runs": [row]}))
    elif argv[:2] == ["evaluate.py", "blank"]:
        results = json.loads(Path(argv[2]).read_text())
        results["runs"][0]["blank_metrics"] = BLANK_METRICS
        Path(argv[2]).write_text(json.dumps(results))
    elif argv[:3] == ["-m", "paper.tables", "reliance"]:
        Path(value("--out")).write_text(json.dumps({"oracle_fraction": 0.9}))
    elif argv[:2] == ["evaluate.py", "diagnostics"]:
        results = json.loads(Path(argv[2]).read_text())
        Path(argv[2]).write_text(
            json.dumps({**results, "diagnostics": {"stage1": {"cider_d": 2.0}}})
        )
    else:
        raise AssertionError(f"paper.py ran an unexpected command: {argv}")
    fake_outputs.calls.append(argv)


def test_the_whole_orchestration_writes_every_table_and_a_second_run_reruns_nothing(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(runs, "run_command", fake_outputs)
    fake_outputs.calls = []
    argv = [
        "run",
        "--data",
        str(tmp_path / "data"),
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "docs"),
        "--seeds",
        "1,2,3",
        "--jobs",
        "2",
        "--tables",
        "all",
    ]
    paper.main(argv)
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert set(results["tables"]) == set(paper.TABLES) and results["diagnostics"] == {
        "stage1": {"cider_d": 2.0}
    }
    table2 = {row["name"]: row["seeds"] for row in results["tables"]["Table 2"]}
    vadapter, perceiver = table2["PaLM2-VAdapter"], table2["perceiver resampler (6 layers)"]
    assert [seed["cider_d"] for seed in vadapter] == pytest.approx([1.81, 1.82, 1.83])
    # 0.55 <= the perceiver's halfway loss
    assert [seed["steps_to_halfway"] for seed in vadapter] == [
        50,
        50,
        50,
    ]
    assert [seed["steps_to_halfway"] for seed in perceiver] == [100, 100, 100]
    # every run's curve is kept, and its area: (0.55 + 0.5) / 2 over steps 50..100
    assert vadapter[0]["curve"] == [[50, 0.55], [100, 0.5]]
    assert [seed["val_loss_area"] for seed in vadapter] == pytest.approx([0.525] * 3)
    gains = {row["name"]: row["seeds"] for row in results["tables"]["stronger"]}["VAdapter gain"]
    assert [seed["cider_d"] for seed in gains] == pytest.approx([0.8, 0.8, 0.8])
    verdicts = {claim["claim"]: claim["verdict"] for claim in results["claims"]}
    assert verdicts[paper.CLAIMS[0].text] == "holds"  # 700 < 1200 parameters
    assert verdicts[paper.CLAIMS[1].text] == "holds"  # 50 < 100 steps
    assert verdicts["higher scores: VQA accuracy"] == "level"  # 0.5 against 0.5 in every seed
    assert verdicts["higher scores: video CIDEr-D"] == "not measured (no such task)"
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert "1.820 ± 0.010" in markdown and "## Table 13" in markdown
    assert [seed["blank_cider_d"] for seed in vadapter] == [0.25] * 3
    blank_line = "| PaLM2-VAdapter, blank image |  |  |  |  |  | 0.250 | 0.375 | - | - |  |"
    assert markdown.count(blank_line) == 2 and "VAdapter gain, blank image" not in markdown
    assert (
        "still fell 2% or more over their last 20% of steps (a claim on them reads a curve "
        "mid-drop): none." in markdown.replace("\n", " ")
    )
    assert len(fake_outputs.calls) == 3 * (2 * 2 + 3 * len(paper.STAGE2_RUNS)) + 1
    (tmp_path / "runs" / "seed2" / "mlp" / "eval" / "reliance.json").unlink()  # an interrupted run
    fake_outputs.calls = []
    paper.main(argv)
    assert [call[0] if call[0] != "-m" else call[1] for call in fake_outputs.calls] == [
        "train_stage2.py",
        "evaluate.py",
        "paper.tables",
    ]
    assert (
        "--resume" in fake_outputs.calls[0]
        and str(tmp_path / "runs" / "seed2" / "mlp") in fake_outputs.calls[0]
    )
    # evaluated before the blank-image scores existed: only those are added, then nothing
    evaluation = tmp_path / "runs" / "seed3" / "perceiver" / "eval" / "results.json"
    results = json.loads(evaluation.read_text())
    del results["runs"][0]["blank_metrics"]
    evaluation.write_text(json.dumps(results))
    fake_outputs.calls = []
    paper.main(argv)
    assert fake_outputs.calls == [
        ["evaluate.py", "blank", str(evaluation), "--data", str(tmp_path / "data")]
    ]
    fake_outputs.calls = []
    paper.main(argv)
    assert fake_outputs.calls == []


def test_the_default_runs_and_judges_table_2_alone(tmp_path, monkeypatch):
    """make paper's default: stage 1 and the two adapters per seed, Table 2's claims only."""
    monkeypatch.setattr(runs, "run_command", fake_outputs)
    fake_outputs.calls = []
    folders = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "docs")]
    paper.main(["run", "--data", str(tmp_path / "data"), *folders, "--seeds", "1,2"])
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert list(results["tables"]) == ["Table 2"] and results["settings"]["tables"] == ["Table 2"]
    assert {claim["table"] for claim in results["claims"]} == {"Table 2"}
    trained = sorted(
        Path(call[call.index("--out-dir") + 1]).name
        for call in fake_outputs.calls
        if "--out-dir" in call
    )
    assert trained == ["perceiver"] * 2 + ["stage1_toy"] * 2 + ["vadapter"] * 2
    assert paper.parse_tables("2,stronger") == ["Table 2", "stronger"]
    assert paper.parse_tables("all") == list(paper.TABLES)
    with pytest.raises(argparse.ArgumentTypeError, match="'5'"):
        paper.parse_tables("2,5")

"""The stage scripts resumed and spread over processes keep the curve: stage-2 checkpoints that
reference their frozen models resume and evaluate as self-contained ones do, a killed run resumes
onto the uninterrupted curve, and two torchrun processes train as one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import train_stage2
from conftest import FAST, REPO, losses
from support import checkpoints
from support.checkpoints import load_checkpoint
from support.models import load_vlm


def test_checkpoints_reference_the_frozen_models_and_give_the_numbers_of_a_self_contained_one(
    chain, tmp_path, monkeypatch
):
    """Stage-2 checkpoints reference the frozen ViT and large LM (path, size, sha256), smaller by
    their size; resuming and evaluating one give the numbers a self-contained one gives, and
    `evaluate.py bundle` writes that self-contained file. A moved or changed frozen file is an error
    naming both files. Stage 2 reads its stage-1 checkpoint once."""
    data_dir, runs, common, frozen, resampler = chain
    reads, read = [], checkpoints.read_checkpoint_file
    monkeypatch.setattr(
        checkpoints, "read_checkpoint_file", lambda path: reads.append(Path(path)) or read(path)
    )
    stage2 = [
        *common,
        *frozen,
        *resampler,
        "--adapter",
        "vadapter",
        "--stage1",
        str(runs["stage1"]),
        "--tasks",
        "caption",
    ]
    referencing, contained, bundled = (
        tmp_path / "referencing",
        tmp_path / "contained",
        tmp_path / "bundled.pt",
    )
    train_stage2.main([*stage2, "--steps", "2", "--out-dir", str(referencing)])
    assert reads.count(runs["stage1"] / "checkpoint.pt") == 1
    train_stage2.main(
        [*stage2, "--steps", "2", "--self-contained", "true", "--out-dir", str(contained)]
    )
    evaluate.main(["bundle", str(referencing), "--out", str(bundled)])
    whole, shared = load_checkpoint(str(contained)), load_checkpoint(str(bundled))
    assert (
        whole["frozen"] == shared["frozen"] == {}
        and whole["model"].keys() == shared["model"].keys()
    )
    assert all(torch.equal(shared["model"][key], tensor) for key, tensor in whole["model"].items())
    frozen_bytes = sum(
        t.numel() * t.element_size()
        for k, t in whole["model"].items()
        if k.startswith(("vision.", "lm."))
    )
    sizes = [
        os.path.getsize(path)
        for path in (referencing / "checkpoint.pt", contained / "checkpoint.pt", bundled)
    ]
    print(
        f"stage-2 checkpoint bytes: referencing {sizes[0]:,}, self-contained {sizes[1]:,}, "
        f"bundled {sizes[2]:,}; "
        f"frozen tensors {frozen_bytes:,}"
    )
    assert sizes[1] == pytest.approx(sizes[0] + frozen_bytes, rel=0.02) and sizes[
        2
    ] == pytest.approx(sizes[1], rel=0.01)
    scores = [
        evaluate.evaluate_checkpoint(path, data_dir, "val", ["caption"], limit=4, max_new_tokens=4)
        for path in (referencing, contained, bundled)
    ]
    assert scores[0]["metrics"] == scores[1]["metrics"] == scores[2]["metrics"]
    assert scores[0]["samples"] == scores[1]["samples"] == scores[2]["samples"]
    # a frozen file moved: the resumed run gives its new path
    moved_lm = tmp_path / "moved" / "large_lm.pt"
    moved_lm.parent.mkdir()
    os.replace(runs["large_lm"] / "checkpoint.pt", moved_lm)
    try:
        with pytest.raises(
            FileNotFoundError,
            match=f"{referencing}.*references the frozen model "
            f"{runs['large_lm']}/checkpoint.pt .*not there any more",
        ):
            load_vlm(referencing)
        train_stage2.main(
            [
                *stage2,
                "--lm",
                str(moved_lm),
                "--steps",
                "4",
                "--resume",
                "true",
                "--out-dir",
                str(referencing),
            ]
        )
    finally:
        os.replace(moved_lm, runs["large_lm"] / "checkpoint.pt")
    train_stage2.main([*stage2, "--steps", "4", "--resume", "true", "--out-dir", str(contained)])
    assert losses(referencing) == losses(contained) and len(losses(contained)) == 4
    assert load_checkpoint(str(referencing))["frozen"]["lm"]["source"] == str(moved_lm), (
        "where it was at the last save"
    )
    other_lm = load_checkpoint(str(runs["large_lm"]))
    other_lm["model"][next(iter(other_lm["model"]))] += 1  # same shapes, other weights
    torch.save({**other_lm, "spec": other_lm["spec"].to_dict()}, tmp_path / "other_lm.pt")
    with pytest.raises(
        ValueError, match=f"{contained}.*bytes.*this run gives {tmp_path}/other_lm.pt"
    ):
        train_stage2.main(
            [
                *stage2,
                "--lm",
                str(tmp_path / "other_lm.pt"),
                "--steps",
                "5",
                "--resume",
                "true",
                "--out-dir",
                str(contained),
            ]
        )
    changed = load_checkpoint(str(referencing))
    changed["frozen"]["lm"] = {**changed["frozen"]["lm"], "source": str(tmp_path / "other_lm.pt")}
    torch.save({**changed, "spec": changed["spec"].to_dict()}, tmp_path / "changed.pt")
    with pytest.raises(
        ValueError,
        match=f"changed.pt was trained with the frozen model {tmp_path}/other_lm.pt .* but that "
        "file now is .*: it changed since",
    ):
        load_vlm(tmp_path / "changed.pt")


def stage1_command(chain, out_dir, steps, extra=()):
    data_dir, runs, common, frozen, resampler = chain
    args = [a for a in common if a not in FAST] + [
        "--steps",
        str(steps),
        "--batch-size",
        "8",
        "--eval-every",
        "1000",
        "--log-every",
        "1",
        *resampler,
        *extra,
    ]
    return [
        sys.executable,
        "train_stage1.py",
        *args,
        "--vit",
        str(runs["vit"]),
        "--tiny-lm",
        str(runs["tiny_lm"]),
        "--out-dir",
        str(out_dir),
    ]


def test_killed_and_resumed_run_follows_the_uninterrupted_curve(chain, tmp_path):
    steps = 40
    straight = tmp_path / "straight"
    subprocess.run(
        stage1_command(chain, straight, steps), cwd=REPO, check=True, capture_output=True
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        stage1_command(chain, killed, steps, ["--save-every", "5"]),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (killed / "checkpoint.pt").exists() and len(losses(killed)) >= 12:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run was killed part way"
    saved_step = load_checkpoint(str(killed))["step"]
    assert 5 <= saved_step < steps
    subprocess.run(
        stage1_command(chain, killed, steps, ["--save-every", "5", "--resume", "true"]),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    expected, resumed = losses(straight), losses(killed)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in expected:
        assert abs(resumed[step] - expected[step]) < 1e-5, (step, resumed[step], expected[step])


def test_two_process_torchrun_matches_one_process(chain, tmp_path):
    """Same global batch of 8: one process, or two gloo ranks of 4 (with grad accumulation too)."""
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run(stage1_command(chain, single, 6), cwd=REPO, check=True, capture_output=True)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    command = stage1_command(chain, double, 6, ["--grad-accum", "2"])
    result = subprocess.run(torchrun + command[1:], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    final_one = load_checkpoint(str(single))["model"]
    final_two = load_checkpoint(str(double))["model"]
    assert max((final_one[k] - final_two[k]).abs().max().item() for k in final_one) < 1e-4

"""run_folder.py: metrics lines torn by a full disk are dropped, temp files of killed writes go
and those of live ones stay, old checkpoints rotate. The whole of it inside a run:
test_trainer_runs.py."""

import json
import os
import subprocess
import sys

import pytest

from support.run_folder import (
    earlier_run_files,
    keep_metrics_up_to,
    kept_checkpoints,
    prepare_run_folder,
    save_keeping,
)


def test_torn_metrics_lines_are_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in (1, 2, 3, 4)]
    # a write torn by a full disk, then more lines appended after space was freed, then a torn last
    # line
    path.write_text(
        lines[0]
        + "\n"
        + '{"step": 2, "lo'
        + lines[1]
        + "\n"
        + lines[2]
        + "\n"
        + lines[3]
        + "\n"
        + '{"st'
    )
    keep_metrics_up_to(str(path), 3)
    assert path.read_text() == lines[0] + "\n" + lines[2] + "\n"
    assert "dropped 2 torn line(s)" in capsys.readouterr().out


def test_only_the_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = (
        tmp_path / f"checkpoint.pt.tmp-{dead.pid}",
        tmp_path / f"checkpoint.pt.tmp-{os.getpid()}",
    )
    for path in (stale, live):
        path.write_bytes(b"part of a checkpoint")
    prepare_run_folder(str(tmp_path), resume=True, overwrite=False, is_main=True)
    assert not stale.exists() and live.exists()


def test_an_earlier_run_is_named_and_only_its_files_are_overwritten(tmp_path):
    for name in (
        "checkpoint.pt",
        "checkpoint-5.pt",
        "checkpoint.pt.broken",
        "metrics.jsonl",
        "results.json",
        "notes.txt",
    ):
        (tmp_path / name).write_text("x")
    assert [os.path.basename(f) for f in earlier_run_files(str(tmp_path))] == [
        "checkpoint-5.pt",
        "checkpoint.pt",
        "checkpoint.pt.broken",
        "metrics.jsonl",
    ]
    with pytest.raises(FileExistsError, match="--resume true.*--overwrite true"):
        prepare_run_folder(str(tmp_path), resume=False, overwrite=False, is_main=True)
    prepare_run_folder(str(tmp_path), resume=False, overwrite=True, is_main=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "results.json"]


def test_checkpoints_rotate_keeping_the_newest_ones(tmp_path):
    newest_step = None
    for step in (2, 4, 6, 8):
        newest_step = save_keeping(str(tmp_path), {"step": step}, keep=3, newest_step=newest_step)
    assert [step for step, _ in kept_checkpoints(str(tmp_path))] == [6, 4]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4.pt", "checkpoint-6.pt", "checkpoint.pt"]

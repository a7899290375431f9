"""A training run's folder: what the trainer writes there and how a run starts in it.

checkpoint.pt is the newest checkpoint; the keep_checkpoints - 1 before it stay as
checkpoint-<step>.pt, so a run whose newest file is broken (a truncated copy, a damaged disk)
resumes from the one before, naming the broken file. metrics.jsonl holds one JSON line per logged
step; a torn last line (a full disk, a power cut) is dropped on resume. A new run never replaces an
earlier one silently: it needs --resume true or --overwrite true.
"""

import json
import os
import re

import torch.nn as nn

from support.checkpoints import CHECKPOINT_NAME, CheckpointError, resume_training, write_synced
from support.model_spec import ModelSpec

METRICS_NAME = "metrics.jsonl"
KEPT_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pt")
# also broken and half-written
RUN_FILE = re.compile(r"metrics\.jsonl|checkpoint(-\d+)?\.pt(\.broken|\.tmp-\d+)?")
TEMPORARY = re.compile(
    r".*\.tmp-(\d+)"
)  # support.writers.write_atomically's temp files: <name>.tmp-<pid>


def earlier_run_files(out_dir: str) -> list[str]:
    """What an earlier run left in out_dir: its checkpoints (broken and half-written ones too) and
    metrics."""
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, name) for name in names if RUN_FILE.fullmatch(name)]


def prepare_run_folder(out_dir: str, resume: bool, overwrite: bool, is_main: bool):
    """Refuse to start over an earlier run unless resuming it or told to overwrite it (then delete
    its files); on resume, remove the temp files of checkpoint writes that were killed."""
    earlier = earlier_run_files(out_dir)
    if earlier and not resume and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(os.path.basename(f) for f in earlier)}): "
            "continue it with --resume true, replace it with --overwrite true, or give another "
            "--out-dir"
        )
    if not is_main:
        return
    for path in earlier:
        temporary = TEMPORARY.fullmatch(os.path.basename(path))
        if not resume:
            os.remove(path)
        elif temporary and not process_alive(int(temporary[1])):
            os.remove(path)
            print(f"removed {path}: the temp file of a checkpoint write that was killed")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Checkpoints: the newest, and the ones kept before it
# ---------------------------------------------------------------------------------------------


def kept_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """The checkpoints kept before the newest one, newest first: [(step, path)]."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    found = [
        (int(match[1]), os.path.join(out_dir, name))
        for name in names
        if (match := KEPT_CHECKPOINT.fullmatch(name))
    ]
    return sorted(found, reverse=True)


def resume_newest_readable(
    out_dir: str,
    stage: str,
    spec: ModelSpec,
    train_config: dict,
    model: nn.Module,
    optimizer,
    scheduler,
    is_main: bool,
    frozen: dict | None = None,
) -> tuple[int, int | None]:
    """Resume from the run's newest checkpoint that can be read -> (its step, the step checkpoint.pt
    holds now or None). A file that cannot be read is named, renamed to <name>.broken and
    skipped."""
    newest = os.path.join(out_dir, CHECKPOINT_NAME)
    candidates = ([newest] if os.path.exists(newest) else []) + [
        path for _, path in kept_checkpoints(out_dir)
    ]
    for path in candidates:
        try:
            step = resume_training(
                path, stage, spec, train_config, model, optimizer, scheduler, frozen
            )
        except (
            CheckpointError,
            FileNotFoundError,
        ) as error:  # FileNotFoundError: rank 0 renamed it meanwhile
            if is_main:
                print(f"{error}\n  -> renamed to {path}.broken; trying the checkpoint before it")
                os.replace(path, f"{path}.broken")
            continue
        if is_main:
            print(f"resumed from {path} at step {step}")
        return step, (step if path == newest else None)
    if candidates:
        raise CheckpointError(
            f"no checkpoint in {out_dir} can be read ({', '.join(candidates)}); "
            "start again with --overwrite true"
        )
    return 0, None


def save_keeping(out_dir: str, payload: dict, keep: int, newest_step: int | None) -> int:
    """Save `payload` as out_dir/checkpoint.pt (through a synced temp file and a rename); the
    checkpoint.pt it replaces, of step newest_step, stays as checkpoint-<step>.pt, and only the keep
    - 1 newest of those are kept. -> the step of the new checkpoint.pt."""
    newest = os.path.join(out_dir, CHECKPOINT_NAME)
    temporary = f"{newest}.tmp-{os.getpid()}"
    try:
        write_synced(temporary, payload)
        if keep > 1 and newest_step is not None and os.path.exists(newest):
            os.replace(newest, os.path.join(out_dir, f"checkpoint-{newest_step}.pt"))
        os.replace(temporary, newest)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    for _, path in kept_checkpoints(out_dir)[keep - 1 :]:
        os.remove(path)
    return payload["step"]


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------


def parse_metrics_line(line: str) -> dict | None:
    """One line of metrics.jsonl, or None for a torn one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def steps_to_reach(curve: list[tuple[int, float]], target: float):
    """The first step of a (step, validation loss) curve whose loss is at or below target (None if
    never)."""
    return next((step for step, loss in curve if loss <= target), None)


def append_metrics(path: str, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def keep_metrics_up_to(path: str, step: int):
    """On resume, drop the lines logged after the checkpoint (the killed run got further than it
    saved) and torn lines."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        records = [(line, parse_metrics_line(line)) for line in f if line.strip()]
    if torn := sum(record is None for _, record in records):
        print(f"{path}: dropped {torn} torn line(s)")
    kept = [
        line.rstrip("\n") + "\n"
        for line, record in records
        if record is not None and record.get("step", 0) <= step
    ]
    with open(path, "w") as f:
        f.writelines(kept)

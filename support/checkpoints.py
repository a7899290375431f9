"""Checkpoints: what a run writes, how it is read back, and what a resumed run continues from.

Every checkpoint is a plain dict of tensors and values (`torch.save` to a temp file, then a rename;
read back with `weights_only=True`, never unpickling arbitrary objects). It holds the stage that
wrote it and the `ModelSpec` (support/model_spec.py), so `build_vlm` rebuilds the model from the
file alone, and, for a resumed run, the optimizer, scheduler, step and RNG state. The frozen models
(the ViT; stage 2's large LM) are not copied into every checkpoint: "frozen" references their files
by path, size and hash, checked when they are read back (`--self-contained true` or `evaluate.py
bundle` copies them in instead, for sharing). Loading the models from these files is
support/models.py. Models never import this module: the stage scripts, the trainer and evaluation
do.
"""

import hashlib
import json
import os
import pickle
import random
from functools import lru_cache
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from support.model_spec import ModelSpec
from support.processes import is_main_process
from support.writers import write_atomically

# a run's newest checkpoint (support/run_folder.py keeps the ones before it)
CHECKPOINT_NAME = "checkpoint.pt"
# `--vit hf:FOLDER`: a local Hugging Face folder instead of our checkpoint
HUGGING_FACE_PREFIX = "hf:"


# ---------------------------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt); the message names the file."""


def write_synced(path: str, payload: dict):
    """torch.save, then fsync: the bytes are on disk before the rename that publishes them."""
    torch.save(payload, path)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(path: str, payload: dict):
    """Write through a temp file in the same folder, then rename: a crash or a power cut never
    leaves a torn file."""
    write_atomically(path, lambda temporary: write_synced(temporary, payload))


def read_checkpoint_file(path: str) -> dict:
    """torch.load, weights only; a file it cannot read is a CheckpointError that names it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
    ) as error:  # what a torn or damaged zip raises
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"{path} cannot be read, truncated or corrupt ({type(error).__name__}: {first_line})"
        ) from error


def load_checkpoint(
    path: str,
    expected_stage: str | tuple[str, ...] | None = None,
    dtype=torch.float32,
    device="cpu",
) -> dict:
    """Load a checkpoint (a file, or the run folder holding one) and check which stage wrote it.
    checkpoint["spec"] comes back as a ModelSpec. An exported safetensors file (a frozen model)
    comes back in `dtype` on `device`; a torch.save checkpoint as saved, on the CPU."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = (
        read_weights(path, dtype, device)
        if str(path).endswith(".safetensors")
        else read_checkpoint_file(path)
    )
    if not isinstance(checkpoint, dict) or "stage" not in checkpoint or "model" not in checkpoint:
        raise ValueError(
            f"{path} is not a checkpoint of this project (no 'stage' / 'model' entries)"
        )
    expected = (expected_stage,) if isinstance(expected_stage, str) else expected_stage
    if expected is not None and checkpoint["stage"] not in expected:
        raise ValueError(
            f"{path} was written by stage {checkpoint['stage']!r}; expected "
            f"{' or '.join(map(repr, expected))}"
        )
    if "spec" in checkpoint:
        checkpoint["spec"] = ModelSpec.from_dict(checkpoint["spec"])
    return checkpoint


def export_weights(run: str, path: str, dtype=torch.bfloat16) -> dict:
    """The weights of a stage-0 run as one small safetensors file (the frozen part only: the ViT of
    `stage0/pretrain.py vit`, or the LM of `stage0/pretrain.py lm`), with its stage and spec as
    metadata; what the repository ships, so that `make demo` starts from stand-ins it does not have
    to pretrain."""
    checkpoint = load_checkpoint(run, expected_stage=("pretrain-vit", "pretrain-lm"))
    model = checkpoint["model"]
    # the heads (scene labels or captioning) are thrown away
    if checkpoint["stage"] == "pretrain-vit":
        model = {
            f"vision.{name}": tensor for name, tensor in submodule_state(model, "vision.").items()
        }
    metadata = {
        "stage": checkpoint["stage"],
        "spec": json.dumps(checkpoint["spec"].to_dict()),
        "step": str(checkpoint["step"]),
    }
    tensors = {name: tensor.to(dtype).contiguous() for name, tensor in model.items()}
    write_atomically(
        path,
        lambda temporary: safetensors.torch.save_file(tensors, str(temporary), metadata=metadata),
    )
    return {"stage": checkpoint["stage"], "tensors": len(tensors), "bytes": os.path.getsize(path)}


def read_weights(path: str, dtype=torch.float32, device="cpu") -> dict:
    """An exported safetensors file -> a checkpoint dict that load_vision and load_lm read like any
    other, its weights in `dtype`, read straight onto `device` tensor by tensor: a rank loads its
    frozen models onto its own GPU in the dtype they run in, never a full fp32 copy on the host."""
    with safetensors.safe_open(path, framework="pt", device=str(device)) as weights:
        metadata = weights.metadata() or {}
        if "stage" not in metadata or "spec" not in metadata:
            raise ValueError(
                f"{path} has no 'stage' / 'spec' metadata; expected a file written by `python -m "
                "stage0.pretrain export`"
            )
        model = {name: weights.get_tensor(name).to(dtype) for name in weights.keys()}
    return {
        "stage": metadata["stage"],
        "spec": json.loads(metadata["spec"]),
        "model": model,
        "step": int(metadata.get("step", 0)),
    }


def submodule_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix`, with the prefix dropped ("lm." -> the LM's own
    state)."""
    return {
        name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)
    }


def check_same_spec(saved: dict, current: dict, path: str):
    """A resumed run must rebuild the same model: name every field that differs."""
    differences = [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(f"config mismatch with {path}:\n  " + "\n  ".join(differences))


# ---------------------------------------------------------------------------------------------
# Frozen models referenced, not copied: a file or hf: folder, its size and a content hash
# ---------------------------------------------------------------------------------------------


MEBIBYTE = 2**20


@lru_cache(maxsize=None)
def file_digest(path: str, size: int, modified_ns: int, ends_only: bool = False) -> str:
    """sha256 of a file's bytes, or of its first and last MiB only (ends_only); (size, modified_ns)
    are in the cache key, so each file is read once per process unless it is rewritten."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        if ends_only:
            digest.update(file.read(MEBIBYTE))
            file.seek(max(size - MEBIBYTE, 0))
            digest.update(file.read(MEBIBYTE))
        else:
            for chunk in iter(lambda: file.read(16 * MEBIBYTE), b""):
                digest.update(chunk)
    return digest.hexdigest()


def frozen_reference(source: str) -> dict:
    """{"source", "bytes", "sha256"} of a frozen model's --vit / --lm value: a checkpoint file (a
    run folder: its checkpoint.pt) hashed whole, or an hf:FOLDER (gigabytes) hashed by its
    *.safetensors files' names and sizes and each one's first and last MiB (where safetensors keeps
    its header of tensor names, shapes and offsets): cheap, and blind only to a same-size edit in
    the middle."""
    if source.startswith(HUGGING_FACE_PREFIX):
        folder = Path(source[len(HUGGING_FACE_PREFIX) :]).resolve()
        if not (stats := {file: file.stat() for file in sorted(folder.glob("*.safetensors"))}):
            raise FileNotFoundError(f"{source}: no *.safetensors files there")
        lines = [
            f"{file.name} {stat.st_size} "
            f"{file_digest(str(file), stat.st_size, stat.st_mtime_ns, True)}"
            for file, stat in stats.items()
        ]
        return {
            "source": HUGGING_FACE_PREFIX + str(folder),
            "bytes": sum(stat.st_size for stat in stats.values()),
            "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
        }
    path = (Path(source, CHECKPOINT_NAME) if os.path.isdir(source) else Path(source)).resolve()
    stat = path.stat()
    return {
        "source": str(path),
        "bytes": stat.st_size,
        "sha256": file_digest(str(path), stat.st_size, stat.st_mtime_ns),
    }


def describe(reference: dict) -> str:
    return (
        f"{reference['source']} ({reference['bytes']:,} bytes, sha256 "
        f"{reference['sha256'][:16]}...)"
    )


def check_reference(reference: dict, checkpoint_path) -> None:
    """A frozen model a checkpoint references must be where it was, with the same bytes."""
    try:
        found = frozen_reference(reference["source"])
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{checkpoint_path} references the frozen model {describe(reference)}, which is not "
            "there any more: put it "
            "back at that path (a symlink will do); a run resumes with the file's new path as its "
            "--vit / --lm"
        ) from None
    if (found["bytes"], found["sha256"]) != (reference["bytes"], reference["sha256"]):
        raise ValueError(
            f"{checkpoint_path} was trained with the frozen model {describe(reference)}, but that "
            "file "
            f"now is {describe(found)}: it changed since; put back the file the run was trained "
            "with"
        )


# ---------------------------------------------------------------------------------------------
# Resume: everything a killed run needs to continue the same curve (the data position follows
# from the step, see trainer.StepBatches)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The RNGs a resumed run continues: torch's CPU generator, Python's, and on CUDA this
    process's own GPU's generator (every rank seeds and draws alike, so rank 0's stands for all)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    """Restore rng_state on any number of visible GPUs: the saved CUDA state goes to this process's
    own GPU. Older checkpoints hold a list, every GPU visible to the saving process, its own (GPU 0,
    rank 0's) first: that first one is restored. Without a GPU the CUDA state is dropped, said in
    one line."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[0] if cuda else None
    if cuda is None:
        return
    if torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    elif is_main_process():
        print("the checkpoint's CUDA RNG state is not restored: no GPU is visible")


def training_state(
    stage: str,
    spec: ModelSpec,
    model: nn.Module,
    optimizer,
    scheduler,
    step: int,
    train_config: dict,
    frozen: dict | None = None,
) -> dict:
    """The checkpoint of a run after `step` optimizer steps; `model` unwrapped and uncompiled, so
    its keys carry no `module.` / `_orig_mod.` prefix. frozen: {"vision" / "lm":
    frozen_reference(...)},
    the model's frozen parts, kept out of the file unless train_config["self_contained"]."""
    referenced = {} if train_config.get("self_contained") else dict(frozen or {})
    state = {
        key: tensor
        for key, tensor in model.state_dict().items()
        if key.split(".", 1)[0] not in referenced
    }
    return {
        "stage": stage,
        "spec": spec.to_dict(),
        "model": state,
        "frozen": referenced,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng": rng_state(),
        "train_config": train_config,
    }


def resume_training(
    path: str,
    stage: str,
    spec: ModelSpec,
    train_config: dict,
    model: nn.Module,
    optimizer,
    scheduler,
    frozen: dict | None = None,
) -> int:
    """Load a run's checkpoint into the model, optimizer, scheduler and RNGs -> the step to continue
    from. The model, the global batch order and the frozen models (`frozen`, as training_state) must
    be the ones the checkpoint was trained with; a frozen model may have moved (the run's --vit /
    --lm say where)."""
    checkpoint = load_checkpoint(path, expected_stage=stage)
    check_same_spec(checkpoint["spec"].to_dict(), spec.to_dict(), path)
    check_same_spec(
        {key: checkpoint["train_config"][key] for key in ("batch_size", "seed")},
        {key: train_config[key] for key in ("batch_size", "seed")},
        path,
    )
    referenced = checkpoint.get("frozen", {})
    for name, reference in referenced.items():
        given = (frozen or {}).get(name, {})
        if (given.get("bytes"), given.get("sha256")) != (reference["bytes"], reference["sha256"]):
            raise ValueError(
                f"{path} was trained with the frozen {name} {describe(reference)}; this run gives "
                f"{describe(given) if given else 'none'}: give the run's own file again"
            )
    # The frozen parts it references are already in `model`, loaded from the files the hashes
    # matched.
    in_model = {
        key: tensor
        for key, tensor in model.state_dict().items()
        if key.split(".", 1)[0] in referenced
    }
    model.load_state_dict({**in_model, **checkpoint["model"]})
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    return checkpoint["step"]

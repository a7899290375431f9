"""Checkpoints: what a run writes, and rebuilding the models of Figure 2 from it.

Every checkpoint is a plain dict of tensors and values (`torch.save` to a temp file, then a rename;
read back with `weights_only=True`, never unpickling arbitrary objects). It holds the stage that
wrote it and the `ModelSpec`, so `build_vlm` rebuilds the model from the file alone, and, for a
resumed run, the optimizer, scheduler, step and RNG state. The frozen models (the ViT; stage 2's
large LM) are not copied into every checkpoint: "frozen" references their files by path, size and
hash, checked when they are read back (`--self-contained true` or `evaluate.py bundle` copies them
in instead, for sharing). Models never import this module: the stage scripts, the trainer and
evaluation do.
"""

import hashlib
import json
import os
import pickle
import random
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

import data
from palm_decoder import PaLMConfig, PaLMDecoder
from resampler import PerceiverResampler, ResamplerConfig
from vit import ViT, ViTConfig
from vlm import MLPAdapter, PerceiverAdapter, VAdapter, VisionLanguageModel

CHECKPOINT_NAME = (
    "checkpoint.pt"  # a run's newest checkpoint (support/run_folder.py keeps the ones before it)
)
HUGGING_FACE_PREFIX = (
    "hf:"  # `--vit hf:FOLDER`: a local Hugging Face folder instead of our checkpoint
)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; every checkpoint holds it as plain values (to_dict)."""

    lm: (
        PaLMConfig | None
    )  # the decoder: the tiny LM in stage 0/1, the frozen large LM in stage 2 (None: a ViT alone)
    vision: ViTConfig | None = None  # None for a text-only LM (stage0/pretrain.py lm)
    resampler: ResamplerConfig | None = None  # None for the MLP adapter
    # "none" (text-only LM) | "scene-labels" (stage-0 ViT) | "resampler" (stage 1) | "perceiver" |
    # "vadapter" | "mlp"
    adapter: str = "none"
    tiny_lm: PaLMConfig | None = None  # vadapter only
    adapter_init: str | None = None  # vadapter only: "stage1" | "lm" | "random"
    train_lm: bool = False
    train_vision: bool = False

    @property
    def num_visual_tokens(self) -> int:
        """The LM positions the visual tokens take: the resampler's latents, or one per patch
        (MLP)."""
        return self.vision.grid_size**2 if self.adapter == "mlp" else self.resampler.num_latents

    def to_dict(self) -> dict:
        """Plain values (nested dicts, None for absent parts), for torch.save / weights_only
        loading."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        configs = {
            "lm": PaLMConfig,
            "vision": ViTConfig,
            "resampler": ResamplerConfig,
            "tiny_lm": PaLMConfig,
        }
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(values) - names):
            raise ValueError(
                f"model spec has unknown field(s) {unknown}; expected some of {sorted(names)}"
            )
        if values.get("lm") is None and values.get("adapter") != "scene-labels":
            raise ValueError("model spec has no 'lm' (the decoder's PaLMConfig fields)")
        parts = {}
        for name, value in values.items():
            config = configs.get(name)
            parts[name] = (
                value
                if config is None or value is None
                else config_from_dict(config, value, f"spec[{name!r}]")
            )
        return cls(**parts)


def config_from_dict(config_class, values: dict, where: str):
    """A config dataclass from plain values; an unknown field is an error that names it."""
    names = {f.name for f in fields(config_class)}
    if unknown := sorted(set(values) - names):
        raise ValueError(f"{where} has unknown field(s) {unknown} for {config_class.__name__}")
    return config_class(**values)


def build_vlm(spec: ModelSpec) -> VisionLanguageModel:
    """The model a spec describes, freshly initialised (load a checkpoint's "model" into it)."""
    if spec.adapter not in VLM_ADAPTERS:
        raise ValueError(f"spec.adapter is {spec.adapter!r}; expected one of {list(VLM_ADAPTERS)}")
    if spec.adapter != "mlp" and spec.resampler is None:
        raise ValueError(
            f"spec.adapter {spec.adapter!r} needs spec.resampler (ResamplerConfig fields); it is "
            "None"
        )
    lm = PaLMDecoder(spec.lm)
    if spec.adapter == "mlp":
        adapter = MLPAdapter(spec.vision.dim, lm.config.dim)
    elif spec.adapter == "resampler":
        if spec.resampler.dim != lm.config.dim:
            raise ValueError(
                f"resampler dim {spec.resampler.dim} must equal the LM's dim {lm.config.dim}"
            )
        adapter = PerceiverResampler(spec.resampler)
    elif spec.adapter == "perceiver":
        adapter = PerceiverAdapter(PerceiverResampler(spec.resampler), lm.config.dim)
    else:
        adapter = VAdapter(
            PerceiverResampler(spec.resampler), PaLMDecoder(spec.tiny_lm), lm.config.dim
        )
    return VisionLanguageModel(
        ViT(spec.vision), adapter, lm, train_lm=spec.train_lm, train_vision=spec.train_vision
    )


VLM_ADAPTERS = (
    "resampler",
    "perceiver",
    "vadapter",
    "mlp",
)  # what build_vlm builds (stage 0 and 1: "resampler")


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
    leaves
    a torn file."""
    data.write_atomically(path, lambda temporary: write_synced(temporary, payload))


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


def load_checkpoint(path: str, expected_stage: str | tuple[str, ...] | None = None) -> dict:
    """Load a checkpoint (a file, or the run folder holding one) and check which stage wrote it.
    checkpoint["spec"] comes back as a ModelSpec."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = (
        read_weights(path) if str(path).endswith(".safetensors") else read_checkpoint_file(path)
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
    metadata; what the
    repository ships, so that `make demo` starts from stand-ins it does not have to pretrain."""
    checkpoint = load_checkpoint(run, expected_stage=("pretrain-vit", "pretrain-lm"))
    model = checkpoint["model"]
    if (
        checkpoint["stage"] == "pretrain-vit"
    ):  # the heads (scene labels or captioning) are thrown away
        model = {
            f"vision.{name}": tensor for name, tensor in submodule_state(model, "vision.").items()
        }
    metadata = {
        "stage": checkpoint["stage"],
        "spec": json.dumps(checkpoint["spec"].to_dict()),
        "step": str(checkpoint["step"]),
    }
    tensors = {name: tensor.to(dtype).contiguous() for name, tensor in model.items()}
    data.write_atomically(
        path,
        lambda temporary: safetensors.torch.save_file(tensors, str(temporary), metadata=metadata),
    )
    return {"stage": checkpoint["stage"], "tensors": len(tensors), "bytes": os.path.getsize(path)}


def read_weights(path: str) -> dict:
    """An exported safetensors file -> a checkpoint dict (weights back in fp32) that load_vision and
    load_lm read like any other."""
    with safetensors.safe_open(path, framework="pt") as weights:
        metadata = weights.metadata() or {}
        if "stage" not in metadata or "spec" not in metadata:
            raise ValueError(
                f"{path} has no 'stage' / 'spec' metadata; expected a file written by `python -m "
                "stage0.pretrain export`"
            )
        model = {name: weights.get_tensor(name).float() for name in weights.keys()}
    return {
        "stage": metadata["stage"],
        "spec": json.loads(metadata["spec"]),
        "model": model,
        "step": int(metadata.get("step", 0)),
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
    its header of
    tensor names, shapes and offsets): cheap, and blind only to a same-size edit in the middle."""
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


def full_state(checkpoint: dict, path) -> dict:
    """A checkpoint's model state with the frozen models it references read back in (hashes
    checked)."""
    state = dict(checkpoint["model"])
    for name, reference in checkpoint.get("frozen", {}).items():
        check_reference(reference, path)
        frozen_model = {"vision": load_vision, "lm": load_lm}[name](reference["source"])
        state.update({f"{name}.{key}": tensor for key, tensor in frozen_model.state_dict().items()})
    return state


def bundle_checkpoint(path, out) -> dict:
    """A self-contained copy of a stage-1/2 checkpoint (the frozen models it references copied in),
    for
    sharing -> {"bytes" of the copy}."""
    checkpoint = load_checkpoint(str(path), expected_stage=("stage1", "stage2"))
    bundled = {
        **checkpoint,
        "model": full_state(checkpoint, path),
        "frozen": {},
        "spec": checkpoint["spec"].to_dict(),
    }
    save_checkpoint(str(out), bundled)
    return {"bytes": os.path.getsize(out)}


# ---------------------------------------------------------------------------------------------
# Resume: everything a killed run needs to continue the same curve (the data position follows
# from the step, see trainer.StepBatches)
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    be the
    ones the checkpoint was trained with; a frozen model may have moved (the run's --vit / --lm say
    where)."""
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


# ---------------------------------------------------------------------------------------------
# The parts a later stage starts from
# ---------------------------------------------------------------------------------------------


def submodule_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix`, with the prefix dropped ("lm." -> the LM's own
    state)."""
    return {
        name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)
    }


def load_vlm(path, device="cpu") -> tuple[VisionLanguageModel, dict]:
    """A stage-1 or stage-2 checkpoint -> (the model rebuilt from its spec, in eval mode; the
    checkpoint)."""
    checkpoint = load_checkpoint(str(path), expected_stage=("stage1", "stage2"))
    model = build_vlm(checkpoint["spec"])
    model.load_state_dict(full_state(checkpoint, path))
    return model.to(device).eval(), checkpoint


FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def frozen_dtype(name: str | None, device: str = "auto", bf16: bool | None = None) -> torch.dtype:
    """--frozen-dtype: the frozen ViT's and LM's weights; None: bf16 on CUDA, fp32 on CPU. bf16
    needs
    bf16 autocast (--bf16), under which the fp32 adapter meets the bf16 frozen weights."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    name = name or ("bf16" if cuda else "fp32")
    if name == "bf16" and not (cuda if bf16 is None else bf16):
        raise ValueError(
            "--frozen-dtype bf16 needs bf16 autocast (--bf16 true, the default on CUDA only): the "
            "trained "
            "adapter stays fp32 and meets the frozen bf16 weights under autocast; or "
            "--frozen-dtype fp32"
        )
    return FROZEN_DTYPES[name]


def loaded(model_class, config, state: dict, dtype) -> nn.Module:
    """A model filled from `state` without a throwaway random initialisation: built on the meta
    device
    (no memory), the checkpoint's tensors assigned in place, then cast to `dtype`."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state, assign=True)
    return model.to(dtype)


def load_vision(path: str, dtype=torch.float32) -> ViT:
    """The ViT of a stage-0 checkpoint (stage0/pretrain.py vit) or of any stage-1/2 checkpoint, or
    with
    `hf:FOLDER` the vision tower of a local Hugging Face CLIP / SigLIP folder
    (ViT.from_pretrained)."""
    if path.startswith(HUGGING_FACE_PREFIX):
        return ViT.from_pretrained(path[len(HUGGING_FACE_PREFIX) :], dtype=dtype)
    checkpoint = load_checkpoint(path, expected_stage=("pretrain-vit", "stage1", "stage2"))
    if reference := checkpoint.get("frozen", {}).get(
        "vision"
    ):  # a stage-1/2 checkpoint that references its ViT
        check_reference(reference, path)
        return load_vision(reference["source"], dtype)
    return loaded(
        ViT, checkpoint["spec"].vision, submodule_state(checkpoint["model"], "vision."), dtype
    )


def load_lm(path: str, dtype=torch.float32) -> PaLMDecoder:
    """A language model: from stage0/pretrain.py lm, or the tiny LM a stage-1 run trained as its
    decoder, or
    with `hf:FOLDER` a local Hugging Face Gemma / Llama folder (PaLMDecoder.from_pretrained)."""
    if path.startswith(HUGGING_FACE_PREFIX):
        return PaLMDecoder.from_pretrained(path[len(HUGGING_FACE_PREFIX) :], dtype=dtype)
    return lm_of(load_checkpoint(path, expected_stage=("pretrain-lm", "stage1")), dtype)


def lm_of(checkpoint: dict, dtype=torch.float32) -> PaLMDecoder:
    """The LM of a loaded pretrain-lm or stage-1 checkpoint (stage 1 trains it: never a
    reference)."""
    state = (
        checkpoint["model"]
        if checkpoint["stage"] == "pretrain-lm"
        else submodule_state(checkpoint["model"], "lm.")
    )
    return loaded(PaLMDecoder, checkpoint["spec"].lm, state, dtype)


def load_tokenizer(path, vocab_size: int, lm_source: str | None = None) -> data.Tokenizer:
    """The sentencepiece model at `path`, checked against the vocab_size of the LM that will read
    its
    ids; lm_source (the LM's flag value): an `hf:FOLDER` LM's error names its own tokenizer."""
    tokenizer = data.Tokenizer(path)
    if tokenizer.vocab_size != vocab_size:
        fix = (
            f"--tokenizer {lm_source} (the LM's own tokenizer.model)"
            if str(lm_source).startswith(HUGGING_FACE_PREFIX)
            else "the tokenizer the run was trained with (--tokenizer)"
        )
        raise ValueError(
            f"{path} has {tokenizer.vocab_size} pieces but the model's LM has vocab_size "
            f"{vocab_size}: "
            f"give {fix}"
        )
    return tokenizer

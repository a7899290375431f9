"""Loading the models of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896) from the files runs wrote:
the frozen ViT and LM (a stage-0 file, a stage-1/2 checkpoint, or a local Hugging Face folder given
as `hf:FOLDER`) in the dtype they run in, the tokenizer whose ids the LM reads, and a trained
stage-1/2 model with the frozen models its checkpoint references read back in (or copied in, for a
self-contained file). Writing and reading the files themselves is support/checkpoints.py.
"""

import os

import torch
import torch.nn as nn

import data
from palm_decoder import PaLMDecoder
from support.checkpoints import (
    HUGGING_FACE_PREFIX,
    check_reference,
    load_checkpoint,
    save_checkpoint,
    submodule_state,
)
from support.model_spec import build_vlm
from vit import ViT
from vlm import VisionLanguageModel

# ---------------------------------------------------------------------------------------------
# bf16 or not; frozen weights in the dtype they run in, filled without a random initialisation
# ---------------------------------------------------------------------------------------------

FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 matmuls at about 2.2x the fp32 rate (measured on the 2-core EPYC of
    docs/benchmarks.md). A CPU without them has no fast bf16 matmul, so fp32 stays its default."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def bf16_by_default(device: str = "auto") -> bool:
    """--bf16's default: on for CUDA, and on the CPU where it has native bf16 matmuls."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    return cuda or cpu_has_native_bf16()


def frozen_dtype(name: str | None, bf16: bool) -> torch.dtype:
    """--frozen-dtype: the frozen ViT's and LM's weights; None: bf16 under bf16 autocast (`bf16`,
    trainer.TrainConfig.uses_bf16), else fp32. Under autocast the fp32 adapter meets the bf16 frozen
    weights; without it they would meet fp32 activations, so bf16 weights need autocast."""
    name = name or ("bf16" if bf16 else "fp32")
    if name == "bf16" and not bf16:
        raise ValueError(
            "--frozen-dtype bf16 needs bf16 autocast (--bf16 true; the default on CUDA and on CPUs "
            "with native bf16 matmuls): the trained adapter stays fp32 and meets the frozen bf16 "
            "weights under autocast; or --frozen-dtype fp32"
        )
    return FROZEN_DTYPES[name]


def loaded(model_class, config, state: dict, dtype, device="cpu") -> nn.Module:
    """A model filled from `state` without a throwaway random initialisation: built on the meta
    device (no memory), the checkpoint's tensors assigned in place, then cast to `dtype` on
    `device` (nothing to do where they were read so)."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state, assign=True)
    return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The parts a later stage starts from
# ---------------------------------------------------------------------------------------------


def load_vision(path: str, dtype=torch.float32, device="cpu") -> ViT:
    """The ViT of a stage-0 checkpoint (stage0/pretrain.py vit) or of any stage-1/2 checkpoint, or
    with `hf:FOLDER` the vision tower of a local Hugging Face CLIP / SigLIP folder
    (ViT.from_pretrained); safetensors files are read straight onto `device` in `dtype`."""
    if path.startswith(HUGGING_FACE_PREFIX):
        return ViT.from_pretrained(path[len(HUGGING_FACE_PREFIX) :], dtype=dtype, device=device)
    stages = ("pretrain-vit", "stage1", "stage2")
    checkpoint = load_checkpoint(path, expected_stage=stages, dtype=dtype, device=device)
    # a stage-1/2 checkpoint that references its ViT
    if reference := checkpoint.get("frozen", {}).get("vision"):
        check_reference(reference, path)
        return load_vision(reference["source"], dtype, device)
    state = submodule_state(checkpoint["model"], "vision.")
    return loaded(ViT, checkpoint["spec"].vision, state, dtype, device)


def load_lm(path: str, dtype=torch.float32, device="cpu") -> PaLMDecoder:
    """A language model: from stage0/pretrain.py lm, or the tiny LM a stage-1 run trained as its
    decoder, or with `hf:FOLDER` a local Hugging Face Gemma / Llama folder
    (PaLMDecoder.from_pretrained); safetensors files are read straight onto `device` in `dtype`."""
    if path.startswith(HUGGING_FACE_PREFIX):
        folder = path[len(HUGGING_FACE_PREFIX) :]
        return PaLMDecoder.from_pretrained(folder, dtype=dtype, device=device)
    stages = ("pretrain-lm", "stage1")
    return lm_of(load_checkpoint(path, stages, dtype, device), dtype, device)


def lm_of(checkpoint: dict, dtype=torch.float32, device="cpu") -> PaLMDecoder:
    """The LM of a loaded pretrain-lm or stage-1 checkpoint (stage 1 trains it: never a
    reference)."""
    state = (
        checkpoint["model"]
        if checkpoint["stage"] == "pretrain-lm"
        else submodule_state(checkpoint["model"], "lm.")
    )
    return loaded(PaLMDecoder, checkpoint["spec"].lm, state, dtype, device)


def load_tokenizer(path, vocab_size: int, lm_source: str | None = None) -> data.Tokenizer:
    """The sentencepiece model at `path`, checked against the vocab_size of the LM that will read
    its ids; lm_source (the LM's flag value): an `hf:FOLDER` LM's error names its own tokenizer."""
    tokenizer = data.Tokenizer(path)
    if tokenizer.vocab_size != vocab_size:
        fix = (
            f"--tokenizer {lm_source} (the LM's own tokenizer.model)"
            if str(lm_source).startswith(HUGGING_FACE_PREFIX)
            else "the tokenizer the run was trained with (--tokenizer)"
        )
        raise data.DataError(
            f"{path} has {tokenizer.vocab_size} pieces but the model's LM has vocab_size "
            f"{vocab_size}: "
            f"give {fix}"
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------
# A trained model, with the frozen models its checkpoint references read back in
# ---------------------------------------------------------------------------------------------


def full_state(checkpoint: dict, path) -> dict:
    """A checkpoint's model state with the frozen models it references read back in (hashes
    checked)."""
    state = dict(checkpoint["model"])
    for name, reference in checkpoint.get("frozen", {}).items():
        check_reference(reference, path)
        frozen_model = {"vision": load_vision, "lm": load_lm}[name](reference["source"])
        state.update({f"{name}.{key}": tensor for key, tensor in frozen_model.state_dict().items()})
    return state


def load_vlm(path, device="cpu") -> tuple[VisionLanguageModel, dict]:
    """A stage-1 or stage-2 checkpoint -> (the model rebuilt from its spec, in eval mode; the
    checkpoint)."""
    checkpoint = load_checkpoint(str(path), expected_stage=("stage1", "stage2"))
    model = build_vlm(checkpoint["spec"])
    model.load_state_dict(full_state(checkpoint, path))
    return model.to(device).eval(), checkpoint


def bundle_checkpoint(path, out) -> dict:
    """A self-contained copy of a stage-1/2 checkpoint (the frozen models it references copied in),
    for sharing -> {"bytes" of the copy}."""
    checkpoint = load_checkpoint(str(path), expected_stage=("stage1", "stage2"))
    bundled = {
        **checkpoint,
        "model": full_state(checkpoint, path),
        "frozen": {},
        "spec": checkpoint["spec"].to_dict(),
    }
    save_checkpoint(str(out), bundled)
    return {"bytes": os.path.getsize(out)}

"""Local Hugging Face folders (config.json + *.safetensors) -> our modules' configs and weights.

The conversion lives apart from the models, as gpt-fast keeps `convert_hf_checkpoint.py` apart from
its model: `ViT.from_pretrained` (CLIP / SigLIP vision towers, the frozen "ViT" box of Figure 2)
and `PaLMDecoder.from_pretrained` (Gemma v1 / Llama-architecture decoders, the LM boxes: their
tables and parts are in support/hf_decoder.py) are thin entry points. Each architecture has one
weight table, our tensor name -> the folder's, and one config conversion that returns our config's
fields (or an error naming the field we cannot honour). Only local files are read; this module
imports no model.
"""

import fnmatch
import json
from pathlib import Path

import torch
import torch.nn as nn

# ---------------------------------------------------------------------------------------------
# Reading a folder and filling a model by table
# ---------------------------------------------------------------------------------------------


def read_hugging_face_folder(folder, device="cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and every tensor of a local Hugging Face model folder, from the shards its
    model.safetensors.index.json names (or every *.safetensors), read straight onto `device` (a
    rank's GPU: no copy of the weights in host memory). Reads local files only."""
    from safetensors.torch import load_file  # imported here: only Hugging Face folders need it

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no folder {str(folder)!r}: expected a local Hugging Face model folder "
            "(config.json + *.safetensors); hub names are not downloaded"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    else:
        shards = sorted(path.name for path in folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(
            f"{folder} has no *.safetensors weights (pytorch_model.bin is not read: it is a pickle)"
        )
    tensors = {}
    for shard in shards:
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{folder / shard} is named by {index_file.name} but missing")
        tensors.update(load_file(folder / shard, device=str(device)))
    return json.loads(config_file.read_text()), tensors


def expand_table(table: dict, depth: int) -> dict:
    """Write out a weight table's per-block entries ({i}) for blocks 0 .. depth - 1."""
    expanded = {}
    for ours, theirs in table.items():
        for i in range(depth) if "{i}" in ours else [None]:
            expanded[ours.format(i=i)] = (
                theirs.format(i=i)
                if isinstance(theirs, str)
                else tuple(t.format(i=i) for t in theirs)
            )
    return expanded


def load_by_table(
    model: nn.Module, tensors: dict, table: dict, ignored: tuple, source, dtype
) -> nn.Module:
    """Fill `model` (built on the meta device) with a folder's `tensors`, named by `table` (ours ->
    theirs, written out by expand_table). A missing, misshapen or left-over tensor is an error
    that names it; `ignored` (fnmatch patterns) are the left-overs that belong to other heads or
    towers."""
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if set(table) != set(shapes):  # a bug in our table, not in the folder
        raise RuntimeError(
            f"the weight table and {type(model).__name__} disagree on "
            f"{sorted(set(table) ^ set(shapes))}"
        )
    state = {}
    for ours, theirs in table.items():
        names = (theirs,) if isinstance(theirs, str) else theirs
        # fused tensors are equal parts
        piece_shape = (
            shapes[ours][0] // len(names),
            *shapes[ours][1:],
        )
        pieces = []
        for name in names:
            if name not in tensors:
                raise ValueError(f"{source}: tensor {name!r} is missing (it fills our {ours!r})")
            piece = tensors.pop(name)
            if (1, *piece.shape) == piece_shape:
                piece = piece[None]  # our position table's leading batch axis
            if tuple(piece.shape) != piece_shape:
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {tuple(piece.shape)}; {ours!r} needs "
                    f"{piece_shape} "
                    "(config.json and the weights disagree)"
                )
            pieces.append(piece.to(dtype))
        state[ours] = torch.cat(pieces)  # a new tensor, never a view of the file
    unexpected = [
        name
        for name in tensors
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in ignored)
    ]
    if unexpected:
        raise ValueError(
            f"{source}: unexpected tensor(s) "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}: "
            f"this architecture has no place for them"
        )
    model.load_state_dict(state, assign=True)
    return model


# ---------------------------------------------------------------------------------------------
# Vision towers: CLIP and SigLIP
# ---------------------------------------------------------------------------------------------

# Our tensor name -> the folder's, inside the vision tower: the "vision_model." prefix that
# CLIPModel,
# SiglipModel and folders saved by transformers 4 put before every name is dropped first. A tuple is
# concatenated along dim 0 in that order (their separate q, k, v projections -> our fused
# query_key_value); {i} is the block index. CLIP's position table is (1 + N, D) with the class
# token's row first, as ours; both tables gain our leading batch axis.
# CLIP and SigLIP name their encoder layers alike: one table for the blocks serves both.
ENCODER_LAYER = "encoder.layers.{i}."
ENCODER_LAYER_WEIGHTS = {
    "blocks.{i}.attention_norm.weight": ENCODER_LAYER + "layer_norm1.weight",
    "blocks.{i}.attention_norm.bias": ENCODER_LAYER + "layer_norm1.bias",
    "blocks.{i}.attention.query_key_value.weight": (
        ENCODER_LAYER + "self_attn.q_proj.weight",
        ENCODER_LAYER + "self_attn.k_proj.weight",
        ENCODER_LAYER + "self_attn.v_proj.weight",
    ),
    "blocks.{i}.attention.query_key_value.bias": (
        ENCODER_LAYER + "self_attn.q_proj.bias",
        ENCODER_LAYER + "self_attn.k_proj.bias",
        ENCODER_LAYER + "self_attn.v_proj.bias",
    ),
    "blocks.{i}.attention.out.weight": ENCODER_LAYER + "self_attn.out_proj.weight",
    "blocks.{i}.attention.out.bias": ENCODER_LAYER + "self_attn.out_proj.bias",
    "blocks.{i}.mlp_norm.weight": ENCODER_LAYER + "layer_norm2.weight",
    "blocks.{i}.mlp_norm.bias": ENCODER_LAYER + "layer_norm2.bias",
    "blocks.{i}.mlp.up.weight": ENCODER_LAYER + "mlp.fc1.weight",
    "blocks.{i}.mlp.up.bias": ENCODER_LAYER + "mlp.fc1.bias",
    "blocks.{i}.mlp.down.weight": ENCODER_LAYER + "mlp.fc2.weight",
    "blocks.{i}.mlp.down.bias": ENCODER_LAYER + "mlp.fc2.bias",
}
CLIP_VISION_WEIGHTS = {
    "class_token": "embeddings.class_embedding",
    "patch_embedding.weight": "embeddings.patch_embedding.weight",  # no bias in CLIP
    "position_embedding": "embeddings.position_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",  # sic: transformers' spelling
    "pre_norm.bias": "pre_layrnorm.bias",
    **ENCODER_LAYER_WEIGHTS,
    "final_norm.weight": "post_layernorm.weight",
    "final_norm.bias": "post_layernorm.bias",
}
SIGLIP_VISION_WEIGHTS = {
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "patch_embedding.bias": "embeddings.patch_embedding.bias",
    "position_embedding": "embeddings.position_embedding.weight",  # (N, D): no class token
    **ENCODER_LAYER_WEIGHTS,
    "final_norm.weight": "post_layernorm.weight",
    "final_norm.bias": "post_layernorm.bias",
}
# What a folder may hold besides the vision tower: the text tower and projections of a full
# CLIPModel / SiglipModel, SigLIP's attention-pooling head, and the position_ids buffer that older
# transformers versions saved.
IGNORED_VISION_TENSORS = (
    "text_model.*",
    "text_projection.*",
    "visual_projection.*",
    "logit_scale",
    "logit_bias",
    "head.*",
    "*position_ids",
)

# transformers' defaults for the fields a config.json may leave out (a saved config keeps only
# what differs from them, e.g. google/siglip-base-patch16-224's vision_config is {"patch_size":
# 16}).
HUGGING_FACE_VISION_DEFAULTS = {
    "clip": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
    "siglip": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=16,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    ),
}
VISION_MODEL_TYPES = {
    "clip": "clip",
    "clip_vision_model": "clip",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
}
HUGGING_FACE_VISION_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


def vit_fields_from_hugging_face(hugging_face_config: dict, source) -> tuple[dict, dict, tuple]:
    """A folder's config.json -> (our ViTConfig fields, its weight table, the tensor names to leave
    out)."""
    model_type = hugging_face_config.get("model_type")
    family = VISION_MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(
            f"{source}/config.json: model_type {model_type!r} is not supported by "
            "ViT.from_pretrained; "
            f"supported: {list(VISION_MODEL_TYPES)}"
        )
    vision = (
        hugging_face_config
        if model_type.endswith("_vision_model")
        else hugging_face_config.get("vision_config") or {}
    )
    vision = {**HUGGING_FACE_VISION_DEFAULTS[family], **vision}
    for name in ("image_size", "patch_size"):  # ints, or [height, width] in newer configs
        if isinstance(vision[name], (list, tuple)):
            if len(set(vision[name])) != 1:
                raise ValueError(
                    f"{source}/config.json: {name}={vision[name]}; only square images and patches "
                    "are supported"
                )
            vision[name] = vision[name][0]
    if vision["hidden_act"] not in HUGGING_FACE_VISION_ACTIVATIONS:
        raise ValueError(
            f"{source}/config.json: hidden_act={vision['hidden_act']!r} is not supported; "
            f"supported: {list(HUGGING_FACE_VISION_ACTIVATIONS)}"
        )
    clip = family == "clip"
    preprocessing = vision_preprocessing(source, family, vision["image_size"])
    fields = dict(
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        dim=vision["hidden_size"],
        depth=vision["num_hidden_layers"],
        num_heads=vision["num_attention_heads"],
        mlp_dim=vision["intermediate_size"],
        channels=vision["num_channels"],
        norm_eps=vision["layer_norm_eps"],
        class_token=clip,
        pre_norm=clip,
        patch_bias=not clip,
        mlp_activation=HUGGING_FACE_VISION_ACTIVATIONS[vision["hidden_act"]],
        **preprocessing,
    )
    return fields, CLIP_VISION_WEIGHTS if clip else SIGLIP_VISION_WEIGHTS, IGNORED_VISION_TENSORS


# transformers' image processors' defaults, for a folder without preprocessor_config.json: CLIP's
# statistics with short-side resize and centre crop, SigLIP's 0.5 with a square resize.
HUGGING_FACE_PREPROCESSING_DEFAULTS = {
    "clip": dict(
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_center_crop=True,
    ),
    "siglip": dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_center_crop=False),
}
BICUBIC = 3  # PIL's number, as preprocessor_config.json writes "resample"


def vision_preprocessing(folder, family: str, image_size: int) -> dict:
    """The folder's preprocessor_config.json -> our ViTConfig's image_mean, image_std and resize.
    What data.load_image cannot do as the processor does (another resampling filter, a resize to
    another size than the crop) is an error naming the field. Without the file: transformers'
    defaults."""
    path = Path(folder) / "preprocessor_config.json"
    given = json.loads(path.read_text()) if path.is_file() else {}
    default_size = (
        {"shortest_edge": image_size}
        if family == "clip"
        else {"height": image_size, "width": image_size}
    )
    processor = {**HUGGING_FACE_PREPROCESSING_DEFAULTS[family], "size": default_size, **given}
    source = path if given else f"{family} defaults"
    for field, expected in (
        ("do_resize", True),
        ("do_rescale", True),
        ("do_convert_rgb", True),
        ("resample", BICUBIC),
    ):
        if processor.get(field, expected) != expected:
            raise ValueError(
                f"{source}: {field}={processor[field]!r} is not supported; expected {expected!r}"
            )
    if abs(processor.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise ValueError(
            f"{source}: rescale_factor={processor['rescale_factor']} is not supported; expected "
            "1/255"
        )
    size, crop = (
        processor["size"],
        processor.get("crop_size") or {"height": image_size, "width": image_size},
    )
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if processor.get("do_center_crop") and size.get("shortest_edge") == image_size == crop.get(
        "height"
    ) == crop.get("width"):
        resize = "crop"
    elif not processor.get("do_center_crop") and size.get("height") == image_size == size.get(
        "width"
    ):
        resize = "square"
    else:
        raise ValueError(
            f"{source}: size={size}, do_center_crop={processor.get('do_center_crop')}, "
            f"crop_size={crop} is not "
            f"supported for image_size {image_size}; expected shortest_edge {image_size} with a "
            "centre crop "
            f"of {image_size} (CLIP) or height = width = {image_size} without a crop (SigLIP)"
        )
    normalize = processor.get("do_normalize", True)
    return dict(
        image_mean=tuple(processor["image_mean"]) if normalize else (0.0, 0.0, 0.0),
        image_std=tuple(processor["image_std"]) if normalize else (1.0, 1.0, 1.0),
        resize=resize,
    )

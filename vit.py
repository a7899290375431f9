"""Vision encoder: the frozen "ViT" box of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896).

A plain pre-norm Vision Transformer. The paper's encoder is a pretrained CoCa-style ViT, frozen in
both stages; the adapter reads every patch feature, so there is no class token and no pooling:
images (B, 3, H, W) -> (B, N, D) with N = (H / patch) * (W / patch). A video goes through the
encoder one frame at a time, as in the paper: (B, T, 3, H, W) -> (B, T, N, D); the perceiver
resampler is what mixes the frames.

Images of another size than the one the position embedding was learned for are accepted when the
patch size divides them: the position-embedding grid is resized bicubically, as ViT fine-tuning at
a higher resolution does (Dosovitskiy et al. 2021, section 3.2).

`ViT.from_pretrained(folder)` loads the vision tower of a local Hugging Face CLIP or SigLIP folder
(config.json + *.safetensors) into this same class; the config fields after `norm_eps` say where
those encoders differ from the plain ViT. The folder reader and the renaming by table at the end of
this file serve `PaLMDecoder.from_pretrained` too.
"""
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention


@dataclass
class ViTConfig:
    image_size: int = 224  # the side the position embedding is learned for (square images)
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    channels: int = 3
    norm_eps: float = 1e-6
    attention_backend: str = "auto"
    class_token: bool = False  # prepend a learned class token (CLIP); the output drops it: patch tokens only
    pre_norm: bool = False  # LayerNorm on the embeddings before the blocks (CLIP's pre_layrnorm)
    patch_bias: bool = True  # the patch embedding has a bias (CLIP's has none)
    mlp_activation: str = "gelu"  # gelu (exact) | gelu_tanh (SigLIP) | quick_gelu (CLIP: x * sigmoid(1.702 x))

    def __post_init__(self):
        for name in ("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_dim", "channels", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                "the image must tile into whole patches"
            )
        if self.dim % self.num_heads != 0:
            raise ValueError(f"num_heads={self.num_heads} does not divide dim={self.dim}: each head gets dim // num_heads channels")
        if self.attention_backend not in ("auto", *BACKENDS):
            raise ValueError(f"attention_backend={self.attention_backend!r}; choose one of {['auto', *BACKENDS]}")
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(f"mlp_activation={self.mlp_activation!r}; choose one of {list(ACTIVATIONS)}")

    @property
    def grid_size(self) -> int:
        """Patches per side at image_size."""
        return self.image_size // self.patch_size


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


# toy: what `make demo` pretrains on CPU on the 64-pixel synthetic images (64 patches of 8x8).
# B/16 and L/14: the standard ViT widths at 224 pixels (196 and 256 patches).
VIT_CONFIGS = {
    "toy": ViTConfig(image_size=64, patch_size=8, dim=128, depth=4, num_heads=4, mlp_dim=512),
    "B/16": ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "L/14": ViTConfig(image_size=224, patch_size=14, dim=1024, depth=24, num_heads=16, mlp_dim=4096),
}


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def resize_position_embedding(position_embedding: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """(1, h * w, D) learned on an h x w patch grid -> (1, h' * w', D) for an h' x w' grid, bicubic."""
    D = position_embedding.shape[-1]
    table = position_embedding.reshape(1, *grid, D).permute(0, 3, 1, 2)  # (1, D, h, w)
    # Interpolate in float32: bicubic is not implemented for every low-precision dtype.
    table = F.interpolate(table.float(), size=new_grid, mode="bicubic", align_corners=False)  # (1, D, h', w')
    return table.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D).to(position_embedding.dtype)


class SelfAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads, self.backend = config.num_heads, config.attention_backend
        self.query_key_value = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        q, k, v = self.query_key_value(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, Dh)
        out = attention(q, k, v, backend=self.backend)  # (B, H, N, Dh)
        return self.out(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.up = nn.Linear(config.dim, config.mlp_dim)
        self.down = nn.Linear(config.mlp_dim, config.dim)
        self.activation = ACTIVATIONS[config.mlp_activation]

    def forward(self, x):  # (B, N, D)
        return self.down(self.activation(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attention = SelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x):  # (B, N, D)
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        # A convolution with stride = kernel = patch size is "cut into patches, flatten, linear".
        self.patch_embedding = nn.Conv2d(config.channels, config.dim, config.patch_size, stride=config.patch_size,
                                         bias=config.patch_bias)
        num_class_tokens = int(config.class_token)
        if config.class_token:
            self.class_token = nn.Parameter(torch.zeros(config.dim))  # (D,)
            nn.init.trunc_normal_(self.class_token, std=0.02)
        # (1, [1 +] N, D): the class token's position, when there is one, comes first.
        self.position_embedding = nn.Parameter(torch.zeros(1, num_class_tokens + config.grid_size**2, config.dim))
        self.pre_norm = nn.LayerNorm(config.dim, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, pixels):
        """Images (B, C, H, W) -> patch features (B, N, D); videos (B, T, C, H, W) -> (B, T, N, D)."""
        if pixels.dim() == 5:
            B, T = pixels.shape[:2]
            return self(pixels.flatten(0, 1)).unflatten(0, (B, T))  # frames are independent images
        if pixels.dim() != 4 or pixels.shape[1] != self.config.channels:
            raise ValueError(
                f"ViT expects images (B, {self.config.channels}, H, W) or videos (B, T, {self.config.channels}, H, W); "
                f"got shape {tuple(pixels.shape)}"
            )
        height, width = pixels.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not divisible by patch_size={patch}")
        x = self.patch_embedding(pixels)  # (B, D, H / patch, W / patch)
        grid = (height // patch, width // patch)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.config.class_token:
            x = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], dim=1)  # (B, 1 + N, D)
        x = self.pre_norm(x + self.position_embedding_for(grid))
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)  # (B, [1 +] N, D)
        return x[:, 1:] if self.config.class_token else x  # (B, N, D): the adapter reads patch tokens only

    def position_embedding_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, [1 +] h * w, D) for an h x w patch grid; the class token's position is never resized."""
        native_grid = (self.config.grid_size, self.config.grid_size)
        if grid == native_grid:
            return self.position_embedding
        num_class_tokens = int(self.config.class_token)
        class_position, patch_positions = self.position_embedding.split([num_class_tokens, native_grid[0] * native_grid[1]], dim=1)
        return torch.cat([class_position, resize_position_embedding(patch_positions, native_grid, grid)], dim=1)

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32) -> "ViT":
        """The vision tower of a local Hugging Face CLIP or SigLIP folder (config.json + *.safetensors):
        CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel; SiglipVisionModel or SiglipModel.

        Only local files are read (a hub name is not a folder here). The output, the patch tokens
        after the final norm, equals transformers' `post_layernorm(last_hidden_state)[:, 1:]` for
        CLIP (the class token dropped; CLIP itself applies post_layernorm to the class token only) and
        `last_hidden_state` for SigLIP (post-normed already; its attention-pooling head is not loaded)."""
        hugging_face_config, tensors = read_hugging_face_folder(folder)
        config, table, ignored = vit_config_from_hugging_face(hugging_face_config, folder)
        tensors = {name.removeprefix("vision_model."): tensor for name, tensor in tensors.items()}
        with torch.device("meta"):  # no memory and no initialisation: every tensor comes from the folder
            model = cls(config)
        return load_by_table(model, tensors, expand_table(table, config.depth), ignored, folder, dtype)


# ---------------------------------------------------------------------------------------------
# Hugging Face folders: config.json + *.safetensors, renamed into our modules by one table each
# ---------------------------------------------------------------------------------------------

# Our tensor name -> the folder's, inside the vision tower: the "vision_model." prefix that CLIPModel,
# SiglipModel and folders saved by transformers 4 put before every name is dropped first. A tuple is
# concatenated along dim 0 in that order (their separate q, k, v projections -> our fused
# query_key_value); {i} is the block index. CLIP's position table is (1 + N, D) with the class
# token's row first, as ours; both tables gain our leading batch axis.
# CLIP and SigLIP name their encoder layers alike: one table for the blocks serves both.
ENCODER_LAYER = "encoder.layers.{i}."
ENCODER_LAYER_WEIGHTS = {
    "blocks.{i}.attention_norm.weight": ENCODER_LAYER + "layer_norm1.weight",
    "blocks.{i}.attention_norm.bias": ENCODER_LAYER + "layer_norm1.bias",
    "blocks.{i}.attention.query_key_value.weight": (ENCODER_LAYER + "self_attn.q_proj.weight", ENCODER_LAYER + "self_attn.k_proj.weight", ENCODER_LAYER + "self_attn.v_proj.weight"),
    "blocks.{i}.attention.query_key_value.bias": (ENCODER_LAYER + "self_attn.q_proj.bias", ENCODER_LAYER + "self_attn.k_proj.bias", ENCODER_LAYER + "self_attn.v_proj.bias"),
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
IGNORED_VISION_TENSORS = ("text_model.*", "text_projection.*", "visual_projection.*", "logit_scale", "logit_bias",
                          "head.*", "*position_ids")

# transformers' defaults for the fields a config.json may leave out (a saved config keeps only
# what differs from them, e.g. google/siglip-base-patch16-224's vision_config is {"patch_size": 16}).
HUGGING_FACE_VISION_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
                 image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
                   image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
}
VISION_MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}
HUGGING_FACE_VISION_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def vit_config_from_hugging_face(hugging_face_config: dict, source) -> tuple[ViTConfig, dict, tuple]:
    """A folder's config.json -> (our config, its weight table, the tensor names to leave out)."""
    model_type = hugging_face_config.get("model_type")
    family = VISION_MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(f"{source}/config.json: model_type {model_type!r} is not supported by ViT.from_pretrained; "
                         f"supported: {list(VISION_MODEL_TYPES)}")
    vision = hugging_face_config if model_type.endswith("_vision_model") else hugging_face_config.get("vision_config") or {}
    vision = {**HUGGING_FACE_VISION_DEFAULTS[family], **vision}
    for name in ("image_size", "patch_size"):  # ints, or [height, width] in newer configs
        if isinstance(vision[name], (list, tuple)):
            if len(set(vision[name])) != 1:
                raise ValueError(f"{source}/config.json: {name}={vision[name]}; only square images and patches are supported")
            vision[name] = vision[name][0]
    if vision["hidden_act"] not in HUGGING_FACE_VISION_ACTIVATIONS:
        raise ValueError(f"{source}/config.json: hidden_act={vision['hidden_act']!r} is not supported; "
                         f"supported: {list(HUGGING_FACE_VISION_ACTIVATIONS)}")
    clip = family == "clip"
    config = ViTConfig(
        image_size=vision["image_size"], patch_size=vision["patch_size"], dim=vision["hidden_size"],
        depth=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"],
        channels=vision["num_channels"], norm_eps=vision["layer_norm_eps"], class_token=clip, pre_norm=clip,
        patch_bias=not clip, mlp_activation=HUGGING_FACE_VISION_ACTIVATIONS[vision["hidden_act"]])
    return config, CLIP_VISION_WEIGHTS if clip else SIGLIP_VISION_WEIGHTS, IGNORED_VISION_TENSORS


def read_hugging_face_folder(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and every tensor of a local Hugging Face model folder, from the shards its
    model.safetensors.index.json names (or every *.safetensors). Reads local files only."""
    from safetensors.torch import load_file  # imported here: only Hugging Face folders need it

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}: expected a local Hugging Face model folder "
                                "(config.json + *.safetensors); hub names are not downloaded")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    else:
        shards = sorted(path.name for path in folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights (pytorch_model.bin is not read: it is a pickle)")
    tensors = {}
    for shard in shards:
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{folder / shard} is named by {index_file.name} but missing")
        tensors.update(load_file(folder / shard))
    return json.loads(config_file.read_text()), tensors


def expand_table(table: dict, depth: int) -> dict:
    """Write out a weight table's per-block entries ({i}) for blocks 0 .. depth - 1."""
    expanded = {}
    for ours, theirs in table.items():
        for i in range(depth) if "{i}" in ours else [None]:
            expanded[ours.format(i=i)] = theirs.format(i=i) if isinstance(theirs, str) else tuple(t.format(i=i) for t in theirs)
    return expanded


def load_by_table(model: nn.Module, tensors: dict, table: dict, ignored: tuple, source, dtype) -> nn.Module:
    """Fill `model` (built on the meta device) with a folder's `tensors`, named by `table` (ours ->
    theirs, written out by expand_table). A missing, misshapen or left-over tensor is an error
    that names it; `ignored` (fnmatch patterns) are the left-overs that belong to other heads or towers."""
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if set(table) != set(shapes):  # a bug in our table, not in the folder
        raise RuntimeError(f"the weight table and {type(model).__name__} disagree on {sorted(set(table) ^ set(shapes))}")
    state = {}
    for ours, theirs in table.items():
        names = (theirs,) if isinstance(theirs, str) else theirs
        piece_shape = (shapes[ours][0] // len(names), *shapes[ours][1:])  # fused tensors are equal parts
        pieces = []
        for name in names:
            if name not in tensors:
                raise ValueError(f"{source}: tensor {name!r} is missing (it fills our {ours!r})")
            piece = tensors.pop(name)
            if (1, *piece.shape) == piece_shape:
                piece = piece[None]  # our position table's leading batch axis
            if tuple(piece.shape) != piece_shape:
                raise ValueError(f"{source}: tensor {name!r} has shape {tuple(piece.shape)}; {ours!r} needs {piece_shape} "
                                 "(config.json and the weights disagree)")
            pieces.append(piece.to(dtype))
        state[ours] = torch.cat(pieces)  # a new tensor, never a view of the file
    unexpected = [name for name in tensors if not any(fnmatch.fnmatchcase(name, pattern) for pattern in ignored)]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}: "
                         f"this architecture has no place for them")
    model.load_state_dict(state, assign=True)
    return model


def preset_table() -> str:
    """Every preset's shape and parameter count (built on the meta device: no memory, no init)."""
    lines = [f"{'preset':<6} {'image':>5} {'patch':>5} {'dim':>5} {'depth':>5} {'heads':>5} {'mlp':>5} {'patches':>7} {'params':>12}"]
    for name, config in VIT_CONFIGS.items():
        with torch.device("meta"):
            count = ViT(config).num_parameters()
        lines.append(f"{name:<6} {config.image_size:>5} {config.patch_size:>5} {config.dim:>5} {config.depth:>5} "
                     f"{config.num_heads:>5} {config.mlp_dim:>5} {config.grid_size ** 2:>7} {count:>12,}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="ViT presets")
    parser.add_argument("--list", action="store_true", help="print every preset's parameter count")
    if parser.parse_args().list:
        print(preset_table())
    else:
        parser.print_help()

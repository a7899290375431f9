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
those encoders differ from the plain ViT. The folder reading and the weight tables are in
support/hf_weights.py.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention
from support import hf_weights


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
    # prepend a learned class token (CLIP); the output drops it: patch tokens only
    class_token: bool = False
    pre_norm: bool = False  # LayerNorm on the embeddings before the blocks (CLIP's pre_layrnorm)
    patch_bias: bool = True  # the patch embedding has a bias (CLIP's has none)
    # gelu (exact) | gelu_tanh (SigLIP) | quick_gelu (CLIP: x * sigmoid(1.702 x))
    mlp_activation: str = "gelu"
    # The pixels the encoder was trained on: per-channel statistics (CLIP's are not 0.5) and how an
    # image becomes image_size x image_size ("crop": short side resized, centre crop, as CLIP;
    # "square": the whole image resized, as SigLIP). data.load_pixels applies them.
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: str = "crop"

    def __post_init__(self):
        check_config(self)

    def pixel_options(self) -> dict:
        """What data.load_pixels needs, besides image_size, to make this encoder's input."""
        return dict(mean=self.image_mean, std=self.image_std, resize=self.resize)

    @property
    def grid_size(self) -> int:
        """Patches per side at image_size."""
        return self.image_size // self.patch_size


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def resize_position_embedding(
    position_embedding: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """(1, h * w, D) learned on an h x w patch grid -> (1, h' * w', D) for an h' x w' grid,
    bicubic."""
    D = position_embedding.shape[-1]
    table = position_embedding.reshape(1, *grid, D).permute(0, 3, 1, 2)  # (1, D, h, w)
    # Interpolate in float32: bicubic is not implemented for every low-precision dtype.
    # (1, D, h', w')
    table = F.interpolate(table.float(), size=new_grid, mode="bicubic", align_corners=False)
    return (
        table.permute(0, 2, 3, 1)
        .reshape(1, new_grid[0] * new_grid[1], D)
        .to(position_embedding.dtype)
    )


class SelfAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads, self.backend = config.num_heads, config.attention_backend
        self.query_key_value = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        # 3 x (B, H, N, Dh)
        q, k, v = (
            self.query_key_value(x)
            .view(B, N, 3, self.num_heads, D // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        out = attention(q, k, v, backend=self.backend)  # (B, H, N, Dh)
        return self.out(out.transpose(1, 2).reshape(B, N, D))


# The MLP's activation, by the name a config gives: gelu_tanh for SigLIP, quick_gelu for CLIP.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
}


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
        self.patch_embedding = nn.Conv2d(
            config.channels,
            config.dim,
            config.patch_size,
            stride=config.patch_size,
            bias=config.patch_bias,
        )
        num_class_tokens = int(config.class_token)
        if config.class_token:
            self.class_token = nn.Parameter(torch.zeros(config.dim))  # (D,)
            nn.init.trunc_normal_(self.class_token, std=0.02)
        # (1, [1 +] N, D): the class token's position, when there is one, comes first.
        self.position_embedding = nn.Parameter(
            torch.zeros(1, num_class_tokens + config.grid_size**2, config.dim)
        )
        self.pre_norm = (
            nn.LayerNorm(config.dim, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels):
        """Images (B, C, H, W) -> patch features (B, N, D); videos (B, T, C, H, W) -> (B, T, N,
        D)."""
        if pixels.dim() == 5:
            B, T = pixels.shape[:2]
            return self(pixels.flatten(0, 1)).unflatten(0, (B, T))  # frames are independent images
        if pixels.dim() != 4 or pixels.shape[1] != self.config.channels:
            raise ValueError(
                f"ViT expects images (B, {self.config.channels}, H, W) or videos (B, T, "
                f"{self.config.channels}, H, W); "
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
        # (B, N, D): the adapter reads patch tokens only
        return x[:, 1:] if self.config.class_token else x

    def position_embedding_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, [1 +] h * w, D) for an h x w patch grid; the class token's position is never
        resized."""
        native_grid = (self.config.grid_size, self.config.grid_size)
        if grid == native_grid:
            return self.position_embedding
        num_class_tokens = int(self.config.class_token)
        class_position, patch_positions = self.position_embedding.split(
            [num_class_tokens, native_grid[0] * native_grid[1]], dim=1
        )
        return torch.cat(
            [class_position, resize_position_embedding(patch_positions, native_grid, grid)], dim=1
        )

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32, device="cpu") -> "ViT":
        """The vision tower of a local Hugging Face CLIP or SigLIP folder (config.json +
        *.safetensors): CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel;
        SiglipVisionModel or SiglipModel.

        Only local files are read (a hub name is not a folder here). The output, the patch tokens
        after the final norm, equals transformers' `post_layernorm(last_hidden_state)[:, 1:]` for
        CLIP (the class token dropped; CLIP itself applies post_layernorm to the class token only)
        and `last_hidden_state` for SigLIP (post-normed already; its attention-pooling head is not
        loaded)."""
        hugging_face_config, tensors = hf_weights.read_hugging_face_folder(folder, device)
        fields, table, ignored = hf_weights.vit_fields_from_hugging_face(
            hugging_face_config, folder
        )
        config = ViTConfig(**fields)
        tensors = {name.removeprefix("vision_model."): tensor for name, tensor in tensors.items()}
        # no memory and no initialisation: every tensor comes from the folder
        with torch.device("meta"):
            model = cls(config)
        return hf_weights.load_by_table(
            model, tensors, hf_weights.expand_table(table, config.depth), ignored, folder, dtype
        )


# ---------------------------------------------------------------------------------------------
# Checks, presets
# ---------------------------------------------------------------------------------------------


def check_config(config: ViTConfig) -> None:
    """Every field in its range, each error naming the field; image_mean and image_std become
    tuples of floats (a flag gives "0.5,0.5,0.5", a JSON spec a list)."""
    for name in (
        "image_size",
        "patch_size",
        "dim",
        "depth",
        "num_heads",
        "mlp_dim",
        "channels",
        "norm_eps",
    ):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}={getattr(config, name)} must be positive")
    if config.image_size % config.patch_size != 0:
        raise ValueError(
            f"image_size={config.image_size} is not divisible by patch_size={config.patch_size}: "
            "the image must tile into whole patches"
        )
    if config.dim % config.num_heads != 0:
        raise ValueError(
            f"num_heads={config.num_heads} does not divide dim={config.dim}: each head gets dim "
            "// num_heads channels"
        )
    if config.attention_backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"attention_backend={config.attention_backend!r}; choose one of {['auto', *BACKENDS]}"
        )
    if config.mlp_activation not in ACTIVATIONS:
        raise ValueError(
            f"mlp_activation={config.mlp_activation!r}; choose one of {list(ACTIVATIONS)}"
        )
    for name in ("image_mean", "image_std"):
        value = getattr(config, name)  # a flag gives "0.5,0.5,0.5"; a JSON spec gives a list
        try:
            value = tuple(float(x) for x in (value.split(",") if isinstance(value, str) else value))
        except (TypeError, ValueError):
            value = ()
        if len(value) != config.channels or (name == "image_std" and min(value) <= 0):
            raise ValueError(
                f"{name}={getattr(config, name)!r}: expected {config.channels} numbers (one per "
                "channel)" + (", all positive" if name == "image_std" else "")
            )
        setattr(config, name, value)
    if config.resize not in ("crop", "square"):
        raise ValueError(
            f"resize={config.resize!r}; choose 'crop' (short side, centre crop) or 'square'"
        )


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of any module, each counted once (a tied embedding is one tensor)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# toy: what `make demo` pretrains on CPU on the 64-pixel synthetic images (64 patches of 8x8).
# B/16 and L/14: the standard ViT widths at 224 pixels (196 and 256 patches).
VIT_CONFIGS = {
    "toy": ViTConfig(image_size=64, patch_size=8, dim=128, depth=4, num_heads=4, mlp_dim=512),
    # `make paper`'s second size
    "toy-small": ViTConfig(image_size=64, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=256),
    "B/16": ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "L/14": ViTConfig(
        image_size=224, patch_size=14, dim=1024, depth=24, num_heads=16, mlp_dim=4096
    ),
}


def preset_table() -> str:
    """Every preset's shape and parameter count (built on the meta device: no memory, no init)."""
    lines = [
        f"{'preset':<6} {'image':>5} {'patch':>5} {'dim':>5} {'depth':>5} {'heads':>5} {'mlp':>5} "
        f"{'patches':>7} {'params':>12}"
    ]
    for name, config in VIT_CONFIGS.items():
        with torch.device("meta"):
            count = num_parameters(ViT(config))
        lines.append(
            f"{name:<6} {config.image_size:>5} {config.patch_size:>5} {config.dim:>5} "
            f"{config.depth:>5} "
            f"{config.num_heads:>5} {config.mlp_dim:>5} {config.grid_size**2:>7} {count:>12,}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python vit.py: every preset's shape and parameter count
    print(preset_table())

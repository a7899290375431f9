"""Perceiver resampler: the box between the frozen ViT and the LM in Figure 2 (PaLM2-VAdapter,
arXiv 2402.10896), as introduced by Flamingo.

A fixed set of learned latents cross-attends to the ViT's patch features, so any number of patches
or frames becomes `num_latents` vectors. In each layer the latents are the queries and
[features; latents] the keys and values, followed by a feed-forward block. For video, a learned
embedding per frame index is added to that frame's patch features before all frames are flattened
into one set, so a video yields the same number of latents as an image.

The paper's three cross-attention modules are presets of this one design:
- `for_pooler`: stage 1's CoCa-style attentional pooler, one cross-attention layer over the features
  only, no feed-forward, then a LayerNorm;
- `for_perceiver`: the baseline (6 layers), without the final LayerNorm (the paper's Table 1: with
  it, 36.2 instead of 46.8 CIDEr);
- `for_vadapter_front`: the VAdapter's fresh stage-2 front, 1 layer of the same, with the final
  LayerNorm (the aligned tiny LM read LayerNormed latents in stage 1);
- `for_lm`: a 1-layer resampler as wide as the LM that reads it (stage 0, the stage-1 ablation).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, Mask, attention


@dataclass
class ResamplerConfig:
    input_dim: int = 768  # width of the vision features (the ViT's dim)
    dim: int = 768  # width of the latents (for the VAdapter: the tiny LM's dim)
    depth: int = 1  # 1 for the VAdapter, more for the perceiver baseline
    num_latents: int = 64  # visual tokens out
    num_heads: int = 8
    mlp_ratio: int = 4  # feed-forward hidden width = mlp_ratio * dim
    max_frames: int = 8  # time embeddings for video frames
    norm_eps: float = 1e-5
    attention_backend: str = "auto"
    # a feed-forward block after each cross-attention (the CoCa pooler has none)
    feed_forward: bool = True
    # keys/values = [features; latents] (Flamingo); False: the features only (CoCa)
    latents_in_keys: bool = True
    # a LayerNorm on the output latents (the pooler's; the paper's baseline has none)
    final_norm: bool = True
    # Init std of the query and key projections. None: 1/sqrt(dim), attention logits of std ~1 at
    # step 0; 0.02 (the other projections' std) gives logits of std ~0.05, a uniform attention
    # that every latent reads as the same patch average, and a long plateau before the latents
    # learn where to look (q.k is a product of two small factors: its gradient is small too).
    query_key_std: float | None = None

    def __post_init__(self):
        check_config(self)

    # The adapters' starting points, one place for every script and benchmark (flags change any
    # field).
    @classmethod
    def for_lm(
        cls, vision_dim: int, lm_dim: int, lm_num_heads: int, **changes
    ) -> "ResamplerConfig":
        """A 1-layer resampler whose latents an LM reads as input embeddings (stage 0's throwaway
        decoder, `train_stage1.py --cross-attention perceiver`): as wide as the LM, with as many
        heads."""
        return cls(
            **{
                "input_dim": vision_dim,
                "dim": lm_dim,
                "depth": 1,
                "num_latents": NUM_LATENTS,
                "num_heads": lm_num_heads,
                **changes,
            }
        )

    @classmethod
    def for_pooler(cls, vision_dim: int, dim: int, num_heads: int, **changes) -> "ResamplerConfig":
        """CoCa's attentional pooler (stage 1 of the paper): learned queries attend once to the
        features alone, then a LayerNorm; `dim` wide (the input projection maps the ViT width to
        it)."""
        return cls(
            **{
                "input_dim": vision_dim,
                "dim": dim,
                "depth": 1,
                "num_latents": NUM_LATENTS,
                "num_heads": num_heads,
                "feed_forward": False,
                "latents_in_keys": False,
                "final_norm": True,
                **changes,
            }
        )

    @classmethod
    def for_perceiver(cls, vision_dim: int, **changes) -> "ResamplerConfig":
        """The paper's baseline adapter: a deep resampler as wide as the ViT (then a linear map to
        the LM), no final LayerNorm; with depth=1 the VAdapter's stage-2 front."""
        return cls(
            **{
                "input_dim": vision_dim,
                "dim": vision_dim,
                "depth": PERCEIVER_DEPTH,
                "num_latents": NUM_LATENTS,
                "num_heads": PERCEIVER_HEADS,
                "final_norm": False,
                **changes,
            }
        )

    @classmethod
    def for_vadapter_front(cls, vision_dim: int, **changes) -> "ResamplerConfig":
        """The paper's stage-2 front, a new 1-layer perceiver, ending in a LayerNorm unlike the
        baseline: the tiny LM behind it was aligned in stage 1 to the pooler's LayerNormed latents
        (make paper's Table 4 measures the front without it)."""
        return cls.for_perceiver(vision_dim, **{"depth": 1, "final_norm": True, **changes})


NUM_LATENTS = 16  # visual tokens an adapter hands the LM, at toy scale
PERCEIVER_DEPTH, PERCEIVER_HEADS = 6, 4  # the baseline's layers and heads


# ---------------------------------------------------------------------------------------------
# Blocks (no biases in the linear layers, as in the open Flamingo implementations)
# ---------------------------------------------------------------------------------------------


class LatentCrossAttention(nn.Module):
    """Latents attend to [features; latents]: Flamingo lets the latents also see each other, so
    they can divide the features among themselves. The CoCa pooler's queries see the features
    only."""

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.num_heads, self.backend, self.latents_in_keys = (
            config.num_heads,
            config.attention_backend,
            config.latents_in_keys,
        )
        self.feature_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.latent_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.query = nn.Linear(config.dim, config.dim, bias=False)
        self.key_value = nn.Linear(config.dim, 2 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)
        # Set True to keep the attention weights of each forward in `last_attention`
        # (B, H, L, M [+ L]), for drawing where the latents look (evaluation/attention_maps.py).
        self.record_attention, self.last_attention = False, None

    def forward(self, features, latents, mask=None):  # (B, M, D), (B, L, D) -> (B, L, D)
        B, L, D = latents.shape
        features, latents = self.feature_norm(features), self.latent_norm(latents)
        q = self.query(latents).view(B, L, self.num_heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        # (B, M [+ L], D)
        keys_and_values = (
            torch.cat([features, latents], dim=1) if self.latents_in_keys else features
        )
        # 2 x (B, H, M [+ L], Dh)
        k, v = (
            self.key_value(keys_and_values)
            .view(B, -1, 2, self.num_heads, D // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        if self.record_attention:
            out, self.last_attention = attention_with_weights(q, k, v, mask)
        else:
            out = attention(q, k, v, mask, backend=self.backend)  # (B, H, L, Dh)
        return self.out(out.transpose(1, 2).reshape(B, L, D))


def attention_with_weights(q, k, v, mask=None):
    """Attention in plain math that also returns its weights, softmax(q k^T / sqrt(Dh)) with the
    mask applied: (out (B, H, L, Dh), weights (B, H, L, S), each row summing to one over the keys
    the mask allows, zero on the others). The drawn weights are then the ones that made the
    output, whatever kernel `attention` would have chosen."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, L, S)
    if mask is not None:
        allowed = mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)  # (B or 1, 1, L, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v, weights.detach()


class FeedForward(nn.Module):
    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.up = nn.Linear(config.dim, config.mlp_ratio * config.dim, bias=False)
        self.down = nn.Linear(config.mlp_ratio * config.dim, config.dim, bias=False)

    def forward(self, x):  # (B, L, D)
        return self.down(F.gelu(self.up(self.norm(x))))


class ResamplerLayer(nn.Module):
    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.attention = LatentCrossAttention(config)
        self.feed_forward = FeedForward(config) if config.feed_forward else None

    def forward(self, features, latents, mask=None):  # (B, M, D), (B, L, D) -> (B, L, D)
        latents = latents + self.attention(features, latents, mask)
        return latents if self.feed_forward is None else latents + self.feed_forward(latents)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class PerceiverResampler(nn.Module):
    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.config = config
        # (L, D)
        self.latents = nn.Parameter(torch.empty(config.num_latents, config.dim).normal_(0.0, 0.02))
        self.input_projection = (
            nn.Linear(config.input_dim, config.dim, bias=False)
            if config.input_dim != config.dim
            else nn.Identity()
        )
        # Zero at the start, so that a one-frame video is read exactly as the image it is, and
        # frame order is learned only as far as the video data asks for it.
        # (T_max, 1, D)
        self.time_embedding = nn.Parameter(torch.zeros(config.max_frames, 1, config.dim))
        self.layers = nn.ModuleList(ResamplerLayer(config) for _ in range(config.depth))
        self.final_norm = (
            nn.LayerNorm(config.dim, eps=config.norm_eps) if config.final_norm else nn.Identity()
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
        query_key_std = config.query_key_std or config.dim**-0.5
        for layer in self.layers:
            nn.init.normal_(layer.attention.query.weight, 0.0, query_key_std)
            keys = layer.attention.key_value.weight[: config.dim]  # (D, D): the keys' half
            nn.init.normal_(keys, 0.0, query_key_std)

    def forward(self, features, num_frames=None):
        """Image features (B, N, Din) or video features (B, T, N, Din) -> latents (B, num_latents,
        D). num_frames (B,): each video's real frames; the frames after them are batch padding,
        which no latent attends to, so a video gives the same latents alone or padded in a batch."""
        if features.dim() not in (3, 4) or features.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"the resampler expects features (B, N, {self.config.input_dim}) or (B, T, N, "
                f"{self.config.input_dim}); "
                f"got shape {tuple(features.shape)}"
            )
        if features.dim() == 3:
            # An image is a one-frame video (as in Flamingo): both paths share time_embedding[0],
            # and
            # every parameter takes part in every batch, as DDP requires.
            features = features[:, None]  # (B, 1, N, Din)
        frames = features.shape[1]
        if frames > self.config.max_frames:
            raise ValueError(
                f"video has {frames} frames but the resampler has time embeddings for "
                f"max_frames={self.config.max_frames}"
            )
        # (B, T, N, D); (T, 1, D) broadcasts
        features = self.input_projection(features) + self.time_embedding[:frames]
        features = features.flatten(1, 2)  # (B, T * N, D): one set over all frames
        latents = self.latents.expand(features.shape[0], -1, -1)  # (B, L, D)
        mask = None
        if num_frames is not None:  # a video batch: masked whether or not a video is padded,
            # since asking would be a host sync (and a graph break in a compiled model)
            real_keys = num_frames.to(features.device).long() * (features.shape[1] // frames)
            padded_end = features.shape[1]  # a shape, not data: the latents' keys come after
            # Keys are [T * N frame features; L latents]: the padded frames' keys are left out.
            mask = Mask(
                "frame_padding",
                lambda b, h, q, kv: (kv < real_keys[b]) | (kv >= padded_end),
                (real_keys,),
            )
        for layer in self.layers:
            latents = layer(features, latents, mask)
        return self.final_norm(latents)  # (B, L, D)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_config(config: ResamplerConfig) -> None:
    """Every field in its range, each error naming the field."""
    for name in (
        "input_dim",
        "dim",
        "depth",
        "num_latents",
        "num_heads",
        "mlp_ratio",
        "max_frames",
        "norm_eps",
    ):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}={getattr(config, name)} must be positive")
    if config.dim % config.num_heads != 0:
        raise ValueError(
            f"num_heads={config.num_heads} does not divide dim={config.dim}: each head gets dim "
            "// num_heads channels"
        )
    if config.attention_backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"attention_backend={config.attention_backend!r}; choose one of {['auto', *BACKENDS]}"
        )

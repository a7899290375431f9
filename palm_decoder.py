"""PaLM decoder: the "tiny LM" adapter and the "large LM" boxes of Figure 2 (one class, two sizes).

A PaLM-style decoder-only language model that can read a prefix of embeddings (the visual
tokens) placed before the text. PaLM block facts: attention and MLP run in parallel on one shared
norm in a single residual step (`x + attn(norm(x)) + mlp(norm(x))`), SwiGLU MLP, multi-query
attention (one shared key/value head; grouped-query allowed), rotary position embeddings, no
biases, input and output embeddings shared. The norm is PaLM's LayerNorm without bias.

Batched prefill pads on the left ([pads][prefix][prompt]); rotary positions count from the first
real slot. `PaLMDecoder.from_pretrained(folder)` loads a local Hugging Face Gemma (v1) or
Llama-architecture folder into this same class; the config fields after `prefix_attention` say where
those decoders differ from PaLM (sequential block, RMSNorm, GeGLU, embedding scale, untied output
head), PaLM's choice the default; folder reading and weight tables live in support/hf_weights.py.
"""

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, and_masks, attention, causal, left_padding, prefix_lm
from support import hf_weights
from vit import ACTIVATIONS, num_parameters


@dataclass
class PaLMConfig:
    vocab_size: int = 32000
    dim: int = 768
    depth: int = 10
    num_heads: int = 12
    num_kv_heads: int = (
        1  # 1 = multi-query attention (PaLM); between 1 and num_heads = grouped-query
    )
    head_dim: int | None = None  # None: dim // num_heads
    mlp_hidden_dim: int | None = None  # SwiGLU hidden width; None: 4 * dim, as in PaLM
    max_seq_len: int = 1024  # prefix + text
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    attention_backend: str = "auto"
    prefix_attention: str = "causal"  # "causal" (as pretrained) | "bidirectional" over the prefix
    block: str = (
        "parallel"  # parallel (PaLM: x + attn(norm(x)) + mlp(norm(x))) | sequential (Llama, Gemma)
    )
    norm: str = "layernorm"  # layernorm (without bias, PaLM) | rmsnorm (Llama, Gemma)
    norm_scale_plus_one: bool = (
        False  # RMSNorm scale stored as an offset from one: x_normed * (1 + weight) (Gemma)
    )
    mlp_activation: str = "silu"  # the gate's activation: silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)
    scale_embeddings: bool = False  # token embeddings * sqrt(dim) (Gemma); never the prefix
    tie_embeddings: bool = True  # False: a separate output head (Llama's lm_head)

    def __post_init__(self):
        for name in (
            "vocab_size",
            "dim",
            "depth",
            "num_heads",
            "num_kv_heads",
            "max_seq_len",
            "rope_base",
            "norm_eps",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in ("head_dim", "mlp_hidden_dim"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be positive (or None for the default)"
                )
        if self.head_dim is None and self.dim % self.num_heads != 0:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide dim={self.dim}: each head gets dim "
                "// num_heads "
                "channels; change num_heads or set head_dim explicitly"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}: "
                "each key/value head must serve the same number of query heads"
            )
        if (self.head_dim or self.dim // self.num_heads) % 2 != 0:
            raise ValueError(
                f"head size {self.head_dim or self.dim // self.num_heads} must be even: rotary "
                "rotates channel pairs"
            )
        if self.attention_backend not in ("auto", *BACKENDS):
            raise ValueError(
                f"attention_backend={self.attention_backend!r}; choose one of {['auto', *BACKENDS]}"
            )
        if self.prefix_attention not in ("causal", "bidirectional"):
            raise ValueError(
                f"prefix_attention={self.prefix_attention!r}; choose 'causal' or 'bidirectional'"
            )
        for name, choices in (
            ("block", ("parallel", "sequential")),
            ("norm", ("layernorm", "rmsnorm")),
            ("mlp_activation", tuple(ACTIVATIONS)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {list(choices)}")
        if self.norm_scale_plus_one and self.norm != "rmsnorm":
            raise ValueError("norm_scale_plus_one=True is Gemma's RMSNorm; it needs norm='rmsnorm'")


# Vocab: PaLM2's 256k sentencepiece vocabulary would be ~200M embedding parameters on its own, so
# the paper-size presets use a 32k vocabulary. tiny-108m: 10 layers of 8.36M (dim 768, MQA, SwiGLU
# 4*dim) = 83.6M plus 24.6M of tied embeddings = 108.1M. Toy presets: scripts set vocab_size from
# the tokenizer.
PALM_CONFIGS = {
    "toy-tiny": PaLMConfig(vocab_size=1024, dim=128, depth=2, num_heads=4, max_seq_len=256),
    "toy-large": PaLMConfig(vocab_size=1024, dim=256, depth=4, num_heads=8, max_seq_len=256),
    "tiny-108m": PaLMConfig(vocab_size=32000, dim=768, depth=10, num_heads=12, max_seq_len=1024),
    "1b": PaLMConfig(vocab_size=32000, dim=2048, depth=16, num_heads=16, max_seq_len=2048),
}


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding. x (B, H, S, Dh), positions (B, S) -> (B, H, S, Dh).

    Channel pair (i, i + Dh/2) is rotated by the angle position * base^(-2i/Dh), so the dot product
    of a rotated query and key depends only on the difference of their positions."""
    half = x.shape[-1] // 2
    inverse_frequency = base ** (
        -torch.arange(half, device=x.device, dtype=torch.float32) / half
    )  # (Dh/2,)
    angles = positions.float()[:, None, :, None] * inverse_frequency  # (B, 1, S, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)  # 2 x (B, H, S, Dh/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def projection_widths(config: PaLMConfig) -> tuple[int, int, int, int, int]:
    """Widths of a block's input projections: q (H * Dh), k and v (Hkv * Dh each), gate and up
    (hidden each)."""
    head_dim, hidden = (
        config.head_dim or config.dim // config.num_heads,
        config.mlp_hidden_dim or 4 * config.dim,
    )
    return (
        config.num_heads * head_dim,
        config.num_kv_heads * head_dim,
        config.num_kv_heads * head_dim,
        hidden,
        hidden,
    )


def self_attention(q, k, v, positions, mask, past, config: PaLMConfig):
    """Multi-query (or grouped-query) attention with rotary positions, between the projections: q
    (B, S, H * Dh), k and v (B, S, Hkv * Dh), positions (B, S), past: cached (k, v) or None -> the
    heads' outputs
    (B, S, H * Dh) for the output projection, all (k, v) (B, Hkv, S_past + S, Dh)."""
    B, S, heads_width = q.shape
    head_dim = heads_width // config.num_heads
    q = q.view(B, S, config.num_heads, head_dim).transpose(1, 2)  # (B, H, S, Dh)
    k, v = (t.view(B, S, -1, head_dim).transpose(1, 2) for t in (k, v))  # 2 x (B, Hkv, S, Dh)
    q, k = (
        apply_rotary(q, positions, config.rope_base),
        apply_rotary(k, positions, config.rope_base),
    )
    if past is not None:
        k, v = (
            torch.cat([past[0], k], dim=2),
            torch.cat([past[1], v], dim=2),
        )  # (B, Hkv, S_past + S, Dh)
    out = attention(q, k, v, mask, config.attention_backend)  # (B, H, S, Dh)
    return out.transpose(1, 2).reshape(B, S, heads_width), (k, v)


class RMSNorm(nn.Module):
    """x / rms(x) * scale, in float32 (Llama, Gemma). Gemma stores the scale as an offset from one,
    scale = 1 + weight; Llama rounds x / rms(x) to the input dtype before scaling, the same in
    float32."""

    def __init__(self, dim: int, eps: float, scale_plus_one: bool = False):
        super().__init__()
        self.eps, self.scale_plus_one = eps, scale_plus_one
        self.weight = nn.Parameter(torch.zeros(dim) if scale_plus_one else torch.ones(dim))

    def forward(self, x):  # (..., D)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        scale = 1.0 + self.weight.float() if self.scale_plus_one else self.weight.float()
        return (normed * scale).to(x.dtype)


def make_norm(config: PaLMConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.dim, config.norm_eps, config.norm_scale_plus_one)
    return nn.LayerNorm(config.dim, eps=config.norm_eps, bias=False)


class PaLMBlock(nn.Module):
    """Parallel attention and MLP on one shared norm, x + attn(norm(x)) + mlp(norm(x)), computed as
    PaLM computes it (the reason for the parallel form): one matmul makes the queries, the shared
    key/value head and the MLP's gate and up, and one writes attention-out and MLP-down together,
    [heads' outputs, activation(gate) * up] @ [W_out | W_down]^T = W_out heads + W_down hidden."""

    def __init__(self, config: PaLMConfig):
        super().__init__()
        self.config, self.widths = config, projection_widths(config)
        self.norm = make_norm(config)
        self.in_projection = nn.Linear(
            config.dim, sum(self.widths), bias=False
        )  # [W_q; W_k; W_v; W_gate; W_up]
        self.out_projection = nn.Linear(
            self.widths[0] + self.widths[4], config.dim, bias=False
        )  # [W_out | W_down]
        self.activation = ACTIVATIONS[config.mlp_activation]
        self.register_load_state_dict_pre_hook(
            hf_weights.fuse_separate_projections
        )  # older checkpoints

    def forward(self, x, positions, mask, past=None):
        """x (B, S, D), positions (B, S), past: cached (k, v) or None -> (B, S, D), all (k, v)."""
        q, k, v, gate, up = self.in_projection(self.norm(x)).split(
            self.widths, dim=-1
        )  # (B, S, each width)
        heads, key_value = self_attention(q, k, v, positions, mask, past, self.config)
        return x + self.out_projection(
            torch.cat([heads, self.activation(gate) * up], dim=-1)
        ), key_value


class SequentialBlock(nn.Module):
    """Llama / Gemma: x + attn(norm(x)), then x + mlp(norm(x)), each step with its own norm and its
    own projections: attention.query, .key_value, .out; mlp.gate_and_up, .down. GeGLU for Gemma."""

    def __init__(self, config: PaLMConfig):
        super().__init__()
        self.config, (heads_width, kv_width, _, _, hidden) = config, projection_widths(config)
        D, linear = config.dim, lambda inputs, outputs: nn.Linear(inputs, outputs, bias=False)
        self.attention_norm, self.mlp_norm = make_norm(config), make_norm(config)
        self.attention = nn.ModuleDict(
            dict(
                query=linear(D, heads_width),
                key_value=linear(D, 2 * kv_width),
                out=linear(heads_width, D),
            )
        )
        self.mlp = nn.ModuleDict(dict(gate_and_up=linear(D, 2 * hidden), down=linear(hidden, D)))
        self.activation = ACTIVATIONS[config.mlp_activation]

    def forward(self, x, positions, mask, past=None):
        normed = self.attention_norm(x)
        k, v = self.attention.key_value(normed).chunk(2, dim=-1)  # 2 x (B, S, Hkv * Dh)
        heads, key_value = self_attention(
            self.attention.query(normed), k, v, positions, mask, past, self.config
        )
        x = x + self.attention.out(heads)
        gate, up = self.mlp.gate_and_up(self.mlp_norm(x)).chunk(2, dim=-1)  # 2 x (B, S, hidden)
        return x + self.mlp.down(self.activation(gate) * up), key_value


@dataclass
class KVCache:
    """Keys and values of every layer for a left-padded batch; grows by one slot per decode step.

    Beam search keeps one row per beam and calls `reorder` after choosing the surviving beams."""

    keys: list  # per layer (B, Hkv, S, Dh), rotary already applied
    values: list  # per layer (B, Hkv, S, Dh)
    pad_lengths: torch.Tensor  # (B,) padding slots at the start of each row
    prefix_len: int  # visual-token slots
    prefix_starts: torch.Tensor  # (B,) the slot where each row's visual tokens start

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def reorder(self, indices: torch.Tensor) -> None:
        """Row b becomes old row indices[b]. indices (B_new,) long."""
        self.keys = [k.index_select(0, indices) for k in self.keys]
        self.values = [v.index_select(0, indices) for v in self.values]
        self.pad_lengths = self.pad_lengths.index_select(0, indices)
        self.prefix_starts = self.prefix_starts.index_select(0, indices)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class PaLMDecoder(nn.Module):
    def __init__(self, config: PaLMConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(
            config.vocab_size, config.dim
        )  # also the output layer when tied
        block = PaLMBlock if config.block == "parallel" else SequentialBlock
        self.blocks = nn.ModuleList(block(config) for _ in range(config.depth))
        self.final_norm = make_norm(config)
        self.output_head = (
            None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        )
        for name, parameter in self.named_parameters():
            if parameter.dim() == 2:
                # nanoGPT/GPT-2: projections into the residual stream scaled down, its variance flat
                # with depth
                residual = name.endswith(
                    ("attention.out.weight", "mlp.down.weight", "out_projection.weight")
                )
                nn.init.normal_(
                    parameter, 0.0, 0.02 / math.sqrt(2 * config.depth) if residual else 0.02
                )

    def _token_embeddings(self, input_ids):
        """(B, L) -> (B, L, D). Gemma scales by sqrt(dim), the factor first rounded to the model
        dtype
        as its reference does. The prefix is never scaled: the adapter learns the scale it needs."""
        x = self.token_embedding(input_ids)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.dim**0.5, dtype=x.dtype)
        return x

    def _embed(self, input_ids, prefix, prefix_at=None):
        """ids[:, :at] + prefix + ids[:, at:] -> (x (B, P + L, D), P, at (B,)). The prefix (the
        visual tokens) goes before text position prefix_at (an int or (B,) per row; default 0,
        before
        all the text): the paper's prompt puts them inside the text."""
        if prefix is not None and (prefix.dim() != 3 or prefix.shape[-1] != self.config.dim):
            raise ValueError(
                f"prefix must be (B, P, {self.config.dim}) embeddings; got shape "
                f"{tuple(prefix.shape)}"
            )
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (B, L) token ids; got shape {tuple(input_ids.shape)}"
            )
        if input_ids is None and prefix is None:
            raise ValueError("give input_ids, a prefix, or both")
        if input_ids is not None and prefix is not None and prefix.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"prefix has batch {prefix.shape[0]} but input_ids has batch {input_ids.shape[0]}"
            )
        reference = input_ids if input_ids is not None else prefix
        B, L = reference.shape[0], 0 if input_ids is None else input_ids.shape[1]
        at = (
            torch.as_tensor(0 if prefix_at is None else prefix_at, device=reference.device)
            .long()
            .expand(B)
        )
        checkable = (
            at.device.type == "cpu" and not torch.compiler.is_compiling()
        )  # no host sync, no graph break
        if checkable and ((at < 0) | (at > L)).any():
            raise ValueError(
                f"prefix_at={at.tolist()} must lie in 0..{L} (the number of text positions)"
            )
        prefix_len = 0 if prefix is None else prefix.shape[1]
        if prefix_len + L > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {prefix_len} prefix + {L} text positions is longer than "
                f"max_seq_len={self.config.max_seq_len}"
            )
        if input_ids is None:
            return prefix.to(self.token_embedding.weight.dtype), prefix_len, at
        text = self._token_embeddings(input_ids)  # (B, L, D)
        if prefix is None:
            return text, 0, at
        if prefix_at is None:
            return torch.cat([prefix.to(text.dtype), text], dim=1), prefix_len, at  # (B, P + L, D)
        x = torch.cat([text, prefix.to(text.dtype)], dim=1)  # (B, L + P, D)
        slots, start = torch.arange(L + prefix_len, device=x.device), at[:, None]
        # where each slot reads from in [text; prefix]: text before the span, the prefix, text after
        # it
        source = torch.where(
            slots < start,
            slots,
            torch.where(slots < start + prefix_len, L + slots - start, slots - prefix_len),
        )
        return (
            x.gather(1, source[..., None].expand(-1, -1, x.shape[-1])),
            prefix_len,
            at,
        )  # (B, P + L, D)

    def _mask(self, batch, prefix_len, prefix_starts, pad_lengths, device, query_offset=0):
        """Causal (or bidirectional over the visual tokens), minus the left padding when there is
        any."""
        if self.config.prefix_attention == "bidirectional" and prefix_len > 0:
            visible = prefix_lm(prefix_starts + prefix_len, query_offset, prefix_starts)
        else:
            visible = causal(query_offset)
        if pad_lengths is None:
            return visible
        return and_masks(left_padding(pad_lengths, query_offset), visible)

    def _run_blocks(self, x, positions, mask, cache=None):
        """x (B, S, D) -> final-normed hidden states (B, S, D); appends to cache when given."""
        for i, block in enumerate(self.blocks):
            past = (
                None if cache is None or cache.keys[i] is None else (cache.keys[i], cache.values[i])
            )
            x, (k, v) = block(x, positions, mask, past)
            if cache is not None:
                cache.keys[i], cache.values[i] = k, v
        return self.final_norm(x)

    def _logits(self, hidden):  # (..., D) -> (..., V)
        return F.linear(
            hidden,
            self.token_embedding.weight if self.output_head is None else self.output_head.weight,
        )

    def forward(
        self,
        input_ids=None,
        prefix=None,
        loss_mask=None,
        *,
        prefix_at=None,
        return_hidden=False,
        reduction="mean",
    ):
        """input_ids (B, L) long, prefix (B, P, D) visual tokens placed before text position
        prefix_at.

        Returns the final-normed hidden states (B, P + L, D) when return_hidden, else
        (logits (B, L, V), loss): logits[:, i] predicts the text token after token i (across the
        visual tokens when they come between). loss_mask (B, L): True where token input_ids[b, i]
        is a target, predicted from the slot before it (a prefix slot for the token right after
        the prefix). loss is None without loss_mask; reduction "mean" averages over the selected
        tokens, "sum" adds them (the trainer divides by its global token count)."""
        x, prefix_len, at = self._embed(input_ids, prefix, prefix_at)
        B, S, D = x.shape
        positions = torch.arange(S, device=x.device).expand(B, S)
        hidden = self._run_blocks(
            x, positions, self._mask(B, prefix_len, at, None, x.device)
        )  # (B, P + L, D)
        if return_hidden:
            return hidden
        text = torch.arange(S - prefix_len, device=x.device)  # (L,)
        text_slots = text + prefix_len * (text >= at[:, None])  # (B, L): where each text token sits
        # The slot that predicts each text token, then the last slot (what follows the text).
        predicting = torch.cat(
            [text_slots - 1, torch.full((B, 1), S - 1, device=x.device)], dim=1
        )  # (B, L + 1)
        predictions = self._logits(
            hidden.gather(1, predicting.clamp(min=0)[..., None].expand(-1, -1, D))
        )  # (B, L + 1, V)
        if loss_mask is None:
            return predictions[:, 1:], None
        if input_ids is None or loss_mask.shape != input_ids.shape:
            raise ValueError(
                f"loss_mask has shape {tuple(loss_mask.shape)} but input_ids has shape "
                f"{None if input_ids is None else tuple(input_ids.shape)}"
            )
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction={reduction!r}; choose 'mean' or 'sum'")
        loss_mask = loss_mask.bool()
        if (loss_mask & (predicting[:, :-1] < 0)).any():
            raise ValueError(
                "loss_mask[:, 0] is True but no slot comes before token 0 to predict it (no "
                "prefix before it)"
            )
        # ignore_index rather than gathering the selected rows: no copy of the logits, no scatter
        # back
        targets = input_ids.masked_fill(~loss_mask, -100)
        loss = F.cross_entropy(
            predictions[:, :-1].flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=-100,
            reduction=reduction,
        )
        return predictions[:, 1:], loss

    # -----------------------------------------------------------------------------------------
    # Generation: a step-level API (prefill, decode_step) that greedy, sampling and beam search
    # share.
    # -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, input_ids=None, prefix=None, pad_lengths=None, prefix_at=None):
        """Run the prompts once and cache their keys and values.

        input_ids (B, L) left-padded prompts (the first pad_lengths[b] ids of row b are padding),
        prefix (B, P, D) placed before position prefix_at[b] of row b's prompt (int, list or (B,),
        counted without the padding; default 0) -> (logits for the next token (B, V), KVCache).
        A row is laid out [pads][prompt before][prefix][prompt after]: its last slot is its last
        real one."""
        B = (input_ids if input_ids is not None else prefix).shape[0]
        device = (input_ids if input_ids is not None else prefix).device
        pad_lengths = (
            torch.zeros(B, dtype=torch.long, device=device)
            if pad_lengths is None
            else pad_lengths.to(device).long()
        )
        at = torch.as_tensor(0 if prefix_at is None else prefix_at, device=device).long().expand(B)
        x, prefix_len, starts = self._embed(
            input_ids, prefix, None if prefix is None else pad_lengths + at
        )
        slots = torch.arange(x.shape[1], device=device).expand(B, -1)
        cache = KVCache(
            [None] * self.config.depth, [None] * self.config.depth, pad_lengths, prefix_len, starts
        )
        hidden = self._run_blocks(
            x,
            slots - pad_lengths[:, None],
            self._mask(B, prefix_len, starts, pad_lengths, device),
            cache,
        )
        return self._logits(hidden[:, -1]), cache

    @torch.no_grad()
    def decode_step(self, token_ids, cache: KVCache):
        """Append one token per row (B,) to the cache -> logits for the token after it (B, V)."""
        if cache.length >= self.config.max_seq_len:
            raise ValueError(
                f"the cache already holds {cache.length} slots; "
                f"max_seq_len={self.config.max_seq_len}"
            )
        x = self._token_embeddings(token_ids[:, None])  # (B, 1, D)
        positions = (cache.length - cache.pad_lengths)[
            :, None
        ]  # (B, 1): unpadded position of the new token
        mask = self._mask(
            x.shape[0],
            cache.prefix_len,
            cache.prefix_starts,
            cache.pad_lengths,
            x.device,
            query_offset=cache.length,
        )
        return self._logits(self._run_blocks(x, positions, mask, cache)[:, -1])

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32) -> "PaLMDecoder":
        """A local Hugging Face GemmaForCausalLM (v1) or LlamaForCausalLM folder (config.json +
        *.safetensors), logits
        equal to transformers'. Only local files are read. Its tokenizer: `data.Tokenizer("hf:" +
        folder)`."""
        return hf_weights.load_lm(folder, lambda fields: cls(PaLMConfig(**fields)), dtype)


def preset_table() -> str:
    """Every preset's shape and parameter count (built on the meta device: no memory, no init)."""
    lines = [
        f"{'preset':<10} {'vocab':>6} {'dim':>5} {'depth':>5} {'heads':>5} {'kv':>3} {'mlp':>6} "
        f"{'params':>14}"
    ]
    for name, config in PALM_CONFIGS.items():
        with torch.device("meta"):
            count = num_parameters(PaLMDecoder(config))
        mlp = config.mlp_hidden_dim or 4 * config.dim
        lines.append(
            f"{name:<10} {config.vocab_size:>6} {config.dim:>5} {config.depth:>5} "
            f"{config.num_heads:>5} {config.num_kv_heads:>3} {mlp:>6} {count:>14,}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="PaLM decoder presets")
    parser.add_argument("--list", action="store_true", help="print every preset's parameter count")
    if parser.parse_args().list:
        print(preset_table())
    else:
        parser.print_help()

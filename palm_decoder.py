"""PaLM decoder: the "tiny LM" adapter and the "large LM" boxes of Figure 2 (one class, two sizes).

A decoder-only language model that reads embeddings (the visual tokens) placed inside its text.
The PaLM block: attention and MLP run in parallel on one shared norm, in one residual step
(`x + attn(norm(x)) + mlp(norm(x))`); SwiGLU MLP; multi-query attention (one shared key/value
head; grouped-query allowed); rotary position embeddings; no biases; LayerNorm without bias;
input and output embeddings shared.

Reading order: the config, the block, the decoder (the training forward and the parts that
evaluation/decoding.py's prefill / decode_step reuse), the config checks, the presets; the
argument checks live in support/decoder_inputs.py. Decoders read from Hugging Face folders (Llama,
Gemma) reuse this class through the last fields of PaLMConfig; their block, norm and weight tables
live in support/hf_decoder.py.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attention import BACKENDS, and_masks, attention, causal, left_padding, prefix_lm
from support import decoder_inputs, hf_decoder


@dataclass
class PaLMConfig:
    vocab_size: int = 32000
    dim: int = 768
    depth: int = 10
    num_heads: int = 12
    num_kv_heads: int = 1  # 1: multi-query attention (PaLM); up to num_heads: grouped-query
    head_dim: int | None = None  # None: dim // num_heads
    mlp_hidden_dim: int | None = None  # SwiGLU hidden width; None: 4 * dim, as in PaLM
    max_seq_len: int = 1024  # visual tokens + text
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    attention_backend: str = "auto"
    prefix_attention: str = "causal"  # "causal" (as pretrained) | "bidirectional" over the visual
    # Where Llama and Gemma differ from PaLM (support/hf_decoder.py); PaLM's choices the defaults.
    block: str = "parallel"  # parallel (PaLM) | sequential (Llama, Gemma)
    norm: str = "layernorm"  # layernorm without bias (PaLM) | rmsnorm (Llama, Gemma)
    norm_scale_plus_one: bool = False  # RMSNorm scale stored as 1 + weight (Gemma)
    mlp_activation: str = "silu"  # the gate's activation: silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)
    scale_embeddings: bool = False  # token embeddings * sqrt(dim) (Gemma); never the visual tokens
    tie_embeddings: bool = True  # False: a separate output head (Llama's lm_head)

    def __post_init__(self):
        check_config(self)


class PaLMBlock(nn.Module):
    """Parallel attention and MLP on one shared norm, x + attn(norm(x)) + mlp(norm(x)), computed as
    PaLM computes it (the reason for the parallel form): one matmul makes the queries, the shared
    key/value head and the MLP's gate and up, and one writes attention-out and MLP-down together,
    [heads' outputs, activation(gate) * up] @ [W_out | W_down]^T = W_out heads + W_down hidden."""

    def __init__(self, config: PaLMConfig):
        super().__init__()
        self.config, self.widths = config, projection_widths(config)
        self.norm = make_norm(config)
        # [W_q; W_k; W_v; W_gate; W_up] and [W_out | W_down]
        self.in_projection = nn.Linear(config.dim, sum(self.widths), bias=False)
        self.out_projection = nn.Linear(self.widths[0] + self.widths[4], config.dim, bias=False)
        self.activation = GATE_ACTIVATIONS[config.mlp_activation]
        # checkpoints written before the projections were fused load too
        self.register_load_state_dict_pre_hook(hf_decoder.fuse_separate_projections)

    def forward(self, x, positions, mask, past=None):
        """x (B, S, D), positions (B, S), past: cached (k, v) or None -> (B, S, D), all (k, v)."""
        projected = self.in_projection(self.norm(x))  # (B, S, sum of the widths)
        q, k, v, gate, up = projected.split(self.widths, dim=-1)
        heads, key_value = self_attention(q, k, v, positions, mask, past, self.config)
        hidden = torch.cat([heads, self.activation(gate) * up], dim=-1)  # (B, S, H * Dh + hidden)
        return x + self.out_projection(hidden), key_value


def self_attention(q, k, v, positions, mask, past, config: PaLMConfig):
    """Multi-query (or grouped-query) attention with rotary positions, between the projections.

    q (B, S, H * Dh), k and v (B, S, Hkv * Dh), positions (B, S), past: cached (k, v) or None ->
    the heads' outputs (B, S, H * Dh), all (k, v) (B, Hkv, S_past + S, Dh)."""
    B, S, heads_width = q.shape
    head_dim = heads_width // config.num_heads
    q = q.view(B, S, config.num_heads, head_dim).transpose(1, 2)  # (B, H, S, Dh)
    k, v = (t.view(B, S, -1, head_dim).transpose(1, 2) for t in (k, v))  # 2 x (B, Hkv, S, Dh)
    q = apply_rotary(q, positions, config.rope_base)
    k = apply_rotary(k, positions, config.rope_base)
    if past is not None:
        k = torch.cat([past[0], k], dim=2)  # (B, Hkv, S_past + S, Dh)
        v = torch.cat([past[1], v], dim=2)
    out = attention(q, k, v, mask, config.attention_backend)  # (B, H, S, Dh)
    return out.transpose(1, 2).reshape(B, S, heads_width), (k, v)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding. x (B, H, S, Dh), positions (B, S) -> (B, H, S, Dh).

    Channel pair (i, i + Dh/2) is rotated by the angle position * base^(-2i/Dh), so the dot product
    of a rotated query and key depends only on the difference of their positions."""
    half = x.shape[-1] // 2
    channel_pairs = torch.arange(half, device=x.device, dtype=torch.float32)  # (Dh/2,)
    inverse_frequency = base ** (-channel_pairs / half)
    angles = positions.float()[:, None, :, None] * inverse_frequency  # (B, 1, S, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)  # 2 x (B, H, S, Dh/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def projection_widths(config: PaLMConfig) -> tuple[int, int, int, int, int]:
    """Widths of a block's input projections: q (H * Dh), k and v (Hkv * Dh each), gate and up
    (hidden each)."""
    head_dim = config.head_dim or config.dim // config.num_heads
    hidden = config.mlp_hidden_dim or 4 * config.dim
    kv_width = config.num_kv_heads * head_dim
    return config.num_heads * head_dim, kv_width, kv_width, hidden, hidden


def make_norm(config: PaLMConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return hf_decoder.RMSNorm(config.dim, config.norm_eps, config.norm_scale_plus_one)
    return nn.LayerNorm(config.dim, eps=config.norm_eps, bias=False)


GATE_ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class PaLMDecoder(nn.Module):
    def __init__(self, config: PaLMConfig):
        super().__init__()
        self.config = config
        # also the output layer when the embeddings are tied
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(make_block(config) for _ in range(config.depth))
        self.final_norm = make_norm(config)
        # training: each block's activations recomputed in the backward, not kept (run_blocks)
        self.checkpoint_blocks = False
        self.output_head = None
        if not config.tie_embeddings:
            self.output_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        residual_projections = ("attention.out.weight", "mlp.down.weight", "out_projection.weight")
        for name, parameter in self.named_parameters():
            if parameter.dim() == 2:
                # nanoGPT/GPT-2: projections into the residual stream scaled down, so that its
                # variance stays flat with depth
                residual = name.endswith(residual_projections)
                std = 0.02 / math.sqrt(2 * config.depth) if residual else 0.02
                nn.init.normal_(parameter, 0.0, std)

    def forward(
        self,
        input_ids=None,
        prefix=None,
        loss_mask=None,
        *,
        visual_start=None,
        return_hidden=False,
        return_logits=True,
        reduction="mean",
        num_targets=None,
    ):
        """input_ids (B, L) long; prefix (B, P, D): the visual tokens, placed before text position
        visual_start (an int or (B,); default 0, before all the text).

        Returns the final-normed hidden states (B, P + L, D) when return_hidden, else
        (logits (B, L, V), loss): logits[:, i] predicts the text token after token i (across the
        visual tokens when they come between). loss_mask (B, L): True where token input_ids[b, i]
        is a target, predicted from the slot before it (a visual slot for the token right after
        the visual tokens). loss is None without loss_mask; with reduction="sum" it is the sum
        over the target tokens (trainer.forward_backward explains the normalisation), with
        "mean" their mean. return_logits=False (training): logits is None, and the output layer
        runs at the target tokens' slots only. num_targets: loss_mask's number of targets, when the
        caller knows it without asking the device (data.collate counts them on the host): the
        targets are then found without a host sync, and a compiled model needs no graph break."""
        self.check_inputs(input_ids, prefix, visual_start, loss_mask, reduction, num_targets)
        x, prefix_len, visual_start = self.embed(input_ids, prefix, visual_start)
        B, S, D = x.shape
        positions = torch.arange(S, device=x.device).expand(B, S)
        mask = self.attention_mask(B, prefix_len, visual_start, None, x.device)
        hidden = self.run_blocks(x, positions, mask)  # (B, P + L, D)
        if return_hidden:
            return hidden
        text = torch.arange(S - prefix_len, device=x.device)  # (L,)
        text_slots = text + prefix_len * (text >= visual_start[:, None])  # (B, L): token slots
        # The slot that predicts each text token, then the last slot (what follows the text).
        last = torch.full((B, 1), S - 1, device=x.device)
        predicting = torch.cat([text_slots - 1, last], dim=1)  # (B, L + 1)
        predictions = None
        if return_logits or loss_mask is None:
            gather_index = predicting.clamp(min=0)[..., None].expand(-1, -1, D)
            predictions = self.logits(hidden.gather(1, gather_index))  # (B, L + 1, V)
        if loss_mask is None:
            return predictions[:, 1:], None
        if num_targets is None:  # (N,) each: the target tokens; N is read from the device
            rows, columns = loss_mask.bool().nonzero(as_tuple=True)
        else:  # the same N indices, in the same order, into a buffer whose size the host knows
            rows, columns = torch.nonzero_static(loss_mask.bool(), size=num_targets).unbind(1)
        if return_logits:
            target_logits = predictions[rows, columns]  # (N, V)
        else:  # the output layer at the N slots that predict a target, not at every text slot
            target_logits = self.logits(hidden[rows, predicting[rows, columns]])
        targets = input_ids[rows, columns]  # (N,)
        loss = F.cross_entropy(target_logits.float(), targets, reduction=reduction)
        return (predictions[:, 1:] if return_logits else None), loss

    def embed_tokens(self, input_ids):
        """(B, L) -> (B, L, D). Gemma scales by sqrt(dim), the factor first rounded to the model
        dtype as its reference does. The visual tokens are never scaled: the adapter learns the
        scale it needs."""
        x = self.token_embedding(input_ids)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.dim**0.5, dtype=x.dtype)
        return x

    def embed(self, input_ids, prefix, visual_start=None):
        """ids[:, :start] + prefix + ids[:, start:] -> (x (B, P + L, D), P, visual_start (B,)).

        The visual tokens go before text position visual_start (an int or (B,); default 0,
        before all the text): the paper's prompt puts them inside the text."""
        reference = input_ids if input_ids is not None else prefix
        B, L = reference.shape[0], 0 if input_ids is None else input_ids.shape[1]
        start = 0 if visual_start is None else visual_start
        start = torch.as_tensor(start, device=reference.device).long().expand(B)  # (B,)
        prefix_len = 0 if prefix is None else prefix.shape[1]
        if input_ids is None:
            return prefix.to(self.token_embedding.weight.dtype), prefix_len, start
        text = self.embed_tokens(input_ids)  # (B, L, D)
        if prefix is None:
            return text, 0, start
        if visual_start is None:
            # (B, P + L, D)
            return (
                torch.cat([prefix.to(text.dtype), text], dim=1),
                prefix_len,
                start,
            )
        x = torch.cat([text, prefix.to(text.dtype)], dim=1)  # (B, L + P, D)
        slots, row_start = torch.arange(L + prefix_len, device=x.device), start[:, None]
        # where each slot reads from in [text; prefix]: the text before the visual tokens, the
        # visual tokens, the text after them
        in_visual = L + slots - row_start
        after = torch.where(slots < row_start + prefix_len, in_visual, slots - prefix_len)
        source = torch.where(slots < row_start, slots, after)  # (B, P + L)
        x = x.gather(1, source[..., None].expand(-1, -1, x.shape[-1]))  # (B, P + L, D)
        return x, prefix_len, start

    def attention_mask(self, batch, prefix_len, visual_start, pad_lengths, device, query_offset=0):
        """Causal (or bidirectional over the visual tokens), minus the left padding if any."""
        if self.config.prefix_attention == "bidirectional" and prefix_len > 0:
            visible = prefix_lm(visual_start + prefix_len, query_offset, visual_start)
        else:
            visible = causal(query_offset)
        if pad_lengths is None:
            return visible
        return and_masks(left_padding(pad_lengths, query_offset), visible)

    def run_blocks(self, x, positions, mask, cache=None):
        """x (B, S, D) -> final-normed hidden states (B, S, D); appends to cache when given.
        With checkpoint_blocks, a backward to come keeps each block's input only and runs the
        block again to get its gradient: a frozen 7B LM's activations are most of a stage-2
        step's memory (docs/scaling.md)."""
        recompute = self.checkpoint_blocks and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            past = None
            if cache is not None and cache.keys[i] is not None:
                past = (cache.keys[i], cache.values[i])
            if recompute:
                x, (k, v) = checkpoint(block, x, positions, mask, past, use_reentrant=False)
            else:
                x, (k, v) = block(x, positions, mask, past)
            if cache is not None:
                cache.keys[i], cache.values[i] = k, v
        return self.final_norm(x)

    def logits(self, hidden):  # (..., D) -> (..., V)
        head = self.token_embedding if self.output_head is None else self.output_head
        return F.linear(hidden, head.weight)

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32, device="cpu") -> "PaLMDecoder":
        """A local Hugging Face GemmaForCausalLM (v1) or LlamaForCausalLM folder (config.json +
        *.safetensors), logits equal to transformers'. Only local files are read. Its tokenizer:
        `data.Tokenizer("hf:" + folder)`."""
        return hf_decoder.load_lm(folder, lambda fields: cls(PaLMConfig(**fields)), dtype, device)

    def check_inputs(
        self, input_ids, prefix, visual_start, loss_mask=None, reduction="mean", num_targets=None
    ):
        """Every argument check of forward and prefill, in one place (support/decoder_inputs.py)."""
        decoder_inputs.check(
            self.config, input_ids, prefix, visual_start, loss_mask, reduction, num_targets
        )


def make_block(config: PaLMConfig) -> nn.Module:
    if config.block == "sequential":  # Llama, Gemma: the block is handed this file's parts
        activation = GATE_ACTIVATIONS[config.mlp_activation]
        widths = projection_widths(config)
        return hf_decoder.SequentialBlock(config, widths, self_attention, make_norm, activation)
    return PaLMBlock(config)


def check_config(config: PaLMConfig) -> None:
    """Every field in its range, each error naming the field."""
    positive = ("vocab_size", "dim", "depth", "num_heads", "num_kv_heads", "max_seq_len")
    for name in (*positive, "rope_base", "norm_eps"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name}={getattr(config, name)} must be positive")
    for name in ("head_dim", "mlp_hidden_dim"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ValueError(
                f"{name}={getattr(config, name)} must be positive (or None for the default)"
            )
    if config.head_dim is None and config.dim % config.num_heads != 0:
        raise ValueError(
            f"num_heads={config.num_heads} does not divide dim={config.dim}: each head gets "
            "dim // num_heads channels; change num_heads or set head_dim explicitly"
        )
    if config.num_heads % config.num_kv_heads != 0:
        raise ValueError(
            f"num_heads={config.num_heads} is not a multiple of "
            f"num_kv_heads={config.num_kv_heads}: "
            "each key/value head must serve the same number of query heads"
        )
    head_size = config.head_dim or config.dim // config.num_heads
    if head_size % 2 != 0:
        raise ValueError(f"head size {head_size} must be even: rotary rotates channel pairs")
    if config.attention_backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"attention_backend={config.attention_backend!r}; choose one of {['auto', *BACKENDS]}"
        )
    if config.prefix_attention not in ("causal", "bidirectional"):
        raise ValueError(
            f"prefix_attention={config.prefix_attention!r}; choose 'causal' or 'bidirectional'"
        )
    for name, choices in (
        ("block", ("parallel", "sequential")),
        ("norm", ("layernorm", "rmsnorm")),
        ("mlp_activation", tuple(GATE_ACTIVATIONS)),
    ):
        if getattr(config, name) not in choices:
            raise ValueError(f"{name}={getattr(config, name)!r}; choose one of {list(choices)}")
    if config.norm_scale_plus_one and config.norm != "rmsnorm":
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


def preset_table() -> str:
    """Every preset's shape and parameter count (built on the meta device: no memory, no init)."""
    header = ("preset", "vocab", "dim", "depth", "heads", "kv", "mlp", "params")
    lines = ["{:<10} {:>6} {:>5} {:>5} {:>5} {:>3} {:>6} {:>14}".format(*header)]
    for name, config in PALM_CONFIGS.items():
        with torch.device("meta"):
            count = sum(p.numel() for p in PaLMDecoder(config).parameters())
        mlp = config.mlp_hidden_dim or 4 * config.dim
        lines.append(
            f"{name:<10} {config.vocab_size:>6} {config.dim:>5} {config.depth:>5} "
            f"{config.num_heads:>5} {config.num_kv_heads:>3} {mlp:>6} {count:>14,}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # python palm_decoder.py: every preset's shape and parameter count
    print(preset_table())

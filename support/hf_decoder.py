"""Decoders that are not PaLM, read from local Hugging Face folders: Gemma (v1) and the Llama
architecture, as the LM boxes of Figure 2 (`PaLMDecoder.from_pretrained`).

They reuse palm_decoder.PaLMDecoder through the last fields of PaLMConfig; what differs lives here:
the sequential block (attention, then the MLP, each with its own norm), RMSNorm, the weight table
(our tensor name -> the folder's) and the config conversion. This module imports no model: the
sequential block is handed the PaLM file's attention, norm and activation. At the end: our own
older layout of the PaLM block (separate projections), converted when an old checkpoint is loaded.
"""

import torch
import torch.nn as nn

from support.hf_weights import expand_table, load_by_table, read_hugging_face_folder


class SequentialBlock(nn.Module):
    """Llama / Gemma: x + attn(norm(x)), then x + mlp(norm(x)), each step with its own norm and its
    own projections: attention.query, .key_value, .out; mlp.gate_and_up, .down. GeGLU for Gemma.

    widths: palm_decoder.projection_widths(config); self_attention, make_norm and activation:
    palm_decoder's (rotary multi-query attention, the config's norm, the gate's activation)."""

    def __init__(self, config, widths, self_attention, make_norm, activation):
        super().__init__()
        heads_width, kv_width, _, _, hidden = widths
        self.config, self.self_attention, self.activation = config, self_attention, activation
        D = config.dim

        def linear(inputs, outputs):
            return nn.Linear(inputs, outputs, bias=False)

        self.attention_norm, self.mlp_norm = make_norm(config), make_norm(config)
        self.attention = nn.ModuleDict(
            dict(
                query=linear(D, heads_width),
                key_value=linear(D, 2 * kv_width),
                out=linear(heads_width, D),
            )
        )
        self.mlp = nn.ModuleDict(dict(gate_and_up=linear(D, 2 * hidden), down=linear(hidden, D)))

    def forward(self, x, positions, mask, past=None):
        normed = self.attention_norm(x)
        k, v = self.attention.key_value(normed).chunk(2, dim=-1)  # 2 x (B, S, Hkv * Dh)
        query = self.attention.query(normed)  # (B, S, H * Dh)
        heads, key_value = self.self_attention(query, k, v, positions, mask, past, self.config)
        x = x + self.attention.out(heads)
        gate, up = self.mlp.gate_and_up(self.mlp_norm(x)).chunk(2, dim=-1)  # 2 x (B, S, hidden)
        return x + self.mlp.down(self.activation(gate) * up), key_value


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


# ---------------------------------------------------------------------------------------------
# Language models: Gemma (v1) and the Llama architecture
# ---------------------------------------------------------------------------------------------

# Our tensor name -> the folder's; Gemma uses Llama's names. A tuple is concatenated along dim 0
# (their k and v -> our key_value; gate and up -> our gate_and_up); {i} is the block index.
# post_attention_layernorm is, despite its name, the norm before the MLP. Untied models add
# output_head.weight <- lm_head.weight.
LM_LAYER = "model.layers.{i}."
GEMMA_AND_LLAMA_WEIGHTS = {
    "token_embedding.weight": "model.embed_tokens.weight",
    "blocks.{i}.attention_norm.weight": LM_LAYER + "input_layernorm.weight",
    "blocks.{i}.attention.query.weight": LM_LAYER + "self_attn.q_proj.weight",
    "blocks.{i}.attention.key_value.weight": (
        LM_LAYER + "self_attn.k_proj.weight",
        LM_LAYER + "self_attn.v_proj.weight",
    ),
    "blocks.{i}.attention.out.weight": LM_LAYER + "self_attn.o_proj.weight",
    "blocks.{i}.mlp_norm.weight": LM_LAYER + "post_attention_layernorm.weight",
    "blocks.{i}.mlp.gate_and_up.weight": (
        LM_LAYER + "mlp.gate_proj.weight",
        LM_LAYER + "mlp.up_proj.weight",
    ),
    "blocks.{i}.mlp.down.weight": LM_LAYER + "mlp.down_proj.weight",
    "final_norm.weight": "model.norm.weight",
}
IGNORED_LM_TENSORS = ("*rotary_emb.inv_freq",)  # a buffer older transformers versions saved

# transformers' defaults for the fields a config.json may leave out.
HUGGING_FACE_LM_DEFAULTS = {
    "gemma": dict(
        vocab_size=256000,
        hidden_size=3072,
        intermediate_size=24576,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=256,
        hidden_act="gelu_pytorch_tanh",
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "llama": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
}
HUGGING_FACE_MLP_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def palm_fields_from_hugging_face(hugging_face_config: dict, source) -> dict:
    """A Gemma or Llama config.json -> our PaLMConfig fields; a field we cannot honour is an error
    that names it."""
    model_type = hugging_face_config.get("model_type")
    if model_type not in HUGGING_FACE_LM_DEFAULTS:
        raise ValueError(
            f"{source}/config.json: model_type {model_type!r} is not supported by "
            f"PaLMDecoder.from_pretrained; supported: {list(HUGGING_FACE_LM_DEFAULTS)}"
        )
    hf = {**HUGGING_FACE_LM_DEFAULTS[model_type], **hugging_face_config}
    for flag in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if hf.get(flag):
            raise ValueError(f"{source}/config.json: {flag}={hf[flag]} is not supported")
    # transformers 5 writes rope_parameters; older versions rope_theta and rope_scaling.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"{source}/config.json: rope type {rope_type!r} (rope_parameters / rope_scaling) "
            "is not supported; only the plain rotary embedding"
        )
    # Gemma's official configs say "gelu" but mean the tanh approximation (as transformers reads it)
    activation = hf.get("hidden_activation") or hf["hidden_act"]
    if model_type == "gemma" and activation == "gelu":
        activation = "gelu_pytorch_tanh"
    if activation not in HUGGING_FACE_MLP_ACTIVATIONS:
        raise ValueError(
            f"{source}/config.json: hidden_act={activation!r} is not supported; "
            f"supported: {list(HUGGING_FACE_MLP_ACTIVATIONS)}"
        )
    gemma = model_type == "gemma"
    return dict(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"] or hf["num_attention_heads"],
        head_dim=hf["head_dim"],
        mlp_hidden_dim=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf["rms_norm_eps"],
        block="sequential",
        norm="rmsnorm",
        norm_scale_plus_one=gemma,
        mlp_activation=HUGGING_FACE_MLP_ACTIVATIONS[activation],
        scale_embeddings=gemma,
        tie_embeddings=hf["tie_word_embeddings"],
    )


def lm_weight_table(tensors: dict, tie_embeddings: bool, source) -> dict:
    """The Gemma / Llama table for a folder: untied models add their output head; a tied model's
    saved head (some folders keep it) is dropped from `tensors` once it is seen to be the
    embedding."""
    if not tie_embeddings:
        return {**GEMMA_AND_LLAMA_WEIGHTS, "output_head.weight": "lm_head.weight"}
    head = tensors.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, tensors.get("model.embed_tokens.weight", head)):
        raise ValueError(
            f"{source}: config.json says tie_word_embeddings but tensor 'lm_head.weight' "
            "differs from 'model.embed_tokens.weight'"
        )
    return dict(GEMMA_AND_LLAMA_WEIGHTS)


def load_lm(folder, build, dtype, device="cpu") -> nn.Module:
    """PaLMDecoder.from_pretrained: a Gemma / Llama folder -> `build(our PaLMConfig fields)`
    filled."""
    hugging_face_config, tensors = read_hugging_face_folder(folder, device)
    fields = palm_fields_from_hugging_face(hugging_face_config, folder)
    table = lm_weight_table(tensors, fields["tie_embeddings"], folder)
    # the meta device: no memory and no initialisation, every tensor comes from the folder
    with torch.device("meta"):
        model = build(fields)
    return load_by_table(
        model, tensors, expand_table(table, fields["depth"]), IGNORED_LM_TENSORS, folder, dtype
    )


# ---------------------------------------------------------------------------------------------
# Our own older layout: PaLMBlock before it fused its projections
# ---------------------------------------------------------------------------------------------

# Checkpoints written before (the shipped stage0/*_lm.safetensors among them) hold a parallel
# block's five projections apart: fused name -> (the separate names in order, the axis they join
# on).
SEPARATE_PROJECTIONS = {
    "in_projection.weight": (
        ("attention.query.weight", "attention.key_value.weight", "mlp.gate_and_up.weight"),
        0,
    ),
    "out_projection.weight": (("attention.out.weight", "mlp.down.weight"), 1),
}


def fuse_separate_projections(module, state: dict, prefix: str, *_) -> None:
    """PaLMBlock's load_state_dict pre-hook: an old checkpoint's separate projections -> the fused
    ones, in place in the (copied) state dict that load_state_dict walks."""
    for fused, (names, axis) in SEPARATE_PROJECTIONS.items():
        if all(prefix + name in state for name in names):
            state[prefix + fused] = torch.cat(
                [state.pop(prefix + name) for name in names], dim=axis
            )

"""The attention benchmark's cases and correctness checks (kernel-work box): the attention
calls the three models make (ViT self-attention, resampler latents over [patches; latents], the
PaLM decoder's multi-query causal / prefix-LM attention and its KV-cache step) with shapes from a
preset, the odd key lengths where kernels go wrong in their tails, and every backend checked
against `math` in float32 on the same inputs, output and gradients. Timing and the report:
bench/kernels.py.
"""

from dataclasses import dataclass
from typing import Callable

import torch

import attention as attn
from bench.measure import short_error
from bench.tools import Preset

# Max abs error allowed against `math` run in float32 on the same inputs. Gradients are compared
# with the tolerance times the largest reference gradient (at least 1): their scale grows with Sq.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@dataclass
class AttentionCase:
    """One attention call as a model makes it: q (B, Hq, Sq, Dh), k and v (B, Hkv, Sk, Dh), a
    mask."""

    name: str
    what: str
    batch: int
    heads_q: int
    heads_kv: int
    q_len: int
    kv_len: int
    head_dim: int
    mask: attn.Mask | None
    backward: bool = True  # False where the model only ever runs it under no_grad (decoding)

    @property
    def forward_flops(self) -> int:
        return 4 * self.batch * self.heads_q * self.q_len * self.kv_len * self.head_dim

    def visible_fraction(self, device) -> float:
        if self.mask is None:
            return 1.0
        return self.mask.dense(self.batch, self.q_len, self.kv_len, device).float().mean().item()

    def shape(self) -> str:
        return (
            f"B={self.batch} Hq={self.heads_q} Hkv={self.heads_kv} Sq={self.q_len} "
            f"Sk={self.kv_len} Dh={self.head_dim}"
        )


def attention_cases(preset: Preset, device="cpu") -> list[AttentionCase]:
    vit, resampler, lm, B = preset.vit, preset.resampler, preset.lm, preset.batch
    patches = vit.grid_size**2  # N
    latents = resampler.num_latents  # L: the visual tokens
    resampler_head_dim = resampler.dim // resampler.num_heads
    lm_head_dim = lm.head_dim or lm.dim // lm.num_heads
    sequence = latents + preset.text_len  # [visual tokens; text]
    # as many tokens as the batch of short sequences
    long_batch = max(1, B * sequence // lm.max_seq_len)
    visual_prefix = torch.full((B,), latents, device=device)
    return [
        # ViT: patches attend to patches. (B, H, N, Dh) x (B, H, N, Dh)
        AttentionCase(
            "vit_self",
            "ViT self-attention over the patches",
            B,
            vit.num_heads,
            vit.num_heads,
            patches,
            patches,
            vit.dim // vit.num_heads,
            None,
        ),
        # Resampler: latents attend to [features; latents]. (B, H, L, Dh) x (B, H, N + L, Dh)
        AttentionCase(
            "resampler_image",
            "resampler latents -> [patches; latents]",
            B,
            resampler.num_heads,
            resampler.num_heads,
            latents,
            patches + latents,
            resampler_head_dim,
            None,
        ),
        # Video: every frame's patches in one set. (B, H, L, Dh) x (B, H, T * N + L, Dh)
        AttentionCase(
            "resampler_video",
            f"resampler latents -> [{preset.frames} frames of patches; latents]",
            B,
            resampler.num_heads,
            resampler.num_heads,
            latents,
            preset.frames * patches + latents,
            resampler_head_dim,
            None,
        ),
        # LM over [visual; text], multi-query: (B, H, P + L, Dh) x (B, Hkv, P + L, Dh)
        AttentionCase(
            "decoder_causal",
            "LM causal over [visual tokens; text], MQA",
            B,
            lm.num_heads,
            lm.num_kv_heads,
            sequence,
            sequence,
            lm_head_dim,
            attn.causal(),
        ),
        AttentionCase(
            "decoder_prefix_lm",
            "LM prefix-LM: visual tokens bidirectional, text causal",
            B,
            lm.num_heads,
            lm.num_kv_heads,
            sequence,
            sequence,
            lm_head_dim,
            attn.prefix_lm(visual_prefix),
        ),
        # The longest sequence the LM takes, same tokens per batch. (B', H, max_seq_len, Dh)
        AttentionCase(
            "decoder_prefix_lm_long",
            f"LM prefix-LM at max_seq_len={lm.max_seq_len}",
            long_batch,
            lm.num_heads,
            lm.num_kv_heads,
            lm.max_seq_len,
            lm.max_seq_len,
            lm_head_dim,
            attn.prefix_lm(visual_prefix[:long_batch]),
        ),
        # One new token against the cache, masked as PaLMDecoder.decode_step does. (B, H, 1, Dh) x
        # (B, Hkv, S, Dh)
        AttentionCase(
            "decode_step",
            "LM KV-cache decoding step",
            B,
            lm.num_heads,
            lm.num_kv_heads,
            1,
            sequence,
            lm_head_dim,
            attn.and_masks(
                attn.left_padding(torch.zeros(B, dtype=torch.long, device=device), sequence - 1),
                attn.causal(sequence - 1),
            ),
            backward=False,
        ),
    ]


# Key lengths every backend is also checked at, correctness only: the presets' lengths are round
# numbers, and kernels go wrong in their tails (inductor's CPU FlexAttention, AVX2 code, did at key
# lengths 8 mod 16: off by up to 2.6, or NaN).
ODD_LENGTHS = (1, 7, 8, 24, 40, 100, 129)
ODD_LENGTHS_CASE = "odd_lengths"  # its name for --cases


def odd_length_cases(preset: Preset, device="cpu") -> list[AttentionCase]:
    """At each of ODD_LENGTHS keys, batch 2: the LM's prefix-LM multi-query self-attention, and the
    resampler's latents attending to that many keys."""
    lm, resampler = preset.lm, preset.resampler
    cases = []
    for length in ODD_LENGTHS:
        # sample 2: plain causal
        prefix = torch.tensor([min(length, resampler.num_latents), 0], device=device)
        cases += [
            AttentionCase(
                f"prefix_lm_{length}",
                "LM prefix-LM, MQA",
                2,
                lm.num_heads,
                lm.num_kv_heads,
                length,
                length,
                lm.head_dim or lm.dim // lm.num_heads,
                attn.prefix_lm(prefix),
            ),
            AttentionCase(
                f"cross_{length}",
                "resampler latents -> keys",
                2,
                resampler.num_heads,
                resampler.num_heads,
                resampler.num_latents,
                length,
                resampler.dim // resampler.num_heads,
                None,
            ),
        ]
    return cases


def check_odd_lengths(preset: Preset, backends: list[str], dtype, device) -> list[dict]:
    """Every backend against `math` at ODD_LENGTHS (not timed); prints one line per backend and
    kind."""
    rows = []
    for case in odd_length_cases(preset, device):
        q, k, v, grad_out, reference, reference_grads = case_inputs(case, dtype, device)
        rows += [
            {
                "case": case.name,
                "backend": backend,
                **check_backend(
                    call_backend(backend),
                    q,
                    k,
                    v,
                    case.mask,
                    grad_out,
                    reference,
                    reference_grads,
                    dtype,
                    case.backward,
                ),
            }
            for backend in backends
        ]
    print(
        f"\n{ODD_LENGTHS_CASE}: every backend at key lengths {', '.join(map(str, ODD_LENGTHS))} "
        "(checked, not timed)"
    )
    print(f"  {'backend':<12} {'case':<10} | {'forward':<40} | forward+backward")
    for backend in backends:
        for kind in ("prefix_lm", "cross"):
            mine = [
                r for r in rows if r["backend"] == backend and r["case"].rsplit("_", 1)[0] == kind
            ]
            print(
                f"  {backend:<12} {kind:<10} | {odd_length_verdict(mine, 'forward'):<40} | "
                f"{odd_length_verdict(mine, 'forward_backward')}"
            )
    return rows


def odd_length_verdict(rows: list[dict], mode: str) -> str:
    if errors := [r[mode]["error"] for r in rows if "error" in r[mode]]:
        return f"n/a: {errors[0].split(': ', 1)[-1].split('. ')[0]}"[:40]
    worst = max(r[mode]["max_abs_error"] for r in rows)
    wrong = [r["case"].rsplit("_", 1)[1] for r in rows if not r[mode]["correct"]]
    return (
        f"INCORRECT at {', '.join(wrong)} (max err {worst:.1e})"
        if wrong
        else f"ok (max err {worst:.1e})"
    )


def call_backend(backend: str) -> Callable:
    return lambda q, k, v, mask: attn.attention(q, k, v, mask, backend=backend)


def max_abs_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return (got.float() - reference).abs().max().item()


def check_backend(fn, q, k, v, mask, grad_out, reference, reference_grads, dtype, backward) -> dict:
    """Errors against the float32 `math` reference; `error` instead where the backend cannot run."""
    tolerance = TOLERANCE[dtype]
    result = {"forward": {}, "forward_backward": {}}
    try:
        with torch.no_grad():
            result["forward"]["max_abs_error"] = max_abs_error(fn(q, k, v, mask), reference)
        result["forward"]["correct"] = result["forward"]["max_abs_error"] <= tolerance
    except Exception as error:  # a backend that cannot run this shape is reported, not fatal
        result["forward"]["error"] = short_error(error)
    if not backward:
        result["forward_backward"]["error"] = "inference only (decoding runs under no_grad)"
        return result
    try:
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        grads = torch.autograd.grad(fn(*leaves, mask), leaves, grad_out)
        scaled = [
            max_abs_error(g, g_ref) / max(1.0, g_ref.abs().max().item())
            for g, g_ref in zip(grads, reference_grads)
        ]
        result["forward_backward"]["max_abs_error"] = max(
            max_abs_error(g, g_ref) for g, g_ref in zip(grads, reference_grads)
        )
        result["forward_backward"]["correct"] = max(scaled) <= tolerance
    except Exception as error:  # e.g. FlexAttention has no backward on CPU
        result["forward_backward"]["error"] = short_error(error)
    return result


def case_inputs(case: AttentionCase, dtype, device):
    """-> q, k, v, grad_out in `dtype`, and the float32 `math` output and gradients on those
    inputs."""
    generator = torch.Generator().manual_seed(0)
    # (B, Hq, Sq, Dh)
    q = torch.randn(case.batch, case.heads_q, case.q_len, case.head_dim, generator=generator)
    # (B, Hkv, Sk, Dh)
    k = torch.randn(case.batch, case.heads_kv, case.kv_len, case.head_dim, generator=generator)
    v = torch.randn(case.batch, case.heads_kv, case.kv_len, case.head_dim, generator=generator)
    grad_out = torch.randn(case.batch, case.heads_q, case.q_len, case.head_dim, generator=generator)
    q, k, v, grad_out = (t.to(device=device, dtype=dtype) for t in (q, k, v, grad_out))
    # The reference: math in float32 on the same (already rounded) inputs.
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    reference = attn.attention(*leaves, case.mask, backend="math")
    reference_grads = (
        torch.autograd.grad(reference, leaves, grad_out.float()) if case.backward else None
    )
    return q, k, v, grad_out, reference.detach(), reference_grads

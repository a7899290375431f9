"""Attention: the one function every box of Figure 2 calls (ViT, perceiver resampler, PaLM decoder).

`attention(q, k, v, mask, backend)` takes q (B, Hq, Sq, Dh) and k, v (B, Hkv, Sk, Dh) with Hq a
multiple of Hkv, so multi-query attention (PaLM: one shared key/value head) and grouped-query
attention are the same call. A mask is described once, as a small function of
(batch, head, query index, key index) -> bool (FlexAttention's `mask_mod` convention), and each
backend turns it into what it needs: a dense boolean mask for `math` and `sdpa`, a block mask
for `flex`.

Adding a kernel is adding one function `(q, k, v, mask) -> out` to `BACKENDS`.
"""

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# ---------------------------------------------------------------------------------------------
# Masks: small factories returning a Mask; True means "this query may attend to this key".
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Mask:
    """A mask rule. `mask_mod(b, h, q_idx, kv_idx)` works on integer tensors that broadcast.

    A rule reads its per-sample values (visual spans, padding lengths) from tensors it holds, never
    from Python numbers taken out of them: no host sync, and one compiled graph serves every batch
    of the same shape. A decoder makes one Mask per forward and hands it to every layer, so the
    block mask FlexAttention needs is built once per forward (`block_masks`, block_mask_for)."""

    kind: str  # names the rule; for a rule without tensors it keys the block-mask cache
    mask_mod: Callable
    tensors: tuple = field(default=())  # the per-sample tensors the rule reads, e.g. lengths (B,)
    block_masks: dict = field(default_factory=dict, repr=False)  # (shape) -> this rule's BlockMask

    @property
    def per_sample(self) -> bool:
        return len(self.tensors) > 0

    def dense(self, batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
        """Evaluate the rule on every (query, key) pair: bool (B or 1, 1, Sq, Sk)."""
        b = torch.arange(batch if self.per_sample else 1, device=device).view(-1, 1, 1, 1)
        h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
        q_idx = torch.arange(q_len, device=device).view(1, 1, -1, 1)
        kv_idx = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
        allowed = self.mask_mod(b, h, q_idx, kv_idx)
        return allowed.expand(b.shape[0], 1, q_len, kv_len)


def causal(query_offset: int = 0) -> Mask:
    """Query i (at absolute position query_offset + i) sees keys 0..query_offset + i.

    query_offset > 0 is KV-cache decoding: the new queries come after the cached keys."""
    return Mask(f"causal@{query_offset}", lambda b, h, q, kv: q + query_offset >= kv)


def prefix_lm(
    prefix_ends: torch.Tensor, query_offset: int = 0, prefix_starts: torch.Tensor | None = None
) -> Mask:
    """Causal, except that the keys prefix_starts[b] <= slot < prefix_ends[b] of sample b are seen
    by every query from prefix_starts[b] on (bidirectional attention over the visual tokens,
    wherever they sit in the sequence; start 0: a prefix). prefix_ends, prefix_starts: (B,)."""
    ends = prefix_ends.long()
    starts = torch.zeros_like(ends) if prefix_starts is None else prefix_starts.long()
    return Mask(
        f"prefix_lm@{query_offset}",
        lambda b, h, q, kv: (
            (q + query_offset >= kv) | ((kv < ends[b]) & (q + query_offset >= starts[b]))
        ),
        (ends, starts),
    )


def key_padding(key_lengths: torch.Tensor) -> Mask:
    """Right padding: sample b has key_lengths[b] real keys, the rest are padding. (B,)"""
    key_lengths = key_lengths.long()
    return Mask("key_padding", lambda b, h, q, kv: kv < key_lengths[b], (key_lengths,))


def left_padding(pad_lengths: torch.Tensor, query_offset: int = 0) -> Mask:
    """Left padding (batched decoding): the first pad_lengths[b] keys of sample b are padding.

    A padding query is allowed to see its own key so that no row of scores is empty (an empty
    row is NaN after softmax in most kernels); its output is never used. pad_lengths: (B,)."""
    pad_lengths = pad_lengths.long()
    return Mask(
        f"left_padding@{query_offset}",
        lambda b, h, q, kv: (kv >= pad_lengths[b]) | (kv == q + query_offset),
        (pad_lengths,),
    )


def and_masks(*masks: Mask) -> Mask:
    """A key is visible when every rule allows it."""

    def mask_mod(b, h, q, kv):
        allowed = masks[0].mask_mod(b, h, q, kv)
        for mask in masks[1:]:
            allowed = allowed & mask.mask_mod(b, h, q, kv)
        return allowed

    return Mask("&".join(m.kind for m in masks), mask_mod, sum((m.tensors for m in masks), ()))


# ---------------------------------------------------------------------------------------------
# Backends: (q, k, v, mask) -> out (B, Hq, Sq, Dh). Softmax scale is 1/sqrt(Dh) everywhere.
# ---------------------------------------------------------------------------------------------


def math_attention(q, k, v, mask: Mask | None = None):
    """The reference: scores, mask, softmax, weighted sum. Slow and explicit."""
    B, Hq, Sq, Dh = q.shape
    group = Hq // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, Hq, Sk, Dh): every query head in a group shares k
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * Dh**-0.5  # (B, Hq, Sq, Sk)
    if mask is not None:
        allowed = mask.dense(B, Sq, k.shape[2], q.device)  # (B or 1, 1, Sq, Sk)
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v  # (B, Hq, Sq, Dh)


def sdpa_attention(q, k, v, mask: Mask | None = None):
    """PyTorch's fused scaled_dot_product_attention (flash / memory-efficient / math kernels)."""
    enable_gqa = q.shape[1] != k.shape[1]
    if mask is not None and mask.kind == "causal@0" and q.shape[2] == k.shape[2]:
        # The kernel's own causal mode skips the key blocks above the diagonal; given a dense mask
        # it computes them and throws them away (1.4x slower at 1024 tokens on CPU). Its causal
        # mode is aligned top-left, which is our causal(0) only when Sq == Sk.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    dense = None if mask is None else mask.dense(q.shape[0], q.shape[2], k.shape[2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=enable_gqa)


# Compiled once per process; torch.compile then specializes per shape and mask kind. On CPU the
# shapes stay static: inductor's CPU FlexAttention template fails to build with dynamic sizes
# (torch 2.13), so every new shape is its own graph there.
_compiled_flex_attention = {
    "cpu": torch.compile(flex_attention, dynamic=False),
    "cuda": torch.compile(flex_attention),
}
_block_mask_cache: OrderedDict = OrderedDict()  # rules without tensors, across forwards
_BLOCK_MASK_CACHE_SIZE = 64
# Inductor's CPU FlexAttention kernel (torch 2.13, AVX2 code) is wrong when the key length is 8 mod
# 16 (pytorch/pytorch#159247's family): off by up to 2.6 at 24 and 40 keys, NaN at 8. On CPU the
# keys are padded with zeros to a multiple of 16 and the padding masked out, so the kernel only sees
# lengths it gets right (tests/test_attention.py and python -m bench attention check odd lengths).
FLEX_CPU_KEY_MULTIPLE = 16
_flex_cpu_graphs: set = set()  # what torch.compile specializes on, per call on CPU (dynamic=False)


def block_mask_for(mask: Mask, batch: int, q_len: int, kv_len: int, real_keys: int, device):
    """FlexAttention's block mask for this rule and shape; keys from real_keys on are padding
    (pad_keys_for_cpu_flex) and masked out.

    Built once per Mask and shape (mask.block_masks): a decoder's layers share one. Inside a
    compiled model that is one create_block_mask per forward, traced into the same graph: it reads
    the rule's tensors on the device, so no host sync and no graph break (tests/test_compile.py).
    Eagerly, a rule without per-sample tensors (causal) is also kept across forwards, keyed by
    its kind and shape: rebuilding it every step can cost more than the attention itself."""
    key = (batch, q_len, kv_len, real_keys, str(device))
    if key in mask.block_masks:
        return mask.block_masks[key]
    shared = not mask.per_sample and not torch.compiler.is_compiling()
    if shared and (mask.kind, *key) in _block_mask_cache:
        _block_mask_cache.move_to_end((mask.kind, *key))
        return _block_mask_cache[(mask.kind, *key)]
    rule = mask.mask_mod
    if real_keys < kv_len:
        rule = and_masks(mask, Mask("real_keys", lambda b, h, q, kv: kv < real_keys)).mask_mod
    B = batch if mask.per_sample else None
    block_mask = create_block_mask(rule, B, None, q_len, kv_len, device=device)
    mask.block_masks[key] = block_mask
    if shared:
        _block_mask_cache[(mask.kind, *key)] = block_mask
        if len(_block_mask_cache) > _BLOCK_MASK_CACHE_SIZE:
            _block_mask_cache.popitem(last=False)
    return block_mask


def pad_keys_for_cpu_flex(k, v):
    """-> (k, v) with the key length padded with zeros to FLEX_CPU_KEY_MULTIPLE (the caller masks
    the padding out: block_mask_for's real_keys)."""
    padding = -k.shape[2] % FLEX_CPU_KEY_MULTIPLE
    return (k, v) if padding == 0 else tuple(F.pad(t, (0, 0, 0, padding)) for t in (k, v))


def warn_once_past_recompile_limit(q, k, v, mask: Mask | None):
    """torch.compile keeps at most torch._dynamo.config.recompile_limit graphs of one function and
    then runs it uncompiled without failing: correct, but slow (every score materialized). Say so
    once."""
    key = (
        q.shape,
        q.stride(),
        k.shape,
        k.stride(),
        v.stride(),
        q.dtype,
        mask.kind if mask else None,
        q.requires_grad,
    )
    if key in _flex_cpu_graphs:
        return
    _flex_cpu_graphs.add(key)
    limit = torch._dynamo.config.recompile_limit
    if len(_flex_cpu_graphs) == limit + 1:
        warnings.warn(
            f"attention backend 'flex' on CPU: this is shape / mask number {limit + 1}, past "
            f"torch._dynamo.config.recompile_limit={limit}, so torch.compile now runs "
            "FlexAttention "
            "uncompiled for every new shape (correct but slow). Raise the limit, or use backend "
            "'sdpa'.",
            stacklevel=4,
        )


def flex_attention_backend(q, k, v, mask: Mask | None = None):
    """FlexAttention compiled by torch.compile: the mask becomes a sparse block mask, so fully
    masked blocks are skipped. No backward on CPU."""
    real_keys = k.shape[2]
    if q.device.type == "cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            # Said here, before torch.compile sees the call: a compile that fails there leaves
            # FlexAttention running uncompiled for the rest of the process.
            raise NotImplementedError(
                "FlexAttention has no backward on CPU (torch 2.13): call it under "
                "torch.no_grad(), or use backend 'sdpa'"
            )
        k, v = pad_keys_for_cpu_flex(k, v)
        if mask is None and k.shape[2] > real_keys:
            mask = Mask("all", lambda b, h, q, kv: kv >= 0)
        if not torch.compiler.is_compiling():
            warn_once_past_recompile_limit(q, k, v, mask)
    block_mask = None
    if mask is not None:
        block_mask = block_mask_for(mask, q.shape[0], q.shape[2], k.shape[2], real_keys, q.device)
    return _compiled_flex_attention[q.device.type](
        q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1]
    )


BACKENDS: dict[str, Callable] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
    "flex": flex_attention_backend,
}


# The largest score matrix (query length x key length) that `auto` hands to `math` on the CPU
MATH_ON_CPU_MAX_SCORES = 1 << 16


def choose_backend(q, k, v) -> str:
    """`auto`: FlexAttention on CUDA for full sequences; SDPA for one-token decoding steps (a new
    key length every step would mean a new compiled graph and block mask every step) and on CPU,
    where FlexAttention has no backward and, forward only, is slower than SDPA at our sizes
    (see `python -m bench attention`). One exception on CPU: in bf16 with a backward to come,
    `math`, for SDPA's CPU kernel takes 3x as long as `math` for that backward (20.5 vs 6.6 ms at
    the toy LM's shape, docs/benchmarks.md); up to MATH_ON_CPU_MAX_SCORES scores per head, past
    which math's dense scores would cost too much memory."""
    head_dim = q.shape[-1]
    flex_can_run = q.is_cuda and head_dim >= 16 and head_dim & (head_dim - 1) == 0
    if flex_can_run and q.shape[2] > 16:
        return "flex"
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    small = q.shape[2] * k.shape[2] <= MATH_ON_CPU_MAX_SCORES
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and backward and small:
        return "math"
    return "sdpa"


def attention(q, k, v, mask: Mask | None = None, backend: str = "auto"):
    """q (B, Hq, Sq, Dh), k and v (B, Hkv, Sk, Dh) with Hq a multiple of Hkv -> (B, Hq, Sq, Dh)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects 4-D q, k, v (B, H, S, Dh); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch (dim 0) and head size "
            "(dim 3)"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"query heads Hq={q.shape[1]} must be a multiple of key/value heads Hkv={k.shape[1]}"
        )
    if backend == "auto":
        backend = choose_backend(q, k, v)
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; choose one of {['auto', *BACKENDS]}"
        )
    return BACKENDS[backend](q, k, v, mask)

"""attention.py: every backend against the math reference, masks against a dense reference."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import cache_dir

import attention as A
from conftest import REPO


def dense_reference(rule, batch, q_len, kv_len, **tensors):
    """The same rule written as plain Python loops: what each mask factory promises."""
    out = torch.zeros(batch, 1, q_len, kv_len, dtype=torch.bool)
    for b in range(batch):
        for q in range(q_len):
            for kv in range(kv_len):
                out[b, 0, q, kv] = rule(b, q, kv, **tensors)
    return out


PREFIX = torch.tensor([0, 4, 11])
KEYS = torch.tensor([13, 7, 1])
PADS = torch.tensor([0, 3, 12])
OFFSET = 5
MASK_CASES = {
    "causal": (A.causal(), lambda b, q, kv: kv <= q),
    "causal_offset": (A.causal(OFFSET), lambda b, q, kv: kv <= q + OFFSET),
    "prefix_lm": (A.prefix_lm(PREFIX), lambda b, q, kv: kv <= q or kv < PREFIX[b]),
    # the visual span inside the text (prompt, visual tokens, prompt): all-to-all inside, causal
    # elsewhere
    "visual_span": (
        A.prefix_lm(PADS + 4, prefix_starts=PADS),
        lambda b, q, kv: kv <= q or (PADS[b] <= q < PADS[b] + 4 and PADS[b] <= kv < PADS[b] + 4),
    ),
    "visual_span_offset": (
        A.prefix_lm(PADS + 4, OFFSET, PADS),
        lambda b, q, kv: (
            kv <= q + OFFSET
            or (PADS[b] <= q + OFFSET < PADS[b] + 4 and PADS[b] <= kv < PADS[b] + 4)
        ),
    ),
    "key_padding": (A.key_padding(KEYS), lambda b, q, kv: kv < KEYS[b]),
    "left_padding": (A.left_padding(PADS), lambda b, q, kv: kv >= PADS[b] or kv == q),
    "causal_and_padding": (
        A.and_masks(A.causal(), A.key_padding(KEYS)),
        lambda b, q, kv: kv <= q and kv < KEYS[b],
    ),
    "prefix_and_left_padding": (
        A.and_masks(A.prefix_lm(PADS + 2), A.left_padding(PADS)),
        lambda b, q, kv: (kv <= q or kv < PADS[b] + 2) and (kv >= PADS[b] or kv == q),
    ),
}


@pytest.mark.parametrize("name", MASK_CASES)
@pytest.mark.parametrize("q_len,kv_len", [(13, 13), (1, 9), (5, 18)])
def test_mask_factories_match_loops(name, q_len, kv_len):
    mask, rule = MASK_CASES[name]
    dense = mask.dense(3, q_len, kv_len, "cpu").expand(3, 1, q_len, kv_len)
    assert torch.equal(dense, dense_reference(rule, 3, q_len, kv_len))


def make_qkv(batch, heads_q, heads_kv, q_len, kv_len, head_dim=16, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [
        (batch, heads_q, q_len, head_dim),
        (batch, heads_kv, kv_len, head_dim),
        (batch, heads_kv, kv_len, head_dim),
    ]
    return [torch.randn(*s, generator=g).requires_grad_(requires_grad) for s in shapes]


# (heads_q, heads_kv, q_len, kv_len, mask): the shapes the models run, at odd sizes.
SHAPES = {
    "vit_self": (4, 4, 17, 17, None),
    "causal_mqa": (4, 1, 19, 19, A.causal()),
    "causal_gqa": (6, 2, 19, 19, A.causal()),
    "prefix_lm_mqa": (4, 1, 19, 19, A.prefix_lm(torch.tensor([3, 8]))),
    "padding": (4, 4, 19, 19, A.and_masks(A.causal(), A.key_padding(torch.tensor([19, 6])))),
    "cross_resampler": (4, 4, 5, 23, None),  # latents (Sq=5) against [features; latents]
    "decode_step": (
        4,
        1,
        1,
        23,
        A.and_masks(A.causal(22), A.left_padding(torch.tensor([0, 4]), 22)),
    ),
}


@pytest.mark.parametrize("name", SHAPES)
def test_sdpa_matches_math_forward_and_backward(name):
    hq, hkv, sq, sk, mask = SHAPES[name]
    q, k, v = make_qkv(2, hq, hkv, sq, sk, requires_grad=True)
    reference = A.attention(q, k, v, mask, backend="math")
    grads_reference = torch.autograd.grad(reference.square().sum(), (q, k, v))
    out = A.attention(q, k, v, mask, backend="sdpa")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert (out - reference).abs().max() < 1e-5
    for g, g_ref in zip(grads, grads_reference):
        assert (g - g_ref).abs().max() < 1e-4


def test_math_matches_explicit_softmax():
    """The math backend against a one-head loop written from the definition."""
    q, k, v = make_qkv(1, 2, 1, 6, 6, head_dim=8)
    out = A.attention(q, k, v, A.causal(), backend="math")
    for head in range(2):
        for i in range(6):
            scores = torch.stack([q[0, head, i] @ k[0, 0, j] / 8**0.5 for j in range(i + 1)])
            expected = torch.softmax(scores, 0) @ v[0, 0, : i + 1]
            assert torch.allclose(out[0, head, i], expected, atol=1e-6)


def test_flex_forward_matches_math_on_cpu(monkeypatch):
    """One compiled graph per mask kind and shape: keep the cases few (each costs seconds here).
    Two visual spans of the same shape give their own results: the block mask serves one Mask,
    never a stale one of the same shape."""
    built = []
    real_create = A.create_block_mask
    monkeypatch.setattr(
        A, "create_block_mask", lambda *a, **kw: built.append(1) or real_create(*a, **kw)
    )
    for name in ["prefix_lm_mqa", "cross_resampler"]:
        hq, hkv, sq, sk, mask = SHAPES[name]
        q, k, v = make_qkv(2, hq, hkv, sq, sk)
        with torch.no_grad():
            out = A.attention(q, k, v, mask, backend="flex")
        assert (out - A.attention(q, k, v, mask, backend="math")).abs().max() < 1e-5
    hq, hkv, sq, sk, _ = SHAPES["prefix_lm_mqa"]
    q, k, v = make_qkv(2, hq, hkv, sq, sk, seed=1)
    other_span = A.prefix_lm(torch.tensor([12, 2]))  # same kind and shape, other values
    with torch.no_grad():
        out = A.attention(q, k, v, other_span, backend="flex")
    assert (out - A.attention(q, k, v, other_span, backend="math")).abs().max() < 1e-5

    built.clear()
    with torch.no_grad():
        for _layer in range(3):  # a decoder's layers share one Mask: one block mask for them
            A.attention(q, k, v, other_span, backend="flex")
            A.attention(q, k, v, A.causal(), backend="flex")  # a new Mask each call, no tensors
    assert len(built) == 1, "the causal rule's block mask of this shape was kept across Masks"


ODD_LENGTHS_CHECK = """
import json, sys, warnings
import torch
import attention as A
torch._dynamo.config.recompile_limit = 64
errors = {}
for length in (1, 7, 8, 24, 40, 100, 129):
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, heads, length, 16, generator=generator) for heads in (4, 1, 1))
    latents = torch.randn(2, 4, 5, 16, generator=generator)
    prefix_lm = A.prefix_lm(torch.tensor([min(length, 4), 0]))
    for name, query, mask in (("prefix_lm", q, prefix_lm), ("cross", latents, None)):
        with torch.no_grad():
            out = A.attention(query, k, v, mask, backend="flex")
        reference = A.attention(query, k, v, mask, backend="math")
        errors[f"{name} {length}"] = (out - reference).abs().max().item()
print(json.dumps(errors))
"""


def run_python(code: str, **env) -> str:
    """Run `code` in a fresh process at the repository root: compiled graphs and torch.compile's
    limits stay out of this process."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="an x86 CPU with AVX2"
)
@pytest.mark.parametrize("isa", ["avx2", "native"])
def test_flex_matches_math_at_odd_key_lengths_on_cpu(isa):
    """Inductor's CPU FlexAttention, AVX2 code, is wrong (or NaN) at key lengths 8 mod 16; flex pads
    the keys. AVX2 code is forced with ATEN_CPU_CAPABILITY, with its own compile cache: the cache
    does not tell the ISAs apart, and a graph compiled for one returns garbage under the other."""
    env = (
        {}
        if isa == "native"
        else {"ATEN_CPU_CAPABILITY": isa, "TORCHINDUCTOR_CACHE_DIR": f"{cache_dir()}_{isa}"}
    )
    errors = json.loads(run_python(ODD_LENGTHS_CHECK, **env).splitlines()[-1])
    assert len(errors) == 14 and all(error < 1e-5 for error in errors.values()), errors


def test_flex_says_once_when_torch_compile_stops_compiling_new_shapes():
    code = """
import warnings, torch
import attention as A
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch.nn.attention.flex_attention import flex_attention
torch._dynamo.config.recompile_limit = 1
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for length in (16, 32, 48, 16):
        q, k, v = (torch.randn(1, 2, length, 16) for _ in range(3))
        with torch.no_grad():
            assert (A.attention(q, k, v, A.causal(), backend="flex") - A.attention(q, k, v,
            A.causal())).abs().max() < 1e-5
ours = [str(w.message) for w in caught if "attention backend 'flex'" in str(w.message)]
print(len(ours), len(_debug_get_cache_entry_list(flex_attention.__code__)))
print(ours[0])
"""
    counts, message = run_python(code).splitlines()[-2:]
    assert counts == "1 1", "one warning, and torch.compile did keep a single graph"
    assert "recompile_limit=1" in message and "uncompiled" in message


def test_flex_backward_on_cpu_is_refused_without_spoiling_the_compiled_forward():
    """torch.compile runs a function uncompiled for good once compiling it failed, and compiling
    FlexAttention's backward fails on CPU: flex refuses first, so later forwards still compile."""
    code = """
import torch
import attention as A
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch.nn.attention.flex_attention import flex_attention
def qkv(length, grad=False):
    return [torch.randn(1, 2, length, 16, requires_grad=grad) for _ in range(3)]
with torch.no_grad():
    A.attention(*qkv(16), backend="flex")
try:
    A.attention(*qkv(16, grad=True), backend="flex")
except NotImplementedError as error:
    print(error)
with torch.no_grad():
    A.attention(*qkv(32), backend="flex")
print(len(_debug_get_cache_entry_list(flex_attention.__code__)))
"""
    message, graphs = run_python(code).splitlines()[-2:]
    assert "no backward on CPU" in message and "backend 'sdpa'" in message
    assert graphs == "2", "the second shape was compiled too"


def test_auto_picks_a_backend_that_can_run_the_call():
    q, k, v = make_qkv(2, 4, 1, 19, 19, requires_grad=True)
    assert A.choose_backend(q, k, v) != "flex", "FlexAttention has no backward on CPU"
    out = A.attention(q, k, v, A.causal())  # auto, with grad: must run and backpropagate
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert torch.allclose(out, A.attention(q, k, v, A.causal(), backend="math"), atol=1e-5)


def test_left_padding_rows_are_never_empty():
    q, k, v = make_qkv(2, 2, 1, 7, 7)
    out = A.attention(
        q, k, v, A.and_masks(A.causal(), A.left_padding(torch.tensor([0, 6]))), backend="sdpa"
    )
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "shapes,message",
    [
        (((1, 6, 4, 8), (1, 4, 4, 8), (1, 4, 4, 8)), "multiple of key/value heads"),
        (((1, 4, 4, 8), (1, 1, 4, 16), (1, 1, 4, 16)), "head size"),
        (((1, 4, 4, 8), (1, 1, 4, 8), (1, 1, 5, 8)), "same shape"),
        (((4, 4, 8), (1, 1, 4, 8), (1, 1, 4, 8)), "4-D"),
    ],
)
def test_bad_shapes_raise_clear_errors(shapes, message):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        A.attention(q, k, v)


def test_unknown_backend_names_the_choices():
    q, k, v = make_qkv(1, 1, 1, 2, 2)
    with pytest.raises(ValueError, match="'sdpa'"):
        A.attention(q, k, v, backend="nope")


def test_auto_takes_math_on_cpu_for_a_bf16_backward_of_a_small_score_matrix():
    """SDPA's CPU backward in bf16 is 3x math's at our sizes (docs/benchmarks.md): auto takes math
    there, and SDPA without a backward, in fp32, or past MATH_ON_CPU_MAX_SCORES scores."""
    q, k, v = (t.bfloat16() for t in make_qkv(2, 4, 1, 19, 19))
    assert A.choose_backend(q, k, v) == "sdpa"  # no backward to come
    assert A.choose_backend(q.requires_grad_(), k, v) == "math"
    with torch.no_grad():
        assert A.choose_backend(q, k, v) == "sdpa"
    assert A.choose_backend(q.float(), k.float(), v.float()) == "sdpa"
    side = int(A.MATH_ON_CPU_MAX_SCORES**0.5) + 1
    long_q, long_k, long_v = (t.bfloat16() for t in make_qkv(1, 1, 1, side, side))
    assert A.choose_backend(long_q.requires_grad_(), long_k, long_v) == "sdpa"

"""palm_decoder.py: presets, the PaLM block, rotary positions, loss alignment. With visual tokens
and the KV cache: test_palm_decoder_cache.py."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from small_palm import SMALL, small_model

from attention import causal
from conftest import REPO
from evaluation.decoding import generate
from palm_decoder import PALM_CONFIGS, PaLMBlock, PaLMDecoder, apply_rotary
from vit import num_parameters

# --------------------------------------------------------------------------- presets and config


def test_tiny_108m_parameter_count():
    with torch.device("meta"):
        count = num_parameters(PaLMDecoder(PALM_CONFIGS["tiny-108m"]))
    assert 100e6 <= count <= 116e6


def test_list_prints_every_preset():
    result = subprocess.run(
        [sys.executable, "palm_decoder.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in PALM_CONFIGS:
        assert name in result.stdout
    assert "108,142,848" in result.stdout


def test_embeddings_tied_and_no_biases():
    model = small_model()
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    logits, _ = model(torch.tensor([[3, 4]]))
    assert torch.allclose(
        logits,
        model(torch.tensor([[3, 4]]), return_hidden=True) @ model.token_embedding.weight.T,
        atol=1e-6,
    )


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_projection_widths(kv_heads):
    head_dim, hidden = SMALL.dim // SMALL.num_heads, 4 * SMALL.dim
    # [q; k; v; gate; up] and [W_out | W_down]
    parallel = small_model(num_kv_heads=kv_heads).blocks[0]
    assert parallel.in_projection.weight.shape == (
        (SMALL.num_heads + 2 * kv_heads) * head_dim + 2 * hidden,
        SMALL.dim,
    )
    assert parallel.out_projection.weight.shape == (SMALL.dim, SMALL.num_heads * head_dim + hidden)
    attention = small_model(num_kv_heads=kv_heads, block="sequential").blocks[0].attention
    # one k and one v head each
    assert attention.key_value.weight.shape == (
        2 * kv_heads * head_dim,
        SMALL.dim,
    )
    assert attention.query.weight.shape == (SMALL.num_heads * head_dim, SMALL.dim)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_fused_parallel_block_equals_the_separate_projections(kv_heads):
    """PaLMBlock's two fused matmuls against x + attn(norm(x)) + mlp(norm(x)) written out by hand
    from seven separate weights (loaded into the block through the old checkpoint layout): outputs,
    the input's gradient and every weight's gradient."""
    config = replace(SMALL, num_kv_heads=kv_heads)
    H, Hkv, Dh, D, hidden = (
        config.num_heads,
        kv_heads,
        config.dim // config.num_heads,
        config.dim,
        4 * config.dim,
    )
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "query": (H * Dh, D),
        "key": (Hkv * Dh, D),
        "value": (Hkv * Dh, D),
        "gate": (hidden, D),
        "up": (hidden, D),
        "out": (D, H * Dh),
        "down": (D, hidden),
    }
    weights = {
        name: (torch.randn(shape, generator=generator) / shape[1] ** 0.5).requires_grad_()
        for name, shape in shapes.items()
    }
    norm_weight = (1 + 0.1 * torch.randn(D, generator=generator)).requires_grad_()
    x = torch.randn(2, 7, D, generator=generator, requires_grad=True)
    positions = torch.arange(7).expand(2, 7)

    def by_hand(x):
        normed = F.layer_norm(x, (D,), norm_weight, eps=config.norm_eps)
        q, k, v = (normed @ weights[name].T for name in ("query", "key", "value"))
        q = apply_rotary(q.view(2, 7, H, Dh).transpose(1, 2), positions)  # (B, H, S, Dh)
        k = apply_rotary(k.view(2, 7, Hkv, Dh).transpose(1, 2), positions).repeat_interleave(
            H // Hkv, dim=1
        )
        v = v.view(2, 7, Hkv, Dh).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        scores = (q @ k.transpose(-2, -1) / Dh**0.5).masked_fill(
            torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf")
        )
        heads = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, H * Dh)
        mlp = F.silu(normed @ weights["gate"].T) * (normed @ weights["up"].T)
        return x + heads @ weights["out"].T + mlp @ weights["down"].T

    block = PaLMBlock(config)
    old_layout = {
        "norm.weight": norm_weight,
        "attention.query.weight": weights["query"],
        "attention.key_value.weight": torch.cat([weights["key"], weights["value"]]),
        "mlp.gate_and_up.weight": torch.cat([weights["gate"], weights["up"]]),
        "attention.out.weight": weights["out"],
        "mlp.down.weight": weights["down"],
    }
    block.load_state_dict({name: tensor.detach() for name, tensor in old_layout.items()})
    grad_out = torch.randn(2, 7, D, generator=generator)
    fused, _ = block(x, positions, causal())
    reference = by_hand(x)
    assert (fused - reference).abs().max() < 1e-5
    fused_grads = torch.autograd.grad(
        fused,
        [x, block.norm.weight, block.in_projection.weight, block.out_projection.weight],
        grad_out,
    )
    grads = dict(
        zip(
            ["x", "norm", *weights],
            torch.autograd.grad(reference, [x, norm_weight, *weights.values()], grad_out),
        )
    )
    expected = [
        grads["x"],
        grads["norm"],
        torch.cat([grads[name] for name in ("query", "key", "value", "gate", "up")]),
        torch.cat([grads["out"], grads["down"]], dim=1),
    ]
    for got, want in zip(fused_grads, expected):
        assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize(
    "overrides,named",
    [
        (dict(dim=30, num_heads=4), "num_heads=4"),
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3"),
        (dict(depth=0), "depth=0"),
        (dict(prefix_attention="sideways"), "sideways"),
        (dict(head_dim=5), "head size 5"),
    ],
)
def test_bad_config_names_the_value(overrides, named):
    with pytest.raises(ValueError, match=named):
        replace(SMALL, **overrides)


def test_bad_inputs_raise():
    model = small_model()
    with pytest.raises(
        ValueError, match=r"prefix must be \(B, P, 32\) embeddings; got shape \(1, 3, 48\)"
    ):
        model(torch.tensor([[1, 2]]), prefix=torch.randn(1, 3, 48))
    with pytest.raises(ValueError, match=r"visual_start=\[3\] must lie in 0..2"):
        model(torch.tensor([[1, 2]]), prefix=torch.randn(1, 3, 32), visual_start=3)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.zeros(1, 60, dtype=torch.long), prefix=torch.randn(1, 5, 32))
    with pytest.raises(ValueError, match="loss_mask has shape"):
        model(torch.tensor([[1, 2, 3]]), loss_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1, 2]], max_new_tokens=70)


# --------------------------------------------------------------------------- rotary


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 16)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 1, 4, 1, 5, 9, 2]])

    def scores(shift):
        return apply_rotary(q, positions + shift) @ apply_rotary(k, positions + shift).transpose(
            -2, -1
        )

    assert torch.allclose(scores(0), scores(37), atol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-2, -1), atol=1e-2)  # it does rotate
    # a rotation
    assert torch.allclose(apply_rotary(q, positions).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_shifted_positions_give_the_same_forward():
    """Rotary through the whole model: one sequence run at positions p and p + c agrees."""
    model, ids = small_model(), torch.tensor([[5, 9, 2, 7, 1]])
    x, _, starts = model.embed(ids, None)
    positions = torch.arange(5)[None]
    mask = model.attention_mask(1, 0, starts, None, x.device)
    assert torch.allclose(
        model.run_blocks(x, positions, mask), model.run_blocks(x, positions + 11, mask), atol=1e-5
    )


# --------------------------------------------------------------------------- loss


def test_loss_matches_hand_computed_cross_entropy():
    model = small_model()
    torch.manual_seed(1)
    ids, prefix = torch.randint(0, 50, (3, 6)), torch.randn(3, 4, 32)
    loss_mask = torch.rand(3, 6) > 0.4
    loss_mask[0, 0] = True  # token 0 is predicted by the last prefix position
    logits, loss = model(ids, prefix, loss_mask)
    all_logits = model.logits(model(ids, prefix, return_hidden=True))  # (B, P + L, V)
    assert torch.allclose(logits, all_logits[:, 4:], atol=1e-6)
    predicted = all_logits[:, 3:-1]  # slot P - 1 + i predicts token i
    expected = F.cross_entropy(predicted[loss_mask], ids[loss_mask])
    assert torch.allclose(loss, expected, atol=1e-6)
    _, summed = model(ids, prefix, loss_mask, reduction="sum")
    assert torch.allclose(summed, expected * loss_mask.sum(), atol=1e-5)


def test_the_output_layer_at_the_targets_only_gives_the_same_loss_and_gradients():
    """return_logits=False (training) runs the output layer at the N slots that predict a target:
    the loss and the gradient reaching the visual tokens equal the all-positions path's, with the
    visual tokens inside the text at a different position per row."""
    model = small_model()
    torch.manual_seed(2)
    ids, prefix = torch.randint(0, 50, (3, 7)), torch.randn(3, 4, 32, requires_grad=True)
    loss_mask, visual_start = torch.rand(3, 7) > 0.5, torch.tensor([0, 2, 5])
    loss_mask[1:, 0] = False  # token 0 has no slot before it where the text comes first
    results, rows_seen = [], []
    original = model.logits
    model.logits = lambda hidden: rows_seen.append(hidden.shape[:-1].numel()) or original(hidden)
    for return_logits in (True, False):
        logits, loss = model(
            ids, prefix, loss_mask, visual_start=visual_start, return_logits=return_logits
        )
        (gradient,) = torch.autograd.grad(loss, prefix)
        results.append((logits, loss, gradient))
    (full_logits, full_loss, full_gradient), (none, loss, gradient) = results
    assert full_logits.shape == (3, 7, 50) and none is None
    assert rows_seen == [3 * 8, int(loss_mask.sum())]
    assert torch.allclose(loss, full_loss, atol=1e-6)
    assert torch.allclose(gradient, full_gradient, atol=1e-6)


def test_loss_without_prefix_shifts_by_one():
    model = small_model()
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    loss_mask = torch.tensor([[False, True, True, False, True, True]])
    logits, loss = model(ids, loss_mask=loss_mask)
    expected = F.cross_entropy(logits[0, :-1][loss_mask[0, 1:]], ids[0, 1:][loss_mask[0, 1:]])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert model(ids)[1] is None
    with pytest.raises(ValueError, match="token 0"):
        model(ids, loss_mask=torch.ones_like(loss_mask))


def test_overfits_a_small_fixed_set():
    torch.manual_seed(0)
    model = PaLMDecoder(replace(PALM_CONFIGS["toy-tiny"], vocab_size=40))
    ids = torch.randint(0, 40, (4, 12))
    prefix = torch.randn(4, 3, 128)  # one "image" per sequence
    loss_mask = torch.ones_like(ids, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        _, loss = model(ids, prefix, loss_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.3 * losses[0]

"""resampler.py: shapes, video frames and time embeddings, attention against a hand-written
reference, the CoCa pooler against torch's multi-head attention, the baseline without a final
LayerNorm, permutation invariance, gradients, errors, the recorded attention weights."""

import pytest
import torch
import torch.nn.functional as F

import resampler as resampler_module
from resampler import PerceiverResampler, ResamplerConfig
from vit import num_parameters

SMALL = ResamplerConfig(input_dim=24, dim=32, depth=2, num_latents=5, num_heads=4, max_frames=4)


def make(**changes):
    torch.manual_seed(0)
    return PerceiverResampler(ResamplerConfig(**{**vars(SMALL), **changes})).eval()


def test_image_and_video_give_the_same_number_of_latents():
    resampler = make()
    assert resampler(torch.randn(2, 7, 24)).shape == (2, 5, 32)
    assert resampler(torch.randn(2, 3, 7, 24)).shape == (2, 5, 32)  # 3 frames of 7 patches
    assert resampler(torch.randn(2, 4, 11, 24)).shape == (2, 5, 32)


def test_changing_one_frame_changes_the_output():
    resampler = make()
    video = torch.randn(2, 3, 7, 24)
    changed = video.clone()
    changed[:, 2] = torch.randn(2, 7, 24)
    with torch.no_grad():
        assert (resampler(changed) - resampler(video)).abs().max() > 1e-3


def test_an_image_is_a_one_frame_video():
    """Images take the video path with T=1, so they share time_embedding[0] with a video's first
    frame, learned or not, and a learned time embedding changes how an image is read."""
    resampler = make(input_dim=32)
    image = torch.randn(2, 7, 32)
    with torch.no_grad():
        before = resampler(image)
        resampler.time_embedding.normal_()
        torch.testing.assert_close(resampler(image[:, None]), resampler(image), atol=0, rtol=0)
        assert (resampler(image) - before).abs().max() > 1e-3


def test_frame_order_matters_once_time_embeddings_are_learned():
    resampler = make()
    video = torch.randn(2, 3, 7, 24)
    with torch.no_grad():
        # zero at init: a set of frames
        torch.testing.assert_close(resampler(video.flip(1)), resampler(video), atol=1e-5, rtol=1e-5)
        resampler.time_embedding.normal_()
        assert (resampler(video.flip(1)) - resampler(video)).abs().max() > 1e-3


def reference_one_layer_one_head(resampler, features):
    """The layer written out with einsum and an explicit softmax, for depth=1, num_heads=1."""
    layer = resampler.layers[0]
    cross, feed_forward = layer.attention, layer.feed_forward
    features = resampler.input_projection(features)  # (B, N, D)
    latents = resampler.latents.expand(features.shape[0], -1, -1)  # (B, L, D)
    normed_latents = cross.latent_norm(latents)
    context = torch.cat([cross.feature_norm(features), normed_latents], dim=1)  # (B, N + L, D)
    q = normed_latents @ cross.query.weight.T
    k, v = (context @ cross.key_value.weight.T).chunk(2, dim=-1)
    scores = torch.einsum("bld,bmd->blm", q, k) / q.shape[-1] ** 0.5  # (B, L, N + L)
    weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    latents = latents + torch.einsum("blm,bmd->bld", weights, v) @ cross.out.weight.T
    hidden = torch.nn.functional.gelu(feed_forward.norm(latents) @ feed_forward.up.weight.T)
    latents = latents + hidden @ feed_forward.down.weight.T
    return resampler.final_norm(latents)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_attention_matches_a_hand_written_reference(backend):
    resampler = make(depth=1, num_heads=1, attention_backend=backend)
    features = torch.randn(2, 9, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            resampler(features),
            reference_one_layer_one_head(resampler, features),
            atol=1e-5,
            rtol=1e-5,
        )


def test_math_and_sdpa_backends_agree_on_video():
    math_resampler, sdpa_resampler = make(attention_backend="math"), make(attention_backend="sdpa")
    sdpa_resampler.load_state_dict(math_resampler.state_dict())
    with torch.no_grad():
        math_resampler.time_embedding.normal_()
        sdpa_resampler.time_embedding.copy_(math_resampler.time_embedding)
        video = torch.randn(2, 3, 7, 24)
        torch.testing.assert_close(
            math_resampler(video), sdpa_resampler(video), atol=1e-5, rtol=1e-5
        )


def test_image_features_are_read_as_a_set():
    """No position information inside a frame: permuting the patch tokens changes nothing."""
    resampler = make()
    features = torch.randn(2, 13, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            resampler(features[:, torch.randperm(13)]), resampler(features), atol=1e-5, rtol=1e-5
        )


def test_gradients_reach_the_latents_and_every_weight():
    resampler = make().train()
    latents = resampler(torch.randn(2, 3, 7, 24))
    (
        latents * torch.randn_like(latents)
    ).sum().backward()  # a plain sum would cancel in the final LayerNorm
    names = [
        name
        for name, p in resampler.named_parameters()
        if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert names == []
    assert {"latents", "time_embedding", "input_projection.weight"} <= dict(
        resampler.named_parameters()
    ).keys()


def test_no_input_projection_when_widths_match():
    assert isinstance(make(input_dim=32).input_projection, torch.nn.Identity)


def test_parameter_count():
    """Latents, projection, time embeddings, per layer (3 LayerNorms, q, kv, out, feed-forward),
    final LayerNorm."""
    L, Din, D, T, depth = 5, 24, 32, 4, 2
    per_layer = 3 * 2 * D + D * D + 2 * D * D + D * D + 2 * 4 * D * D
    assert num_parameters(make()) == L * D + Din * D + T * D + depth * per_layer + 2 * D


@pytest.mark.parametrize(
    "shape,message",
    [
        ((2, 5, 7, 24), r"5 frames .*max_frames=4"),
        ((2, 7, 16), r"got shape \(2, 7, 16\)"),
        ((7, 24), r"got shape \(7, 24\)"),
    ],
)
def test_bad_inputs_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.randn(*shape))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dim": 30, "num_heads": 4}, r"num_heads=4 .*dim=30"),
        ({"num_latents": 0}, r"num_latents=0"),
        ({"max_frames": -2}, r"max_frames=-2"),
        ({"input_dim": 0}, r"input_dim=0"),
        ({"attention_backend": "fast"}, r"attention_backend='fast'"),
    ],
)
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ResamplerConfig(**{**vars(SMALL), **changes})


def test_the_adapters_starting_configs():
    """One place for the defaults the stage scripts and the benchmark start from; flags change any
    field."""
    in_front_of_lm = ResamplerConfig.for_lm(vision_dim=128, lm_dim=96, lm_num_heads=6, max_frames=2)
    assert (in_front_of_lm.input_dim, in_front_of_lm.dim, in_front_of_lm.num_heads) == (128, 96, 6)
    assert (in_front_of_lm.depth, in_front_of_lm.num_latents, in_front_of_lm.max_frames) == (
        1,
        16,
        2,
    )
    baseline = ResamplerConfig.for_perceiver(128)
    assert (
        baseline.input_dim,
        baseline.dim,
        baseline.depth,
        baseline.num_heads,
        baseline.num_latents,
    ) == (128, 128, 6, 4, 16)
    assert (baseline.feed_forward, baseline.latents_in_keys, baseline.final_norm) == (
        True,
        True,
        False,
    )
    assert ResamplerConfig.for_perceiver(128, dim=64, depth=2).dim == 64
    front = ResamplerConfig.for_vadapter_front(128)
    assert (
        front.dim,
        front.depth,
        front.num_heads,
        front.feed_forward,
        front.latents_in_keys,
        front.final_norm,
    ) == (128, 1, 4, True, True, True)  # the baseline's layer, once, then a LayerNorm
    pooler = ResamplerConfig.for_pooler(128, 96, 6)
    assert (pooler.input_dim, pooler.dim, pooler.num_heads, pooler.depth, pooler.num_latents) == (
        128,
        96,
        6,
        1,
        16,
    )
    assert (pooler.feed_forward, pooler.latents_in_keys, pooler.final_norm) == (False, False, True)


def test_the_pooler_is_one_cross_attention_over_the_features_then_a_layernorm():
    """CoCa's attentional pooler, recomputed with torch's own multi-head attention: LayerNorm'd
    learned queries attend to the LayerNorm'd features only (4 heads), no feed-forward, a
    LayerNorm."""
    torch.manual_seed(0)
    pooler = PerceiverResampler(ResamplerConfig.for_pooler(24, 32, 4, num_latents=5)).eval()
    cross = pooler.layers[0].attention
    features = torch.randn(2, 9, 24)
    with torch.no_grad():
        pooler.time_embedding.normal_()
        keys = cross.feature_norm(
            pooler.input_projection(features) + pooler.time_embedding[0]
        ).transpose(0, 1)  # (N, B, D)
        queries = cross.latent_norm(pooler.latents)[:, None].expand(-1, 2, -1)  # (L, B, D)
        key_weight, value_weight = cross.key_value.weight.chunk(2)
        # (L, B, D)
        attended, _ = F.multi_head_attention_forward(
            queries,
            keys,
            keys,
            32,
            4,
            None,
            None,
            None,
            None,
            False,
            0.0,
            cross.out.weight,
            None,
            training=False,
            need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=cross.query.weight,
            k_proj_weight=key_weight,
            v_proj_weight=value_weight,
        )
        expected = pooler.final_norm(pooler.latents + attended.transpose(0, 1))
        torch.testing.assert_close(pooler(features), expected, atol=1e-5, rtol=1e-5)
    # latents, input projection, time embeddings, 2 LayerNorms, q, kv, out, final LayerNorm
    L, Din, D, T = (
        5,
        24,
        32,
        8,
    )
    assert num_parameters(pooler) == L * D + Din * D + T * D + 2 * 2 * D + 4 * D * D + 2 * D


def test_latents_in_keys_lets_the_latents_read_each_other():
    """Flamingo's keys include the latents, so one latent's value reaches the others; the pooler's
    keys are the features alone, so each query is read on its own."""
    flamingo, pooler = make(depth=1, latents_in_keys=True), make(depth=1, latents_in_keys=False)
    pooler.load_state_dict(flamingo.state_dict())  # the same weights
    features = torch.randn(2, 7, 24)
    with torch.no_grad():
        before = {"flamingo": flamingo(features), "pooler": pooler(features)}
        assert (before["flamingo"] - before["pooler"]).abs().max() > 1e-3
        for resampler in (flamingo, pooler):
            resampler.latents[1:] += torch.randn(4, 32)
        torch.testing.assert_close(
            pooler(features)[:, 0], before["pooler"][:, 0], atol=1e-6, rtol=1e-6
        )
        assert (flamingo(features)[:, 0] - before["flamingo"][:, 0]).abs().max() > 1e-3


def test_the_baseline_has_no_final_layernorm():
    """The paper's Table 1: the baseline's output is its last layer's latents, not normalised."""
    torch.manual_seed(0)
    baseline = PerceiverResampler(
        ResamplerConfig.for_perceiver(24, dim=32, depth=2, num_latents=5)
    ).eval()
    assert not any("final_norm" in name for name, _ in baseline.named_parameters())
    features = torch.randn(2, 9, 24)
    with torch.no_grad():
        projected = baseline.input_projection(features) + baseline.time_embedding[0]  # (B, N, D)
        latents = baseline.latents.expand(2, -1, -1)
        for layer in baseline.layers:
            latents = layer(projected, latents)
        output = baseline(features)
        torch.testing.assert_close(output, latents, atol=0, rtol=0)
        assert (output.std(-1) - 1).abs().max() > 0.1, "a LayerNorm would make every latent's std 1"


def initial_attention_logits(config: ResamplerConfig) -> torch.Tensor:
    """The first layer's pre-softmax logits at initialisation, latents over [features; latents],
    computed from the layer's projections (B, H, L, M + L)."""
    torch.manual_seed(0)
    model = PerceiverResampler(config)
    attention = model.layers[0].attention
    features = attention.feature_norm(torch.randn(4, 64, config.dim))
    latents = attention.latent_norm(model.latents.expand(4, -1, -1))
    heads, head_dim = attention.num_heads, config.dim // attention.num_heads
    q = attention.query(latents).view(4, -1, heads, head_dim).transpose(1, 2)
    keys = attention.key_value(torch.cat([features, latents], dim=1))[..., : config.dim]
    k = keys.reshape(4, -1, heads, head_dim).transpose(1, 2)
    return q @ k.transpose(-1, -2) / head_dim**0.5


def test_fresh_attention_starts_with_unit_logits_not_a_uniform_average():
    """With every projection at std 0.02 the logits start at std ~0.05: each latent reads the
    same average of the patches. The query and key projections start at 1/sqrt(dim) instead."""
    with torch.no_grad():
        unit = initial_attention_logits(ResamplerConfig(input_dim=128, dim=128, num_heads=4))
        small = initial_attention_logits(
            ResamplerConfig(input_dim=128, dim=128, num_heads=4, query_key_std=0.02)
        )
    assert 0.8 < unit.std().item() < 1.25
    assert small.std().item() < 0.1
    uniform = torch.log(torch.tensor(float(unit.shape[-1])))
    entropy = -(unit.softmax(-1) * unit.log_softmax(-1)).sum(-1).mean()
    assert entropy < uniform - 0.3  # each latent prefers some patches from the first step


def test_recorded_attention_is_the_weights_that_made_the_output(monkeypatch):
    """record_attention keeps softmax(q k^T / sqrt(Dh)) per head: each latent's weights sum to one
    over [features; latents], and weights @ v is what the backend returns for the same q, k, v."""
    resampler = make(depth=1, attention_backend="sdpa")
    cross = resampler.layers[0].attention
    backend_calls, attention = [], resampler_module.attention
    monkeypatch.setattr(
        resampler_module,
        "attention",
        lambda q, k, v, mask, backend: (
            backend_calls.append((q, k, v)) or attention(q, k, v, mask, backend)
        ),
    )
    features = torch.randn(2, 9, 24)
    with torch.no_grad():
        unrecorded = resampler(features)
        cross.record_attention = True
        recorded = resampler(features)
    ((q, k, v),) = backend_calls  # recording computes the weights itself
    weights = cross.last_attention  # (B, H, L, N + L)
    assert weights.shape == (2, 4, 5, 9 + 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    torch.testing.assert_close(weights @ v, attention(q, k, v, None, "sdpa"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recorded, unrecorded, atol=1e-5, rtol=1e-5)


def test_recorded_attention_gives_padded_frames_zero_weight():
    """A batch of a 2-frame video padded to 4 frames: no latent's weight falls on the padding, and
    the recorded forward gives the output of the masked backend."""
    resampler = make(depth=1)
    cross = resampler.layers[0].attention
    video, num_frames = torch.randn(2, 4, 7, 24), torch.tensor([2, 4])
    with torch.no_grad():
        unrecorded = resampler(video, num_frames)
        cross.record_attention = True
        recorded = resampler(video, num_frames)
    weights = cross.last_attention  # (B, H, L, T * N + L)
    assert weights.shape == (2, 4, 5, 4 * 7 + 5)
    assert (weights[0, :, :, 2 * 7 : 4 * 7] == 0).all() and (weights[0, :, :, : 2 * 7] > 0).all()
    assert (weights[1] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    torch.testing.assert_close(recorded, unrecorded, atol=1e-5, rtol=1e-5)

"""vlm.py: the wiring of Figure 2. Each adapter learns to carry image information into a frozen
LM."""

import pytest
import torch
import torch.nn.functional as F

import data
from conftest import toy_spec
from evaluation.decoding import greedy_decode
from palm_decoder import PaLMConfig, PaLMDecoder
from resampler import PerceiverResampler, ResamplerConfig
from support.model_spec import build_vlm
from vlm import MLPAdapter, VAdapter

VOCAB, CAPTION_LEN = 64, 6


def eight_pairs():
    """8 distinct images (a bright square in a different place each), each with its own caption."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.full((8, 3, 32, 32), -0.5)
    for i in range(8):
        row, col = divmod(i, 4)
        pixels[i, i % 3, row * 16 : row * 16 + 12, col * 8 : col * 8 + 8] = 1.0
    captions = torch.randint(4, VOCAB, (8, CAPTION_LEN), generator=g)
    input_ids = torch.cat([torch.full((8, 1), 2), captions], dim=1)  # [bos] caption
    loss_mask = torch.ones_like(input_ids, dtype=torch.bool)
    loss_mask[:, 0] = False
    return pixels, input_ids, loss_mask


def pretrain_frozen_lm_to_copy(lm, steps=300):
    """A frozen LM is a pretrained one. A randomly initialised LM barely reads its prefix, so this
    one first learns to repeat a sequence it has seen: [x1..x6] [bos] x1..x6. The adapter's job is
    then to write each image's caption into the visual tokens."""
    g = torch.Generator().manual_seed(1)
    lm.requires_grad_(True)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens = torch.randint(4, VOCAB, (32, CAPTION_LEN), generator=g)
        input_ids = torch.cat([tokens, torch.full((32, 1), 2), tokens], dim=1)
        loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        loss_mask[:, CAPTION_LEN + 1 :] = True
        loss = lm(input_ids, loss_mask=loss_mask)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.requires_grad_(False)
    assert loss.item() < 0.1, "the LM learned to copy"


@pytest.mark.parametrize("adapter", ["perceiver", "vadapter", "mlp"])
def test_adapter_learns_to_carry_the_image_and_frozen_parts_stay_put(adapter):
    torch.manual_seed(0)
    # mlp: one visual token per patch (16)
    model = build_vlm(toy_spec(adapter, num_latents=CAPTION_LEN))
    pretrain_frozen_lm_to_copy(model.lm)
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    trainable = model.trainable_parameters()
    assert trainable and all(n.startswith("adapter.") for n, _ in trainable)
    assert not any(n.startswith(("vision.", "lm.")) for n, _ in trainable)
    if adapter == "vadapter":
        assert not any("token_embedding" in n for n, _ in trainable), (
            "the tiny LM's unused embedding is not trained"
        )

    pixels, input_ids, loss_mask = eight_pairs()
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=3e-3)
    model.train()
    start = model(input_ids, loss_mask, pixels=pixels)[1].item()
    for _ in range(200):
        loss = model(input_ids, loss_mask, pixels=pixels)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = model(input_ids, loss_mask, pixels=pixels)[1].item()
        blanked = model(input_ids, loss_mask, pixels=torch.zeros_like(pixels))[1].item()
    assert final < start / 2, (start, final)
    assert final < blanked, (
        "with the images blanked the captions are harder: the visual path carries information"
    )
    assert not model.vision.training and not model.lm.training
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), f"frozen parameter {name} changed"


def test_stage1_wiring_trains_the_lm_too():
    model = build_vlm(toy_spec("resampler"))
    names = [n for n, _ in model.trainable_parameters()]
    assert any(n.startswith("lm.") for n in names) and any(n.startswith("adapter.") for n in names)
    assert not any(n.startswith("vision.") for n in names)
    model.train()
    assert model.lm.training and not model.vision.training


@pytest.mark.parametrize("adapter", ["perceiver", "vadapter"])
def test_video_gives_as_many_visual_tokens_as_an_image_and_every_frame_counts(adapter):
    torch.manual_seed(0)
    model = build_vlm(toy_spec(adapter))
    torch.nn.init.normal_(model.adapter.resampler.time_embedding, std=0.5)
    image = torch.randn(2, 3, 32, 32)
    video = torch.randn(2, 4, 3, 32, 32)
    image_tokens = model.visual_tokens(image)
    video_tokens = model.visual_tokens(video)
    assert image_tokens.shape == video_tokens.shape == (2, 4, 64)
    changed = video.clone()
    changed[:, 2] += 1.0
    assert (model.visual_tokens(changed) - video_tokens).abs().max() > 1e-4


def test_generate_conditions_on_the_image():
    torch.manual_seed(0)
    model = build_vlm(toy_spec("perceiver"))
    out = greedy_decode(model, torch.randn(2, 3, 32, 32), [[2], [2, 5]], max_new_tokens=3)
    assert len(out) == 2 and all(len(tokens) == 3 for tokens in out)


def test_vadapter_maps_widths_with_a_linear_layer_on_each_side_of_the_tiny_lm():
    """The paper's FC before and after the tiny LM: a resampler as wide as the ViT (48), a narrower
    tiny LM (32), the large LM's width out (64); both FC layers learn."""
    torch.manual_seed(0)
    resampler = PerceiverResampler(ResamplerConfig.for_perceiver(48, depth=1, num_latents=4))
    tiny_lm = PaLMDecoder(PaLMConfig(vocab_size=64, dim=32, depth=1, num_heads=4, max_seq_len=16))
    adapter = VAdapter(resampler, tiny_lm, lm_dim=64)
    assert adapter.input_projection.weight.shape == (
        32,
        48,
    ) and adapter.projection.weight.shape == (64, 32)
    features = torch.randn(2, 3, 9, 48)  # a 3-frame video
    tokens = adapter(features)
    assert tokens.shape == (2, 4, 64)
    expected = adapter.projection(
        tiny_lm(prefix=adapter.input_projection(resampler(features)), return_hidden=True)
    )
    torch.testing.assert_close(tokens, expected, atol=0, rtol=0)
    (tokens * torch.randn_like(tokens)).sum().backward()
    for layer in (adapter.input_projection, adapter.projection):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_mlp_adapter_reads_every_patch_and_a_video_as_its_frame_mean():
    """Table 13's baseline against a hand computation: W2 gelu(W1 x + b1) + b2 per patch; a video is
    the image adapter on the mean of its frames; it trains exactly its two layers."""
    torch.manual_seed(0)
    adapter = MLPAdapter(48, 64)
    image, video = torch.randn(2, 9, 48), torch.randn(2, 3, 9, 48)
    expected = (
        F.gelu(image @ adapter.hidden.weight.T + adapter.hidden.bias) @ adapter.out.weight.T
        + adapter.out.bias
    )
    torch.testing.assert_close(adapter(image), expected, atol=1e-6, rtol=1e-6)
    assert adapter(video).shape == (2, 9, 64)
    torch.testing.assert_close(adapter(video), adapter(video.mean(dim=1)), atol=0, rtol=0)
    # 2 padding frames (collate's), counted out
    padded = torch.cat([video, torch.randn(2, 2, 9, 48)], dim=1)
    torch.testing.assert_close(
        adapter(padded, torch.tensor([3, 3])), adapter(video), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match=r"\(B, N, 48\).*got shape \(2, 9, 40\)"):
        adapter(torch.randn(2, 9, 40))
    model = build_vlm(toy_spec("mlp"))
    assert model.num_trainable_parameters() == 48 * 64 + 64 + 64 * 64 + 64
    # 4 x 4 patches of 8 pixels
    assert model.visual_tokens(torch.randn(2, 4, 3, 32, 32)).shape == (
        2,
        16,
        64,
    )


@pytest.mark.parametrize("adapter", ["perceiver", "vadapter"])
def test_a_short_video_padded_in_a_batch_gives_the_visual_tokens_it_gives_alone(adapter):
    """collate pads a 3-frame video to the batch's 5 frames and counts its real ones; the padding
    frames (whatever the ViT makes of them) are left out, so each row equals the video alone."""
    torch.manual_seed(0)
    model = build_vlm(toy_spec(adapter, max_frames=5))
    # learned ones: frame t gets its own
    torch.nn.init.normal_(model.adapter.resampler.time_embedding, std=0.5)
    videos = [torch.randn(frames, 3, 32, 32) for frames in (5, 3, 5)]
    batch = data.collate(
        [
            {
                "pixels": video,
                "input_ids": torch.tensor([2, 5]),
                "loss_mask": torch.tensor([False, True]),
                "image_id": i,
            }
            for i, video in enumerate(videos)
        ],
        pad_id=0,
    )
    assert batch["pixels"].shape == (3, 5, 3, 32, 32) and batch["num_frames"].tolist() == [5, 3, 5]
    assert torch.equal(batch["pixels"][1, 3:], torch.zeros(2, 3, 32, 32))
    with torch.no_grad():
        batched = model.visual_tokens(batch["pixels"], num_frames=batch["num_frames"])
        for row, video in enumerate(videos):
            torch.testing.assert_close(
                batched[row], model.visual_tokens(video[None])[0], atol=1e-5, rtol=0
            )
        # the padding read as frames: another result
        unmasked = model.visual_tokens(batch["pixels"])
    assert (unmasked[1] - batched[1]).abs().max() > 1e-3


def saved_for_backward_bytes(run) -> tuple[int, torch.Tensor]:
    """-> (bytes autograd keeps for the backward while `run()` builds its graph, run()'s result)."""
    saved = []

    def keep(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        result = run()
    return sum(saved), result


def test_checkpointed_lm_blocks_keep_less_for_the_backward_and_give_the_same_gradient():
    """--checkpoint-lm: the frozen LM's blocks keep only their inputs for the backward and run
    again in it; the gradient reaching the visual tokens is the same, bit for bit."""
    lm = PaLMDecoder(PaLMConfig(vocab_size=VOCAB, dim=32, depth=3, num_heads=4, max_seq_len=32))
    lm.requires_grad_(False)
    _, input_ids, loss_mask = eight_pairs()
    prefix = torch.randn(8, 4, 32, requires_grad=True)
    results = {}
    for recompute in (False, True):
        lm.checkpoint_blocks = recompute
        kept, (_, loss) = saved_for_backward_bytes(
            lambda: lm(input_ids, prefix=prefix, loss_mask=loss_mask, return_logits=False)
        )
        results[recompute] = kept, loss, torch.autograd.grad(loss, prefix)[0]
    (kept_all, loss, grad), (kept_inputs, loss_recomputed, grad_recomputed) = results.values()
    assert torch.equal(loss, loss_recomputed) and torch.equal(grad, grad_recomputed)
    assert kept_inputs < kept_all / 3, (kept_inputs, kept_all)
    with torch.no_grad():  # no backward to come: nothing to recompute, the same output
        lm.checkpoint_blocks = True
        assert torch.equal(lm(input_ids, prefix=prefix, loss_mask=loss_mask)[1], loss)

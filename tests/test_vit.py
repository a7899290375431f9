"""vit.py: shapes, video = frame by frame, position-embedding resizing, presets, config errors."""

import pytest
import torch

from vit import VIT_CONFIGS, ViT, ViTConfig, num_parameters, resize_position_embedding

SMALL = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, num_heads=4, mlp_dim=64)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ViT(SMALL).eval()


def test_image_and_video_shapes(model):
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)  # 4 x 4 patches, no class token
    assert model(torch.randn(2, 5, 3, 32, 32)).shape == (2, 5, 16, 32)


def test_video_is_each_frame_through_the_image_path(model):
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        frame_by_frame = torch.stack([model(video[:, t]) for t in range(video.shape[1])], dim=1)
        torch.testing.assert_close(model(video), frame_by_frame, atol=1e-6, rtol=0)


def test_patch_embedding_is_local(model):
    """The patch embedding alone is local: changing one pixel changes exactly one patch token."""
    pixels = torch.randn(1, 3, 32, 32)
    changed = pixels.clone()
    changed[0, :, 9, 17] += 1.0  # row 9, column 17: patch (1, 2) of the 4 x 4 grid
    with torch.no_grad():
        # (16,)
        difference = (
            (model.patch_embedding(changed) - model.patch_embedding(pixels)).abs().sum(1).flatten()
        )
    assert difference.nonzero().flatten().tolist() == [1 * 4 + 2]


def test_resizing_the_position_embedding_to_its_own_grid_is_the_identity(model):
    resized = resize_position_embedding(model.position_embedding, (4, 4), (4, 4))
    torch.testing.assert_close(resized, model.position_embedding, atol=1e-6, rtol=0)


def test_resizing_keeps_rows_as_rows():
    """An embedding that varies only down the rows of the patch grid still does after resizing to a
    non-square grid (catches height/width mix-ups in the reshapes), and keeps increasing."""
    # value = row index
    rows = torch.arange(4.0).repeat_interleave(4).view(1, 16, 1).expand(1, 16, 3)
    resized = resize_position_embedding(rows, (4, 4), (6, 3)).view(6, 3, 3)  # (rows, columns, D)
    torch.testing.assert_close(resized, resized[:, :1].expand(6, 3, 3))
    assert (resized[1:, 0, 0] > resized[:-1, 0, 0]).all()


def test_other_image_sizes_use_the_resized_grid(model):
    features = model(torch.randn(2, 3, 48, 24))  # 6 x 3 patches
    assert features.shape == (2, 18, 32) and torch.isfinite(features).all()


@pytest.mark.parametrize("size", [(30, 32), (32, 36)])
def test_sizes_not_divisible_by_the_patch_size_are_refused(model, size):
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*patch_size=8"):
        model(torch.randn(1, 3, *size))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 32, 32), (1, 2, 4, 32, 32)])
def test_wrong_input_shapes_are_refused(model, shape):
    with pytest.raises(ValueError, match="got shape"):
        model(torch.randn(*shape))


def test_math_and_sdpa_backends_agree():
    torch.manual_seed(0)
    math_model = ViT(ViTConfig(**{**vars(SMALL), "attention_backend": "math"})).eval()
    sdpa_model = ViT(ViTConfig(**{**vars(SMALL), "attention_backend": "sdpa"})).eval()
    sdpa_model.load_state_dict(math_model.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(math_model(pixels), sdpa_model(pixels), atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(model):
    features = model.train()(torch.randn(2, 3, 32, 32))
    (
        features * torch.randn_like(features)
    ).sum().backward()  # a plain sum would cancel in the final LayerNorm
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "name,patches,parameters",
    [("toy", 64, 826_240), ("B/16", 196, 85_797_120), ("L/14", 256, 303_176_704)],
)
def test_presets(name, patches, parameters):
    """Standard ViT sizes without class token or head (timm's B/16 body is 85.8M, CLIP's L/14
    303M)."""
    config = VIT_CONFIGS[name]
    assert config.grid_size**2 == patches
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        assert num_parameters(ViT(config)) == parameters


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"image_size": 100, "patch_size": 16}, r"image_size=100 .*patch_size=16"),
        ({"dim": 30, "num_heads": 4}, r"num_heads=4 .*dim=30"),
        ({"depth": 0}, r"depth=0"),
        ({"norm_eps": -1.0}, r"norm_eps=-1.0"),
        ({"attention_backend": "cuda"}, r"attention_backend='cuda'"),
    ],
)
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**{**vars(SMALL), **changes})

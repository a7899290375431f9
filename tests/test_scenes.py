"""scenes.py: the scene labels the stand-in ViT learns from, and the linear probe that reads them
back."""

import pytest
import torch

from stage0 import scenes, synthetic

VOCABULARY = {
    "shape": ["circle", "square"],
    "colour": ["red", "blue"],
    "size": ["small", "large"],
    "rows": ["top", "bottom"],
    "columns": ["left", "middle", "right"],
}


def test_scene_targets_put_each_object_in_its_cell():
    scene = {
        "objects": [
            {"shape": "square", "colour": "red", "size": "large", "position": "bottom middle"},
            {"shape": "circle", "colour": "blue", "size": "small", "position": "top left"},
        ]
    }
    targets = scenes.scene_targets(scene, VOCABULARY)
    assert targets["shape"].tolist() == [1, 0, 0, 0, 2, 0]  # 0 = empty; cells row-major
    assert targets["colour"].tolist() == [2, 0, 0, 0, 1, 0]
    assert targets["size"].tolist() == [1, 0, 0, 0, 2, 0]
    assert targets["count"].item() == 2


def test_the_world_writes_the_vocabulary_and_labels_match_its_scenes(world):
    vocabulary = scenes.scene_vocabulary(world)
    assert vocabulary["shape"] == list(synthetic.SHAPES) and vocabulary["rows"] == list(
        synthetic.ROWS
    )
    dataset = scenes.SceneDataset(world, "train", image_size=32, limit=5)
    sample = dataset[0]
    assert sample["pixels"].shape == (3, 32, 32)
    objects = dataset.scenes[0]["objects"]
    assert (
        int((sample["targets"]["shape"] > 0).sum())
        == len(objects)
        == sample["targets"]["count"].item()
    )


def test_real_data_without_scene_labels_is_a_clear_error(tmp_path):
    with pytest.raises(scenes.DataError, match="scene_vocabulary"):
        scenes.scene_vocabulary(tmp_path)


def test_pool_cells_averages_the_patches_whose_centres_lie_in_each_cell():
    # a 6 x 6 patch grid, value = index
    features = torch.arange(36, dtype=torch.float).view(1, 36, 1)
    pooled = scenes.pool_cells(features, 2, 3)  # cells of 3 x 2 patches
    top_left = torch.tensor([0, 1, 6, 7, 12, 13], dtype=torch.float).mean()
    bottom_right = torch.tensor([22, 23, 28, 29, 34, 35], dtype=torch.float).mean()
    assert pooled.shape == (1, 6, 1)
    assert torch.isclose(pooled[0, 0, 0], top_left) and torch.isclose(pooled[0, 5, 0], bottom_right)


def test_pool_cells_never_shares_a_patch_between_cells_when_the_grid_does_not_divide():
    weights = scenes.cell_weights(8, 2, 3)  # the toy ViT: 8 x 8 patches, the world's 2 x 3 cells
    assert weights.shape == (6, 64)
    assert ((weights > 0).sum(dim=0) == 1).all()  # every patch in exactly one cell
    assert torch.allclose(weights.sum(dim=1), torch.ones(6))


def test_scene_loss_counts_one_entry_per_label():
    torch.manual_seed(0)
    vision = torch.nn.Identity()
    vision.config = type("Config", (), {"dim": 8})()
    model = scenes.SceneLabelModel(vision, VOCABULARY)
    samples = [
        {
            "pixels": torch.randn(16, 8),
            "targets": {
                "shape": torch.tensor([1, 0, 0, 0, 2, 0]),
                "colour": torch.tensor([2, 0, 0, 0, 1, 0]),
                "size": torch.tensor([1, 0, 0, 0, 2, 0]),
                "count": torch.tensor(2),
            },
        }
    ] * 3
    batch = scenes.collate_scenes(samples)
    loss_sum, count = scenes.scene_loss(model, batch)
    assert count == 3 * (6 * 3 + 1)
    logits = model(batch["pixels"])
    by_hand = sum(
        torch.nn.functional.cross_entropy(
            logits[k].flatten(0, -2), batch["targets"][k].flatten(), reduction="sum"
        )
        for k in logits
    )
    assert torch.allclose(loss_sum, by_hand)


def probe_data(informative: bool, n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    labels[: n // 2] = 0  # class 0 is the majority, as "empty" is for cells
    features = torch.randn(n, 16, generator=generator)
    if informative:
        features[:, :4] += 4 * torch.nn.functional.one_hot(labels, 4)
    return features, labels


def test_linear_probe_reads_features_that_encode_the_labels():
    train_x, train_y = probe_data(True, 800, 0)
    test_x, test_y = probe_data(True, 400, 1)
    assert scenes.linear_probe(train_x, train_y, test_x, test_y, 4) > 0.97


def test_linear_probe_on_noise_stays_near_the_majority_baseline():
    train_x, train_y = probe_data(False, 800, 0)
    test_x, test_y = probe_data(False, 400, 1)
    accuracy = scenes.linear_probe(train_x, train_y, test_x, test_y, 4)
    majority = scenes.majority_accuracy(train_y, test_y)
    assert 0.5 <= majority <= 0.7
    assert abs(accuracy - majority) < 0.08

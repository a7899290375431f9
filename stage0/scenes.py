"""Scene labels: what the stand-in vision encoder of Figure 2 is pretrained to see, and how a probe
checks it.

The paper freezes a ViT that arrives pretrained (CoCa on image-text pairs; JFT classification for
the ViT-g). Offline, the stand-in is pretrained with supervision on the synthetic world's scene
labels, a JFT-like classification: for each cell of the world's grid (2 rows x 3 columns) the
shape, colour and size of its object (or "empty"), and the number of objects. The heads are
linear maps of the patch features averaged over each cell, so what they learn is, by
construction, what a linear probe on the frozen features can read (`evaluate.py probe`).
"""

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from support.data_checks import DataError
from support.images import load_image

KINDS = ("shape", "colour", "size")  # per cell, 0 = empty
EMPTY = "empty"


def scene_vocabulary(folder: str | Path) -> dict:
    """{"shape": [...], "colour": [...], "size": [...], "rows": [...], "columns": [...]} from the
    world's dataset.json (written by stage0/synthetic.py); real data has no scene labels."""
    path = Path(folder) / "dataset.json"
    try:
        vocabulary = json.loads(path.read_text())["scene_vocabulary"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise DataError(
            f"{path}: no 'scene_vocabulary' ({error!r}); scene labels exist only for a world "
            "written by `python -m stage0.synthetic --out DIR`"
        ) from error
    return vocabulary


def read_scenes(folder: str | Path, split: str) -> list[dict]:
    path = Path(folder) / f"scenes_{split}.json"
    if not path.is_file():
        raise DataError(
            f"{path}: missing; expected the scenes of split {split!r} (python -m stage0.synthetic "
            "--out DIR)"
        )
    return json.loads(path.read_text())["scenes"]


def scene_targets(scene: dict, vocabulary: dict) -> dict[str, torch.Tensor]:
    """{kind: (cells,) class per cell, 0 = empty, k = vocabulary[kind][k - 1]} and "count": ()
    objects."""
    rows, columns = vocabulary["rows"], vocabulary["columns"]
    targets = {kind: torch.zeros(len(rows) * len(columns), dtype=torch.long) for kind in KINDS}
    for obj in scene["objects"]:
        row, column = obj["position"].split(" ")
        cell = rows.index(row) * len(columns) + columns.index(column)
        for kind in KINDS:
            targets[kind][cell] = 1 + vocabulary[kind].index(obj[kind])
    targets["count"] = torch.tensor(len(scene["objects"]))
    return targets


def num_classes(vocabulary: dict) -> dict[str, int]:
    rows, columns = vocabulary["rows"], vocabulary["columns"]
    return {
        **{kind: 1 + len(vocabulary[kind]) for kind in KINDS},
        "count": 1 + len(rows) * len(columns),
    }


class SceneDataset(Dataset):
    """The images of a split with their scene targets: {pixels (3, S, S), targets {kind: ...}}."""

    def __init__(self, folder: str | Path, split: str, image_size: int, limit: int | None = None):
        self.folder, self.image_size = Path(folder), image_size
        self.vocabulary = scene_vocabulary(folder)
        self.scenes = read_scenes(folder, split)[:limit]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        scene = self.scenes[index]
        return {
            "pixels": load_image(self.folder / scene["file_name"], self.image_size),
            "targets": scene_targets(scene, self.vocabulary),
        }


def collate_scenes(samples: list[dict]) -> dict:
    targets = {
        kind: torch.stack([s["targets"][kind] for s in samples]) for kind in samples[0]["targets"]
    }
    # The trainer normalizes by loss_mask.sum(): here one entry per predicted label.
    count = sum(t[0].numel() for t in targets.values())
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "targets": targets,
        "loss_mask": torch.ones(len(samples), count, dtype=torch.bool),
    }


def cell_weights(side: int, rows: int, columns: int) -> torch.Tensor:
    """(cells, side * side): each cell averages the patches whose centres lie inside it. When the
    patch grid does not divide into the cells (8 patches, 3 columns) no patch is shared, so a
    cell's feature does not mix in its neighbour's object."""
    centres = (torch.arange(side) + 0.5) / side  # patch centres, as fractions of the side
    row, column = (centres * rows).floor().long(), (centres * columns).floor().long()
    cell = (row[:, None] * columns + column[None, :]).flatten()  # (N,): the cell of each patch
    weights = F.one_hot(cell, rows * columns).T.float()  # (cells, N)
    return weights / weights.sum(dim=1, keepdim=True)


def pool_cells(features: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Patch features (B, N, D) on a square patch grid -> the mean over each cell (B, rows *
    columns, D)."""
    weights = cell_weights(int(features.shape[1] ** 0.5), rows, columns).to(features)
    return torch.einsum("cn,bnd->bcd", weights, features)


class SceneHeads(nn.Module):
    """Linear heads: each cell's mean feature -> shape / colour / size; the mean of all -> count."""

    def __init__(self, dim: int, vocabulary: dict):
        super().__init__()
        self.rows, self.columns = len(vocabulary["rows"]), len(vocabulary["columns"])
        self.heads = nn.ModuleDict(
            {kind: nn.Linear(dim, classes) for kind, classes in num_classes(vocabulary).items()}
        )

    def forward(self, features):  # (B, N, D) -> {kind: logits (B, cells, C) or (B, C) for count}
        cells = pool_cells(features, self.rows, self.columns)
        return {
            kind: head(features.mean(dim=1) if kind == "count" else cells)
            for kind, head in self.heads.items()
        }


class SceneLabelModel(nn.Module):
    """Stage 0 for the vision encoder: ViT -> scene heads; the heads are dropped after
    pretraining."""

    def __init__(self, vision: nn.Module, vocabulary: dict):
        super().__init__()
        self.vision, self.heads = vision, SceneHeads(vision.config.dim, vocabulary)

    def forward(self, pixels):
        return self.heads(self.vision(pixels))


def scene_loss(model, batch: dict):
    """The trainer's loss: (sum of cross-entropies over every label, number of labels)."""
    logits = model(batch["pixels"])
    total = sum(
        F.cross_entropy(
            logits[kind].flatten(0, -2), batch["targets"][kind].flatten(), reduction="sum"
        )
        for kind in logits
    )
    return total, batch["loss_mask"].sum()


# ---------------------------------------------------------------------------------------------
# The linear probe: logistic regression on frozen features, fit on train, scored on test
# ---------------------------------------------------------------------------------------------


def linear_probe(
    train_x, train_y, test_x, test_y, classes: int, weight_decay: float = 1e-4, steps: int = 200
) -> float:
    """Multinomial logistic regression (full-batch L-BFGS on standardized features) -> test
    accuracy."""
    mean, std = train_x.mean(dim=0), train_x.std(dim=0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.LBFGS(
        probe.parameters(), lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(train_x), train_y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (probe(test_x).argmax(dim=-1) == test_y).float().mean().item()


def majority_accuracy(train_y, test_y) -> float:
    """The baseline a probe must beat: always answer the most common training class."""
    return (test_y == torch.bincount(train_y).argmax()).float().mean().item()


@torch.no_grad()
def probe_inputs(vision: nn.Module, dataset: SceneDataset, batch_size: int = 64) -> dict:
    """{"cell_features" (B * cells, D), "image_features" (B, D), kind: targets} for a split."""
    rows, columns = len(dataset.vocabulary["rows"]), len(dataset.vocabulary["columns"])
    cells, means, targets = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_scenes(
            [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        )
        features = vision(batch["pixels"]).float()  # (B, N, D)
        cells.append(pool_cells(features, rows, columns).flatten(0, 1))
        means.append(features.mean(dim=1))
        targets.append(batch["targets"])
    joined = {kind: torch.cat([t[kind] for t in targets]).flatten() for kind in targets[0]}
    return {"cell_features": torch.cat(cells), "image_features": torch.cat(means), **joined}


def probe_scores(train: dict, test: dict, vocabulary: dict) -> dict:
    """{kind: {"accuracy", "majority"}} for each cell's shape and colour and the object count."""
    classes = num_classes(vocabulary)
    scores = {}
    for kind in ("shape", "colour", "count"):
        inputs = "image_features" if kind == "count" else "cell_features"
        scores[kind] = {
            "accuracy": linear_probe(
                train[inputs], train[kind], test[inputs], test[kind], classes[kind]
            ),
            "majority": majority_accuracy(train[kind], test[kind]),
        }
    return scores

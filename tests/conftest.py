"""Helpers shared by the test files: the repository root, one-thread runs, small model specs,
a small synthetic world and its tokenizer, the reader property tests' store of files, a tiny
text-only training run, the chain of stage runs that the test_training*.py files read, and sockets
refused for the test_hf*.py files."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reader_store import FILES, IMAGE, encoded

import data
import train_stage1
import train_stage2
import trainer
from palm_decoder import PaLMConfig, PaLMDecoder
from resampler import ResamplerConfig
from stage0 import pretrain, synthetic
from support.model_spec import ModelSpec
from vit import ViTConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Sockets refused, for every test of the test_hf*.py files (their pytestmark): loading a folder
    must never reach for the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def toy_spec(
    adapter: str = "resampler",
    *,
    vocab_size: int = 64,
    vision_dim: int = 48,
    lm_dim: int = 64,
    tiny_dim: int = 48,
    image_size: int = 32,
    num_latents: int = 4,
    max_frames: int = 4,
) -> ModelSpec:
    """A model small enough to train in a test: one ViT block on 8x8 patches, a 2-block LM, and for
    "vadapter" a 1-block tiny LM. The resampler is as wide as what reads its latents (the LM, or the
    tiny LM in the VAdapter), with 2 layers for the perceiver baseline, and absent for "mlp"; the LM
    trains in stage 1 only."""
    lm = PaLMConfig(vocab_size=vocab_size, dim=lm_dim, depth=2, num_heads=4, max_seq_len=128)
    tiny_lm = PaLMConfig(vocab_size=vocab_size, dim=tiny_dim, depth=1, num_heads=4, max_seq_len=128)
    return ModelSpec(
        vision=ViTConfig(
            image_size=image_size,
            patch_size=8,
            dim=vision_dim,
            depth=1,
            num_heads=4,
            mlp_dim=2 * vision_dim,
        ),
        resampler=None
        if adapter == "mlp"
        else ResamplerConfig(
            input_dim=vision_dim,
            dim=tiny_dim if adapter == "vadapter" else lm_dim,
            depth=2 if adapter == "perceiver" else 1,
            num_latents=num_latents,
            num_heads=4,
            max_frames=max_frames,
        ),
        lm=lm,
        tiny_lm=tiny_lm if adapter == "vadapter" else None,
        adapter=adapter,
        train_lm=adapter == "resampler",
    )


SMALL_WORLD = dict(
    train_images=40,
    val_images=8,
    test_images=8,
    train_videos=12,
    val_videos=3,
    test_videos=3,
    num_frames=4,
)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def world_texts(world: Path) -> list[str]:
    """The train split's image captions and "question: ... answer: ..." lines."""
    captions = data.read_captions(world / "captions_train.json").examples
    vqa = data.read_vqa(
        world / "questions_train.json",
        world / "annotations_train.json",
        world / "captions_train.json",
    ).examples
    return [e.target for e in captions] + [f"{e.prompt} {e.target}" for e in vqa]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A small synthetic world (seed 1, SMALL_WORLD) that the data, reader and generator tests only
    read."""
    out = tmp_path_factory.mktemp("world")
    synthetic.generate(out, synthetic.WorldConfig(seed=1, **SMALL_WORLD))
    return out


@pytest.fixture(scope="session")
def tokenizer(world, tmp_path_factory) -> data.Tokenizer:
    """A sentencepiece model trained on world_texts(world)."""
    return data.Tokenizer.train(
        world_texts(world), tmp_path_factory.mktemp("tok") / "shapes.model", vocab_size=400
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for name, what in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if what == IMAGE:
            (root / name).write_bytes(b"not an image" if "fake" in name else encoded())
            continue
        (root / name).mkdir()
        for file in [f"{t}.png" for t in range(what)] + ["notes.txt"] * ("notes" in name):
            (root / name / file).write_bytes(encoded() if file.endswith(".png") else b"notes")
    return root


def tiny_lm_run(tmp_path, loss_fn=None, **config):
    """A text-only LM trained by trainer.train on a dozen texts: the loop in a second."""
    texts = ["a red circle", "two blue squares", "a green star above a cross"] * 4
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    torch.manual_seed(0)
    model = PaLMDecoder(PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=1, num_heads=2))
    config = trainer.TrainConfig(
        **{
            "out_dir": str(tmp_path / "run"),
            "steps": 4,
            "batch_size": 4,
            "save_every": 2,
            "eval_every": 100,
            "log_every": 1,
            **config,
        }
    )
    dataset = data.TextDataset([[text] for text in texts], tokenizer)
    return trainer.train(
        model,
        loss_fn or pretrain.lm_loss,
        dataset,
        dataset,
        lambda s: data.collate(s, tokenizer.pad_id),
        config,
        "pretrain-lm",
        ModelSpec(lm=model.config),
    )


# fp32 on every CPU (the default is bf16 where the CPU has bf16 matmuls): the frozen models stay
# bit-identical to their files. tests/test_trainer.py checks the default itself.
FAST = [
    "--bf16",
    "false",
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--log-every",
    "1",
]


def losses(run_dir):
    lines = [
        json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """A tiny data folder and every stage run once, each loading the previous stage's checkpoint."""
    root = tmp_path_factory.mktemp("chain")
    data_dir = root / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stage0.synthetic",
            "--out",
            str(data_dir),
            "--train-images",
            "48",
            "--val-images",
            "16",
            "--test-images",
            "8",
            "--train-videos",
            "16",
            "--val-videos",
            "8",
            "--test-videos",
            "4",
            "--image-size",
            "32",
            "--num-frames",
            "2",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    small_vit = [
        "--vit-image-size",
        "32",
        "--vit-dim",
        "32",
        "--vit-depth",
        "1",
        "--vit-num-heads",
        "2",
        "--vit-mlp-dim",
        "64",
    ]
    small_lm = ["--lm-dim", "32", "--lm-depth", "1", "--lm-num-heads", "2"]
    common = ["--data", str(data_dir), *FAST]
    runs = {
        name: root / name
        for name in ("vit", "tiny_lm", "large_lm", "stage1", "vadapter", "perceiver", "mlp")
    }
    pretrain.main(
        [
            "vit",
            *common,
            *small_vit,
            *small_lm,
            "--num-latents",
            "4",
            "--max-frames",
            "2",
            "--out-dir",
            str(runs["vit"]),
        ]
    )
    pretrain.main(["lm", *common, *small_lm, "--out-dir", str(runs["tiny_lm"])])
    pretrain.main(
        [
            "lm",
            *common,
            "--lm-dim",
            "48",
            "--lm-depth",
            "2",
            "--lm-num-heads",
            "4",
            "--out-dir",
            str(runs["large_lm"]),
        ]
    )
    resampler = ["--resampler-num-latents", "4", "--resampler-max-frames", "2"]
    train_stage1.main(
        [
            *common,
            *resampler,
            "--vit",
            str(runs["vit"]),
            "--tiny-lm",
            str(runs["tiny_lm"]),
            "--out-dir",
            str(runs["stage1"]),
        ]
    )
    frozen = ["--vit", str(runs["vit"]), "--lm", str(runs["large_lm"])]
    train_stage2.main(
        [
            *common,
            *frozen,
            *resampler,
            "--adapter",
            "vadapter",
            "--stage1",
            str(runs["stage1"]),
            "--out-dir",
            str(runs["vadapter"]),
        ]
    )
    train_stage2.main(
        [
            *common,
            *frozen,
            *resampler,
            "--adapter",
            "perceiver",
            "--perceiver-depth",
            "2",
            "--out-dir",
            str(runs["perceiver"]),
        ]
    )
    train_stage2.main(
        [
            *common,
            *frozen,
            "--adapter",
            "mlp",
            "--self-contained",
            "true",
            "--out-dir",
            str(runs["mlp"]),
        ]
    )
    return data_dir, runs, common, frozen, resampler

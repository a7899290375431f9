"""synthetic.py: the shapes world is deterministic, its command writes what it is asked, and the
folder it writes into is its own: someone else's dataset is refused and left as it was. That every
caption, answer and pixel is true to the stored scene: test_synthetic_truth.py."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, SMALL_WORLD, load_json
from stage0 import synthetic


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    tiny = dict(
        train_images=6,
        val_images=2,
        test_images=2,
        train_videos=2,
        val_videos=1,
        test_videos=1,
        num_frames=3,
    )
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate(tmp_path / name, synthetic.WorldConfig(seed=seed, **tiny))
    first, second, other = (file_hashes(tmp_path / name) for name in "abc")
    # images, frames, JSON files, the manifest
    assert len(first) == 10 + 4 * 3 + 25 + 1 and first == second
    assert other.keys() == first.keys()
    changed = [name for name in first if first[name] != other[name]]
    assert "captions_train.json" in changed and "images/train/000000000001.png" in changed


def test_regenerating_into_the_same_folder_replaces_the_old_world(tmp_path):
    synthetic.generate(tmp_path, synthetic.WorldConfig(**{**SMALL_WORLD, "train_images": 10}))
    synthetic.generate(tmp_path, synthetic.WorldConfig(**{**SMALL_WORLD, "train_images": 3}))
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3


def test_splits_are_disjoint_and_dataset_json_counts_them(world):
    summary = load_json(world / "dataset.json")
    assert summary["generator_version"] == synthetic.GENERATOR_VERSION and summary["seed"] == 1
    assert summary["options"]["num_frames"] == 4
    ids, hashes = [], []
    for prefix, kind in (("", "images"), ("video_", "videos")):
        for split in synthetic.SPLITS:
            captions = load_json(world / f"{prefix}captions_{split}.json")
            count = SMALL_WORLD[f"{split}_{kind}"]
            assert len(captions["images"]) == count == summary["counts"][prefix + split]["items"]
            assert (
                len(captions["annotations"])
                == 5 * count
                == summary["counts"][prefix + split]["captions"]
            )
            ids += [image["id"] for image in captions["images"]]
            # a video's frames may repeat inside it, not across videos
            for image in captions["images"]:
                files = sorted((world / image["file_name"]).glob("*.png")) or [
                    world / image["file_name"]
                ]
                hashes.append(hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest())
    assert len(ids) == len(set(ids)), (
        "image ids must be unique across splits (the feature cache keys on them)"
    )
    assert len(hashes) == len(set(hashes)) == len(ids), "no image or video may appear twice"


def test_command_line(tmp_path):
    shown = subprocess.run(
        [sys.executable, "-m", "stage0.synthetic", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert (
        shown.returncode == 0
        and "--train-images" in shown.stdout
        and "--num-frames" in shown.stdout
    )
    flags = (
        "--train-images 3 --val-images 1 --test-images 1 --train-videos 1 --val-videos 1 "
        "--test-videos 1 --num-frames 2 --image-size 32 --seed 9"
    )
    run = subprocess.run(
        [sys.executable, "-m", "stage0.synthetic", "--out", str(tmp_path), *flags.split()],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    options = load_json(tmp_path / "dataset.json")["options"]
    assert options["image_size"] == 32 and options["seed"] == 9
    assert Image.open(tmp_path / "images" / "train" / "000000000001.png").size == (32, 32)
    assert len(list((tmp_path / "videos" / "train" / "000003000001").iterdir())) == 2


TINY_WORLD_FLAGS = (
    "--train-images 3 --val-images 1 --test-images 1 --train-videos 1 --val-videos 1 "
    "--test-videos 1 --num-frames 2 --image-size 32 --tokenizer stage0/tokenizer.model"
).split()


def write_world(out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stage0.synthetic", "--out", str(out), *TINY_WORLD_FLAGS]
    return subprocess.run([*command, *flags], cwd=REPO, capture_output=True, text=True)


def test_a_folder_of_someone_elses_dataset_is_refused_and_left_as_it_was(tmp_path):
    """A COCO-style folder (images under train2014/, its own annotation files and tokenizer):
    the command names every file it would replace, writes nothing, and with --overwrite true
    replaces them."""
    theirs = {
        "captions_train.json": '{"images": [], "annotations": ["mine"]}',
        "questions_train.json": '{"questions": ["mine"]}',
        "annotations_train.json": '{"annotations": ["mine"]}',
        "tokenizer.model": "their sentencepiece model",
    }
    for name, text in theirs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "train2014").mkdir()
    (tmp_path / "train2014" / "COCO_train2014_000000000001.jpg").write_bytes(b"their image")
    before = file_hashes(tmp_path)
    refused = write_world(tmp_path)
    assert refused.returncode != 0
    assert all(name in refused.stderr for name in theirs), refused.stderr
    assert "--overwrite true" in refused.stderr
    assert file_hashes(tmp_path) == before, "nothing written, nothing replaced"
    assert write_world(tmp_path, "--overwrite", "true").returncode == 0
    assert load_json(tmp_path / "captions_train.json")["annotations"] != ["mine"]
    assert (
        tmp_path / "train2014" / "COCO_train2014_000000000001.jpg"
    ).read_bytes() == b"their image"


def test_its_own_earlier_output_is_replaced_but_not_a_file_edited_since(tmp_path):
    config = synthetic.WorldConfig(**SMALL_WORLD)
    synthetic.generate(tmp_path, config)
    synthetic.generate(tmp_path, config)  # its own files, as the manifest lists them
    (tmp_path / "captions_val.json").write_text('{"edited": true}')
    (tmp_path / "videos" / "notes.txt").write_text("someone's notes")
    with pytest.raises(FileExistsError, match="2 file.*captions_val.json, videos/notes.txt"):
        synthetic.generate(tmp_path, config)
    assert load_json(tmp_path / "captions_val.json") == {"edited": True}
    synthetic.generate(tmp_path, config, overwrite=True)
    assert "images" in load_json(tmp_path / "captions_val.json")


def test_a_world_written_before_manifests_is_still_its_own(tmp_path):
    config = synthetic.WorldConfig(**SMALL_WORLD)
    synthetic.generate(tmp_path, config)
    (tmp_path / "manifest.json").unlink()  # as an earlier version of the command left it
    synthetic.generate(tmp_path, config)
    assert (tmp_path / "manifest.json").exists()

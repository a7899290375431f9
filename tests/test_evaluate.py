"""evaluate.py: the command line that scores a checkpoint on a data folder, captions one image,
compares stage-2 runs and measures image reliance. Untrained toy models on a tiny synthetic data
folder: what is checked is the wiring (files, keys, determinism, errors), not the scores. Its
helpers that need no checkpoint: test_evaluate_helpers.py."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import data
import evaluate
from conftest import REPO, toy_spec
from evaluation import diagnostics, metrics
from evaluation.decoding import Decoding, decode
from evaluation.report import scored_items
from stage0 import synthetic
from support import checkpoints
from support.model_spec import build_vlm
from support.models import load_vlm
from vlm import VisionLanguageModel

pytestmark = pytest.mark.usefixtures("one_thread")


def small_spec(vocab_size, adapter="resampler"):
    """32-wide toy model on 32x32 images and videos of up to 8 frames."""
    return toy_spec(
        adapter,
        vocab_size=vocab_size,
        vision_dim=32,
        lm_dim=32,
        tiny_dim=32,
        image_size=32,
        max_frames=8,
    )


def test_metrics_stay_importable_from_evaluate():
    assert (evaluate.cider_d, evaluate.bleu4, evaluate.vqa_accuracy) == (
        metrics.cider_d,
        metrics.bleu4,
        metrics.vqa_accuracy,
    )


TINY_WORLD = dict(
    train_images=50, val_images=20, test_images=20, train_videos=10, val_videos=5, test_videos=5
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny data folder with its tokenizer, and a checkpoint of an untrained toy model in the
    trainer's format: {stage, spec, model, step, train_config}."""
    folder = tmp_path_factory.mktemp("evaluate")
    world = folder / "data"
    synthetic.generate(world, synthetic.WorldConfig(**TINY_WORLD))
    tokenizer = data.Tokenizer.train(
        data.training_texts(world), world / data.TOKENIZER_FILE, vocab_size=200
    )
    torch.manual_seed(0)
    spec = small_spec(tokenizer.vocab_size)
    (folder / "run").mkdir()
    torch.save(
        {
            "stage": "stage1",
            "spec": spec.to_dict(),
            "model": build_vlm(spec).state_dict(),
            "step": 7,
            "train_config": {"lr": 1e-3},
        },
        folder / "run" / "checkpoint.pt",
    )
    return folder / "run", world


def test_command_line_scores_every_task(run):
    run_dir, world = run
    out = run_dir / "results.json"
    command = [
        sys.executable,
        str(REPO / "evaluate.py"),
        "checkpoint",
        str(run_dir),
        "--data",
        str(world),
        "--split",
        "val",
        "--limit",
        "6",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "8",
        "--out",
        str(out),
    ]
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert finished.returncode == 0, finished.stderr
    results = json.loads(out.read_text())
    assert results["stage"] == "stage1" and results["step"] == 7 and results["split"] == "val"
    assert results["spec"]["lm"]["vocab_size"] > 0 and results["decoding"]["beam_size"] == 1
    expected = {
        "caption": {"cider_d", "bleu4", "images"},
        "vqa": {"vqa_accuracy", "questions"},
        "video_caption": {"cider_d", "bleu4", "images"},
        "video_vqa": {"vqa_accuracy", "questions"},
    }
    assert {task: set(metrics) for task, metrics in results["metrics"].items()} == expected
    assert (
        results["metrics"]["caption"]["images"] == 6 and results["metrics"]["vqa"]["questions"] == 6
    )
    assert results["metrics"]["video_caption"]["images"] == 5  # the split has 5 videos
    for task in expected:
        assert all(isinstance(v, (int, float)) for v in results["metrics"][task].values())
        assert results["samples"][task] and all("prediction" in s for s in results["samples"][task])
    assert len(results["samples"]["caption"][0]["references"]) == synthetic.CAPTIONS_PER_ITEM
    for line in ("caption", "video_vqa", "wrote"):
        assert line in finished.stdout


def test_evaluation_is_deterministic_and_independent_of_batch_size(run):
    run_dir, world = run
    common = dict(tasks=["vqa", "video_caption"], limit=5, tokenizer_path=None, max_new_tokens=6)
    first = evaluate.evaluate_checkpoint(
        run_dir / "checkpoint.pt", world, "val", batch_size=1, **common
    )
    second = evaluate.evaluate_checkpoint(run_dir, world, "val", batch_size=4, **common)
    assert first["metrics"] == second["metrics"] and first["samples"] == second["samples"]
    beam = evaluate.evaluate_checkpoint(run_dir, world, "val", beam=2, batch_size=4, **common)
    assert beam["decoding"]["beam_size"] == 2 and set(beam["metrics"]) == {"vqa", "video_caption"}


def test_caption_one_image_or_video_from_the_command_line(run, capsys):
    run_dir, world = run
    image = next((world / "images" / "val").iterdir())
    video = next((world / "videos" / "val").iterdir())
    evaluate.main(["caption", str(image), "--checkpoint", str(run_dir), "--data", str(world)])
    evaluate.main(
        [
            "caption",
            str(video),
            "--checkpoint",
            str(run_dir),
            "--tokenizer",
            str(world / "tokenizer.model"),
            "--question",
            "does the circle move?",
            "--beam",
            "2",
            "--max-new-tokens",
            "5",
        ]
    )
    caption, answer = capsys.readouterr().out.splitlines()
    # deterministic
    assert caption == evaluate.caption_one(run_dir, image, world / "tokenizer.model")
    with pytest.raises(SystemExit):
        evaluate.main(["caption", str(image), "--checkpoint", str(run_dir)])  # no tokenizer given


def test_stage2_vadapter_checkpoint(run, tmp_path):
    """Stage 2 rebuilds the adapter from the spec alone: here the VAdapter (resampler, tiny LM,
    projection)."""
    _, world = run
    spec = small_spec(data.Tokenizer(world / data.TOKENIZER_FILE).vocab_size, "vadapter")
    torch.save(
        {
            "stage": "stage2",
            "spec": spec.to_dict(),
            "model": build_vlm(spec).state_dict(),
            "step": 3,
        },
        tmp_path / "checkpoint.pt",
    )
    results = evaluate.evaluate_checkpoint(
        tmp_path, world, "val", tasks=["caption"], limit=3, max_new_tokens=4
    )
    assert results["stage"] == "stage2" and results["metrics"]["caption"]["images"] == 3


def test_wrong_stage_or_missing_task_raise(run, tmp_path):
    run_dir, world = run
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**checkpoint, "stage": "pretrain-lm"}, tmp_path / "lm.pt")
    with pytest.raises(ValueError, match="stage"):
        evaluate.evaluate_checkpoint(tmp_path / "lm.pt", world, "val")
    with pytest.raises(data.DataError, match="video_vqa"):
        evaluate.evaluate_checkpoint(run_dir, world, "nosuchsplit", tasks=["video_vqa"])


def test_a_task_file_missing_for_the_split_is_named_not_dropped(run, tmp_path):
    """The folder holds captions for train and val but not test: evaluating test names the
    missing file (the caption and VQA tasks need it) instead of scoring the video tasks alone."""
    run_dir, world = run
    partial = tmp_path / "data"
    shutil.copytree(world, partial)
    (partial / "captions_test.json").unlink()
    with pytest.raises(data.DataError, match="captions_test.json missing.*'caption'"):
        evaluate.evaluate_checkpoint(run_dir, partial, "test", limit=1)
    # asked for by name, the tasks whose files are all there still run
    results = evaluate.evaluate_checkpoint(
        run_dir, partial, "test", tasks=["video_caption"], limit=1, max_new_tokens=2
    )
    assert set(results["metrics"]) == {"video_caption"}


def test_blank_scores_are_the_same_items_decoded_from_zero_pixels(run, monkeypatch):
    """images=("real", "blank"): the real scores as without the blank ones; the blank ones on the
    same items, every image or frame the ViT reads all zeros (same shape, so the same frame counts),
    and a blank caption is what decoding from zero pixels directly gives."""
    run_dir, world = run
    common = dict(tasks=["caption", "video_vqa"], limit=4, max_new_tokens=4)
    real = evaluate.evaluate_checkpoint(run_dir, world, "val", **common)
    seen, encode = [], VisionLanguageModel.encode_images
    monkeypatch.setattr(
        VisionLanguageModel,
        "encode_images",
        lambda self, pixels: seen.append(pixels) or encode(self, pixels),
    )
    both = evaluate.evaluate_checkpoint(run_dir, world, "val", images=("real", "blank"), **common)
    assert both["metrics"] == real["metrics"] and both["samples"] == real["samples"]
    for task in common["tasks"]:
        assert scored_items(both["metrics"][task], both["samples"][task]) == scored_items(
            both["blank_metrics"][task], both["blank_samples"][task]
        )
    blank = [pixels for pixels in seen if not pixels.any()]
    assert len(blank) == len(seen) / 2 and all(pixels.std() > 0 for pixels in seen if pixels.any())
    assert sorted(p.shape for p in blank) == sorted(p.shape for p in seen if p.any())
    model, _ = load_vlm(run_dir)
    tokenizer = data.Tokenizer(world / data.TOKENIZER_FILE)
    ids, visual_start = data.prompt_ids(tokenizer, "")
    size = model.vision.config.image_size
    with torch.no_grad():
        (direct,) = decode(
            model, torch.zeros(1, 3, size, size), [ids], 1, 1.0, 4, tokenizer.eos_id,
            pad_id=tokenizer.pad_id, visual_start=[visual_start],
        )  # fmt: skip
    predictions = {s["prediction"] for s in both["blank_samples"]["caption"]}
    assert predictions == {tokenizer.decode(direct)}, "every blank image is the same image"


def test_compare_and_reliance_commands(run, tmp_path, capsys, monkeypatch):
    """Two stage-2 runs (VAdapter, perceiver baseline) with their validation curves: the table,
    the files next to it, and the reliance losses of both."""
    _, world = run
    vocab_size = data.Tokenizer(world / data.TOKENIZER_FILE).vocab_size
    runs = []
    for adapter, losses in (("vadapter", [3.0, 1.4, 1.0]), ("perceiver", [3.0, 2.5, 1.5])):
        spec = small_spec(vocab_size, adapter)
        folder = tmp_path / adapter
        folder.mkdir()
        torch.save(
            {
                "stage": "stage2",
                "spec": spec.to_dict(),
                "model": build_vlm(spec).state_dict(),
                "step": 30,
            },
            folder / "checkpoint.pt",
        )
        (folder / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"step": 10 * (i + 1), "val_loss": loss}) + "\n"
                for i, loss in enumerate(losses)
            )
        )
        runs.append(str(folder))
    out = tmp_path / "results"
    reads, read = [], checkpoints.read_checkpoint_file
    monkeypatch.setattr(
        checkpoints, "read_checkpoint_file", lambda path: reads.append(path) or read(path)
    )
    evaluate.main(
        [
            "compare",
            *runs,
            "--data",
            str(world),
            "--split",
            "val",
            "--limit",
            "2",
            "--out",
            str(out),
        ]
    )
    assert sorted(reads) == sorted(f"{run}/checkpoint.pt" for run in runs), (
        "each run's checkpoint read once"
    )
    table = (out / "table.md").read_text()
    assert "| vadapter (stage1) |" in table and "| perceiver (depth 2) |" in table
    assert "steps to perceiver (depth 2)'s final val loss" in table and "| 20 of 30 |" in table
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [row["steps_to_baseline_final_loss"] for row in rows] == [20, 30]
    assert (out / "val_loss.csv").read_text().splitlines()[1] == "vadapter (stage1),10,3.000000"
    assert (out / "val_loss.png").stat().st_size > 0
    for row in rows:  # the blank-image scores: a row under each adapter, new fields beside
        assert {task: set(m) for task, m in row["blank_metrics"].items()} == {
            task: set(m) for task, m in row["metrics"].items()
        }
        scores = " | ".join(
            f"{row['blank_metrics'][task][metric]:.3f}"
            for task, metric in [("caption", "cider_d"), ("vqa", "vqa_accuracy")]
        )
        assert f"| {row['adapter']}, blank image |  |  |  | {scores} |" in table
    assert table.splitlines()[3].startswith("| vadapter (stage1), blank image |")
    # made before the blank scores existed: `blank` adds them, the same numbers, and only once
    results = json.loads((out / "results.json").read_text())
    for row in results["runs"]:
        del row["blank_metrics"], row["blank_samples"]
    evaluate.write_json(out / "results.json", results)
    with pytest.raises(data.DataError, match="other items"):
        evaluate.main(["blank", str(out / "results.json"), "--data", str(world)])  # not val
    evaluate.main(["blank", str(out / "results.json"), "--data", str(world), "--split", "val"])
    assert json.loads((out / "results.json").read_text())["runs"] == rows
    assert (out / "table.md").read_text() == table
    assert evaluate.add_blank_scores(out / "results.json", world, "val") == 0
    capsys.readouterr()
    evaluate.main(["reliance", *runs, "--data", str(world), "--limit", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(
        "real images" in line and "shuffled" in line and "text oracle" in line for line in lines
    )
    losses = diagnostics.image_reliance(runs[0], world, limit=4)
    gap = losses["blanked"] - losses["oracle"]
    if gap > 0:
        assert losses["oracle_fraction"] == pytest.approx(
            (losses["blanked"] - losses["real"]) / gap
        )
    else:
        assert math.isnan(losses["oracle_fraction"])


def test_videos_of_different_lengths_decode_batched_as_one_by_one(run, tmp_path):
    """Videos of 2, 5 and 3 frames in one batch: padded to 5, the padding left out of the resampler
    (num_frames through decoding), so every row decodes as it does alone, greedy and beam."""
    run_dir, world = run
    model, _ = load_vlm(run_dir)
    tokenizer = data.Tokenizer(world / data.TOKENIZER_FILE)
    videos = []
    for count, video in zip((2, 5, 3), sorted((world / "videos" / "val").iterdir())):
        videos.append(tmp_path / f"{count}_{video.name}")
        videos[-1].mkdir()
        for frame in data.frame_files(video)[:count]:
            shutil.copy(frame, videos[-1] / frame.name)
    features, num_frames = evaluate.encode_once(model, videos, "cpu")
    assert features.shape[1] == 5 and num_frames.tolist() == [2, 5, 3]
    with torch.no_grad():
        alone = torch.cat(
            [
                model.visual_tokens(features=evaluate.encode_once(model, [video], "cpu")[0])
                for video in videos
            ]
        )
        torch.testing.assert_close(
            model.visual_tokens(features=features, num_frames=num_frames), alone
        )
        assert not torch.allclose(model.visual_tokens(features=features), alone, atol=1e-3), (
            "the padding would count"
        )
        for beam in (1, 2):
            decoding = Decoding(beam, 1.0, 6)
            one_by_one = [
                evaluate.generate_texts(model, tokenizer, [video], [""], decoding, "cpu")[0]
                for video in videos
            ]
            assert (
                evaluate.generate_texts(model, tokenizer, videos, [""] * 3, decoding, "cpu")
                == one_by_one
            )

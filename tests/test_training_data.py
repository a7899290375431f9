"""The data pipeline inside a training run (train_vlm): batches all in the feature cache are fetched
without decoding, worker processes decode every batch, and either way the losses are those of a
run that decodes everything in one process."""

import argparse
import warnings
from collections import Counter

import torch

import data
import trainer
from conftest import losses, toy_spec
from stage0 import synthetic
from support import flags
from support.feature_cache import FeatureCache
from support.model_spec import build_vlm
from support.vlm_training import DataConfig, train_vlm


def test_batches_all_in_the_feature_cache_are_not_decoded_and_train_the_same(
    tmp_path, tokenizer, monkeypatch, one_thread
):
    """Once the feature cache holds every image or video of a batch, train_vlm fetches it without
    decoding pixels (data.VisionTextDataset.__getitems__), and the run's losses are those of a run
    that decodes every batch, bit for bit: images, videos of 2 and 3 frames, two micro-batches a
    step, an unreadable image skipped (--on-bad-sample skip)."""
    folder = tmp_path / "data"
    sizes = dict(train_images=4, val_images=2, test_images=1, train_videos=2, val_videos=1)
    synthetic.generate(
        folder, synthetic.WorldConfig(**sizes, test_videos=1, num_frames=3, image_size=32, seed=1)
    )
    (folder / data.TOKENIZER_FILE).write_bytes(tokenizer.model.serialized_model_proto())
    sorted((folder / "images" / "train").iterdir())[0].write_bytes(b"not an image")
    sorted(sorted((folder / "videos" / "train").iterdir())[0].iterdir())[-1].unlink()
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    data_config = DataConfig.from_flags(
        parser.parse_args(["--data", str(folder), "--on-bad-sample", "skip"]), None
    )
    spec = toy_spec("perceiver", vocab_size=tokenizer.vocab_size)
    loads, undecoded = [], Counter()
    load_pixels, fetched = data.load_pixels, FeatureCache.fetched

    def counted_load(path, *args, **kwargs):
        loads.append(path)
        return load_pixels(path, *args, **kwargs)

    def counted_fetch(cache, image_ids, features, num_frames, device):
        undecoded["image" if num_frames is None else "video"] += len(image_ids)
        return fetched(cache, image_ids, features, num_frames, device)

    monkeypatch.setattr(data, "load_pixels", counted_load)
    monkeypatch.setattr(FeatureCache, "fetched", counted_fetch)

    def run(name: str) -> tuple[dict, dict, int]:
        loads.clear()
        torch.manual_seed(0)
        config = trainer.TrainConfig(
            out_dir=str(tmp_path / name),
            **dict(steps=12, batch_size=8, grad_accum=2, eval_every=4, eval_batches=1),
            **dict(log_every=1, save_every=100, device="cpu", compile=False, bf16=False),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unreadable image, named
            summary = train_vlm(build_vlm(spec), data_config, "stage2", spec, config)
        return summary, losses(tmp_path / name), len(loads)

    skipping, skipping_losses, skipping_loads = run("skipping")
    with monkeypatch.context() as decode_all:
        decode_all.setattr(
            data.VisionTextDataset, "__getitems__", lambda self, indices: [self[i] for i in indices]
        )
        decoding, decoding_losses, decoding_loads = run("decoding")
    assert undecoded["image"] > 0 and undecoded["video"] > 0
    assert decoding_loads - skipping_loads == undecoded.total()
    assert skipping_losses == decoding_losses and sorted(skipping_losses) == list(range(1, 13))
    assert skipping["val_loss"] == decoding["val_loss"] and len(skipping["val_loss"]) == 3
    assert skipping["skipped_samples"] == decoding["skipped_samples"] == {"unreadable image": 1}


def test_worker_processes_decode_every_batch_and_train_as_one_process_does(
    tmp_path, tokenizer, monkeypatch, one_thread
):
    """--num-workers 2: the workers' datasets hold no feature cache (their copy would be stale), so
    every batch comes with its pixels, and the run's losses are those of --num-workers 0, which
    fetches the batches all in the cache without decoding them."""
    folder = tmp_path / "data"
    sizes = dict(train_images=4, val_images=2, test_images=1, train_videos=2, val_videos=1)
    synthetic.generate(
        folder, synthetic.WorldConfig(**sizes, test_videos=1, num_frames=2, image_size=32, seed=1)
    )
    (folder / data.TOKENIZER_FILE).write_bytes(tokenizer.model.serialized_model_proto())
    parser = argparse.ArgumentParser()
    flags.add_data_flags(parser)
    data_config = DataConfig.from_flags(parser.parse_args(["--data", str(folder)]), None)
    spec = toy_spec("perceiver", vocab_size=tokenizer.vocab_size)
    undecoded, fetched = [], FeatureCache.fetched

    def counted_fetch(cache, image_ids, *arguments):
        undecoded.extend(image_ids)
        return fetched(cache, image_ids, *arguments)

    monkeypatch.setattr(FeatureCache, "fetched", counted_fetch)
    runs = {}
    for workers in (0, 2):
        undecoded.clear()
        torch.manual_seed(0)
        config = trainer.TrainConfig(
            out_dir=str(tmp_path / f"workers{workers}"),
            **dict(steps=8, batch_size=4, eval_every=4, eval_batches=1, num_workers=workers),
            **dict(log_every=1, save_every=100, device="cpu", compile=False, bf16=False),
        )
        summary = train_vlm(build_vlm(spec), data_config, "stage2", spec, config)
        runs[workers] = (summary["val_loss"], losses(config.out_dir), len(undecoded))
    assert runs[0][2] > 0 and runs[2][2] == 0, "cached batches skip decoding only without workers"
    assert runs[0][:2] == runs[2][:2] and sorted(runs[2][1]) == list(range(1, 9))

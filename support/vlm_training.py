"""Stages 1 and 2 on a data folder: a vision-language model of Figure 2 trained on its tasks.

Both stage scripts (train_stage1.py, train_stage2.py) build their model, then call `train_vlm`
with a `DataConfig`: it reads the folder's train and val splits (captions, VQA, images and
videos), optionally keeps the frozen ViT's features (support/feature_cache.py), and runs the one
training loop (trainer.train) with the captioning loss (vlm.caption_loss).
"""

import warnings
from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch.distributed as dist

import data
from evaluation.diagnostics import token_scales
from support.feature_cache import FeatureCache
from support.model_spec import ModelSpec
from support.models import load_tokenizer
from support.processes import is_main_process
from trainer import TrainConfig, train
from vlm import VisionLanguageModel, caption_loss

VLM_DEFAULTS = TrainConfig(
    steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=100, save_every=200
)


def skip_report(datasets: list, unreadable: set[str]) -> dict:
    """What a run left out or cut, for its summary: bad samples per reason (the readers', prompts
    too long, `unreadable` images as the batches listed them) and the number of texts cut."""
    skipped = sum((dataset.skipped for dataset in datasets), Counter())
    if unreadable:
        skipped["unreadable image"] = len(unreadable)
    return {
        "skipped_samples": dict(sorted(skipped.items())),
        "truncated_texts": sum(d.truncated for d in datasets),
    }


@dataclass
class DataConfig:
    """What a stage reads from its data folder; the stage scripts fill it from their flags
    (`from_flags`), so the training code never reads a script's command line."""

    folder: str
    tokenizer: str | None  # a sentencepiece .model; None: the folder's tokenizer.model
    lm_source: str | None  # the decoder's checkpoint or hf:FOLDER (whose tokenizer to expect)
    tasks: list[str] | None  # None: every task the folder has
    on_bad_sample: str  # "error" | "skip"
    max_text_tokens: int | None  # None: what max_seq_len leaves after the visual tokens
    cache_features: bool
    feature_cache_gb: float

    @classmethod
    def from_flags(cls, args, lm_source: str | None) -> "DataConfig":
        """The flags of support.flags.add_data_flags -> a DataConfig."""
        return cls(
            folder=args.data,
            tokenizer=args.tokenizer,
            lm_source=lm_source,
            tasks=args.tasks.split(",") if args.tasks else None,
            on_bad_sample=args.on_bad_sample,
            max_text_tokens=args.max_text_tokens,
            cache_features=args.cache_features,
            feature_cache_gb=args.feature_cache_gb,
        )


def train_vlm(
    model: VisionLanguageModel,
    data_config: DataConfig,
    stage: str,
    spec: ModelSpec,
    train_config: TrainConfig,
    frozen: dict | None = None,
) -> dict:
    """Load the data folder's train and val splits and train (trainer.train); both stages use
    it. The summary adds what the data left out or cut (skip_report)."""
    tokenizer_path = data_config.tokenizer or f"{data_config.folder}/{data.TOKENIZER_FILE}"
    vocab_size = model.lm.config.vocab_size
    tokenizer = load_tokenizer(tokenizer_path, vocab_size, data_config.lm_source)
    tasks = data_config.tasks
    image_size = model.vision.config.image_size
    room = spec.lm.max_seq_len - spec.num_visual_tokens  # text positions after the visual tokens
    max_text_tokens = data_config.max_text_tokens or room
    if not 2 <= max_text_tokens <= room:
        raise ValueError(
            f"--max-text-tokens {max_text_tokens}: expected 2 to {room}, what the LM's max_seq_len="
            f"{spec.lm.max_seq_len} leaves after {spec.num_visual_tokens} visual tokens"
        )
    max_frames = spec.resampler.max_frames if spec.resampler is not None else None
    pixel_options = {**model.vision.config.pixel_options(), "max_frames": max_frames}
    main = is_main_process()  # every rank reads the same files: rank 0 alone says what it found
    with warnings.catch_warnings():
        if not main:
            warnings.simplefilter("ignore")
        train_set, val_set = [
            data.task_datasets(
                data_config.folder,
                split,
                tokenizer,
                image_size,
                tasks,
                data_config.on_bad_sample,
                max_text_tokens,
                **pixel_options,
            )
            for split in ("train", "val")
        ]
    cache = None
    if data_config.cache_features:
        cache = FeatureCache(max_bytes=int(data_config.feature_cache_gb * 2**30))
        if main:
            print(cache.describe())
        if train_config.workers() == 0:  # a worker's copy of the cache would be stale
            for dataset in train_set + val_set:  # a batch all cached is not decoded
                dataset.feature_cache = cache
    # images skip mode left out, as the batches list them (from any worker process)
    unreadable = set()

    def loss_fn(model, batch):
        unreadable.update(batch.get("unreadable", ()))
        return caption_loss(model, batch, feature_cache=cache)

    collate = partial(data.collate, pad_id=tokenizer.pad_id)
    # the same few validation images before and after: how the visual tokens' scale moved
    probe = collate([val_set[0][i] for i in range(min(8, len(val_set[0])))])
    start = token_scales(model, probe)
    summary = train(model, loss_fn, train_set, val_set, collate, train_config, stage, spec, frozen)
    end = token_scales(model, probe)
    summary["visual_token_rms"] = {"start": start["visual"], "end": end["visual"]}
    summary["text_embedding_rms"] = end["text"]
    if main:
        print(
            f"[{stage}] visual tokens' RMS {start['visual']:.4f} at step 0, "
            f"{end['visual']:.4f} at the end; the LM's text embeddings' {end['text']:.4f}"
        )
    everywhere = [unreadable]
    if dist.is_initialized():
        everywhere = [set() for _ in range(dist.get_world_size())]
        dist.all_gather_object(everywhere, unreadable)
    return {**summary, **skip_report(train_set + val_set, set().union(*everywhere))}

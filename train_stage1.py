"""Stage 1 of the progressive alignment: the tiny LM learns to read visual features.

Frozen ViT -> 1-layer perceiver resampler -> tiny LM (from its language pretraining), trained as
the decoder of a small vision-language model on captioning and VQA. Both the resampler and the
tiny LM are trained; stage 2 then reuses them as the adapter (train_stage2.py).

    python train_stage1.py --data data/shapes --vit runs/pretrain/vit --tiny-lm runs/pretrain/tiny_lm --out-dir runs/stage1
"""
import argparse
from dataclasses import asdict

import torch

import data
from resampler import PerceiverResampler, ResamplerConfig
from trainer import TrainConfig, add_config_flags, config_from_args, train
from vlm import VisionLanguageModel, caption_loss, load_lm, load_vision

DEFAULTS = TrainConfig(steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=100, save_every=200)


def add_data_flags(parser):
    parser.add_argument("--data", required=True, help="data folder (python data.py --out DIR)")
    parser.add_argument("--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})")
    parser.add_argument("--tasks", help=f"comma-separated, from {list(data.TASK_FILES)} (default: all in DATA)")
    parser.add_argument("--cache-features", type=lambda s: s.lower() == "true", default=True, metavar="BOOL",
                        help="run the frozen ViT once per image and keep its features (default true)")
    parser.add_argument("--on-bad-sample", choices=["error", "skip"], default="error")


def train_vlm(model: VisionLanguageModel, args, stage: str, spec: dict, train_config: TrainConfig) -> dict:
    """Load the data folder's splits and train; shared by both stages."""
    tokenizer = data.Tokenizer(args.tokenizer or f"{args.data}/{data.TOKENIZER_FILE}")
    if tokenizer.vocab_size != model.lm.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces but the LM's vocab_size is {model.lm.config.vocab_size}")
    tasks = args.tasks.split(",") if args.tasks else None
    image_size = model.vision.config.image_size
    train_set, val_set = (data.task_datasets(args.data, split, tokenizer, image_size, tasks, args.on_bad_sample)
                          for split in ("train", "val"))
    cache = data.FeatureCache() if args.cache_features else None
    return train(model, lambda m, batch: caption_loss(m, batch, cache), train_set, val_set,
                 lambda samples: data.collate(samples, tokenizer.pad_id), train_config, stage, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(parser)
    parser.add_argument("--vit", required=True, help="frozen vision encoder: a pretrain.py vit checkpoint, or hf:FOLDER (CLIP / SigLIP)")
    parser.add_argument("--tiny-lm", required=True, help="language-pretrained tiny LM: a pretrain.py lm checkpoint, or hf:FOLDER (Gemma / Llama)")
    add_config_flags(parser, ResamplerConfig, "resampler-")
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    train_config = config_from_args(args, TrainConfig, base=DEFAULTS)
    torch.manual_seed(train_config.seed)  # the fresh parts' initialisation is part of the run
    vision, tiny_lm = load_vision(args.vit), load_lm(args.tiny_lm)
    resampler = config_from_args(args, ResamplerConfig, "resampler-", base=ResamplerConfig(
        input_dim=vision.config.dim, dim=tiny_lm.config.dim, depth=1, num_latents=16,
        num_heads=tiny_lm.config.num_heads))
    spec = {"vision": asdict(vision.config), "resampler": asdict(resampler), "lm": asdict(tiny_lm.config),
            "tiny_lm": None, "adapter": "resampler", "train_lm": True}
    model = VisionLanguageModel(vision, PerceiverResampler(resampler), tiny_lm, train_lm=True)
    summary = train_vlm(model, args, "stage1", spec, train_config)
    print(f"[stage1] done: {summary}")
    return summary


if __name__ == "__main__":
    main()

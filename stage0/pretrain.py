"""Stage 0: the pretrained models the paper starts from, made here from the synthetic data.

The paper starts from a CoCa-pretrained ViT, a large PaLM2 LM and a tiny PaLM2 LM. Offline we make
stand-ins of each (with real pretrained weights a user skips this step):

    python -m stage0.pretrain vit --data data/shapes --out-dir runs/pretrain/vit
    python -m stage0.pretrain lm --data data/shapes --out-dir runs/pretrain/tiny_lm \
        --lm-preset toy-tiny
    python -m stage0.pretrain lm --data data/shapes --out-dir runs/pretrain/large_lm \
        --lm-preset toy-large
    python -m stage0.pretrain export --run runs/pretrain/vit --out stage0/vit.safetensors
(the last one is what `make pretrain` ships, for each of the four runs)

- The ViT learns from the scene labels by default (`--objective labels`, stage0/scenes.py): a linear
  head per cell of the world's grid says its shape, colour and size, another the object count,
  as JFT classification stands behind the paper's ViTs. `--objective caption` trains it by
  captioning instead (CoCa's captioning loss without the contrastive half), for data that has
  captions only; on the toy world it leaves shapes hard to read (measure with `evaluate.py probe`).
- The LMs learn the language alone: next-token loss on documents of several texts about one
  image (captions and question/answer lines, no image), so that what comes before a text helps
  predict it: the ability the frozen LM later needs to read the visual tokens before its text.
"""

import argparse
from dataclasses import replace
from functools import partial

import torch

import data
from palm_decoder import PALM_CONFIGS, PaLMConfig, PaLMDecoder
from resampler import NUM_LATENTS, ResamplerConfig
from stage0 import scenes
from support.checkpoints import export_weights
from support.flags import COUNT, add_config_flags, config_from_args
from support.model_spec import ModelSpec, build_vlm
from trainer import TrainConfig, train
from vit import VIT_CONFIGS, ViT, ViTConfig
from vlm import caption_loss

DEFAULTS = TrainConfig(
    steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=200, save_every=200
)


def lm_loss(model, batch):
    _, loss_sum = model(
        batch["input_ids"], loss_mask=batch["loss_mask"], reduction="sum", return_logits=False
    )
    return loss_sum, batch["loss_mask"].sum()


def pretrain_vit_on_labels(args, vision: ViTConfig, train_config):
    vocabulary = scenes.scene_vocabulary(args.data)
    model = scenes.SceneLabelModel(ViT(vision), vocabulary)
    datasets = {
        split: scenes.SceneDataset(args.data, split, vision.image_size)
        for split in ("train", "val")
    }
    spec = ModelSpec(lm=None, vision=vision, adapter="scene-labels", train_vision=True)
    return train(
        model,
        scenes.scene_loss,
        datasets["train"],
        datasets["val"],
        scenes.collate_scenes,
        train_config,
        stage="pretrain-vit",
        spec=spec,
    )


def pretrain_vit(args, tokenizer, train_config):
    vision = config_from_args(args, ViTConfig, "vit-", VIT_CONFIGS)
    if args.objective == "labels":
        return pretrain_vit_on_labels(args, vision, train_config)
    decoder = replace(
        config_from_args(args, PaLMConfig, "lm-", PALM_CONFIGS), vocab_size=tokenizer.vocab_size
    )
    resampler = ResamplerConfig.for_lm(
        vision.dim,
        decoder.dim,
        decoder.num_heads,
        num_latents=args.num_latents,
        max_frames=args.max_frames,
    )
    spec = ModelSpec(
        vision=vision,
        resampler=resampler,
        lm=decoder,
        adapter="resampler",
        train_lm=True,
        train_vision=True,
    )
    model = build_vlm(spec)
    datasets = {
        split: data.task_datasets(args.data, split, tokenizer, vision.image_size, ["caption"])
        for split in ("train", "val")
    }
    return train(
        model,
        caption_loss,
        datasets["train"],
        datasets["val"],
        partial(data.collate, pad_id=tokenizer.pad_id),
        train_config,
        stage="pretrain-vit",
        spec=spec,
    )


def pretrain_lm(args, tokenizer, train_config):
    config = replace(
        config_from_args(args, PaLMConfig, "lm-", PALM_CONFIGS), vocab_size=tokenizer.vocab_size
    )
    texts = {
        split: data.TextDataset(
            data.training_documents(args.data, split, args.texts_per_document), tokenizer
        )
        for split in ("train", "val")
    }
    return train(
        PaLMDecoder(config),
        lm_loss,
        texts["train"],
        texts["val"],
        partial(data.collate, pad_id=tokenizer.pad_id),
        train_config,
        stage="pretrain-lm",
        spec=ModelSpec(lm=config),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=["vit", "lm", "export"], help="export: a run's frozen weights -> --out FILE"
    )
    parser.add_argument("--data", help="data folder (python -m stage0.synthetic --out DIR)")
    parser.add_argument("--run", help="export: the stage0/pretrain.py run folder to export")
    parser.add_argument("--out", help="export: the .safetensors file to write (bf16)")
    parser.add_argument(
        "--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})"
    )
    parser.add_argument(
        "--num-latents",
        type=COUNT,
        default=NUM_LATENTS,
        help="vit: visual tokens the throwaway decoder reads",
    )
    parser.add_argument("--max-frames", type=COUNT, default=8)
    parser.add_argument(
        "--objective",
        choices=["labels", "caption"],
        default="labels",
        help="vit: scene labels (default) or captioning",
    )
    parser.add_argument(
        "--texts-per-document",
        type=COUNT,
        default=5,
        help="lm: texts of one image per training sequence",
    )
    add_config_flags(parser, ViTConfig, "vit-", VIT_CONFIGS, "toy")
    add_config_flags(parser, PaLMConfig, "lm-", PALM_CONFIGS, "toy-tiny")
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    if args.what == "export":
        if not (args.run and args.out and args.out.endswith(".safetensors")):
            parser.error("export needs --run RUN_DIR and --out FILE.safetensors")
        print(f"[pretrain export] {args.out}: {export_weights(args.run, args.out)}")
        return
    if not args.data:
        parser.error(f"{args.what} needs --data DIR")
    train_config = config_from_args(args, TrainConfig, base=DEFAULTS)
    torch.manual_seed(train_config.seed)  # the fresh parts' initialisation is part of the run
    tokenizer = data.Tokenizer(args.tokenizer or f"{args.data}/{data.TOKENIZER_FILE}")
    summary = (pretrain_vit if args.what == "vit" else pretrain_lm)(args, tokenizer, train_config)
    print(f"[pretrain {args.what}] done: {summary}")
    return summary


if __name__ == "__main__":
    main()

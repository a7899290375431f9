"""Diagnostics: does each box of Figure 2 have the ability the method relies on?

The paper's argument assumes pretrained parts: a frozen ViT whose features show the scene, a
frozen large LM (and a tiny LM) that use the text before them, and an adapter that turns one into
the other. Each is measured here with a small command (evaluate.py probe / context / reliance):
- `vit_probe`: a linear probe (logistic regression, fit on train, scored on test) on the frozen
  ViT's patch features averaged per cell: each cell's shape and colour (or empty), and the count;
- `lm_context`: an LM's loss on a caption with nothing before it, after another caption of the
  same image, and after a caption of another image (each text as pretrained: [bos] text [eos]);
- `image_reliance`: a stage-2 model's caption loss with true, blanked and shuffled images, and
  the frozen large LM's loss when another reference caption stands where the visual tokens were
  (the text oracle): the fraction of the gap from blanked (0) to the oracle (1) the adapter closes;
- `token_scales`: the visual tokens' size against the LM's text embeddings', which the adapter
  must learn to match (the LM's embeddings start at std 0.02; nothing rescales the visual tokens).
"""

import random
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

import data
from evaluation.metrics import cider_d
from stage0 import scenes
from support.models import load_lm, load_tokenizer, load_vision, load_vlm


def vit_probe(
    vit_path: str, data_dir, train_limit: int | None = None, test_split: str = "test"
) -> dict:
    """{kind: {"accuracy", "majority"}} for shape, colour (per cell) and count, on test_split."""
    vision = load_vision(vit_path).eval()
    inputs = {
        split: scenes.probe_inputs(
            vision, scenes.SceneDataset(data_dir, split, vision.config.image_size, limit)
        )
        for split, limit in (("train", train_limit), (test_split, None))
    }
    return scenes.probe_scores(
        inputs["train"], inputs[test_split], scenes.scene_vocabulary(data_dir)
    )


def captions_by_image(data_dir, split: str, task: str = "caption") -> dict[int, list[str]]:
    """{image id: its reference captions}, for images with at least two."""
    by_image = defaultdict(list)
    for example in data.read_task(data_dir, task, split).examples:
        by_image[example.image_id].append(example.target)
    return {image_id: texts for image_id, texts in sorted(by_image.items()) if len(texts) >= 2}


def text_ids(tokenizer: data.Tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]


def loss_after(
    lm, contexts: list[list[int]], targets: list[list[int]], pad_id: int, batch_size: int = 64
) -> float:
    """Mean loss per token on each target ([bos] text [eos], loss on text and eos) after its
    context."""
    total, count = 0.0, 0
    for start in range(0, len(targets), batch_size):
        samples = []
        for context, target in zip(
            contexts[start : start + batch_size], targets[start : start + batch_size]
        ):
            mask = [False] * (len(context) + 1) + [True] * (len(target) - 1)
            samples.append(
                {"input_ids": torch.tensor(context + target), "loss_mask": torch.tensor(mask)}
            )
        batch = data.collate(samples, pad_id)
        with torch.no_grad():
            _, loss_sum = lm(batch["input_ids"], loss_mask=batch["loss_mask"], reduction="sum")
        total, count = total + loss_sum.item(), count + int(batch["loss_mask"].sum())
    return total / count


def lm_context(
    lm_path: str,
    data_dir,
    split: str = "test",
    limit: int = 300,
    tokenizer_path=None,
    seed: int = 0,
) -> dict:
    """Caption loss of an LM with nothing / a caption of the same image / of another image before
    it."""
    lm = load_lm(lm_path).eval()
    tokenizer = load_tokenizer(
        tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE, lm.config.vocab_size
    )
    by_image = captions_by_image(data_dir, split)
    image_ids = list(by_image)[:limit]
    rng = random.Random(seed)
    targets, same, other = [], [], []
    for image_id in image_ids:
        before, target = rng.sample(by_image[image_id], 2)
        elsewhere = rng.choice([i for i in image_ids if i != image_id])
        targets.append(text_ids(tokenizer, target))
        same.append(text_ids(tokenizer, before))
        other.append(text_ids(tokenizer, rng.choice(by_image[elsewhere])))
    losses = {
        name: loss_after(lm, contexts, targets, tokenizer.pad_id)
        for name, contexts in (
            ("none", [[]] * len(targets)),
            ("same_image", same),
            ("other_image", other),
        )
    }
    return {**losses, "drop": 1 - losses["same_image"] / losses["none"]}


def image_reliance(
    checkpoint_path,
    data_dir,
    split: str = "val",
    limit: int = 128,
    batch_size: int = 32,
    tokenizer_path=None,
) -> dict:
    """Stage-2 caption loss on one caption of each of `limit` images with the true, blanked (zeros)
    and shuffled images, the frozen LM's loss with another reference caption as plain text instead
    of visual tokens ("oracle"), and the fraction of the blanked -> oracle gap the adapter
    closes."""
    model, _ = load_vlm(checkpoint_path)
    tokenizer = load_tokenizer(
        tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE, model.lm.config.vocab_size
    )
    examples = {e.image_id: e for e in data.read_task(data_dir, "caption", split).examples}
    by_image = captions_by_image(data_dir, split)
    image_ids = list(by_image)[:: max(1, len(by_image) // limit)][:limit]  # spread over the split
    # Each image's first reference caption, laid out as in training (the paper's prompt, loss on
    # caption + EOS).
    dataset = data.VisionTextDataset(
        [replace(examples[i], prompt="", target=by_image[i][0]) for i in image_ids],
        tokenizer,
        model.vision.config.image_size,
        **model.vision.config.pixel_options(),
    )
    totals = {"real": [0.0, 0], "blanked": [0.0, 0], "shuffled": [0.0, 0]}
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(image_ids), batch_size):
        batch = data.collate(
            [dataset[i] for i in range(start, min(start + batch_size, len(image_ids)))],
            tokenizer.pad_id,
        )
        pixels = batch["pixels"]
        variants = {
            "real": pixels,
            "blanked": torch.zeros_like(pixels),
            "shuffled": pixels[torch.randperm(len(pixels), generator=generator)],
        }
        for name, variant in variants.items():
            with torch.no_grad():
                _, loss_sum = model(
                    batch["input_ids"],
                    batch["loss_mask"],
                    pixels=variant,
                    reduction="sum",
                    visual_start=batch.get("visual_start"),
                )
            totals[name][0] += loss_sum.item()
            totals[name][1] += int(batch["loss_mask"].sum())
    losses = {name: loss / count for name, (loss, count) in totals.items()}
    targets = [text_ids(tokenizer, by_image[i][0]) for i in image_ids]
    losses["oracle"] = loss_after(
        model.lm,
        [text_ids(tokenizer, by_image[i][1]) for i in image_ids],
        targets,
        tokenizer.pad_id,
        batch_size,
    )
    gap = losses["blanked"] - losses["oracle"]
    losses["oracle_fraction"] = (
        (losses["blanked"] - losses["real"]) / gap if gap > 0 else float("nan")
    )
    return losses


def reference_ceiling(data_dir, split: str = "test", task: str = "caption") -> float:
    """CIDEr-D of each reference caption scored against the image's other references (leave one
    out), averaged: what a perfect human-like captioner would score, the ceiling for a model."""
    by_image = captions_by_image(data_dir, split, task)
    scores = []
    for k in range(min(len(texts) for texts in by_image.values())):
        candidates = {image_id: texts[k] for image_id, texts in by_image.items()}
        references = {image_id: texts[:k] + texts[k + 1 :] for image_id, texts in by_image.items()}
        scores.append(cider_d(candidates, references)[0])
    return sum(scores) / len(scores)


@torch.no_grad()
def token_scales(model, batch: dict) -> dict:
    """{"visual": RMS of the visual tokens of `batch`'s images, "text": RMS of the LM's token
    embeddings}: what the LM reads in the visual slots against what it reads in the text's."""
    was_training = model.training
    model.eval()
    device = model.lm.token_embedding.weight.device
    num_frames = batch.get("num_frames")
    # frozen weights in bf16 run under bf16 autocast, as in training (--frozen-dtype bf16)
    bf16 = next(model.vision.parameters()).dtype == torch.bfloat16
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        tokens = model.visual_tokens(
            batch["pixels"].to(device),
            num_frames=None if num_frames is None else num_frames.to(device),
        )
    model.train(was_training)
    rms = {"visual": tokens.float().pow(2).mean().sqrt().item()}
    rms["text"] = model.lm.token_embedding.weight.float().pow(2).mean().sqrt().item()
    return rms

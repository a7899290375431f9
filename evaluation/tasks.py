"""What a model says about images: one task of a data folder scored, or one image captioned.

The box after Figure 2's model, behind evaluate.py: each batch of (image or frame folder, text
prompt) pairs runs the frozen ViT once per distinct path and is decoded with fixed prompts ([bos]
for captions, [bos] + "question: ... answer:" for VQA, as in training). Captions are scored with
CIDEr-D and BLEU-4, answers with VQA accuracy; evaluate.py runs every task of a split and writes
what they return, the metrics and a few sample predictions. `blank=True` scores the same items
with every image (every video frame) blank: its pixels all zero after the ViT's normalisation, a
uniform image of the ViT's mean colour (mid-grey for the stand-ins, whose mean is 0.5; the same
input as `evaluate.py reliance`'s blanked images), so what is left is what the frozen LM answers
without seeing (the text prior).
"""

from pathlib import Path

import torch
from tqdm import tqdm

import data
from evaluation.decoding import Decoding, decode
from evaluation.metrics import bleu4, cider_d, vqa_accuracy
from resampler import PerceiverResampler
from support.models import load_tokenizer, load_vlm
from vlm import VisionLanguageModel

CAPTION_TASKS = ("caption", "video_caption")  # the others are question answering
SAMPLES_PER_TASK = 5  # predictions written to results.json next to the metrics, to read


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encode_once(
    model: VisionLanguageModel, paths: list, device, blank: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patch features of each row's image or frame folder, the ViT run once per distinct path (VQA
    has several questions per image): (B, N, Dv) or (B, T, N, Dv), and each video's real frames (B,)
    (padded to the longest, as in training: the resampler leaves the padding out), None for
    images. blank: every pixel zero, the files still read for their frame counts."""
    distinct = list(dict.fromkeys(paths))
    config = model.vision.config
    max_frames = next(
        (m.config.max_frames for m in model.modules() if isinstance(m, PerceiverResampler)), None
    )
    batch = {}
    pixels = data.pad_frames(
        [
            data.load_pixels(
                path, config.image_size, **config.pixel_options(), max_frames=max_frames
            )
            for path in distinct
        ],
        batch,
    )
    if blank:
        pixels = torch.zeros_like(pixels)  # (B, 3, S, S) or (B, T, 3, S, S)
    rows = [distinct.index(path) for path in paths]
    features = model.encode_images(pixels.to(device))[rows]  # (B, ...)
    return features, batch["num_frames"][rows].to(device) if "num_frames" in batch else None


def generate_texts(
    model, tokenizer, paths: list, prompts: list[str], decoding: Decoding, device, blank=False
) -> list[str]:
    """The decoded text for each (image, text prompt) pair of a batch; blank: every image blank."""
    ids, visual_start = zip(*[data.prompt_ids(tokenizer, prompt) for prompt in prompts])
    features, num_frames = encode_once(model, paths, device, blank)
    new_ids = decode(
        model,
        None,
        list(ids),
        decoding.beam_size,
        decoding.length_penalty,
        decoding.max_new_tokens,
        tokenizer.eos_id,
        features=features,
        pad_id=tokenizer.pad_id,
        visual_start=list(visual_start),
        num_frames=num_frames,
    )
    return [tokenizer.decode(ids) for ids in new_ids]


def batches(items: list, batch_size: int):
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]


@torch.no_grad()
def evaluate_captions(
    model,
    tokenizer,
    annotations: data.Annotations,
    decoding: Decoding,
    limit=None,
    batch_size=32,
    device="cpu",
    description="caption",
    blank=False,
) -> tuple[dict, list]:
    """One caption per image, scored against all of its reference captions -> (metrics, samples).
    blank: the same images, each one blank."""
    image_ids = sorted(annotations.references)[:limit]
    predictions = {}
    for batch in tqdm(batches(image_ids, batch_size), desc=description, leave=False):
        texts = generate_texts(
            model,
            tokenizer,
            [annotations.images[i] for i in batch],
            [""] * len(batch),
            decoding,
            device,
            blank,
        )
        predictions.update(zip(batch, texts))
    references = {image_id: annotations.references[image_id] for image_id in image_ids}
    metrics = {
        "cider_d": cider_d(predictions, references)[0],
        "bleu4": bleu4(predictions, references),
        "images": len(image_ids),
    }
    samples = [
        {
            "image_id": i,
            "file_name": str(annotations.images[i]),
            "prediction": predictions[i],
            "references": references[i],
        }
        for i in image_ids[:SAMPLES_PER_TASK]
    ]
    return metrics, samples


@torch.no_grad()
def spread_over_images(examples: list, limit: int | None) -> list:
    """At most `limit` questions, spread over as many images as there are: every image's first
    question, then every image's second, ... (the first 100 questions by id would be about 20
    images, 5 questions each). Returned with one image's questions side by side, so that a batch
    encodes each image once."""
    by_image = {}
    for example in sorted(examples, key=lambda e: (e.image_id, e.question_id)):
        by_image.setdefault(example.image_id, []).append(example)
    rounds = [
        example
        for depth in range(max((len(q) for q in by_image.values()), default=0))
        for questions in by_image.values()
        if depth < len(questions)
        for example in [questions[depth]]
    ]
    return sorted(rounds[:limit], key=lambda e: (e.image_id, e.question_id))


def evaluate_vqa(
    model,
    tokenizer,
    annotations: data.Annotations,
    decoding: Decoding,
    limit=None,
    batch_size=32,
    device="cpu",
    description="vqa",
    blank=False,
) -> tuple[dict, list]:
    """VQA accuracy, the mean over questions -> (metrics, samples). blank: the same questions, each
    image blank."""
    examples = spread_over_images(annotations.examples, limit)
    predictions = []
    for batch in tqdm(batches(examples, batch_size), desc=description, leave=False):
        predictions += generate_texts(
            model,
            tokenizer,
            [e.path for e in batch],
            [e.prompt for e in batch],
            decoding,
            device,
            blank,
        )
    accuracies = [
        vqa_accuracy(prediction, annotations.references[e.question_id])
        for prediction, e in zip(predictions, examples)
    ]
    metrics = {"vqa_accuracy": sum(accuracies) / len(accuracies), "questions": len(examples)}
    samples = [
        {
            "question_id": e.question_id,
            "image_id": e.image_id,
            "file_name": str(e.path),
            "prompt": e.prompt,
            "prediction": prediction,
            "accuracy": accuracy,
            "answers": annotations.references[e.question_id],
        }
        for e, prediction, accuracy in list(zip(examples, predictions, accuracies))[
            :SAMPLES_PER_TASK
        ]
    ]
    return metrics, samples


def caption_one(
    checkpoint_path,
    path,
    tokenizer_path,
    question=None,
    decoding: Decoding | None = None,
    device="auto",
) -> str:
    """The caption of one image file or frame folder, or the answer to `question` about it."""
    device = pick_device(device)
    model, _ = load_vlm(checkpoint_path, device)
    tokenizer = load_tokenizer(tokenizer_path, model.lm.config.vocab_size)
    prompt = data.vqa_prompt(question) if question else ""
    with torch.no_grad():
        return generate_texts(
            model, tokenizer, [Path(path)], [prompt], decoding or Decoding(), device
        )[0]

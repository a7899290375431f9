"""The show sheet: the paper's Figures 3 and 4 (captions and answers on example images and videos)
at toy scale, for the runs of Figure 2's whole model (frozen ViT -> adapter -> LM).

A few test items, drawn with a seed so the same seed gives the same sheet: each image (a video as
a strip of its frames, as the ViT read them) with its reference captions, each run's greedy
caption, and a few of its questions with each run's answer, marked right or wrong by VQA accuracy
against the human answers. With `attention`, a second picture shows where each run's
cross-attention latents looked while it wrote that caption (evaluation/attention_maps.py).

    python evaluate.py show runs/stage2_vadapter runs/stage2_perceiver --data data/shapes \\
        --out docs [--items 4] [--seed 0] [--attention]
"""

import argparse
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import data
from evaluation.attention_maps import AttentionPanel, draw_attention_maps, recorded_attention
from evaluation.decoding import Decoding
from evaluation.metrics import normalize_vqa_answer, vqa_accuracy
from evaluation.pictures import (
    GAP,
    LINE_HEIGHT,
    MARGIN,
    TEXT,
    WIDTH,
    draw_lines,
    frames_of,
    strip,
    upscaled,
    wrapped,
)
from evaluation.report import run_name
from evaluation.tasks import generate_texts, pick_device
from resampler import PerceiverResampler
from support.models import load_tokenizer, load_vlm

QUESTIONS_PER_ITEM = 3
KINDS = {"image": ("caption", "vqa"), "video": ("video_caption", "video_vqa")}  # caption, VQA task
SHEET, ATTENTION_MAPS = "show.png", "attention_maps.png"  # the files written
RUN_COLOURS = ["#1f5fbf", "#b03a2e", "#1e7b34", "#7d3c98", "#9a6400", "#333333"]
MARKS = {"right": "#1e8c3a", "wrong": "#c0392b", "partly right": "#b9770e"}
REFERENCE = "#555555"


@dataclass
class Item:
    """One test image or video and the questions asked about it."""

    kind: str  # "image" or "video"
    image_id: int
    path: Path  # an image file, or a folder of frames
    references: list[str]
    questions: list[data.Example]  # prompt "question: ... answer:"; at most QUESTIONS_PER_ITEM
    answers: dict[int, list[str]]  # the human answers, by question_id


@dataclass
class RunSays:
    """What one run said about every item, and what it read."""

    label: str
    run: str
    step: int | None
    grid: int  # patches per side of a frame
    captions: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)  # per item, per question
    frames: list[list[Image.Image]] = field(default_factory=list)  # per item, as the ViT read it
    # per item: the weights (H, L, keys) of each drawn cross-attention layer, by name
    attention: list[dict] = field(default_factory=list)


def existing_run(text: str) -> str:
    """argparse type of RUN: a run folder or checkpoint file that exists."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist: give a run folder or checkpoint")
    return text


# ---------------------------------------------------------------------------------------------
# The items, and what each run says about them
# ---------------------------------------------------------------------------------------------


def choose_items(data_dir, count: int, seed: int, split: str = "test") -> list[Item]:
    """`count` items of the split drawn with random.Random(seed): half of them videos (rounded
    down) when the folder has videos, the rest images; each with up to QUESTIONS_PER_ITEM of its
    questions, drawn the same way."""
    present = data.available_tasks(data_dir, split)
    kinds = [kind for kind, (captions, _) in KINDS.items() if captions in present]
    if not kinds:
        raise data.DataError(f"{data_dir}: no caption or video_caption files for split {split!r}")
    shares = {"image": count - count // 2, "video": count // 2} if len(kinds) == 2 else {}
    rng, items = random.Random(seed), []
    for kind in kinds:
        caption_task, vqa_task = KINDS[kind]
        captions, share = data.read_task(data_dir, caption_task, split), shares.get(kind, count)
        if share > len(captions.references):
            raise ValueError(
                f"--items {count} asks for {share} {kind}s; the {split} split of {data_dir} has "
                f"{len(captions.references)}"
            )
        asked, answers = defaultdict(list), {}
        if vqa_task in present:
            vqa = data.read_task(data_dir, vqa_task, split)
            for example in vqa.examples:
                asked[example.image_id].append(example)
            answers = vqa.references
        for image_id in sorted(rng.sample(sorted(captions.references), share)):
            questions = rng.sample(asked[image_id], min(QUESTIONS_PER_ITEM, len(asked[image_id])))
            questions.sort(key=lambda example: example.question_id)
            items.append(
                Item(
                    kind,
                    image_id,
                    captions.images[image_id],
                    captions.references[image_id],
                    questions,
                    {question.question_id: answers[question.question_id] for question in questions},
                )
            )
    return items


@torch.no_grad()
def caption_with_attention(model, tokenizer, path, decoding: Decoding, device):
    """The caption of one image or frame folder, and the weights (H, L, keys) of each drawn
    cross-attention layer, recorded in the forward pass that produced it -> (caption, weights by
    layer name)."""
    with recorded_attention(model) as layers:
        caption = generate_texts(model, tokenizer, [path], [""], decoding, device)[0]
    return caption, {name: layer.last_attention[0].cpu() for name, layer in layers.items()}


def pixels_read(model, path) -> torch.Tensor:
    """What the model's ViT reads of an image (3, S, S) or a frame folder (T, 3, S, S)."""
    config = model.vision.config
    max_frames = next(
        (m.config.max_frames for m in model.modules() if isinstance(m, PerceiverResampler)), None
    )
    return data.load_pixels(
        path, config.image_size, **config.pixel_options(), max_frames=max_frames
    )


@torch.no_grad()
def run_says(run, items: list[Item], tokenizer_path, attention: bool, decoding, device) -> RunSays:
    """Load one run, caption every item and answer its questions (with `attention`, recording the
    caption's cross-attention weights)."""
    model, checkpoint = load_vlm(run, device)
    tokenizer = load_tokenizer(tokenizer_path, model.lm.config.vocab_size)
    label = "stage 1" if checkpoint["stage"] == "stage1" else run_name(checkpoint["spec"])
    says = RunSays(label, str(run), checkpoint.get("step"), model.vision.config.grid_size)
    for item in items:
        if attention:
            caption, weights = caption_with_attention(model, tokenizer, item.path, decoding, device)
        else:
            caption = generate_texts(model, tokenizer, [item.path], [""], decoding, device)[0]
            weights = {}
        prompts, answers = [question.prompt for question in item.questions], []
        if prompts:
            paths = [item.path] * len(prompts)
            answers = generate_texts(model, tokenizer, paths, prompts, decoding, device)
        says.captions.append(caption)
        says.answers.append(answers)
        says.attention.append(weights)
        says.frames.append(frames_of(pixels_read(model, item.path), model.vision.config))
    return says


# ---------------------------------------------------------------------------------------------
# The sheet
# ---------------------------------------------------------------------------------------------


def mark(answer: str, human_answers: list[str]) -> tuple[str, str]:
    """(the verdict on an answer by VQA accuracy, its colour)."""
    accuracy = vqa_accuracy(answer, human_answers)
    verdict = "right" if accuracy == 1 else "wrong" if accuracy == 0 else "partly right"
    return (verdict if verdict != "partly right" else f"{verdict} ({accuracy:.2f})"), MARKS[verdict]


def item_lines(index: int, item: Item, runs: list[RunSays], width: int) -> list[list[tuple]]:
    """The references, each run's caption, each question with the humans' most common answer
    (normalised as VQA accuracy compares them) and each run's answer, marked."""
    lines = [
        line for text in item.references for line in wrapped(f"reference: {text}", REFERENCE, width)
    ]
    for says, colour in zip(runs, RUN_COLOURS * len(runs)):
        lines += wrapped(f"{says.label}: {says.captions[index]}", colour, width)
    for number, question in enumerate(item.questions):
        human_answers = item.answers[question.question_id]
        ((most, count),) = Counter(map(normalize_vqa_answer, human_answers)).most_common(1)
        humans = f"humans: {most} ({count} of {len(human_answers)})"
        lines += wrapped(f"{question.prompt}    {humans}", TEXT, width)
        for says, colour in zip(runs, RUN_COLOURS * len(runs)):
            answer = says.answers[index][number]
            lines.append(
                [
                    (f"    {says.label}: ", colour),
                    (f'"{answer}"   ', TEXT),
                    mark(answer, human_answers),
                ]
            )
    return lines


def item_block(index: int, item: Item, runs: list[RunSays], picture, width: int) -> tuple:
    """((x, y) of its text beside or under the picture, lines, height) of one item: the picture
    on the left with the text beside it, or above the text when wider than a third of the sheet (a
    video's strip)."""
    beside = picture.width <= width // 3
    text_x = MARGIN + picture.width + 3 * GAP if beside else MARGIN
    text_y = 0 if beside else picture.height + GAP
    lines = item_lines(index, item, runs, width - MARGIN - text_x)
    body = max(picture.height, text_y + len(lines) * LINE_HEIGHT)
    return (text_x, text_y), lines, 2 * MARGIN + LINE_HEIGHT + GAP + body


def draw_sheet(items: list[Item], runs: list[RunSays], about: str, path) -> tuple[int, int]:
    """The sheet, a header naming the runs, then one block per item -> its size."""
    pictures = [strip([upscaled(frame) for frame in frames]) for frames in runs[0].frames]
    width = max([WIDTH] + [2 * MARGIN + picture.width for picture in pictures])
    header = [[(about, TEXT)]] + [
        [(says.label, colour), (f" = {says.run}, step {says.step}", TEXT)]
        for says, colour in zip(runs, RUN_COLOURS * len(runs))
    ]
    blocks = [
        item_block(index, item, runs, picture, width)
        for index, (item, picture) in enumerate(zip(items, pictures))
    ]
    header_height = 2 * MARGIN + len(header) * LINE_HEIGHT
    image = Image.new("RGB", (width, header_height + sum(block[2] for block in blocks)), "white")
    draw = ImageDraw.Draw(image)
    top = draw_lines(draw, MARGIN, MARGIN, header) + MARGIN
    for index, (item, picture, block) in enumerate(zip(items, pictures, blocks)):
        (text_x, text_y), lines, height = block
        draw.line([(MARGIN, top), (width - MARGIN, top)], "#bbbbbb")
        head = f"item {index + 1}: {item.kind} {item.image_id} ({Path(item.path).name})"
        body_top = draw_lines(draw, MARGIN, top + MARGIN, [[(head, TEXT)]]) + GAP
        image.paste(picture, (MARGIN, body_top))
        draw_lines(draw, text_x, body_top + text_y, lines)
        top += height
    image.save(path)
    return image.size


def show_runs(
    runs: list,
    data_dir,
    out_dir,
    items: int = 4,
    seed: int = 0,
    attention: bool = False,
    *,
    decoding: Decoding | None = None,
    device="auto",
) -> list[Path]:
    """Write the sheet (and with `attention` the attention maps) of `items` test items for every
    run into out_dir -> the paths written. A run without cross-attention (the MLP adapter) has no
    attention maps."""
    chosen = choose_items(data_dir, items, seed)
    device, decoding = pick_device(device), decoding or Decoding()
    tokenizer_path = Path(data_dir) / data.TOKENIZER_FILE
    said = [run_says(run, chosen, tokenizer_path, attention, decoding, device) for run in runs]
    labels = Counter(says.label for says in said)
    for number, says in enumerate(said, 1):
        says.label += f" #{number}" if labels[says.label] > 1 else ""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    about = (
        f"{len(chosen)} test items of {data_dir} (seed {seed}); captions and answers decoded "
        f"{'greedily' if decoding.beam_size == 1 else f'with beam {decoding.beam_size}'}"
    )
    draw_sheet(chosen, said, about, out_dir / SHEET)
    written = [out_dir / SHEET]
    panels = [
        AttentionPanel(
            f"item {index + 1}, {item.kind} {item.image_id}: {says.label}, cross-attention {name}",
            says.captions[index],
            says.frames[index],
            says.grid,
            weights,
        )
        for index, item in enumerate(chosen)
        for says in said
        for name, weights in says.attention[index].items()
    ]
    if panels:
        draw_attention_maps(panels, out_dir / ATTENTION_MAPS)
        written.append(out_dir / ATTENTION_MAPS)
    return written

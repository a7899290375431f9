"""Data: the input box of Figure 2 (PaLM2-VAdapter, arXiv 2402.10896), images or videos plus text.

The adapters learn captioning, and VQA as "question: ... answer:" with the loss on the answer
only; videos are folders of frames that go through the same ViT. This file holds, top to bottom:
1. `prompt_ids`, the one place training and evaluation build what the model reads before the
   target; the dataset (which skips decoding a batch whose frozen features are all cached) and
   `collate`;
2. a data folder: the datasets a stage trains on, the text corpus.
The sentencepiece tokenizer is in support/tokenizer.py, image loading (any PIL mode -> normalized
(3,S,S)) in support/images.py, which files hold each task in support/data_folder.py, the file
readers (COCO captions, Karpathy, VQAv2) in support/readers.py, the frozen-feature cache in
support/feature_cache.py; the synthetic world that writes a data folder offline is
stage0/synthetic.py (`python -m stage0.synthetic --out data/shapes`).
"""

import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.utils.data import Dataset

# `name as name`: names of the data box that the rest of the project reads as data.<name>, though
# they live in support/ (vqa_prompt: the text whose ids prompt_ids builds, for evaluation too).
from support.data_checks import BadSamples, DataError
from support.data_folder import TASK_FILES, available_tasks, read_task
from support.images import frame_files as frame_files
from support.images import load_image as load_image
from support.images import load_pixels
from support.readers import Annotations as Annotations
from support.readers import Example
from support.readers import read_captions as read_captions
from support.readers import read_vqa as read_vqa
from support.readers import vqa_prompt as vqa_prompt
from support.tokenizer import Tokenizer as Tokenizer
from support.writers import write_atomically as write_atomically

# ---------------------------------------------------------------------------------------------
# 1. The prompt, the dataset, batches
# ---------------------------------------------------------------------------------------------

# The paper's prompt, "[bos] Describe the following: <visual tokens> :" then the caption ([bos] at
# position 0 as real Gemma / Llama expect); a question gets one of the same shape. (The synthetic
# world's tokenizer has no capitals: there the first letter is one fixed <unk> token, harmless.)
CAPTION_INSTRUCTION, VQA_INSTRUCTION = "Describe the following:", "Answer the following:"


def prompt_texts(prompt: str) -> tuple[str, str]:
    """An Example's prompt ("" for a caption, vqa_prompt(question)) -> (text before, text after the
    visual tokens)."""
    return (VQA_INSTRUCTION, ": " + prompt) if prompt else (CAPTION_INSTRUCTION, ":")


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> tuple[list[int], int]:
    """What the model reads before the target, the same in training (VisionTextDataset) and in
    evaluation (decoding continues after it): ([bos] + before + after ids, visual_start), the visual
    tokens going before position visual_start of those ids."""
    before, after = prompt_texts(prompt)
    before_ids = [tokenizer.bos_id] + tokenizer.encode(before)
    return before_ids + tokenizer.encode(after), len(before_ids)


class VisionTextDataset(Dataset):
    """Samples {pixels (3,S,S) or (T,3,S,S) (or their cached features: __getitems__), input_ids
    (L,), loss_mask (L,), visual_start, image_id[, question_id]} with input_ids = prompt_ids +
    target + [eos], the visual tokens before position visual_start, and loss_mask True on target +
    eos: the token at i is predicted from the slot before it.

    max_text_tokens: the most text positions a sample may have (the LM's context minus the visual
    tokens). Longer texts are cut to it, keeping their beginning, and counted (`truncated`) here,
    before training; a prompt that leaves no room for one target token is a bad sample.
    The readers checked files up front; an image that fails to decode here raises DataError, or
    with on_bad_sample="skip" is replaced by the next readable sample: a warning names it, and the
    sample lists it under "unreadable", so whoever reads the batches counts each one exactly, from
    any worker process (`unreadable` holds this process's)."""

    def __init__(
        self,
        examples: list[Example],
        tokenizer: Tokenizer,
        image_size: int,
        on_bad_sample: str = "error",
        max_text_tokens: int | None = None,
        **pixel_options,
    ):
        self.tokenizer, self.image_size = tokenizer, image_size
        self.pixel_options = pixel_options  # load_pixels' mean, std, resize, max_frames
        bad = BadSamples(on_bad_sample)
        self.skip, self.max_text_tokens, self.truncated = bad.skip, max_text_tokens, 0
        if max_text_tokens is not None:
            examples = self.fit_texts(examples, max_text_tokens, bad)
        # bad samples left out, per reason (task_datasets adds the readers')
        self.skipped = bad.report("VisionTextDataset")
        if not examples:
            raise DataError("no examples: the annotation files gave no usable sample")
        self.examples = examples
        self.unreadable: set[Path] = set()
        self.feature_cache = None  # see __getitems__

    def fit_texts(
        self, examples: list[Example], max_text_tokens: int, bad: BadSamples
    ) -> list[Example]:
        """The examples whose prompt leaves room for a target token; counts the texts to cut."""
        texts = [prompt_texts(e.prompt) for e in examples]
        # one call: sentencepiece batches
        befores = self.tokenizer.model.encode([before for before, _ in texts])
        afters = self.tokenizer.model.encode([after for _, after in texts])
        targets = self.tokenizer.model.encode([e.target for e in examples])
        kept, first_cut = [], None
        for example, before, after, target in zip(examples, befores, afters, targets):
            # [bos] + before + after, as prompt_ids builds it
            prompt_length = 1 + len(before) + len(after)
            if prompt_length >= max_text_tokens:
                field = "field 'question'" if example.prompt else "the captioning prompt"
                bad(
                    "prompt longer than max_text_tokens",
                    f"{example.source} {field}: {prompt_length} prompt "
                    f"tokens leave no room for the answer in max_text_tokens={max_text_tokens}",
                )
                continue
            if prompt_length + len(target) + 1 > max_text_tokens:
                self.truncated += 1
                first_cut = first_cut or example.source
            kept.append(example)
        if self.truncated:
            warnings.warn(
                f"{self.truncated} of {len(examples)} texts are longer than "
                f"max_text_tokens={max_text_tokens}"
                f" and are cut to it, keeping their beginning (the first: {first_cut})",
                stacklevel=3,
            )
        return kept

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        found = []  # images this call found unreadable
        while (example := self.next_readable(index)) is not None:
            try:
                pixels = load_pixels(example.path, self.image_size, **self.pixel_options)
            except DataError as error:
                message = (
                    f"{error} (field 'file_name' of image_id {example.image_id}, {example.source})"
                )
                if not self.skip:
                    raise DataError(message) from error
                warnings.warn(f"skipping unreadable image: {message}")
                self.unreadable.add(example.path)
                found.append(str(example.path))
                continue
            sample = self.sample(example, {"pixels": pixels})
            return {**sample, **({"unreadable": found} if found else {})}
        raise DataError(f"none of the {len(self.examples)} images could be read")

    def next_readable(self, index: int) -> Example | None:
        """The example sample `index` shows: its own, or the next one not known to be unreadable
        (skip mode); None when every image is."""
        for offset in range(len(self.examples)):
            example = self.examples[(index + offset) % len(self.examples)]
            if example.path not in self.unreadable:
                return example
        return None

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch's samples, as [self[i] for i in indices] (PyTorch's DataLoader fetches a batch
        through this hook), but where `feature_cache` holds the frozen ViT's features of every
        sample's image or video, no pixels are decoded: each sample carries its features
        ("cached_features", and "num_frames" for a video) in their place, and vlm.caption_loss
        takes them through FeatureCache.fetched. Only features of a decoded image are cached, so
        each sample shows the example __getitem__ would and finds nothing new unreadable: the batch
        trains exactly as a decoded one. One uncached sample and the whole batch is decoded as
        before: collate and the cache take pixels for every row or for none (decoding only the
        uncached samples would pay earlier in a run, at the price of batches of both kinds).

        feature_cache (a FeatureCache, or None) is set by support/vlm_training.py only when batches
        are fetched in the training process (num_workers=0): a worker process holds a copy of the
        dataset, whose cache would be a stale snapshot. There a batch is fetched just before its
        loss; the cache can change in between only when an earlier micro-batch of the same step
        encodes new images, and the batch holds its features, not just their keys
        (FeatureCache.fetched)."""
        if self.feature_cache is not None:
            examples = [self.next_readable(index) for index in indices]
            if None not in examples:
                keys = [("video" if e.path.is_dir() else "image", e.image_id) for e in examples]
                if (cached := self.feature_cache.lookup(keys)) is not None:
                    samples = []
                    for example, (modality, _), features in zip(examples, keys, cached):
                        visual = {"cached_features": features}
                        if modality == "video":  # its real frames, as collate pads videos
                            visual["num_frames"] = len(features)
                        samples.append(self.sample(example, visual))
                    return samples
        return [self[index] for index in indices]

    def sample(self, example: Example, visual: dict) -> dict:
        prompt, visual_start = prompt_ids(self.tokenizer, example.prompt)
        target = self.tokenizer.encode(example.target) + [self.tokenizer.eos_id]
        input_ids, loss_mask = prompt + target, [False] * len(prompt) + [True] * len(target)
        end = self.max_text_tokens  # None keeps all; fit_texts kept only prompts shorter than it
        sample = {
            **visual,  # pixels, or the cached features
            "input_ids": torch.tensor(input_ids[:end], dtype=torch.long),
            "loss_mask": torch.tensor(loss_mask[:end]),
            "visual_start": visual_start,
            "image_id": example.image_id,
        }
        if example.question_id is not None:
            sample["question_id"] = example.question_id
        return sample


def collate(samples: list[dict], pad_id: int) -> dict:
    """Right-pads to the longest sample: pixels (B,3,S,S) or (B,T,3,S,S), input_ids and loss_mask
    (B,L) (False on padding), lengths (B,), num_targets (an int: loss_mask's True count),
    visual_start (B,) when the samples have it, image_ids (and question_ids if any) as lists.
    A batch fetched from the feature cache has no pixels but
    cached_features, a list of B tensors (and num_frames (B,) for videos), which
    FeatureCache.fetched stacks and pads as it does the features it computes."""
    if len({s["pixels"].dim() if "pixels" in s else 0 for s in samples}) > 1:
        raise ValueError(
            "collate: the batch mixes images (3,H,W) and videos (T,3,H,W); "
            "use separate data loaders for image and video datasets"
        )
    lengths = torch.tensor([len(s["input_ids"]) for s in samples])
    input_ids = torch.full((len(samples), int(lengths.max())), pad_id, dtype=torch.long)  # (B, L)
    loss_mask = torch.zeros(input_ids.shape, dtype=torch.bool)  # (B, L)
    for row, sample in enumerate(samples):
        input_ids[row, : lengths[row]] = sample["input_ids"]
        loss_mask[row, : lengths[row]] = sample["loss_mask"]
    # num_targets: counted here on the host, so the model finds its targets without a host sync
    batch = {
        "input_ids": input_ids,
        "loss_mask": loss_mask,
        "lengths": lengths,
        "num_targets": int(loss_mask.sum()),
    }
    if "pixels" in samples[0]:
        batch["pixels"] = pad_frames([s["pixels"] for s in samples], batch)
    elif "cached_features" in samples[0]:  # VisionTextDataset.__getitems__ decoded nothing
        batch["cached_features"] = [s["cached_features"] for s in samples]
        if "num_frames" in samples[0]:
            batch["num_frames"] = torch.tensor([s["num_frames"] for s in samples])
    if "image_id" in samples[0]:  # text-only samples (LM pretraining) have none
        batch["image_ids"] = [s["image_id"] for s in samples]
    if "visual_start" in samples[0]:
        batch["visual_start"] = torch.tensor([s["visual_start"] for s in samples])
    if any("question_id" in s for s in samples):  # None for captions mixed into a VQA batch
        batch["question_ids"] = [s.get("question_id") for s in samples]
    if unreadable := [path for s in samples for path in s.get("unreadable", ())]:
        batch["unreadable"] = unreadable  # images skipped to fill this batch (skip mode)
    return batch


def pad_frames(pixels: list[torch.Tensor], batch: dict) -> torch.Tensor:
    """Images -> (B,3,S,S); videos -> (B,T,3,S,S) with T the longest, shorter ones padded with zero
    frames, and batch["num_frames"] (B,) their real frame counts (the resampler leaves padding
    out)."""
    if pixels[0].dim() == 3:
        return torch.stack(pixels)
    batch["num_frames"] = torch.tensor([len(video) for video in pixels])
    padded = pixels[0].new_zeros(len(pixels), int(batch["num_frames"].max()), *pixels[0].shape[1:])
    for row, video in enumerate(pixels):
        padded[row, : len(video)] = video
    return padded


# ---------------------------------------------------------------------------------------------
# 2. A data folder: the tokenizer's file, the datasets a stage trains on, the text corpus
# ---------------------------------------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.model"


def task_datasets(
    folder: str | Path,
    split: str,
    tokenizer: Tokenizer,
    image_size: int,
    tasks: list[str] | None = None,
    on_bad_sample: str = "error",
    max_text_tokens: int | None = None,
    **pixel_options,
) -> list[Dataset]:
    """The datasets a stage trains on, one per modality (a batch never mixes images and videos):
    [captions + VQA on images, captions + VQA on videos], leaving out what the folder lacks.
    pixel_options: load_pixels' mean, std, resize and max_frames (the ViT's and the resampler's).
    Each dataset's `skipped` counts the bad samples its files' readers left out."""
    present = available_tasks(folder, split, tasks)
    tasks = tasks or present
    missing = [task for task in tasks if task not in present]
    if missing or not tasks:
        raise DataError(
            f"{folder}: no files for task(s) {missing or 'any'} of split {split!r}; expected "
            + ", ".join(
                name.format(split=split)
                for task in missing or TASK_FILES
                for name in TASK_FILES[task].values()
            )
        )
    groups = []
    for modality in (
        [t for t in tasks if not t.startswith("video")],
        [t for t in tasks if t.startswith("video")],
    ):
        if modality:
            reads = [read_task(folder, task, split, on_bad_sample) for task in modality]
            groups.append(
                VisionTextDataset(
                    [e for read in reads for e in read.examples],
                    tokenizer,
                    image_size,
                    on_bad_sample=on_bad_sample,
                    max_text_tokens=max_text_tokens,
                    **pixel_options,
                )
            )
            groups[-1].skipped.update(sum((read.skipped for read in reads), Counter()))
    return groups


def training_texts(folder: str | Path, split: str = "train") -> list[str]:
    """Every caption and every "question: ... answer: ..." line of a split: the tokenizer's
    corpus."""
    return [text for document in training_documents(folder, split, 1) for text in document]


def training_documents(
    folder: str | Path, split: str = "train", texts_per_document: int = 2, seed: int = 0
) -> list[list[str]]:
    """The LMs' text-only pretraining data: the captions and "question: ... answer: ..." lines of
    one image, shuffled and grouped `texts_per_document` at a time. Like sentences of one web
    page, a text is easier to predict after reading its neighbours, so the LM learns to use what
    came before: what it later does with the visual tokens placed before the text."""
    by_image = defaultdict(list)
    for task in available_tasks(folder, split):
        for e in read_task(folder, task, split, allow_empty=True).examples:
            by_image[e.image_id].append(f"{e.prompt} {e.target}".strip())
    rng, documents = random.Random(seed), []
    for image_id in sorted(by_image):
        texts = by_image[image_id]
        rng.shuffle(texts)
        documents += [
            texts[i : i + texts_per_document] for i in range(0, len(texts), texts_per_document)
        ]
    return documents


class TextDataset(Dataset):
    """Text only, for language pretraining: each text of a document as [bos] text [eos], one after
    the other; the loss is on every token but the bos tokens (they are given, as in captioning)."""

    def __init__(self, documents: list[list[str]], tokenizer: Tokenizer):
        self.documents, self.tokenizer = documents, tokenizer

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> dict:
        ids, loss_mask = [], []
        for text in self.documents[index]:
            tokens = self.tokenizer.encode(text) + [self.tokenizer.eos_id]
            ids += [self.tokenizer.bos_id] + tokens
            loss_mask += [False] + [True] * len(tokens)
        return {"input_ids": torch.tensor(ids), "loss_mask": torch.tensor(loss_mask)}


if __name__ == "__main__":
    raise SystemExit(
        "data.py is a library: the data box of Figure 2, read by the training and evaluation "
        "scripts. To write the synthetic world, run: python -m stage0.synthetic --out DIR"
    )

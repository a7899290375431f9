"""Scoring a checkpoint: every task of a data folder's split decoded and scored, as results.json
holds it, with the real images or each one blank (the text prior). The box after Figure 2's
model, behind `python evaluate.py checkpoint` and `compare`; one task scored is
evaluation/tasks.py.
"""

from pathlib import Path

import data
from evaluation.decoding import Decoding
from evaluation.tasks import CAPTION_TASKS, evaluate_captions, evaluate_vqa, pick_device
from support.models import load_tokenizer, load_vlm

# Which files hold each task is `data.TASK_FILES` (the one table, shared with training): real
# COCO / VQAv2 files are evaluated by giving them those names in one folder. Scores are as the
# metric functions return them (CIDEr-D on pycocoevalcap's scale; papers print it times 100).

# What the model is shown -> the results keys its scores go to: the real images, and each image
# blank (evaluation/tasks.py: zero pixels, the same items), what the frozen LM says without seeing.
IMAGES = {"real": ("metrics", "samples"), "blank": ("blank_metrics", "blank_samples")}


def evaluate_checkpoint(
    checkpoint_path,
    data_dir,
    split,
    tasks=None,
    limit=None,
    beam=1,
    batch_size=32,
    *,
    tokenizer_path=None,
    length_penalty=1.0,
    max_new_tokens=32,
    device="auto",
    images=("real",),
) -> dict:
    """Decode every task of the split present in data_dir (or `tasks`) and score it.

    limit: at most this many images (captioning) or questions (VQA) per task, the first by id.
    images: which of IMAGES the model is shown, each scored on the same items.
    Returns what results.json holds: metrics and sample predictions per task (IMAGES' keys), the
    stage, step, spec and training config of the checkpoint, and how it was decoded."""
    device = pick_device(device)
    model, checkpoint = load_vlm(checkpoint_path, device)
    tokenizer_path = tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_path, model.lm.config.vocab_size)
    present = data.available_tasks(data_dir, split, tasks)
    tasks = list(tasks or present)
    if not tasks or set(tasks) - set(present):
        raise data.DataError(
            f"{data_dir}: no files for task(s) {sorted(set(tasks) - set(present)) or 'any'} of "
            f"split {split!r}; the task files are {data.TASK_FILES}"
        )
    decoding = Decoding(beam, length_penalty, max_new_tokens)
    results = {
        "checkpoint": str(checkpoint_path),
        "stage": checkpoint["stage"],
        "step": checkpoint.get("step"),
        "data": str(data_dir),
        "split": split,
        "tokenizer": str(tokenizer_path),
        "decoding": {
            **vars(decoding),
            "prompts": {
                kind: "[bos] {} <visual tokens> {}".format(*data.prompt_texts(prompt))
                for kind, prompt in (("caption", ""), ("vqa", data.vqa_prompt("{question}")))
            },
        },
        "spec": checkpoint["spec"].to_dict(),
        "train_config": checkpoint.get("train_config"),
        "trainable_parameters": model.num_trainable_parameters(),
        **{key: {} for shown in images for key in IMAGES[shown]},
    }
    for task in tasks:
        evaluate_task = evaluate_captions if task in CAPTION_TASKS else evaluate_vqa
        annotations = data.read_task(data_dir, task, split)
        for shown in images:
            metrics, samples = IMAGES[shown]
            results[metrics][task], results[samples][task] = evaluate_task(
                model,
                tokenizer,
                annotations,
                decoding,
                limit,
                batch_size,
                device,
                task if shown == "real" else f"{task} ({shown})",
                blank=shown == "blank",
            )
    return results

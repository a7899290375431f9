"""Evaluation: the box after Figure 2's model, which turns a checkpoint into the paper's numbers.

The paper reports captioning as CIDEr (COCO, MSRVTT, ...) and question answering as VQA accuracy
(VQAv2, MSRVTT-QA, ...): the metrics are in `evaluation/metrics.py`, the decoders in
`evaluation/decoding.py`. This file is the command that evaluates a stage-1 or stage-2 checkpoint on
a data folder, compares stage-2 runs (the paper's table at our scale, with validation-loss curves),
measures how much a model reads its images, and captions one image. Evaluation decodes greedily
unless told otherwise, with fixed prompts ([bos] for captions, [bos] + "question: ... answer:" for
VQA, as in training), so the same checkpoint always gives the same numbers.

    python evaluate.py checkpoint runs/stage2 --data data/shapes --split val [--beam 1] [--limit N]
    python evaluate.py caption data/shapes/images/val/000001000001.png --checkpoint runs/stage2 \\
        --data data/shapes [--question "what color is the circle?"]
    python evaluate.py compare runs/stage2_vadapter runs/stage2_perceiver --data data/shapes --out
    runs/results python evaluate.py reliance runs/stage2_vadapter --data data/shapes python
    evaluate.py probe runs/pretrain/vit --data data/shapes python evaluate.py context
    runs/pretrain/large_lm --data data/shapes python evaluate.py diagnostics
    runs/demo/results/results.json --data data/shapes --vit ... (see --help) python evaluate.py
    bundle runs/stage2 --out stage2_shared.pt   (frozen models copied in, to share)
"""

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

import data
from evaluation import diagnostics
from evaluation.decoding import Decoding, decode
from evaluation.metrics import bleu4, cider_d, vqa_accuracy
from resampler import PerceiverResampler
from support.checkpoints import ModelSpec, bundle_checkpoint, load_tokenizer, load_vlm
from support.run_folder import parse_metrics_line, steps_to_reach
from vlm import VisionLanguageModel

# =============================================================================================
# Evaluating a checkpoint on a data folder
# =============================================================================================
# Which files hold each task is `data.TASK_FILES` (the one table, shared with training): real
# COCO / VQAv2 files are evaluated by giving them those names in one folder. Scores are as the
# metric functions return them (CIDEr-D on pycocoevalcap's scale; papers print it times 100).

CAPTION_TASKS = ("caption", "video_caption")  # the others are question answering
SAMPLES_PER_TASK = 5  # predictions written to results.json next to the metrics, to read


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encode_once(
    model: VisionLanguageModel, paths: list, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patch features of each row's image or frame folder, the ViT run once per distinct path (VQA
    has several questions per image): (B, N, Dv) or (B, T, N, Dv), and each video's real frames (B,)
    (padded
    to the longest, as in training: the resampler leaves the padding out), None for images."""
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
    rows = [distinct.index(path) for path in paths]
    features = model.encode_images(pixels.to(device))[rows]  # (B, ...)
    return features, batch["num_frames"][rows].to(device) if "num_frames" in batch else None


def generate_texts(
    model, tokenizer, paths: list, prompts: list[str], decoding: Decoding, device
) -> list[str]:
    """The decoded text for each (image, text prompt) pair of a batch."""
    ids, visual_at = zip(*[data.prompt_ids(tokenizer, prompt) for prompt in prompts])
    features, num_frames = encode_once(model, paths, device)
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
        visual_at=list(visual_at),
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
) -> tuple[dict, list]:
    """One caption per image, scored against all of its reference captions -> (metrics, samples)."""
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
def evaluate_vqa(
    model,
    tokenizer,
    annotations: data.Annotations,
    decoding: Decoding,
    limit=None,
    batch_size=32,
    device="cpu",
    description="vqa",
) -> tuple[dict, list]:
    """VQA accuracy, the mean over questions -> (metrics, samples)."""
    # Questions of one image side by side, so that a batch encodes each image once.
    examples = sorted(annotations.examples, key=lambda e: (e.image_id, e.question_id))[:limit]
    predictions = []
    for batch in tqdm(batches(examples, batch_size), desc=description, leave=False):
        predictions += generate_texts(
            model, tokenizer, [e.path for e in batch], [e.prompt for e in batch], decoding, device
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
) -> dict:
    """Decode every task of the split present in data_dir (or `tasks`) and score it.

    limit: at most this many images (captioning) or questions (VQA) per task, the first by id.
    Returns what results.json holds: metrics and sample predictions per task, the stage, step,
    spec and training config of the checkpoint, and how it was decoded."""
    device = pick_device(device)
    model, checkpoint = load_vlm(checkpoint_path, device)
    tokenizer_path = tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_path, model.lm.config.vocab_size)
    present = data.available_tasks(data_dir, split)
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
        "metrics": {},
        "samples": {},
    }
    for task in tasks:
        evaluate_task = evaluate_captions if task in CAPTION_TASKS else evaluate_vqa
        results["metrics"][task], results["samples"][task] = evaluate_task(
            model,
            tokenizer,
            data.read_task(data_dir, task, split),
            decoding,
            limit,
            batch_size,
            device,
            task,
        )
    return results


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


def write_json(path: Path, content: dict) -> None:
    """Indented JSON; data.write_atomically, so a killed evaluation leaves no torn results file."""
    data.write_atomically(
        path, lambda temporary: temporary.write_text(json.dumps(content, indent=2, default=str))
    )


def default_results_path(checkpoint_path, split: str) -> Path:
    """results_<split>.json in the run folder, next to the checkpoint it scores."""
    return (
        Path(checkpoint_path) if Path(checkpoint_path).is_dir() else Path(checkpoint_path).parent
    ) / f"results_{split}.json"


def print_metrics(results: dict) -> None:
    for task, metrics in results["metrics"].items():
        print(
            f"{task:<14} "
            + "  ".join(
                f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                for name, value in metrics.items()
            )
        )


# =============================================================================================
# Comparing adapters: the paper's table at our scale, and the validation-loss curves
# =============================================================================================


def run_name(spec: ModelSpec) -> str:
    if spec.adapter == "vadapter":
        front = spec.resampler
        if (
            front.latents_in_keys and front.feed_forward and front.depth == 1
        ):  # the paper's fresh 1-layer perceiver
            return f"vadapter ({spec.adapter_init or 'stage1'})"
        kind = "pooler" if not front.latents_in_keys else f"{front.depth}-layer perceiver"
        return f"vadapter ({spec.adapter_init or 'stage1'}, {kind})"
    if spec.adapter == "perceiver":
        return f"perceiver (depth {spec.resampler.depth})"
    return spec.adapter


def validation_curve(run_dir) -> list[tuple[int, float]]:
    """(step, validation loss) pairs from a run's metrics.jsonl; a torn line (a killed write) is
    skipped."""
    records = map(parse_metrics_line, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return [
        (record["step"], record["val_loss"])
        for record in records
        if record and "val_loss" in record
    ]


def compare_runs(
    run_dirs: list, data_dir, split="test", baseline=None, limit=None, batch_size=32
) -> list[dict]:
    """One row per stage-2 run: adapter, trainable parameters, final validation loss, steps to reach
    the baseline's final validation loss, and the test metrics of every task. The baseline is
    `baseline` or the first perceiver run."""
    rows = []
    for run_dir in run_dirs:
        results = evaluate_checkpoint(
            run_dir, data_dir, split, limit=limit or None, batch_size=batch_size
        )  # reads it once
        curve = validation_curve(run_dir)
        rows.append(
            {
                "run": str(run_dir),
                "adapter": run_name(ModelSpec.from_dict(results["spec"])),
                "step": results["step"],
                "trainable_parameters": results["trainable_parameters"],
                "curve": curve,
                "final_val_loss": curve[-1][1],
                "metrics": results["metrics"],
                "samples": results["samples"],
            }
        )
    reference = next(
        (
            row
            for row in rows
            if row["run"] == str(baseline)
            or (baseline is None and row["adapter"].startswith("perceiver"))
        ),
        rows[0],
    )
    for row in rows:
        row["steps_to_baseline_final_loss"] = steps_to_reach(
            row["curve"], reference["final_val_loss"]
        )
        row["baseline"] = reference["adapter"]
    return rows


def comparison_table(rows: list[dict]) -> str:
    """Markdown, like the paper's comparison: one row per adapter."""
    columns = [
        ("caption", "cider_d", "CIDEr-D"),
        ("vqa", "vqa_accuracy", "VQA acc"),
        ("video_caption", "cider_d", "video CIDEr-D"),
        ("video_vqa", "vqa_accuracy", "video VQA acc"),
    ]
    columns = [c for c in columns if any(c[0] in row["metrics"] for row in rows)]
    header = [
        "adapter",
        "trainable params",
        "val loss",
        f"steps to {rows[0]['baseline']}'s final val loss",
    ]
    lines = [
        "| " + " | ".join(header + [title for *_, title in columns]) + " |",
        "|" + "---|" * (len(header) + len(columns)),
    ]
    for row in rows:
        reached = row["steps_to_baseline_final_loss"]
        cells = [
            row["adapter"],
            f"{row['trainable_parameters']:,}",
            f"{row['final_val_loss']:.4f}",
            f"{reached} of {row['step']}"
            if reached is not None
            else f"not reached in {row['step']}",
        ]
        cells += [
            f"{row['metrics'][task][metric]:.3f}" if task in row["metrics"] else "-"
            for task, metric, _ in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path, size=(720, 440)) -> None:
    """Validation loss against step for every run, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 20, 60
    steps = [step for row in rows for step, _ in row["curve"]]
    losses = [loss for row in rows for _, loss in row["curve"]]
    low, high = min(losses), max(losses)

    def x(step):
        return left + (width - left - right) * step / max(steps)

    def y(loss):
        return top + (height - top - bottom) * (high - loss) / max(high - low, 1e-9)

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line(
        [(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black"
    )
    for fraction in (0, 0.5, 1):
        loss, step = high - fraction * (high - low), fraction * max(steps)
        draw.text((4, y(loss) - 6), f"{loss:.3f}", fill="black")
        draw.text((x(step) - 10, height - bottom + 6), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 60, height - 24), "step (validation loss)", fill="black")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for index, row in enumerate(rows):
        colour = colours[index % len(colours)]
        points = [(x(step), y(loss)) for step, loss in row["curve"]]
        draw.line(points, fill=colour, width=2) if len(points) > 1 else None
        draw.text((width - right - 220, top + 16 * index), row["adapter"], fill=colour)
    image.save(path)


@torch.no_grad()
def write_comparison(rows: list[dict], out_dir) -> str:
    """results.json, table.md, val_loss.csv and val_loss.png in out_dir; returns the table."""
    out_dir = Path(out_dir)
    table = comparison_table(rows)
    write_json(out_dir / "results.json", {"runs": rows})
    (out_dir / "table.md").write_text(table + "\n")
    with open(out_dir / "val_loss.csv", "w") as f:
        f.write("adapter,step,val_loss\n")
        f.writelines(
            f"{row['adapter']},{step},{loss:.6f}\n" for row in rows for step, loss in row["curve"]
        )
    plot_curves(rows, out_dir / "val_loss.png")
    return table


def add_diagnostics(args) -> dict:
    """The `diagnostics` block of a `compare` results.json: every stand-in's ability, stage 1's
    CIDEr-D beside the references' own leave-one-out ceiling, and each adapter's oracle fraction."""
    results = json.loads(args.results.read_text())
    probe = diagnostics.vit_probe(args.vit, args.data)
    stage1 = evaluate_checkpoint(args.stage1, args.data, "test", ["caption"], args.limit or None)
    block = {
        "vit_probe": {kind: score["accuracy"] for kind, score in probe.items()},
        "vit_probe_majority": {kind: score["majority"] for kind, score in probe.items()},
        "lm_context": {
            name: diagnostics.lm_context(path, args.data)
            for name, path in (("large", args.large_lm), ("tiny", args.tiny_lm))
        },
        "stage1": {"cider_d": stage1["metrics"]["caption"]["cider_d"]},
        "reference_cider_d": diagnostics.reference_ceiling(args.data, "test"),
        "oracle_fraction": {
            row["adapter"]: diagnostics.image_reliance(row["run"], args.data)["oracle_fraction"]
            for row in results["runs"]
        },
    }
    write_json(args.results, {**results, "diagnostics": block})
    return block


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    checkpoint = commands.add_parser(
        "checkpoint", help="score a stage-1/2 checkpoint on every task of a split"
    )
    checkpoint.add_argument("checkpoint_path", metavar="RUN_DIR_OR_FILE")
    checkpoint.add_argument(
        "--data",
        required=True,
        help="data folder (python -m stage0.synthetic --out DIR, or real files)",
    )
    checkpoint.add_argument("--split", default="val")
    checkpoint.add_argument(
        "--tasks", help=f"comma-separated, from {list(data.TASK_FILES)} (default: all in DATA)"
    )
    checkpoint.add_argument(
        "--limit", type=int, help="at most N images (captions) / questions (VQA) per task"
    )
    checkpoint.add_argument("--batch-size", type=int, default=32)
    checkpoint.add_argument(
        "--out", type=Path, help="results JSON (default: RUN_DIR/results_<split>.json)"
    )
    one = commands.add_parser(
        "caption", help="caption (or answer about) one image file or frame folder"
    )
    one.add_argument("path", metavar="IMAGE_OR_FRAME_FOLDER")
    one.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE")
    one.add_argument("--question", help="answer this question instead of captioning")
    one.add_argument(
        "--data", help=f"data folder whose {data.TOKENIZER_FILE} to use (or give --tokenizer)"
    )
    compare = commands.add_parser(
        "compare", help="the paper's comparison table for several stage-2 runs"
    )
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--data", required=True)
    compare.add_argument("--split", default="test")
    compare.add_argument(
        "--baseline",
        help="run whose final validation loss the others race to (default: first perceiver)",
    )
    compare.add_argument(
        "--limit", type=int, help="at most N images / questions per task (0 or none: all)"
    )
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for results.json, table.md, val_loss.csv/.png",
    )
    probe = commands.add_parser(
        "probe", help="linear probe of a frozen ViT's features: shape, colour, count"
    )
    probe.add_argument(
        "vit",
        metavar="VIT_RUN",
        help="stage0/pretrain.py vit run (or any stage-1/2 run, or hf:FOLDER)",
    )
    probe.add_argument("--data", required=True, help="a synthetic world (it has scene labels)")
    probe.add_argument("--train-limit", type=int, help="fit on at most N training images")
    context = commands.add_parser(
        "context", help="an LM's caption loss after nothing / the same image's / another's caption"
    )
    context.add_argument(
        "lm",
        metavar="LM_RUN",
        help="stage0/pretrain.py lm run, a stage-1 run (its tiny LM) or hf:FOLDER",
    )
    report = commands.add_parser(
        "diagnostics", help="add every diagnostic to a `compare` results.json (make demo)"
    )
    report.add_argument("results", type=Path, metavar="RESULTS_JSON")
    report.add_argument("--data", required=True)
    report.add_argument("--vit", required=True)
    report.add_argument("--large-lm", required=True)
    report.add_argument("--tiny-lm", required=True)
    report.add_argument("--stage1", required=True)
    report.add_argument(
        "--limit", type=int, help="at most N test images for the stage-1 CIDEr-D (0 or none: all)"
    )
    bundle = commands.add_parser(
        "bundle", help="a self-contained copy of a checkpoint: its frozen models copied in"
    )
    bundle.add_argument("checkpoint_path", metavar="RUN_DIR_OR_FILE")
    bundle.add_argument("--out", type=Path, required=True, help="the file to write")
    reliance = commands.add_parser(
        "reliance", help="caption loss with true, blanked and shuffled images, and a text oracle"
    )
    reliance.add_argument("runs", nargs="+", metavar="RUN_DIR")
    for command, split, limit in ((context, "test", 300), (reliance, "val", 128)):
        command.add_argument("--data", required=True)
        command.add_argument("--split", default=split)
        command.add_argument(
            "--limit", type=int, default=limit, help="images, one target caption each"
        )
        command.add_argument("--tokenizer")
    for command in (checkpoint, one):
        command.add_argument(
            "--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})"
        )
        command.add_argument("--beam", type=int, default=1, help="beam size; 1 = greedy (default)")
        command.add_argument(
            "--length-penalty", type=float, default=1.0, help="beam search: score / length ** this"
        )
        command.add_argument("--max-new-tokens", type=int, default=32)
        command.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args(argv)
    if args.command == "caption":
        if not (args.tokenizer or args.data):
            parser.error("caption needs --tokenizer PATH or --data DIR (for DIR/tokenizer.model)")
        decoding = Decoding(args.beam, args.length_penalty, args.max_new_tokens)
        print(
            caption_one(
                args.checkpoint,
                args.path,
                args.tokenizer or Path(args.data) / data.TOKENIZER_FILE,
                args.question,
                decoding,
                args.device,
            )
        )
        return
    if args.command == "reliance":
        for run in args.runs:
            losses = diagnostics.image_reliance(
                run, args.data, args.split, args.limit, tokenizer_path=args.tokenizer
            )
            print(
                f"{run}: caption loss with real images {losses['real']:.4f}, blanked "
                f"{losses['blanked']:.4f}, "
                f"shuffled {losses['shuffled']:.4f}; text oracle {losses['oracle']:.4f}; "
                f"fraction of the blanked -> oracle gap closed: {losses['oracle_fraction']:.3f}"
            )
        return
    if args.command == "probe":
        for kind, score in diagnostics.vit_probe(args.vit, args.data, args.train_limit).items():
            print(
                f"{kind:<7} linear probe accuracy {score['accuracy']:.4f}   (majority class "
                f"{score['majority']:.4f})"
            )
        return
    if args.command == "context":
        losses = diagnostics.lm_context(args.lm, args.data, args.split, args.limit, args.tokenizer)
        print(
            f"caption loss with nothing before it {losses['none']:.4f}, after a caption of the "
            "same image "
            f"{losses['same_image']:.4f}, of another image {losses['other_image']:.4f}: "
            f"the same-image text lowers it by {100 * losses['drop']:.1f}%"
        )
        return
    if args.command == "diagnostics":
        print(json.dumps(add_diagnostics(args), indent=2))
        return
    if args.command == "bundle":
        print(
            f"wrote {args.out}: {bundle_checkpoint(args.checkpoint_path, args.out)['bytes']:,} "
            "bytes"
        )
        return
    if args.command == "compare":
        rows = compare_runs(
            args.runs, args.data, args.split, args.baseline, args.limit, args.batch_size
        )
        print(write_comparison(rows, args.out))
        print(f"wrote {args.out}/results.json, table.md, val_loss.csv, val_loss.png")
        return
    results = evaluate_checkpoint(
        args.checkpoint_path,
        args.data,
        args.split,
        args.tasks.split(",") if args.tasks else None,
        args.limit,
        args.beam,
        args.batch_size,
        tokenizer_path=args.tokenizer,
        length_penalty=args.length_penalty,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )
    out = args.out or default_results_path(args.checkpoint_path, args.split)
    write_json(out, results)
    print_metrics(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

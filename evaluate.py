"""Evaluation: the box after Figure 2's model, which turns a checkpoint into the paper's numbers.

The paper reports captioning as CIDEr (COCO, MSRVTT, ...) and question answering as VQA accuracy
(VQAv2, MSRVTT-QA, ...): the metrics are in `evaluation/metrics.py`, the decoders in
`evaluation/decoding.py`, scoring a task and captioning one image in `evaluation/tasks.py`, every
task of a checkpoint in `evaluation/scoring.py`, the results files and the comparison's table and
curves in `evaluation/report.py`, the sheet of examples and the attention maps in
`evaluation/show.py`. This file is the command that evaluates a stage-1 or stage-2 checkpoint on a
data folder, compares stage-2 runs (the paper's table at our scale, with validation-loss curves),
measures how much a model reads its images, captions one image, and draws test items with what
each run says about them (the paper's Figures 3 and 4). Evaluation decodes greedily unless told
otherwise, with fixed prompts ([bos] for captions, [bos] + "question: ... answer:" for VQA, as in
training), so the same checkpoint always gives the same numbers. `compare` also scores every run
with each image blank (pixels zero after the ViT's normalisation: a uniform image of its mean
colour; the same items, prompts and decoding): what the frozen LM answers without seeing, a row
under each adapter; `blank` adds those scores to a comparison made before they existed.

    python evaluate.py checkpoint runs/stage2 --data data/shapes --split val [--beam 1] [--limit N]
    python evaluate.py caption data/shapes/images/val/000001000001.png --checkpoint runs/stage2 \\
        --data data/shapes [--question "what color is the circle?"]
    python evaluate.py compare runs/stage2_vadapter runs/stage2_perceiver --data data/shapes \\
        --out runs/results
    python evaluate.py blank runs/results/results.json --data data/shapes
    python evaluate.py show runs/stage2_vadapter runs/stage2_perceiver --data data/shapes \\
        --out docs [--items 4] [--seed 0] [--attention]
    python evaluate.py reliance runs/stage2_vadapter --data data/shapes
    python evaluate.py probe runs/pretrain/vit --data data/shapes
    python evaluate.py context runs/pretrain/large_lm --data data/shapes
    python evaluate.py diagnostics runs/demo/results/results.json --data data/shapes \\
        --vit ... (see --help)
    python evaluate.py bundle runs/stage2 --out stage2_shared.pt
        (frozen models copied in, to share)
"""

import argparse
import json
from pathlib import Path

import data
from evaluation import diagnostics, show
from evaluation.decoding import Decoding

# Reached through this module though not used in it, as before these parts moved to evaluation/:
# the metrics, encode_once and generate_texts (tests/test_evaluate.py).
from evaluation.metrics import bleu4 as bleu4
from evaluation.metrics import cider_d as cider_d
from evaluation.metrics import vqa_accuracy as vqa_accuracy
from evaluation.report import (
    add_blank_scores,
    default_results_path,
    print_metrics,
    run_name,
    validation_curve,
    write_comparison,
    write_json,
)
from evaluation.scoring import evaluate_checkpoint
from evaluation.tasks import caption_one
from evaluation.tasks import encode_once as encode_once
from evaluation.tasks import generate_texts as generate_texts
from support.flags import COUNT, NON_NEGATIVE, NON_NEGATIVE_REAL
from support.model_spec import ModelSpec
from support.models import bundle_checkpoint
from support.run_folder import steps_to_reach

# =============================================================================================
# Comparing adapters: the paper's table at our scale, and the validation-loss curves
# =============================================================================================


def compare_runs(
    run_dirs: list, data_dir, split="test", baseline=None, limit=None, batch_size=32
) -> list[dict]:
    """One row per stage-2 run: adapter, trainable parameters, final validation loss, steps to reach
    the baseline's final validation loss, and the test metrics of every task, with the real images
    and with each image blank. The baseline is `baseline` or the first perceiver run."""
    rows = []
    for run_dir in run_dirs:
        # reads it once
        results = evaluate_checkpoint(
            run_dir,
            data_dir,
            split,
            limit=limit or None,
            batch_size=batch_size,
            images=("real", "blank"),
        )
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
                "blank_metrics": results["blank_metrics"],
                "blank_samples": results["blank_samples"],
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
        "--limit", type=COUNT, help="at most N images (captions) / questions (VQA) per task"
    )
    checkpoint.add_argument("--batch-size", type=COUNT, default=32)
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
        "--limit", type=NON_NEGATIVE, help="at most N images / questions per task (0: all)"
    )
    compare.add_argument("--batch-size", type=COUNT, default=32)
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
    probe.add_argument("--train-limit", type=COUNT, help="fit on at most N training images")
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
        "--limit", type=NON_NEGATIVE, help="at most N test images for the stage-1 CIDEr-D (0: all)"
    )
    bundle = commands.add_parser(
        "bundle", help="a self-contained copy of a checkpoint: its frozen models copied in"
    )
    bundle.add_argument("checkpoint_path", metavar="RUN_DIR_OR_FILE")
    bundle.add_argument("--out", type=Path, required=True, help="the file to write")
    sheet = commands.add_parser(
        "show", help="test items with each run's captions and answers, as a PNG (Figures 3, 4)"
    )
    sheet.add_argument("runs", nargs="+", metavar="RUN", type=show.existing_run)
    sheet.add_argument("--data", required=True)
    sheet.add_argument("--out", type=Path, required=True, help=f"folder for {show.SHEET}")
    sheet.add_argument("--items", type=COUNT, default=4, help="test items, half of them videos")
    sheet.add_argument("--seed", type=NON_NEGATIVE, default=0, help="which items")
    sheet.add_argument(
        "--attention",
        action="store_true",
        help=f"also {show.ATTENTION_MAPS}: where each cross-attention latent looks",
    )
    blank = commands.add_parser(
        "blank", help="add the blank-image scores to a `compare` results.json made without them"
    )
    blank.add_argument("results", type=Path, metavar="RESULTS_JSON")
    blank.add_argument("--data", required=True, help="the data folder `compare` was given")
    blank.add_argument("--split", default="test", help="the split `compare` was given")
    reliance = commands.add_parser(
        "reliance", help="caption loss with true, blanked and shuffled images, and a text oracle"
    )
    reliance.add_argument("runs", nargs="+", metavar="RUN_DIR")
    for command, split, limit in ((context, "test", 300), (reliance, "val", 128)):
        command.add_argument("--data", required=True)
        command.add_argument("--split", default=split)
        command.add_argument(
            "--limit", type=COUNT, default=limit, help="images, one target caption each"
        )
        command.add_argument("--tokenizer")
    for command in (checkpoint, one):
        command.add_argument(
            "--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})"
        )
        command.add_argument("--beam", type=COUNT, default=1, help="beam size (1: greedy)")
        command.add_argument(
            "--length-penalty",
            type=NON_NEGATIVE_REAL,
            default=1.0,
            help="beam search: score / length ** this",
        )
        command.add_argument("--max-new-tokens", type=COUNT, default=32)
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
    if args.command == "show":
        for path in show.show_runs(
            args.runs, args.data, args.out, args.items, args.seed, args.attention
        ):
            print(f"wrote {path}")
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
    if args.command == "blank":
        scored = add_blank_scores(args.results, args.data, args.split)
        print(f"{args.results}: blank-image scores added to {scored} run(s)")
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

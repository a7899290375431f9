"""The layout itself: the root holds the method, every file is read in one sitting, imports run one
way.

Imports run: attention <- models <- wiring <- checkpoints <- trainer <- scripts, with the data
files and the metrics below everything that trains or evaluates. A module may import only
modules earlier in LIBRARY_ORDER; a script may import any library module but no other script
(the benchmarks are one tool, in the order BENCHMARK_ORDER). Modules in folders are named as
Python imports them (`support.checkpoints`)."""

import ast

import pytest

from conftest import REPO

LINE_BUDGET = 400
ROOT_BUDGET = 12  # .py files at the root: what a reader of the paper opens
FOLDERS = ["stage0", "support", "evaluation", "bench", "paper"]

LIBRARY_ORDER = [
    "attention",  # the one attention function
    "support.hf_weights",  # Hugging Face folders and tensor-name tables (imports no model)
    "support.hf_decoder",  # Llama / Gemma: the sequential block, RMSNorm, weight tables
    "support.decoder_inputs",  # the PaLM decoder's argument checks
    "evaluation.metrics",  # CIDEr-D, BLEU-4, VQA accuracy
    "support.writers",  # atomic file writes; the COCO / VQAv2 writers of the synthetic world
    "support.data_checks",  # DataError, bad samples skipped and counted, field checks
    "support.images",  # image files and frame folders -> normalized pixels
    "support.readers",  # COCO / Karpathy / VQAv2 readers
    "support.data_folder",  # which files hold each task of a data folder
    "support.tokenizer",  # sentencepiece, trained here or read from a Hugging Face folder
    "data",  # the prompt, datasets, collate
    "support.feature_cache",  # frozen-ViT features kept in bf16, within a budget
    "support.flags",  # command-line flags from config dataclasses
    "stage0.world",  # the synthetic world's vocabulary, scenes and pixels
    "stage0.captions",  # the synthetic world's captions, questions and human answers
    "stage0.scenes",  # scene labels: the stand-in ViT's pretraining targets and the linear probe
    "vit",
    "resampler",
    "palm_decoder",  # the models
    "vlm",  # the wiring of Figure 2
    "evaluation.decoding",  # greedy / beam search over the KV cache
    "support.model_spec",  # ModelSpec, build_vlm
    "support.processes",  # torchrun's processes, their GPUs, which one prints
    "support.checkpoints",  # save / load / resume, frozen models by reference
    "support.models",  # the frozen ViT / LM, the tokenizer, a trained VLM, loaded from files
    "evaluation.diagnostics",  # probe, LM context, reliance with a text oracle
    "support.run_folder",  # a run's checkpoints kept, metrics.jsonl, refusing to overwrite
    "support.batches",  # the data order: what each step of each rank reads
    "trainer",  # the one training loop
    "support.vlm_training",  # stages 1 and 2 on a data folder (train_vlm, DataConfig)
    "evaluation.tasks",  # evaluate.py's parts: a task scored, one image captioned
    "evaluation.scoring",  # every task of a checkpoint scored, as results.json holds it
    "evaluation.report",  # results files, the comparison table and validation-loss curves
    "evaluation.pictures",  # Pillow: pixels back to pictures, upscaled; readable text
    "evaluation.attention_maps",  # where the cross-attention latents look, drawn over the image
    "evaluation.show",  # the sheet: test items, each run's captions and answers
    "paper.stats",  # paired 95% intervals and verdicts
    "paper.versus",  # two results of the same seeds: do they agree?
    "paper.claims",  # make paper's parts: the claims and the 2-std rule
    "paper.runs",  # the runs: planned, run, their numbers read back
    "paper.page",  # docs/results.md from the numbers: tables, runs still falling, claims
    "paper.curves",  # every run's validation curve, one panel per table (results_curves.png)
]
BENCHMARK_ORDER = [
    "bench.measure",
    "bench.graphs",
    "bench.tools",
    "bench.training_step",
    "bench.frozen_paths",
    "bench.step",
    "bench.reference",
    "bench.attention_checks",
    "bench.kernels",
    "bench.gpu_check",
    "bench.__main__",
]
SCRIPTS = [
    "stage0.synthetic",
    "stage0.pretrain",
    "train_stage1",
    "train_stage2",
    "evaluate",
    "paper.tables",
    *BENCHMARK_ORDER,
]


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


ROOT_FILES = sorted(path.stem for path in REPO.glob("*.py"))
MODULES = sorted(
    ROOT_FILES
    + [
        module_name(path)
        for folder in FOLDERS
        for path in (REPO / folder).glob("*.py")
        if path.stem != "__init__"
    ]
)


def project_imports(name: str) -> set[str]:
    """Every project module `name` imports, at module level or inside a function."""
    tree = ast.parse((REPO / (name.replace(".", "/") + ".py")).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            # from folder import module
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    return imported & set(MODULES)


def test_the_root_holds_only_the_method():
    assert len(ROOT_FILES) <= ROOT_BUDGET, f"{len(ROOT_FILES)} .py files at the root: {ROOT_FILES}"


def test_every_file_has_a_place_in_the_layout():
    unplaced = set(MODULES) - set(LIBRARY_ORDER) - set(SCRIPTS)
    assert not unplaced, (
        f"add {sorted(unplaced)} to LIBRARY_ORDER or SCRIPTS in tests/test_layout.py"
    )


@pytest.mark.parametrize("name", MODULES)
def test_file_fits_the_line_budget(name):
    lines = len((REPO / (name.replace(".", "/") + ".py")).read_text().splitlines())
    assert lines <= LINE_BUDGET, (
        f"{name} has {lines} lines; the budget is {LINE_BUDGET}: split it by idea"
    )


@pytest.mark.parametrize("name", MODULES)
def test_imports_run_one_way(name):
    if name in LIBRARY_ORDER:
        allowed = set(LIBRARY_ORDER[: LIBRARY_ORDER.index(name)])
    elif name in BENCHMARK_ORDER:
        allowed = set(LIBRARY_ORDER) | set(BENCHMARK_ORDER[: BENCHMARK_ORDER.index(name)])
    else:
        allowed = set(LIBRARY_ORDER)
    wrong = project_imports(name) - allowed
    assert not wrong, f"{name} imports {sorted(wrong)}; it may import only {sorted(allowed)}"


def test_the_language_model_file_imports_nothing_from_the_vision_encoder():
    assert "vit" not in project_imports("palm_decoder")


def test_the_checker_sees_function_level_and_folder_imports(tmp_path, monkeypatch):
    (tmp_path / "late.py").write_text(
        "def f():\n    from trainer import train\n    from support import flags\n"
    )
    monkeypatch.setattr("test_layout.REPO", tmp_path)
    monkeypatch.setattr("test_layout.MODULES", ["late", "trainer", "support.flags"])
    assert project_imports("late") == {"trainer", "support.flags"}

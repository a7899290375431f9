"""The layout itself: every root file is read in one sitting, and imports run one way.

Imports run: attention <- models <- wiring <- checkpoints <- trainer <- scripts, with the data
files and the metrics below everything that trains or evaluates. A module may import only
modules earlier in LIBRARY_ORDER; a script may import any library module but no other script
(the benchmark entry point and its parts are one tool, in the order BENCHMARK_ORDER)."""
import ast

import pytest

from conftest import REPO

LINE_BUDGET = 400

LIBRARY_ORDER = [
    "attention",  # the one attention function
    "hf_weights",  # Hugging Face folders and tensor-name tables (imports no model)
    "metrics",  # CIDEr-D, BLEU-4, VQA accuracy
    "readers",  # COCO / Karpathy / VQAv2 readers
    "data",  # images, tokenizer, datasets, collate
    "feature_cache",  # frozen-ViT features kept in bf16, within a budget
    "flags",  # command-line flags from config dataclasses
    "scenes",  # scene labels: the stand-in ViT's pretraining targets and the linear probe
    "vit", "resampler", "palm_decoder",  # the models
    "vlm",  # the wiring of Figure 2
    "decoding",  # greedy / beam search over the KV cache
    "checkpoints",  # ModelSpec, build_vlm, save / load / resume
    "diagnostics",  # probe, LM context, reliance with a text oracle
    "run_folder",  # a run's checkpoints kept, metrics.jsonl, refusing to overwrite
    "trainer",  # the one training loop
]
BENCHMARK_ORDER = ["benchmark_tools", "benchmark_step", "benchmark_reference", "benchmark"]
SCRIPTS = ["synthetic", "pretrain", "train_stage1", "train_stage2", "evaluate", "paper", *BENCHMARK_ORDER]

ROOT_FILES = sorted(path.stem for path in REPO.glob("*.py"))


def project_imports(name: str) -> set[str]:
    """Every project module `name`.py imports, at module level or inside a function."""
    tree = ast.parse((REPO / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported & set(ROOT_FILES)


def test_every_root_file_has_a_place_in_the_layout():
    unplaced = set(ROOT_FILES) - set(LIBRARY_ORDER) - set(SCRIPTS)
    assert not unplaced, f"add {sorted(unplaced)} to LIBRARY_ORDER or SCRIPTS in tests/test_layout.py"


@pytest.mark.parametrize("name", ROOT_FILES)
def test_file_fits_the_line_budget(name):
    lines = len((REPO / f"{name}.py").read_text().splitlines())
    assert lines <= LINE_BUDGET, f"{name}.py has {lines} lines; the budget is {LINE_BUDGET}: split it by idea"


@pytest.mark.parametrize("name", ROOT_FILES)
def test_imports_run_one_way(name):
    if name in LIBRARY_ORDER:
        allowed = set(LIBRARY_ORDER[: LIBRARY_ORDER.index(name)])
    elif name in BENCHMARK_ORDER:
        allowed = set(LIBRARY_ORDER) | set(BENCHMARK_ORDER[: BENCHMARK_ORDER.index(name)])
    else:
        allowed = set(LIBRARY_ORDER)
    wrong = project_imports(name) - allowed
    assert not wrong, f"{name}.py imports {sorted(wrong)}; it may import only {sorted(allowed)}"


def test_the_checker_sees_function_level_imports(tmp_path, monkeypatch):
    (tmp_path / "late.py").write_text("def f():\n    from trainer import train\n    import data\n")
    monkeypatch.setattr("test_layout.REPO", tmp_path)
    monkeypatch.setattr("test_layout.ROOT_FILES", ["late", "trainer", "data"])
    assert project_imports("late") == {"trainer", "data"}

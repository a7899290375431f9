"""evaluate.py's helpers that need no checkpoint: the comparison table's run names, the validation
curve read from a run's metrics.jsonl, and which VQA questions a limit takes."""

from dataclasses import replace
from types import SimpleNamespace

import pytest

import evaluate
from conftest import toy_spec
from evaluation.tasks import spread_over_images
from resampler import ResamplerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_names_tell_the_paper_rows_apart():
    """The comparison table's row names: the VAdapter's front when not the paper's 1-layer
    perceiver."""
    vadapter = toy_spec("vadapter")
    names = [
        evaluate.run_name(spec)
        for spec in (
            replace(vadapter, adapter_init="lm"),
            replace(vadapter, resampler=ResamplerConfig.for_pooler(48, 48, 4)),
            replace(vadapter, resampler=ResamplerConfig.for_perceiver(48, depth=6)),
            toy_spec("perceiver"),
            toy_spec("mlp"),
        )
    ]
    assert names == [
        "vadapter (lm)",
        "vadapter (stage1, pooler)",
        "vadapter (stage1, 6-layer perceiver)",
        "perceiver (depth 2)",
        "mlp",
    ]


def test_validation_curve_skips_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "val_loss": 2.5}\n{"step": 20, "loss": 1.0}\n{"step": 30, "val_lo'
    )
    assert evaluate.validation_curve(tmp_path) == [(10, 2.5)]


def test_a_vqa_limit_takes_questions_spread_over_the_images():
    """3 images with 3 questions each, limit 4: one question of every image first, then a
    second question of the first image; returned image by image."""
    questions = [
        SimpleNamespace(image_id=image, question_id=10 * image + k)
        for image in (3, 1, 2)
        for k in (2, 0, 1)
    ]
    chosen = spread_over_images(questions, 4)
    assert [(q.image_id, q.question_id) for q in chosen] == [(1, 10), (1, 11), (2, 20), (3, 30)]
    assert len(spread_over_images(questions, None)) == 9

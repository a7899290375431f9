"""The reduced demo end to end: every stage, both adapters, the comparison table and curves."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_quick(runs, *variables):
    result = subprocess.run(
        ["make", "demo-quick", f"RUNS={runs}", f"PY={sys.executable}", "INSTALL=", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_demo_quick_writes_every_metric_for_both_adapters(tmp_path):
    demo_quick(tmp_path)
    # The stages are file targets: with nothing changed, make only prints the table again; a change
    # to stage 2's flags reruns stage 2 and the evaluation, not the data or stage 1.
    stages = [
        "data/dataset.json",
        "stage1/done",
        "stage2_vadapter/done",
        "stage2_perceiver/done",
        "results/done",
    ]
    built = {stage: (tmp_path / stage).stat().st_mtime_ns for stage in stages}
    again = demo_quick(tmp_path)
    assert "python" not in again and "CIDEr-D" in again
    assert {stage: (tmp_path / stage).stat().st_mtime_ns for stage in stages} == built
    demo_quick(tmp_path, "QUICK_STAGE2_STEPS=6")
    rebuilt = [stage for stage in stages if (tmp_path / stage).stat().st_mtime_ns != built[stage]]
    assert rebuilt == ["stage2_vadapter/done", "stage2_perceiver/done", "results/done"]
    (tmp_path / "stage2_perceiver/done").unlink()  # as if killed before the end: the run resumes
    assert "resumed from" in demo_quick(tmp_path, "QUICK_STAGE2_STEPS=6")
    runs = json.loads((tmp_path / "results" / "results.json").read_text())["runs"]
    assert [run["adapter"] for run in runs] == ["vadapter (stage1)", "perceiver (depth 6)"]
    for run in runs:
        assert run["trainable_parameters"] > 0 and run["final_val_loss"] > 0
        assert set(run["metrics"]) == {"caption", "vqa", "video_caption", "video_vqa"}
        for task in ("caption", "video_caption"):
            assert {"cider_d", "bleu4"} <= set(run["metrics"][task])
        for task in ("vqa", "video_vqa"):
            assert 0 <= run["metrics"][task]["vqa_accuracy"] <= 1
    table = (tmp_path / "results" / "table.md").read_text()
    assert "vadapter (stage1)" in table and "perceiver (depth 6)" in table and "CIDEr-D" in table
    csv = (tmp_path / "results" / "val_loss.csv").read_text().splitlines()
    assert csv[0] == "adapter,step,val_loss" and len(csv) > 2
    assert (tmp_path / "results" / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    for picture in ("show.png", "attention_maps.png"):  # evaluate.py show, into DEMO_PICTURES
        assert (tmp_path / "pictures" / picture).read_bytes()[:4] == b"\x89PNG"
    diagnostics = json.loads((tmp_path / "results" / "results.json").read_text())["diagnostics"]
    assert set(diagnostics["vit_probe"]) == {"shape", "colour", "count"}
    assert all(0 <= accuracy <= 1 for accuracy in diagnostics["vit_probe"].values())
    for lm in ("large", "tiny"):
        assert {"none", "same_image", "other_image"} <= set(diagnostics["lm_context"][lm])
    assert diagnostics["stage1"]["cider_d"] >= 0 and diagnostics["reference_cider_d"] > 0
    assert set(diagnostics["oracle_fraction"]) == {"vadapter (stage1)", "perceiver (depth 6)"}
    reliance = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "reliance",
            str(tmp_path / "stage2_vadapter"),
            "--data",
            str(tmp_path / "data"),
            "--limit",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert reliance.returncode == 0, reliance.stderr[-2000:]
    assert all(
        word in reliance.stdout
        for word in ("real images", "blanked", "shuffled", "text oracle", "gap closed")
    )

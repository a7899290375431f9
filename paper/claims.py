"""The paper's claims, and how `make paper` judges one over seeds.

After Figure 2's model, beside evaluate.py. Each claim names the run the paper says is better, the
run it beats and the metric, with the paper's own figures. A claim holds or does not hold when the
two rows' means over the seeds differ by more than twice the larger of their sample standard
deviations, and is within seed noise otherwise. paper/tables.py writes the verdicts.
"""

import statistics
from dataclasses import dataclass


@dataclass
class Claim:
    text: str
    paper: str  # the paper's own figures (DESIGN.md section 1)
    table: str
    ours: str  # the run the paper says is better ...
    theirs: str  # ... than this one
    metric: str = "cider_d"  # image CIDEr-D, the paper's headline figure
    higher_is_better: bool = True


HIGHER = "higher (its Table 2)"
CLAIMS = [
    Claim(
        "fewer parameters: the VAdapter trains fewer than the perceiver",
        "30-70% fewer than comparable LVLMs",
        "Table 2",
        "vadapter",
        "perceiver",
        "trainable_parameters",
        higher_is_better=False,
    ),
    Claim(
        "faster convergence: the VAdapter reaches the perceiver's final validation loss in fewer "
        "steps",
        "a higher CIDEr in 60K steps than the perceiver in 250K (about 3x)",
        "Table 2",
        "vadapter",
        "perceiver",
        "steps_to_baseline_final_loss",
        higher_is_better=False,
    ),
    Claim(
        "higher scores: image CIDEr-D",
        "83.0 vs 81.4 (ViT-B), 89.6 vs 82.4 (ViT-L)",
        "Table 2",
        "vadapter",
        "perceiver",
    ),
    Claim(
        "higher scores: video CIDEr-D", HIGHER, "Table 2", "vadapter", "perceiver", "video_cider_d"
    ),
    Claim(
        "higher scores: VQA accuracy", HIGHER, "Table 2", "vadapter", "perceiver", "vqa_accuracy"
    ),
    Claim(
        "higher scores: video VQA accuracy",
        HIGHER,
        "Table 2",
        "vadapter",
        "perceiver",
        "video_vqa_accuracy",
    ),
    Claim(
        "progressive alignment beats language pretraining only",
        "83.0 vs 81.3",
        "Table 3",
        "vadapter",
        "vadapter_lm",
    ),
    Claim(
        "language pretraining beats a random tiny LM",
        "81.3 vs 79.2",
        "Table 3",
        "vadapter_lm",
        "vadapter_random",
    ),
    Claim(
        "a 1-layer perceiver beats the attentional pooler in stage 2",
        "85.6 vs 81.1",
        "Table 4",
        "vadapter",
        "vadapter_pooler",
    ),
    Claim(
        "a 1-layer perceiver beats a 6-layer one in stage 2",
        "85.6 vs 70.3",
        "Table 4",
        "vadapter",
        "vadapter_depth6",
    ),
    Claim("the VAdapter beats an MLP adapter", "83.0 vs 80.3", "Table 13", "vadapter", "mlp"),
    Claim(
        "stronger scaling: the VAdapter gains more CIDEr-D from the larger ViT than the perceiver",
        "+6.6 vs +1.0 (ViT-B -> ViT-L)",
        "stronger",
        "vadapter_gain",
        "perceiver_gain",
    ),
]


def summarize(values: list) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not
    None."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(present),
        "std": statistics.stdev(present) if len(present) > 1 else 0.0,
        "n": len(present),
    }


def mark(ours: list, theirs: list, higher_is_better: bool = True) -> tuple[str, float | None]:
    """The claim "ours beats theirs" on per-seed values -> (verdict, the noise level used). Within
    seed noise: the means differ by at most twice the larger of the two rows' standard deviations. A
    None (a loss never reached) loses to any number."""
    if None in ours or None in theirs:
        return ("does not hold" if None in ours else "holds"), None
    a, b = summarize(ours), summarize(theirs)
    noise = 2 * max(a["std"], b["std"])
    difference = (a["mean"] - b["mean"]) * (1 if higher_is_better else -1)
    if abs(difference) <= noise:
        return "within seed noise", noise
    return ("holds" if difference > 0 else "does not hold"), noise


def judge(claims: list[Claim], per_run: dict) -> list[dict]:
    """Each claim with both rows' mean ± std, the verdict and the noise level it was judged
    against."""
    judged = []
    for claim in claims:
        ours, theirs = (
            [seed.get(claim.metric) for seed in per_run[name]]
            for name in (claim.ours, claim.theirs)
        )
        measured = any(claim.metric in seed for seed in per_run[claim.ours] + per_run[claim.theirs])
        verdict, noise = (
            mark(ours, theirs, claim.higher_is_better)
            if measured
            else ("not measured (no such task)", None)
        )
        judged.append(
            {
                "claim": claim.text,
                "table": claim.table,
                "paper": claim.paper,
                "verdict": verdict,
                "ours": summarize(ours),
                "theirs": summarize(theirs),
                "two_std": noise,
                "metric": claim.metric,
            }
        )
    return judged

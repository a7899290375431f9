"""The paper's claims, and how `make paper` judges one over seeds.

After Figure 2's model, beside evaluate.py. Each claim names the run the paper says is better, the
run it beats and the metric, with the paper's own figures. Runs of one seed share data order and
stage 1, so a claim is judged on the per-seed differences, with a 95% interval: holds, fails,
level or undecided (paper/stats.py). paper/tables.py writes the verdicts.
"""

import statistics
from dataclasses import dataclass

from paper import stats


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
        "faster convergence: a lower mean validation loss over the run (the area under its curve)",
        "a higher CIDEr in 60K steps than the perceiver in 250K (about 3x)",
        "Table 2",
        "vadapter",
        "perceiver",
        "val_loss_area",
        higher_is_better=False,
    ),
    Claim(
        "faster convergence: the VAdapter gets halfway down the perceiver's drop in validation "
        "loss in fewer steps",
        "a higher CIDEr in 60K steps than the perceiver in 250K (about 3x)",
        "Table 2",
        "vadapter",
        "perceiver",
        "steps_to_halfway",
        higher_is_better=False,
    ),
    Claim(
        "higher scores: a lower final validation loss",
        HIGHER,
        "Table 2",
        "vadapter",
        "perceiver",
        "final_val_loss",
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


def judge(claims: list[Claim], per_run: dict, run_length: int | None = None) -> list[dict]:
    """Each claim with both rows' mean ± std, the paired difference (signed: > 0 favours the
    claim) with its 95% interval, the verdict and, when undecided, the seeds it would take.
    run_length: the stage-2 steps, which a never-reached target stands for (a censored seed)."""
    judged = []
    for claim in claims:
        ours, theirs = (
            [seed.get(claim.metric) for seed in per_run[name]]
            for name in (claim.ours, claim.theirs)
        )
        row = {
            "claim": claim.text,
            "table": claim.table,
            "paper": claim.paper,
            "metric": claim.metric,
            "ours": summarize(ours),
            "theirs": summarize(theirs),
            "seeds": len(ours),
        }
        measured = any(claim.metric in seed for seed in per_run[claim.ours] + per_run[claim.theirs])
        if not measured:
            judged.append({**row, "verdict": "not measured (no such task)"})
            continue
        if len(ours) < 2:
            judged.append({**row, "verdict": "undecided (one seed: no interval)"})
            continue
        result = stats.paired(ours, theirs, claim.higher_is_better, run_length=run_length)
        judged.append(
            {
                **row,
                "verdict": result.verdict,
                "difference": result.mean,
                "interval": [result.low, result.high],
                "margin": result.margin,
                "seeds_needed": result.seeds_needed,
                "censored": {"ours": result.censored_ours, "theirs": result.censored_theirs},
            }
        )
    return judged

"""How `make paper` decides a claim: seeds paired with each other, a 95% interval, a verdict.

After Figure 2's model, beside paper/claims.py. Rows of one seed share their data order and their
stage 1, so a claim is judged on the per-seed differences (ours - theirs, signed so that a
positive difference favours the claim), not on two independent means: the seed-to-seed spread
that both rows share cancels. With n seeds the 95% interval is mean +- t(0.975, n - 1) * s / sqrt(n)
over the n differences (Student's t: the differences' spread is itself estimated from n values).

Verdicts:
- holds: the interval lies above zero; fails: below zero;
- level: it straddles zero but lies inside +-margin (5% of the baseline's mean by default);
- undecided otherwise, with the number of seeds at which the observed mean and spread would
  decide (holds, fails or level), so a reader sees what more compute buys.

A measure that can be censored (steps to reach a loss: a run may never reach it) takes the run
length for a censored seed, a bound on the true value. A verdict stands only where the bounds
cannot overturn it: "holds" with no censored seed of ours, "fails" with none of theirs, "level"
with none at all.
"""

import math
import statistics
from dataclasses import dataclass

# Student's t 97.5% quantile by degrees of freedom (two-sided 95%), from the standard table.
# fmt: off
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
# fmt: on
MAX_SEEDS = 1000  # "seeds needed" beyond this is reported as more than it


def t_975(degrees: int) -> float:
    """The t quantile for `degrees` of freedom: the table's value, or the next smaller degrees in
    the table (a slightly wider, conservative interval); the normal's 1.960 past 120."""
    if degrees < 1:
        raise ValueError(f"degrees of freedom {degrees}: need at least 2 seeds for an interval")
    if degrees > 120:
        return 1.960
    return T_975[max(d for d in T_975 if d <= degrees)]


@dataclass
class Paired:
    """The paired comparison of one claim over n seeds."""

    differences: list[float]  # per seed, signed: > 0 favours the claim
    mean: float
    low: float  # the 95% interval
    high: float
    margin: float  # |difference| inside which the two rows count as level
    censored_ours: int = 0  # seeds where our run never reached the target (a bound)
    censored_theirs: int = 0

    @property
    def verdict(self) -> str:
        if self.low > 0 and not self.censored_ours:
            return "holds"
        if self.high < 0 and not self.censored_theirs:
            return "fails"
        censored = self.censored_ours or self.censored_theirs
        if -self.margin < self.low and self.high < self.margin and not censored:
            return "level"
        return "undecided"

    @property
    def seeds_needed(self) -> int | None:
        """For an undecided claim: the fewest seeds at which the observed mean and spread would
        give holds, fails or level (None: more than MAX_SEEDS); 0 when already decided."""
        if self.verdict != "undecided":
            return 0
        n, spread = len(self.differences), statistics.stdev(self.differences)
        for seeds in range(max(n, 2), MAX_SEEDS + 1):
            half_width = t_975(seeds - 1) * spread / math.sqrt(seeds)
            excludes_zero = abs(self.mean) > half_width
            inside_margin = abs(self.mean) + half_width < self.margin
            if excludes_zero or inside_margin:
                return seeds
        return None


def paired(
    ours: list,
    theirs: list,
    higher_is_better: bool = True,
    margin: float | None = None,
    run_length: float | None = None,
) -> Paired:
    """ours[i] and theirs[i] come from seed i. margin: None for 5% of |mean of theirs|.
    run_length: for a censored measure (steps to a target loss), the value a None (never
    reached) stands for."""
    if len(ours) != len(theirs) or len(ours) < 2:
        raise ValueError(f"need two or more paired seeds; got {len(ours)} and {len(theirs)}")
    censored_ours = sum(value is None for value in ours)
    censored_theirs = sum(value is None for value in theirs)
    if (censored_ours or censored_theirs) and run_length is None:
        raise ValueError("a None (never reached) needs run_length, the bound it stands for")
    ours = [run_length if value is None else value for value in ours]
    theirs = [run_length if value is None else value for value in theirs]
    sign = 1 if higher_is_better else -1
    differences = [sign * (a - b) for a, b in zip(ours, theirs)]
    mean, n = statistics.fmean(differences), len(differences)
    half_width = t_975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    if margin is None:
        margin = 0.05 * abs(statistics.fmean(theirs))
    return Paired(
        differences,
        mean,
        mean - half_width,
        mean + half_width,
        margin,
        censored_ours,
        censored_theirs,
    )


def curve_area(curve: list[tuple[int, float]]) -> float:
    """The mean validation loss over a run: the area under the (step, loss) curve by the
    trapezoid rule, divided by the steps it spans. Lower is faster convergence, and unlike the
    steps to a target it uses every point of the curve."""
    if len(curve) < 2:
        raise ValueError(f"a curve of {len(curve)} point(s): need two or more for an area")
    area = sum(
        (step_b - step_a) * (loss_a + loss_b) / 2
        for (step_a, loss_a), (step_b, loss_b) in zip(curve, curve[1:])
    )
    return area / (curve[-1][0] - curve[0][0])


def late_change(curve: list[tuple[int, float]], fraction: float = 0.2) -> float:
    """How much the validation loss still fell over the last `fraction` of the run, relative to
    where that stretch began: (loss at its start - final loss) / loss at its start. A run past its
    drop changes little (make paper's bar: under 2%); one stopped mid-drop does not."""
    last_step = curve[-1][0]
    start = min(
        (point for point in curve if point[0] >= last_step - fraction * (last_step - curve[0][0])),
        key=lambda point: point[0],
    )
    return (start[1] - curve[-1][1]) / start[1]

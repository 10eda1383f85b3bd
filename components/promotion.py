"""The promotion decision: pure code over the candidate's evidence, the champion's, and the
rules in params.promote. No I/O here; components/registry.py applies the result.

It judges both tasks of the pipeline, each by its own metric (`Evidence.metric`): floors
first, then non-regression against the champion on the same test items (joined by content
hash), one-sided at promote.alpha: "significantly worse" blocks promotion; with
require_improvement only "significantly better" promotes. A noisy metric then cannot make
the champion flap. The per-metric parts (floors, test) sit in one table, `GATES`.

- accuracy (classification): the exact McNemar test. Only the discordant items count, b (the
  candidate right, the champion wrong) and c (the reverse); under "no difference"
  c ~ Binomial(b + c, 1/2).
- miou (segmentation): the Wilcoxon signed-rank test on the per-image IoU differences
  (candidate - champion), zero differences dropped (zero_method="wilcox"). The method is
  fixed here rather than left to scipy's "auto", so that a decision does not change with the
  scipy version: the exact null distribution for up to 50 non-zero differences without ties
  in |difference|; with ties, an exhaustive (so deterministic) permutation test for up to 13;
  otherwise the normal approximation with scipy's tie-corrected variance and no continuity
  correction (at the hundreds of images a test split has, it is accurate to well below any
  alpha in use).

Floors are failed by NaN, and so is a NaN p-value; items whose quality is not finite on
either side are not paired.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import PermutationMethod, binomtest, wilcoxon

from components.config import PromoteConfig

Metric = Literal["accuracy", "miou"]


@dataclass(frozen=True)
class Evidence:
    """What a model showed on the test split: the headline metric, per-slice scores, and
    per-item quality keyed by the item's sha256 (1.0/0.0 right/wrong for accuracy, the
    image's IoU for miou)."""

    score: float  # the headline test metric named by `metric`
    slices: dict[str, tuple[float, int]]  # slice name -> (score on the slice, items)
    items: dict[str, float] = field(repr=False)
    metric: Metric = "accuracy"
    per_class: dict[str, float] = field(default_factory=dict)  # miou: each class's IoU


@dataclass(frozen=True)
class Comparison:
    test: str  # "mcnemar" | "wilcoxon"
    paired_items: int
    candidate_better: int  # items where the candidate scored higher (McNemar's b)
    champion_better: int  # c
    mean_difference: float  # mean over paired items of candidate - champion
    p_worse: float  # one-sided p-values
    p_better: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    comparison: Comparison | None = None
    # Not promoted, yet every floor held and it is not significantly worse than the
    # champion: it becomes the `challenger` the service's canary may send traffic to.
    challenger: bool = False


def _mcnemar(differences: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(p_worse, p_better): exact one-sided McNemar on the discordant items."""
    b, c = int(np.sum(differences > 0)), int(np.sum(differences < 0))
    if b + c == 0:
        return 1.0, 1.0
    return (
        float(binomtest(c, b + c, 0.5, alternative="greater").pvalue),
        float(binomtest(b, b + c, 0.5, alternative="greater").pvalue),
    )


def _wilcoxon(differences: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(p_worse, p_better): one-sided Wilcoxon signed-rank on the non-zero differences
    (the method choice is in the module docstring)."""
    nonzero = differences[differences != 0]
    n = len(nonzero)
    if n == 0:
        return 1.0, 1.0
    ties = len(np.unique(np.abs(nonzero))) < n
    method: str | PermutationMethod = "asymptotic"
    if n <= 50 and not ties:
        method = "exact"
    elif n <= 13:  # 2**13 sign flips < PermutationMethod's 9999 resamples: exhaustive
        method = PermutationMethod()
    p = {
        alternative: float(
            wilcoxon(
                nonzero,
                zero_method="wilcox",
                correction=False,
                alternative=alternative,
                method=method,
            ).pvalue
        )
        for alternative in ("less", "greater")
    }
    return p["less"], p["greater"]


@dataclass(frozen=True)
class _Gate:
    """How one metric is judged: its paired test and its floors in PromoteConfig."""

    test: str
    label: str  # the metric, as reasons name it
    digits: str  # format spec of its scores in reasons
    # the paired differences (candidate - champion) -> (p_worse, p_better)
    p_values: Callable[[npt.NDArray[np.float64]], tuple[float, float]]
    floor: Callable[[PromoteConfig], float]
    slice_floor: Callable[[PromoteConfig], float]
    class_floor: Callable[[PromoteConfig], float] | None  # per_class IoU, if judged


GATES: dict[Metric, _Gate] = {
    "accuracy": _Gate("mcnemar", "accuracy", ".4f", _mcnemar,
                      lambda rules: rules.min_accuracy,
                      lambda rules: rules.min_slice_accuracy, None),
    "miou": _Gate("wilcoxon", "mIoU", ".4g", _wilcoxon,
                  lambda rules: rules.min_miou,
                  lambda rules: rules.min_slice_miou,
                  lambda rules: rules.min_class_iou),
}  # fmt: skip
_TEST_NAMES = {"mcnemar": "McNemar", "wilcoxon": "Wilcoxon signed-rank"}


def compare(candidate: Evidence, champion: Evidence) -> Comparison:
    """The paired test of `candidate.metric` on the items both were scored on."""
    if candidate.metric != champion.metric:
        raise ValueError(
            f"cannot compare a {candidate.metric} candidate with a {champion.metric} "
            "champion"
        )
    gate = GATES[candidate.metric]
    shared = sorted(
        key
        for key in set(candidate.items) & set(champion.items)
        if math.isfinite(candidate.items[key]) and math.isfinite(champion.items[key])
    )
    differences = np.array(
        [candidate.items[key] - champion.items[key] for key in shared], dtype=float
    )
    p_worse, p_better = gate.p_values(differences)
    return Comparison(
        test=gate.test,
        paired_items=len(shared),
        candidate_better=int(np.sum(differences > 0)),
        champion_better=int(np.sum(differences < 0)),
        mean_difference=float(differences.mean()) if len(shared) else 0.0,
        p_worse=p_worse,
        p_better=p_better,
    )


def decide(
    candidate: Evidence, champion: Evidence | None, rules: PromoteConfig
) -> Decision:
    """Promote only when no floor is broken and the candidate is not significantly worse
    than the champion (with require_improvement: only when it is significantly better).
    The first model is judged on the floors alone; a champion of another metric (another
    task) cannot be compared, so the candidate is rejected. `reasons` is never empty."""
    gate = GATES[candidate.metric]
    failures = _floor_failures(candidate, gate, rules)
    passed = [
        f"{gate.label} {candidate.score:{gate.digits}} >= floor {gate.floor(rules)}",
        f"every slice with >= {rules.min_slice_items} items has {gate.label} >= "
        f"{gate.slice_floor(rules)}",
    ]
    if gate.class_floor is not None:
        passed.append(f"every class has IoU >= {gate.class_floor(rules)}")
    if champion is None:
        if failures:
            return Decision(False, failures)
        return Decision(True, [*passed, "no champion yet: judged on the floors alone"])
    if champion.metric != candidate.metric:
        mismatch = (
            f"cannot compare a {candidate.metric} candidate with the {champion.metric} "
            "champion (a model of another task): not promoted"
        )
        return Decision(False, [*failures, mismatch])
    comparison = compare(candidate, champion)
    regression = _regression_failures(comparison, rules)
    if failures or regression:
        challenger = not failures and comparison.p_worse >= rules.alpha
        return Decision(False, failures + regression, comparison, challenger)
    verdict = (
        f"significantly better than the champion ({_stated(comparison)}, "
        f"p={comparison.p_better:.4g} < {rules.alpha})"
        if rules.require_improvement
        else f"not significantly worse than the champion ({_stated(comparison)}, "
        f"p={comparison.p_worse:.4g} >= {rules.alpha})"
    )
    return Decision(True, [*passed, verdict], comparison)


def _floor_failures(
    candidate: Evidence, gate: _Gate, rules: PromoteConfig
) -> list[str]:
    failures = []
    floor, digits = gate.floor(rules), gate.digits
    if not candidate.score >= floor:  # NaN fails too
        failures.append(
            f"{gate.label} {candidate.score:{digits}} below the floor {floor}"
        )
    slice_floor = gate.slice_floor(rules)
    for name, (score, items) in sorted(candidate.slices.items()):
        if items >= rules.min_slice_items and not score >= slice_floor:
            failures.append(
                f"slice {name} ({items} items): {gate.label} {score:{digits}} below the "
                f"floor {slice_floor}"
            )
    if gate.class_floor is not None:
        class_floor = gate.class_floor(rules)
        for name, iou in sorted(candidate.per_class.items()):
            if not iou >= class_floor:
                failures.append(
                    f"class {name}: IoU {iou:{digits}} below the floor {class_floor}"
                )
    return failures


def _stated(comparison: Comparison) -> str:
    """The test, its counts and the mean difference, as reasons state them."""
    name = _TEST_NAMES.get(comparison.test, comparison.test)
    if comparison.test == "mcnemar":
        counts = f"b={comparison.candidate_better}, c={comparison.champion_better}"
    else:
        counts = (
            f"candidate higher on {comparison.candidate_better}, champion higher on "
            f"{comparison.champion_better}"
        )
    return f"{name}: {counts}, mean difference {comparison.mean_difference:+.4f}"


def _regression_failures(comparison: Comparison, rules: PromoteConfig) -> list[str]:
    if comparison.paired_items < rules.min_paired_items:
        return [
            f"only {comparison.paired_items} test items shared with the champion "
            f"(< {rules.min_paired_items}): cannot compare them"
        ]
    if not comparison.p_worse >= rules.alpha:  # NaN fails too
        return [
            f"significantly worse than the champion on {comparison.paired_items} shared "
            f"items ({_stated(comparison)}, p={comparison.p_worse:.4g} < {rules.alpha})"
        ]
    if rules.require_improvement and not comparison.p_better < rules.alpha:
        return [
            f"require_improvement: not significantly better than the champion "
            f"({_stated(comparison)}, p={comparison.p_better:.4g} >= {rules.alpha})"
        ]
    return []

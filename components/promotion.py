"""The promotion decision: pure code over the candidate's evidence, the champion's, and the
rules in params.promote. No I/O here; components/registry.py applies the result.

Non-regression is judged on the same test items (joined by content hash) with the exact
McNemar test: only the discordant items count, b (the candidate right, the champion wrong)
and c (the reverse); under "no difference" c ~ Binomial(b + c, 1/2). One-sided tests, at
promote.alpha: "significantly worse" when c is improbably large, "significantly better" when b
is. A noisy metric then cannot make the champion flap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scipy.stats import binomtest

from components.config import PromoteConfig


@dataclass(frozen=True)
class Evidence:
    """What a model showed on the test split: overall and per-slice accuracy, and whether
    it got each item right (keyed by the item's sha256)."""

    accuracy: float
    slices: dict[str, tuple[float, int]]  # name -> (accuracy, items)
    correct: dict[str, bool] = field(repr=False)


@dataclass(frozen=True)
class Comparison:
    paired_items: int
    candidate_only: int  # b: the candidate right, the champion wrong
    champion_only: int  # c
    p_worse: float  # one-sided exact McNemar p-values
    p_better: float


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    comparison: Comparison | None = None
    # Not promoted, yet every floor held and it is not significantly worse than the
    # champion: it becomes the `challenger` the service's canary may send traffic to.
    challenger: bool = False


def compare(candidate: Evidence, champion: Evidence) -> Comparison:
    shared = sorted(set(candidate.correct) & set(champion.correct))
    b = sum(candidate.correct[k] and not champion.correct[k] for k in shared)
    c = sum(champion.correct[k] and not candidate.correct[k] for k in shared)
    if b + c == 0:
        return Comparison(len(shared), 0, 0, 1.0, 1.0)
    return Comparison(
        paired_items=len(shared),
        candidate_only=b,
        champion_only=c,
        p_worse=float(binomtest(c, b + c, 0.5, alternative="greater").pvalue),
        p_better=float(binomtest(b, b + c, 0.5, alternative="greater").pvalue),
    )


def decide(
    candidate: Evidence, champion: Evidence | None, rules: PromoteConfig
) -> Decision:
    """Promote only when no floor is broken and the candidate is not significantly worse
    than the champion (with require_improvement: only when it is significantly better).
    The first model is judged on the floors alone. `reasons` is never empty."""
    failures = _floor_failures(candidate, rules)
    passed = [
        f"accuracy {candidate.accuracy:.4f} >= floor {rules.min_accuracy}",
        f"every slice with >= {rules.min_slice_items} items has accuracy >= "
        f"{rules.min_slice_accuracy}",
    ]
    if champion is None:
        if failures:
            return Decision(False, failures)
        return Decision(True, [*passed, "no champion yet: judged on the floors alone"])
    comparison = compare(candidate, champion)
    regression = _regression_failures(comparison, rules)
    if failures or regression:
        challenger = not failures and not comparison.p_worse < rules.alpha
        return Decision(False, failures + regression, comparison, challenger)
    verdict = (
        f"significantly better than the champion (b={comparison.candidate_only}, "
        f"c={comparison.champion_only}, p={comparison.p_better:.4g} < {rules.alpha})"
        if rules.require_improvement
        else f"not significantly worse than the champion (b={comparison.candidate_only}, "
        f"c={comparison.champion_only}, p={comparison.p_worse:.4g} >= {rules.alpha})"
    )
    return Decision(True, [*passed, verdict], comparison)


def _floor_failures(candidate: Evidence, rules: PromoteConfig) -> list[str]:
    failures = []
    if not candidate.accuracy >= rules.min_accuracy:  # NaN fails too
        failures.append(
            f"accuracy {candidate.accuracy:.4f} below the floor {rules.min_accuracy}"
        )
    for name, (accuracy, items) in sorted(candidate.slices.items()):
        if items >= rules.min_slice_items and not accuracy >= rules.min_slice_accuracy:
            failures.append(
                f"slice {name} ({items} items): accuracy {accuracy:.4f} below the "
                f"floor {rules.min_slice_accuracy}"
            )
    return failures


def _regression_failures(comparison: Comparison, rules: PromoteConfig) -> list[str]:
    if comparison.paired_items < rules.min_paired_items:
        return [
            f"only {comparison.paired_items} test items shared with the champion "
            f"(< {rules.min_paired_items}): cannot compare them"
        ]
    counts = f"b={comparison.candidate_only}, c={comparison.champion_only}"
    if comparison.p_worse < rules.alpha:
        return [
            f"significantly worse than the champion on {comparison.paired_items} shared "
            f"items ({counts}, p={comparison.p_worse:.4g} < {rules.alpha})"
        ]
    if rules.require_improvement and not comparison.p_better < rules.alpha:
        return [
            f"require_improvement: not significantly better than the champion "
            f"({counts}, p={comparison.p_better:.4g} >= {rules.alpha})"
        ]
    return []

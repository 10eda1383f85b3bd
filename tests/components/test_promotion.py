"""The promotion decision under property tests: it never promotes below a floor or a
significantly worse model, and always says why; for classification (exact McNemar on
per-item correctness) and for segmentation (Wilcoxon signed-rank on per-image IoU)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from components.config import PromoteConfig
from components.promotion import Evidence, compare, decide

RULES = PromoteConfig(min_accuracy=0.8, min_slice_accuracy=0.7, min_slice_items=5,
                      min_miou=0.8, min_class_iou=0.5, min_slice_miou=0.7,
                      alpha=0.05, min_paired_items=10)  # fmt: skip


def _evidence(correct: list[bool], slice_size: int = 10) -> Evidence:
    """Items item-0.. with the given correctness; slices of `slice_size` consecutive items."""
    keys = [f"item-{i}" for i in range(len(correct))]
    slices = {}
    for start in range(0, len(correct), slice_size):
        part = correct[start : start + slice_size]
        slices[f"block:{start}"] = (sum(part) / len(part), len(part))
    return Evidence(
        sum(correct) / len(correct),
        slices,
        {key: float(right) for key, right in zip(keys, correct, strict=True)},
    )


def _spread(total: int, errors: int) -> list[bool]:
    """`total` items with `errors` wrong ones spread evenly (so no slice is all wrong)."""
    wrong = {round(i * total / errors) for i in range(errors)} if errors else set()
    return [i not in wrong for i in range(total)]


pairs = st.integers(min_value=10, max_value=300).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@settings(max_examples=300, deadline=None)
@given(pairs, st.booleans(), st.booleans())
def test_never_promotes_below_a_floor_or_a_significantly_worse_model(
    pair: tuple[list[bool], list[bool]], has_champion: bool, require_improvement: bool
) -> None:
    candidate_correct, champion_correct = pair
    candidate = _evidence(candidate_correct)
    champion = _evidence(champion_correct) if has_champion else None
    rules = RULES.model_copy(update={"require_improvement": require_improvement})
    decision = decide(candidate, champion, rules)
    assert decision.reasons and all(decision.reasons)  # never empty
    assert not (decision.promote and decision.challenger)
    if decision.challenger:  # the canary may serve it: floors held, not worse
        assert champion is not None and candidate.score >= rules.min_accuracy
        assert compare(candidate, champion).p_worse >= rules.alpha
    if not decision.promote:
        return
    assert candidate.score >= rules.min_accuracy
    for accuracy, items in candidate.slices.values():
        assert items < rules.min_slice_items or accuracy >= rules.min_slice_accuracy
    if champion is not None:
        comparison = compare(candidate, champion)
        assert comparison.p_worse >= rules.alpha
        assert comparison.paired_items >= rules.min_paired_items
        if require_improvement:
            assert comparison.p_better < rules.alpha


def test_the_first_model_is_judged_on_the_floors_alone() -> None:
    decision = decide(_evidence(_spread(100, 10)), None, RULES)
    assert decision.promote
    assert "no champion yet" in decision.reasons[-1]
    low = decide(_evidence(_spread(100, 30)), None, RULES)
    assert not low.promote and "below the floor 0.8" in low.reasons[0]


def test_a_slice_below_its_floor_blocks_promotion() -> None:
    correct = [True] * 90 + [False] * 6 + [True] * 4  # the last slice: 4 of 10 right
    decision = decide(_evidence(correct), None, RULES)
    assert not decision.promote
    assert decision.reasons == [
        "slice block:90 (10 items): accuracy 0.4000 below the floor 0.7"
    ]


def test_a_significantly_worse_model_is_rejected_and_noise_is_not() -> None:
    champion = _evidence([True] * 200)
    worse = _evidence(_spread(200, 20))  # 20 discordant items, all against it
    decision = decide(worse, champion, RULES)
    assert not decision.promote and "significantly worse" in decision.reasons[0]
    assert not decision.challenger
    # one item worse out of 200 is noise: promoted (not significantly worse)
    noisy = decide(_evidence(_spread(200, 1)), champion, RULES)
    assert noisy.promote and "not significantly worse" in noisy.reasons[-1]


def test_require_improvement_needs_a_significant_gain() -> None:
    rules = RULES.model_copy(update={"require_improvement": True})
    champion = _evidence(_spread(200, 30))
    same = decide(_evidence(_spread(200, 30)), champion, rules)
    assert not same.promote and "not significantly better" in same.reasons[0]
    assert same.challenger  # no worse: the canary may try it on live traffic
    better = decide(_evidence([True] * 200), champion, rules)
    assert better.promote and "significantly better" in better.reasons[-1]


def test_too_few_shared_items_cannot_be_compared() -> None:
    champion = Evidence(1.0, {}, {f"other-{i}": 1.0 for i in range(100)})
    decision = decide(_evidence([True] * 100), champion, RULES)
    assert not decision.promote and "0 test items shared" in decision.reasons[0]


def test_mcnemar_reasons_name_the_test_counts_and_difference() -> None:
    champion = _evidence([True] * 200)
    decision = decide(_evidence(_spread(200, 20)), champion, RULES)
    assert decision.comparison is not None
    assert decision.comparison.test == "mcnemar"
    assert (decision.comparison.candidate_better,
            decision.comparison.champion_better) == (0, 20)  # fmt: skip
    assert decision.comparison.mean_difference == pytest.approx(-0.1)
    assert "McNemar: b=0, c=20, mean difference -0.1000" in decision.reasons[0]


# Segmentation: per-image IoU, judged by the Wilcoxon signed-rank test.


def _seg_evidence(
    ious: list[float], per_class: dict[str, float] | None = None, slice_size: int = 10
) -> Evidence:
    """Images image-0.. with the given IoU; slices of `slice_size` consecutive images;
    mIoU the mean image IoU (close enough for the gate)."""
    keys = [f"image-{i}" for i in range(len(ious))]
    slices = {}
    for start in range(0, len(ious), slice_size):
        part = ious[start : start + slice_size]
        slices[f"block:{start}"] = (sum(part) / len(part), len(part))
    miou = sum(ious) / len(ious)
    return Evidence(
        miou,
        slices,
        dict(zip(keys, ious, strict=True)),
        metric="miou",
        per_class=per_class if per_class is not None else {"background": miou},
    )


def _ious(n: int, lowest: int) -> st.SearchStrategy[list[float]]:
    """`n` IoUs on a coarse grid (so that ties and zero differences are common), none
    below lowest/40."""
    grid = st.integers(min_value=lowest, max_value=40).map(lambda k: k / 40)
    return st.lists(grid, min_size=n, max_size=n)


class_ious = st.dictionaries(
    st.sampled_from(["background", "circle", "square", "triangle"]),
    st.floats(min_value=0.4, max_value=1),
    min_size=1,
)


@st.composite
def iou_pairs(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """(candidate, champion) per-image IoU: the champion's, then the candidate's as a
    copy, a (possibly drifting) shift of it or independent draws."""
    n = draw(st.integers(min_value=10, max_value=200))
    lowest = draw(st.integers(min_value=0, max_value=32))  # most clear the floors
    champion = draw(_ious(n, lowest))
    kind = draw(st.sampled_from(["same", "shifted", "independent"]))
    if kind == "same":
        return list(champion), champion
    if kind == "shifted":
        drift = draw(st.integers(-3, 3))  # a systematic gain or loss, or none
        step = st.integers(drift - 4, drift + 4)
        shifts = draw(st.lists(step, min_size=n, max_size=n))
        return [
            min(1.0, max(0.0, v + s / 40))
            for v, s in zip(champion, shifts, strict=True)
        ], champion
    return draw(_ious(n, lowest)), champion


@settings(max_examples=300, deadline=None)
@given(iou_pairs(), class_ious, st.booleans(), st.booleans())
def test_wilcoxon_never_promotes_below_a_floor_or_a_significantly_worse_model(
    pair: tuple[list[float], list[float]],
    per_class: dict[str, float],
    has_champion: bool,
    require_improvement: bool,
) -> None:
    candidate_ious, champion_ious = pair
    candidate = _seg_evidence(candidate_ious, per_class)
    champion = _seg_evidence(champion_ious) if has_champion else None
    rules = RULES.model_copy(update={"require_improvement": require_improvement})
    decision = decide(candidate, champion, rules)
    worse = champion is not None and compare(candidate, champion).p_worse < rules.alpha
    event(f"promote={decision.promote}, challenger={decision.challenger}, "
          f"significantly worse={worse}")  # fmt: skip
    assert decision.reasons and all(decision.reasons)  # never empty
    assert not (decision.promote and decision.challenger)
    floors_hold = (
        candidate.score >= rules.min_miou
        and all(v >= rules.min_class_iou for v in candidate.per_class.values())
        and all(items < rules.min_slice_items or score >= rules.min_slice_miou
                for score, items in candidate.slices.values())
    )  # fmt: skip
    for name, value in candidate.per_class.items():
        if value < rules.min_class_iou:
            assert any(reason.startswith(f"class {name}: IoU ")
                       for reason in decision.reasons)  # fmt: skip
    if decision.challenger:  # the canary may serve it: floors held, not worse
        assert champion is not None and floors_hold
        assert compare(candidate, champion).p_worse >= rules.alpha
    if champion is not None:
        comparison = compare(candidate, champion)
        assert comparison.test == "wilcoxon"
        assert 0 <= comparison.p_worse <= 1 and 0 <= comparison.p_better <= 1
        if comparison.p_worse < rules.alpha:
            assert not decision.promote and not decision.challenger
            assert any("significantly worse" in r and "Wilcoxon" in r
                       for r in decision.reasons)  # fmt: skip
    if not decision.promote:
        return
    assert floors_hold
    if champion is not None:
        comparison = compare(candidate, champion)
        assert comparison.p_worse >= rules.alpha
        assert comparison.paired_items >= rules.min_paired_items
        if require_improvement:
            assert comparison.p_better < rules.alpha


@settings(max_examples=100, deadline=None)
@given(
    st.tuples(st.integers(10, 200), st.integers(0, 32)).flatmap(lambda a: _ious(*a)),
    class_ious,
)
def test_a_candidate_equal_to_the_champion_is_never_rejected_for_regression(
    ious: list[float], per_class: dict[str, float]
) -> None:
    champion = _seg_evidence(ious)
    candidate = _seg_evidence(list(ious), per_class)
    decision = decide(candidate, champion, RULES)
    comparison = compare(candidate, champion)
    assert (comparison.p_worse, comparison.p_better) == (1.0, 1.0)
    assert (comparison.candidate_better, comparison.champion_better) == (0, 0)
    assert comparison.mean_difference == 0.0
    if not decision.promote:  # only a floor can stop it, never the comparison
        assert all(reason.startswith(("mIoU ", "slice ", "class "))
                   for reason in decision.reasons)  # fmt: skip
        assert decision.challenger is False  # a broken floor: not even the canary
    else:
        assert "not significantly worse" in decision.reasons[-1]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=70, max_value=100),  # images where the candidate is lower
    st.floats(min_value=0.02, max_value=0.1),  # by this margin
    st.randoms(use_true_random=False),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=100, max_size=100),
    st.lists(st.floats(min_value=0.9, max_value=0.95), min_size=100, max_size=100),
)
def test_a_consistently_worse_segmenter_is_rejected_by_wilcoxon(
    lower: int, margin: float, rng: random.Random, gains: list[float], base: list[float]
) -> None:
    """Lower by `margin` on a clear majority of 100 images, higher by at most as much on
    the rest: rejected as significantly worse, the reason naming the test."""
    order = list(range(100))
    rng.shuffle(order)
    worse_on = set(order[:lower])
    candidate = [
        champion - margin if i in worse_on else champion + gain * margin
        for i, (champion, gain) in enumerate(zip(base, gains, strict=True))
    ]
    decision = decide(_seg_evidence(candidate), _seg_evidence(base), RULES)
    assert not decision.promote and not decision.challenger
    assert decision.comparison is not None and decision.comparison.test == "wilcoxon"
    assert decision.comparison.p_worse < RULES.alpha
    assert decision.comparison.mean_difference < 0
    regression = [r for r in decision.reasons if "significantly worse" in r]
    assert regression and "Wilcoxon signed-rank" in regression[0]
    assert f"champion higher on {lower}" in regression[0]


def test_segmentation_floors_name_what_broke() -> None:
    ious = [0.9] * 40
    ok = decide(_seg_evidence(ious, {"background": 0.95, "square": 0.6}), None, RULES)
    assert ok.promote and "no champion yet" in ok.reasons[-1]
    low = decide(
        _seg_evidence([0.95] * 30 + [0.5] * 10, {"background": 0.95, "square": 0.41}),
        None,
        RULES,
    )
    assert not low.promote
    assert low.reasons == [
        "slice block:30 (10 items): mIoU 0.5 below the floor 0.7",
        "class square: IoU 0.41 below the floor 0.5",
    ]
    nan = decide(_seg_evidence(ious, {"square": math.nan}), None, RULES)
    assert not nan.promote and nan.reasons == [
        "class square: IoU nan below the floor 0.5"
    ]
    below = decide(_seg_evidence([0.7] * 40), None, RULES)
    assert not below.promote and below.reasons[0] == "mIoU 0.7 below the floor 0.8"


def test_require_improvement_needs_a_significant_wilcoxon_gain() -> None:
    rules = RULES.model_copy(update={"require_improvement": True})
    champion = _seg_evidence([0.85] * 100)
    same = decide(_seg_evidence([0.85] * 100), champion, rules)
    assert not same.promote and same.challenger
    assert "not significantly better" in same.reasons[0]
    better = decide(_seg_evidence([0.9] * 60 + [0.85] * 40), champion, rules)
    assert better.promote and "significantly better" in better.reasons[-1]
    assert "Wilcoxon signed-rank: candidate higher on 60" in better.reasons[-1]


def test_mixing_metrics_is_rejected() -> None:
    segmenter = _seg_evidence([0.9] * 100)
    classifier = _evidence([True] * 100)
    for candidate, champion in ((segmenter, classifier), (classifier, segmenter)):
        decision = decide(candidate, champion, RULES)
        assert not decision.promote and not decision.challenger
        assert decision.comparison is None
        assert "cannot compare" in decision.reasons[-1]
        assert f"{candidate.metric} candidate" in decision.reasons[-1]
        with pytest.raises(ValueError, match="cannot compare"):
            compare(candidate, champion)

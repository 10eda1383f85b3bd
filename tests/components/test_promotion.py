"""The promotion decision under property tests: it never promotes below a floor or a
significantly worse model, and always says why."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from components.config import PromoteConfig
from components.promotion import Evidence, compare, decide

RULES = PromoteConfig(min_accuracy=0.8, min_slice_accuracy=0.7, min_slice_items=5,
                      alpha=0.05, min_paired_items=10)  # fmt: skip


def _evidence(correct: list[bool], slice_size: int = 10) -> Evidence:
    """Items item-0.. with the given correctness; slices of `slice_size` consecutive items."""
    keys = [f"item-{i}" for i in range(len(correct))]
    slices = {}
    for start in range(0, len(correct), slice_size):
        part = correct[start : start + slice_size]
        slices[f"block:{start}"] = (sum(part) / len(part), len(part))
    return Evidence(
        sum(correct) / len(correct), slices, dict(zip(keys, correct, strict=True))
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
        assert champion is not None and candidate.accuracy >= rules.min_accuracy
        assert compare(candidate, champion).p_worse >= rules.alpha
    if not decision.promote:
        return
    assert candidate.accuracy >= rules.min_accuracy
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
    champion = Evidence(1.0, {}, {f"other-{i}": True for i in range(100)})
    decision = decide(_evidence([True] * 100), champion, RULES)
    assert not decision.promote and "0 test items shared" in decision.reasons[0]

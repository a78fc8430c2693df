"""The sweep's verdict rule, simulated: false "reproduced" rate at or below 5% under no effect, and its power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neftune.sweep.verdicts import (
    NOT_ESTABLISHED,
    OPPOSITE,
    REPRODUCED,
    SIGNATURES,
    PairedData,
    Signature,
    bootstrap_interval,
    compare_family,
    holm,
    paired_t,
    t_cdf,
    t_quantile,
    verdict,
)

HIGHER = Signature("higher", "m", +1)
NON_INFERIOR = Signature("equal or lower", "loss", -1, non_inferiority=True)
SEEDS = 5
STUDIES = 4000
# 97.5% quantile of t with 4 degrees of freedom (tables): the two-sided 95% interval of 5 paired seeds.
T975_DF4 = 2.7764451


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062047), (2, 4.3026527), (4, T975_DF4), (9, 2.2621572), (30, 2.0422725), (1000, 1.9623391)],
)
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=2e-6)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-8)


def test_paired_t_by_hand() -> None:
    test = paired_t([1.0, 2.0, 3.0, 4.0, 5.0])
    half = T975_DF4 * math.sqrt(2.5) / math.sqrt(5)
    assert test.mean_diff == 3.0 and test.n == 5
    assert test.ci_low == pytest.approx(3.0 - half, abs=1e-6) and test.ci_high == pytest.approx(3.0 + half, abs=1e-6)
    assert test.p_value == pytest.approx(0.01324, abs=1e-4)  # t = 4.243, df 4
    one = paired_t([0.7])
    assert one.n == 1 and math.isnan(one.ci_low) and one.p_value == 1.0


def test_holm_by_hand() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_verdict_directions() -> None:
    assert verdict(+0.3, 0.01, +1) == REPRODUCED
    assert verdict(-0.3, 0.01, +1) == OPPOSITE
    assert verdict(+0.3, 0.2, +1) == NOT_ESTABLISHED
    assert verdict(+0.3, 0.01, +1, bootstrap=(-0.1, 0.5)) == NOT_ESTABLISHED  # examples disagree
    assert verdict(0.002, 0.01, -1, reference=0.01) == REPRODUCED  # below the margin


def _simulate(effect: float, signature: Signature, margin: float = 0.01, sd: float = 1.0, studies: int = STUDIES):
    rng = np.random.default_rng(1234)
    diffs = rng.normal(effect, sd, size=(studies, SEEDS))
    return [compare_family([PairedData(signature, list(row))], margin=margin)[0]["verdict"] for row in diffs], diffs


def _reference_rule(diffs: np.ndarray, reference: float, direction: int) -> np.ndarray:
    """The same test written independently, vectorised: t beyond the tabulated quantile on the paper's side."""
    t = (diffs.mean(1) - reference) / (diffs.std(1, ddof=1) / math.sqrt(diffs.shape[1]))
    return direction * t > T975_DF4


def test_no_effect_is_reproduced_at_most_5_percent() -> None:
    verdicts, diffs = _simulate(0.0, HIGHER)
    false_reproduced = verdicts.count(REPRODUCED) / STUDIES
    # The rule is one side of a two-sided 95% interval: 2.5% expected; SE over 4000 studies 0.25%. Bounds at 4 SE:
    # a z instead of a t quantile (~5%), or the old "difference > std_0 + std_a" rule, would fall outside.
    assert 0.015 <= false_reproduced <= 0.035, false_reproduced
    assert 0.015 <= verdicts.count(OPPOSITE) / STUDIES <= 0.035
    assert false_reproduced == pytest.approx(_reference_rule(diffs, 0.0, +1).mean(), abs=1e-9)


def test_power_for_a_known_effect() -> None:
    # Effect 2 seed-sds with 5 seeds: noncentrality 2 * sqrt(5) = 4.47; power ~0.87 by the noncentral t.
    verdicts, diffs = _simulate(2.0, HIGHER)
    power = verdicts.count(REPRODUCED) / STUDIES
    assert 0.82 <= power <= 0.92, power
    assert power == pytest.approx(_reference_rule(diffs, 0.0, +1).mean(), abs=1e-9)
    assert verdicts.count(OPPOSITE) == 0
    # One seed-sd, the effect the old rule missed 87% of the time with 5 seeds: power ~0.40 here.
    weak, _ = _simulate(1.0, HIGHER)
    assert 0.33 <= weak.count(REPRODUCED) / STUDIES <= 0.47


def test_non_inferiority_at_the_margin_is_reproduced_at_most_5_percent() -> None:
    # True difference exactly at the margin: the worst case of the null "held-out loss is worse by the margin".
    at_margin, diffs = _simulate(0.01, NON_INFERIOR, margin=0.01, sd=0.01)
    rate = at_margin.count(REPRODUCED) / STUDIES
    assert 0.015 <= rate <= 0.035, rate
    assert rate == pytest.approx(_reference_rule(diffs, 0.01, -1).mean(), abs=1e-9)
    # NEFTune does nothing (difference 0), seed sd 0.005 nats: the margin is 2 sd, power ~0.87.
    nothing, _ = _simulate(0.0, NON_INFERIOR, margin=0.01, sd=0.005)
    assert 0.82 <= nothing.count(REPRODUCED) / STUDIES <= 0.92
    # Clearly worse than the margin: reported as the opposite, never reproduced.
    worse, _ = _simulate(0.05, NON_INFERIOR, margin=0.01, sd=0.01, studies=500)
    assert worse.count(REPRODUCED) == 0 and worse.count(OPPOSITE) / 500 > 0.95


def test_holm_keeps_the_family_below_5_percent() -> None:
    rng = np.random.default_rng(7)
    studies = 2000
    signatures = [Signature(f"s{i}", f"m{i}", +1) for i in range(5)]
    any_corrected = any_raw = 0
    for _ in range(studies):
        diffs = rng.normal(0.0, 1.0, size=(5, SEEDS))
        rows = compare_family([PairedData(s, list(d)) for s, d in zip(signatures, diffs, strict=True)])
        any_corrected += any(row["verdict"] == REPRODUCED for row in rows)
        any_raw += bool(_reference_rule(diffs, 0.0, +1).any())
    # Uncorrected, five one-sided 2.5% chances: 1 - 0.975^5 = 11.9%. Holm: at most 2.5%, here ~1.2%.
    assert any_raw / studies > 0.09
    assert any_corrected / studies <= 0.035, any_corrected / studies


def test_bootstrap_over_examples_with_seeds() -> None:
    # 5 seeds x 64 examples; a per-seed training effect plus per-example noise.
    rng = np.random.default_rng(3)
    studies, examples = 400, 64
    false = power = 0
    for _ in range(studies):
        seed_part = rng.normal(0.0, 1.0, size=(SEEDS, 1))
        null = seed_part + rng.normal(0.0, 2.0, size=(SEEDS, examples))
        shifted = null + 2.0
        for data, counter in ((null, "false"), (shifted, "power")):
            row = compare_family([PairedData(HIGHER, list(data.mean(1)), per_example=data)], resamples=300)[0]
            if row["verdict"] == REPRODUCED:
                false += counter == "false"
                power += counter == "power"
    assert false / studies <= 0.05, false / studies
    assert power / studies >= 0.75, power / studies


def test_bootstrap_is_seeded_and_weighted() -> None:
    diffs = np.arange(12, dtype=float).reshape(2, 6)
    assert bootstrap_interval(diffs, seed=5) == bootstrap_interval(diffs, seed=5)
    assert bootstrap_interval(diffs, weights=np.full(6, 2.0)) == pytest.approx(bootstrap_interval(diffs))
    constant = np.array([[1.0] * 6, [3.0] * 6])  # every resample averages the two seeds to 2
    assert bootstrap_interval(constant, weights=np.arange(1.0, 7.0)) == pytest.approx((2.0, 2.0))
    low, high = bootstrap_interval(diffs)
    assert 2.5 < low < 5.5 < high < 8.5  # the mean 5.5, examples spread 0..5 around it
    with pytest.raises(ValueError, match="seeds, examples"):
        bootstrap_interval(np.zeros(3))


def test_the_paper_signatures() -> None:
    assert [s.metric for s in SIGNATURES] == [
        "clean_train_loss",
        "heldout_loss",
        "train_rouge_l",
        "train_bleu",
        "heldout_length_chars",
    ]
    assert [s.non_inferiority for s in SIGNATURES] == [False, True, False, False, False]

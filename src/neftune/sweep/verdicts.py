"""Verdicts that can fail: paired t intervals over seeds, a bootstrap over examples, Holm across signatures.

Every comparison is "a noised configuration minus the alpha-0 baseline", paired by seed (a seed fixes the data
order and the adapter initialisation, so the two cells of a pair differ only by the noise). A signature is

- *directional* (the paper says higher or lower): reproduced when the difference is significantly on the paper's
  side of 0, opposite when it is significantly on the other side;
- *non-inferiority* (held-out loss "equal or lower"): reproduced when the whole interval lies below a margin fixed
  before the run, opposite when it lies wholly above it.

"Significantly" is a two-sided t test over seeds at level 0.05 after Holm's correction across the signatures of
one configuration, and, where the per-example values were saved, a bootstrap interval over examples that also
excludes the reference value on the same side (both must agree: a level-0.05 intersection). Everything else is
"not established". Pure Python + numpy: the t distribution is computed here from the incomplete beta function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REPRODUCED = "reproduced"
OPPOSITE = "opposite"
NOT_ESTABLISHED = "not established"
LEVEL = 0.05
DEFAULT_MARGIN = 0.01  # nats: held-out loss may rise by less than this and still count as "equal or lower"


@dataclass(frozen=True)
class Signature:
    """One of the paper's judge-free signatures: a metric and the direction NEFTune moves it.

    `direction` is +1 (higher with NEFTune) or -1 (lower); `non_inferiority` makes it "at most `margin` higher".
    """

    name: str
    metric: str
    direction: int
    non_inferiority: bool = False


SIGNATURES: tuple[Signature, ...] = (
    Signature("1. clean training loss higher", "clean_train_loss", +1),
    Signature("2. held-out loss equal or lower (non-inferiority)", "heldout_loss", -1, non_inferiority=True),
    Signature("3. less memorisation (ROUGE-L)", "train_rouge_l", -1),
    Signature("3. less memorisation (BLEU)", "train_bleu", -1),
    Signature("4. longer outputs (chars)", "heldout_length_chars", +1),
)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`, to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class PairedTest:
    """Mean of paired differences, its two-sided 95% t interval and the t test against `reference`."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: mean difference == reference


def paired_t(differences: Sequence[float], reference: float = 0.0, level: float = LEVEL) -> PairedTest:
    """The t interval over paired differences (one per seed) and the two-sided p value against `reference`.

    Fewer than two finite differences give NaN bounds and p = 1 (nothing can be established).
    """
    values = [float(v) for v in differences if math.isfinite(float(v))]
    n = len(values)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, 1.0)
    mean = math.fsum(values) / n
    if n < 2:
        return PairedTest(n, mean, math.nan, math.nan, 1.0)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(1.0 - level / 2.0, n - 1) * se
    if se == 0.0:  # every seed gave the same difference
        p = 1.0 if mean == reference else 0.0
    else:
        p = 2.0 * (1.0 - t_cdf(abs(mean - reference) / se, n - 1))
    return PairedTest(n, mean, mean - half, mean + half, min(1.0, p))


def bootstrap_interval(
    differences: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of the mean difference when the examples are resampled.

    `differences` is (seeds, examples): the per-example difference of each seed's pair, the same examples in every
    seed. One resample draws examples with replacement (the same draw for every seed) and averages over seeds the
    (optionally `weights`-weighted, e.g. by token count) mean difference. Seeded: the same input gives the same
    interval.
    """
    diffs = np.asarray(differences, dtype=np.float64)
    if diffs.ndim != 2 or diffs.shape[1] == 0:
        raise ValueError(f"differences must be (seeds, examples) with at least one example, got {diffs.shape}")
    w = np.ones(diffs.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diffs.shape[1], size=(resamples, diffs.shape[1]))
    picked_w = w[picks]  # (resamples, examples)
    per_seed = (diffs[:, picks] * picked_w).sum(-1) / np.maximum(picked_w.sum(-1), 1e-300)  # (seeds, resamples)
    means = per_seed.mean(0)
    low, high = np.quantile(means, [level / 2.0, 1.0 - level / 2.0])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (family-wise error control, any dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(
    mean_diff: float,
    p_adjusted: float,
    direction: int,
    reference: float = 0.0,
    bootstrap: tuple[float, float] | None = None,
    level: float = LEVEL,
) -> str:
    """Reproduced / opposite / not established for one comparison (see the module docstring)."""
    if not math.isfinite(mean_diff) or p_adjusted > level or mean_diff == reference:
        return NOT_ESTABLISHED
    side = 1 if mean_diff > reference else -1
    if bootstrap is not None:
        low, high = bootstrap
        if not (low > reference if side > 0 else high < reference):
            return NOT_ESTABLISHED
    return REPRODUCED if side == direction else OPPOSITE


@dataclass(frozen=True)
class PairedData:
    """One signature's data for one configuration: per-seed differences and, optionally, per-example ones."""

    signature: Signature
    differences: Sequence[float]  # one per seed: configuration minus baseline
    per_example: np.ndarray | None = None  # (seeds, examples)
    weights: np.ndarray | None = None  # (examples,)


def compare_family(
    family: Sequence[PairedData],
    margin: float = DEFAULT_MARGIN,
    level: float = LEVEL,
    seed: int = 0,
    resamples: int = 2000,
) -> list[dict[str, float | int | str | None]]:
    """Test every signature of one configuration, Holm-corrected across them; one dict per signature."""
    tests = []
    for data in family:
        reference = margin if data.signature.non_inferiority else 0.0
        tests.append((data, reference, paired_t(data.differences, reference, level)))
    adjusted = holm([test.p_value for _, _, test in tests])
    rows: list[dict[str, float | int | str | None]] = []
    for (data, reference, test), p_adj in zip(tests, adjusted, strict=True):
        boot = None
        if data.per_example is not None and np.asarray(data.per_example).size:
            boot = bootstrap_interval(data.per_example, data.weights, resamples=resamples, seed=seed, level=level)
        rows.append(
            {
                "signature": data.signature.name,
                "metric": data.signature.metric,
                "n": test.n,
                "mean_diff": test.mean_diff,
                "ci_low": test.ci_low,
                "ci_high": test.ci_high,
                "bootstrap_low": None if boot is None else boot[0],
                "bootstrap_high": None if boot is None else boot[1],
                "reference": reference,
                "p_value": test.p_value,
                "p_holm": p_adj,
                "verdict": verdict(test.mean_diff, p_adj, data.signature.direction, reference, boot, level),
            }
        )
    return rows

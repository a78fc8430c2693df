"""The evaluation metrics on examples small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("rouge_score")
pytest.importorskip("sacrebleu")
from neftune.eval import bleu, diversity_metrics, output_lengths, repetition_rates, rouge_l


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    assert rouge_l(["a b", "x y"], ["a b", "p q"]) == pytest.approx(0.5)  # mean of 1 and 0


def test_bleu_bounds() -> None:
    sentence = "the quick brown fox jumps over the lazy dog"
    assert bleu([sentence], [sentence]) == pytest.approx(100.0)
    assert bleu(["completely different words here"], [sentence]) < 5.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])


def test_lengths() -> None:
    assert output_lengths(["ab cd", "efg"]) == {"chars": 4.0, "words": 1.5}


def test_repetition_of_an_alternating_sequence() -> None:
    # "a b a b a b": bigrams ab ba ab ba ab -> 2 unique of 5; trigrams 2 of 4; 4-grams 2 of 3
    rates, kept = repetition_rates(["a b a b a b"], prefix_words=6)
    assert kept == 1
    assert rates == pytest.approx({2: 1 - 2 / 5, 3: 1 - 2 / 4, 4: 1 - 2 / 3})
    metrics = diversity_metrics(["a b a b a b"], prefix_words=6)
    diversity = (2 / 5) * (2 / 4) * (2 / 3)
    assert metrics["diversity"] == pytest.approx(diversity)
    assert metrics["log_diversity"] == pytest.approx(-math.log(1 - diversity))


def test_short_outputs_are_dropped_and_the_prefix_is_cut() -> None:
    rates, kept = repetition_rates(["one two", "a b c d e f g h a b"], prefix_words=8)
    assert kept == 1  # "one two" is shorter than the prefix; the other is cut to "a b c d e f g h"
    assert rates[2] == 0.0
    empty = diversity_metrics(["too short"], prefix_words=8)
    assert empty["diversity_outputs"] == 0.0 and math.isnan(empty["log_diversity"])


def test_log_diversity_is_capped_for_fully_diverse_text() -> None:
    metrics = diversity_metrics([" ".join(f"w{i}" for i in range(40))], prefix_words=32)
    assert metrics["diversity"] == 1.0 and metrics["log_diversity"] == pytest.approx(20.0)

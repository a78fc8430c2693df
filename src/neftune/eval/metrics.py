"""Text metrics of generated outputs.

Memorisation: ROUGE-L (F-measure, `rouge-score`) and corpus BLEU (`sacrebleu`) of generations against the
reference responses of the same prompts. Length: characters and whitespace words. Diversity, following
Kirchenbauer et al. 2023 / Li et al. 2022, with this convention:

- each output is split on whitespace and cut to its first `prefix_words` words; outputs shorter than that are
  dropped (so every kept output contributes the same number of n-grams);
- `rep_n = 1 - unique_ngrams / total_ngrams` per kept output, averaged over outputs, for n = 2, 3, 4;
- `diversity = prod_n (1 - rep_n)`; `log_diversity = -log(max(1 - diversity, e^-20))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_PREFIX_WORDS = 32


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure in [0, 1] of each prediction against its reference."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure in [0, 1] over prediction/reference pairs."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores) if scores else 0.0


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale (13a tokenisation, exponential smoothing)."""
    import sacrebleu

    _same_length(predictions, references)
    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def sentence_bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence BLEU (0-100, sacrebleu's exponential smoothing) of each prediction: the per-example quantity a
    bootstrap over examples resamples (corpus BLEU does not decompose into examples)."""
    import sacrebleu

    _same_length(predictions, references)
    return [
        float(sacrebleu.sentence_bleu(prediction, [reference]).score)
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def output_lengths(texts: Sequence[str]) -> dict[str, float]:
    """Mean length in characters and in whitespace-separated words."""
    if not texts:
        return {"chars": 0.0, "words": 0.0}
    return {
        "chars": sum(len(text) for text in texts) / len(texts),
        "words": sum(len(text.split()) for text in texts) / len(texts),
    }


def _ngram_repetition(words: Sequence[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repetition_rates(
    texts: Sequence[str], prefix_words: int = DEFAULT_PREFIX_WORDS, orders: Sequence[int] = (2, 3, 4)
) -> tuple[dict[int, float], int]:
    """`rep_n` averaged over outputs with at least `prefix_words` words (cut to that prefix), and how many."""
    kept = [text.split()[:prefix_words] for text in texts if len(text.split()) >= prefix_words]
    if not kept:
        return {n: float("nan") for n in orders}, 0
    return {n: sum(_ngram_repetition(words, n) for words in kept) / len(kept) for n in orders}, len(kept)


def diversity_metrics(texts: Sequence[str], prefix_words: int = DEFAULT_PREFIX_WORDS) -> dict[str, float]:
    """rep-2/3/4, diversity, log-diversity and the number of outputs long enough to count."""
    rates, kept = repetition_rates(texts, prefix_words)
    diversity = math.prod(1.0 - rate for rate in rates.values())
    log_diversity = -math.log(max(1.0 - diversity, math.exp(-20))) if kept else float("nan")
    return {
        "rep_2": rates[2],
        "rep_3": rates[3],
        "rep_4": rates[4],
        "diversity": diversity if kept else float("nan"),
        "log_diversity": log_diversity,
        "diversity_outputs": float(kept),
    }


def degenerate_share(texts: Sequence[str], min_distinct: float = 0.3) -> float:
    """Share of outputs that are degenerate: empty, looping (at least 8 words, fewer than `min_distinct` of them
    distinct, or a run of one or two characters), or the same text as more than half of all outputs."""
    if not texts:
        return 0.0
    counts: dict[str, int] = {}
    for text in texts:
        counts[text.strip()] = counts.get(text.strip(), 0) + 1

    def degenerate(text: str) -> bool:
        text = text.strip()
        words = text.split()
        looping = len(words) >= 8 and len(set(words)) < min_distinct * len(words)
        one_char = len(text) >= 8 and len(set(text)) <= 2
        collapsed = len(texts) >= 4 and counts[text] > len(texts) / 2
        return not text or looping or one_char or collapsed

    return sum(degenerate(text) for text in texts) / len(texts)


def _same_length(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; pass one reference per prediction."
        )

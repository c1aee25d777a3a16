"""Corpus chrF and BLEU for translations, as sacreBLEU defines them (without the dependency).

chrF (Popović 2015) is sacreBLEU's default ``chrF2``: character n-grams of
orders 1–6 with whitespace removed, statistics summed over the corpus, an
F-score with β = 2 per order (recall weighs twice precision), averaged over the
orders that occur in both hypotheses and references. BLEU is corpus BLEU-4
(Papineni 2002): clipped n-gram precisions of orders 1–4 summed over the
corpus, their geometric mean times the brevity penalty, on a 13a-like
tokenisation (punctuation split from words; case kept, as sacreBLEU does by
default). Both are on a 0–100 scale; 100 is identical text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

CHRF_CHAR_ORDER = 6
CHRF_BETA = 2.0
BLEU_MAX_ORDER = 4
# sacreBLEU's smoothing constant for an order with no statistics at all.
_EPSILON = 1e-16
# 13a splits punctuation and symbols off words; dashes between digits and the like are kept simple here.
_PUNCTUATION = re.compile(r"([^\w\s])")


def _check_lengths(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses.")
    if not references:
        raise ValueError("No sentence to score; `references` is empty.")


def _ngrams(items: Sequence[str] | str, order: int) -> Counter:
    return Counter(tuple(items[i : i + order]) for i in range(len(items) - order + 1))


def chrf(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus chrF2 (0–100) of ``hypotheses`` against one reference each."""
    _check_lengths(references, hypotheses)
    # Per order: [hypothesis n-grams, reference n-grams, matches].
    totals = [[0, 0, 0] for _ in range(CHRF_CHAR_ORDER)]
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref_chars, hyp_chars = "".join(reference.split()), "".join(hypothesis.split())
        for order in range(1, CHRF_CHAR_ORDER + 1):
            hyp, ref = _ngrams(hyp_chars, order), _ngrams(ref_chars, order)
            stats = totals[order - 1]
            stats[0] += sum(hyp.values())
            stats[1] += sum(ref.values())
            stats[2] += sum((hyp & ref).values())
    factor = CHRF_BETA**2
    score, effective = 0.0, 0
    for n_hyp, n_ref, n_match in totals:
        precision = n_match / n_hyp if n_hyp else _EPSILON
        recall = n_match / n_ref if n_ref else _EPSILON
        denominator = factor * precision + recall
        score += (1 + factor) * precision * recall / denominator if denominator > 0 else _EPSILON
        effective += 1 if n_hyp and n_ref else 0
    return 100.0 * score / effective if effective else 0.0


def tokenize_13a(text: str) -> list[str]:
    """Words and punctuation marks, split the way sacreBLEU's ``13a`` tokenizer mostly does."""
    return _PUNCTUATION.sub(r" \1 ", text).split()


def bleu(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU-4 (0–100) of ``hypotheses`` against one reference each; 0 when an order has no match."""
    _check_lengths(references, hypotheses)
    matches, totals = [0] * BLEU_MAX_ORDER, [0] * BLEU_MAX_ORDER
    hyp_length = ref_length = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref_tokens, hyp_tokens = tokenize_13a(reference), tokenize_13a(hypothesis)
        hyp_length += len(hyp_tokens)
        ref_length += len(ref_tokens)
        for order in range(1, BLEU_MAX_ORDER + 1):
            hyp, ref = _ngrams(hyp_tokens, order), _ngrams(ref_tokens, order)
            matches[order - 1] += sum((hyp & ref).values())
            totals[order - 1] += max(len(hyp_tokens) - order + 1, 0)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / BLEU_MAX_ORDER
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return 100.0 * brevity * math.exp(log_precision)


def translation_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """``{"chrf": ..., "bleu": ...}`` of a corpus of translations (0–100 each)."""
    return {"chrf": chrf(references, hypotheses), "bleu": bleu(references, hypotheses)}

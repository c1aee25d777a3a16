"""chrF and BLEU against hand-computed values."""

import math

import pytest

from s2i.training.translation_metrics import bleu, chrf, tokenize_13a, translation_scores


def test_chrf_is_100_when_identical_and_0_when_no_character_is_shared():
    assert chrf(["The boy is reading."], ["The boy is reading."]) == pytest.approx(100.0)
    assert chrf(["abc"], ["xyz"]) == pytest.approx(0.0)


def test_chrf_matches_hand_counted_value_when_one_character_differs():
    # Orders 1, 2, 3 occur: F(1) = 2/3, F(2) = 1/2, F(3) = 0; orders 4-6 are absent and not averaged.
    assert chrf(["abd"], ["abc"]) == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_chrf_ignores_whitespace_and_weighs_recall_twice_when_scoring():
    assert chrf(["a b c"], ["abc"]) == pytest.approx(100.0)
    # Hypothesis "ab" against "abcd": precision 1, recall 1/2 (order 1) -> F2 = 5 * 1 * 0.5 / (4 + 0.5).
    order1 = 5 * 1 * 0.5 / (4 * 1 + 0.5)
    order2 = 5 * 1 * (1 / 3) / (4 * 1 + 1 / 3)
    assert chrf(["abcd"], ["ab"]) == pytest.approx(100 * (order1 + order2) / 2)


def test_bleu_matches_hand_counted_value_when_a_word_is_missing():
    # Precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5).
    expected = 100 * math.exp(1 - 6 / 5) * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on mat"]) == pytest.approx(expected)
    assert bleu(["The boy is reading."], ["The boy is reading."]) == pytest.approx(100.0)


def test_bleu_is_0_when_no_four_gram_matches():
    assert bleu(["the cat sat on the mat"], ["the mat sat on cat"]) == 0.0


def test_tokenize_13a_splits_punctuation_from_words():
    assert tokenize_13a("My father is happy, today.") == ["My", "father", "is", "happy", ",", "today", "."]


def test_translation_scores_refuse_when_lengths_differ_or_empty():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        translation_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="`references` is empty"):
        chrf([], [])

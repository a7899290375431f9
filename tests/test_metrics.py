"""metrics.py: CIDEr-D, BLEU-4 and VQA accuracy against values worked out by hand.

CIDEr-D notation: N images, idf(g) = log N - log max(1, df(g)), L = log 2 (the idf of an
n-gram seen in 1 of 2 images, or in none), cos_n = clipped dot / (|c_n| |r_n|) (0 when a side
has no n-grams of order n), penalty = exp(-(len_c - len_r)^2 / 72),
score = 10 * mean over references of (sum over n = 1..4 of cos_n * penalty) / 4.
"""

import math

import pytest

from evaluation.metrics import bleu4, caption_tokenize, cider_d, vqa_accuracy

approx = pytest.approx


def test_caption_tokenize_lowercases_and_drops_punctuation_tokens():
    assert caption_tokenize("A dog, (running) on the Beach... isn't it?!") == [
        "a",
        "dog",
        "running",
        "on",
        "the",
        "beach",
        "is",
        "n't",
        "it",
    ]
    assert caption_tokenize('a "T-shirt" costs $1,000.50 - wow') == [
        "a",
        "t-shirt",
        "costs",
        "$",
        "1,000.50",
        "wow",
    ]
    assert caption_tokenize("") == []


# --- CIDEr-D -------------------------------------------------------------------------------------


def test_cider_exact_match_and_empty_candidate():
    # df: "a" 2 -> idf 0; every other n-gram 1 -> idf L.
    # img1 "a cat sat" vs itself: n=1 c = r = {a: 0, cat: L, sat: L} -> cos 1; n=2 {a cat: L,
    # cat sat: L} -> 1; n=3 {a cat sat: L} -> 1; n=4 none -> 0. Same length. 10 * 3/4 = 7.5.
    # img2 "": no n-grams -> 0. Corpus: (7.5 + 0) / 2 = 3.75.
    score, per_image = cider_d({1: "A cat sat.", 2: ""}, {1: ["a cat sat"], 2: ["a dog ran"]})
    assert per_image == {1: approx(7.5), 2: 0.0}
    assert score == approx(3.75)


def test_cider_clips_repeated_ngrams():
    # df: dog 1, cat 1 -> idf L. img1 "dog dog" vs "dog": n=1 c = {dog: 2L}, r = {dog: L}.
    # Clipped dot min(2L, L) * L = L^2, over |c| |r| = 2L * L -> 1/2 (unclipped it would be 1);
    # n=2 c = {dog dog: L}, r has no bigram -> 0. Length 2 vs 1 -> penalty exp(-1/72).
    # 10 * (1/2 * exp(-1/72)) / 4 = 1.25 exp(-1/72).
    # img2 "cat" vs "cat": n=1 cos 1, rest 0 -> 10 * 1/4 = 2.5.
    score, per_image = cider_d({1: "dog dog", 2: "cat"}, {1: ["dog"], 2: ["cat"]})
    assert per_image[1] == approx(1.25 * math.exp(-1 / 72))
    assert per_image[2] == approx(2.5)
    assert score == approx((1.25 * math.exp(-1 / 72) + 2.5) / 2)


def test_cider_gaussian_length_penalty():
    # "the" is in both images' references: idf 0, so it adds length but no weight.
    # img1 "cat" vs "cat the the the the the the" (7 words): n=1 c = {cat: L},
    # r = {cat: L, the: 0} -> cos 1; n>=2 the candidate has none -> 0.
    # Length 1 vs 7: penalty exp(-36/72) = exp(-1/2). 10 * exp(-1/2) / 4 = 2.5 exp(-1/2).
    # img2 "dog the" vs itself: n=1 {dog: L, the: 0} -> 1; n=2 {dog the: L} -> 1 -> 10 * 2/4 = 5.
    _, per_image = cider_d(
        {1: "cat", 2: "dog the"}, {1: ["cat the the the the the the"], 2: ["dog the"]}
    )
    assert per_image == {1: approx(2.5 * math.exp(-0.5)), 2: approx(5.0)}


def test_cider_document_frequency_counts_each_image_once_and_averages_references():
    # "dog" is in both references of img1 but img1 counts once: df 1 -> idf L (counted twice it
    # would be df 2 -> idf 0 -> img1 scores 0).
    # img1 "dog" vs "dog runs": n=1 c = {dog: L}, r = {dog: L, runs: L}: L^2 / (L * sqrt(2) L)
    #   = 1/sqrt(2); length 1 vs 2 -> exp(-1/72).  vs "dog": cos 1, same length.
    #   10 * mean(1/sqrt(2) exp(-1/72) / 4, 1/4) = 1.25 (1 + exp(-1/72) / sqrt(2)).
    # img2 "cat" vs "cat": 2.5.
    _, per_image = cider_d({1: "dog", 2: "cat"}, {1: ["dog runs", "dog"], 2: ["cat"]})
    assert per_image[1] == approx(1.25 * (1 + math.exp(-1 / 72) / math.sqrt(2)))
    assert per_image[2] == approx(2.5)


def test_cider_idf_weights_from_three_images():
    # N = 3. df: red 2, car 2 -> idf a = log 3 - log 2; bus 1, blue 1, bigrams 1 -> b = log 3.
    # img1 "red car" vs "red bus": n=1 c = {red: a, car: a}, r = {red: a, bus: b}:
    #   a^2 / (sqrt(2) a * sqrt(a^2 + b^2)) = a / sqrt(2 (a^2 + b^2)); n=2 no shared bigram -> 0.
    # img2 "red car" vs itself: n=1 and n=2 cos 1 -> 5.  img3 empty -> 0.
    a, b = math.log(3) - math.log(2), math.log(3)
    score, per_image = cider_d(
        {1: "red car", 2: "red car", 3: ""}, {1: ["red bus"], 2: ["red car"], 3: ["blue car"]}
    )
    expected_1 = 10 * a / math.sqrt(2 * (a * a + b * b)) / 4
    assert per_image == {1: approx(expected_1), 2: approx(5.0), 3: 0.0}
    assert score == approx((expected_1 + 5.0) / 3)


def test_cider_single_image_scores_zero():
    # N = 1: log 1 - log 1 = 0 for every n-gram, as in the official scorer.
    assert cider_d({"x": "a cat"}, {"x": ["a cat"]}) == (0.0, {"x": 0.0})


# --- BLEU-4 --------------------------------------------------------------------------------------


def test_bleu4_clipping_closest_reference_and_corpus_sums():
    # img1 "the the the the the": refs of length 6 and 4 are both 1 away -> the shorter, 4.
    #   1-grams: "the" x5 clipped to 2 (its most in one reference) -> 2/5; 2..4-grams 0/4, 0/3, 0/2.
    # img2 "a dog runs in the park" = its reference: 6/6, 5/5, 4/4, 3/3; reference length 6.
    # Corpus: 8/11, 5/9, 4/7, 3/5; length 11 vs 4 + 6 = 10 -> no brevity penalty.
    candidates = {1: "the the the the the", 2: "a dog runs in the park"}
    references = {1: ["the cat is on the mat", "there is a cat"], 2: ["A dog runs in the park."]}
    assert bleu4(candidates, references) == approx((8 / 11 * 5 / 9 * 4 / 7 * 3 / 5) ** 0.25)


def test_bleu4_brevity_penalty_uses_closest_reference():
    # "a dog runs in the" (5 words): every n-gram matches -> precisions 1. Closest reference is
    # the 6-word one (the 1-word one is 4 away) -> exp(1 - 6/5) (with "shortest" it would be 1).
    assert bleu4({0: "a dog runs in the"}, {0: ["a dog runs in the park", "dogs"]}) == approx(
        math.exp(-0.2)
    )


def test_bleu4_empty_candidate_and_exact_match():
    # img1 "" adds nothing matched or guessed, but its closest reference length 4 counts.
    # img2 exact: 4/4, 3/3, 2/2, 1/1. Length 4 vs 8 -> exp(1 - 8/4) = exp(-1).
    references = {1: ["a b c d"], 2: ["a b c d"]}
    assert bleu4({1: "", 2: "a b c d"}, references) == approx(math.exp(-1))
    assert bleu4({1: "a b c d", 2: "a b c d"}, references) == approx(1.0)


def test_bleu4_keeps_the_official_epsilons():
    # No 3- or 4-gram anywhere: the official scorer's (0 + 1e-15) / (0 + 1e-9) = 1e-6 for each,
    # so BLEU-4 = (1 * 1 * 1e-6 * 1e-6) ** (1/4) = 1e-3, not 0.
    assert bleu4({0: "a cat"}, {0: ["a cat"]}) == approx(1e-3)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [cider_d, bleu4])
def test_caption_metrics_reject_bad_input(metric):
    with pytest.raises(ValueError, match="only in candidates: \\['extra'\\]"):
        metric({"a": "x", "extra": "y"}, {"a": ["x"]})
    with pytest.raises(ValueError, match="only in references: \\['b'\\]"):
        metric({"a": "x"}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match="image 'b'"):
        metric({"a": "x", "b": "y"}, {"a": ["x"], "b": []})
    with pytest.raises(ValueError, match="image 'a'"):
        metric({"a": "x"}, {"a": "x"})
    with pytest.raises(ValueError, match="image 'a'"):
        metric({"a": ["x"]}, {"a": ["x"]})
    with pytest.raises(ValueError, match="no images"):
        metric({}, {})


# --- VQA accuracy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_matching, expected",
    [
        (0, 0.0),
        (1, 0.3),  # 9 subsets keep the match: 1/3 each; 1 drops it: 0 -> 3/10
        (2, 0.6),  # 2 subsets drop a match: 1/3; 8 keep both: 2/3 -> (2/3 + 16/3) / 10
        (3, 0.9),  # 3 subsets drop a match: 2/3; 7 keep all three: 1 -> (2 + 7) / 10
        (4, 1.0),  # every subset keeps at least 3
        (10, 1.0),
    ],
)
def test_vqa_accuracy_counts_matching_humans(num_matching, expected):
    answers = ["yes"] * num_matching + ["no"] * (10 - num_matching)
    assert vqa_accuracy("yes", answers) == approx(expected)


@pytest.mark.parametrize(
    "prediction, answer",
    [
        ("Two", "2"),  # number words become digits, lower case
        ("a dog", "dog"),  # articles dropped
        ("the  Dog\n", "dog"),  # whitespace
        ("yes.", "yes"),  # a period not before a digit goes
        ("2.5", "2.5"),  # one before a digit stays
        ("1,000", "1000"),  # a comma between digits: every mark is deleted
        ("red, white", "red white"),  # a mark next to a space is deleted
        ("black/white", "black white"),  # otherwise it becomes a space
        ("dont", "don't"),  # contractions table
        ("isnt", "isn't"),
    ],
)
def test_vqa_accuracy_normalizes_the_prediction(prediction, answer):
    assert vqa_accuracy(prediction, [answer] * 10) == 1.0


def test_vqa_accuracy_normalizes_human_answers_only_when_they_differ():
    # All identical: taken verbatim, so "yes." does not match the normalized prediction "yes".
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    # Not all identical: the punctuation step runs on them ("yes." -> "yes"): 3 matches -> 0.9.
    assert vqa_accuracy("yes", ["yes."] * 3 + ["no"] * 7) == approx(0.9)
    # Human answers never get the number-word step: "two" stays "two", the prediction becomes "2".
    assert vqa_accuracy("two", ["two"] * 10) == 0.0


def test_vqa_accuracy_rejects_missing_answers():
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("yes", "yes")

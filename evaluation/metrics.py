"""Metrics: the box after Figure 2's model, which turns generated text into the paper's numbers.

The paper reports captioning as CIDEr (COCO, MSRVTT, ...) and question answering as VQA
accuracy (VQAv2, MSRVTT-QA, ...). They are computed here as the standard tools do: CIDEr-D and
BLEU-4 as the COCO caption evaluation (`pycocoevalcap`: its `Cider` scorer is CIDEr-D, with
clipping and a length penalty), and VQA accuracy as the official VQAv2 evaluation (`vqaEval.py`),
including the quirks of both that move numbers. Pure Python; `evaluate.py` calls them.
"""

import math
import re
from collections import Counter

# --- caption tokenization ---------------------------------------------------------------------
# The COCO pipeline runs the Stanford PTB tokenizer (Java) with lower-casing, then drops the
# punctuation tokens. This is a small regex approximation of it: clitics split off as PTB does
# ("don't" -> "do n't", "dog's" -> "dog 's"), numbers with inner "," or "." and hyphenated words
# kept whole, punctuation tokens dropped, other symbols ("$", "%", "&") kept.
_CURLY_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_CAPTION_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-/&]\w+)*|\S")
_CAPTION_PUNCTUATION = set(".,?!;:'\"`()[]{}-")


def caption_tokenize(text):
    """Lower-cased words of a caption, without punctuation tokens (both caption metrics use it)."""
    text = _CLITIC.sub(r" \1", text.translate(_CURLY_QUOTES).lower())
    return [
        token for token in _CAPTION_TOKEN.findall(text) if not set(token) <= _CAPTION_PUNCTUATION
    ]


def _ngram_counts(tokens, max_n=4):
    """Counter of every 1..max_n-gram (as a tuple of tokens) in the sentence."""
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)
    )


def _check_caption_inputs(candidates, references):
    """The image keys, after checking that both dicts describe the same images."""
    only_candidates = sorted(candidates.keys() - references.keys(), key=str)
    only_references = sorted(references.keys() - candidates.keys(), key=str)
    if only_candidates or only_references:
        raise ValueError(
            "candidates and references must have the same keys; only in candidates: "
            f"{only_candidates[:5]}, only in references: {only_references[:5]}"
        )
    if not candidates:
        raise ValueError("no images to evaluate: candidates and references are empty")
    for key, captions in references.items():
        if isinstance(captions, str) or not captions:
            raise ValueError(
                f"image {key!r}: references must be a non-empty list of captions, got {captions!r}"
            )
        if not isinstance(candidates[key], str):
            raise ValueError(
                f"image {key!r}: the candidate must be one string, got {candidates[key]!r}"
            )
    return list(candidates)


# --- CIDEr-D ------------------------------------------------------------------------------------
def cider_d(candidates, references, sigma=6.0):
    """CIDEr-D of candidate captions against reference captions, as pycocoevalcap's `Cider`.

    candidates: {key: caption}; references: {key: [caption, ...]}. Returns (corpus score,
    {key: score}); the corpus score is the mean over images. Document frequencies come from the
    references of the evaluated set, so the score of an image depends on the others (with one
    image every idf is 0, and so is every score).
    """
    keys = _check_caption_inputs(candidates, references)
    candidate_tokens = {key: caption_tokenize(candidates[key]) for key in keys}
    reference_tokens = {
        key: [caption_tokenize(caption) for caption in references[key]] for key in keys
    }

    # An n-gram's document frequency: the number of images whose reference set contains it.
    document_frequency = Counter()
    for key in keys:
        document_frequency.update(
            set().union(*(_ngram_counts(tokens) for tokens in reference_tokens[key]))
        )
    log_num_images = math.log(len(keys))

    def tfidf_vectors(tokens):
        """Per n = 1..4: ({ngram: tf * idf}, norm). Unseen n-grams count as df = 1."""
        vectors = [{} for _ in range(4)]
        for ngram, term_frequency in _ngram_counts(tokens).items():
            idf = log_num_images - math.log(max(1, document_frequency[ngram]))
            vectors[len(ngram) - 1][ngram] = term_frequency * idf
        return [
            (vector, math.sqrt(sum(value * value for value in vector.values())))
            for vector in vectors
        ]

    def similarity(candidate, reference, length_difference):
        """Mean over n of the clipped cosine, times the Gaussian length penalty."""
        # The official scorer measures length in bigrams; that equals the word count minus one
        # except for an empty sentence, whose vectors are all zero, so the penalty never differs.
        penalty = math.exp(-(length_difference**2) / (2 * sigma**2))
        total = 0.0
        for (candidate_vector, candidate_norm), (reference_vector, reference_norm) in zip(
            candidate, reference
        ):
            # Clipping: a candidate n-gram counts at most as much as it weighs in the reference.
            dot = sum(
                min(value, reference_vector.get(ngram, 0.0)) * reference_vector.get(ngram, 0.0)
                for ngram, value in candidate_vector.items()
            )
            # No n-grams of this order (or only idf-0 ones) on either side: cosine 0, as officially.
            if candidate_norm and reference_norm:
                total += dot / (candidate_norm * reference_norm) * penalty
        return total / 4

    per_image = {}
    for key in keys:
        candidate = tfidf_vectors(candidate_tokens[key])
        similarities = [
            similarity(candidate, tfidf_vectors(tokens), len(candidate_tokens[key]) - len(tokens))
            for tokens in reference_tokens[key]
        ]
        per_image[key] = 10.0 * sum(similarities) / len(similarities)
    return sum(per_image.values()) / len(per_image), per_image


# --- BLEU-4 -------------------------------------------------------------------------------------
# The coco-caption scorer adds these to every count ratio; they are kept so that numbers match
# it exactly. Visible effect: a corpus without any matched (or any candidate) 4-gram scores a
# small positive BLEU-4 rather than 0; e.g. one 2-word candidate equal to its reference scores
# (1 * 1 * 1e-6 * 1e-6) ** (1/4) = 1e-3.
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9


def bleu4(candidates, references):
    """Corpus BLEU-4 as pycocoevalcap's `Bleu` (option "closest"); inputs as `cider_d`.

    Clipped n-gram counts (each n-gram at most as often as in the reference that has it most)
    summed over the corpus for n = 1..4; geometric mean of the four precisions; brevity penalty
    exp(1 - r/c) when the candidates' total length c is below r, the sum over images of the
    reference length closest to the candidate's (ties go to the shorter reference).
    """
    keys = _check_caption_inputs(candidates, references)
    matched, guessed = [0] * 4, [0] * 4
    candidate_length = reference_length = 0
    for key in keys:
        tokens = caption_tokenize(candidates[key])
        reference_tokens = [caption_tokenize(caption) for caption in references[key]]
        max_reference_counts = Counter()
        for reference in reference_tokens:
            max_reference_counts |= _ngram_counts(reference)
        for ngram, count in _ngram_counts(tokens).items():
            matched[len(ngram) - 1] += min(count, max_reference_counts[ngram])
        for n in range(1, 5):
            guessed[n - 1] += max(0, len(tokens) - n + 1)
        candidate_length += len(tokens)
        reference_length += min(
            (len(reference) for reference in reference_tokens),
            key=lambda length: (abs(length - len(tokens)), length),
        )
    precisions = [(m + _BLEU_TINY) / (g + _BLEU_SMALL) for m, g in zip(matched, guessed)]
    score = math.prod(precisions) ** (1 / 4)
    length_ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    return score * math.exp(1 - 1 / length_ratio) if length_ratio < 1 else score


# --- VQA accuracy -------------------------------------------------------------------------------
# Tables of the official VQAv2 evaluation (vqaEval.py, current version: straight apostrophes,
# and "'" and ":" are not stripped).
_VQA_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_VQA_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_VQA_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
# The official pattern is meant to keep periods between digits; as written it keeps every
# period followed by a digit and removes all others ("yes." -> "yes", "2.5" stays).
_VQA_PERIOD = re.compile(r"\.(?!\d)")


def _vqa_strip_punctuation(text):
    """The official punctuation step: a mark next to a space, or any mark at all when the text
    has a comma between digits ("1,000"), is deleted; otherwise it becomes a space."""
    stripped = text
    for mark in _VQA_PUNCTUATION:
        if mark + " " in text or " " + mark in text or _VQA_COMMA_BETWEEN_DIGITS.search(text):
            stripped = stripped.replace(mark, "")
        else:
            stripped = stripped.replace(mark, " ")
    # The official call passes re.UNICODE (= 32) where `count` goes: at most 32 periods go.
    return _VQA_PERIOD.sub("", stripped, count=32)


def normalize_vqa_answer(answer):
    """An answer as the official evaluation normalizes the *predicted* one: whitespace, punctuation,
    lower case, number words to digits ("two" -> "2"), articles dropped, contractions ("dont")."""
    text = _vqa_strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [_VQA_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(
        _VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES
    )


def vqa_accuracy(prediction, answers):
    """VQA accuracy of one predicted answer against the human answers (10 in VQAv2).

    The mean, over the leave-one-out subsets of the humans, of min(1, matching humans / 3):
    1, 2, 3, 4+ matches out of 10 give 0.3, 0.6, 0.9, 1.0. As in the official code, the human
    answers are not normalized like the prediction: they get only the punctuation step, and only
    when they are not all identical. The official annotation files store them already normalized
    (lower case, digits, no articles), so reference answers should be written that way.
    """
    if isinstance(answers, str) or not answers:
        raise ValueError(f"vqa_accuracy needs a non-empty list of human answers, got {answers!r}")
    prediction = normalize_vqa_answer(prediction)
    if len(set(answers)) > 1:
        answers = [_vqa_strip_punctuation(answer) for answer in answers]
    hits = [answer == prediction for answer in answers]
    num_hits = sum(hits)
    return sum(min(1, (num_hits - hit) / 3) for hit in hits) / len(hits)

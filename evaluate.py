"""Evaluation: the box after Figure 2's model, which turns generated text into the paper's numbers.

The paper reports captioning as CIDEr (COCO, MSRVTT, ...) and question answering as VQA
accuracy (VQAv2, MSRVTT-QA, ...). The metrics here compute them as the standard tools do:
CIDEr-D and BLEU-4 as the COCO caption evaluation (`pycocoevalcap`: its `Cider` scorer is
CIDEr-D, with clipping and a length penalty), and VQA accuracy as the official VQAv2 evaluation
(`vqaEval.py`), including the quirks of both that move numbers. The metrics are pure Python.

Below them: batched greedy decoding and beam search over the decoder's KV cache, and the
evaluation of a stage-1 or stage-2 checkpoint on a data folder. Evaluation decodes greedily
unless told otherwise, with fixed prompts ([bos] for captions, [bos] + "question: ... answer:"
for VQA, as in training), so the same checkpoint always gives the same numbers.

    python evaluate.py checkpoint runs/stage2 --data data/shapes --split val [--beam 1] [--limit N]
    python evaluate.py caption data/shapes/images/val/000001000001.png --checkpoint runs/stage2 \\
        --data data/shapes [--question "what color is the circle?"]
"""

import argparse
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from trainer import load_checkpoint
from vlm import VisionLanguageModel, build_vlm

# =============================================================================================
# Metrics: caption tokenization, CIDEr-D, BLEU-4, VQA accuracy
# =============================================================================================

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
    return [token for token in _CAPTION_TOKEN.findall(text) if not set(token) <= _CAPTION_PUNCTUATION]


def _ngram_counts(tokens, max_n=4):
    """Counter of every 1..max_n-gram (as a tuple of tokens) in the sentence."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _check_caption_inputs(candidates, references):
    """The image keys, after checking that both dicts describe the same images."""
    only_candidates = sorted(candidates.keys() - references.keys(), key=str)
    only_references = sorted(references.keys() - candidates.keys(), key=str)
    if only_candidates or only_references:
        raise ValueError("candidates and references must have the same keys; only in candidates: "
                         f"{only_candidates[:5]}, only in references: {only_references[:5]}")
    if not candidates:
        raise ValueError("no images to evaluate: candidates and references are empty")
    for key, captions in references.items():
        if isinstance(captions, str) or not captions:
            raise ValueError(f"image {key!r}: references must be a non-empty list of captions, got {captions!r}")
        if not isinstance(candidates[key], str):
            raise ValueError(f"image {key!r}: the candidate must be one string, got {candidates[key]!r}")
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
    reference_tokens = {key: [caption_tokenize(caption) for caption in references[key]] for key in keys}

    # An n-gram's document frequency: the number of images whose reference set contains it.
    document_frequency = Counter()
    for key in keys:
        document_frequency.update(set().union(*(_ngram_counts(tokens) for tokens in reference_tokens[key])))
    log_num_images = math.log(len(keys))

    def tfidf_vectors(tokens):
        """Per n = 1..4: ({ngram: tf * idf}, norm). Unseen n-grams count as df = 1."""
        vectors = [{} for _ in range(4)]
        for ngram, term_frequency in _ngram_counts(tokens).items():
            idf = log_num_images - math.log(max(1, document_frequency[ngram]))
            vectors[len(ngram) - 1][ngram] = term_frequency * idf
        return [(vector, math.sqrt(sum(value * value for value in vector.values()))) for vector in vectors]

    def similarity(candidate, reference, length_difference):
        """Mean over n of the clipped cosine, times the Gaussian length penalty."""
        # The official scorer measures length in bigrams; that equals the word count minus one
        # except for an empty sentence, whose vectors are all zero, so the penalty never differs.
        penalty = math.exp(-length_difference ** 2 / (2 * sigma ** 2))
        total = 0.0
        for (candidate_vector, candidate_norm), (reference_vector, reference_norm) in zip(candidate, reference):
            # Clipping: a candidate n-gram counts at most as much as it weighs in the reference.
            dot = sum(min(value, reference_vector.get(ngram, 0.0)) * reference_vector.get(ngram, 0.0)
                      for ngram, value in candidate_vector.items())
            # No n-grams of this order (or only idf-0 ones) on either side: cosine 0, as officially.
            if candidate_norm and reference_norm:
                total += dot / (candidate_norm * reference_norm) * penalty
        return total / 4

    per_image = {}
    for key in keys:
        candidate = tfidf_vectors(candidate_tokens[key])
        similarities = [similarity(candidate, tfidf_vectors(tokens), len(candidate_tokens[key]) - len(tokens))
                        for tokens in reference_tokens[key]]
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
        reference_length += min((len(reference) for reference in reference_tokens),
                                key=lambda length: (abs(length - len(tokens)), length))
    precisions = [(m + _BLEU_TINY) / (g + _BLEU_SMALL) for m, g in zip(matched, guessed)]
    score = math.prod(precisions) ** (1 / 4)
    length_ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    return score * math.exp(1 - 1 / length_ratio) if length_ratio < 1 else score


# --- VQA accuracy -------------------------------------------------------------------------------
# Tables of the official VQAv2 evaluation (vqaEval.py, current version: straight apostrophes,
# and "'" and ":" are not stripped).
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_VQA_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                     "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                    ">", "<", "@", "`", ",", "?", "!"]
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
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


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


# =============================================================================================
# Decoding: greedy and beam search, batched over the decoder's KV cache
# =============================================================================================
# Prompts are token-id lists of any lengths; the decoder pads them on the left, so every row ends
# in its last real token and all rows take their next token at the same step. Both decoders
# return the new token ids of every row, EOS excluded, like `PaLMDecoder.generate`.


@torch.no_grad()
def greedy_decode(model: VisionLanguageModel, pixels, prompts, max_new_tokens=32, eos_id=None, *,
                  features=None, pad_id=0):
    """The most likely token at every step. pixels (B, 3, H, W) or (B, T, 3, H, W), or None with
    features = the frozen encoder's patch features (B, ...) -> B lists of new token ids."""
    return model.generate(prompts, pixels, features, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)


@torch.no_grad()
def beam_search(model: VisionLanguageModel, pixels, prompts, beam_size=4, length_penalty=1.0, max_new_tokens=32,
                eos_id=None, *, features=None, pad_id=0):
    """Beam search conditioned on the images; inputs as `greedy_decode`, search as `beam_search_lm`."""
    prefix = model.visual_tokens(pixels, features)  # (B, P, D)
    return beam_search_lm(model.lm, prompts, prefix, beam_size, length_penalty, max_new_tokens, eos_id, pad_id)


def decode(model: VisionLanguageModel, pixels, prompts, beam_size=1, length_penalty=1.0, max_new_tokens=32,
           eos_id=None, *, features=None, pad_id=0):
    """Greedy for beam_size 1 (the evaluation default), beam search otherwise."""
    if beam_size == 1:
        return greedy_decode(model, pixels, prompts, max_new_tokens, eos_id, features=features, pad_id=pad_id)
    return beam_search(model, pixels, prompts, beam_size, length_penalty, max_new_tokens, eos_id,
                       features=features, pad_id=pad_id)


@dataclass
class FinishedHypotheses:
    """The hypotheses of one sample that have ended (EOS, or max_new_tokens): how many, and the best."""
    count: int = 0
    best_score: float = -math.inf
    best_tokens: list = field(default_factory=list)

    def add(self, tokens: list, log_prob: float, length: int, length_penalty: float) -> None:
        self.count += 1
        score = log_prob / length ** length_penalty
        if score > self.best_score:  # strict: of equal scores the earlier one stays, deterministically
            self.best_score, self.best_tokens = score, tokens


@torch.no_grad()
def beam_search_lm(lm, prompts, prefix=None, beam_size=4, length_penalty=1.0, max_new_tokens=32, eos_id=None,
                   pad_id=0):
    """Batched beam search with a `PaLMDecoder`: prompts (B lists of ids), prefix (B, P, D) or None.

    Each sample keeps beam_size running hypotheses, one cache row each. A hypothesis y is ranked
    by sum_t log p(y_t) / |y| ** length_penalty, |y| counting its EOS: the form Hugging Face uses
    (GNMT divides by ((5 + |y|) / 6) ** alpha instead). length_penalty 0 ranks by total log-prob,
    which favours short outputs; 1 (the default, as in HF) by mean log-prob per token.

    Stopping as in fairseq and HF's early_stopping=True: a hypothesis ends when EOS is among the
    step's beam_size best candidates, and a sample is done once beam_size hypotheses have ended;
    at max_new_tokens the running ones end too. The best ended hypothesis is returned. So
    beam_size 1 is exactly greedy decoding."""
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size}; expected at least 1")
    B, K = len(prompts), beam_size
    check_decode_length(lm, prompts, prefix, max_new_tokens)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    device = lm.token_embedding.weight.device
    input_ids, pad_lengths = left_pad(prompts, pad_id, device)
    logits, cache = lm.prefill(input_ids if input_ids.shape[1] else None, prefix, pad_lengths)  # (B, V)
    # The prefix and prompt of a sample are run once, then copied to its K beam rows.
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B * K,)
    cache.reorder(rows)
    logits = logits.index_select(0, rows)  # (B * K, V)
    # Only beam 0 starts alive: K identical beams would all propose the same K tokens.
    beam_scores = torch.full((B, K), -math.inf, device=device)
    beam_scores[:, 0] = 0.0
    tokens = torch.zeros(B, K, 0, dtype=torch.long)  # (B, K, step) on CPU, where hypotheses are kept
    finished = [FinishedHypotheses() for _ in range(B)]
    for step in range(max_new_tokens):
        vocab_size = logits.shape[-1]
        candidates = beam_scores[..., None] + F.log_softmax(logits.float(), dim=-1).view(B, K, vocab_size)
        # 2K candidates: at most K of them (one per beam) are EOS, so K others can carry on.
        top_scores, top_index = candidates.view(B, K * vocab_size).topk(min(2 * K, K * vocab_size), dim=1)
        scores, parents, next_tokens = select_beams(top_scores.tolist(), (top_index // vocab_size).tolist(),
                                                    (top_index % vocab_size).tolist(), tokens, finished, K, eos_id,
                                                    length_penalty, step)
        tokens = torch.cat([tokens.gather(1, parents[..., None].expand(-1, -1, step)), next_tokens[..., None]], dim=2)
        beam_scores = scores.to(device)
        if step == max_new_tokens - 1 or all(f.count >= K for f in finished):
            break
        cache.reorder((torch.arange(B)[:, None] * K + parents).view(-1).to(device))
        logits = lm.decode_step(next_tokens.view(-1).to(device), cache)
    for b, hypotheses in enumerate(finished):
        if hypotheses.count < K:  # stopped by max_new_tokens: the running beams end here
            for k, score in enumerate(beam_scores[b].tolist()):
                if score > -math.inf:
                    hypotheses.add(tokens[b, k].tolist(), score, tokens.shape[2], length_penalty)
    return [hypotheses.best_tokens for hypotheses in finished]


def select_beams(top_scores, top_beams, top_tokens, tokens, finished, K, eos_id, length_penalty, step):
    """One step's bookkeeping, per sample: the candidates come best first (B lists of 2K); an EOS
    among the first K ends its hypothesis, the first K others become the new beams.
    -> scores (B, K), parent beams (B, K), new tokens (B, K)."""
    scores, parents, new_tokens = [], [], []
    for b in range(len(top_scores)):
        done, beams = finished[b].count >= K, []
        for rank, (score, beam, token) in enumerate(zip(top_scores[b], top_beams[b], top_tokens[b])):
            if token == eos_id:
                # A done sample's rows keep running only to keep the batch rectangular: ignored.
                if rank < K and not done and score > -math.inf:
                    finished[b].add(tokens[b, beam].tolist(), score, step + 1, length_penalty)
            else:
                beams.append((score, beam, token))
                if len(beams) == K:
                    break
        scores.append([s for s, _, _ in beams])
        parents.append([p for _, p, _ in beams])
        new_tokens.append([t for _, _, t in beams])
    return torch.tensor(scores), torch.tensor(parents), torch.tensor(new_tokens)


def left_pad(prompts, pad_id, device):
    """B token-id lists -> (input_ids (B, L) padded on the left, pad_lengths (B,))."""
    lengths = [len(prompt) for prompt in prompts]
    input_ids = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, max(lengths) - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    return input_ids, max(lengths) - torch.tensor(lengths, device=device)


def check_decode_length(lm, prompts, prefix, max_new_tokens):
    """The checks of `PaLMDecoder.generate`, before any work: the last new token needs no slot."""
    prefix_len, longest = 0 if prefix is None else prefix.shape[1], max(len(prompt) for prompt in prompts)
    if prefix_len == 0 and min(len(prompt) for prompt in prompts) == 0:
        raise ValueError("every prompt needs at least one token when there is no prefix")
    if prefix_len + longest + max_new_tokens - 1 > lm.config.max_seq_len:
        raise ValueError(f"prefix {prefix_len} + longest prompt {longest} + max_new_tokens {max_new_tokens} - 1 "
                         f"exceeds max_seq_len={lm.config.max_seq_len}")


# =============================================================================================
# Evaluating a checkpoint on a data folder
# =============================================================================================
# Which files hold each task is `data.TASK_FILES` (the one table, shared with training): real
# COCO / VQAv2 files are evaluated by giving them those names in one folder. Scores are as the
# metric functions return them (CIDEr-D on pycocoevalcap's scale; papers print it times 100).

CAPTION_TASKS = ("caption", "video_caption")  # the others are question answering
SAMPLES_PER_TASK = 5  # predictions written to results.json next to the metrics, to read


@dataclass
class Decoding:
    beam_size: int = 1  # 1: greedy, the evaluation default
    length_penalty: float = 1.0  # beam search only, see beam_search_lm
    max_new_tokens: int = 32


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(checkpoint_path, device="cpu") -> tuple[VisionLanguageModel, dict]:
    """A stage-1 or stage-2 checkpoint -> (the model rebuilt from its spec, in eval mode; the checkpoint)."""
    checkpoint = load_checkpoint(str(checkpoint_path), expected_stage=("stage1", "stage2"))
    model = build_vlm(checkpoint["spec"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def load_tokenizer(model: VisionLanguageModel, tokenizer_path) -> data.Tokenizer:
    tokenizer = data.Tokenizer(tokenizer_path)
    if tokenizer.vocab_size != model.lm.config.vocab_size:
        raise ValueError(f"{tokenizer_path} has {tokenizer.vocab_size} pieces but the model's LM has vocab_size "
                         f"{model.lm.config.vocab_size}: give the tokenizer the run was trained with (--tokenizer)")
    return tokenizer


def prompt_ids(tokenizer: data.Tokenizer, prompt: str) -> list[int]:
    """[bos] + the prompt's tokens, exactly as `data.VisionTextDataset` builds training inputs."""
    return [tokenizer.bos_id] + (tokenizer.encode(prompt) if prompt else [])


def encode_once(model: VisionLanguageModel, paths: list, device) -> torch.Tensor:
    """Patch features of each row's image or frame folder, the ViT run once per distinct path
    (VQA has several questions per image): (B, N, Dv) or (B, T, N, Dv)."""
    distinct = list(dict.fromkeys(paths))
    image_size = model.vision.config.image_size
    pixels = torch.stack([data.load_pixels(path, image_size) for path in distinct]).to(device)
    features = model.encode_images(pixels)  # (distinct, ...)
    return features[[distinct.index(path) for path in paths]]


def generate_texts(model, tokenizer, paths: list, prompts: list[str], decoding: Decoding, device) -> list[str]:
    """The decoded text for each (image, text prompt) pair of a batch."""
    new_ids = decode(model, None, [prompt_ids(tokenizer, prompt) for prompt in prompts], decoding.beam_size,
                     decoding.length_penalty, decoding.max_new_tokens, tokenizer.eos_id,
                     features=encode_once(model, paths, device), pad_id=tokenizer.pad_id)
    return [tokenizer.decode(ids) for ids in new_ids]


def batches(items: list, batch_size: int):
    return [items[start:start + batch_size] for start in range(0, len(items), batch_size)]


@torch.no_grad()
def evaluate_captions(model, tokenizer, annotations: data.Annotations, decoding: Decoding, limit=None,
                      batch_size=32, device="cpu", description="caption") -> tuple[dict, list]:
    """One caption per image, scored against all of its reference captions -> (metrics, samples)."""
    image_ids = sorted(annotations.references)[:limit]
    predictions = {}
    for batch in tqdm(batches(image_ids, batch_size), desc=description, leave=False):
        texts = generate_texts(model, tokenizer, [annotations.images[i] for i in batch], [""] * len(batch), decoding, device)
        predictions.update(zip(batch, texts))
    references = {image_id: annotations.references[image_id] for image_id in image_ids}
    metrics = {"cider_d": cider_d(predictions, references)[0], "bleu4": bleu4(predictions, references),
               "images": len(image_ids)}
    samples = [{"image_id": i, "file_name": str(annotations.images[i]), "prediction": predictions[i],
                "references": references[i]} for i in image_ids[:SAMPLES_PER_TASK]]
    return metrics, samples


@torch.no_grad()
def evaluate_vqa(model, tokenizer, annotations: data.Annotations, decoding: Decoding, limit=None,
                 batch_size=32, device="cpu", description="vqa") -> tuple[dict, list]:
    """VQA accuracy, the mean over questions -> (metrics, samples)."""
    # Questions of one image side by side, so that a batch encodes each image once.
    examples = sorted(annotations.examples, key=lambda e: (e.image_id, e.question_id))[:limit]
    predictions = []
    for batch in tqdm(batches(examples, batch_size), desc=description, leave=False):
        predictions += generate_texts(model, tokenizer, [e.path for e in batch], [e.prompt for e in batch], decoding, device)
    accuracies = [vqa_accuracy(prediction, annotations.references[e.question_id])
                  for prediction, e in zip(predictions, examples)]
    metrics = {"vqa_accuracy": sum(accuracies) / len(accuracies), "questions": len(examples)}
    samples = [{"question_id": e.question_id, "image_id": e.image_id, "file_name": str(e.path), "prompt": e.prompt,
                "prediction": prediction, "accuracy": accuracy, "answers": annotations.references[e.question_id]}
               for e, prediction, accuracy in list(zip(examples, predictions, accuracies))[:SAMPLES_PER_TASK]]
    return metrics, samples


def evaluate_checkpoint(checkpoint_path, data_dir, split, tasks=None, limit=None, beam=1, batch_size=32, *,
                        tokenizer_path=None, length_penalty=1.0, max_new_tokens=32, device="auto") -> dict:
    """Decode every task of the split present in data_dir (or `tasks`) and score it.

    limit: at most this many images (captioning) or questions (VQA) per task, the first by id.
    Returns what results.json holds: metrics and sample predictions per task, the stage, step,
    spec and training config of the checkpoint, and how it was decoded."""
    device = pick_device(device)
    model, checkpoint = load_model(checkpoint_path, device)
    tokenizer_path = tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE
    tokenizer = load_tokenizer(model, tokenizer_path)
    present = data.available_tasks(data_dir, split)
    tasks = list(tasks or present)
    if not tasks or set(tasks) - set(present):
        raise data.DataError(f"{data_dir}: no files for task(s) {sorted(set(tasks) - set(present)) or 'any'} of "
                             f"split {split!r}; the task files are {data.TASK_FILES}")
    decoding = Decoding(beam, length_penalty, max_new_tokens)
    results = {"checkpoint": str(checkpoint_path), "stage": checkpoint["stage"], "step": checkpoint.get("step"),
               "data": str(data_dir), "split": split, "tokenizer": str(tokenizer_path),
               "decoding": {**vars(decoding), "prompts": {"caption": "[bos]", "vqa": "[bos] " + data.vqa_prompt("{question}")}},
               "spec": checkpoint["spec"], "train_config": checkpoint.get("train_config"), "metrics": {}, "samples": {}}
    for task in tasks:
        evaluate_task = evaluate_captions if task in CAPTION_TASKS else evaluate_vqa
        results["metrics"][task], results["samples"][task] = evaluate_task(
            model, tokenizer, data.read_task(data_dir, task, split), decoding, limit, batch_size, device, task)
    return results


def caption_one(checkpoint_path, path, tokenizer_path, question=None, decoding: Decoding | None = None,
                device="auto") -> str:
    """The caption of one image file or frame folder, or the answer to `question` about it."""
    device = pick_device(device)
    model, _ = load_model(checkpoint_path, device)
    tokenizer = load_tokenizer(model, tokenizer_path)
    prompt = data.vqa_prompt(question) if question else ""
    with torch.no_grad():
        return generate_texts(model, tokenizer, [Path(path)], [prompt], decoding or Decoding(), device)[0]


def write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2, default=str))
    os.replace(temporary, path)


def default_results_path(checkpoint_path, split: str) -> Path:
    """results_<split>.json in the run folder, next to the checkpoint it scores."""
    run_folder = Path(checkpoint_path) if Path(checkpoint_path).is_dir() else Path(checkpoint_path).parent
    return run_folder / f"results_{split}.json"


def print_metrics(results: dict) -> None:
    for task, metrics in results["metrics"].items():
        print(f"{task:<14} " + "  ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                                          for name, value in metrics.items()))


# =============================================================================================
# Comparing adapters: the paper's table at our scale, and the validation-loss curves
# =============================================================================================


def run_name(spec: dict) -> str:
    if spec["adapter"] == "vadapter":
        return f"vadapter ({spec.get('adapter_init') or 'stage1'})"
    if spec["adapter"] == "perceiver":
        return f"perceiver (depth {spec['resampler']['depth']})"
    return spec["adapter"]


def validation_curve(run_dir) -> list[tuple[int, float]]:
    """(step, validation loss) pairs from a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["val_loss"]) for record in map(json.loads, lines) if "val_loss" in record]


def steps_to_reach(curve: list[tuple[int, float]], target: float):
    """The first step whose validation loss is at or below target (None if never)."""
    return next((step for step, loss in curve if loss <= target), None)


def compare_runs(run_dirs: list, data_dir, split="test", baseline=None, limit=None, batch_size=32) -> list[dict]:
    """One row per stage-2 run: adapter, trainable parameters, final validation loss, steps to reach
    the baseline's final validation loss, and the test metrics of every task. The baseline is
    `baseline` or the first perceiver run."""
    rows = []
    for run_dir in run_dirs:
        model, checkpoint = load_model(run_dir)
        results = evaluate_checkpoint(run_dir, data_dir, split, limit=limit or None, batch_size=batch_size)
        curve = validation_curve(run_dir)
        rows.append({"run": str(run_dir), "adapter": run_name(checkpoint["spec"]), "step": checkpoint["step"],
                     "trainable_parameters": model.num_trainable_parameters(), "curve": curve,
                     "final_val_loss": curve[-1][1], "metrics": results["metrics"], "samples": results["samples"]})
    reference = next((row for row in rows if row["run"] == str(baseline) or (baseline is None and row["adapter"].startswith("perceiver"))), rows[0])
    for row in rows:
        row["steps_to_baseline_final_loss"] = steps_to_reach(row["curve"], reference["final_val_loss"])
        row["baseline"] = reference["adapter"]
    return rows


def comparison_table(rows: list[dict]) -> str:
    """Markdown, like the paper's comparison: one row per adapter."""
    columns = [("caption", "cider_d", "CIDEr-D"), ("vqa", "vqa_accuracy", "VQA acc"),
               ("video_caption", "cider_d", "video CIDEr-D"), ("video_vqa", "vqa_accuracy", "video VQA acc")]
    columns = [c for c in columns if any(c[0] in row["metrics"] for row in rows)]
    header = ["adapter", "trainable params", "val loss", f"steps to {rows[0]['baseline']}'s final val loss"]
    lines = ["| " + " | ".join(header + [title for *_, title in columns]) + " |", "|" + "---|" * (len(header) + len(columns))]
    for row in rows:
        reached = row["steps_to_baseline_final_loss"]
        cells = [row["adapter"], f"{row['trainable_parameters']:,}", f"{row['final_val_loss']:.4f}",
                 f"{reached} of {row['step']}" if reached is not None else f"not reached in {row['step']}"]
        cells += [f"{row['metrics'][task][metric]:.3f}" if task in row["metrics"] else "-" for task, metric, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path, size=(720, 440)) -> None:
    """Validation loss against step for every run, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 20, 60
    steps = [step for row in rows for step, _ in row["curve"]]
    losses = [loss for row in rows for _, loss in row["curve"]]
    low, high = min(losses), max(losses)
    x = lambda step: left + (width - left - right) * step / max(steps)
    y = lambda loss: top + (height - top - bottom) * (high - loss) / max(high - low, 1e-9)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for fraction in (0, 0.5, 1):
        loss, step = high - fraction * (high - low), fraction * max(steps)
        draw.text((4, y(loss) - 6), f"{loss:.3f}", fill="black")
        draw.text((x(step) - 10, height - bottom + 6), f"{step:.0f}", fill="black")
    draw.text((width // 2 - 60, height - 24), "step (validation loss)", fill="black")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for index, row in enumerate(rows):
        colour = colours[index % len(colours)]
        points = [(x(step), y(loss)) for step, loss in row["curve"]]
        draw.line(points, fill=colour, width=2) if len(points) > 1 else None
        draw.text((width - right - 220, top + 16 * index), row["adapter"], fill=colour)
    image.save(path)


@torch.no_grad()
def image_reliance(checkpoint_path, data_dir, split="val", limit=128, batch_size=32, tokenizer_path=None) -> dict:
    """Caption loss on `limit` image captions of the split with the true images, with the images
    blanked (all zeros) and with the images shuffled across the batch: how much the model reads
    its visual tokens. Equal losses mean the visual path carries nothing."""
    model, _ = load_model(checkpoint_path)
    tokenizer = load_tokenizer(model, tokenizer_path or Path(data_dir) / data.TOKENIZER_FILE)
    dataset = data.task_datasets(data_dir, split, tokenizer, model.vision.config.image_size, ["caption"])[0]
    step = max(1, len(dataset) // limit)  # spread over the split: one caption of many images
    samples = [dataset[i] for i in range(0, len(dataset), step)][:limit]
    totals = {"real": [0.0, 0], "blanked": [0.0, 0], "shuffled": [0.0, 0]}
    generator = torch.Generator().manual_seed(0)
    for chunk in batches(samples, batch_size):
        batch = data.collate(chunk, tokenizer.pad_id)
        pixels = batch["pixels"]
        variants = {"real": pixels, "blanked": torch.zeros_like(pixels),
                    "shuffled": pixels[torch.randperm(len(pixels), generator=generator)]}
        for name, variant in variants.items():
            _, loss_sum = model(batch["input_ids"], batch["loss_mask"], pixels=variant, reduction="sum")
            totals[name][0] += loss_sum.item()
            totals[name][1] += int(batch["loss_mask"].sum())
    return {name: loss / count for name, (loss, count) in totals.items()}


def write_comparison(rows: list[dict], out_dir) -> str:
    """results.json, table.md, val_loss.csv and val_loss.png in out_dir; returns the table."""
    out_dir = Path(out_dir)
    table = comparison_table(rows)
    write_json_atomically(out_dir / "results.json", {"runs": rows})
    (out_dir / "table.md").write_text(table + "\n")
    with open(out_dir / "val_loss.csv", "w") as f:
        f.write("adapter,step,val_loss\n")
        f.writelines(f"{row['adapter']},{step},{loss:.6f}\n" for row in rows for step, loss in row["curve"])
    plot_curves(rows, out_dir / "val_loss.png")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    checkpoint = commands.add_parser("checkpoint", help="score a stage-1/2 checkpoint on every task of a split")
    checkpoint.add_argument("checkpoint_path", metavar="RUN_DIR_OR_FILE")
    checkpoint.add_argument("--data", required=True, help="data folder (python data.py --out DIR, or real files)")
    checkpoint.add_argument("--split", default="val")
    checkpoint.add_argument("--tasks", help=f"comma-separated, from {list(data.TASK_FILES)} (default: all in DATA)")
    checkpoint.add_argument("--limit", type=int, help="at most N images (captions) / questions (VQA) per task")
    checkpoint.add_argument("--batch-size", type=int, default=32)
    checkpoint.add_argument("--out", type=Path, help="results JSON (default: RUN_DIR/results_<split>.json)")
    one = commands.add_parser("caption", help="caption (or answer about) one image file or frame folder")
    one.add_argument("path", metavar="IMAGE_OR_FRAME_FOLDER")
    one.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE")
    one.add_argument("--question", help="answer this question instead of captioning")
    one.add_argument("--data", help=f"data folder whose {data.TOKENIZER_FILE} to use (or give --tokenizer)")
    compare = commands.add_parser("compare", help="the paper's comparison table for several stage-2 runs")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--data", required=True)
    compare.add_argument("--split", default="test")
    compare.add_argument("--baseline", help="run whose final validation loss the others race to (default: first perceiver)")
    compare.add_argument("--limit", type=int, help="at most N images / questions per task (0 or none: all)")
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument("--out", type=Path, required=True, help="folder for results.json, table.md, val_loss.csv/.png")
    reliance = commands.add_parser("reliance", help="caption loss with true, blanked and shuffled images")
    reliance.add_argument("runs", nargs="+", metavar="RUN_DIR")
    reliance.add_argument("--data", required=True)
    reliance.add_argument("--split", default="val")
    reliance.add_argument("--limit", type=int, default=128, help="captions, one per image, spread over the split")
    reliance.add_argument("--tokenizer")
    for command in (checkpoint, one):
        command.add_argument("--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})")
        command.add_argument("--beam", type=int, default=1, help="beam size; 1 = greedy (default)")
        command.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
        command.add_argument("--max-new-tokens", type=int, default=32)
        command.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args(argv)
    if args.command == "caption":
        if not (args.tokenizer or args.data):
            parser.error("caption needs --tokenizer PATH or --data DIR (for DIR/tokenizer.model)")
        decoding = Decoding(args.beam, args.length_penalty, args.max_new_tokens)
        print(caption_one(args.checkpoint, args.path, args.tokenizer or Path(args.data) / data.TOKENIZER_FILE,
                          args.question, decoding, args.device))
        return
    if args.command == "reliance":
        for run in args.runs:
            losses = image_reliance(run, args.data, args.split, args.limit, tokenizer_path=args.tokenizer)
            print(f"{run}: caption loss " + ", ".join(f"{name} images {loss:.4f}" for name, loss in losses.items()))
        return
    if args.command == "compare":
        rows = compare_runs(args.runs, args.data, args.split, args.baseline, args.limit, args.batch_size)
        print(write_comparison(rows, args.out))
        print(f"wrote {args.out}/results.json, table.md, val_loss.csv, val_loss.png")
        return
    results = evaluate_checkpoint(args.checkpoint_path, args.data, args.split,
                                  args.tasks.split(",") if args.tasks else None, args.limit, args.beam, args.batch_size,
                                  tokenizer_path=args.tokenizer, length_penalty=args.length_penalty,
                                  max_new_tokens=args.max_new_tokens, device=args.device)
    out = args.out or default_results_path(args.checkpoint_path, args.split)
    write_json_atomically(out, results)
    print_metrics(results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

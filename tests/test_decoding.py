"""decoding.py: greedy and beam search over the KV cache, batched. Toy models from build_vlm with
random weights: decoding is checked against itself (batched vs alone, beam 1 vs greedy) and
against brute force."""

import itertools

import pytest
import torch

from conftest import toy_spec
from evaluation import decoding
from support.model_spec import build_vlm

pytestmark = pytest.mark.usefixtures("one_thread")
BOS = 2
PROMPTS = [[BOS, 7, 8, 9], [BOS], [BOS, 5]]  # different lengths: the batch is left-padded
# the visual tokens inside each prompt (the paper's layout), row 1 after all of it
VISUAL_AT = [
    2,
    1,
    1,
]


def toy_model(vocab_size=50, seed=0):
    """Random weights, made larger than at init: with init-scale weights and tied embeddings a
    random LM repeats its last token forever, which would make every decoder look alike."""
    torch.manual_seed(seed)
    model = build_vlm(toy_spec(vocab_size=vocab_size, vision_dim=32, lm_dim=32, image_size=16))
    with torch.no_grad():
        for name, parameter in model.lm.named_parameters():
            if parameter.dim() == 2:
                parameter.mul_(3 if name == "token_embedding.weight" else 10)
    return model


def toy_pixels(batch, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def eos_in_the_middle(model, pixels):
    """A token greedy decoding emits at step 3 of sample 0: used as EOS, rows end at different
    steps."""
    return decoding.greedy_decode(model, pixels, PROMPTS, max_new_tokens=12)[0][3]


def sequence_scores(
    model, pixels, prompt, continuations, eos_id, length_penalty, max_new_tokens, visual_start=None
):
    """Length-penalised log-prob of each continuation, by a plain forward pass (no cache): one
    shorter than max_new_tokens ended with EOS, which is scored and counted in its length."""
    targets = [c + [eos_id] if len(c) < max_new_tokens else c for c in continuations]
    longest = max(map(len, targets))
    input_ids = torch.tensor([prompt + t + [0] * (longest - len(t)) for t in targets])  # (N, L)
    # (N, L, V)
    logits, _ = model(
        input_ids, pixels=pixels.expand(len(targets), *pixels.shape[1:]), visual_start=visual_start
    )
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    scores = []
    for row, target in enumerate(targets):
        # logits[:, i] predicts token i + 1: the first new token comes from the last prompt slot.
        picked = log_probs[row, len(prompt) - 1 + torch.arange(len(target)), target]
        scores.append(picked.sum().item() / len(target) ** length_penalty)
    return scores


def eos_second_at_first(model, pixels):
    """The runner-up for sample 0's first token: an EOS that a beam of one must not take."""
    logits, _ = model(torch.tensor([PROMPTS[0]]), pixels=pixels[:1])  # (1, L, V)
    return logits[0, -1].topk(2).indices[1].item()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("pick_eos", [eos_in_the_middle, eos_second_at_first])
def test_beam_of_one_is_greedy(length_penalty, pick_eos):
    model, pixels = toy_model(seed=1), toy_pixels(3, seed=1)
    eos = pick_eos(model, pixels)
    greedy = decoding.greedy_decode(model, pixels, PROMPTS, max_new_tokens=12, eos_id=eos)
    assert decoding.beam_search(model, pixels, PROMPTS, 1, length_penalty, 12, eos) == greedy
    assert (
        decoding.decode(model, pixels, PROMPTS, beam_size=1, max_new_tokens=12, eos_id=eos)
        == greedy
    )
    if pick_eos is eos_in_the_middle:
        assert any(len(row) < 12 for row in greedy) and any(eos not in row for row in greedy)


def test_every_ended_hypothesis_carries_its_log_prob(monkeypatch):
    """The score beam search accumulates through the cache (copied, reordered, extended) is the
    log-prob a plain forward pass gives the same tokens, for every hypothesis it ends."""
    model, pixels = toy_model(seed=5), toy_pixels(3, seed=5)
    eos = eos_in_the_middle(model, pixels)
    ended = []
    add = decoding.FinishedHypotheses.add
    monkeypatch.setattr(
        decoding.FinishedHypotheses,
        "add",
        lambda self, *args: (ended.append(args[:3]), add(self, *args))[1],
    )
    for b, prompt in enumerate(PROMPTS):
        ended.clear()
        decoding.beam_search(model, pixels[b : b + 1], [prompt], 4, 1.0, 12, eos)
        assert len(ended) >= 4
        expected = sequence_scores(
            model, pixels[b : b + 1], prompt, [tokens for tokens, _, _ in ended], eos, 0.0, 12
        )
        for (tokens, log_prob, length), score in zip(ended, expected):
            assert length == len(tokens) + (len(tokens) < 12)  # EOS counts in the length
            assert log_prob == pytest.approx(score, abs=1e-3)


@pytest.mark.parametrize("beam_size", [None, 3])  # None: greedy
@pytest.mark.parametrize("visual_start", [None, VISUAL_AT])
def test_batched_decoding_equals_decoding_one_by_one(beam_size, visual_start):
    # a seed whose rows end at different steps
    model, pixels = (
        toy_model(seed=4),
        toy_pixels(3, seed=4),
    )
    eos = eos_in_the_middle(model, pixels)

    def decode(pixels, prompts, features=None, visual_start=visual_start):
        if beam_size is None:
            return decoding.greedy_decode(
                model, pixels, prompts, 12, eos, features=features, visual_start=visual_start
            )
        return decoding.beam_search(
            model,
            pixels,
            prompts,
            beam_size,
            1.0,
            12,
            eos,
            features=features,
            visual_start=visual_start,
        )

    batched = decode(pixels, PROMPTS)
    assert batched == [
        decode(
            pixels[b : b + 1],
            [prompt],
            visual_start=None if visual_start is None else [visual_start[b]],
        )[0]
        for b, prompt in enumerate(PROMPTS)
    ]
    assert len({len(row) for row in batched}) > 1  # rows ended at different steps
    # Precomputed patch features decode as the pixels they came from.
    assert decode(None, PROMPTS, features=model.encode_images(pixels)) == batched


@pytest.mark.parametrize(
    "length_penalty,visual_start", [(0.0, None), (0.7, [1, 1, 2]), (2.0, [2, 0, 1])]
)
def test_beam_as_wide_as_the_search_space_finds_the_best_sequence(length_penalty, visual_start):
    """Vocabulary 5, 3 new tokens: 85 possible outputs, and a beam of 80 never prunes one (16
    beams x 5 tokens at the last step). So beam search must return the brute-force best, which
    checks the scores, the length penalty, EOS and the bookkeeping at once; and it must score at
    least as high as greedy. (A narrow beam can score below greedy: beam search may prune the
    greedy path. Exactness holds only for a beam this wide.)"""
    model, pixels, eos, steps = toy_model(vocab_size=5, seed=3), toy_pixels(3, seed=3), 3, 3
    prompts = [[BOS, 4, 0], [BOS], [BOS, 1]]
    beam = decoding.beam_search(
        model, pixels, prompts, 80, length_penalty, steps, eos, visual_start=visual_start
    )
    greedy = decoding.greedy_decode(model, pixels, prompts, steps, eos, visual_start=visual_start)
    tokens = [t for t in range(5) if t != eos]
    # 85
    everything = [list(c) for n in range(steps + 1) for c in itertools.product(tokens, repeat=n)]
    for b, prompt in enumerate(prompts):
        scores = sequence_scores(
            model,
            pixels[b : b + 1],
            prompt,
            everything,
            eos,
            length_penalty,
            steps,
            None if visual_start is None else visual_start[b],
        )
        best = everything[max(range(len(everything)), key=scores.__getitem__)]
        assert beam[b] == best
        greedy_score = scores[everything.index(greedy[b])]
        assert scores[everything.index(beam[b])] >= greedy_score


def test_wider_beams_mostly_beat_greedy():
    """The property check on random models: a beam of 4 scores at least as high as greedy in
    nearly all cases, by more than rounding in some (if beam search ignored its beams, it would
    simply be greedy). Not in all cases: beam search may prune the greedy path (see above)."""
    wins = ties = 0
    for seed in range(4):
        model, pixels = toy_model(seed=10 + seed), toy_pixels(3, seed=10 + seed)
        eos = eos_in_the_middle(model, pixels)
        beam = decoding.beam_search(model, pixels, PROMPTS, 4, 1.0, 12, eos)
        greedy = decoding.greedy_decode(model, pixels, PROMPTS, 12, eos)
        for b, prompt in enumerate(PROMPTS):
            beam_score, greedy_score = sequence_scores(
                model, pixels[b : b + 1], prompt, [beam[b], greedy[b]], eos, 1.0, 12
            )
            wins += beam_score > greedy_score + 1e-6
            ties += abs(beam_score - greedy_score) <= 1e-6
    assert wins >= 6 and wins + ties >= 10  # of 12


def test_eos_ends_hypotheses():
    model, pixels = toy_model(seed=4), toy_pixels(3, seed=4)
    free = decoding.greedy_decode(model, pixels, PROMPTS, max_new_tokens=8)
    eos = free[0][0]
    # Greedy stops at the first EOS and leaves it out.
    stopped = decoding.greedy_decode(model, pixels, PROMPTS, max_new_tokens=8, eos_id=eos)
    assert stopped == [row[: row.index(eos)] if eos in row else row for row in free]
    # Beam search with length_penalty 0 ranks by total log-prob, which only falls as a hypothesis
    # grows: sample 0 takes EOS first, so its empty output beats every longer one, while the other
    # rows of the batch carry on.
    beam = decoding.beam_search(model, pixels, PROMPTS, 3, 0.0, 8, eos)
    assert beam[0] == [] and all(eos not in row for row in beam) and any(beam[1:])
    # Without eos_id every hypothesis runs to max_new_tokens.
    assert all(
        len(row) == 8 for row in decoding.beam_search(model, pixels, PROMPTS, 3, 1.0, 8, None)
    )


def test_bad_decoding_arguments_raise():
    model, pixels = toy_model(), toy_pixels(3)
    with pytest.raises(ValueError, match="beam_size"):
        decoding.beam_search(model, pixels, PROMPTS, 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        decoding.beam_search(model, pixels, PROMPTS, 2, max_new_tokens=200)
    assert decoding.beam_search(model, pixels, PROMPTS, 2, max_new_tokens=0) == [[], [], []]

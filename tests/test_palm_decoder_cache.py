"""palm_decoder.py with visual tokens and the KV cache: prefix attention (causal or
bidirectional), a visual span inside the text, and left-padded prefill, cached decoding and
generation, each equal to recomputing the whole sequence."""

import pytest
import torch
import torch.nn.functional as F
from small_palm import SMALL, small_model

from evaluation.decoding import KVCache, decode_step, generate, prefill

# --------------------------------------------------------------------------- prefix attention


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_prefix_attention(mode):
    model = small_model(prefix_attention=mode)
    torch.manual_seed(2)
    ids, prefix = torch.randint(0, 50, (2, 5)), torch.randn(2, 4, 32)
    hidden = model(ids, prefix, return_hidden=True)
    changed_prefix = prefix.clone()
    changed_prefix[:, -1] = torch.randn(2, 32)  # not a constant shift: LayerNorm would remove it
    changed = model(ids, changed_prefix, return_hidden=True)
    earlier_prefix_same = torch.allclose(hidden[:, :3], changed[:, :3], atol=1e-6)
    assert earlier_prefix_same == (mode == "causal")
    changed_ids = ids.clone()
    changed_ids[:, -1] = (ids[:, -1] + 1) % 50
    later = model(changed_ids, prefix, return_hidden=True)
    assert torch.allclose(hidden[:, :-1], later[:, :-1], atol=1e-6)  # text never sees future text
    changed_ids[:, 0] = (ids[:, 0] + 1) % 50
    first_changed = model(changed_ids, prefix, return_hidden=True)
    # the prefix never sees the text
    assert torch.allclose(hidden[:, :4], first_changed[:, :4], atol=1e-6)


# --------------------------------------------------------------------------- the visual span inside
# the text


def test_a_span_inside_the_text_equals_the_hand_built_sequence():
    """[text before][prefix][text after] built by hand and run as one plain embedding sequence:
    the same hidden states, logits and loss, for a span inside, before and after the text."""
    model, at_rows = small_model(), [2, 0, 5]
    torch.manual_seed(6)
    ids, prefix = torch.randint(0, 50, (3, 5)), torch.randn(3, 4, 32)
    loss_mask = torch.rand(3, 5) > 0.3
    # only row 1 has a slot (the prefix) before token 0
    loss_mask[:, 0] = torch.tensor([False, True, False])
    loss_mask[0, 2] = True  # the token right after the span: predicted from the last prefix slot
    logits, loss = model(ids, prefix, loss_mask, visual_start=torch.tensor(at_rows))
    hidden = model(ids, prefix, visual_start=torch.tensor(at_rows), return_hidden=True)
    text, terms = model.embed_tokens(ids), []
    for b, at in enumerate(at_rows):
        alone = model(
            prefix=torch.cat([text[b, :at], prefix[b], text[b, at:]])[None], return_hidden=True
        )[0]  # (9, D)
        assert torch.allclose(hidden[b], alone, atol=1e-5)
        every_logit = model.logits(alone)  # (9, V)
        # where each text token sits (and one past)
        slots = [i if i < at else i + 4 for i in range(5)] + [9]
        for i in range(5):
            # predicts token i + 1
            assert torch.allclose(logits[b, i], every_logit[slots[i + 1] - 1], atol=1e-5)
            if loss_mask[b, i]:
                terms.append(F.cross_entropy(every_logit[slots[i] - 1], ids[b, i]))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    loss_mask[0, 0] = True
    with pytest.raises(ValueError, match="no slot comes before token 0"):
        model(ids, prefix, loss_mask, visual_start=torch.tensor(at_rows))


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_bidirectional_attention_stays_inside_the_span(mode):
    model = small_model(prefix_attention=mode)
    torch.manual_seed(7)
    ids, prefix = torch.randint(0, 50, (2, 5)), torch.randn(2, 4, 32)
    # slots: text 0-1, prefix 2-5, text 6-8
    hidden = model(ids, prefix, visual_start=2, return_hidden=True)
    changed_prefix = prefix.clone()
    changed_prefix[:, -1] = torch.randn(2, 32)
    changed = model(ids, changed_prefix, visual_start=2, return_hidden=True)
    # the text before never sees the span
    assert torch.allclose(hidden[:, :2], changed[:, :2], atol=1e-6)
    assert torch.allclose(hidden[:, 2:5], changed[:, 2:5], atol=1e-6) == (mode == "causal")
    changed_ids = ids.clone()
    changed_ids[:, 2] = (ids[:, 2] + 1) % 50  # the first token after the span
    later = model(changed_ids, prefix, visual_start=2, return_hidden=True)
    assert torch.allclose(hidden[:, :6], later[:, :6], atol=1e-6)  # nothing before it sees it


# --------------------------------------------------------------------------- padding, cache,
# generation


PROMPTS = [[7, 3, 9, 1, 4], [2], [5, 5, 8]]


def left_pad(prompts, pad_id=0):
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts])
    return ids, torch.tensor([longest - len(p) for p in prompts])


# the visual tokens before the prompt, or inside it (row 2: after all of it)
SPANS = [
    None,
    [2, 1, 3],
]


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("span", SPANS)
def test_left_padded_prefill_equals_each_sample_alone(mode, backend, span):
    model = small_model(prefix_attention=mode, attention_backend=backend)
    prefix = torch.randn(3, 4, 32)
    ids, pads = left_pad(PROMPTS, pad_id=11)
    logits, cache = prefill(model, ids, prefix, pads, span)
    for b, prompt in enumerate(PROMPTS):
        at = None if span is None else span[b]
        alone_logits, alone_cache = prefill(
            model, torch.tensor([prompt]), prefix[b : b + 1], visual_start=at
        )
        assert torch.allclose(logits[b], alone_logits[0], atol=1e-5)
        assert torch.allclose(
            logits[b],
            model(torch.tensor([prompt]), prefix[b : b + 1], visual_start=at)[0][0, -1],
            atol=1e-5,
        )
        for layer in range(SMALL.depth):  # every real slot's keys and values, at every layer
            assert torch.allclose(
                cache.keys[layer][b, :, pads[b] :], alone_cache.keys[layer][0], atol=1e-5
            )
            assert torch.allclose(
                cache.values[layer][b, :, pads[b] :], alone_cache.values[layer][0], atol=1e-5
            )


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
@pytest.mark.parametrize("span", SPANS)
def test_cached_decoding_equals_recomputing(mode, span):
    model = small_model(seed=3, prefix_attention=mode)
    prefix = torch.randn(3, 4, 32)
    ids, pads = left_pad(PROMPTS)
    logits, cache = prefill(model, ids, prefix, pads, span)
    for _ in range(6):
        token = logits.argmax(-1)
        ids = torch.cat([ids, token[:, None]], dim=1)
        logits = decode_step(model, token, cache)
        # no cache: the whole sequence again
        recomputed, _ = prefill(model, ids, prefix, pads, span)
        assert torch.allclose(logits, recomputed, atol=1e-4)
        assert torch.equal(logits.argmax(-1), recomputed.argmax(-1))
        for b, prompt in enumerate(PROMPTS):  # and each sample alone, unpadded, through forward
            alone, _ = model(
                ids[b : b + 1, pads[b] :],
                prefix[b : b + 1],
                visual_start=None if span is None else span[b],
            )
            assert torch.allclose(logits[b], alone[0, -1], atol=1e-4)
    assert cache.length == 4 + ids.shape[1]  # prefix + every token fed so far


@pytest.mark.parametrize("span", SPANS)
def test_batched_generate_equals_generating_alone(span):
    model = small_model(seed=4, prefix_attention="bidirectional")
    prefix = torch.randn(3, 4, 32)
    batched = generate(model, PROMPTS, prefix, max_new_tokens=8, visual_start=span)
    for b, prompt in enumerate(PROMPTS):
        alone = generate(
            model,
            [prompt],
            prefix[b : b + 1],
            max_new_tokens=8,
            visual_start=None if span is None else [span[b]],
        )
        assert batched[b] == alone[0]
    assert all(len(row) == 8 for row in batched)
    # captioning: no prompt at all
    only_prefix = generate(model, [[], [], []], prefix, max_new_tokens=3)
    first_tokens = model.logits(model(prefix=prefix, return_hidden=True)[:, -1]).argmax(-1)
    assert [row[0] for row in only_prefix] == first_tokens.tolist()


def test_generate_stops_at_eos_and_samples_reproducibly():
    model = small_model(seed=5)
    greedy = generate(model, [[1, 2, 3]], max_new_tokens=10)[0]
    eos = greedy[3]
    stopped = generate(model, [[1, 2, 3]], max_new_tokens=10, eos_id=eos)[0]
    assert stopped == greedy[: greedy.index(eos)]

    def sample(seed, **kwargs):
        return generate(
            model,
            PROMPTS,
            max_new_tokens=6,
            temperature=1.0,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )

    assert sample(0) == sample(0)
    top_1 = sample(1, top_k=1)
    assert top_1 == generate(model, PROMPTS, max_new_tokens=6)  # top-1 sampling is greedy


def test_cache_reorder():
    model = small_model()
    ids, pads = left_pad(PROMPTS)
    _, cache = prefill(model, ids, None, pads)
    keys = [k.clone() for k in cache.keys]
    cache.reorder(torch.tensor([2, 2, 0]))
    assert isinstance(cache, KVCache) and torch.equal(cache.pad_lengths, pads[[2, 2, 0]])
    assert torch.equal(cache.keys[1], keys[1][[2, 2, 0]])
    next_logits = decode_step(model, torch.tensor([6, 6, 6]), cache)
    assert torch.allclose(next_logits[0], next_logits[1], atol=1e-6)
    alone, _ = model(torch.tensor([PROMPTS[0] + [6]]))
    assert torch.allclose(next_logits[2], alone[0, -1], atol=1e-5)

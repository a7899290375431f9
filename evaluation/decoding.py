"""Decoding: how Figure 2's LM decoder turns visual tokens and a prompt into text.

Batched greedy decoding and beam search over a step API built from the decoder's parts (`prefill`
runs the visual tokens and prompts once into a KV cache, `decode_step` appends one token per
row), as gpt-fast keeps generation apart from the model. Evaluation decodes greedily unless told
otherwise (`Decoding`), so the same checkpoint always gives the same numbers.

Prompts are token-id lists of any lengths; they are padded on the left (`left_pad`),
so every row ends in its last real token and all rows take their next token at the same step.
The visual tokens sit inside each prompt, before its position visual_start (the paper's
"Describe the following: <visual tokens> :", built by data.prompt_ids).
Both decoders return the new token ids of every row, EOS excluded, like `generate`.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from palm_decoder import PaLMDecoder
from vlm import VisionLanguageModel


@dataclass
class KVCache:
    """Keys and values of every layer for a left-padded batch; grows by one slot per decode step.

    Beam search keeps one row per beam and calls `reorder` after choosing the surviving beams."""

    keys: list  # per layer (B, Hkv, S, Dh), rotary already applied
    values: list  # per layer (B, Hkv, S, Dh)
    pad_lengths: torch.Tensor  # (B,) padding slots at the start of each row
    prefix_len: int  # visual-token slots
    visual_start: torch.Tensor  # (B,) the slot where each row's visual tokens start

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def reorder(self, indices: torch.Tensor) -> None:
        """Row b becomes old row indices[b]. indices (B_new,) long."""
        self.keys = [k.index_select(0, indices) for k in self.keys]
        self.values = [v.index_select(0, indices) for v in self.values]
        self.pad_lengths = self.pad_lengths.index_select(0, indices)
        self.visual_start = self.visual_start.index_select(0, indices)


# ---------------------------------------------------------------------------------------------
# The decoder's step API: prefill the prompts into a KV cache, then one token per step
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def prefill(lm: PaLMDecoder, input_ids=None, prefix=None, pad_lengths=None, visual_start=None):
    """Run the prompts once and cache their keys and values.

    input_ids (B, L) left-padded prompts (the first pad_lengths[b] ids of row b are padding),
    prefix (B, P, D) placed before position visual_start[b] of row b's prompt (int, list or
    (B,), counted without the padding; default 0) -> (logits for the next token (B, V),
    KVCache). A row is laid out [pads][prompt before][visual tokens][prompt after]: its last
    slot is its last real one."""
    reference = input_ids if input_ids is not None else prefix
    B, device = reference.shape[0], reference.device
    if pad_lengths is None:
        pad_lengths = torch.zeros(B, dtype=torch.long, device=device)
    pad_lengths = pad_lengths.to(device).long()
    start = 0 if visual_start is None else visual_start
    start = torch.as_tensor(start, device=device).long().expand(B)  # (B,) in the prompt
    start_slot = None if prefix is None else pad_lengths + start  # (B,) in the padded row
    lm.check_inputs(input_ids, prefix, start_slot)
    x, prefix_len, start_slot = lm.embed(input_ids, prefix, start_slot)
    slots = torch.arange(x.shape[1], device=device).expand(B, -1)
    depth = lm.config.depth
    cache = KVCache([None] * depth, [None] * depth, pad_lengths, prefix_len, start_slot)
    mask = lm.attention_mask(B, prefix_len, start_slot, pad_lengths, device)
    hidden = lm.run_blocks(x, slots - pad_lengths[:, None], mask, cache)
    return lm.logits(hidden[:, -1]), cache


@torch.no_grad()
def decode_step(lm: PaLMDecoder, token_ids, cache: KVCache):
    """Append one token per row (B,) to the cache -> logits for the token after it (B, V)."""
    if cache.length >= lm.config.max_seq_len:
        raise ValueError(
            f"the cache already holds {cache.length} slots; max_seq_len={lm.config.max_seq_len}"
        )
    x = lm.embed_tokens(token_ids[:, None])  # (B, 1, D)
    positions = (cache.length - cache.pad_lengths)[:, None]  # (B, 1): the unpadded position
    mask = lm.attention_mask(
        x.shape[0],
        cache.prefix_len,
        cache.visual_start,
        cache.pad_lengths,
        x.device,
        query_offset=cache.length,
    )
    return lm.logits(lm.run_blocks(x, positions, mask, cache)[:, -1])


def left_pad(prompts, pad_id, device):
    """B token-id lists -> (input_ids (B, L) padded on the left, pad_lengths (B,))."""
    lengths = [len(prompt) for prompt in prompts]
    input_ids = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        input_ids[row, max(lengths) - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    return input_ids, max(lengths) - torch.tensor(lengths, device=device)


def check_decode_length(lm: PaLMDecoder, prompts, prefix, max_new_tokens):
    """Refuse a decode that would not fit, before any work: the last new token needs no slot."""
    prefix_len, longest = (
        0 if prefix is None else prefix.shape[1],
        max(len(prompt) for prompt in prompts),
    )
    if prefix_len == 0 and min(len(prompt) for prompt in prompts) == 0:
        raise ValueError("every prompt needs at least one token when there is no prefix")
    if prefix_len + longest + max_new_tokens - 1 > lm.config.max_seq_len:
        raise ValueError(
            f"prefix {prefix_len} + longest prompt {longest} + max_new_tokens {max_new_tokens} - 1 "
            f"exceeds max_seq_len={lm.config.max_seq_len}"
        )


@torch.no_grad()
def generate(
    lm: PaLMDecoder,
    prompts,
    prefix=None,
    max_new_tokens=32,
    temperature=0.0,
    top_k=None,
    eos_id=None,
    pad_id=0,
    generator=None,
    visual_start=None,
):
    """prompts: list of token-id lists (lengths may differ) or a (B, L) tensor; prefix (B, P, D)
    placed before position visual_start[b] of prompt b (a list, or None: before the prompt).

    Greedy when temperature == 0, else sampling from softmax(logits / temperature), restricted
    to the top_k tokens when given. Each row stops at eos_id. Returns the new token ids of
    every row as a list of lists, EOS excluded."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    check_decode_length(lm, prompts, prefix, max_new_tokens)
    device = lm.token_embedding.weight.device
    input_ids, pad_lengths = left_pad(prompts, pad_id, device)
    logits, cache = prefill(
        lm, input_ids if input_ids.shape[1] > 0 else None, prefix, pad_lengths, visual_start
    )
    new_tokens, finished = [], torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(dim=-1)  # (B,)
        else:
            logits = logits.float() / temperature
            if top_k is not None:
                kth_best = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth_best, float("-inf"))
            token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
        new_tokens.append(token)
        if eos_id is not None:
            finished |= token == eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = decode_step(lm, token, cache)
    # (B, T)
    rows = torch.stack(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in prompts]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


@dataclass
class Decoding:
    """How evaluation decodes (written to results.json next to the scores)."""

    beam_size: int = 1  # 1: greedy, the evaluation default
    length_penalty: float = 1.0  # beam search only, see beam_search_lm
    max_new_tokens: int = 32


@torch.no_grad()
def greedy_decode(
    model: VisionLanguageModel,
    pixels,
    prompts,
    max_new_tokens=32,
    eos_id=None,
    *,
    features=None,
    pad_id=0,
    visual_start=None,
    num_frames=None,
):
    """The most likely token at every step. pixels (B, 3, H, W) or (B, T, 3, H, W), or None with
    features = the frozen encoder's patch features (B, ...); num_frames (B,): each video's real
    frames when a batch pads them to its longest (data.pad_frames); the visual tokens go before
    position visual_start[b] of prompt b (data.prompt_ids gives both; None: before the prompt)
    -> B lists of new token ids."""
    prefix = model.visual_tokens(pixels, features, num_frames)
    return generate(
        model.lm,
        prompts,
        prefix,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        visual_start=visual_start,
    )


@torch.no_grad()
def beam_search(
    model: VisionLanguageModel,
    pixels,
    prompts,
    beam_size=4,
    length_penalty=1.0,
    max_new_tokens=32,
    eos_id=None,
    *,
    features=None,
    pad_id=0,
    visual_start=None,
    num_frames=None,
):
    """Beam search conditioned on the images; inputs as `greedy_decode`, search as
    `beam_search_lm`."""
    prefix = model.visual_tokens(pixels, features, num_frames)  # (B, P, D)
    return beam_search_lm(
        model.lm,
        prompts,
        prefix,
        beam_size,
        length_penalty,
        max_new_tokens,
        eos_id,
        pad_id,
        visual_start,
    )


def decode(
    model: VisionLanguageModel,
    pixels,
    prompts,
    beam_size=1,
    length_penalty=1.0,
    max_new_tokens=32,
    eos_id=None,
    *,
    features=None,
    pad_id=0,
    visual_start=None,
    num_frames=None,
):
    """Greedy for beam_size 1 (the evaluation default), beam search otherwise."""
    visual = dict(
        features=features, pad_id=pad_id, visual_start=visual_start, num_frames=num_frames
    )
    if beam_size == 1:
        return greedy_decode(model, pixels, prompts, max_new_tokens, eos_id, **visual)
    return beam_search(
        model, pixels, prompts, beam_size, length_penalty, max_new_tokens, eos_id, **visual
    )


@dataclass
class FinishedHypotheses:
    """The hypotheses of one sample that have ended (EOS, or max_new_tokens): how many, and the
    best."""

    count: int = 0
    best_score: float = -math.inf
    best_tokens: list = field(default_factory=list)

    def add(self, tokens: list, log_prob: float, length: int, length_penalty: float) -> None:
        self.count += 1
        score = log_prob / length**length_penalty
        # strict: of equal scores the earlier one stays, deterministically
        if score > self.best_score:
            self.best_score, self.best_tokens = score, tokens


@torch.no_grad()
def beam_search_lm(
    lm,
    prompts,
    prefix=None,
    beam_size=4,
    length_penalty=1.0,
    max_new_tokens=32,
    eos_id=None,
    pad_id=0,
    visual_start=None,
):
    """Batched beam search with a `PaLMDecoder`: prompts (B lists of ids), prefix (B, P, D) or None,
    placed as in `generate`.

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
    # (B, V)
    logits, cache = prefill(
        lm, input_ids if input_ids.shape[1] else None, prefix, pad_lengths, visual_start
    )
    # The prefix and prompt of a sample are run once, then copied to its K beam rows.
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B * K,)
    cache.reorder(rows)
    logits = logits.index_select(0, rows)  # (B * K, V)
    # Only beam 0 starts alive: K identical beams would all propose the same K tokens.
    beam_scores = torch.full((B, K), -math.inf, device=device)
    beam_scores[:, 0] = 0.0
    # (B, K, step) on CPU, where hypotheses are kept
    tokens = torch.zeros(B, K, 0, dtype=torch.long)
    finished = [FinishedHypotheses() for _ in range(B)]
    for step in range(max_new_tokens):
        vocab_size = logits.shape[-1]
        candidates = beam_scores[..., None] + F.log_softmax(logits.float(), dim=-1).view(
            B, K, vocab_size
        )
        # 2K candidates: at most K of them (one per beam) are EOS, so K others can carry on.
        top_scores, top_index = candidates.view(B, K * vocab_size).topk(
            min(2 * K, K * vocab_size), dim=1
        )
        scores, parents, next_tokens = select_beams(
            top_scores.tolist(),
            (top_index // vocab_size).tolist(),
            (top_index % vocab_size).tolist(),
            tokens,
            finished,
            K,
            eos_id,
            length_penalty,
            step,
        )
        tokens = torch.cat(
            [tokens.gather(1, parents[..., None].expand(-1, -1, step)), next_tokens[..., None]],
            dim=2,
        )
        beam_scores = scores.to(device)
        if step == max_new_tokens - 1 or all(f.count >= K for f in finished):
            break
        cache.reorder((torch.arange(B)[:, None] * K + parents).view(-1).to(device))
        logits = decode_step(lm, next_tokens.view(-1).to(device), cache)
    for b, hypotheses in enumerate(finished):
        if hypotheses.count < K:  # stopped by max_new_tokens: the running beams end here
            for k, score in enumerate(beam_scores[b].tolist()):
                if score > -math.inf:
                    hypotheses.add(tokens[b, k].tolist(), score, tokens.shape[2], length_penalty)
    return [hypotheses.best_tokens for hypotheses in finished]


def select_beams(
    top_scores, top_beams, top_tokens, tokens, finished, K, eos_id, length_penalty, step
):
    """One step's bookkeeping, per sample: the candidates come best first (B lists of 2K); an EOS
    among the first K ends its hypothesis, the first K others become the new beams.
    -> scores (B, K), parent beams (B, K), new tokens (B, K)."""
    scores, parents, new_tokens = [], [], []
    for b in range(len(top_scores)):
        done, beams = finished[b].count >= K, []
        for rank, (score, beam, token) in enumerate(
            zip(top_scores[b], top_beams[b], top_tokens[b])
        ):
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

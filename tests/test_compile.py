"""The compiled training step (issue 22): one graph per kind of batch, no graph breaks, no host
syncs in the model's forward and backward, a bounded number of recompiles, and the same losses as
eager. Dynamo's structure is checked on CPU with a counting backend (no code generated, so it is
quick); one test generates code with inductor, as `--compile true` does."""

import random

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import data
from bench.tools import PRESETS, build_stage_model, stage_spec
from support.processes import compile_for_training
from vlm import caption_loss

PRESET = PRESETS["quick"]  # the smallest shapes every backend runs
RUNS = {"stage 1": (1, "resampler"), "stage 2 VAdapter": (2, "vadapter")}
RUNS["stage 2 perceiver"] = (2, "perceiver")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo counts graphs per code object (vlm.py's forward) across models: start each test from
    none, so that the earlier tests' graphs count neither here nor toward its recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def build(stage: int, adapter: str, backend: str = "auto"):
    torch.manual_seed(0)
    spec = stage_spec(PRESET, stage, adapter, backend)
    model = build_stage_model(spec)
    model.train()
    return spec, model


def varied_batch(rng: random.Random, vocab_size: int, video: bool, frames=(2, 3), width=None):
    """4 samples as the data loaders collate them: captions (visual tokens after a 1-token
    prompt) and questions (after a longer prompt, answer tokens the targets) mixed, text lengths
    4-20, images or videos of `frames` frames. width: texts of that length, captions and
    questions taking turns, so that every batch has the same shape and number of targets."""
    size, samples = PRESET.vit.image_size, []
    for i in range(4):
        question = i % 2 == 1 if width else rng.random() < 0.5
        length = width or rng.randint(4, 20)
        start = 2 if width and question else rng.randint(2, 3) if question else 1
        pixels = (
            torch.rand(rng.choice(frames), 3, size, size) if video else torch.rand(3, size, size)
        )
        sample = {
            "pixels": pixels,
            "input_ids": torch.randint(1, vocab_size, (length,)),
            "loss_mask": torch.arange(length) >= (start + 1 if question else start),
            "image_id": i,
            "visual_start": start,
        }
        samples.append(sample)
    return data.collate(samples, pad_id=0)


@pytest.mark.parametrize("run", RUNS)
def test_training_steps_compile_to_one_graph_per_batch_kind(run):
    """40 training steps of varied batches (lengths, frame counts, caption/question mixes,
    images every other step, videos in between) and 4 validation batches, the model compiled with
    fullgraph=True: any graph break (a host sync such as .item() or nonzero, a Python value read
    from a tensor) raises. Dynamo compiles a kind of batch (image or video, training or
    validation) once, every size symbolic (compile_for_training's dynamic=True): one graph per
    kind, whatever the 40 batches."""
    spec, model = build(*RUNS[run])
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    rng = random.Random(0)
    for step in range(40):
        loss_sum, count = caption_loss(compiled, varied_batch(rng, spec.lm.vocab_size, step % 2))
        (loss_sum / count).backward()
    with torch.no_grad():
        for step in range(4):
            caption_loss(compiled, varied_batch(rng, spec.lm.vocab_size, step % 2))
    assert counter.frame_count == 4, "image / video x training / validation"


def test_flex_attention_path_traces_without_graph_breaks():
    """The CUDA default's attention, FlexAttention with block masks built from the per-sample
    visual spans and frame counts, traced in the same graph (forward only: FlexAttention has no
    backward on CPU). Its output equals the math backend's."""
    spec, model = build(2, "vadapter", backend="flex")
    _, reference = build(2, "vadapter", backend="math")
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    rng = random.Random(1)
    with torch.no_grad():
        for video in (False, True):
            batch = varied_batch(rng, spec.lm.vocab_size, video)
            flex, _ = caption_loss(compiled, batch)
            math, _ = caption_loss(reference, batch)
            assert abs(flex.item() - math.item()) < 1e-4 * abs(math.item())
    assert counter.frame_count == 2  # one graph per kind of batch


def test_compiled_step_loss_equals_eager_over_20_steps():
    """Inductor's code (what --compile true runs) against eager, the same init and batches, AdamW
    steps in between: the loss of every one of 20 steps within 1e-4 (fp32, SDPA; two batches of
    one shape taking turns, so that inductor compiles once and the losses fall)."""
    losses = {}
    for compiled in (False, True):
        spec, model = build(2, "vadapter", backend="sdpa")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        step_model = compile_for_training(model) if compiled else model
        rng, losses[compiled] = random.Random(2), []
        batches = [varied_batch(rng, spec.lm.vocab_size, video=False, width=12) for _ in range(2)]
        for step in range(20):
            loss_sum, count = caption_loss(step_model, batches[step % 2])
            loss = loss_sum / count
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[compiled].append(loss.item())
    differences = [abs(a - b) for a, b in zip(losses[False], losses[True])]
    assert max(differences) < 1e-4, differences
    assert losses[True][-2] < losses[True][0] and losses[True][-1] < losses[True][1], "it trains"


def test_targets_counted_on_the_host_give_the_same_loss_and_gradient():
    """num_targets (data.collate's count) finds the targets with a fixed-size nonzero_static, no
    host sync: the same loss and the same gradient reaching the visual tokens as without it. A
    wrong count is refused on CPU, where checking costs nothing."""
    spec, model = build(2, "perceiver", backend="sdpa")
    batch = varied_batch(random.Random(3), spec.lm.vocab_size, video=False)
    prefix = torch.randn(4, 4, spec.lm.dim, requires_grad=True)
    results = []
    for num_targets in (None, batch["num_targets"]):
        _, loss = model.lm(
            batch["input_ids"],
            prefix=prefix,
            loss_mask=batch["loss_mask"],
            visual_start=batch["visual_start"],
            reduction="sum",
            return_logits=False,
            num_targets=num_targets,
        )
        results.append((loss, torch.autograd.grad(loss, prefix)[0]))
    assert batch["num_targets"] == int(batch["loss_mask"].sum()) > 0
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    with pytest.raises(ValueError, match="num_targets=3 but loss_mask holds"):
        model.lm(batch["input_ids"], loss_mask=batch["loss_mask"], num_targets=3)

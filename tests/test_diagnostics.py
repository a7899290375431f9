"""diagnostics.py and its commands: the probe, the LM context loss, reliance with a text oracle."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import data
from conftest import REPO, SMALL_WORLD, toy_spec
from evaluation import diagnostics
from evaluation.metrics import cider_d
from palm_decoder import PaLMConfig, PaLMDecoder
from stage0 import pretrain, synthetic
from support.checkpoints import save_checkpoint
from support.model_spec import ModelSpec, build_vlm
from support.models import load_lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small world with its tokenizer in the folder, as `python synthetic.py --out` writes it."""
    out = tmp_path_factory.mktemp("world")
    synthetic.generate(out, synthetic.WorldConfig(seed=1, **SMALL_WORLD))
    data.Tokenizer.train(data.training_texts(out), out / data.TOKENIZER_FILE, vocab_size=400)
    return out


def test_loss_after_scores_only_the_target_after_its_context():
    torch.manual_seed(0)
    lm = PaLMDecoder(PaLMConfig(vocab_size=40, dim=32, depth=1, num_heads=2, max_seq_len=64)).eval()
    contexts, targets = [[2, 5, 6, 3], []], [[2, 7, 8, 9, 3], [2, 11, 3]]
    by_hand_sum, by_hand_count = 0.0, 0
    for context, target in zip(contexts, targets):
        ids = torch.tensor([context + target])
        with torch.no_grad():
            log_probs = F.log_softmax(lm(ids)[0][0], dim=-1)  # (L, V)
        # every target token but bos
        for position in range(len(context) + 1, len(context) + len(target)):
            by_hand_sum -= log_probs[position - 1, ids[0, position]].item()
            by_hand_count += 1
    assert diagnostics.loss_after(lm, contexts, targets, pad_id=0) == pytest.approx(
        by_hand_sum / by_hand_count, rel=1e-5
    )


@pytest.fixture(scope="module")
def tiny_lm_run(world, tmp_path_factory):
    """An LM checkpoint on the world's tokenizer, as pretrain.py lm writes it (a few steps)."""
    out = tmp_path_factory.mktemp("lm")
    pretrain.main(
        [
            "lm",
            "--data",
            str(world),
            "--out-dir",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-batches",
            "1",
            "--lm-dim",
            "32",
            "--lm-depth",
            "1",
            "--lm-num-heads",
            "2",
        ]
    )
    return out


def test_lm_context_compares_the_same_caption_after_nothing_the_same_image_and_another(
    world, tiny_lm_run
):
    losses = diagnostics.lm_context(str(tiny_lm_run), world, split="test", limit=6)
    assert set(losses) == {"none", "same_image", "other_image", "drop"}
    assert losses["drop"] == pytest.approx(1 - losses["same_image"] / losses["none"])
    assert all(0 < losses[name] < 10 for name in ("none", "same_image", "other_image"))


def test_an_lm_that_copies_its_context_shows_a_large_drop(world, tmp_path):
    """A stand-in that predicts each token from the same-image caption before it (a lookup, built
    by hand) lowers the loss after that caption: what the command is there to detect."""
    tokenizer = data.Tokenizer(world / data.TOKENIZER_FILE)
    vocab = tokenizer.vocab_size

    class Copier(torch.nn.Module):  # logits favour every token already seen in the sequence
        config = PaLMConfig(vocab_size=vocab, dim=8, depth=1, num_heads=1)

        def forward(self, input_ids, loss_mask=None, reduction="mean"):
            # (B, L, V)
            seen = torch.cumsum(F.one_hot(input_ids, vocab).float(), dim=1).clamp(max=1)
            logits = 4.0 * seen
            targets = input_ids[:, 1:].masked_fill(~loss_mask[:, 1:], -100)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab), targets.reshape(-1), reduction="sum"
            )
            return logits, loss

    texts = diagnostics.captions_by_image(world, "test")
    image_ids = list(texts)[:6]
    targets = [diagnostics.text_ids(tokenizer, texts[i][0]) for i in image_ids]
    same = [diagnostics.text_ids(tokenizer, texts[i][1]) for i in image_ids]
    none = diagnostics.loss_after(Copier(), [[]] * len(targets), targets, tokenizer.pad_id)
    after_same = diagnostics.loss_after(Copier(), same, targets, tokenizer.pad_id)
    assert after_same < 0.9 * none


def test_context_and_probe_commands_print_their_measurements(world, tiny_lm_run, tmp_path):
    context = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "context",
            str(tiny_lm_run),
            "--data",
            str(world),
            "--limit",
            "5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert context.returncode == 0, context.stderr
    assert "after a caption of the same image" in context.stdout and "%" in context.stdout
    vit_run = tmp_path / "vit"
    pretrain.main(
        [
            "vit",
            "--data",
            str(world),
            "--out-dir",
            str(vit_run),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-batches",
            "1",
            "--vit-image-size",
            "32",
            "--vit-dim",
            "32",
            "--vit-depth",
            "1",
            "--vit-num-heads",
            "2",
            "--vit-mlp-dim",
            "64",
        ]
    )
    probe = subprocess.run(
        [sys.executable, "evaluate.py", "probe", str(vit_run), "--data", str(world)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["shape", "colour", "count"]
    assert all("majority class" in line for line in lines)


def test_reference_ceiling_is_each_reference_scored_against_the_others(world):
    by_image = diagnostics.captions_by_image(world, "test")
    k = 2
    expected_k = cider_d(
        {i: t[k] for i, t in by_image.items()}, {i: t[:k] + t[k + 1 :] for i, t in by_image.items()}
    )[0]
    scores = [
        cider_d(
            {i: t[j] for i, t in by_image.items()},
            {i: t[:j] + t[j + 1 :] for i, t in by_image.items()},
        )[0]
        for j in range(5)
    ]
    assert expected_k in scores
    assert diagnostics.reference_ceiling(world, "test") == pytest.approx(sum(scores) / 5)


def test_a_saved_spec_round_trips_through_an_exported_safetensors_file(tmp_path):
    torch.manual_seed(0)
    lm = PaLMDecoder(PaLMConfig(vocab_size=40, dim=32, depth=1, num_heads=2))
    save_checkpoint(
        str(tmp_path / "run" / "checkpoint.pt"),
        {
            "stage": "pretrain-lm",
            "spec": ModelSpec(lm=lm.config).to_dict(),
            "model": lm.state_dict(),
            "step": 7,
        },
    )
    pretrain.main(
        ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "lm.safetensors")]
    )
    loaded = load_lm(str(tmp_path / "lm.safetensors"))
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        # bf16 storage: the weights round to 8 bits of mantissa, the logits stay close
        assert torch.allclose(loaded(ids)[0], lm(ids)[0], atol=0.05)
    assert loaded.config == lm.config


def test_token_scales_measure_the_visual_tokens_against_the_text_embeddings():
    torch.manual_seed(0)
    model = build_vlm(toy_spec("vadapter")).train()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.lm.token_embedding.weight.fill_(-0.5)  # every entry 0.5 in size: RMS 0.5
        model.adapter.projection.weight.mul_(3.0)  # the visual tokens, 3x what they were
    before = model.visual_tokens(pixels).detach()
    scales = diagnostics.token_scales(model, {"pixels": pixels})
    assert scales["text"] == pytest.approx(0.5)
    assert scales["visual"] == pytest.approx(before.pow(2).mean().sqrt().item(), rel=1e-5)
    assert model.training, "the model's mode is restored"
    with torch.no_grad():
        model.adapter.projection.weight.zero_()
    assert diagnostics.token_scales(model, {"pixels": pixels})["visual"] == 0.0

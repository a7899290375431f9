"""A trainer.py run's life, on a tiny text-only LM (conftest.py's tiny_lm_run): the NaN stop (a
non-finite loss, gradient or weight stops the run, names its step and is never saved), one host
sync per log interval, and its folder: a second run refused unless resumed or overwritten, a
broken newest checkpoint falling back to the one kept before it."""

import json
import subprocess
import sys

import pytest
import torch

import data
import trainer
from conftest import tiny_lm_run
from palm_decoder import PaLMConfig, PaLMDecoder
from stage0 import pretrain
from support.checkpoints import load_checkpoint
from support.model_spec import ModelSpec


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN loss at step 4 (0-based): the loop learns of it at its next host sync, the save after
    step 6, and stops there, naming step 4, before saving; the checkpoint of step 4 stays."""
    texts = ["a red circle", "two blue squares", "a green star above a cross"] * 4
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    model = PaLMDecoder(PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=1, num_heads=2))
    calls = []

    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        calls.append(1)
        return (loss_sum * float("nan") if len(calls) == 5 else loss_sum), count

    config = trainer.TrainConfig(
        out_dir=str(tmp_path / "run"), steps=8, batch_size=4, save_every=2, eval_every=100
    )
    dataset = data.TextDataset([[text] for text in texts], tokenizer)
    with pytest.raises(FloatingPointError, match="step 4.*last good checkpoint"):
        trainer.train(
            model,
            loss_fn,
            dataset,
            dataset,
            lambda s: data.collate(s, tokenizer.pad_id),
            config,
            "pretrain-lm",
            ModelSpec(lm=model.config),
        )
    assert load_checkpoint(str(tmp_path / "run"))["step"] == 4
    assert torch.isfinite(
        torch.cat([t.flatten() for t in load_checkpoint(str(tmp_path / "run"))["model"].values()])
    ).all()


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_step(tmp_path):
    calls = []

    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        calls.append(1)
        if len(calls) == 4:  # sqrt at 0: the value is 0, its gradient 0 * inf = NaN
            loss_sum = loss_sum + (m.token_embedding.weight[0, 0] * 0).sqrt()
        return loss_sum, count

    with pytest.raises(
        FloatingPointError, match=r"gradient norm is nan \(loss \d+\.\d+\) at step 3.*last good"
    ):
        tiny_lm_run(tmp_path, loss_fn, steps=6)
    saved = load_checkpoint(str(tmp_path / "run"))
    assert saved["step"] == 2
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    assert metrics(tmp_path / "run")[-1]["error"].startswith("gradient norm is nan")


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    """An update that overflows (here: an optimizer step that leaves an inf in the weights at step
    3) after a finite loss and gradient: the run stops; the checkpoint of step 2 stays the
    newest."""

    class OverflowingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            super().step(closure)
            if self.state_dict()["state"][0]["step"] == 3:
                with torch.no_grad():
                    self.param_groups[0]["params"][0][0, 0] = float("inf")

    monkeypatch.setattr(torch.optim, "AdamW", OverflowingAdamW)
    with pytest.raises(FloatingPointError, match=r"weights are not finite \(not saved\) at step 3"):
        tiny_lm_run(tmp_path, save_every=1)
    saved = load_checkpoint(str(tmp_path / "run"))
    assert saved["step"] == 2 and all(torch.isfinite(t).all() for t in saved["model"].values())


def test_a_non_finite_loss_between_log_steps_stops_at_the_next_one_naming_its_step(tmp_path):
    """The contract without a host sync per step: a NaN loss at step 5 (0-based) of a run logging
    every 4 steps goes on to the log step after it (step 8), writes no record for it, and stops
    there with an error naming step 5, recorded in metrics.jsonl."""
    calls = []

    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        calls.append(1)
        return (loss_sum * float("inf") if len(calls) == 6 else loss_sum), count

    with pytest.raises(FloatingPointError, match=r"\] loss is inf at step 5; stopping\. No ch"):
        tiny_lm_run(tmp_path, loss_fn, steps=12, log_every=4, save_every=100)
    assert len(calls) == 8, "the run reached the log step after the bad one, not further"
    lines = metrics(tmp_path / "run")
    assert [line["step"] for line in lines] == [1, 4, 5]
    assert lines[-1] == {"step": 5, "error": "loss is inf"}
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_non_finite_loss_before_any_save_says_there_is_no_checkpoint(tmp_path):
    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        return loss_sum * float("nan"), count

    with pytest.raises(FloatingPointError, match="step 0") as error:
        tiny_lm_run(tmp_path, loss_fn, steps=4)
    assert "No checkpoint was saved" in str(error.value)
    assert "last good checkpoint" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_loop_waits_for_the_device_once_per_log_interval_not_per_step(tmp_path, monkeypatch):
    """Every read of a tensor's value into Python (item, tolist, bool, int, float) that trainer.py
    makes, counted over runs of 12 and 24 steps: one per log step (the first step and every 4th),
    one per evaluation, one per save, whatever the steps between. Before, the loop read the loss,
    the gradient norm and the token count at every step (42 reads over 12 steps, 78 over 24). The
    model's and torch's own reads (the optimizer's step counters on the CPU) are not the loop's."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(tensor, *arguments, original=original, name=name):
            if sys._getframe(1).f_code.co_filename == trainer.__file__:
                reads.append(name)
            return original(tensor, *arguments)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = {}
    for steps, log_every in ((12, 4), (24, 4), (12, 1)):
        reads.clear()
        run = tmp_path / f"{steps}-{log_every}"
        run.mkdir()
        summary = tiny_lm_run(run, steps=steps, log_every=log_every, save_every=100)
        counts[steps, log_every] = len(reads)
        lines = metrics(run / "run")
        assert [line["step"] for line in lines] == sorted(
            {1, *range(log_every, steps + 1, log_every)}
        )
        assert summary["train_loss"] == lines[-1]["loss"]
    # log steps (1, 4, 8, 12 / ... 24 / every step) + one evaluation + one save at the end
    assert counts == {(12, 4): 4 + 2, (24, 4): 7 + 2, (12, 1): 12 + 2}


def test_a_second_run_into_the_same_folder_is_refused_unless_resumed_or_overwritten(tmp_path):
    tiny_lm_run(tmp_path, steps=2)
    run = tmp_path / "run"
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(
        FileExistsError,
        match=r"already holds a run \(checkpoint.pt, metrics.jsonl\).*--resume true.*"
        r"--overwrite true",
    ):
        tiny_lm_run(tmp_path, steps=3)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before, (
        "the earlier run is untouched"
    )
    tiny_lm_run(tmp_path, steps=3, resume=True)
    assert [line["step"] for line in metrics(run)] == [1, 2, 3]
    tiny_lm_run(tmp_path, steps=1, overwrite=True)
    assert [line["step"] for line in metrics(run)] == [1] and load_checkpoint(str(run))["step"] == 1
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


def test_a_broken_newest_checkpoint_falls_back_to_the_one_kept_before_it(tmp_path, capsys):
    straight = tmp_path / "straight"
    straight.mkdir()
    tiny_lm_run(straight, steps=8)
    # keeps checkpoint.pt (step 6) and checkpoint-4.pt; step 2's is gone
    tiny_lm_run(tmp_path, steps=6)
    run = tmp_path / "run"
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoint-4.pt",
        "checkpoint.pt",
        "metrics.jsonl",
    ]
    newest = run / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a truncated copy
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / f"checkpoint.pt.tmp-{dead.pid}").write_bytes(b"half a write")  # killed while writing
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # torn by a full disk
    tiny_lm_run(tmp_path, steps=8, resume=True)
    printed = capsys.readouterr().out
    assert f"{newest} cannot be read, truncated or corrupt" in printed and "resumed from" in printed
    assert f"removed {run / f'checkpoint.pt.tmp-{dead.pid}'}" in printed
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoint-6.pt",
        "checkpoint.pt",
        "checkpoint.pt.broken",
        "metrics.jsonl",
    ]
    resumed, expected = metrics(run), metrics(straight / "run")
    assert [line["step"] for line in resumed] == list(range(1, 9))
    for got, want in zip(resumed, expected):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6), got["step"]


def test_keep_checkpoints_one_keeps_only_the_newest(tmp_path):
    tiny_lm_run(tmp_path, steps=6, keep_checkpoints=1)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
    ]
    with pytest.raises(ValueError, match="--keep-checkpoints 0"):
        tiny_lm_run(tmp_path, steps=6, keep_checkpoints=0, overwrite=True)

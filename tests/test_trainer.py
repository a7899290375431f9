"""trainer.py: the data order over ranks and micro-steps, the learning-rate schedule, the NaN stop.
The whole loop on real stages (resume, DDP) is exercised in test_training_resume.py."""

import atexit
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import data
import trainer
from conftest import toy_spec
from palm_decoder import PaLMConfig, PaLMDecoder
from stage0 import pretrain
from support import models
from support.batches import StepBatches, step_loader
from support.checkpoints import load_checkpoint
from support.model_spec import ModelSpec, build_vlm


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


def test_step_batches_split_one_global_batch_over_ranks_and_micro_steps():
    groups = [10, 6]
    whole = list(StepBatches(groups, 4, 1, 0, 1, seed=3, start_step=0, end_step=7))
    split = [
        StepBatches(groups, 4, 2, rank, 2, seed=3, start_step=0, end_step=7) for rank in (0, 1)
    ]
    pieces = [list(s) for s in split]
    for step in range(7):
        rebuilt = (
            pieces[0][2 * step]
            + pieces[0][2 * step + 1]
            + pieces[1][2 * step]
            + pieces[1][2 * step + 1]
        )
        assert rebuilt == whole[step]
        assert len({i >= 10 for i in whole[step]}) == 1, "a batch never mixes groups"
    resumed = list(StepBatches(groups, 4, 1, 0, 1, seed=3, start_step=4, end_step=7))
    assert resumed == whole[4:]
    group_0 = sorted(i for batch in whole for i in batch if i < 10)
    assert all(group_0.count(i) <= group_0.count(j) + 1 for i in range(10) for j in range(10)), (
        "epochs are permutations"
    )
    with pytest.raises(ValueError, match="multiple of world_size"):
        StepBatches(groups, 5, 1, 0, 2, 0, 0, 1)


def test_worker_processes_fetch_the_same_batches_in_the_same_order(tmp_path):
    """Steps of two groups, two micro-batches a step, fetched by 0 and by 2 worker processes:
    every batch equal, in the same order; the workers stay alive between passes."""
    texts = [f"text number {i} of a dozen" for i in range(20)]
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    groups = [
        data.TextDataset([[text] for text in texts[:12]], tokenizer),
        data.TextDataset([[text] for text in texts[12:]], tokenizer),
    ]
    process = trainer.Process(0, 1, torch.device("cpu"), False)
    fetched = {}
    for workers in (0, 2):
        config = trainer.TrainConfig(batch_size=4, grad_accum=2, num_workers=workers)
        loader = step_loader(
            groups, lambda s: data.collate(s, tokenizer.pad_id), config, process, 0, 9, seed=3
        )
        assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
        assert not loader.pin_memory, "pinned memory is for copies to a GPU"
        fetched[workers] = [list(loader), list(loader)]  # two passes, as validation reads it
    reference = fetched[0][0]  # 9 steps of 2 micro-batches, no two the same
    assert len(reference) == 18
    assert not any(torch.equal(reference[0]["input_ids"], b["input_ids"]) for b in reference[1:])
    for batches in (fetched[0][1], fetched[2][0], fetched[2][1]):
        assert len(batches) == len(reference)
        for expected, got in zip(reference, batches):
            assert expected.keys() == got.keys()
            tensors = [key for key in expected if torch.is_tensor(expected[key])]
            assert all(torch.equal(expected[key], got[key]) for key in tensors)
            assert all(expected[key] == got[key] for key in expected.keys() - set(tensors))


def test_worker_processes_default_to_none_on_the_cpu_and_up_to_four_per_gpu(monkeypatch):
    """--num-workers none: 0 on the CPU (its cores run the step); on CUDA min(4, the CPUs of
    this process over torchrun's processes on the machine), at least 1; a number given wins."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert trainer.TrainConfig(device="cpu").workers() == 0
    assert trainer.TrainConfig(device="cuda").workers() == 4
    assert trainer.TrainConfig(device="cpu").workers("cuda") == 4
    assert trainer.TrainConfig(device="cuda", num_workers=0).workers() == 0
    assert trainer.TrainConfig(device="cpu", num_workers=3).workers() == 3
    for ranks, workers in (("8", 2), ("16", 1), ("32", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert trainer.TrainConfig(device="cuda").workers() == workers, ranks
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer.TrainConfig().workers() == 0  # auto without a GPU is the CPU


def test_learning_rate_warms_up_linearly_then_decays_to_the_floor():
    config = trainer.TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert [trainer.learning_rate_factor(step, config) for step in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert trainer.learning_rate_factor(10, config) == pytest.approx(1.0)
    assert trainer.learning_rate_factor(60, config) == pytest.approx(0.55)
    assert trainer.learning_rate_factor(110, config) == pytest.approx(0.1)
    assert trainer.learning_rate_factor(500, config) == pytest.approx(0.1)


def tiny_lm_run(tmp_path, loss_fn=None, **config):
    """A text-only LM trained by trainer.train on a dozen texts: the loop in a second."""
    texts = ["a red circle", "two blue squares", "a green star above a cross"] * 4
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    torch.manual_seed(0)
    model = PaLMDecoder(PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=1, num_heads=2))
    config = trainer.TrainConfig(
        **{
            "out_dir": str(tmp_path / "run"),
            "steps": 4,
            "batch_size": 4,
            "save_every": 2,
            "eval_every": 100,
            "log_every": 1,
            **config,
        }
    )
    dataset = data.TextDataset([[text] for text in texts], tokenizer)
    return trainer.train(
        model,
        loss_fn or pretrain.lm_loss,
        dataset,
        dataset,
        lambda s: data.collate(s, tokenizer.pad_id),
        config,
        "pretrain-lm",
        ModelSpec(lm=model.config),
    )


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


def test_weight_decay_applies_to_the_weights_of_linear_layers_only():
    """Not the resampler's latents or time embeddings, the norms, the biases or the token
    embedding."""
    for adapter, resampler in (
        ("vadapter", "adapter.resampler."),
        ("perceiver", "adapter.resampler."),
        ("resampler", "adapter."),
    ):
        model = build_vlm(toy_spec(adapter))
        groups = trainer.build_optimizer(
            model, trainer.TrainConfig(weight_decay=0.1), torch.device("cpu")
        ).param_groups
        names = {id(p): name for name, p in model.named_parameters()}
        decayed = {
            names[id(p)]
            for group in groups
            if group["weight_decay"] == 0.1
            for p in group["params"]
        }
        kept = {
            names[id(p)]
            for group in groups
            if group["weight_decay"] == 0.0
            for p in group["params"]
        }
        linear = {
            f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert decayed == linear & trainable and kept == trainable - linear, adapter
        assert {
            f"{resampler}latents",
            f"{resampler}time_embedding",
            f"{resampler}final_norm.bias",
        } <= kept, adapter
        assert all(
            name.endswith(
                ("latents", "time_embedding", "norm.weight", "norm.bias", "token_embedding.weight")
            )
            for name in kept
        ), kept
    # stage 1 trains the LM: its tied embedding is not decayed
    assert "lm.token_embedding.weight" in kept


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


def test_compile_is_on_by_default_where_it_pays_for_itself():
    """The rule: always on CUDA; on CPU only from CPU_COMPILE_MIN_STEPS, where ~20 ms saved per step
    outweighs ~30 s of compilation; the demo's 600-step runs stay eager."""
    assert trainer.compile_pays(10, use_cuda=True)
    assert not trainer.compile_pays(600, use_cuda=False)
    assert trainer.compile_pays(trainer.CPU_COMPILE_MIN_STEPS, use_cuda=False)
    assert trainer.CPU_COMPILE_MIN_STEPS * 0.020 > 30  # the steps it takes to save the compile time


def test_a_non_finite_loss_before_any_save_says_there_is_no_checkpoint(tmp_path):
    def loss_fn(m, batch):
        loss_sum, count = pretrain.lm_loss(m, batch)
        return loss_sum * float("nan"), count

    with pytest.raises(FloatingPointError, match="step 0") as error:
        tiny_lm_run(tmp_path, loss_fn, steps=4)
    assert "No checkpoint was saved" in str(error.value)
    assert "last good checkpoint" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_validation_reads_the_same_batches_whatever_the_run_seed(tmp_path):
    """Rows that make paper pairs by seed are measured on one validation set, not on a sample
    that changes with the seed."""
    texts = [f"text number {i} of a dozen" for i in range(40)]
    tokenizer = data.Tokenizer.train(texts, tmp_path / "tok.model", 40)
    torch.manual_seed(0)
    model = PaLMDecoder(PaLMConfig(vocab_size=tokenizer.vocab_size, dim=32, depth=1, num_heads=2))
    dataset = data.TextDataset([[text] for text in texts], tokenizer)
    process = trainer.Process(0, 1, torch.device("cpu"), False)
    losses = {
        seed: trainer.validation_loss(
            model,
            pretrain.lm_loss,
            trainer.validation_loader(
                dataset,
                lambda s: data.collate(s, tokenizer.pad_id),
                trainer.TrainConfig(batch_size=4, eval_batches=2, seed=seed),
                process,
            ),
            process,
        )
        for seed in (0, 1, 7)
    }
    assert losses[0] == losses[1] == losses[7]
    assert trainer.VALIDATION_SEED == 1  # seed 0's order before: earlier curves stay comparable


def test_the_validation_loader_is_built_once_and_gives_what_a_fresh_one_gives(
    tmp_path, monkeypatch
):
    """Three evaluations read one DataLoader, and each gets the loss that a loader built afresh
    gives (what the loader rebuilt at every evaluation gave before)."""
    built, evaluated = [], []
    build, evaluate = trainer.validation_loader, trainer.validation_loss

    def validation_loader(*arguments):
        built.append(arguments)
        return build(*arguments)

    def validation_loss(model, loss_fn, batches, process):
        fresh = build(*built[0])
        evaluated.append(
            (evaluate(model, loss_fn, batches, process), evaluate(model, loss_fn, fresh, process))
        )
        return evaluated[-1][0]

    monkeypatch.setattr(trainer, "validation_loader", validation_loader)
    monkeypatch.setattr(trainer, "validation_loss", validation_loss)
    summary = tiny_lm_run(tmp_path, steps=6, eval_every=2, eval_batches=2)
    assert len(built) == 1 and len(evaluated) == 3
    assert all(reused == fresh for reused, fresh in evaluated)
    assert list(summary["val_loss"].values()) == [reused for reused, _ in evaluated]


def test_each_rank_binds_its_gpu_before_joining_the_process_group(monkeypatch):
    """torchrun's LOCAL_RANK 3 on CUDA: set_device(3), then init_process_group("nccl",
    device_id=cuda:3), so NCCL never starts on GPU 0; on CPU gloo, no device_id."""
    calls, joined = [], []
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: calls.append(("set_device", device))
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(joined))

    def init_process_group(backend, **options):
        calls.append(("init_process_group", backend, options))
        joined.append(True)

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "get_rank", lambda: 11)
    monkeypatch.setattr(dist, "get_world_size", lambda: 16)
    monkeypatch.setattr(atexit, "register", lambda function: None)
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert trainer.setup_distributed("cuda") == (11, 16, torch.device("cuda", 3))
    assert calls == [
        ("set_device", 3),
        ("init_process_group", "nccl", {"device_id": torch.device("cuda", 3)}),
    ]
    calls.clear(), joined.clear()
    assert trainer.setup_distributed("cpu") == (11, 16, torch.device("cpu"))
    assert calls == [("init_process_group", "gloo", {"device_id": None})]


def test_more_ranks_than_gpus_share_them_over_gloo(monkeypatch):
    """Two ranks on one GPU (make gpu-check's torchrun check): both bind GPU 0 and join over gloo
    (NCCL refuses two ranks on one GPU), without device_id."""
    calls, joined = [], []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: calls.append(("set_device", device))
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(joined))

    def init_process_group(backend, **options):
        calls.append(("init_process_group", backend, options))
        joined.append(True)

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(atexit, "register", lambda function: None)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert trainer.setup_distributed("cuda") == (1, 2, torch.device("cuda", 0))
    assert calls == [("set_device", 0), ("init_process_group", "gloo", {"device_id": None})]


def test_bf16_is_the_default_on_cuda_and_on_cpus_with_bf16_matmuls(monkeypatch):
    """--bf16 none: on for CUDA and for a CPU with avx512_bf16 or AMX, fp32 elsewhere; an explicit
    value wins; the frozen weights follow (bf16 only under autocast)."""
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert models.bf16_by_default("cpu") is native and models.bf16_by_default("cuda")
        assert trainer.TrainConfig(device="cpu").uses_bf16() is native
        assert trainer.TrainConfig(device="cpu", bf16=not native).uses_bf16() is not native
        frozen = models.frozen_dtype(None, trainer.TrainConfig(device="cpu").uses_bf16())
        assert frozen == (torch.bfloat16 if native else torch.float32)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older torch: fp32
    assert not models.bf16_by_default("cpu")
    with pytest.raises(ValueError, match="--frozen-dtype bf16 needs bf16 autocast"):
        models.frozen_dtype("bf16", bf16=False)

"""trainer.py's settings: the data order over ranks, micro-steps and worker processes, the
learning-rate schedule, weight decay, the compile and bf16 defaults, one validation set read by one
loader, each rank's GPU and process group. What a run does when a value turns non-finite, and the
checkpoints it keeps: test_trainer_runs.py. The whole loop on real stages (resume, DDP) is exercised
in test_training_resume.py."""

import atexit
import os

import pytest
import torch
import torch.distributed as dist

import data
import trainer
from conftest import tiny_lm_run, toy_spec
from palm_decoder import PaLMConfig, PaLMDecoder
from stage0 import pretrain
from support import models
from support.batches import StepBatches, step_loader
from support.model_spec import build_vlm


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


def test_compile_is_on_by_default_where_it_pays_for_itself():
    """The rule: always on CUDA; on CPU only from CPU_COMPILE_MIN_STEPS, where ~20 ms saved per step
    outweighs ~30 s of compilation; the demo's 600-step runs stay eager."""
    assert trainer.compile_pays(10, use_cuda=True)
    assert not trainer.compile_pays(600, use_cuda=False)
    assert trainer.compile_pays(trainer.CPU_COMPILE_MIN_STEPS, use_cuda=False)
    assert trainer.CPU_COMPILE_MIN_STEPS * 0.020 > 30  # the steps it takes to save the compile time


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


def fake_process_group(monkeypatch, rank: int, world_size: int) -> tuple[list, list]:
    """torch.cuda.set_device and torch.distributed's process group faked for a rank of world_size
    -> (the calls they received in order, a list that is non-empty once the group is joined)."""
    calls, joined = [], []
    monkeypatch.setattr(
        torch.cuda, "set_device", lambda device: calls.append(("set_device", device))
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(joined))

    def init_process_group(backend, **options):
        calls.append(("init_process_group", backend, options))
        joined.append(True)

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: world_size)
    monkeypatch.setattr(atexit, "register", lambda function: None)
    return calls, joined


def test_each_rank_binds_its_gpu_before_joining_the_process_group(monkeypatch):
    """torchrun's LOCAL_RANK 3 on CUDA: set_device(3), then init_process_group("nccl",
    device_id=cuda:3), so NCCL never starts on GPU 0; on CPU gloo, no device_id."""
    calls, joined = fake_process_group(monkeypatch, rank=11, world_size=16)
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
    calls, _ = fake_process_group(monkeypatch, rank=1, world_size=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
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

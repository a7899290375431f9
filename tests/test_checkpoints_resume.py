"""checkpoints.py's resume: model, optimizer, scheduler, step and RNG state come back (the CUDA RNG
state with any number of visible GPUs), or every difference of the spec and the training settings
is named."""

import random
from dataclasses import replace

import pytest
import torch

from conftest import toy_spec
from support.checkpoints import (
    check_same_spec,
    resume_training,
    save_checkpoint,
    training_state,
)
from support.model_spec import build_vlm


def test_resume_restores_model_optimizer_scheduler_step_and_rng(tmp_path):
    torch.manual_seed(0)
    spec, train_config = toy_spec(), {"batch_size": 8, "seed": 0, "lr": 1e-3}

    def fresh():
        model = build_vlm(spec)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        return (
            model,
            optimizer,
            torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step),
        )

    model, optimizer, scheduler = fresh()
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    scheduler.step()
    random.seed(5)
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        training_state("stage1", spec, model, optimizer, scheduler, 7, train_config),
    )
    expected_draws = (torch.rand(3), random.random())

    torch.manual_seed(1)
    resumed = fresh()
    assert (
        resume_training(str(tmp_path / "checkpoint.pt"), "stage1", spec, train_config, *resumed)
        == 7
    )
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed[0].state_dict()[name], tensor), name
    assert resumed[1].state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    assert resumed[2].get_last_lr() == scheduler.get_last_lr()


class VisibleGPUs:
    """torch.cuda's RNG calls faked for `count` visible GPUs, this process on GPU 0; each GPU's
    generator state a distinct byte tensor, and a GPU that is not there an IndexError."""

    def __init__(self, monkeypatch, count: int):
        self.states = [torch.full((8,), 10 + index, dtype=torch.uint8) for index in range(count)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(
            torch.cuda, "get_rng_state_all", lambda: list(map(self.get, range(count)))
        )
        monkeypatch.setattr(
            torch.cuda,
            "set_rng_state_all",
            lambda states: [self.set(state, index) for index, state in enumerate(states)],
        )

    def index(self, device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= len(self.states):
            raise IndexError(f"no GPU {index}")
        return index

    def get(self, device="cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def set(self, state: torch.Tensor, device="cuda"):
        self.states[self.index(device)] = state.clone()


def test_rng_state_resumes_with_any_number_of_visible_gpus(tmp_path, monkeypatch, capsys):
    """A run saved with 8 GPUs visible resumes with 1 (its own GPU's CUDA state restored) or none
    (the CUDA state dropped, said once, by rank 0 only); an older checkpoint holding every GPU's
    state resumes the same way."""
    spec, train_config = toy_spec(), {"batch_size": 8, "seed": 0}
    model = build_vlm(spec)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    saving = VisibleGPUs(monkeypatch, 8)
    state = training_state("stage1", spec, model, optimizer, scheduler, 3, train_config)
    assert torch.equal(state["rng"]["cuda"], saving.states[0])
    older = {**state, "rng": {**state["rng"], "cuda": torch.cuda.get_rng_state_all()}}
    for name, payload in (("new", state), ("older", older)):
        path = str(tmp_path / f"{name}.pt")
        save_checkpoint(path, payload)
        resuming = VisibleGPUs(monkeypatch, 1)
        resume_training(path, "stage1", spec, train_config, model, optimizer, scheduler)
        assert torch.equal(resuming.states[0], saving.states[0]), name
        capsys.readouterr()
        VisibleGPUs(monkeypatch, 0)
        resume_training(path, "stage1", spec, train_config, model, optimizer, scheduler)
        assert capsys.readouterr().out == (
            "the checkpoint's CUDA RNG state is not restored: no GPU is visible\n"
        )
        monkeypatch.setenv("RANK", "1")
        resume_training(path, "stage1", spec, train_config, model, optimizer, scheduler)
        assert capsys.readouterr().out == ""
        monkeypatch.delenv("RANK")


def test_resume_names_every_difference(tmp_path):
    spec = toy_spec()
    model = build_vlm(spec)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        training_state(
            "stage1", spec, model, optimizer, scheduler, 2, {"batch_size": 8, "seed": 0}
        ),
    )
    deeper = replace(spec, resampler=replace(spec.resampler, depth=2))
    with pytest.raises(
        ValueError, match=r"config mismatch with .*checkpoint.pt:\n  resampler: checkpoint has"
    ):
        resume_training(
            str(tmp_path / "checkpoint.pt"),
            "stage1",
            deeper,
            {"batch_size": 8, "seed": 0},
            model,
            optimizer,
            scheduler,
        )
    with pytest.raises(ValueError, match="batch_size: checkpoint has 8, this run has 16"):
        resume_training(
            str(tmp_path / "checkpoint.pt"),
            "stage1",
            spec,
            {"batch_size": 16, "seed": 0},
            model,
            optimizer,
            scheduler,
        )
    with pytest.raises(ValueError, match="written by stage 'stage1'"):
        resume_training(
            str(tmp_path / "checkpoint.pt"),
            "stage2",
            spec,
            {"batch_size": 8, "seed": 0},
            model,
            optimizer,
            scheduler,
        )
    check_same_spec({"a": 1}, {"a": 1}, "same")  # nothing differs: no error

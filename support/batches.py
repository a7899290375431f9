"""The data order of a training run: which samples each step of each rank reads.

The step alone fixes the data position, so a resumed run, or the same global batch spread over
more processes, reads exactly what an uninterrupted single-process run reads. The trainer
(trainer.py) iterates `step_loader`; checkpoints need no data state beyond the step.
"""

import bisect
import os
from functools import lru_cache
from typing import Callable

import torch

# A training set is one dataset or a list of groups (e.g. images, videos: a batch never
# mixes them). Each step takes its whole global batch from one group, drawn with probability
# proportional to the group's size from a seeded generator; within a group the samples come from
# an endless stream of seeded per-epoch permutations. So the step alone fixes the data position.


@lru_cache(maxsize=8)
def _epoch_permutation(dataset_len: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(dataset_len, generator=generator).tolist()


def stream_indices(position: int, count: int, dataset_len: int, seed: int) -> list[int]:
    indices = []
    while len(indices) < count:
        epoch, offset = divmod(position, dataset_len)
        taken = _epoch_permutation(dataset_len, seed, epoch)[offset : offset + count - len(indices)]
        indices += taken
        position += len(taken)
    return indices


class Groups(torch.utils.data.ConcatDataset):
    """The groups as one indexable dataset. A micro-batch lies inside one group (StepBatches), and
    its fetch goes to that group's `__getitems__` where it has one: PyTorch's DataLoader fetches a
    batch through that hook, which ConcatDataset lacks (data.VisionTextDataset's skips decoding a
    batch whose features are all cached)."""

    def __getitems__(self, indices: list[int]) -> list:
        group = bisect.bisect_right(self.cumulative_sizes, indices[0])
        start = self.cumulative_sizes[group - 1] if group else 0
        dataset, local = self.datasets[group], [index - start for index in indices]
        if hasattr(dataset, "__getitems__") and all(0 <= i < len(dataset) for i in local):
            return dataset.__getitems__(local)
        return [self[index] for index in indices]


def as_dataset(groups) -> tuple[torch.utils.data.Dataset, list[int]]:
    """One dataset or a list of groups -> (one indexable dataset, group sizes)."""
    groups = list(groups) if isinstance(groups, (list, tuple)) else [groups]
    return Groups(groups), [len(g) for g in groups]


class StepBatches:
    """Micro-batch index lists for this rank, steps [start_step, end_step): a DataLoader
    batch_sampler."""

    def __init__(
        self, group_sizes, batch_size, grad_accum, rank, world_size, seed, start_step, end_step
    ):
        per_rank, remainder = divmod(batch_size, world_size * grad_accum)
        if remainder or per_rank == 0:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of world_size * grad_accum "
                f"= {world_size} * {grad_accum}"
            )
        self.group_sizes, self.batch_size, self.grad_accum, self.per_rank = (
            group_sizes,
            batch_size,
            grad_accum,
            per_rank,
        )
        self.rank, self.seed, self.start_step, self.end_step = rank, seed, start_step, end_step
        weights = torch.tensor(group_sizes, dtype=torch.float)
        generator = torch.Generator().manual_seed(seed)
        self.group_of_step = torch.multinomial(
            weights, max(end_step, 1), replacement=True, generator=generator
        ).tolist()
        self.offsets = [sum(group_sizes[:g]) for g in range(len(group_sizes))]
        seen = [0] * len(group_sizes)
        self.batches_before = []  # per step: how many earlier steps drew from the same group
        for group in self.group_of_step:
            self.batches_before.append(seen[group])
            seen[group] += 1

    def __len__(self):
        return (self.end_step - self.start_step) * self.grad_accum

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            group = self.group_of_step[step]
            position = self.batches_before[step] * self.batch_size
            indices = stream_indices(
                position, self.batch_size, self.group_sizes[group], self.seed + group
            )
            mine = indices[self.rank * self.per_rank * self.grad_accum :][
                : self.per_rank * self.grad_accum
            ]
            for micro in range(self.grad_accum):
                yield [
                    self.offsets[group] + i
                    for i in mine[micro * self.per_rank : (micro + 1) * self.per_rank]
                ]


def step_loader(
    groups,
    collate: Callable,
    config,  # trainer.TrainConfig
    process,  # trainer.Process
    start_step: int,
    end_step: int,
    seed: int,
) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of steps [start_step, end_step), grad_accum of them per step.
    The batches and their order are the same whatever the number of worker processes: workers
    only fetch and collate the index lists StepBatches gives, and the DataLoader returns them in
    that order. Workers stay alive between passes (the validation loader is read at every
    evaluation), and on CUDA batches come in pinned memory, copied to the GPU without a wait."""
    dataset, group_sizes = as_dataset(groups)
    workers = config.workers(process.device.type)
    sampler = StepBatches(
        group_sizes,
        config.batch_size,
        config.grad_accum,
        process.rank,
        process.world_size,
        seed,
        start_step,
        end_step,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=process.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def workers_by_default(device: str = "auto") -> int:
    """--num-workers' default: 0 on the CPU, whose cores the training step's threads already use;
    on CUDA min(4, this rank's share of the CPUs), so images decode while the GPU computes."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if not cuda:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes on this machine
    return min(4, max(1, cpus // ranks_here))


def move_to(batch: dict, device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }

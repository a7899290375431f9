"""How many graphs torch.compile makes of a function (kernel-work box): graphs, graph breaks with
their reasons, and recompiles over several calls. The CUDA default compiles the whole training step
and should make one graph of it (docs/scaling.md); a graph break splits the step and leaves what
lies between the pieces to run in Python, a recompile compiles it again. Read by `python -m bench
gpu-check` and by the CPU tests (backend "eager": Dynamo's tracing alone, no code generated).
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch._dynamo.utils import counters


@dataclass
class GraphCounts:
    graphs: int  # FX graphs handed to the backend over all calls
    breaks: int  # graph breaks Dynamo took (a break hit again in a recompiled frame counts again)
    recompiles: int  # frames compiled after the first call: a guard failed, Dynamo traced again
    break_reasons: Counter = field(default_factory=Counter)  # first line of each reason -> count

    def line(self) -> str:
        reasons = "; ".join(f"{count}x {reason}" for reason, count in self.break_reasons.items())
        return f"{self.graphs} graphs, {self.breaks} graph breaks, {self.recompiles} recompiles" + (
            f" (breaks: {reasons})" if reasons else ""
        )


def compile_counts(fn: Callable, calls: Iterable[tuple], backend: str = "eager") -> GraphCounts:
    """torch.compile(fn) with `backend` behind a counter, called once per argument tuple of
    `calls` -> its GraphCounts. Dynamo's caches and counters are reset first, so the counts are
    this function's alone."""
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    compile_graph = torch._dynamo.lookup_backend(backend)

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return compile_graph(graph_module, example_inputs)

    compiled = torch.compile(fn, backend=counting_backend, dynamic=True)  # as the trainer does
    frames_after_first = None
    for args in calls:
        compiled(*args)
        if frames_after_first is None:
            frames_after_first = counters["frames"]["total"]
    reasons = Counter()
    for reason, count in counters["graph_break"].items():
        reasons[reason.strip().splitlines()[0]] += count
    return GraphCounts(
        graphs=len(graphs),
        breaks=sum(reasons.values()),
        recompiles=counters["frames"]["total"] - (frames_after_first or 0),
        break_reasons=reasons,
    )

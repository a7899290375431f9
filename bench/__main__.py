"""`python -m bench {attention,step,reference,load,gpu-check}`: the one entry point of the kernel
benchmarks.

attention: every attention backend on the models' shapes, checked then timed (bench/kernels.py);
step: a full training step of each stage's model (bench/step.py); reference: our PaLMDecoder
against transformers' Llama of the same size, and load: peak memory of loading weights
(bench/reference.py); gpu-check: the CUDA default checked on one GPU (bench/gpu_check.py,
`make gpu-check`). Presets and stage models: bench/tools.py; timing and memory:
bench/measure.py. Numbers: docs/benchmarks.md.
"""

import argparse
import sys

import torch

from bench import gpu_check, kernels, reference, step
from support.flags import COUNT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subcommands = parser.add_subparsers(dest="command", required=True)
    benchmarks = {
        "attention": (
            "every attention backend on the models' shapes: check, then time",
            kernels.add_attention_flags,
            kernels.attention_main,
        ),
        "step": (
            "a full training step of each stage's model: tokens/s, memory, FLOP/s of peak",
            step.add_flags,
            step.main,
        ),
        "reference": (
            "our PaLMDecoder against transformers' Llama of the same size",
            reference.add_flags,
            reference.main,
        ),
        "load": (
            "peak host memory of loading a random 1B Llama folder in fp32 and in bf16",
            reference.add_load_flags,
            reference.load_main,
        ),
        "gpu-check": (
            "the CUDA default on one GPU: attention, losses, graphs, torchrun, step; PASS / FAIL",
            gpu_check.add_flags,
            gpu_check.main,
        ),
    }
    for name, (help_text, add_flags, _) in benchmarks.items():
        command = subcommands.add_parser(name, help=help_text)
        add_flags(command)
        command.add_argument("--device", help="default: cuda when available")
        command.add_argument(
            "--threads",
            type=COUNT,
            help="CPU threads (torch.set_num_threads); 1 is steadier when "
            "other processes keep the cores busy",
        )
        command.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return benchmarks[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())

"""The small PaLM decoder of the test_palm_decoder*.py files, with weights sharp enough that a wrong
position or mask shows."""

from dataclasses import replace

import torch

from palm_decoder import PaLMConfig, PaLMDecoder

SMALL = PaLMConfig(vocab_size=50, dim=32, depth=2, num_heads=4, max_seq_len=64)


def small_model(seed=0, **overrides):
    """A small model with larger-than-init weights: sharp attention, so that a wrong position or
    mask changes the outputs by much more than the tests' tolerances."""
    torch.manual_seed(seed)
    model = PaLMDecoder(replace(SMALL, **overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(10)
    return model

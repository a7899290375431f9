"""benchmark_tools.py: the presets follow the stage scripts' default adapters, the timing summary
reports the median and quartiles, an unknown backend is a clear error, and the peak-memory meter
sees an allocation made after start()."""

import argparse

import pytest
import torch

from bench import measure as benchmark_measure
from bench import tools as benchmark_tools
from resampler import ResamplerConfig


def test_presets_use_the_stage_scripts_default_adapters():
    for preset in benchmark_tools.PRESETS.values():
        num_latents = preset.resampler.num_latents
        assert preset.resampler == ResamplerConfig.for_lm(
            preset.vit.dim, preset.tiny_lm.dim, preset.tiny_lm.num_heads, num_latents=num_latents
        )
        assert preset.perceiver == ResamplerConfig.for_perceiver(
            preset.vit.dim, num_latents=num_latents
        )


def test_summary_median_and_quartiles():
    stats = benchmark_measure.summary([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats["median_ms"], stats["p25_ms"], stats["p75_ms"]) == (3.0, 2.0, 4.0)
    assert (stats["min_ms"], stats["max_ms"], stats["repeats"]) == (1.0, 5.0, 5)
    assert benchmark_measure.summary([7.0])["p25_ms"] == 7.0  # one sample: no spread


def test_device_and_preset_and_backend_names():
    args = argparse.Namespace(device="cpu", quick=True, preset=None)
    device, name, preset = benchmark_tools.device_and_preset(args)
    assert (device.type, name, preset) == ("cpu", "quick", benchmark_tools.PRESETS["quick"])
    assert benchmark_tools.backend_names(None, ["math"]) == ["math"]
    assert benchmark_tools.backend_names("sdpa,auto", ["math"]) == ["sdpa", "auto"]
    with pytest.raises(SystemExit, match="unknown backend"):
        benchmark_tools.backend_names("sdpa,nonesuch", ["math"])


def test_peak_memory_sees_an_allocation():
    memory = benchmark_measure.PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(16 * 2**20)  # 64 MiB, every page touched
    assert memory.peak_mib() >= 32, memory.what
    del block

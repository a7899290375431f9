"""`python -m bench step --compare-frozen-paths` (kernel-work box): the stage-2 step with the
frozen ViT run under autograd (its weights trainable, or requires_grad=False), under no_grad, and
from feature_cache.FeatureCache, the paths taking turns step by step: ms/step, target tokens/s,
the memory of one step, whether the ViT got a .grad. The step itself: bench/training_step.py.
"""

import torch

from bench.measure import PeakMemory, summary
from bench.tools import Preset, stage_spec
from bench.training_step import STAGE_WHAT, batch_tokens, check_gradients, setup_step
from support.feature_cache import FeatureCache
from vlm import VisionLanguageModel, caption_loss

# The stage-2 step with the frozen ViT run three (four) ways. `a` is the naive loop: the ViT's
# weights left trainable (frozen only by leaving them out of the optimizer), so autograd records its
# graph, keeps its activations and computes its weight gradients. `a_frozen` calls the ViT under
# grad mode too, but with requires_grad off: nothing in it requires grad, so autograd records
# nothing and it costs what `b` costs.
FROZEN_PATHS = {
    "a": "naive: ViT under autograd, its weights left requires_grad=True (not in the optimizer)",
    "a_frozen": "ViT called under grad mode, weights requires_grad=False (no graph: nothing "
    "requires grad)",
    "b": "encode_images: the frozen ViT under no_grad, every step",
    "c": "FeatureCache hits: every image id already cached (steady state after the first epoch)",
}


def frozen_path_losses(model: VisionLanguageModel, cache: FeatureCache) -> dict:
    def vision_under_grad(runner, batch):
        _, loss_sum = runner(
            batch["input_ids"],
            batch["loss_mask"],
            features=model.vision(batch["pixels"]),
            reduction="sum",
        )
        return loss_sum, batch["loss_mask"].sum()

    return {
        "a": vision_under_grad,
        "a_frozen": vision_under_grad,
        "b": lambda runner, batch: caption_loss(runner, batch),
        "c": lambda runner, batch: caption_loss(runner, batch, cache),
    }


def compare_frozen_paths(args, preset: Preset, device: torch.device, backend: str) -> dict:
    """Stage-2 step times per path, interleaved step by step so that machine noise falls on all
    alike."""
    memory = PeakMemory(device)
    setup = setup_step(stage_spec(preset, 2, args.adapter, backend), preset, device, compiled=False)
    model, batch = setup.model, setup.batch
    cache = FeatureCache()
    cache.get_or_compute(batch["image_ids"], batch["pixels"], model.encode_images)
    losses = frozen_path_losses(model, cache)

    results = {path: {"what": what} for path, what in FROZEN_PATHS.items()}

    def run(path: str) -> float:
        """One step on `path` -> ms; afterwards the ViT is frozen again and the gradients are
        checked."""
        model.vision.requires_grad_(path == "a")
        milliseconds = setup.timed_step(losses[path])
        results[path]["vision_grads"] = any(p.grad is not None for p in model.vision.parameters())
        model.vision.requires_grad_(False)
        model.vision.zero_grad(set_to_none=True)  # the naive path's wasted ViT gradients
        check_gradients(model)
        return milliseconds

    for path in FROZEN_PATHS:
        for _ in range(args.warmup):
            run(path)
    times = {path: [] for path in FROZEN_PATHS}
    for _ in range(args.steps):
        for path in FROZEN_PATHS:
            times[path].append(run(path))
    for (
        path
    ) in FROZEN_PATHS:  # one step each, alone, for its memory on top of model, optimizer and cache
        memory.start()
        run(path)
        results[path]["step_memory_mib"] = memory.peak_mib()
        results[path].update(summary(times[path]))
    # after the last step (c): frozen LM without .grad, adapter with
    gradients = check_gradients(model)
    tokens = batch_tokens(batch, model.adapter.resampler.config.num_latents)
    for path in FROZEN_PATHS:
        results[path]["target_tokens_per_s"] = tokens["target"] / (results[path]["median_ms"] / 1e3)
    ratios = {
        f"{path}/c": results[path]["median_ms"] / results["c"]["median_ms"]
        for path in ("a", "a_frozen", "b")
    }

    print(
        f"\nfrozen paths: {STAGE_WHAT[2].format(adapter=args.adapter)}; attention {backend}, "
        "eager\n"
        f"  median [p25-p75] ms per step over {args.steps} interleaved repeats; step memory: "
        f"{memory.what}, "
        f"during one step with model, optimizer state and cache already in place"
    )
    print(
        f"  {'path':<10} {'ms/step [p25-p75]':<24} {'target tok/s':>12} {'/ (c)':>6} "
        f"{'step MiB':>9} {'ViT .grad':>9}  what"
    )
    for path in FROZEN_PATHS:
        r = results[path]
        spread = f"{r['median_ms']:.1f} [{r['p25_ms']:.1f}-{r['p75_ms']:.1f}]"
        print(
            f"  {'(' + path + ')':<10} {spread:<24} {r['target_tokens_per_s']:>12,.0f} "
            f"{r['median_ms'] / results['c']['median_ms']:>6.2f} {r['step_memory_mib']:>9.1f} "
            f"{'yes' if r['vision_grads'] else 'no':>9}  {r['what']}"
        )
    print(
        "  ratios: " + ", ".join(f"({k.replace('/', ')/(')}) = {v:.2f}" for k, v in ratios.items())
    )
    print(
        f"  gradients after the step: {gradients['frozen_tensors']} frozen tensors, none with a "
        ".grad "
        f"(the LM's {sum(1 for _ in model.lm.parameters())} included); "
        f"{gradients['trained_tensors_with_grad']} "
        f"trained adapter tensors with a .grad (norm {gradients['adapter_grad_norm']:.3g} after "
        "clipping): ok"
    )
    return {
        "backend": backend,
        "paths": results,
        "ratios": ratios,
        "gradients": gradients,
        "tokens": tokens,
        "memory": memory.what,
    }

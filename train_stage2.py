"""Stage 2: connect the frozen ViT to the frozen large LM through an adapter; only the adapter
trains.

    --adapter vadapter  (PaLM2-VAdapter): a fresh 1-layer perceiver resampler -> FC -> tiny LM -> FC
        --adapter-init stage1   the tiny LM progressively aligned by train_stage1.py
        --adapter-init lm       the tiny LM after language pretraining only
        --adapter-init random   the same architecture from random initialisation
        --cross-attention perceiver|pooler   the fresh front (the --resampler-* flags change it:
                                 --resampler-depth 6 is the paper's Table 4 six-layer row)
        --resampler-from-stage1 true   ablation: carry stage 1's cross-attention module over instead
    --adapter perceiver --perceiver-depth N   the baseline: N-layer perceiver resampler -> linear
    --adapter mlp       Table 13's baseline: Linear -> GELU -> Linear on every patch feature

    python train_stage2.py --adapter vadapter --stage1 runs/stage1 --data data/shapes \\
        --vit runs/pretrain/vit --lm runs/pretrain/large_lm --out-dir runs/stage2_vadapter
    python train_stage2.py --adapter perceiver --perceiver-depth 6 --data data/shapes \\
        --vit runs/pretrain/vit --lm runs/pretrain/large_lm --out-dir runs/stage2_perceiver
"""

import argparse
from dataclasses import fields

import torch
import torch.nn as nn

from palm_decoder import PaLMDecoder
from resampler import PERCEIVER_DEPTH, PERCEIVER_HEADS, PerceiverResampler, ResamplerConfig
from support.checkpoints import frozen_reference, load_checkpoint, submodule_state
from support.flags import COUNT, add_config_flags, add_data_flags, config_from_args, parse_bool
from support.model_spec import ModelSpec
from support.models import frozen_dtype, lm_of, load_lm, load_vision
from support.processes import is_main_process, setup_distributed
from support.vlm_training import VLM_DEFAULTS, DataConfig, train_vlm
from trainer import TrainConfig
from vlm import MLPAdapter, PerceiverAdapter, VAdapter, VisionLanguageModel


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_flags(parser)
    parser.add_argument(
        "--vit",
        required=True,
        help="frozen vision encoder: a stage0/pretrain.py vit checkpoint, hf:FOLDER (CLIP, SigLIP)",
    )
    parser.add_argument(
        "--lm",
        required=True,
        help="frozen large LM: a stage0/pretrain.py lm checkpoint, or hf:FOLDER (Gemma / Llama)",
    )
    parser.add_argument("--adapter", choices=["vadapter", "perceiver", "mlp"], default="vadapter")
    parser.add_argument("--adapter-init", choices=["stage1", "lm", "random"], default="stage1")
    parser.add_argument("--stage1", help="train_stage1.py checkpoint (for --adapter-init stage1)")
    parser.add_argument(
        "--tiny-lm",
        help="stage0/pretrain.py lm checkpoint of the tiny LM (for --adapter-init lm / random)",
    )
    parser.add_argument(
        "--cross-attention",
        choices=["perceiver", "pooler"],
        help="vadapter: the fresh module in front of the tiny LM (default perceiver, 1 layer)",
    )
    parser.add_argument(
        "--resampler-from-stage1",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="vadapter ablation: carry stage 1's cross-attention module over as trained (a "
        "--resampler-* "
        "flag that changes it is refused) instead of a fresh one (default false)",
    )
    parser.add_argument(
        "--checkpoint-lm",
        type=parse_bool,
        default=False,
        metavar="BOOL",
        help="recompute the frozen LM's blocks in the backward instead of keeping their "
        "activations (PaLMDecoder.checkpoint_blocks): the memory of a large LM's activations for "
        "about one more LM forward per step (default false)",
    )
    parser.add_argument("--perceiver-depth", type=COUNT, default=PERCEIVER_DEPTH)
    parser.add_argument(
        "--perceiver-dim", type=COUNT, help="latent width of the baseline (default: the ViT's)"
    )
    parser.add_argument("--perceiver-heads", type=COUNT, default=PERCEIVER_HEADS)
    add_config_flags(parser, ResamplerConfig, "resampler-")
    add_config_flags(parser, TrainConfig)
    return parser.parse_args(argv)


def check_stage1_resampler(config: ResamplerConfig, stage1: ResamplerConfig):
    """The stage-1 module is carried over as it was trained: a --resampler-* flag that changes it is
    an error (the flags apply to a fresh module, --resampler-from-stage1 false)."""
    changed = [
        f"--resampler-{f.name.replace('_', '-')} {getattr(config, f.name)} (stage 1: "
        f"{getattr(stage1, f.name)})"
        for f in fields(ResamplerConfig)
        if getattr(config, f.name) != getattr(stage1, f.name)
    ]
    if changed:
        raise ValueError(
            f"{', '.join(changed)}: the stage-1 resampler is carried over as trained; drop the "
            "flag(s), "
            "or start the resampler fresh with --resampler-from-stage1 false"
        )


def load_tiny_lm(args) -> tuple[PaLMDecoder, dict | None]:
    """The VAdapter's tiny LM as --adapter-init asks -> (tiny LM, the stage-1 checkpoint or
    None)."""
    if args.adapter_init == "stage1":
        if not args.stage1:
            raise ValueError("--adapter-init stage1 needs --stage1 (a train_stage1.py checkpoint)")
        # read once: its tiny LM and its front
        stage1 = load_checkpoint(args.stage1, expected_stage="stage1")
        return lm_of(stage1), stage1
    if not args.tiny_lm:
        raise ValueError(
            f"--adapter-init {args.adapter_init} needs --tiny-lm (a stage0/pretrain.py lm "
            "checkpoint)"
        )
    tiny_lm = load_lm(args.tiny_lm)
    return (PaLMDecoder(tiny_lm.config) if args.adapter_init == "random" else tiny_lm), None


def build_adapter(args, vision, lm):
    """-> (adapter module, resampler config or None, tiny LM config or None)."""
    vit_dim = vision.config.dim
    if args.cross_attention and (args.adapter != "vadapter" or args.resampler_from_stage1):
        raise ValueError(
            f"--cross-attention {args.cross_attention} chooses the VAdapter's fresh front; "
            f"--adapter {args.adapter} with --resampler-from-stage1 {args.resampler_from_stage1} "
            "has none"
        )
    if args.adapter == "mlp":
        if given := [
            f"--resampler-{f.name.replace('_', '-')}"
            for f in fields(ResamplerConfig)
            if getattr(args, f"resampler_{f.name}") is not None
        ]:
            raise ValueError(f"{', '.join(given)}: --adapter mlp has no resampler")
        return MLPAdapter(vit_dim, lm.config.dim), None, None
    if args.adapter == "perceiver":
        config = config_from_args(
            args,
            ResamplerConfig,
            "resampler-",
            base=ResamplerConfig.for_perceiver(
                vit_dim,
                dim=args.perceiver_dim or vit_dim,
                depth=args.perceiver_depth,
                num_heads=args.perceiver_heads,
            ),
        )
        return PerceiverAdapter(PerceiverResampler(config), lm.config.dim), config, None
    tiny_lm, stage1 = load_tiny_lm(args)
    if args.resampler_from_stage1:
        if stage1 is None:
            raise ValueError(
                "--resampler-from-stage1 true needs --adapter-init stage1 and --stage1"
            )
        config = config_from_args(
            args, ResamplerConfig, "resampler-", base=stage1["spec"].resampler
        )
        check_stage1_resampler(config, stage1["spec"].resampler)
        resampler = PerceiverResampler(config)
        resampler.load_state_dict(submodule_state(stage1["model"], "adapter."))
        adapter = VAdapter(resampler, tiny_lm, lm.config.dim)
        # The carried latents are what the tiny LM learned to read in stage 1: the FC between them
        # starts as the identity, so the ablation starts from the stage-1 path as trained.
        nn.init.eye_(adapter.input_projection.weight)
        return adapter, config, tiny_lm.config
    front = (
        ResamplerConfig.for_pooler(vit_dim, vit_dim, PERCEIVER_HEADS)
        if args.cross_attention == "pooler"
        else ResamplerConfig.for_vadapter_front(vit_dim)
    )
    config = config_from_args(args, ResamplerConfig, "resampler-", base=front)
    return VAdapter(PerceiverResampler(config), tiny_lm, lm.config.dim), config, tiny_lm.config


def main(argv=None):
    args = parse_args(argv)
    train_config = config_from_args(args, TrainConfig, base=VLM_DEFAULTS)
    torch.manual_seed(train_config.seed)  # the fresh parts' initialisation is part of the run
    dtype = frozen_dtype(args.frozen_dtype, train_config.uses_bf16())
    # each rank reads the frozen models straight onto its own device, in the dtype they run in
    _, _, device = setup_distributed(train_config.device)
    vision, lm = load_vision(args.vit, dtype, device), load_lm(args.lm, dtype, device)
    lm.checkpoint_blocks = args.checkpoint_lm
    adapter, resampler, tiny_lm = build_adapter(args, vision, lm)
    spec = ModelSpec(
        vision=vision.config,
        resampler=resampler,
        lm=lm.config,
        tiny_lm=tiny_lm,
        adapter=args.adapter,
        adapter_init=args.adapter_init if args.adapter == "vadapter" else None,
    )
    model = VisionLanguageModel(vision, adapter, lm)
    frozen = {"vision": frozen_reference(args.vit), "lm": frozen_reference(args.lm)}
    summary = train_vlm(
        model, DataConfig.from_flags(args, args.lm), "stage2", spec, train_config, frozen
    )
    if is_main_process():  # one line per run, not one per rank
        print(f"[stage2 {args.adapter}] done: {summary}")
    return summary


if __name__ == "__main__":
    main()

"""Stage 1 of the progressive alignment: the tiny LM learns to read visual features.

Frozen ViT -> cross-attention module -> tiny LM (from its language pretraining), trained as the
decoder of a small vision-language model on captioning and VQA. Both the cross-attention module and
the tiny LM are trained; stage 2 then reuses the tiny LM inside the adapter (train_stage2.py).

    --cross-attention pooler     the paper's: CoCa's attentional pooler (one cross-attention layer,
                                 learned queries over the features, a LayerNorm), as wide as the
                                 tiny LM
    --cross-attention perceiver  ablation: a 1-layer perceiver resampler as wide as the tiny LM

    python train_stage1.py --data data/shapes --vit runs/pretrain/vit \
        --tiny-lm runs/pretrain/tiny_lm --out-dir runs/stage1
"""

import argparse

import torch

from resampler import PerceiverResampler, ResamplerConfig
from support.checkpoints import frozen_reference
from support.flags import add_config_flags, add_data_flags, config_from_args
from support.model_spec import ModelSpec
from support.models import frozen_dtype, load_lm, load_vision
from support.processes import is_main_process, setup_distributed
from support.vlm_training import VLM_DEFAULTS, DataConfig, train_vlm
from trainer import TrainConfig
from vlm import VisionLanguageModel


def main(argv=None):
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
        "--tiny-lm",
        required=True,
        help="language-pretrained tiny LM: a stage0/pretrain.py lm checkpoint, or hf:FOLDER "
        "(Gemma / Llama)",
    )
    parser.add_argument(
        "--cross-attention",
        choices=["pooler", "perceiver"],
        default="pooler",
        help="the module between the ViT and the tiny LM (the --resampler-* flags change it)",
    )
    add_config_flags(parser, ResamplerConfig, "resampler-")
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(argv)
    train_config = config_from_args(args, TrainConfig, base=VLM_DEFAULTS)
    torch.manual_seed(train_config.seed)  # the fresh parts' initialisation is part of the run
    # each rank reads its models straight onto its own device: the frozen ViT in the dtype it runs
    # in, the tiny LM (trained here) in fp32
    _, _, device = setup_distributed(train_config.device)
    dtype = frozen_dtype(args.frozen_dtype, train_config.uses_bf16())
    vision = load_vision(args.vit, dtype, device)
    tiny_lm = load_lm(args.tiny_lm, device=device)
    preset = (
        ResamplerConfig.for_pooler if args.cross_attention == "pooler" else ResamplerConfig.for_lm
    )
    resampler = config_from_args(
        args,
        ResamplerConfig,
        "resampler-",
        base=preset(vision.config.dim, tiny_lm.config.dim, tiny_lm.config.num_heads),
    )
    spec = ModelSpec(
        vision=vision.config,
        resampler=resampler,
        lm=tiny_lm.config,
        adapter="resampler",
        train_lm=True,
    )
    model = VisionLanguageModel(vision, PerceiverResampler(resampler), tiny_lm, train_lm=True)
    # The tiny LM trains here, so it stays in the checkpoints; the frozen ViT is a reference to
    # args.vit.
    summary = train_vlm(
        model,
        DataConfig.from_flags(args, args.tiny_lm),
        "stage1",
        spec,
        train_config,
        {"vision": frozen_reference(args.vit)},
    )
    if is_main_process():  # one line per run, not one per rank
        print(f"[stage1] done: {summary}")
    return summary


if __name__ == "__main__":
    main()

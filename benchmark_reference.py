"""Our PaLM decoder (palm_decoder.py, the LM box of Figure 2) against transformers'
LlamaForCausalLM of the same width, depth, heads, vocabulary and sequence: forward+backward time,
parameter counts. A check that the plain-PyTorch decoder is not slower than a widely used one.

    python benchmark.py reference --dim 256 --depth 4 --heads 8
Needs `pip install -r requirements-bench.txt` (transformers, a benchmark-only extra). Measured
numbers and how to read them: docs/benchmarks.md.
"""
import json
import os
import statistics

import torch

from benchmark_tools import machine, summary, time_calls
from palm_decoder import PaLMConfig, PaLMDecoder
from vit import num_parameters



def hugging_face_decoder(config: PaLMConfig):
    """The closest transformers architecture: Llama with one key/value head (MQA), SwiGLU of the
    same hidden width, rotary (same rotate-half pairing), no biases, tied embeddings. What differs:
    Llama's block is sequential with two RMSNorms (x + attn(norm1(x)), then + mlp(norm2(x))) where
    PaLM's is parallel on one bias-free LayerNorm; the parameter count differs only by the norms."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config object: nothing to download
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise SystemExit("`benchmark.py reference` needs transformers (a benchmark-only extra): "
                         "pip install -r requirements-bench.txt") from None
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.mlp_hidden_dim or 4 * config.dim,
        num_hidden_layers=config.depth, num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim or config.dim // config.num_heads, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps, attention_bias=False, mlp_bias=False, tie_word_embeddings=True, hidden_act="silu",
        attention_dropout=0.0,
    )
    hf_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_config)


def add_flags(parser) -> None:
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backend", default="auto", help="our attention backend (default auto)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=args.vocab, dim=args.dim, depth=args.depth, num_heads=args.heads, num_kv_heads=1,
                        max_seq_len=args.seq, attention_backend=args.backend)
    ours, theirs = PaLMDecoder(config).to(device), hugging_face_decoder(config).to(device)
    input_ids = torch.randint(config.vocab_size, (args.batch, args.seq), device=device)  # (B, S)
    loss_mask = torch.ones_like(input_ids, dtype=torch.bool)
    loss_mask[:, 0] = False  # both predict tokens 1..S-1 from the positions before them

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(input_ids, loss_mask=loss_mask)[1].backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs(input_ids=input_ids, labels=input_ids).loss.backward()

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(args.warmup):
            step_ours()
            step_theirs()
        times = {"ours": [], "theirs": []}
        for _ in range(args.repeats):  # alternate, so that machine noise falls on both alike
            times["ours"].append(time_calls(step_ours, 1, device))
            times["theirs"].append(time_calls(step_theirs, 1, device))

    ours_stats, theirs_stats = summary(times["ours"]), summary(times["theirs"])
    pair_ratio = statistics.median(a / b for a, b in zip(times["ours"], times["theirs"]))
    print(f"reference: forward+backward, dim {args.dim} depth {args.depth} heads {args.heads} (1 kv head) vocab {args.vocab} "
          f"seq {args.seq} batch {args.batch}, {'bf16 autocast' if device.type == 'cuda' else 'float32'}, "
          f"{args.repeats} alternating repeats; {machine(device)}")
    for name, model, stats in (("ours (PaLMDecoder, attention " + args.backend + ")", ours, ours_stats),
                               ("transformers LlamaForCausalLM (sdpa)", theirs, theirs_stats)):
        print(f"  {name:<44} {num_parameters(model):>12,} params  median {stats['median_ms']:8.2f} ms "
              f"[{stats['p25_ms']:.2f}-{stats['p75_ms']:.2f}]")
    print(f"  ours / theirs: {ours_stats['median_ms'] / theirs_stats['median_ms']:.3f} (ratio of medians), "
          f"{pair_ratio:.3f} (median of per-repeat ratios)\n"
          f"  same matmul shapes; Llama's block is sequential with two RMSNorms, PaLM's parallel on one LayerNorm")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"config": vars(args), "machine": machine(device), "ours": ours_stats,
                       "theirs": theirs_stats, "ratio_of_medians": ours_stats["median_ms"] / theirs_stats["median_ms"],
                       "median_pair_ratio": pair_ratio}, file, indent=1)
    return 0


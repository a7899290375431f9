"""Our PaLM decoder (palm_decoder.py, the LM box of Figure 2) against transformers'
LlamaForCausalLM of the same width, depth, heads, vocabulary and sequence: forward+backward time,
parameter counts. A check that the plain-PyTorch decoder is not slower than a widely used one.

    python -m bench reference --dim 256 --depth 4 --heads 8   # ours / theirs, median of 3 runs
    python -m bench load   # peak memory of loading a random 1B Llama folder, fp32 and bf16
Needs `pip install -r requirements-bench.txt` (transformers, a benchmark-only extra). Measured
numbers and how to read them: docs/benchmarks.md.
"""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import machine, matmul_peak, summary, time_calls
from palm_decoder import PaLMConfig, PaLMDecoder
from support.flags import COUNT, NON_NEGATIVE
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
        raise SystemExit(
            "`python -m bench reference` needs transformers (a benchmark-only extra): "
            "pip install -r requirements-bench.txt"
        ) from None
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.mlp_hidden_dim or 4 * config.dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim or config.dim // config.num_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_dropout=0.0,
    )
    hf_config._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_config)


def add_flags(parser) -> None:
    parser.add_argument("--dim", type=COUNT, default=256)
    parser.add_argument("--depth", type=COUNT, default=4)
    parser.add_argument("--heads", type=COUNT, default=8)
    parser.add_argument("--vocab", type=COUNT, default=1024)
    parser.add_argument("--seq", type=COUNT, default=128)
    parser.add_argument("--batch", type=COUNT, default=8)
    parser.add_argument("--backend", default="auto", help="our attention backend (default auto)")
    parser.add_argument(
        "--runs",
        type=COUNT,
        default=3,
        help="runs of --repeats; the verdict is the median run's ratio",
    )
    parser.add_argument("--repeats", type=COUNT, default=10, help="alternating steps per run")
    parser.add_argument("--warmup", type=NON_NEGATIVE, default=3)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both models (like for like); the warmup steps absorb the compile time",
    )


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    config = PaLMConfig(
        vocab_size=args.vocab,
        dim=args.dim,
        depth=args.depth,
        num_heads=args.heads,
        num_kv_heads=1,
        max_seq_len=args.seq,
        attention_backend=args.backend,
    )
    ours, theirs = PaLMDecoder(config).to(device), hugging_face_decoder(config).to(device)
    run_ours, run_theirs = (
        (torch.compile(ours), torch.compile(theirs)) if args.compile else (ours, theirs)
    )
    input_ids = torch.randint(config.vocab_size, (args.batch, args.seq), device=device)  # (B, S)
    loss_mask = torch.ones_like(input_ids, dtype=torch.bool)
    loss_mask[:, 0] = False  # both predict tokens 1..S-1 from the positions before them

    def step_ours():
        ours.zero_grad(set_to_none=True)
        run_ours(input_ids, loss_mask=loss_mask)[1].backward()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        run_theirs(input_ids=input_ids, labels=input_ids).loss.backward()

    with FlopCounterMode(display=False) as counter:
        step_ours()
    # The linear layers' FLOPs (mm, addmm): the same in both models. The attention products are left
    # out (the CPU flash kernel is not in torch's FLOP counter), so the floor below is a true lower
    # bound.
    flops = sum(
        count
        for op, count in counter.get_flop_counts()["Global"].items()
        if str(op) in ("aten.mm", "aten.addmm")
    )
    peak, peak_how = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    print(
        f"reference: forward+backward, dim {args.dim} depth {args.depth} heads {args.heads} (1 kv "
        f"head) vocab {args.vocab} "
        f"seq {args.seq} batch {args.batch}, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}, "
        f"{'both compiled' if args.compile else 'both eager'}, "
        f"{args.runs} runs of {args.repeats} alternating repeats; {machine(device)}"
    )
    runs = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(args.warmup):
            step_ours()
            step_theirs()
        for run in range(args.runs):
            times = {"ours": [], "theirs": []}
            for _ in range(args.repeats):  # alternate, so that machine noise falls on both alike
                times["ours"].append(time_calls(step_ours, 1, device))
                times["theirs"].append(time_calls(step_theirs, 1, device))
            ours_stats, theirs_stats = summary(times["ours"]), summary(times["theirs"])
            runs.append(
                {
                    "ours": ours_stats,
                    "theirs": theirs_stats,
                    "ratio_of_medians": ours_stats["median_ms"] / theirs_stats["median_ms"],
                    "median_pair_ratio": statistics.median(
                        a / b for a, b in zip(times["ours"], times["theirs"])
                    ),
                }
            )
            print(
                f"  run {run + 1}: ours median {ours_stats['median_ms']:8.2f} ms "
                f"[{ours_stats['p25_ms']:.2f}-"
                f"{ours_stats['p75_ms']:.2f}], transformers {theirs_stats['median_ms']:8.2f} ms "
                f"[{theirs_stats['p25_ms']:.2f}-"
                f"{theirs_stats['p75_ms']:.2f}]; ours / theirs {runs[-1]['ratio_of_medians']:.3f} "
                "(ratio of medians), "
                f"{runs[-1]['median_pair_ratio']:.3f} (median of per-repeat ratios)"
            )
    ratio = statistics.median(run["ratio_of_medians"] for run in runs)
    median_run = sorted(runs, key=lambda run: run["ratio_of_medians"])[len(runs) // 2]
    ours_ms, theirs_ms, floor_ms = (
        median_run["ours"]["median_ms"],
        median_run["theirs"]["median_ms"],
        flops / peak * 1e3,
    )
    print(
        f"  ours (PaLMDecoder, attention {args.backend}): {num_parameters(ours):,} params; "
        "transformers LlamaForCausalLM "
        f"(sdpa): {num_parameters(theirs):,} params\n"
        f"  ours / theirs, median of {args.runs} runs: {ratio:.3f}\n"
        f"  roofline: {flops / 1e9:.2f} GFLOP per step in the linear layers (the same in both; "
        f"attention not counted); peak {peak / 1e9:,.1f} "
        f"GFLOP/s ({peak_how}); ours {flops / ours_ms / 1e6:,.1f} GFLOP/s "
        f"({flops / ours_ms / peak * 1e3:.1%} of peak), "
        f"transformers {flops / theirs_ms / 1e6:,.1f} ({flops / theirs_ms / peak * 1e3:.1%}); "
        "those FLOPs at peak with "
        f"nothing else take {floor_ms:.2f} ms: no fusion gets ours / theirs below "
        f"{floor_ms / theirs_ms:.3f}\n"
        "  same matmul shapes; Llama's block is sequential with two RMSNorms and five input and "
        "two output matmuls, "
        f"PaLM's parallel on one LayerNorm with one input and one output matmul"
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "config": vars(args),
                    "machine": machine(device),
                    "runs": runs,
                    "ratio": ratio,
                    "flops_per_step": flops,
                    "peak_flops_per_s": peak,
                    "ratio_floor": floor_ms / theirs_ms,
                },
                file,
                indent=1,
            )
    return 0


# ---------------------------------------------------------------------------------------------
# Loading a frozen LM: peak host memory (RSS) per --frozen-dtype
# ---------------------------------------------------------------------------------------------

LOAD_PROBE = """import resource, sys, torch
from palm_decoder import PaLMDecoder
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
PaLMDecoder.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"""


def write_random_llama(
    folder, dim: int, depth: int, mlp: int, vocab: int, heads: int, kv_heads: int
) -> int:
    """A Llama folder of random bf16 weights, one shard per block (so writing it never holds the
    whole model) -> its parameter count."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    head_dim, weight_map, count = dim // heads, {}, 0
    shapes = {
        "self_attn.q_proj": (dim, dim),
        "self_attn.k_proj": (kv_heads * head_dim, dim),
        "self_attn.v_proj": (kv_heads * head_dim, dim),
        "self_attn.o_proj": (dim, dim),
        "mlp.gate_proj": (mlp, dim),
        "mlp.up_proj": (mlp, dim),
        "mlp.down_proj": (dim, mlp),
    }
    shards = [
        {
            "model.embed_tokens.weight": (vocab, dim),
            "model.norm.weight": (dim,),
            "lm_head.weight": (vocab, dim),
        }
    ]
    shards += [
        {
            **{f"model.layers.{i}.{name}.weight": shape for name, shape in shapes.items()},
            f"model.layers.{i}.input_layernorm.weight": (dim,),
            f"model.layers.{i}.post_attention_layernorm.weight": (dim,),
        }
        for i in range(depth)
    ]
    for index, shard in enumerate(shards):
        name = f"model-{index:05d}.safetensors"
        save_file(
            {key: torch.randn(shape, dtype=torch.bfloat16) * 0.02 for key, shape in shard.items()},
            f"{folder}/{name}",
        )
        weight_map.update(dict.fromkeys(shard, name))
        count += sum(math.prod(shape) for shape in shard.values())
    with open(f"{folder}/model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": weight_map}, f)
    with open(f"{folder}/config.json", "w") as f:
        json.dump(
            {
                "model_type": "llama",
                "vocab_size": vocab,
                "hidden_size": dim,
                "intermediate_size": mlp,
                "num_hidden_layers": depth,
                "num_attention_heads": heads,
                "num_key_value_heads": kv_heads,
            },
            f,
        )
    return count


def add_load_flags(parser):
    parser.add_argument(
        "--folder", default="/tmp/random-llama-1b", help="written here, deleted afterwards"
    )
    parser.add_argument(
        "--size",
        choices=["1b", "tiny"],
        default="1b",
        help="1b: TinyLlama's shape (1.1B parameters)",
    )


def load_main(args) -> int:
    """Peak RSS of PaLMDecoder.from_pretrained on a random bf16 Llama folder, per frozen dtype, each
    in a fresh process (ru_maxrss: the high-water mark of this process alone)."""
    shape = (
        dict(dim=2048, depth=22, mlp=5632, vocab=32000, heads=32, kv_heads=4)
        if args.size == "1b"
        else dict(dim=64, depth=2, mlp=128, vocab=100, heads=4, kv_heads=1)
    )
    try:
        count = write_random_llama(args.folder, **shape)
        rows = {}
        for dtype in ("float32", "bfloat16"):
            probe = subprocess.run(
                [sys.executable, "-c", LOAD_PROBE, args.folder, dtype],
                capture_output=True,
                text=True,
                check=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # the repository
            )
            before, peak = (int(kb) * 1024 for kb in probe.stdout.split())
            rows[dtype] = {
                "peak_rss_gb": peak / 1e9,
                "peak_rss_after_import_gb": (peak - before) / 1e9,
                "weights_gb": count * (4 if dtype == "float32" else 2) / 1e9,
            }
            print(
                f"{dtype:>9}: {count / 1e9:.2f}B parameters, weights "
                f"{rows[dtype]['weights_gb']:.2f} GB, "
                f"peak RSS {peak / 1e9:.2f} GB ({(peak - before) / 1e9:.2f} GB above torch's "
                "import)"
            )
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "parameters": count, "load": rows}, f, indent=2)
    return 0

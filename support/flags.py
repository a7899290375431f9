"""Command-line flags shared by the scripts: every config field a flag, one way to read yes/no,
and every number read with its range.

Each config dataclass (ViTConfig, PaLMConfig, ResamplerConfig, TrainConfig) becomes a group of
flags, `--{prefix}{field}`, optionally starting from a named preset; a script's config is the
preset (or its defaults) with the flags given on top. A numeric flag is read by a `Number`, so a
value out of its range is an argparse error naming the flag, the value and the range.
"""

import argparse
import math
from dataclasses import dataclass, fields, replace

import data

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    """The one reading of a yes/no flag value: true/yes/on/1 or false/no/off/0, in any case.
    Anything else is an error that argparse reports with the flag's name (`argument --resume:
    'flase' is ...`)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a yes/no value (use one of {', '.join(TRUE_WORDS + FALSE_WORDS)})"
    )


def parse_optional_bool(text: str) -> bool | None:
    """A `bool | None` field (None: decide from the device): a yes/no value, or none."""
    return None if text.strip().lower() == "none" else parse_bool(text)


def parse_value(text: str):
    """A command-line value for a non-boolean config field: int, float, None, or the string
    itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text.lower() == "none" else text


@dataclass(frozen=True)
class Number:
    """A numeric flag's reader (argparse `type=`) with its range: low (open or closed), high."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is out (a rate must be > 0)
    none: bool = False  # "none" reads as None (a field whose None means "the default")

    def __call__(self, text: str):
        if self.none and text.strip().lower() == "none":
            return None
        try:
            value = self.kind(text)
        except ValueError:
            kind = "an integer" if self.kind is int else "a number"
            message = f"{text!r} is not {kind}: expected {self.describe()}"
            raise argparse.ArgumentTypeError(message) from None
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and value > self.high
        if below or above or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {self.describe()}")
        return value

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low}"
        return what


COUNT, NON_NEGATIVE = Number(int, low=1), Number(int, low=0)  # sizes, counts; seeds, budgets
POSITIVE_REAL, NON_NEGATIVE_REAL = Number(float, low=0, low_open=True), Number(float, low=0)
FRACTION = Number(float, low=0, high=1)

# The range of every numeric config field, by name (a name means the same in every config).
FIELD_RANGES = {
    **dict.fromkeys(
        ["image_size", "patch_size", "dim", "depth", "num_heads", "mlp_dim", "channels"], COUNT
    ),
    **dict.fromkeys(["vocab_size", "num_kv_heads", "max_seq_len", "input_dim"], COUNT),
    **dict.fromkeys(["num_latents", "mlp_ratio", "max_frames"], COUNT),
    **dict.fromkeys(["head_dim", "mlp_hidden_dim"], replace(COUNT, none=True)),
    **dict.fromkeys(["norm_eps", "rope_base", "lr", "grad_clip"], POSITIVE_REAL),
    **dict.fromkeys(["steps", "batch_size", "grad_accum", "keep_checkpoints"], COUNT),
    **dict.fromkeys(["eval_every", "eval_batches", "log_every", "save_every"], COUNT),
    **dict.fromkeys(["warmup_steps", "seed"], NON_NEGATIVE),
    "num_workers": replace(NON_NEGATIVE, none=True),
    "query_key_std": replace(POSITIVE_REAL, none=True),
    "weight_decay": NON_NEGATIVE_REAL,
    "min_lr_ratio": FRACTION,
}


# The help of a field whose default (None) depends on the device.
FIELD_HELP = {
    "num_workers": "DataLoader worker processes per rank (default: 0 on the CPU; on CUDA "
    "min(4, the rank's CPUs), and then every batch decodes its pixels, cached features or not)",
}


def flag_parser(field) -> tuple:
    """-> (the parser of a config field's flag values, its metavar): boolean fields go through
    parse_bool, numeric ones through their range in FIELD_RANGES."""
    if field.type is bool:
        return parse_bool, "BOOL"
    if field.type == bool | None:
        return parse_optional_bool, "BOOL|none"
    if field.type in (int, float, int | None, float | None):
        if field.name not in FIELD_RANGES:
            raise KeyError(f"numeric field {field.name!r} has no range in flags.FIELD_RANGES")
        return FIELD_RANGES[field.name], "N"
    return parse_value, "VALUE"


def add_config_flags(
    parser, config_class, prefix: str = "", presets: dict | None = None, default_preset=None
):
    """Every field of a config dataclass becomes `--{prefix}{field}` (underscores -> dashes); with
    presets, `--{prefix}preset` picks the starting values that the other flags override."""
    group = parser.add_argument_group(f"{prefix or 'training '}options ({config_class.__name__})")
    if presets:
        group.add_argument(f"--{prefix}preset", default=default_preset, choices=list(presets))
    for f in fields(config_class):
        kind, metavar = flag_parser(f)
        default = "default: from the preset" if presets else f"default: {f.default!r}"
        group.add_argument(
            f"--{prefix}{f.name.replace('_', '-')}",
            type=kind,
            default=None,
            metavar=metavar,
            help=FIELD_HELP.get(f.name, default),
        )


def config_from_args(args, config_class, prefix: str = "", presets: dict | None = None, base=None):
    """The config a script runs with: the preset (or `base`, or the class defaults) plus the flags
    given."""
    attribute = prefix.replace("-", "_")
    if presets:
        base = presets[getattr(args, attribute + "preset")]
    overrides = {
        f.name: value
        for f in fields(config_class)
        if (value := getattr(args, attribute + f.name)) is not None
    }
    return replace(base if base is not None else config_class(), **overrides)


def add_data_flags(parser):
    """The data flags both stage scripts take."""
    parser.add_argument(
        "--data", required=True, help="data folder (python -m stage0.synthetic --out DIR)"
    )
    parser.add_argument(
        "--tokenizer", help=f"sentencepiece model (default: DATA/{data.TOKENIZER_FILE})"
    )
    parser.add_argument(
        "--tasks", help=f"comma-separated, from {list(data.TASK_FILES)} (default: all in DATA)"
    )
    parser.add_argument(
        "--cache-features",
        type=parse_bool,
        default=True,
        metavar="BOOL",
        help="run the frozen ViT once per image and keep its features (default true)",
    )
    parser.add_argument(
        "--feature-cache-gb",
        type=NON_NEGATIVE_REAL,
        default=8.0,
        metavar="GB",
        help="the most the feature cache holds (bf16); least recently used go first (default 8)",
    )
    parser.add_argument("--on-bad-sample", choices=["error", "skip"], default="error")
    parser.add_argument(
        "--frozen-dtype",
        choices=["fp32", "bf16"],
        help="weights of the frozen ViT and LM (default: bf16 under bf16 autocast, else fp32)",
    )
    parser.add_argument(
        "--max-text-tokens",
        type=Number(int, low=2),
        metavar="N",
        help="text positions per sample, [bos] prompt target [eos]; longer texts are cut to N and "
        "counted (default: the LM's max_seq_len minus the visual tokens)",
    )

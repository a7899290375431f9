"""Command-line flags shared by the scripts: every config field a flag, one way to read yes/no.

Each config dataclass (ViTConfig, PaLMConfig, ResamplerConfig, TrainConfig) becomes a group of
flags, `--{prefix}{field}`, optionally starting from a named preset; a script's config is the
preset (or its defaults) with the flags given on top.
"""

import argparse
from dataclasses import fields, replace

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


def flag_parser(field) -> tuple:
    """-> (the parser of a config field's flag values, its metavar): boolean fields go through
    parse_bool."""
    if field.type is bool:
        return parse_bool, "BOOL"
    if field.type == bool | None:
        return parse_optional_bool, "BOOL|none"
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
        group.add_argument(
            f"--{prefix}{f.name.replace('_', '-')}",
            type=kind,
            default=None,
            metavar=metavar,
            help="default: from the preset" if presets else f"default: {f.default!r}",
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
        type=float,
        default=8.0,
        metavar="GB",
        help="the most the feature cache holds (bf16); least recently used go first (default 8)",
    )
    parser.add_argument("--on-bad-sample", choices=["error", "skip"], default="error")
    parser.add_argument(
        "--frozen-dtype",
        choices=["fp32", "bf16"],
        help="weights of the frozen ViT and LM (default: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--max-text-tokens",
        type=int,
        metavar="N",
        help="text positions per sample, [bos] prompt target [eos]; longer texts are cut to N and "
        "counted (default: the LM's max_seq_len minus the visual tokens)",
    )

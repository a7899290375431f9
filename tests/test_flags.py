"""flags.py: one reading of yes/no values for every boolean flag, config fields as flags,
presets."""

import argparse
import importlib

import pytest

import train_stage1
import train_stage2
from stage0 import pretrain
from support.flags import (
    Number,
    add_config_flags,
    add_data_flags,
    config_from_args,
    parse_bool,
    parse_optional_bool,
)
from trainer import TrainConfig
from vit import VIT_CONFIGS, ViTConfig


@pytest.mark.parametrize("text", ["true", "True", "YES", "on", "1", " yes "])
def test_true_words(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "False", "NO", "off", "0"])
def test_false_words(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["flase", "", "2", "none", "y"])
def test_anything_else_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a yes/no value"):
        parse_bool(text)


def parser_with_flags():
    parser = argparse.ArgumentParser()
    add_data_flags(parser)
    add_config_flags(parser, TrainConfig)
    add_config_flags(parser, ViTConfig, "vit-", VIT_CONFIGS, "toy")
    return parser


def test_boolean_fields_and_data_flags_go_through_parse_bool():
    args = parser_with_flags().parse_args(
        [
            "--data",
            "d",
            "--cache-features",
            "yes",
            "--resume",
            "ON",
            "--compile",
            "none",
            "--bf16",
            "0",
            "--vit-class-token",
            "1",
            "--lr",
            "3e-4",
            "--steps",
            "12",
        ]
    )
    assert args.cache_features is True
    config = config_from_args(args, TrainConfig)
    assert config.resume is True and config.compile is None and config.bf16 is False
    assert config.lr == 3e-4 and config.steps == 12 and config.seed == TrainConfig().seed
    vision = config_from_args(args, ViTConfig, "vit-", VIT_CONFIGS)
    assert vision.class_token is True and vision.dim == VIT_CONFIGS["toy"].dim
    assert (
        parser_with_flags().parse_args(["--data", "d", "--cache-features", "off"]).cache_features
        is False
    )


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--data", "d", "--resume", "flase"], "--resume"),
        (["--data", "d", "--cache-features", "maybe"], "--cache-features"),
        (["--data", "d", "--vit-class-token", "nope"], "--vit-class-token"),
        (["--data", "d", "--compile", "sometimes"], "--compile"),
    ],
)
def test_a_bad_boolean_is_an_error_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        parser_with_flags().parse_args(argv)
    assert f"argument {flag}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "main, argv, flag",
    [
        (train_stage1.main, ["--vit", "v", "--tiny-lm", "t", "--resume", "flase"], "--resume"),
        (
            train_stage2.main,
            ["--vit", "v", "--lm", "l", "--resampler-from-stage1", "flase"],
            "--resampler-from-stage1",
        ),
    ],
)
def test_the_stage_scripts_refuse_a_misspelt_boolean(main, argv, flag, capsys):
    with pytest.raises(SystemExit):
        main(["--data", "d", *argv])
    assert f"argument {flag}: 'flase' is not a yes/no value" in capsys.readouterr().err


class Parsed(Exception):
    """Raised instead of parsing: the test wants the parser a script builds, not a run."""


def script_parser(monkeypatch, main) -> argparse.ArgumentParser:
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed):
        main()
    return seen[0]


def owned_options(parser: argparse.ArgumentParser):
    """(the parser or subcommand parser that reads it, option) for every option of a parser and
    of its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subcommand in action.choices.values():
                yield from owned_options(subcommand)
        elif action.option_strings:
            yield parser, action


def options(parser: argparse.ArgumentParser):
    """Every option of a parser and of its subcommands."""
    return (action for _, action in owned_options(parser))


# take no value
SWITCHES = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._HelpAction,
)


# every script with a command line
SCRIPTS = [
    "stage0.pretrain",
    "train_stage1",
    "train_stage2",
    "evaluate",
    "bench.__main__",
    "stage0.synthetic",
    "paper.tables",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_boolean_flag_of_every_script_reads_yes_no_the_one_way(monkeypatch, script):
    """A flag that takes a yes/no value goes through parse_bool (or parse_optional_bool): no
    `type=bool` (any non-empty word is True) and no private reading of "true"."""
    parser = script_parser(monkeypatch, importlib.import_module(script).main)
    boolean = [
        a
        for a in options(parser)
        if not isinstance(a, SWITCHES)
        and (isinstance(a.default, bool) or a.type is bool or str(a.metavar).startswith("BOOL"))
    ]
    wrong = [
        a.option_strings[0] for a in boolean if a.type not in (parse_bool, parse_optional_bool)
    ]
    assert not wrong, f"{script}.py reads these yes/no flags its own way: {wrong}"
    names = {a.option_strings[0] for a in boolean}
    if script in ("stage0.pretrain", "train_stage1", "train_stage2"):
        assert {"--resume", "--overwrite", "--compile", "--bf16"} <= names, names
    if script in ("train_stage1", "train_stage2"):
        assert "--cache-features" in names


def parsed_arguments(monkeypatch, main, argv) -> argparse.Namespace:
    """What a script's parser makes of argv (the script stops right after parsing)."""
    parse_args, seen = argparse.ArgumentParser.parse_args, []

    def parse_then_stop(self, *args, **kwargs):
        seen.append(parse_args(self, *args, **kwargs))
        raise Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(Parsed):
            main(argv)
    return seen[0]


def test_yes_reaches_the_stage_scripts_as_true(monkeypatch):
    """--cache-features yes and --resampler-from-stage1 yes are true, as every other yes/no flag."""
    stage1 = parsed_arguments(
        monkeypatch,
        train_stage1.main,
        [
            "--data",
            "d",
            "--vit",
            "v",
            "--tiny-lm",
            "t",
            "--cache-features",
            "yes",
            "--compile",
            "yes",
            "--bf16",
            "no",
            "--resume",
            "ON",
            "--overwrite",
            "1",
        ],
    )
    assert stage1.cache_features is True
    config = config_from_args(stage1, TrainConfig)
    assert (config.compile, config.bf16, config.resume, config.overwrite) == (
        True,
        False,
        True,
        True,
    )
    for word, expected in (("yes", True), ("No", False)):
        stage2 = parsed_arguments(
            monkeypatch,
            train_stage2.main,
            ["--data", "d", "--vit", "v", "--lm", "l", "--resampler-from-stage1", word],
        )
        assert stage2.resampler_from_stage1 is expected


@pytest.mark.parametrize(
    "main, argv",
    [
        (pretrain.main, ["lm", "--data", "d"]),
        (train_stage1.main, ["--data", "d", "--vit", "v", "--tiny-lm", "t"]),
        (train_stage2.main, ["--data", "d", "--vit", "v", "--lm", "l"]),
    ],
)
@pytest.mark.parametrize("flag", ["--compile", "--bf16", "--resume", "--overwrite"])
def test_a_misspelt_boolean_is_an_error_naming_the_flag_in_every_stage_script(
    main, argv, flag, capsys
):
    with pytest.raises(SystemExit):
        main([*argv, flag, "flase"])
    assert f"argument {flag}: 'flase' is not a yes/no value" in capsys.readouterr().err


def outside(number: Number) -> list[str]:
    """Values just outside a Number's range, and not-a-number."""
    values = ["nan"]
    if number.low is not None:
        values.append(str(number.low if number.low_open else number.low - 1))
    if number.high is not None:
        values.append(str(number.high + 1))
    return values


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_of_every_script_refuses_a_value_out_of_its_range(
    monkeypatch, capsys, script
):
    """Sizes and counts positive, budgets non-negative, rates and fractions in their intervals:
    each numeric flag is read with its range, and argparse names the flag, the value and the
    range. A flag read as a bare int or float has no range: that is the failure."""
    parse_args = argparse.ArgumentParser.parse_args  # script_parser replaces it
    parser = script_parser(monkeypatch, importlib.import_module(script).main)
    checked = 0
    for owner, action in owned_options(parser):
        flag = action.option_strings[0]
        assert action.type not in (int, float), f"{script} {flag} reads a number with no range"
        if not isinstance(action.type, Number):
            continue
        for value in outside(action.type):
            with pytest.raises(SystemExit):
                parse_args(owner, [flag, value])
            error = capsys.readouterr().err
            assert f"argument {flag}: " in error and value in error and "expected" in error
        inside = action.type.low + (1 if action.type.low_open else 0)
        assert action.type(str(inside)) == inside
        checked += 1
    assert checked > 0


def test_a_negative_feature_cache_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        train_stage1.main(
            ["--data", "d", "--vit", "v", "--tiny-lm", "t", "--feature-cache-gb", "-1"]
        )
    error = capsys.readouterr().err
    assert "argument --feature-cache-gb: -1 is out of range: expected a number >= 0" in error

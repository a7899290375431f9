"""flags.py: one reading of yes/no values for every boolean flag, config fields as flags, presets."""
import argparse

import pytest

import train_stage1
import train_stage2
from flags import add_config_flags, add_data_flags, config_from_args, parse_bool
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
    args = parser_with_flags().parse_args(["--data", "d", "--cache-features", "yes", "--resume", "ON", "--compile", "none",
                                           "--bf16", "0", "--vit-class-token", "1", "--lr", "3e-4", "--steps", "12"])
    assert args.cache_features is True
    config = config_from_args(args, TrainConfig)
    assert config.resume is True and config.compile is None and config.bf16 is False
    assert config.lr == 3e-4 and config.steps == 12 and config.seed == TrainConfig().seed
    vision = config_from_args(args, ViTConfig, "vit-", VIT_CONFIGS)
    assert vision.class_token is True and vision.dim == VIT_CONFIGS["toy"].dim
    assert parser_with_flags().parse_args(["--data", "d", "--cache-features", "off"]).cache_features is False


@pytest.mark.parametrize("argv, flag", [
    (["--data", "d", "--resume", "flase"], "--resume"),
    (["--data", "d", "--cache-features", "maybe"], "--cache-features"),
    (["--data", "d", "--vit-class-token", "nope"], "--vit-class-token"),
    (["--data", "d", "--compile", "sometimes"], "--compile"),
])
def test_a_bad_boolean_is_an_error_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit):
        parser_with_flags().parse_args(argv)
    assert f"argument {flag}: " in capsys.readouterr().err


@pytest.mark.parametrize("main, argv, flag", [
    (train_stage1.main, ["--vit", "v", "--tiny-lm", "t", "--resume", "flase"], "--resume"),
    (train_stage2.main, ["--vit", "v", "--lm", "l", "--resampler-from-stage1", "flase"], "--resampler-from-stage1"),
])
def test_the_stage_scripts_refuse_a_misspelt_boolean(main, argv, flag, capsys):
    with pytest.raises(SystemExit):
        main(["--data", "d", *argv])
    assert f"argument {flag}: 'flase' is not a yes/no value" in capsys.readouterr().err

"""Configuration: defaults validate, YAML and overrides merge, and every invalid value is
refused with a message that names the key and the numbers."""

import pytest
import yaml

from wavedistill.config import (
    Config,
    config_from_dict,
    config_to_dict,
    default_upsample_factors,
    load_config,
    parse_overrides,
    receptive_field,
    save_config,
)
from wavedistill.errors import UserError


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.segment_length % cfg.audio.hop_length == 0


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\n  learning_rate: 0.01\n"
                    "teacher:\n  layers: 8\n  stacks: 2\n")
    cfg = load_config(path, ["train.steps=9", "teacher.upsample_factors=[10, 20]"])
    assert cfg.train.steps == 9
    assert cfg.train.learning_rate == 0.01
    assert cfg.teacher.layers == 8
    assert cfg.teacher.upsample_factors == [10, 20]


def test_override_values_are_parsed_as_yaml():
    tree = parse_overrides(["a.b=3", "a.c=[1, 2]", "d=null", "e=text"])
    assert tree == {"a": {"b": 3, "c": [1, 2]}, "d": None, "e": "text"}


def test_int_is_accepted_where_float_is_expected():
    cfg = load_config(None, ["train.learning_rate=1"])
    assert isinstance(cfg.train.learning_rate, float)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["teacher.layrs=3"], ["teacher.layrs", "did you mean 'teacher.layers'"]),
        (["traim.steps=3"], ["traim", "did you mean 'train'"]),
        (["teacher.upsample_factors=[4, 4]"],
         ["teacher.upsample_factors", "16", "hop_length is 200"]),
        (["student.upsample_factors=[2, 50]"], ["student.upsample_factors", "100", "200"]),
        (["data.segment_length=1010"], ["data.segment_length", "1010", "200"]),
        (["audio.fmax=9000"], ["audio.fmax", "9000", "8000"]),
        (["audio.win_length=2048"], ["audio.win_length", "2048", "1024"]),
        (["teacher.layers=10", "teacher.stacks=4"], ["teacher.layers", "10", "4"]),
        (["teacher.output=wav"], ["teacher.output", "mol, gaussian, categorical"]),
        (["train.steps=many"], ["train.steps", "int", "many"]),
        (["teacher.upsample_factors=4"], ["teacher.upsample_factors", "list"]),
        (["distill.power_hop_sizes=[10]"], ["power_hop_sizes", "equal lengths"]),
        (["train.ema_decay=1.5"], ["train.ema_decay", "1.5"]),
        (["train.log_every=0"], ["train.log_every", "positive", "0"]),
        (["train.valid_every=0"], ["train.valid_every", "positive", "0"]),
        (["train.checkpoint_every=0"], ["train.checkpoint_every", "positive", "0"]),
        (["train.decay_steps=0"], ["train.decay_steps", "positive", "0"]),
        (["train.warmup_steps=-1"], ["train.warmup_steps", ">= 0", "-1"]),
        (["train.max_minutes=-2"], ["train.max_minutes", ">= 0", "-2"]),
        (["oops"], ["oops", "key.sub=value"]),
    ],
)
def test_invalid_values_name_key_and_numbers(overrides, fragments):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unreadable_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(scalar)


def test_yaml_tags_are_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("train: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserError, match="evil.yaml"):
        load_config(evil)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=11", "audio.fmax=null"])
    save_config(cfg, tmp_path / "out" / "config.yaml")
    data = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config_from_dict(data) == cfg
    assert config_to_dict(cfg)["train"]["steps"] == 11


def test_receptive_field_counts_dilations():
    # kernel 2, dilations 1,2,4 -> 1 + 1 + 2 + 4
    assert receptive_field(3, 1, 2) == 8
    # two cycles of 1,2 with kernel 3 -> 1 + 2 * (1 + 2 + 1 + 2)
    assert receptive_field(4, 2, 3) == 13


@pytest.mark.parametrize("hop", [1, 80, 120, 200, 256, 300, 97])
def test_unset_upsample_factors_are_derived_from_the_hop(hop):
    cfg = load_config(None, [f"audio.hop_length={hop}", f"data.segment_length={hop * 10}",
                             "audio.win_length=64", "audio.n_fft=64"])
    for factors in (cfg.teacher.upsample_factors, cfg.student.upsample_factors):
        product = 1
        for f in factors:
            product *= f
        assert product == hop
    assert default_upsample_factors(256) == [16, 16]
    assert Config().teacher.upsample_factors == default_upsample_factors(Config().audio.hop_length)


@pytest.mark.parametrize("override", ["train.log_every=0", "train.valid_every=0",
                                      "train.checkpoint_every=0", "train.decay_steps=0"])
def test_the_cli_answers_an_invalid_schedule_with_one_line_and_exit_2(tmp_path, capsys,
                                                                       override):
    from wavedistill.cli import main

    code = main(["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and override.split("=")[0] in err[0]

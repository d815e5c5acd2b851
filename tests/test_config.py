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
    save_config,
)
from wavedistill.errors import UserError


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.segment_length % cfg.audio.hop_length == 0


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "train:\n  steps: 7\n  learning_rate: 0.01\nteacher:\n  layers: 8\n  stacks: 2\n"
    )
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
        (
            ["teacher.upsample_factors=[4, 4]"],
            ["teacher.upsample_factors", "16", "hop_length is 200"],
        ),
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


@pytest.mark.parametrize("hop", [1, 80, 120, 200, 256, 300, 97])
def test_unset_upsample_factors_are_derived_from_the_hop(hop):
    cfg = load_config(
        None,
        [
            f"audio.hop_length={hop}",
            f"data.segment_length={hop * 10}",
            "audio.win_length=64",
            "audio.n_fft=64",
        ],
    )
    for factors in (cfg.teacher.upsample_factors, cfg.student.upsample_factors):
        product = 1
        for f in factors:
            product *= f
        assert product == hop
    assert default_upsample_factors(256) == [16, 16]
    assert Config().teacher.upsample_factors == default_upsample_factors(Config().audio.hop_length)


# One bad value per invariant of ``validate``: (overrides, the key the message must name).
INVARIANTS = [
    (["data.format=tar"], "data.format"),
    (["teacher.output=wav"], "teacher.output"),
    (["student.noise=uniform"], "student.noise"),
    (["train.decay=step"], "train.decay"),
    (["train.precision=fp8"], "train.precision"),
    (["audio.sample_rate=0"], "audio.sample_rate"),
    (["audio.hop_length=0"], "audio.hop_length"),
    (["audio.n_mels=0"], "audio.n_mels"),
    (["audio.n_fft=0", "audio.win_length=0"], "audio.n_fft"),
    (["audio.win_length=0"], "audio.win_length"),
    (["audio.win_length=2048"], "audio.win_length"),
    (["audio.fmax=9000"], "audio.fmax"),
    (["audio.fmin=8000"], "audio.fmin"),
    (["audio.log_floor=0"], "audio.log_floor"),
    (["audio.log_base=2"], "audio.log_base"),
    (["audio.frame_center=end"], "audio.frame_center"),
    (
        [
            "audio.frame_center=middle",
            "audio.hop_length=2048",
            "audio.n_fft=1024",
            "teacher.upsample_factors=[16, 16, 8]",
            "student.upsample_factors=[16, 16, 8]",
            "data.segment_length=8192",
        ],
        "audio.frame_center",
    ),
    (["audio.magnitude_eps=-1"], "audio.magnitude_eps"),
    (["audio.stats_std_floor=0"], "audio.stats_std_floor"),
    (["data.segment_length=1010"], "data.segment_length"),
    (["data.valid_fraction=1"], "data.valid_fraction"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.valid_min=-1"], "data.valid_min"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["data.silence_threshold_db=3"], "data.silence_threshold_db"),
    (["data.max_corrupt_fraction=-1"], "data.max_corrupt_fraction"),
    (["data.pitch_fmin=0"], "data.pitch_fmin"),
    (["data.pitch_fmax=40"], "data.pitch_fmin"),
    (["data.pitch_fmax=9000"], "data.pitch_fmax"),
    (["teacher.source=pulse"], "teacher.source"),
    (["student.source=pulse"], "student.source"),
    (["teacher.source=harmonic", "teacher.use_mel=false"], "teacher.source"),
    (["teacher.pitch_weight=-1"], "teacher.pitch_weight"),
    (["teacher.pitch_channels=0"], "teacher.pitch_channels"),
    (["teacher.source_harmonics=-1"], "teacher.source_harmonics"),
    (["teacher.source_phase=pulse"], "teacher.source_phase"),
    (["teacher.upsample_factors=[0, 200]"], "teacher.upsample_factors"),
    (["student.upsample_factors=[2, 50]"], "student.upsample_factors"),
    (["teacher.layers=10", "teacher.stacks=4"], "teacher.layers"),
    (["teacher.stacks=0"], "teacher.stacks"),
    (["teacher.kernel_size=1"], "teacher.kernel_size"),
    (["teacher.gate_channels=7"], "teacher.gate_channels"),
    (["teacher.residual_channels=0"], "teacher.residual_channels"),
    (["teacher.skip_channels=0"], "teacher.skip_channels"),
    (["teacher.speaker_dim=0"], "teacher.speaker_dim"),
    (["teacher.mu_law_levels=1"], "teacher.mu_law_levels"),
    (["teacher.num_mixtures=0"], "teacher.num_mixtures"),
    (["teacher.num_speakers=-1"], "teacher.num_speakers"),
    (["teacher.conditioning_context=-1"], "teacher.conditioning_context"),
    (["student.flow_layers=[10, 0]"], "student.flow_layers"),
    (["student.kernel_size=1"], "student.kernel_size"),
    (["student.channels=0"], "student.channels"),
    (["student.speaker_dim=0"], "student.speaker_dim"),
    (["student.num_speakers=-1"], "student.num_speakers"),
    (["student.dilation_cycle=0"], "student.dilation_cycle"),
    (["student.initial_scale=0"], "student.initial_scale"),
    (["student.synthesis_tile=0"], "student.synthesis_tile"),
    (["student.conditioning_context=-1"], "student.conditioning_context"),
    (["distill.num_draws=0"], "distill.num_draws"),
    (["distill.power_hop_sizes=[10]"], "distill.power_fft_sizes"),
    (["distill.power_hop_sizes=[0, 240, 50]"], "distill.power_hop_sizes"),
    (["distill.power_win_lengths=[2000, 1200, 240]"], "distill.power_win_lengths"),
    (["distill.kl_weight=-1"], "distill.kl_weight"),
    (["distill.power_weight=-1"], "distill.power_weight"),
    (["distill.power_log_weight=-1"], "distill.power_log_weight"),
    (["distill.stft_weight=-1"], "distill.stft_weight"),
    (["distill.mel_weight=-1"], "distill.mel_weight"),
    (["distill.contrastive_weight=-1"], "distill.contrastive_weight"),
    (["distill.gaussian_reg_lambda=-1"], "distill.gaussian_reg_lambda"),
    (["distill.kl_weight=0", "distill.power_weight=0"], "distill.stft_weight"),
    (["train.steps=0"], "train.steps"),
    (["train.audio_seconds=0"], "train.audio_seconds"),
    (["train.learning_rate=0"], "train.learning_rate"),
    (["train.ema_decay=1"], "train.ema_decay"),
    (["train.keep_last=0"], "train.keep_last"),
    (["train.betas=[0.9, 1.0]"], "train.betas"),
    (["train.weight_decay=-1"], "train.weight_decay"),
    (["train.decay_rate=0"], "train.decay_rate"),
    (["train.grad_clip=-1"], "train.grad_clip"),
    (["train.max_bad_steps=0"], "train.max_bad_steps"),
    (["train.max_minutes=-2"], "train.max_minutes"),
    (["train.log_every=0"], "train.log_every"),
    (["train.valid_every=0"], "train.valid_every"),
    (["train.checkpoint_every=0"], "train.checkpoint_every"),
    (["train.decay_steps=0"], "train.decay_steps"),
    (["train.warmup_steps=-1"], "train.warmup_steps"),
    (["train.audio_every=-1"], "train.audio_every"),
    (["train.valid_batches=-1"], "train.valid_batches"),
]


def _refused_keys() -> set[str]:
    """Every config key for which ``validate`` refuses 0 or -1 (numbers, lists of numbers are
    refused for their type), and every key with a fixed set of choices."""
    import dataclasses

    from wavedistill.config import CHOICES, Config

    refused = set(CHOICES)
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            if f.type in ("bool", "str"):  # a type error or a choice, not an invariant
                continue
            key = f"{section.name}.{f.name}"
            for bad in ("0", "-1"):
                try:
                    load_config(None, [f"{key}={bad}"])
                except UserError:
                    refused.add(key)
    return refused


@pytest.mark.parametrize("overrides, key", INVARIANTS, ids=[k for _, k in INVARIANTS])
def test_the_cli_answers_each_invariant_with_one_line_naming_the_key_and_exit_2(
    tmp_path, capsys, overrides, key
):
    from wavedistill.cli import main

    code = main(
        ["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *overrides]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and key in err[0], err


def test_every_key_validate_refuses_has_a_row_in_the_invariants_table():
    """Every key for which ``validate`` refuses a value (probed with 0 and -1) is among the keys
    the table above proves the CLI refuses with one line."""
    tested = {k for _, k in INVARIANTS}
    assert _refused_keys() <= tested, sorted(_refused_keys() - tested)


def test_audio_settings_stored_before_a_key_existed_compare_as_its_default():
    """A dataset folder or checkpoint written before ``audio.log_base`` (and the other
    convention keys) existed holds the defaults' features, so it still matches."""
    import dataclasses

    from wavedistill.config import AudioConfig, audio_differences

    old = {
        k: v
        for k, v in dataclasses.asdict(AudioConfig()).items()
        if k not in ("log_base", "frame_center", "magnitude_eps", "normalize")
    }
    assert audio_differences(old, AudioConfig()) == []
    assert audio_differences(old, AudioConfig(log_base="10")) == ["audio.log_base 'e' vs '10'"]

"""The command line: every subcommand has help, user errors are one line with exit status 2,
and ``python -m wavedistill`` is the same program."""

import subprocess
import sys

import pytest

from wavedistill.cli import build_parser, main

SUBCOMMANDS = [
    "preprocess",
    "info",
    "train-teacher",
    "distill",
    "synthesize",
    "benchmark",
    "evaluate",
    "make-synthetic",
    "export",
]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: wavedistill " + command in capsys.readouterr().out


def test_parser_lists_every_subcommand():
    text = build_parser().format_help()
    for command in SUBCOMMANDS:
        assert command in text


def test_missing_required_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train-teacher"])
    assert info.value.code == 2


def _assert_one_line_error(capsys, fragment):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert fragment in err


def test_info_on_missing_path_exits_2_with_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing.pt")]) == 2
    _assert_one_line_error(capsys, "nothing.pt")


def test_invalid_config_override_exits_2_naming_the_key(tmp_path, capsys):
    code = main(
        [
            "preprocess",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "audio.hop_lenght=100",
        ]
    )
    assert code == 2
    _assert_one_line_error(capsys, "audio.hop_lenght")


def test_synthesize_with_missing_checkpoint_exits_2(tmp_path, capsys):
    code = main(
        [
            "synthesize",
            "--checkpoint",
            str(tmp_path / "x.pt"),
            "--input",
            str(tmp_path / "a.wav"),
            "--output",
            str(tmp_path / "o.wav"),
        ]
    )
    assert code == 2
    _assert_one_line_error(capsys, "x.pt")


def test_debug_flag_keeps_the_traceback(tmp_path):
    from wavedistill.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "info", str(tmp_path / "nothing.pt")])


def test_python_dash_m_runs_the_same_program():
    out = subprocess.run(
        [sys.executable, "-m", "wavedistill", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("wavedistill ")

"""Stored data is checked where it is read: a dataset folder whose ``mel/*.npy`` rotted after
preprocessing is reported file by file by training, by evaluation and by ``info --check``;
training skips a bad clip (named once, listed in ``OUT/skipped.txt``, summed up at the end)
and stops in one line past ``data.max_corrupt_fraction``."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONFIG, write_tiny_dataset

from wavedistill.cli import main
from wavedistill.config import config_from_dict
from wavedistill.data.datacheck import ClipCheck, CorruptData, SkipLog, check_folder
from wavedistill.training.runs import train_teacher


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("datacheck"))


def entries(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def copy_with_nan(
    clean: Path, tmp_path: Path, count: int, split: str = "train"
) -> tuple[Path, list[Path]]:
    """A copy of the folder whose first ``count`` clips of ``split`` hold NaN in their log-mel;
    returns it and the damaged files."""
    folder = shutil.copytree(clean, tmp_path / "data")
    damaged = []
    for entry in entries(folder, split)[:count]:
        path = folder / entry["mel"]
        mel = np.load(path)
        mel[:, ::3] = np.nan
        np.save(path, mel)
        damaged.append(path)
    return folder, damaged


def tiny_cfg(**sections):
    data = copy.deepcopy(TINY_CONFIG)
    for section, values in sections.items():
        data[section].update(values)
    return config_from_dict(data)


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- one clip --------------------------------------------------------------------------------


def test_each_kind_of_damage_is_found_and_named(clean, tmp_path):
    folder = shutil.copytree(clean, tmp_path / "data")
    cfg = tiny_cfg()
    good, *others = entries(folder, "train")
    check = ClipCheck.for_folder(folder, cfg.audio)
    assert check.problem(good) is None

    def damaged(entry, name, array=None, raw=None):
        path = folder / entry[name]
        if raw is not None:
            path.write_bytes(raw)
        else:
            np.save(path, array)
        return ClipCheck.for_folder(folder, cfg.audio).problem(entry)

    mel = np.load(folder / others[0]["mel"])
    assert damaged(others[0], "mel", mel[:, :-1]) == (
        folder / others[0]["mel"],
        f"shape {(mel.shape[0], mel.shape[1] - 1)}, the manifest says {mel.shape}",
    )
    floored = np.full_like(np.load(folder / others[1]["mel"]), -20.0)  # log(1e-5) is -11.5
    assert "below the log floor" in damaged(others[1], "mel", floored)[1]
    loud = np.load(folder / others[2]["mel"]) + 40.0
    assert "standard deviations from the folder's statistics" in damaged(others[2], "mel", loud)[1]
    path, why = damaged(others[3], "audio", raw=b"\x93NUMPY truncated")
    assert path == folder / others[3]["audio"] and why.startswith("unreadable")


def test_info_check_lists_every_bad_array_and_manifest_line(clean, tmp_path, capsys):
    code, out, _ = cli(capsys, "info", clean, "--check")
    assert code == 0 and "all 6 clips and their manifest entries are sound" in out
    folder, damaged = copy_with_nan(clean, tmp_path, 2)
    with open(folder / "train.jsonl", "a") as f:
        f.write("{not json\n")
    code, out, _ = cli(capsys, "info", folder, "--check")
    lines = out.strip().splitlines()
    assert code == 1
    for path in damaged:
        assert any(line.startswith(f"bad {path}: ") and "not finite" in line for line in lines)
    assert any(f"{folder / 'train.jsonl'}:6: not a JSON line" in line for line in lines)
    assert lines[-1].endswith("run `wavedistill preprocess` again to rewrite them")
    assert len(check_folder(folder)) == 3


# -- training --------------------------------------------------------------------------------


def test_training_skips_a_corrupted_clip_names_it_once_and_sums_up(clean, tmp_path, caplog):
    folder, (bad,) = copy_with_nan(clean, tmp_path, 1)
    cfg = tiny_cfg(
        data={"max_corrupt_fraction": 0.5},
        train={"steps": 6, "checkpoint_every": 100, "valid_every": 100},
    )
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        trainer = train_teacher(cfg, folder, out)
    assert trainer.step == 6 and trainer.bad_total == 0  # no step saw the NaN
    named = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(named) == 1 and "skipped as corrupted" in named[0].getMessage()
    assert (out / "skipped.txt").read_text().startswith(f"{bad}: ")
    assert caplog.records[-1].getMessage() == (
        f"1 clip(s) skipped as corrupted: see {out / 'skipped.txt'}"
    )


def test_more_corrupted_clips_than_the_limit_stop_training_in_one_line(clean, tmp_path, capsys):
    folder, _ = copy_with_nan(clean, tmp_path, 3)  # half the clips, as in the report
    code, _, err = cli(
        capsys,
        "train-teacher",
        "--data",
        folder,
        "--out",
        tmp_path / "run",
        *[
            f"{s}.{k}={v}"
            for s, keys in TINY_CONFIG.items()
            for k, v in keys.items()
            if not isinstance(v, (list, dict))
        ],
        "train.steps=20",
    )
    line = err.strip().splitlines()[-1].split("\r")[-1]
    assert code == 2 and "Traceback" not in err
    assert line.startswith(f"wavedistill train-teacher: error: {folder}: ")
    assert "clips are corrupted, more than data.max_corrupt_fraction = 0.05 allows (0)" in line
    assert line.endswith("run `wavedistill preprocess` again to rewrite them")


def test_the_skip_log_counts_files_not_reads():
    log = SkipLog(None, Path("data"), total=10, limit=1)
    log.record("data/mel/a.npy", "NaN")
    log.record("data/mel/a.npy", "NaN")  # read again in the next epoch
    assert len(log) == 1 and log.summary() == "1 clip(s) skipped as corrupted: listed above"
    with pytest.raises(CorruptData, match="2 of 10 clips"):
        log.record("data/mel/b.npy", "NaN")


# -- evaluation ------------------------------------------------------------------------------


def test_evaluation_leaves_out_a_corrupted_clip_and_names_it(clean, tmp_path, capsys):
    cfg = tiny_cfg(train={"steps": 1, "checkpoint_every": 1, "valid_every": 100})
    train_teacher(cfg, clean, tmp_path / "teacher")
    folder, (bad,) = copy_with_nan(clean, tmp_path, 1)
    report = tmp_path / "report"
    code, out, err = cli(
        capsys,
        "evaluate",
        "--checkpoint",
        tmp_path / "teacher" / "checkpoints" / "best.pt",
        "--data",
        folder,
        "--out",
        report,
        "--split",
        "all",
        "--griffin-lim-iters",
        "0",
        "--teacher-seconds",
        "0.02",
        "--max-clips",
        "6",
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == (
        f"1 clip(s) skipped as corrupted: see {report / 'skipped.txt'}"
    )
    assert (report / "skipped.txt").read_text().startswith(f"{bad}: ")
    assert json.loads((report / "metrics.json").read_text())["clips"] == 5


# -- synthesis of a folder -------------------------------------------------------------------


def test_synthesis_of_a_folder_lists_what_it_skipped_and_says_where(tmp_path, capsys):
    from conftest import write_clip

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_clip(corpus / "good.wav", seconds=0.2)
    (corpus / "bad.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    code, stdout, _ = cli(capsys, "synthesize", "--input-dir", corpus, "--output", out)
    assert code == 1
    assert (
        stdout.strip()
        .splitlines()[-1]
        .endswith(f"skipped 1 unreadable input(s): see {out / 'skipped.txt'}")
    )
    assert (out / "skipped.txt").read_text().startswith("bad: ")

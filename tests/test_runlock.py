"""One run per output folder: while a real ``train-teacher`` process trains into a folder, a
second ``train-teacher`` or ``preprocess`` into it is refused in one line naming that process;
once it is killed, its lock is taken over."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import TINY_CONFIG, write_tiny_dataset

from wavedistill.cli import main
from wavedistill.runlock import LOCK_NAME, FolderBusy, holder_pid, run_lock


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("runlock"))


def config_file(folder, **train):
    data = copy.deepcopy(TINY_CONFIG)
    data["train"].update(train)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_a_lock_is_exclusive_and_leaves_nothing_behind(tmp_path):
    with run_lock(tmp_path, "preprocess") as path:
        assert holder_pid(tmp_path) == os.getpid()
        with pytest.raises(
            FolderBusy,
            match=rf"in use by another run \(pid {os.getpid()}, "
            r"wavedistill preprocess, since ",
        ):
            with run_lock(tmp_path, "train-teacher"):
                pass
    assert not path.exists()
    with run_lock(tmp_path, "train-teacher"):  # free again
        pass


def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_runs_lock_taken_over(
    dataset, tmp_path, capsys
):
    out = tmp_path / "run"
    busy = config_file(tmp_path, steps=100000, valid_every=100000, checkpoint_every=100000)
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wavedistill",
            "train-teacher",
            "--config",
            str(busy),
            "--data",
            str(dataset),
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "validation.jsonl").exists():  # it holds the folder and trains
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        short = config_file(tmp_path, steps=2)
        for command in (
            ["train-teacher", "--config", short, "--data", dataset],
            ["preprocess", "--data", dataset.parent / "corpus"],
        ):
            code, err = cli(capsys, *command, "--out", out)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, err
            assert lines[0].startswith(
                f"wavedistill {command[0]}: error: {out}: in use by "
                f"another run (pid {first.pid}, wavedistill train-teacher, "
            )
            assert lines[0].endswith("wait for it to end or choose another output folder")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert holder_pid(out) == first.pid  # the killed run's lock file is still there
    code, err = cli(capsys, "train-teacher", "--config", short, "--data", dataset, "--out", out)
    assert code == 0, err
    assert not (out / LOCK_NAME).exists()

"""Interruption is a save: SIGINT and SIGTERM sent to a real training process finish the step,
write a checkpoint, say how to resume and exit with 130 / 143; the resumed run ends with the
weights of one that was never interrupted. A second Ctrl-C exits at once."""

from __future__ import annotations

import copy
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, write_tiny_dataset

from wavedistill.cli import main
from wavedistill.config import config_from_dict
from wavedistill.store.checkpoint import latest_checkpoint, load_checkpoint
from wavedistill.training.runs import train_teacher

STEPS = 30  # long enough that a signal sent after the first validation lands mid-run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("interrupt"))


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    """The final weights of a run of STEPS that no signal reached (in this process)."""
    trainer = train_teacher(
        config_from_dict(settings()), dataset, tmp_path_factory.mktemp("straight") / "run"
    )
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def settings() -> dict:
    data = copy.deepcopy(TINY_CONFIG)
    data["train"].update(steps=STEPS, warmup_steps=10, checkpoint_every=1000, valid_every=1000)
    return data


def start(dataset: Path, out: Path, *extra: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    """``wavedistill train-teacher`` in a process of its own, one thread as in this one."""
    config = out.parent / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "wavedistill",
        "train-teacher",
        "--config",
        str(config),
        "--data",
        str(dataset),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_until_training(proc: subprocess.Popen, out: Path, timeout: float = 60.0) -> None:
    """Until the run has validated its starting point (so it is in the loop)."""
    deadline = time.monotonic() + timeout
    while not (out / "validation.jsonl").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)


def one_thread_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize(
    "sig, status, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_saves_and_the_resumed_run_ends_bit_identical(
    dataset, uninterrupted, tmp_path, sig, status, name
):
    out = tmp_path / "run"
    proc = start(dataset, out)
    wait_until_training(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    saved = latest_checkpoint(out)
    step = load_checkpoint(saved)["step"]
    assert 0 < step < STEPS, "the signal came too late to interrupt the run"
    assert line.startswith(
        f"wavedistill train-teacher: interrupted by {name} at step {step} of "
        f"{STEPS}: saved {saved}; resume with: wavedistill train-teacher "
    )
    assert line.endswith(" --resume")

    if sig == signal.SIGINT:  # the command the message gives, run in this (single-threaded)
        command = shlex.split(line.split("; resume with: ")[1])  # process
        assert command[0] == "wavedistill" and command[-1] == "--resume"
        assert main(command[1:]) == 0
    else:  # the same run, resumed through the API
        train_teacher(config_from_dict(settings()), dataset, out, resume=True)
    resumed = one_thread_weights(latest_checkpoint(out))
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key


def test_a_second_ctrl_c_exits_at_once(dataset, tmp_path):
    out, log = tmp_path / "run", tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = start(dataset, out, stderr=stderr)
        wait_until_training(proc, out)
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while "SIGINT received" not in log.read_text():  # the first one was taken in
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    err = log.read_text()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "wavedistill train-teacher: SIGINT again: stopped at once without saving"
    )
    assert not [p for p in out.rglob("*.tmp")]

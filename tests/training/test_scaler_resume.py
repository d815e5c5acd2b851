"""The float16 gradient scaler's state travels in checkpoints: a resumed float16 run continues
with the same loss scale and ends with the weights of an uninterrupted one.

This CPU computes float16 only by emulation, which the precision gate refuses; the test lets
it through (as if the CPU had ``avx512_fp16``) to run the real scaler on tiny models. A large
initial scale with a short growth interval makes the scale move in the first steps, so a
scaler restarted from its defaults would skip other steps and end elsewhere."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_CONFIG, write_tiny_dataset

from wavedistill.config import config_from_dict
from wavedistill.store.checkpoint import latest_checkpoint, load_checkpoint
from wavedistill.training.batches import open_data_folder
from wavedistill.training.distributed import Processes
from wavedistill.training.loop import Trainer

INITIAL_SCALE = 2.0**24  # overflows float16 gradients: the first steps shrink it


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("scaler"))


@pytest.fixture(autouse=True)
def float16_allowed(monkeypatch):
    from wavedistill import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_fp16"}))


def trainer(dataset, out, steps: int) -> Trainer:
    from wavedistill.models.teacher import WaveNetTeacher
    from wavedistill.objectives.likelihood import MaximumLikelihood

    data = copy.deepcopy(TINY_CONFIG)
    data["train"].update(
        steps=steps, precision="float16", checkpoint_every=100, valid_every=100, warmup_steps=0
    )
    cfg = config_from_dict(data)
    torch.manual_seed(cfg.train.seed)
    run = Trainer(
        "teacher",
        WaveNetTeacher.from_config(cfg),
        MaximumLikelihood(),
        cfg,
        open_data_folder(dataset, cfg),
        out,
        Processes(),
        torch.device("cpu"),
    )
    assert run.scaler.is_enabled()
    run.scaler = torch.amp.GradScaler("cpu", init_scale=INITIAL_SCALE, growth_interval=2)
    return run


def test_a_resumed_float16_run_continues_with_the_same_scale(dataset, tmp_path):
    straight = trainer(dataset, tmp_path / "a", 4).run()
    trainer(dataset, tmp_path / "b", 2).run()
    saved = load_checkpoint(latest_checkpoint(tmp_path / "b"))["scaler"]
    assert saved["scale"] < INITIAL_SCALE  # state a fresh scaler would not have
    resumed = trainer(dataset, tmp_path / "b", 4).run(resume=True)
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_a_float32_run_stores_no_scaler_state(dataset, tmp_path):
    from wavedistill.training.runs import train_teacher

    data = copy.deepcopy(TINY_CONFIG)
    train_teacher(config_from_dict(data), dataset, tmp_path / "run")
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["scaler"] is None

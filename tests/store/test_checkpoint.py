"""Checkpoints: self-describing, atomic, read without unpickling code; every unusable file is
refused with one line naming it; a model rebuilds itself from one."""

from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import pytest
import torch
from conftest import rebuilt, tiny_config

from wavedistill import __version__
from wavedistill.config import config_to_dict
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.info import describe_checkpoint
from wavedistill.store.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    link_or_copy,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_name,
)


def teacher_payload(seed: int = 0) -> dict:
    """A complete teacher checkpoint payload of a freshly initialised tiny teacher."""
    from wavedistill.models.teacher import WaveNetTeacher

    cfg = tiny_config()
    torch.manual_seed(seed)
    model = WaveNetTeacher.from_config(cfg)
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}  # distinguishable from raw
    n_mels = cfg.audio.n_mels
    return {
        "kind": "teacher",
        "config": config_to_dict(cfg),
        "stats": FeatureStats(torch.linspace(-1, 1, n_mels), torch.ones(n_mels)).to_dict(),
        "model": model.state_dict(),
        "ema": ema,
        "optimizer": {},
        "scheduler": {},
        "step": 7,
        "rng": [capture_rng_state()],
        "data_state": {"epoch": 1, "position": 2},
        "best_valid": 12.5,
        "speakers": {"default": 0},
    }


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(tmp_path / "checkpoints" / step_name(7), teacher_payload())


# -- writing and reading ---------------------------------------------------------------------


def test_saved_checkpoint_reads_back_every_field(saved):
    ckpt = load_checkpoint(saved, expected_kind="teacher")
    payload = teacher_payload()
    assert ckpt["format"] == "wavedistill" and ckpt["version"] == __version__
    assert ckpt["path"] == str(saved)
    for key in ("kind", "config", "step", "data_state", "best_valid", "speakers"):
        assert ckpt[key] == payload[key]
    for key in ("model", "ema", "stats"):
        for name, tensor in payload[key].items():
            torch.testing.assert_close(ckpt[key][name], tensor)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(saved):
    before = saved.read_bytes()
    bad = teacher_payload()
    bad["speakers"] = {"x": lambda: 0}  # cannot be pickled
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises
        save_checkpoint(saved, bad)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


class _TouchPayload:
    """Pickles as a call that creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _ShellPayload(_TouchPayload):
    """Pickles as ``os.system("touch marker")``."""

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize(
    "payload_class, named", [(_TouchPayload, "getattr"), (_ShellPayload, "system")]
)
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(
    tmp_path, payload_class, named
):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    payload = teacher_payload()
    payload["speakers"] = payload_class(marker)
    torch.save({"format": "wavedistill", **payload}, path)
    with pytest.raises(UserError, match=rf"evil.pt: refused: it calls \S*{named}.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "no such checkpoint file"),
        ("empty", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("garbage", "not a readable checkpoint"),
        ("foreign", "not a wavedistill checkpoint"),
        ("incomplete", "incomplete checkpoint"),
    ],
)
def test_unusable_files_are_refused_with_one_line_naming_the_file(saved, damage, message):
    path = saved.with_name("damaged.pt")
    data = saved.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif damage == "incomplete":
        torch.save({"format": "wavedistill", "kind": "teacher"}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_the_wrong_kind_is_refused(saved):
    with pytest.raises(UserError, match=r"is a teacher checkpoint; a student checkpoint is needed"):
        load_checkpoint(saved, expected_kind="student")


# -- rebuilding models -----------------------------------------------------------------------


def test_build_model_rebuilds_the_teacher_with_ema_or_raw_weights(saved):
    ckpt = load_checkpoint(saved)
    model, cfg, stats = rebuilt(ckpt)
    assert not model.training
    assert config_to_dict(cfg) == ckpt["config"]
    torch.testing.assert_close(stats.mean, ckpt["stats"]["mean"])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["ema"][name])
    raw, _, _ = rebuilt(ckpt, use_ema=False)
    for name, tensor in raw.state_dict().items():
        torch.testing.assert_close(tensor, ckpt["model"][name])


def test_weights_that_do_not_fit_the_stored_config_are_refused_naming_the_file(tmp_path):
    payload = teacher_payload()
    payload["config"] = config_to_dict(tiny_config(teacher={"residual_channels": 4}))
    path = save_checkpoint(tmp_path / "mismatch.pt", payload)
    with pytest.raises(UserError, match=r"mismatch.pt: weights do not fit .*size mismatch"):
        rebuilt(load_checkpoint(path))


def test_an_invalid_stored_config_is_refused_naming_the_file(tmp_path):
    payload = teacher_payload()
    payload["config"]["teacher"]["layrs"] = 3
    path = save_checkpoint(tmp_path / "badcfg.pt", payload)
    with pytest.raises(UserError, match=r"badcfg.pt: stored config is invalid: .*teacher.layrs"):
        rebuilt(load_checkpoint(path))


def test_describe_names_kind_step_receptive_field_and_parameters(saved):
    model, _, _ = rebuilt(load_checkpoint(saved))
    text = describe_checkpoint(saved)
    assert text.startswith("teacher checkpoint")
    assert "step 7" in text and "best validation 12.5000" in text
    assert f"receptive field: {model.receptive_field} samples" in text
    assert f"parameters: {model.num_parameters:,}" in text


# -- RNG state -------------------------------------------------------------------------------


def _draws():
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        [random.random() for _ in range(3)],
        np.random.randn(1).tolist(),
    )


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    payload = teacher_payload()
    payload["rng"] = [capture_rng_state()]
    expected = _draws()
    path = save_checkpoint(tmp_path / "rng.pt", payload)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    restore_rng_state(load_checkpoint(path)["rng"][0])
    assert _draws() == expected


# -- run folders -----------------------------------------------------------------------------


def test_latest_is_the_highest_step_and_pruning_keeps_the_newest_and_best(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (5, 40, 999999, 1000000):
        (folder / step_name(step)).write_bytes(b"x")
    (folder / "best.pt").write_bytes(b"b")
    assert latest_checkpoint(tmp_path) == folder / step_name(1000000)
    deleted = prune_checkpoints(folder, keep_last=2)
    assert sorted(p.name for p in deleted) == [step_name(5), step_name(40)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["best.pt", step_name(999999), step_name(1000000)]
    )
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_best_link_survives_pruning_of_its_step_file(saved):
    best = saved.with_name("best.pt")
    link_or_copy(saved, best)
    saved.unlink()
    assert load_checkpoint(best)["step"] == 7

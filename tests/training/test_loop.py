"""The trainer: its schedule, EMA and data order are what the docs say; a stopped and resumed
run ends with the weights of one that never stopped; a non-finite step never reaches the weights
or a checkpoint; bad inputs are refused with one line."""

from __future__ import annotations

import collections
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, tiny_config, write_tiny_dataset

import wavedistill
from wavedistill.config import TrainConfig, config_to_dict
from wavedistill.errors import UserError
from wavedistill.store.checkpoint import latest_checkpoint, load_checkpoint
from wavedistill.training.batches import ShardedBatchSampler, open_data_folder
from wavedistill.training.distributed import Processes, autocast_dtype
from wavedistill.training.loop import Trainer, TrainingDiverged
from wavedistill.training.optim import EMA, lr_factor, make_optimizer
from wavedistill.training.runs import train_teacher

# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A preprocessed tiny corpus (5 train + 1 valid utterances), shared by this module."""
    return write_tiny_dataset(tmp_path_factory.mktemp("training"))


def tiny_cfg(**train):
    """:func:`conftest.tiny_config` with ``train`` keys overridden (most tests vary only
    those)."""
    return tiny_config(train=train)


def teacher_trainer(cfg, data_dir, out_dir, objective=None) -> Trainer:
    from wavedistill.models.teacher import WaveNetTeacher
    from wavedistill.objectives.likelihood import MaximumLikelihood

    torch.manual_seed(cfg.train.seed)
    model = WaveNetTeacher.from_config(cfg)
    return Trainer(
        "teacher",
        model,
        objective or MaximumLikelihood(),
        cfg,
        open_data_folder(data_dir, cfg),
        out_dir,
        Processes(),
        torch.device("cpu"),
    )


class NonFiniteOn:
    """The real maximum-likelihood objective, whose loss is NaN on the given calls (0-based)."""

    valid_metric = "nll_bits"

    def __init__(self, bad_calls):
        from wavedistill.objectives.likelihood import MaximumLikelihood

        self.inner, self.bad_calls, self.calls = MaximumLikelihood(), set(bad_calls), 0

    def loss(self, model, batch):
        loss, logs = self.inner.loss(model, batch)
        bad = self.calls in self.bad_calls or "all" in self.bad_calls
        self.calls += 1
        return (loss * math.nan if bad else loss), logs

    def validate(self, model, batch):
        return self.inner.validate(model, batch)

    def log_media(self, model, batch):
        return {}  # no teacher samples: they would only slow the test


# -- schedule --------------------------------------------------------------------------------


def test_warmup_is_linear_and_reaches_the_base_rate():
    train = TrainConfig(warmup_steps=4, decay="none")
    assert [lr_factor(s, train) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_exponential_decay_multiplies_by_decay_rate_every_decay_steps():
    train = TrainConfig(warmup_steps=10, decay="exponential", decay_rate=0.5, decay_steps=100)
    assert lr_factor(10, train) == 1.0
    assert lr_factor(110, train) == pytest.approx(0.5)
    assert lr_factor(310, train) == pytest.approx(0.125)


def test_cosine_decay_falls_from_one_to_zero_at_the_last_step():
    train = TrainConfig(steps=110, warmup_steps=10, decay="cosine")
    assert lr_factor(10, train) == pytest.approx(1.0)
    assert lr_factor(60, train) == pytest.approx(0.5)
    assert lr_factor(110, train) == pytest.approx(0.0, abs=1e-12)


def test_optimizer_learning_rate_follows_the_schedule_step_by_step():
    train = TrainConfig(
        learning_rate=0.01, warmup_steps=3, decay="exponential", decay_rate=0.5, decay_steps=2
    )
    optimizer, scheduler = make_optimizer(torch.nn.Linear(2, 2), train)
    for step in range(8):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * lr_factor(step, train))
        optimizer.step()
        scheduler.step()


# -- EMA -------------------------------------------------------------------------------------


def test_ema_matches_a_float64_recurrence_with_its_warmup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    reference = {k: v.double().clone() for k, v in model.state_dict().items()}
    for n in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, n)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            reference[k] = d * reference[k] + (1 - d) * v.double()
    for k, v in ema.model.state_dict().items():
        torch.testing.assert_close(v.double(), reference[k], rtol=1e-6, atol=1e-6)


# -- data order ------------------------------------------------------------------------------


def test_ranks_get_disjoint_equal_shares_of_one_permutation():
    shares = []
    for rank in range(3):
        sampler = ShardedBatchSampler(20, 2, seed=5, procs=Processes(rank, 3))
        sampler.set_epoch(1)
        shares.append([i for batch in sampler for i in batch])
    assert all(len(s) == 6 for s in shares)
    flat = [i for s in shares for i in s]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(20))


def test_each_epoch_has_its_own_order_and_the_same_epoch_repeats_it():
    sampler = ShardedBatchSampler(50, 5, seed=1, procs=Processes())
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] == orders[2]
    assert orders[0] != orders[1]


def test_starting_mid_epoch_yields_the_rest_of_that_epoch():
    sampler = ShardedBatchSampler(30, 4, seed=2, procs=Processes())
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start=2)
    assert list(sampler) == whole[2:]


# -- precision -------------------------------------------------------------------------------


def test_auto_precision_is_float32_on_cpu_and_bfloat16_can_be_asked_for(monkeypatch):
    from wavedistill import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("float32", cpu) is None
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16


# -- whole runs ------------------------------------------------------------------------------


def test_stopped_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(dataset, tmp_path):
    # 5 training items in batches of 2: 2 batches per epoch, so stopping after step 3 stops
    # mid-epoch and the resumed run crosses an epoch boundary.
    # A warm-up makes the learning rate differ at every step, so the schedule must resume too.
    def cfg(steps):
        return tiny_cfg(steps=steps, checkpoint_every=100, warmup_steps=4)

    straight = train_teacher(cfg(5), dataset, tmp_path / "a")
    train_teacher(cfg(3), dataset, tmp_path / "b")
    resumed = train_teacher(cfg(5), dataset, tmp_path / "b", resume=True)
    assert resumed.step == straight.step == 5
    assert resumed.train_data.state() == straight.train_data.state() == {"epoch": 2, "position": 1}
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(
        straight.ema.model.state_dict().values(),
        resumed.ema.model.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    moments = [s["exp_avg_sq"] for s in straight.optimizer.state_dict()["state"].values()]
    resumed_moments = [s["exp_avg_sq"] for s in resumed.optimizer.state_dict()["state"].values()]
    for a, b in zip(moments, resumed_moments, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


def test_run_folder_holds_config_last_checkpoints_best_and_tensorboard_events(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_teacher(tiny_cfg(steps=4, checkpoint_every=1, keep_last=2, valid_every=2), dataset, out)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.pt", "step-000003.pt", "step-000004.pt"]
    assert (out / "config.yaml").is_file()
    best = load_checkpoint(out / "checkpoints" / "best.pt", expected_kind="teacher")
    assert best["step"] in (2, 4) and math.isfinite(best["best_valid"])
    assert best["stats"]["mean"].shape == (TINY_CONFIG["audio"]["n_mels"],)
    events = EventAccumulator(str(out / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/nll_bits",
        "train/learning_rate",
        "train/grad_norm",
        "train/samples_per_s",
        "valid/nll_bits",
    } <= tags
    # the untrained model is validated first: the curve starts where training started
    assert [e.step for e in events.Scalars("valid/nll_bits")] == [0, 2, 4]


def test_best_checkpoint_holds_the_lowest_validation_value(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_teacher(
        tiny_cfg(steps=3, valid_every=1, checkpoint_every=100, learning_rate=0.01), dataset, out
    )
    scalars = EventAccumulator(str(out / "tb")).Reload().Scalars("valid/nll_bits")
    assert scalars[0].step == 0  # the starting point, which no checkpoint holds
    values = [e.value for e in scalars[1:]]
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["best_valid"] == pytest.approx(min(values), rel=1e-6)
    assert best["step"] == 1 + int(np.argmin(values))


def test_a_non_finite_step_is_skipped_and_never_reaches_weights_or_checkpoints(dataset, tmp_path):
    trainer = teacher_trainer(tiny_cfg(steps=3), dataset, tmp_path / "run", NonFiniteOn({1}))
    trainer.run()
    assert trainer.step == 3 and trainer.bad_total == 1
    assert trainer.objective.calls == 4  # one extra batch replaced the skipped one
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["skipped_steps"] == 1
    for state in (ckpt["model"], ckpt["ema"]):
        assert all(torch.isfinite(t).all() for t in state.values())
    assert ckpt["scheduler"]["last_epoch"] == 3  # the schedule counts good updates only


def test_too_many_non_finite_steps_in_a_row_stop_the_run(dataset, tmp_path):
    cfg = tiny_cfg(steps=10, max_bad_steps=3)
    trainer = teacher_trainer(cfg, dataset, tmp_path / "run", NonFiniteOn({"all"}))
    with pytest.raises(TrainingDiverged, match="3 consecutive steps.*train.max_bad_steps"):
        trainer.run()
    assert isinstance(TrainingDiverged("x"), UserError)
    assert trainer.objective.calls == 3
    assert latest_checkpoint(tmp_path / "run") is None


def test_init_from_takes_weights_only(dataset, tmp_path):
    source = train_teacher(tiny_cfg(steps=2), dataset, tmp_path / "a")
    trainer = teacher_trainer(tiny_cfg(steps=2), dataset, tmp_path / "b")
    trainer.init_from(latest_checkpoint(tmp_path / "a"))
    assert trainer.step == 0 and not trainer.optimizer.state
    for a, b in zip(
        source.model.state_dict().values(), trainer.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    for a, b in zip(
        trainer.model.state_dict().values(), trainer.ema.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_init_from_takes_an_exported_bundle(dataset, tmp_path):
    """Fine-tuning may start from a bundle folder: its (EMA) weights, nothing else."""
    from wavedistill.store.export import export_bundle
    from wavedistill.store.loading import load_model

    train_teacher(tiny_cfg(steps=2), dataset, tmp_path / "a")
    bundle = export_bundle(load_model(latest_checkpoint(tmp_path / "a")), tmp_path / "bundle")
    trainer = teacher_trainer(tiny_cfg(steps=2), dataset, tmp_path / "b")
    trainer.init_from(bundle)
    exported = load_model(bundle).model.state_dict()
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(tensor, exported[name])
    import dataclasses

    from wavedistill.data.features import FeatureStats
    from wavedistill.store.loading import random_model

    n_mels = tiny_cfg().audio.n_mels
    student = dataclasses.replace(
        random_model("student", tiny_cfg(), "random"),
        stats=FeatureStats(torch.zeros(n_mels), torch.ones(n_mels)),
    )
    student_bundle = export_bundle(student, tmp_path / "student")
    with pytest.raises(UserError, match="student bundle; a teacher is needed"):
        trainer.init_from(student_bundle)


# -- refusals --------------------------------------------------------------------------------


def test_a_fresh_run_refuses_a_folder_with_checkpoints_and_resume_needs_one(dataset, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--resume: .*holds no step-N.pt"):
        train_teacher(tiny_cfg(), dataset, out, resume=True)
    train_teacher(tiny_cfg(), dataset, out)
    with pytest.raises(UserError, match="already holds checkpoints.*--resume"):
        train_teacher(tiny_cfg(), dataset, out)
    with pytest.raises(UserError, match="not both"):
        train_teacher(tiny_cfg(), dataset, out, resume=True, init_from=out / "x.pt")


def test_resume_refuses_a_changed_model(dataset, tmp_path):
    out = tmp_path / "run"
    train_teacher(tiny_cfg(steps=1), dataset, out)
    cfg = tiny_config(teacher={"residual_channels": 4}, train={"steps": 2})
    with pytest.raises(UserError, match=r"step-000001.pt: .*teacher.residual_channels 8 vs 4"):
        train_teacher(cfg, dataset, out, resume=True)


def test_data_folder_with_other_audio_settings_is_refused_naming_the_keys(dataset, tmp_path):
    with pytest.raises(UserError, match=r"config.yaml: .*audio.n_mels 20 vs 10"):
        train_teacher(tiny_config(audio={"n_mels": 10}), dataset, tmp_path / "run")


def test_a_folder_that_is_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a dataset folder"):
        train_teacher(tiny_cfg(), tmp_path / "empty", tmp_path / "run")


def test_more_speakers_than_the_model_has_is_refused(dataset, tmp_path):
    copied = tmp_path / "data"
    shutil.copytree(dataset, copied)
    (copied / "speakers.json").write_text('{"a": 0, "b": 1, "c": 2}')
    with pytest.raises(UserError, match="speakers.json: 3 speakers, but teacher.num_speakers is 2"):
        train_teacher(tiny_config(teacher={"num_speakers": 2}), copied, tmp_path / "run")


def test_saved_config_is_the_resolved_run_config(dataset, tmp_path):
    from wavedistill.config import load_config

    cfg = tiny_cfg(steps=1)
    train_teacher(cfg, dataset, tmp_path / "run")
    assert config_to_dict(load_config(tmp_path / "run" / "config.yaml")) == config_to_dict(cfg)


class RecordingRNG:
    """The real maximum-likelihood objective (with its teacher samples as media) that records
    the training RNG state at every loss call."""

    valid_metric = "nll_bits"

    def __init__(self):
        from wavedistill.objectives.likelihood import MaximumLikelihood

        self.inner, self.rng_at_loss = MaximumLikelihood(media_samples=300), []
        self.validate, self.log_media = self.inner.validate, self.inner.log_media

    def loss(self, model, batch):
        self.rng_at_loss.append(torch.get_rng_state())
        return self.inner.loss(model, batch)


def test_media_steps_write_audio_and_mel_figures_without_moving_training_rng(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for every in (0, 1):
        objective = RecordingRNG()
        teacher_trainer(
            tiny_cfg(steps=2, audio_every=every), dataset, tmp_path / str(every), objective
        ).run()
        runs[every] = objective.rng_at_loss
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    events = EventAccumulator(str(tmp_path / "1" / "tb"), size_guidance={"audio": 0, "images": 0})
    tags = events.Reload().Tags()
    assert {"audio/reference", "audio/teacher"} <= set(tags["audio"])
    assert {"mel/reference", "mel/teacher"} <= set(tags["images"])
    teacher_audio = events.Audio("audio/teacher")
    assert [e.step for e in teacher_audio] == [1, 2]
    assert teacher_audio[0].length_frames == 300


def test_without_a_validation_split_best_is_the_newest_checkpoint(dataset, tmp_path):
    copied = tmp_path / "data"
    shutil.copytree(dataset, copied)
    (copied / "valid.jsonl").unlink()
    out = tmp_path / "run"
    train_teacher(tiny_cfg(steps=2, checkpoint_every=1), copied, out)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["step"] == 2 and best["best_valid"] is None


# -- the student -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_ckpt(dataset, tmp_path_factory):
    """A teacher checkpoint whose statistics differ from the dataset's (the teacher's win)."""
    from wavedistill.data.features import FeatureStats
    from wavedistill.store.checkpoint import save_checkpoint
    from wavedistill.store.loading import new_model

    cfg = tiny_cfg()
    torch.manual_seed(0)
    stats = FeatureStats.load(dataset / "stats.npz")
    shifted = FeatureStats(stats.mean + 0.5, stats.std * 2.0)
    payload = {
        "kind": "teacher",
        "config": config_to_dict(cfg),
        "stats": shifted.to_dict(),
        "model": new_model("teacher", cfg).state_dict(),
    }
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt", payload)


def student_cfg(**train):
    # teacher.layers is ignored: the teacher checkpoint's own section is recorded
    return tiny_config(
        train={"valid_every": 100, "checkpoint_every": 100, **train}, teacher={"layers": 8}
    )


def test_stopped_and_resumed_distillation_ends_with_the_same_student(
    dataset, teacher_ckpt, tmp_path
):
    # The student draws noise from the global generator at every step, so this holds only if
    # the RNG states travel in the checkpoint.
    from wavedistill.training.runs import train_student

    straight = train_student(student_cfg(steps=3), teacher_ckpt, dataset, tmp_path / "a")
    train_student(student_cfg(steps=1), teacher_ckpt, dataset, tmp_path / "b")
    resumed = train_student(
        student_cfg(steps=3), teacher_ckpt, dataset, tmp_path / "b", resume=True
    )
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_student_checkpoints_carry_the_teachers_statistics_and_config(
    dataset, teacher_ckpt, tmp_path
):
    from wavedistill.training.runs import train_student

    train_student(student_cfg(steps=1), teacher_ckpt, dataset, tmp_path / "run")
    student = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", expected_kind="student")
    teacher = load_checkpoint(teacher_ckpt)
    for key in ("mean", "std"):
        torch.testing.assert_close(student["stats"][key], teacher["stats"][key])
    assert student["config"]["teacher"] == teacher["config"]["teacher"]
    assert student["best_valid"] is not None  # chosen by the objective's valid_metric


def test_distillation_refuses_a_student_checkpoint_as_teacher(dataset, teacher_ckpt, tmp_path):
    from wavedistill.training.runs import train_student

    train_student(student_cfg(steps=1), teacher_ckpt, dataset, tmp_path / "s")
    with pytest.raises(UserError, match="is a student checkpoint; a teacher checkpoint is needed"):
        train_student(
            student_cfg(steps=1),
            tmp_path / "s" / "checkpoints" / "best.pt",
            dataset,
            tmp_path / "run",
        )


def test_a_wall_time_budget_stops_after_the_step_that_passes_it_and_saves(dataset, tmp_path):
    out = tmp_path / "run"
    # a budget of ~0 minutes: the first step passes it, and is the last
    trainer = train_teacher(
        tiny_cfg(steps=50, max_minutes=1e-9, valid_every=100, checkpoint_every=100), dataset, out
    )
    assert trainer.step == 1
    assert latest_checkpoint(out).name == "step-000001.pt"
    assert (out / "checkpoints" / "best.pt").is_file()


def test_every_validation_is_appended_to_the_run_history(dataset, tmp_path):
    import json

    out = tmp_path / "run"
    train_teacher(tiny_cfg(steps=4, valid_every=2), dataset, out)
    lines = [json.loads(x) for x in (out / "validation.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 2, 4]
    assert all(math.isfinite(x["nll_bits"]) and x["minutes"] >= 0 for x in lines)


def test_a_negative_wall_time_budget_is_refused():
    with pytest.raises(UserError, match="train.max_minutes"):
        tiny_cfg(max_minutes=-1.0)


# -- no step waits for the device for its logs -----------------------------------------------


PACKAGE = str(Path(wavedistill.__file__).resolve().parent)


@pytest.fixture
def host_reads(monkeypatch) -> collections.Counter:
    """Counts, by calling function, every read of a tensor's value into Python (each one
    waits for the device) made by the package's own code; torch's own are left out."""
    calls: collections.Counter = collections.Counter()

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE):
                calls[caller.co_name] += 1
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    return calls


def objective_and_model(kind: str):
    """A tiny model of ``kind`` with its training objective, and a batch it trains on."""
    from wavedistill.models.student import IAFStudent
    from wavedistill.models.teacher import WaveNetTeacher
    from wavedistill.objectives.distillation import Distillation
    from wavedistill.objectives.likelihood import MaximumLikelihood

    cfg = tiny_cfg()
    torch.manual_seed(0)
    teacher = WaveNetTeacher.from_config(cfg)
    frames = cfg.data.segment_length // cfg.audio.hop_length
    batch = {
        "audio": 0.1 * torch.randn(2, cfg.data.segment_length),
        "mel": torch.randn(2, cfg.audio.n_mels, frames),
    }
    if kind == "teacher":
        return MaximumLikelihood(), teacher, batch
    return Distillation(teacher, cfg), IAFStudent.from_config(cfg), batch


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_objective_logs_are_detached_device_tensors_read_by_no_step(kind, host_reads):
    objective, model, batch = objective_and_model(kind)
    host_reads.clear()
    loss, logs = objective.loss(model, batch)
    assert not host_reads
    assert logs and all(
        isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in logs.values()
    )
    assert loss.requires_grad


def test_steps_wait_only_to_decide_a_skip_and_a_log_line_reads_all_means_at_once(
    dataset, tmp_path, host_reads
):
    from wavedistill.training.loop import _Meter

    trainer = teacher_trainer(tiny_cfg(), dataset, tmp_path / "run")
    batches = [trainer._to_device(trainer.train_data.next()) for _ in range(3)]
    meter, results = _Meter(), []
    host_reads.clear()
    for batch in batches:
        results.append(trainer.train_step(batch))
        meter.add(results[-1], batch["audio"].numel())
    assert host_reads == {"_finite": 3}  # one finiteness decision per step, nothing else
    host_reads.clear()
    means = meter.pop()
    assert host_reads == {"_to_host": 1}
    for key in ("loss", "grad_norm", "nll_bits"):
        expected = sum(float(r[key]) for r in results) / len(results)
        assert means[key] == pytest.approx(expected, rel=1e-6)
    assert all(isinstance(v, float) for v in means.values())


def test_resume_accepts_a_checkpoint_config_older_than_a_model_key():
    """A run saved before ``teacher.source`` existed resumes: the missing key is its default."""
    from wavedistill.config import Config, config_to_dict
    from wavedistill.errors import UserError
    from wavedistill.training.loop import _check_same_model

    stored = config_to_dict(Config())
    for key in ("source", "pitch_weight", "pitch_channels", "source_harmonics"):
        del stored["teacher"][key]
    ckpt = {"config": stored, "path": "old.pt"}
    _check_same_model(ckpt, Config(), "teacher")
    changed = Config()
    changed.teacher.source = "harmonic"
    with pytest.raises(UserError, match="teacher.source"):
        _check_same_model(ckpt, changed, "teacher")

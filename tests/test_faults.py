"""A full disk (or another I/O error) while a file is written is one line naming the file, its
size and the free space, what is intact and how to go on; the exit status is 28 (74 for other
I/O errors); no temporary file is left and no earlier checkpoint is lost; the same command
(``--resume`` for training) completes once space is freed.

Tested for real on a small tmpfs where this process may mount one, and by injecting ``ENOSPC``
and ``EIO`` at the write call everywhere.
"""

from __future__ import annotations

import copy
import errno
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, write_clip, write_tiny_dataset

from wavedistill import faults
from wavedistill.cli import main
from wavedistill.faults import OutOfSpace, WriteFailed, format_size, translate
from wavedistill.fileio import append_text, atomic_write, atomic_write_text
from wavedistill.store.checkpoint import latest_checkpoint, load_checkpoint

# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("faults"))


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MB tmpfs of its own (mounted as root); skipped where mounting is not permitted."""
    folder = tmp_path / "small_fs"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the real full-disk variant needs a small file system")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({done.stderr.strip() or 'refused'}); "
            "the injected ENOSPC tests cover the same paths"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s file system up to ``leave`` free bytes with a ballast file."""
    ballast = folder / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return ballast


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def config_file(tmp_path: Path, **train) -> Path:
    import yaml

    data = copy.deepcopy(TINY_CONFIG)
    data["train"].update(train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(capsys, *args) -> tuple[int, str]:
    """Exit status and stderr of ``wavedistill ARGS`` run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def last_line(err: str) -> str:
    """The final line on stderr (progress bars redraw with carriage returns before it)."""
    return err.strip().splitlines()[-1].split("\r")[-1]


def failing_write(code: int, after: int = 100):
    """A stand-in for a writer: some bytes go out, then the call fails with ``code``."""

    def write(obj, f, *args, **kwargs):
        f.write(b"x" * after)
        raise OSError(code, "injected")

    return write


# -- translation -----------------------------------------------------------------------------


def test_every_writers_way_of_failing_on_a_full_disk_reads_as_out_of_space(tmp_path):
    path = tmp_path / "f.pt"
    assert isinstance(translate(OSError(errno.ENOSPC, "x"), path), OutOfSpace)
    assert isinstance(translate(OSError(errno.EDQUOT, "x"), path), OutOfSpace)
    try:  # torch's zip writer: a RuntimeError raised while handling the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as exc:
        assert isinstance(translate(exc, path), OutOfSpace)
    eio = translate(OSError(errno.EIO, "x"), path, needed=2_900_000)
    assert type(eio) is WriteFailed and eio.exit_code == 74
    assert str(eio).startswith(f"write failed (Input/output error) writing {path} (2.9 MB needed")
    rust = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert isinstance(translate(rust, path), OutOfSpace)  # safetensors
    assert translate(ValueError("a bug"), path) is None
    assert translate(RuntimeError("a bug"), path) is None  # plenty of space: not the disk


def test_an_error_without_errno_on_a_nearly_full_disk_is_out_of_space(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "free_space", lambda path: 4096)
    found = translate(OSError("600000 requested and 131056 written"), tmp_path / "a.npy")
    assert isinstance(found, OutOfSpace) and found.free == 4096
    assert isinstance(translate(RuntimeError("System error."), tmp_path / "a.wav"), OutOfSpace)


def test_a_write_failure_crosses_from_a_worker_process_whole(tmp_path):
    import pickle

    failed = OutOfSpace(tmp_path / "mel" / "a.npy", "no space left", 8192, 4096)
    failed.add("the folder's manifests are as before this run")
    back = pickle.loads(pickle.dumps(failed))
    assert type(back) is OutOfSpace and str(back) == str(failed)


def test_sizes_read_as_people_write_them():
    assert [format_size(n) for n in (512, 4096, 2_900_000, 1_234_000_000)] == [
        "512 bytes",
        "4.1 kB",
        "2.9 MB",
        "1.2 GB",
    ]


@pytest.mark.parametrize("code, kind", [(errno.ENOSPC, OutOfSpace), (errno.EIO, WriteFailed)])
def test_a_failed_atomic_write_names_the_file_and_leaves_the_old_one(tmp_path, code, kind):
    path = atomic_write_text(tmp_path / "manifest.jsonl", "old\n")

    def write(f):
        f.write(b"new bytes")
        raise OSError(code, "injected")

    with pytest.raises(kind, match=f"writing {path}") as caught:
        atomic_write(path, write, size=9)
    assert type(caught.value) is kind and caught.value.needed == 9
    assert path.read_text() == "old\n" and temporary_files(tmp_path) == []


def test_a_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    import os

    path = tmp_path / "validation.jsonl"
    append_text(path, '{"step": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "injected")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OutOfSpace, match="validation.jsonl"):
        append_text(path, '{"step": 2}\n')
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


# -- training: injected at the checkpoint's write --------------------------------------------


@pytest.mark.parametrize(
    "code, status, reason",
    [(errno.ENOSPC, 28, "no space left"), (errno.EIO, 74, "write failed (Input/output error)")],
)
def test_a_checkpoint_that_cannot_be_written_ends_in_one_line_and_resume_completes(
    dataset, tmp_path, capsys, monkeypatch, code, status, reason
):
    out = tmp_path / "run"
    conf = config_file(tmp_path, steps=4, checkpoint_every=2, keep_last=1, valid_every=100)
    args = ["train-teacher", "--config", conf, "--data", dataset, "--out", out]
    monkeypatch.setattr(torch, "save", failing_write(code))
    # the first checkpoint (step 2) cannot be written either: nothing to resume from yet
    code_, err = cli(capsys, *args)
    assert code_ == status and "Traceback" not in err
    assert last_line(err).startswith(
        f"wavedistill train-teacher: error: {reason} writing "
        f"{out / 'checkpoints' / 'step-000002.pt'} ("
    )
    assert "no checkpoint written yet" in last_line(err)
    assert temporary_files(out) == [] and latest_checkpoint(out) is None

    # step 2 is written; step 4 is not, and keep_last=1 must not have removed step 2 for it
    shutil.rmtree(out)
    monkeypatch.undo()
    save = torch.save
    calls = []

    def second_fails(obj, f, *a, **k):
        calls.append(obj["step"])
        return (failing_write(code) if len(calls) > 1 else save)(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", second_fails)
    code_, err = cli(capsys, *args)
    line = last_line(err)
    assert code_ == status and "Traceback" not in err, err
    assert f"writing {out / 'checkpoints' / 'step-000004.pt'} (" in line
    assert "kB needed" in line and "free)" in line
    assert line.endswith(
        "; step-000002.pt is intact; "
        + ("free space" if code == errno.ENOSPC else "check the disk")
        + " and run again with --resume"
    )
    assert temporary_files(out) == []
    assert load_checkpoint(out / "checkpoints" / "step-000002.pt")["step"] == 2

    monkeypatch.undo()  # space freed
    code_, err = cli(capsys, *args, "--resume")
    assert code_ == 0, err
    assert load_checkpoint(latest_checkpoint(out))["step"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "step-000004.pt"]


def test_a_preprocess_that_cannot_write_ends_in_one_line(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus"
    for i in range(3):
        write_clip(corpus / f"clip{i}.wav", seconds=0.3, seed=i)
    out = tmp_path / "data"
    conf = config_file(tmp_path)
    save = np.save
    calls = []

    def third_fails(f, array, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"x" * 10)
            raise OSError(errno.ENOSPC, "injected")
        return save(f, array, *a, **k)

    monkeypatch.setattr(np, "save", third_fails)
    code, err = cli(capsys, "preprocess", "--config", conf, "--data", corpus, "--out", out)
    line = last_line(err)
    assert code == 28 and "Traceback" not in err, err
    assert line.startswith(f"wavedistill preprocess: error: no space left writing {out}/")
    assert line.endswith(
        "the folder's manifests are as before this run; free space and run the same command again"
    )
    assert temporary_files(out) == []
    monkeypatch.undo()
    code, err = cli(capsys, "preprocess", "--config", conf, "--data", corpus, "--out", out)
    assert code == 0, err


# -- for real, on a small file system --------------------------------------------------------


def test_training_on_a_full_disk_keeps_its_checkpoint_and_resumes(
    dataset, tmp_path, small_fs, capsys
):
    out = small_fs / "run"
    conf = config_file(tmp_path, steps=2, checkpoint_every=2, keep_last=1, valid_every=100)
    args = ["train-teacher", "--config", conf, "--data", dataset, "--out", out]
    assert cli(capsys, *args)[0] == 0
    step2 = (out / "checkpoints" / "step-000002.pt").read_bytes()
    ballast = fill(small_fs, leave=40_000)  # room for logs, not for a 130 kB checkpoint
    code, err = cli(capsys, *args, "--resume", "train.steps=4")
    line = last_line(err)
    assert code == 28 and "Traceback" not in err, err
    assert line.startswith(
        f"wavedistill train-teacher: error: no space left writing "
        f"{out / 'checkpoints' / 'step-000004.pt'} ("
    )
    assert line.endswith("; step-000002.pt is intact; free space and run again with --resume")
    assert temporary_files(small_fs) == []
    assert (out / "checkpoints" / "step-000002.pt").read_bytes() == step2
    ballast.unlink()
    code, err = cli(capsys, *args, "--resume", "train.steps=4")
    assert code == 0, err
    assert load_checkpoint(latest_checkpoint(out))["step"] == 4


def test_preprocess_on_a_full_disk_stops_and_the_same_command_completes(tmp_path, small_fs, capsys):
    corpus = tmp_path / "corpus"
    for i in range(6):
        write_clip(corpus / f"clip{i}.wav", seconds=0.5, seed=i)
    out, conf = small_fs / "data", config_file(tmp_path)
    ballast = fill(small_fs, leave=48_000)  # about two clips' audio and features
    args = ["preprocess", "--config", conf, "--data", corpus, "--out", out]
    code, err = cli(capsys, *args)
    line = last_line(err)
    assert code == 28 and "Traceback" not in err, err
    assert line.startswith(f"wavedistill preprocess: error: no space left writing {out}/")
    assert "kB free)" in line and line.endswith("run the same command again")
    assert temporary_files(small_fs) == [] and not (out / "train.jsonl").exists()
    ballast.unlink()
    code, err = cli(capsys, *args)
    assert code == 0, err
    assert (
        len((out / "train.jsonl").read_text().splitlines())
        + len((out / "valid.jsonl").read_text().splitlines())
        == 6
    )


def test_synthesis_on_a_full_disk_stops_and_the_same_command_completes(tmp_path, small_fs, capsys):
    clip = write_clip(tmp_path / "clip.wav", seconds=1.0)
    output = small_fs / "out.wav"
    ballast = fill(small_fs, leave=8_000)  # a second of 16 kHz 16-bit audio needs 32 kB
    args = ["synthesize", "--input", clip, "--output", output]
    code, err = cli(capsys, *args)
    line = last_line(err)
    assert code == 28 and "Traceback" not in err, err
    assert line.startswith(
        f"wavedistill synthesize: error: no space left writing {output} (32.0 kB needed, "
    )
    assert line.endswith(
        "the 0 output(s) written before it are complete; free space and run the same command again"
    )
    assert temporary_files(small_fs) == [] and not output.exists()
    ballast.unlink()
    code, err = cli(capsys, *args)
    assert code == 0 and output.stat().st_size == 44 + 2 * 16000


def test_tensorboard_events_on_a_full_disk_are_one_error_naming_the_file(tmp_path, capsys):
    from wavedistill.training.eventlog import EventLog

    events = EventLog(tmp_path / "tb")
    events.flush()  # the file's header is out; from now on the disk is full

    def full(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    events._writer.file_writer.event_writer._general_file_writer.write = full
    with pytest.raises(OutOfSpace, match=f"no space left writing {events.events_file}"):
        for step in range(100):  # the writer thread fails; a later call says so
            events.add_scalar("train/loss", 1.0, step)
            events.flush()
    events.close(quiet=True)
    assert "Traceback" not in capsys.readouterr().err  # the thread's error is not printed


def test_an_export_that_cannot_write_is_one_line_and_the_folder_no_bundle(
    tmp_path, small_fs, capsys
):
    bundle = small_fs / "bundle"
    ballast = fill(small_fs, leave=20_000)  # the shipped student's weights need 1.7 MB
    code, err = cli(capsys, "export", "--checkpoint", "alice-student", "--out", bundle)
    assert code == 28 and "Traceback" not in err, err
    assert last_line(err).startswith(
        f"wavedistill export: error: no space left writing "
        f"{bundle / 'model.safetensors'} (1.7 MB needed, "
    )
    assert not (bundle / "bundle.json").exists() and temporary_files(small_fs) == []
    ballast.unlink()
    assert cli(capsys, "export", "--checkpoint", "alice-student", "--out", bundle)[0] == 0

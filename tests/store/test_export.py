"""``wavedistill export`` and the bundle folder it writes.

A bundle synthesises bit-identically to the checkpoint it came from (teacher and student),
holds no pickle and is read without unpickling, and loads from every source
``from_pretrained`` takes (folder, checkpoint, shipped name, Hugging Face Hub id from the
cache). A damaged bundle is a one-line error naming the damaged file (exit status 2 on the
command line). The ONNX and TorchScript files of the student compute the eager student's audio
at any batch size and length, with the speaker input of a multi-speaker student; a teacher is
refused before anything is written.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import tiny_config, write_clip

from wavedistill.cli import main
from wavedistill.config import config_to_dict
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.inference.synthesizer import Synthesizer
from wavedistill.store.checkpoint import save_checkpoint
from wavedistill.store.export import PlainStudent, export_bundle, export_onnx, export_torchscript
from wavedistill.store.loading import LoadedModel, load_model, new_model
from wavedistill.store.registry import shipped

BUNDLE = {"bundle.json", "config.yaml", "stats.json", "model.safetensors", "README.md"}
TINY_HOP, TINY_MELS = 64, 20  # TINY_CONFIG's audio settings


# -- models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def clip(root) -> Path:
    """0.3 s at 16 kHz: 24 frames of the shipped models' hop 200."""
    return write_clip(root / "clip.wav", seconds=0.3, seed=3)


@pytest.fixture(scope="module")
def student_bundle(root) -> Path:
    return export_bundle(load_model("alice-student"), root / "student-bundle")


@pytest.fixture(scope="module")
def teacher_bundle(root) -> Path:
    return export_bundle(load_model("alice-teacher"), root / "teacher-bundle")


def tiny_student(num_speakers: int = 0, seed: int = 0) -> LoadedModel:
    """A random tiny student (TINY_CONFIG) with identity statistics."""
    cfg = tiny_config(student={"num_speakers": num_speakers})
    torch.manual_seed(seed)
    model = new_model("student", cfg).eval().requires_grad_(False)
    stats = FeatureStats(torch.zeros(TINY_MELS), torch.ones(TINY_MELS))
    return LoadedModel("student", model, cfg, stats, "tiny student")


@pytest.fixture(scope="module")
def tiny_checkpoint(root) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny student checkpoint whose EMA weights differ from its raw weights; and the EMA
    weights."""
    raw, ema = tiny_student(seed=0), tiny_student(seed=1)
    payload = {
        "kind": "student",
        "config": config_to_dict(raw.cfg),
        "stats": raw.stats.to_dict(),
        "model": raw.model.state_dict(),
        "ema": ema.model.state_dict(),
        "step": 7,
    }
    return save_checkpoint(root / "tiny.pt", payload), ema.model.state_dict()


@pytest.fixture(scope="module")
def tiny_export(root, tiny_checkpoint) -> Path:
    """``wavedistill export --onnx --torchscript`` of the tiny checkpoint."""
    out = root / "tiny-bundle"
    assert (
        main(
            [
                "--quiet",
                "export",
                "--checkpoint",
                str(tiny_checkpoint[0]),
                "--out",
                str(out),
                "--onnx",
                "--torchscript",
            ]
        )
        == 0
    )
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- round trip --------------------------------------------------------------------------------


def test_a_student_bundle_synthesises_bit_identically_to_its_checkpoint(student_bundle, clip):
    original = Synthesizer.from_pretrained("alice-student")
    exported = Synthesizer.from_pretrained(student_bundle)
    assert exported.kind == "student" and exported.cfg == original.cfg
    assert torch.equal(exported.loaded.stats.mean, original.loaded.stats.mean)
    assert torch.equal(exported.loaded.stats.std, original.loaded.stats.std)
    mel = original.features(clip)
    assert torch.equal(exported.features(clip), mel)
    mels = [mel, mel[:, :9]]
    for a, b in zip(original.generate(mels, seed=5), exported.generate(mels, seed=5), strict=True):
        assert np.array_equal(a, b)
    assert np.abs(a).max() > 0  # not trivially equal


def test_a_teacher_bundle_samples_bit_identically_to_its_checkpoint(teacher_bundle, clip):
    original = Synthesizer.from_pretrained("alice-teacher")
    exported = Synthesizer.from_pretrained(teacher_bundle)
    assert exported.kind == "teacher" and exported.cfg == original.cfg
    mel = original.features(clip)[:, :1]  # one frame: 200 samples, drawn one by one
    a, b = original.generate([mel], seed=2)[0], exported.generate([mel], seed=2)[0]
    assert a.shape == (200,) and np.array_equal(a, b) and np.abs(a).max() > 0


def test_a_bundle_holds_no_pickle(student_bundle):
    from safetensors.torch import load_file

    assert {p.name for p in student_bundle.iterdir()} == BUNDLE
    for path in student_bundle.iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80"), path  # pickle protocol 2+
        assert not head.startswith(b"PK"), path  # torch.save's zip container
    meta = json.loads((student_bundle / "bundle.json").read_text())
    assert meta["format"] == "wavedistill-bundle" and meta["kind"] == "student"
    stats = json.loads((student_bundle / "stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 80
    assert yaml.safe_load((student_bundle / "config.yaml").read_text())["audio"]["n_mels"] == 80
    card = (student_bundle / "README.md").read_text()
    assert card.startswith("# wavedistill student") and "16000 Hz" in card
    weights = load_file(student_bundle / "model.safetensors")
    reference = load_model("alice-student").model.state_dict()
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_loading_a_bundle_never_unpickles(student_bundle, clip, monkeypatch):
    calls = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called")

        return call

    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", refuse("pickle.Unpickler"))
    synth = Synthesizer.from_pretrained(student_bundle)
    audio = synth.generate([synth.features(clip)], seed=0)[0]
    assert calls == [] and np.isfinite(audio).all()
    # the guard is live: a checkpoint does go through torch.load
    with pytest.raises(UserError):
        load_model("alice-student")
    assert calls == ["torch.load"]


def test_export_writes_the_ema_weights_and_the_step(tiny_export, tiny_checkpoint):
    from safetensors.torch import load_file

    assert BUNDLE | {"student.onnx", "student.torchscript.pt"} == {
        p.name for p in tiny_export.iterdir()
    }
    _, ema = tiny_checkpoint
    weights = load_file(tiny_export / "model.safetensors")
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    loaded = load_model(tiny_export)
    assert loaded.step == 7 and loaded.source == str(tiny_export)
    assert all(torch.equal(loaded.model.state_dict()[k], ema[k]) for k in ema)


# -- sources of from_pretrained ----------------------------------------------------------------


@pytest.mark.parametrize("source", ["bundle", "checkpoint", "name"])
def test_from_pretrained_takes_a_bundle_a_checkpoint_or_a_shipped_name(
    source, student_bundle, clip
):
    given = {
        "bundle": student_bundle,
        "checkpoint": shipped("alice-student").path,
        "name": "alice-student",
    }[source]
    synth = Synthesizer.from_pretrained(given)
    reference = Synthesizer.from_pretrained(student_bundle)
    mel = reference.features(clip)
    assert synth.kind == "student"
    assert np.array_equal(synth.generate([mel], seed=1)[0], reference.generate([mel], seed=1)[0])


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline. ``huggingface_hub.constants`` reads the
    environment when first imported, so its values are patched too."""
    constants = pytest.importorskip("huggingface_hub.constants")
    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, repo_id: str, bundle: Path) -> Path:
    """Lay ``bundle`` out in ``cache`` as the Hub client leaves a downloaded model repo."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(bundle, snapshot)
    return snapshot


def test_from_pretrained_reads_a_hub_repo_from_the_cache_offline(
    hub_cache, student_bundle, clip, tmp_path, capsys, monkeypatch
):
    snapshot = cache_repo(hub_cache, "someone/alice-vocoder", student_bundle)
    synth = Synthesizer.from_pretrained("someone/alice-vocoder")
    assert Path(synth.loaded.source) == snapshot
    reference = Synthesizer.from_pretrained(student_bundle)
    mel = reference.features(clip)
    assert np.array_equal(synth.generate([mel], seed=4)[0], reference.generate([mel], seed=4)[0])
    # and on the command line
    monkeypatch.chdir(tmp_path)  # no local folder named "someone"
    code, out, _ = run(
        capsys,
        "synthesize",
        "--checkpoint",
        "someone/alice-vocoder",
        "--input",
        clip,
        "--output",
        tmp_path / "hub.wav",
    )
    assert code == 0 and (tmp_path / "hub.wav").is_file()


def test_an_uncached_hub_repo_offline_is_a_one_line_error(hub_cache, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError) as info:
        Synthesizer.from_pretrained("someone/not-downloaded")
    message = str(info.value)
    assert "someone/not-downloaded" in message and "\n" not in message
    monkeypatch.chdir(tmp_path)
    code, _, err = run(
        capsys,
        "synthesize",
        "--checkpoint",
        "someone/not-downloaded",
        "--input",
        tmp_path / "a.wav",
        "--output",
        tmp_path / "o.wav",
    )
    assert code == 2 and "someone/not-downloaded" in one_line(err)


# -- damaged bundles ---------------------------------------------------------------------------


def _json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes}))


def _config(path: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data))


DAMAGE = {  # name: (damage done to a copy of the student bundle, file the error must name)
    "no-stats": (lambda b: (b / "stats.json").unlink(), "stats.json"),
    "no-weights": (lambda b: (b / "model.safetensors").unlink(), "model.safetensors"),
    "no-config": (lambda b: (b / "config.yaml").unlink(), "config.yaml"),
    "garbage-weights": (
        lambda b: (b / "model.safetensors").write_bytes(b"\x00" * 64),
        "model.safetensors",
    ),
    "truncated-weights": (
        lambda b: (b / "model.safetensors").write_bytes(
            (b / "model.safetensors").read_bytes()[:5000]
        ),
        "model.safetensors",
    ),
    "bundle-json-not-json": (lambda b: (b / "bundle.json").write_text("{not json"), "bundle.json"),
    "bundle-json-a-list": (lambda b: (b / "bundle.json").write_text("[1, 2]"), "bundle.json"),
    "other-format": (lambda b: _json(b / "bundle.json", format="some-other-format"), "bundle.json"),
    "unknown-kind": (lambda b: _json(b / "bundle.json", kind="vocoder"), "bundle.json"),
    "bad-step": (lambda b: _json(b / "bundle.json", step="many"), "bundle.json"),
    "kind-mismatch": (lambda b: _json(b / "bundle.json", kind="teacher"), "model.safetensors"),
    "stats-not-json": (lambda b: (b / "stats.json").write_text("mean: 1"), "stats.json"),
    "stats-no-std": (lambda b: (b / "stats.json").write_text('{"mean": [0.0]}'), "stats.json"),
    "stats-wrong-size": (
        lambda b: _json(b / "stats.json", mean=[0.0] * 20, std=[1.0] * 20),
        "stats.json",
    ),
    "stats-zero-std": (lambda b: _json(b / "stats.json", std=[0.0] * 80), "stats.json"),
    "config-invalid": (
        lambda b: _config(b / "config.yaml", "audio", "hop_length", -200),
        "config.yaml",
    ),
    "config-unknown-key": (
        lambda b: _config(b / "config.yaml", "student", "layerz", 3),
        "config.yaml",
    ),
    "config-not-yaml": (
        lambda b: (b / "config.yaml").write_text("audio: [unclosed"),
        "config.yaml",
    ),
    "weights-of-another-size": (
        lambda b: _config(b / "config.yaml", "student", "channels", 8),
        "model.safetensors",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_bundle_is_a_one_line_error_naming_the_file(
    damage, student_bundle, clip, tmp_path, capsys
):
    bundle = tmp_path / "bundle"
    shutil.copytree(student_bundle, bundle)
    change, culprit = DAMAGE[damage]
    change(bundle)
    with pytest.raises(UserError) as info:
        load_model(bundle)
    message = str(info.value)
    assert culprit in message and "\n" not in message, message
    out = tmp_path / "out.wav"
    code, _, err = run(
        capsys, "synthesize", "--checkpoint", bundle, "--input", clip, "--output", out
    )
    assert code == 2 and culprit in one_line(err) and not out.exists()


def test_a_bundle_of_the_wrong_kind_is_refused(student_bundle, tmp_path, capsys):
    with pytest.raises(UserError, match="is a student bundle; a teacher is needed"):
        load_model(student_bundle, expected_kind="teacher")
    code, _, err = run(
        capsys,
        "distill",
        "--teacher",
        student_bundle,
        "--data",
        tmp_path,
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and "a teacher is needed" in one_line(err)
    assert not (tmp_path / "run").exists()


# -- bundle folders on the command line --------------------------------------------------------


def test_synthesize_takes_a_bundle_folder(student_bundle, clip, tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "synthesize",
        "--checkpoint",
        student_bundle,
        "--input",
        clip,
        "--output",
        tmp_path / "bundle.wav",
    )
    assert code == 0 and "bundle.wav" in out
    code, _, _ = run(
        capsys,
        "synthesize",
        "--checkpoint",
        "alice-student",
        "--input",
        clip,
        "--output",
        tmp_path / "shipped.wav",
    )
    assert code == 0
    a, sr = sf.read(tmp_path / "bundle.wav", dtype="int16")
    b, _ = sf.read(tmp_path / "shipped.wav", dtype="int16")
    assert sr == 16000 and len(a) == 24 * 200 and np.array_equal(a, b)


def test_evaluate_takes_a_bundle_folder(tiny_dataset, tmp_path, capsys):
    student = tiny_student()
    student.stats = FeatureStats.load(tiny_dataset / "stats.npz")
    bundle = export_bundle(student, tmp_path / "bundle")
    code, out, _ = run(
        capsys,
        "evaluate",
        "--checkpoint",
        bundle,
        "--data",
        tiny_dataset,
        "--out",
        tmp_path / "report",
        "--max-clips",
        1,
        "--griffin-lim-iters",
        0,
    )
    assert code == 0 and "report written" in out
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["kind"] == "student" and report["checkpoint"] == str(bundle)
    assert report["clips"] == 1 and "student" in report["copy_synthesis"]


def test_info_describes_a_bundle_folder(student_bundle, capsys):
    code, out, err = run(capsys, "info", student_bundle)
    assert code == 0, err
    assert "student" in out and "16000 Hz" in out
    model = Synthesizer.from_pretrained(student_bundle).loaded.model
    assert f"parameters: {model.num_parameters:,}" in out and model.num_parameters > 0


def test_export_takes_a_bundle_folder(student_bundle, tmp_path, capsys):
    out = tmp_path / "again"
    code, stdout, _ = run(capsys, "export", "--checkpoint", student_bundle, "--out", out)
    assert code == 0 and "student bundle" in stdout
    from safetensors.torch import load_file

    for name in ("stats.json", "config.yaml"):
        assert (out / name).read_bytes() == (student_bundle / name).read_bytes()
    again, first = (load_file(b / "model.safetensors") for b in (out, student_bundle))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


# -- deployment exports ------------------------------------------------------------------------


def _inputs(frames: int, speakers: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch of two: noise, normalised mel and (for a multi-speaker student) speakers 0, 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, frames * TINY_HOP, generator=g)
    mel = torch.randn(2, TINY_MELS, frames, generator=g)
    return (z, mel, torch.tensor([0, 1])) if speakers else (z, mel)


def _check_runtimes(loaded: LoadedModel, onnx_path: Path, script_path: Path) -> list[float]:
    """Max error of ONNX Runtime and TorchScript against the eager model at two lengths (the
    export traced neither) and batch 2; returns them."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    script = torch.jit.load(str(script_path))
    plain = PlainStudent(loaded.model).eval()
    errors = []
    for frames in (3, 11):
        inputs = _inputs(frames, loaded.num_speakers > 0, seed=frames)
        with torch.no_grad():
            eager = plain(*inputs)
            scripted = script(*inputs)
        fused = loaded.model.synthesize_from_noise(*inputs)
        assert eager.shape == (2, frames * TINY_HOP)
        assert torch.allclose(eager, fused, atol=1e-5, rtol=0)
        assert eager[0].abs().max() > 1e-3 and not torch.allclose(eager[0], eager[1])
        onnx_out = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]
        errors += [
            float((scripted - eager).abs().max()),
            float(np.abs(onnx_out - eager.numpy()).max()),
            float(np.abs(onnx_out - fused.numpy()).max()),
        ]
    assert max(errors) < 1e-4, errors
    return errors


def test_onnx_and_torchscript_match_the_eager_student(tiny_export):
    pytest.importorskip("onnx")
    loaded = load_model(tiny_export)
    _check_runtimes(loaded, tiny_export / "student.onnx", tiny_export / "student.torchscript.pt")
    z, mel = _inputs(4, False)
    with pytest.raises(RuntimeError):  # noise one frame short of the mel: refused, not cut
        torch.jit.load(str(tiny_export / "student.torchscript.pt"))(z[:, :-TINY_HOP], mel)


def test_a_multi_speaker_student_exports_with_its_speaker_input(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    loaded = tiny_student(num_speakers=2)
    onnx_path = export_onnx(loaded, tmp_path / "student.onnx")
    script_path = export_torchscript(loaded, tmp_path / "student.torchscript.pt")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "mel", "speaker"]
    _check_runtimes(loaded, onnx_path, script_path)
    # the speaker input is used: the same noise and mel, another speaker, other audio
    z, mel, _ = _inputs(4, True)
    z, mel = z[:1], mel[:1]
    a, b = (
        session.run(None, {"z": z.numpy(), "mel": mel.numpy(), "speaker": np.array([s])})[0]
        for s in (0, 1)
    )
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("flag", ["--onnx", "--torchscript"])
def test_a_teacher_is_refused_for_deployment_before_anything_is_written(flag, tmp_path, capsys):
    out = tmp_path / "teacher-export"
    code, stdout, err = run(capsys, "export", "--checkpoint", "alice-teacher", "--out", out, flag)
    assert code == 2 and "teacher" in one_line(err) and stdout == ""
    assert not out.exists()
    teacher = load_model("alice-teacher")
    with pytest.raises(UserError, match="teacher"):
        export_torchscript(teacher, tmp_path / "t.pt")
    assert not (tmp_path / "t.pt").exists()

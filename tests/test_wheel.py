"""The package as a user installs it from an index: an sdist and a wheel that carry the shipped
models and the presets, and a wheel that installs into a fresh environment and synthesises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from wavedistill import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of a copy of the source tree (so no build files land in it), without
    build isolation: the build backend already installed is used, nothing is downloaded."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "wavedistill"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}),
        )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


@pytest.mark.slow
def test_the_wheel_and_sdist_carry_the_models_and_presets(dist):
    wheel = next(dist.glob("wavedistill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "wavedistill/store/weights/alice_student.pt",
        "wavedistill/store/weights/alice_teacher.pt",
        "wavedistill/presets/parallelwavegan.yaml",
        "wavedistill/presets/hifigan.yaml",
        "wavedistill/cli.py",
    ):
        assert needed in names, needed
    sdist = next(dist.glob("wavedistill-*.tar.gz"))
    listing = subprocess.run(
        ["tar", "tzf", str(sdist)], check=True, capture_output=True, text=True
    ).stdout
    assert "wavedistill/store/weights/alice_student.pt" in listing
    assert "wavedistill/presets/hifigan.yaml" in listing


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_synthesises(dist, tmp_path):
    """A new virtual environment gets the wheel (its dependencies are lent from this
    environment's site-packages through a path file, so nothing is downloaded); then the
    installed command, run from an empty folder, reports its version and synthesises a clip
    with the shipped student."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "lend_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("wavedistill-*.whl"))
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    command = venv / "bin" / "wavedistill"
    work = tmp_path / "elsewhere"
    work.mkdir()
    version = subprocess.run(
        [str(command), "--version"], cwd=work, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert version.strip() == f"wavedistill {__version__}"
    origin = subprocess.run(
        [str(python), "-c", "import wavedistill; print(wavedistill.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(site) in origin  # the installed copy, not the source tree
    clip = ROOT / "data" / "alice" / "wavs" / "alice_021.flac"
    subprocess.run(
        [str(command), "--quiet", "synthesize", "--input", str(clip), "--output", "out.wav"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    import soundfile as sf

    info = sf.info(work / "out.wav")
    assert info.samplerate == 16000 and info.frames > 16000

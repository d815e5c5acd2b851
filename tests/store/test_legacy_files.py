"""Files written by earlier versions still load and give the same samples.

``tests/fixtures/legacy`` was written by the code before the package was split into
subpackages: checkpoints of a tiny teacher and student, a bundle of that student, and the
outputs of those models and of the shipped models on fixed inputs and seeds. The current code
must load every file and reproduce every output.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from wavedistill.inference.synthesizer import Synthesizer
from wavedistill.models.sampling import generate
from wavedistill.store.loading import load_model

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(LEGACY / "reference.npz") as ref:
        return dict(ref)


def test_the_shipped_student_synthesises_the_samples_it_did_before(reference):
    synth = Synthesizer.from_pretrained("alice-student")
    mel = torch.from_numpy(np.load(LEGACY / "alice_021_logmel.npy"))
    audio = synth.generate([mel], seed=0)[0]
    np.testing.assert_allclose(audio, reference["alice_student"], rtol=0, atol=1e-5)


def test_the_shipped_teacher_draws_the_samples_it_did_before(reference):
    teacher = Synthesizer.from_pretrained("alice-teacher").loaded
    mel = torch.from_numpy(np.load(LEGACY / "alice_021_logmel.npy"))
    mel = teacher.stats.normalize(mel)[None, :, :2]
    audio = generate(
        teacher.model, mel, num_samples=300, generator=torch.Generator().manual_seed(0)
    )[0]
    # sequential sampling feeds each draw back: compare the draws, which agree exactly until a
    # float difference moves a sample across a 16-bit level
    np.testing.assert_allclose(audio.numpy(), reference["alice_teacher"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("source", ["tiny_student.pt", "tiny_student_bundle"])
def test_an_old_student_checkpoint_and_bundle_give_the_same_audio(reference, source):
    loaded = load_model(LEGACY / source)
    assert loaded.kind == "student" and loaded.step == 7
    mel = torch.from_numpy(np.load(LEGACY / "tiny_mel.npy"))
    z = loaded.model.sample_noise(
        (1, mel.shape[-1] * loaded.model.hop), torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        audio = loaded.model(z, mel)[0][0]
    np.testing.assert_allclose(audio.numpy(), reference["tiny_student"], rtol=0, atol=1e-6)


def test_an_old_teacher_checkpoint_gives_the_same_density(reference):
    teacher = load_model(LEGACY / "tiny_teacher.pt").model
    mel = torch.from_numpy(np.load(LEGACY / "tiny_mel.npy"))
    audio = torch.linspace(-0.5, 0.5, mel.shape[-1] * 64)[None]
    with torch.no_grad():
        log_p = teacher.log_prob(audio, mel)[0]
    np.testing.assert_allclose(
        log_p.numpy(), reference["tiny_teacher_log_prob"], rtol=1e-6, atol=1e-5
    )

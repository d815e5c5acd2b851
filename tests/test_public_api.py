"""The public API is importable from the package root, and importing the root stays light."""

import subprocess
import sys

import wavedistill


def test_the_public_names_resolve_to_their_defining_modules():
    from wavedistill.config import Config
    from wavedistill.inference.synthesizer import Synthesizer
    from wavedistill.models.student import IAFStudent
    from wavedistill.models.teacher import WaveNetTeacher
    from wavedistill.store.loading import load_model

    assert wavedistill.Synthesizer is Synthesizer
    assert wavedistill.load_model is load_model
    assert wavedistill.Config is Config
    assert wavedistill.WaveNetTeacher is WaveNetTeacher
    assert wavedistill.IAFStudent is IAFStudent
    assert set(wavedistill.__all__) >= {
        "Synthesizer",
        "load_model",
        "Config",
        "WaveNetTeacher",
        "IAFStudent",
        "__version__",
    }


def test_an_unknown_name_is_an_attribute_error():
    try:
        wavedistill.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_does_not_load_torch():
    code = "import sys, wavedistill; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

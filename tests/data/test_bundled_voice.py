"""The bundled voice (``data/alice``): every utterance in the metadata exists as 16 kHz mono
16-bit audio, there are at least 10 minutes of it, and the held-out list is exactly what
``preprocess`` holds out with the recipes' split settings."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from wavedistill.config import load_config
from wavedistill.data.corpora import read_folder, split_utterances

VOICE = Path(__file__).resolve().parents[2] / "data" / "alice"
RECIPE_CONFIGS = [
    Path(__file__).resolve().parents[2] / "recipes" / name / "conf" / "teacher.yaml"
    for name in ("alice", "demo")
]


def test_every_utterance_is_16_khz_mono_16_bit_and_there_are_ten_minutes():
    ids = [line.split("|", 1)[0] for line in (VOICE / "metadata.csv").read_text().splitlines()]
    files = sorted((VOICE / "wavs").glob("*.flac"))
    assert [f.stem for f in files] == sorted(ids)
    seconds = 0.0
    for f in files:
        info = sf.info(f)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), f
        seconds += info.duration
    assert seconds >= 600


def test_the_held_out_list_is_the_split_the_recipes_make():
    held_out = (VOICE / "heldout.txt").read_text().split()
    assert len(held_out) >= 20
    utterances = read_folder(VOICE / "wavs")
    for path in RECIPE_CONFIGS:
        d = load_config(path).data
        train, valid = split_utterances(utterances, d.valid_fraction, d.valid_min, d.split_seed)
        assert [u.id for u in valid] == held_out, path
        assert not {u.id for u in train} & set(held_out)

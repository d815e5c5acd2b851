#!/usr/bin/env python3
"""Regenerate the bundled voice: one Festival ``kal`` utterance per sentence of ``text/source.txt``.

Needs Festival and its 16 kHz diphone voice (Debian: ``apt-get install festival
festvox-kallpc16k``), numpy and soundfile. Writes ``wavs/alice_NNN.flac`` (16 kHz, 16-bit) and
``metadata.csv`` (LJSpeech layout: ``<id>|<text>|<text>``). Festival's diphone synthesis is
deterministic, so the same text gives the same samples.

    python data/alice/generate.py            # from the repository root
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
MIN_CHARS = 30    # shorter sentences ("Down, down, down.") join the next one
MAX_CHARS = 240   # longer ones are cut at ; or : (else a comma) so an utterance stays under ~15 s
PAD_SECONDS = 0.1  # silence kept around the speech after trimming Festival's padding

# Typography Festival would read aloud or stumble on.
_REPLACE = {"“": '"', "”": '"', "‘": "'", "’": "'", "—": ", ", "_": ""}


def clean(text: str) -> str:
    """The text as Festival should read it: plain quotes, no emphasis marks, one line."""
    for old, new in _REPLACE.items():
        text = text.replace(old, new)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;:.!?])", r"\1", text)
    return re.sub(r",\s*,", ",", text).strip(" ,")


def paragraphs(source: str) -> list[str]:
    """Body paragraphs of the chapters; chapter headings and titles are dropped."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", source) if b.strip()]
    return [clean(b) for b in blocks if not b.startswith("CHAPTER")]


def sentences(paragraph: str) -> list[str]:
    """Split at sentence ends (., !, ? with an optional closing quote or bracket, then a capital
    or an opening quote), join short pieces, cut long ones (see :func:`_cut`)."""
    ends = [m.end() for m in re.finditer(r'[.!?]["\')]*(?=\s+["(]?[A-Z])', paragraph)]
    pieces = [paragraph[a:b] for a, b in zip([0, *ends], [*ends, len(paragraph)], strict=True)]
    joined: list[str] = []
    for piece in (p.strip() for p in pieces if p.strip()):
        if joined and len(joined[-1]) < MIN_CHARS:
            joined[-1] = f"{joined[-1]} {piece}"
        else:
            joined.append(piece)
    if len(joined) > 1 and len(joined[-1]) < MIN_CHARS:
        joined[-2:] = [f"{joined[-2]} {joined[-1]}"]
    return [part for s in joined for part in _cut(s)]


def _cut(sentence: str) -> list[str]:
    if len(sentence) <= MAX_CHARS:
        return [sentence]
    # Prefer a semicolon or colon; a comma only where the sentence has neither.
    def fits(at: int) -> bool:  # both halves long enough to stand alone
        return min(at, len(sentence) - at) >= 2 * MIN_CHARS

    cuts = ([m.end() for m in re.finditer(r"[;:]\s", sentence) if fits(m.end())]
            or [m.end() for m in re.finditer(r",\s", sentence) if fits(m.end())])
    middle = len(sentence) / 2
    if not cuts:
        return [sentence]
    at = min(cuts, key=lambda c: abs(c - middle))
    return _cut(sentence[:at].strip()) + _cut(sentence[at:].strip())


def synthesize(text: str, out: Path) -> None:
    """Festival ``kal`` speaking ``text`` into ``out`` (16-bit FLAC, silences trimmed)."""
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "u.txt", Path(tmp) / "u.wav"
        txt.write_text(text + "\n", encoding="utf-8")
        subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(txt), "-o", str(wav),
                        "-F", str(SAMPLE_RATE)], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="int16")
    assert sr == SAMPLE_RATE, (out, sr)
    sf.write(out, trim(audio), SAMPLE_RATE, subtype="PCM_16", format="FLAC")


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing near-silence (below 1 % of full scale), keeping PAD_SECONDS."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 328)
    if loud.size == 0:
        return audio
    pad = int(PAD_SECONDS * SAMPLE_RATE)
    return audio[max(loud[0] - pad, 0): loud[-1] + pad + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="corpus folder (default: here)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("text2wave") is None:
        raise SystemExit("text2wave not found: apt-get install festival festvox-kallpc16k")
    source = (HERE / "text" / "source.txt").read_text(encoding="utf-8")
    texts = [s for p in paragraphs(source) for s in sentences(p)]
    wavs = args.out / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    ids = [f"alice_{i:03d}" for i in range(1, len(texts) + 1)]
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = [(text, wavs / f"{uid}.flac") for uid, text in zip(ids, texts, strict=True)]
        list(pool.map(lambda job: synthesize(*job), jobs))
    lines = [f"{uid}|{text}|{text}\n" for uid, text in zip(ids, texts, strict=True)]
    (args.out / "metadata.csv").write_text("".join(lines), encoding="utf-8")
    seconds = sum(sf.info(wavs / f"{uid}.flac").duration for uid in ids)
    print(f"{len(ids)} utterances, {seconds / 60:.1f} minutes, in {args.out}")


if __name__ == "__main__":
    main()

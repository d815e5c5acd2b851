"""Corpora in, training segments out.

- Manifest readers turn a corpus in its published layout into a list of :class:`Utterance`:
  a plain folder of audio, LJSpeech, VCTK and Kaldi ``wav.scp``.
- :func:`split_utterances` holds out a validation set that depends only on each utterance's id.
- :class:`SegmentDataset` reads the folder written by ``preprocess`` and yields hop-aligned
  segments paired with exactly their mel frames; :func:`collate` batches them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from wavedistill.config import Config
from wavedistill.data.audio import AUDIO_EXTENSIONS, dequantize_16bit, is_audio_file
from wavedistill.data.datacheck import ClipCheck
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError

log = logging.getLogger(__name__)

SINGLE_SPEAKER = "default"  # speaker name of corpora without speaker labels


@dataclass(frozen=True)
class Utterance:
    """One clip of a corpus: ``id`` names its outputs (``audio/<id>.npy``), ``speaker`` is a name
    (mapped to an integer id by ``preprocess``)."""

    id: str
    path: Path
    speaker: str = SINGLE_SPEAKER


# -- manifest readers ------------------------------------------------------------------------


def _require_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder ({what} expects the corpus folder)")


def _check_unique(utterances: list[Utterance], root: Path) -> list[Utterance]:
    seen: dict[str, Path] = {}
    for utt in utterances:
        if utt.id in seen:
            raise UserError(
                f"{root}: {seen[utt.id]} and {utt.path} both give utterance id "
                f"'{utt.id}'; keep one of them"
            )
        seen[utt.id] = utt.path
    if not utterances:
        raise UserError(
            f"{root}: no audio files found (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    return utterances


def read_folder(root: str | Path) -> list[Utterance]:
    """Every audio file under ``root``, recursively, in sorted order; the id is the path relative
    to ``root`` without its extension (``sub/clip``). One speaker."""
    root = Path(root)
    _require_dir(root, "format folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and is_audio_file(p) and not p.name.startswith(".")
    )
    utts = [Utterance(p.relative_to(root).with_suffix("").as_posix(), p) for p in files]
    return _check_unique(utts, root)


def read_ljspeech(root: str | Path) -> list[Utterance]:
    """LJSpeech-1.1: ``metadata.csv`` lines ``<id>|<text>|<normalised text>``, audio in
    ``wavs/<id>.wav``. One speaker, named ``LJ``."""
    root = Path(root)
    _require_dir(root, "format ljspeech")
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise UserError(f"{root}: not an LJSpeech folder (no metadata.csv)")
    utts = []
    for line in metadata.read_text(encoding="utf-8").splitlines():
        uid = line.split("|", 1)[0].strip()
        if uid:
            utts.append(Utterance(uid, root / "wavs" / f"{uid}.wav", "LJ"))
    return _check_unique(utts, root)


def _vctk_audio_root(root: Path) -> Path:
    """The ``wav48*`` folder of a VCTK release, or ``root`` itself when it is one."""
    if root.name.startswith("wav48"):
        return root
    candidates = sorted(p for p in root.glob("wav48*") if p.is_dir())
    if not candidates:
        raise UserError(f"{root}: not a VCTK folder (no wav48* folder of speaker folders)")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise UserError(f"{root}: several VCTK audio folders ({names}); point --data at one")
    return candidates[0]


def read_vctk(root: str | Path, mic: str = "mic1") -> list[Utterance]:
    """VCTK: ``wav48*/<speaker>/<speaker>_<n>[_mic1|_mic2].(wav|flac)``; the speaker is the folder
    name. Release 0.92 records each sentence with two microphones: only ``mic`` is kept, so the
    same sentence cannot land in both the training and the validation split."""
    root = Path(root)
    _require_dir(root, "format vctk")
    audio_root = _vctk_audio_root(root)
    utts = []
    for speaker_dir in sorted(p for p in audio_root.iterdir() if p.is_dir()):
        for path in sorted(speaker_dir.iterdir()):
            if path.suffix.lower() not in (".wav", ".flac"):
                continue
            stem = path.stem
            if stem.endswith(("_mic1", "_mic2")) and not stem.endswith("_" + mic):
                continue
            utts.append(Utterance(stem, path, speaker_dir.name))
    return _check_unique(utts, root)


def _read_table(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, rest) of each non-empty line of a Kaldi table file."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        if not rest.strip():
            raise UserError(f"{path}:{lineno}: expected '<id> <value>', got '{line}'")
        rows.append((lineno, key, rest.strip()))
    return rows


def read_wav_scp(source: str | Path) -> list[Utterance]:
    """Kaldi ``wav.scp`` (``source`` is the file or its folder): ``<id> <path>`` lines; relative
    paths are taken from the folder holding ``wav.scp``. Speakers come from ``utt2spk`` beside it
    when present. Piped commands (``<id> sox ... |``) are refused: convert the audio first."""
    source = Path(source)
    scp = source / "wav.scp" if source.is_dir() else source
    if not scp.is_file():
        raise UserError(f"{scp}: no such wav.scp file")
    speakers = _read_utt2spk(scp.parent / "utt2spk")
    utts = []
    for lineno, uid, rest in _read_table(scp):
        if rest.endswith("|"):
            raise UserError(
                f"{scp}:{lineno}: utterance '{uid}' is a piped command; wavedistill "
                f"reads audio files only, so write the audio out first "
                f"(e.g. with wav-copy scp:wav.scp ark,scp:...) and list the files"
            )
        path = Path(rest)
        if speakers is not None and uid not in speakers:
            raise UserError(f"{scp.parent / 'utt2spk'}: no speaker for utterance '{uid}'")
        speaker = speakers[uid] if speakers is not None else SINGLE_SPEAKER
        utts.append(Utterance(uid, path if path.is_absolute() else scp.parent / path, speaker))
    return _check_unique(utts, scp)


def _read_utt2spk(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    return {uid: speaker for _, uid, speaker in _read_table(path)}


READERS: dict[str, Callable[[Path], list[Utterance]]] = {
    "folder": read_folder,
    "ljspeech": read_ljspeech,
    "vctk": read_vctk,
    "wavscp": read_wav_scp,
}


def read_manifest(fmt: str, source: str | Path) -> list[Utterance]:
    """The utterances of a corpus of layout ``fmt`` (``data.format``). Ids are checked to be
    relative paths without ``..`` so outputs stay inside the dataset folder."""
    if fmt not in READERS:
        raise UserError(f"data.format '{fmt}' is not one of {', '.join(READERS)}")
    utts = READERS[fmt](Path(source))
    for utt in utts:
        parts = PurePosixPath(utt.id).parts
        if not parts or PurePosixPath(utt.id).is_absolute() or ".." in parts:
            raise UserError(f"{utt.path}: utterance id '{utt.id}' is not a safe relative name")
    return utts


# -- split -----------------------------------------------------------------------------------


def _split_score(uid: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the id and the seed alone."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_utterances(
    utterances: list,
    valid_fraction: float,
    valid_min: int,
    seed: int,
    key: Callable = lambda u: u.id,
) -> tuple[list, list]:
    """Deterministic (train, valid) split, each keeping the input order.

    An item is held out when the hash of (seed, id) falls below ``valid_fraction``, so its
    side never depends on the other items: adding files to a corpus leaves every earlier
    decision as it was. When that holds out fewer than ``valid_min`` items, the items with the
    lowest hashes are taken instead; at least one item always stays for training."""
    scores = [_split_score(key(u), seed) for u in utterances]
    # The items below the threshold are exactly the lowest-scoring ones, so one sorted order
    # serves the threshold, the valid_min top-up and the cap that keeps one item for training.
    count = sum(s < valid_fraction for s in scores)
    count = min(max(count, valid_min), max(len(scores) - 1, 0))
    held = set(sorted(range(len(scores)), key=scores.__getitem__)[:count])
    train = [u for i, u in enumerate(utterances) if i not in held]
    valid = [u for i, u in enumerate(utterances) if i in held]
    return train, valid


# -- preprocessed dataset folder -------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    """The entries of a dataset manifest (``train.jsonl`` / ``valid.jsonl``); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno}: corrupt manifest line") from None
    return entries


class SegmentDataset(torch.utils.data.Dataset):
    """Training examples from a folder written by ``preprocess``.

    Item ``i`` is ``{"id": str, "audio": (T,) float32, "mel": (n_mels, T // hop) float32,
    "speaker": int}``. With a segment length (``data.segment_length``), T is that length and the
    segment starts at a random frame boundary ``s = hop * j``; ``mel`` is frames ``[j, j + T/hop)``
    of the utterance, i.e. exactly the frames of those samples. With ``full_utterances=True``
    (validation) or ``segment_length`` None, item ``i`` is the whole utterance.

    The start of item ``i`` is drawn from a generator seeded by ``(seed, epoch, i)`` only, so the
    data seen by a resumed run, by any number of workers or by any process is identical to the
    uninterrupted run's. Call :meth:`set_epoch` at the start of every epoch (as with
    ``DistributedSampler``) to draw new segments. Mel is normalised when ``stats`` is given.

    With ``check`` (the default), each clip is checked once (see datacheck.py) and a corrupted
    one yields ``{"id", "corrupt": (file, reason)}`` instead, which :func:`collate` sets aside
    for the caller to report."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        cfg: Config,
        stats: FeatureStats | None = None,
        *,
        full_utterances: bool = False,
        seed: int | None = None,
        check: bool = True,
    ):
        self.data_dir = Path(data_dir)
        self.hop = cfg.audio.hop_length
        self.stats = stats
        self.seed = cfg.train.seed if seed is None else seed
        self.epoch = 0
        self.segment_length = None if full_utterances else cfg.data.segment_length
        self.entries = self._usable(self._read_entries(split))
        self.check = ClipCheck.for_folder(self.data_dir, cfg.audio) if check else None

    def _read_entries(self, split: str) -> list[dict]:
        manifest = self.data_dir / f"{split}.jsonl"
        if not manifest.exists():
            raise UserError(
                f"{manifest}: no such manifest; is {self.data_dir} a folder written "
                f"by `wavedistill preprocess`?"
            )
        return read_jsonl(manifest)

    def _usable(self, entries: list[dict]) -> list[dict]:
        if self.segment_length is None:
            return entries
        kept = [e for e in entries if e["samples"] >= self.segment_length]
        if len(kept) < len(entries):
            log.warning(
                "%s: %d of %d utterances are shorter than data.segment_length (%d) and are skipped",
                self.data_dir,
                len(entries) - len(kept),
                len(entries),
                self.segment_length,
            )
        if entries and not kept:
            raise UserError(
                f"{self.data_dir}: no utterance is at least data.segment_length "
                f"({self.segment_length}) samples long"
            )
        return kept

    def set_epoch(self, epoch: int) -> None:
        """Select the segments of ``epoch``; the same epoch always gives the same segments."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def start_frame(self, index: int) -> int:
        """First frame of item ``index`` in the current epoch (0 for whole utterances)."""
        entry = self.entries[index]
        if self.segment_length is None:
            return 0
        last = entry["frames"] - self.segment_length // self.hop
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, last + 1))

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        problem = self.check.problem(entry) if self.check is not None else None
        if problem is not None:
            return {"id": entry["id"], "corrupt": (str(problem[0]), problem[1])}
        frames = entry["frames"] if self.segment_length is None else self.segment_length // self.hop
        first = self.start_frame(index)
        # Memory-mapped: a segment reads only its own bytes, however long the utterance.
        pcm = np.load(self.data_dir / entry["audio"], mmap_mode="r")
        mel = np.load(self.data_dir / entry["mel"], mmap_mode="r")
        audio = dequantize_16bit(np.array(pcm[first * self.hop : (first + frames) * self.hop]))
        mel = torch.from_numpy(np.array(mel[:, first : first + frames], dtype=np.float32))
        if self.stats is not None:
            mel = self.stats.normalize(mel)
        item = {
            "id": entry["id"],
            "audio": torch.from_numpy(audio),
            "mel": mel,
            "speaker": int(entry["speaker"]),
        }
        if "f0" in entry:  # F0 labels (preprocess with data.pitch=true): Hz, 0 = unvoiced
            f0 = np.load(self.data_dir / entry["f0"], mmap_mode="r")
            item["f0"] = torch.from_numpy(np.array(f0[first : first + frames], dtype=np.float32))
        return item


def collate(items: list[dict]) -> dict:
    """Batch items of :class:`SegmentDataset`: ``{"id": [str], "audio": (B, T) float32,
    "mel": (B, n_mels, F) float32, "speaker": (B,) int64, "lengths": (B,) int64}``.

    Items of different lengths (whole utterances) are zero-padded at the end to the longest;
    ``lengths`` gives each item's true number of samples (its frames are lengths / hop).
    ``"f0": (B, F)`` float32 (Hz, 0 = unvoiced, and 0 past an item's end) when every item has
    F0 labels. Corrupted items are left out and listed as ``"corrupt": [(file, reason)]`` (a
    batch of only corrupted items is just that list)."""
    corrupt = [it["corrupt"] for it in items if "corrupt" in it]
    if corrupt:
        items = [it for it in items if "corrupt" not in it]
        return {"corrupt": corrupt, **(_batch(items) if items else {})}
    return _batch(items)


def _batch(items: list[dict]) -> dict:
    lengths = [it["audio"].shape[-1] for it in items]
    frames = max(it["mel"].shape[-1] for it in items)
    audio = torch.zeros(len(items), max(lengths))
    mel = torch.zeros(len(items), items[0]["mel"].shape[0], frames)
    for i, it in enumerate(items):
        audio[i, : lengths[i]] = it["audio"]
        mel[i, :, : it["mel"].shape[-1]] = it["mel"]
    batch = {
        "id": [it["id"] for it in items],
        "audio": audio,
        "mel": mel,
        "speaker": torch.tensor([it["speaker"] for it in items], dtype=torch.int64),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
    }
    if all("f0" in it for it in items):
        f0 = torch.zeros(len(items), frames)
        for i, it in enumerate(items):
            f0[i, : it["f0"].shape[-1]] = it["f0"]
        batch["f0"] = f0
    return batch

"""What the trainer reads: a checked preprocessed dataset folder (:class:`DataFolder`), the
endless stream of training batches that knows its position (:class:`BatchStream`), the data
order every rank agrees on (:class:`ShardedBatchSampler`), and the fixed validation segments.

Each epoch's order is a permutation drawn from ``train.seed + epoch`` alone, so every rank
computes the same one and reads its own slice, and a resumed run, given ``(epoch, position)``,
continues with exactly the batches an uninterrupted run would have read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from wavedistill.config import Config, audio_differences, read_yaml
from wavedistill.data.corpora import SegmentDataset, collate
from wavedistill.data.datacheck import SkipLog
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.training.distributed import Processes
from wavedistill.training.interrupt import ignore_interrupts

log = logging.getLogger(__name__)


@dataclass
class DataFolder:
    """A checked preprocessed dataset folder: its path, feature statistics and speakers."""

    path: Path
    stats: FeatureStats
    speakers: dict[str, int]


def open_data_folder(data_dir: str | Path, cfg: Config) -> DataFolder:
    """Check that ``data_dir`` was written by ``preprocess`` with this config's audio
    settings and read its statistics and speaker map."""
    path = Path(data_dir)
    for name in ("config.yaml", "stats.npz", "train.jsonl"):
        if not (path / name).is_file():
            raise UserError(
                f"{path}: not a dataset folder (no {name}); run `wavedistill preprocess`"
            )
    differ = audio_differences(read_yaml(path / "config.yaml").get("audio", {}), cfg.audio)
    if differ:
        raise UserError(
            f"{path / 'config.yaml'}: features were made with other audio settings "
            f"than this config ({', '.join(differ)}); preprocess again or match "
            "the config"
        )
    speakers = _read_speakers(path / "speakers.json")
    return DataFolder(path, FeatureStats.load(path / "stats.npz"), speakers)


def _read_speakers(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError):
        raise UserError(f"{path}: not a JSON object of speaker ids") from None


def valid_dataset(data: DataFolder, cfg: Config):
    """The folder's validation split as fixed segments (the same at every validation), or
    None when the folder has no ``valid.jsonl``."""
    if not (data.path / "valid.jsonl").is_file():
        log.warning("%s: no valid.jsonl; training without validation", data.path)
        return None
    dataset = SegmentDataset(data.path, "valid", cfg, data.stats)
    dataset.set_epoch(0)  # the same segments at every validation
    return dataset


class ShardedBatchSampler:
    """Batches of dataset indices in a fresh permutation per epoch, drawn from
    ``seed + epoch`` alone, so every rank computes the same order and takes the slice
    ``rank::world_size`` of it; ranks get equally many full batches. Iteration starts at batch
    ``start`` of the epoch, which is how a resumed run continues mid-epoch."""

    def __init__(self, size: int, batch_size: int, seed: int, procs: Processes):
        self.size, self.batch_size, self.seed, self.procs = size, batch_size, seed, procs
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.size // self.procs.world_size // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        rank, world = self.procs.rank, self.procs.world_size
        order = torch.randperm(self.size, generator=generator)[rank::world]
        for b in range(self.start, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class BatchStream:
    """Endless training batches, epoch after epoch, that knows where it is:
    ``(epoch, position)`` = batches already consumed in the current epoch. Corrupted clips are
    left out of their batch and reported to :attr:`skipped` (a batch of only corrupted clips
    counts as consumed and the next one is read)."""

    def __init__(self, dataset, cfg: Config, procs: Processes, pin_memory: bool):
        self.dataset = dataset
        self.sampler = ShardedBatchSampler(len(dataset), cfg.data.batch_size, cfg.train.seed, procs)
        if len(self.sampler) == 0:
            raise UserError(
                f"the train split has {len(dataset)} items: fewer than data.batch_size "
                f"({cfg.data.batch_size}) x {procs.world_size} process(es)"
            )
        # A private generator: creating an iterator must not consume the global RNG, or a
        # resumed run (which creates one mid-epoch) would drift from an uninterrupted one.
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(cfg.train.seed),
            worker_init_fn=ignore_interrupts,
        )
        self.skipped = SkipLog(None, getattr(dataset, "data_dir", Path(".")), len(dataset))
        self.epoch, self.position = 0, 0
        self._iterator: Iterator | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None

    def next(self) -> dict[str, Tensor]:
        """The next batch with at least one sound clip."""
        while True:
            batch = self._next_batch()
            for path, reason in batch.pop("corrupt", ()):
                self.skipped.record(path, reason)
            if "audio" in batch:
                return batch

    def _next_batch(self) -> dict[str, Tensor]:
        iterator = self._iterator if self._iterator is not None else self._start_epoch()
        batch = next(iterator, None)
        if batch is None:
            self.epoch, self.position = self.epoch + 1, 0
            batch = next(self._start_epoch())
        self.position += 1
        return batch

    def _start_epoch(self) -> Iterator:
        self.dataset.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.position)
        self._iterator = iter(self.loader)
        return self._iterator

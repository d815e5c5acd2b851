"""Distributed training: two CPU processes (gloo) end with identical weights, equal to one
process that sees both shards as one batch; only rank 0 writes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_config, write_tiny_dataset

from wavedistill.config import Config
from wavedistill.store.checkpoint import latest_checkpoint, load_checkpoint

WORLD_SIZE = 2


def _config(batch_size: int) -> Config:
    return tiny_config(
        data={"batch_size": batch_size}, train={"steps": 2, "checkpoint_every": 2, "valid_every": 2}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, config: Config, data_dir, out_dir, results_dir) -> None:
    """One process of the run, set up as ``torchrun`` would set it up."""
    from wavedistill.training.runs import train_teacher

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)
    trainer = train_teacher(config, data_dir, out_dir, device="cpu")
    torch.save(trainer.model.state_dict(), results_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny teacher trained by 2 processes with batch 2 each, and by 1 with batch 4."""
    from wavedistill.training.runs import train_teacher

    root = tmp_path_factory.mktemp("distributed")
    write_tiny_dataset(root)
    mp.spawn(
        _rank_main,
        nprocs=WORLD_SIZE,
        join=True,
        args=(_free_port(), _config(2), root / "data", root / "ddp", root),
    )
    single = train_teacher(_config(2 * WORLD_SIZE), root / "data", root / "single", device="cpu")
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    return root, ranks, single.model.state_dict()


def test_every_rank_ends_with_identical_weights(runs):
    _, ranks, _ = runs
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), name


def test_two_processes_train_like_one_process_with_both_shards_in_one_batch(runs):
    # Each epoch's permutation is dealt to the ranks, so 2 x batch 2 covers the same items as
    # 1 x batch 4, and averaged gradients equal the gradient of the mean loss.
    _, ranks, single = runs
    for name, tensor in single.items():
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-4, atol=1e-5)


def test_only_rank_zero_writes_and_its_checkpoint_holds_every_ranks_rng(runs):
    root, ranks, _ = runs
    ckpt = load_checkpoint(latest_checkpoint(root / "ddp"))
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == WORLD_SIZE
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # own noise per rank
    for name, tensor in ranks[0].items():
        assert torch.equal(ckpt["model"][name], tensor)
    assert len(list((root / "ddp" / "tb").iterdir())) == 1
    assert sorted(p.name for p in (root / "ddp" / "checkpoints").iterdir()) == [
        "best.pt",
        "step-000002.pt",
    ]

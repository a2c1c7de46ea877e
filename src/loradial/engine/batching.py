"""Batches for the engine: a seeded per-epoch order, collation on the CPU, label positions.

Every adapter sees the same m sequences per step; the engine repeats them K times on the device.
The positions that predict a label (HF convention: labels aligned with inputs, position t predicts
t+1) are found on the CPU, so the loss gathers exactly those hidden states with no host sync.
"""

from __future__ import annotations

import dataclasses

import torch


class DataStream:
    """Indices of the next batch: a fresh seeded permutation per epoch; the position is (epoch, cursor)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.n, self.batch_size, self.seed, self.epoch, self.cursor = n, batch_size, seed, epoch, cursor
        self._perm: tuple[int, list[int]] | None = None

    def perm(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm[1]

    def next(self) -> list[int]:
        if self.cursor >= self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
        idx = self.perm(self.epoch)[self.cursor:self.cursor + self.batch_size]
        self.cursor += len(idx)
        return idx

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor  # (m, T) on the device
    attention_mask: torch.Tensor | None  # None when nothing is padded
    index: torch.Tensor  # (n,) flat positions in (m·T) that predict a label
    targets: torch.Tensor  # (n,) the labels they predict
    n_labels: int
    n_tokens: int


def make_batch(examples: list[dict], pad_token_id: int | None, device: torch.device, multiple: int | None = None) -> Batch:
    """Collate on the CPU and find the label positions there (labels shift by one: position t predicts t+1)."""
    from loradial.data import IGNORE_INDEX, collate

    b = collate(examples, pad_token_id, multiple)
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    T = ids.shape[1]
    nxt = labels[:, 1:]
    rows, cols = (nxt != IGNORE_INDEX).nonzero(as_tuple=True)
    index, targets = rows * T + cols, nxt[rows, cols]
    full = bool(mask.all())
    pin = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    return Batch(move(ids), None if full else move(mask), move(index), move(targets), int(index.numel()), int(mask.sum()))

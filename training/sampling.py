"""Per-epoch sampling: a fresh, seeded draw of the per-label cap, batched by label groups.

A fixed cap (`max_per_label`) used to pick one subset for the whole run; here every epoch draws its own
subset with `Random((seed, epoch))`, so a longer run sees more of the data. Batches can be made of a few
labels at a time (`groups_per_batch`) so that the contrastive instance loss meets hard negatives: distinct
tokens of the same collection.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; call `set_epoch` before iterating each epoch."""

    def __init__(
        self,
        labels: Sequence[str],
        batch_size: int,
        max_per_label: int | None = None,
        groups_per_batch: int | None = None,
        seed: int = 0,
        drop_last: bool = True,
        balanced: bool = True,
    ):
        self.by_label: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            self.by_label.setdefault(lab, []).append(i)
        self.batch_size, self.cap, self.groups = batch_size, max_per_label, groups_per_batch
        self.seed, self.drop_last, self.balanced, self.epoch = seed, drop_last, balanced, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> dict[str, list[int]]:
        """This epoch's indices per label (balanced to the cap, sampled without replacement)."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        cap = self.cap or max(len(v) for v in self.by_label.values())
        out = {}
        for lab, idx in sorted(self.by_label.items()):
            idx = list(idx)
            rng.shuffle(idx)
            if len(idx) >= cap or not self.balanced:
                out[lab] = idx[:cap]
            else:  # balanced: small labels repeat to reach the cap
                out[lab] = (idx * (cap // len(idx) + 1))[:cap]
        return out

    def _batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}/{self.epoch}/batches")
        drawn = self.draw()
        if not self.groups:
            flat = [i for idx in drawn.values() for i in idx]
            rng.shuffle(flat)
            chunks = [flat[s : s + self.batch_size] for s in range(0, len(flat), self.batch_size)]
        else:
            per = max(1, self.batch_size // self.groups)
            pieces = [idx[s : s + per] for idx in drawn.values() for s in range(0, len(idx), per)]
            pieces = [p for p in pieces if len(p) == per] if self.drop_last else pieces
            rng.shuffle(pieces)
            chunks = [
                [i for p in pieces[s : s + self.groups] for i in p]
                for s in range(0, len(pieces), self.groups)
            ]
        full = self.groups * max(1, self.batch_size // self.groups) if self.groups else self.batch_size
        return [c for c in chunks if len(c) == full] if self.drop_last else chunks

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())

"""Torch datasets over the standard format. Every image goes through `app.preprocessing.load_tensor`.

Order per item: bytes ─► [degradation augmentation on bytes-decoded pixels] ─► shared preprocessing
─► [geometric/colour augmentation on the tensor]. With both augmentations off, an item is byte-identical
to what the service computes for the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from app.imaging import decode_image
from app.preprocessing import PreprocessConfig, load_tensor, preprocess


class ImageDataset(TorchDataset):
    """(tensor [3,S,S] float32, label index) pairs from file paths."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Sequence[int],
        cfg: PreprocessConfig,
        degrade: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ):
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = [str(p) for p in paths]
        self.targets = list(targets)
        self.cfg = cfg
        self.degrade = degrade
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as fh:
            return fh.read()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data = self._read(index)
        if self.degrade is None:
            x = load_tensor(data, self.cfg)
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            x = preprocess(self.degrade(decode_image(data, self.cfg.background_rgb), rng), self.cfg)
        t = torch.from_numpy(x)
        if self.augment is not None:
            t = self.augment(t)
        return t, self.targets[index]

"""Torch datasets over the standard format. Every image goes through `app.preprocessing.load_tensor`.

Order per item: bytes ─► decode ─► [copymint edit] ─► [degradation augmentation] ─► shared preprocessing
─► [geometric/colour augmentation on the tensor]. With every augmentation off, an item is byte-identical
to what the service computes for the same file. With `views=2` an item is two independently edited views
of one image (the positive pair of the contrastive instance loss).
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
        edit: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        views: int = 1,
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
        self.edit = edit
        self.views = views

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as fh:
            return fh.read()

    def _view(self, rgb: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.edit is not None:
            rgb = self.edit(rgb, rng)
        if self.degrade is not None:
            rgb = self.degrade(rgb, rng)
        t = torch.from_numpy(preprocess(rgb, self.cfg))
        return self.augment(t) if self.augment is not None else t

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One view [3,S,S], or `views` independently edited views [V,3,S,S] of the same image. An index
        past the end, `i + k * len`, is image `i` again with its own random edits and degradations (the
        k-th redraw, see `training.train.FreshDraws`)."""
        item = index % len(self.paths)
        data, target = self._read(item), self.targets[item]
        if self.degrade is None and self.edit is None and self.augment is None:
            return torch.from_numpy(load_tensor(data, self.cfg)), target
        rng = np.random.default_rng((self.seed, self.epoch, index))
        rgb = decode_image(data, self.cfg.background_rgb)
        if self.views == 1:
            return self._view(rgb, rng), target
        return torch.stack([self._view(rgb, rng) for _ in range(self.views)]), target

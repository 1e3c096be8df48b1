"""Geometric and colour augmentation on the normalised tensor (after the shared preprocessing)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class ColourJitter(torch.nn.Module):
    """Brightness/contrast/per-channel gain on a normalised tensor (torchvision's expects 0..1 input)."""

    def __init__(self, strength: float = 0.2):
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.strength
        gain = 1 + (torch.rand(3, 1, 1) * 2 - 1) * s / 2
        contrast = 1 + (torch.rand(1) * 2 - 1) * s
        shift = (torch.rand(1) * 2 - 1) * s
        mean = x.mean(dim=(1, 2), keepdim=True)
        return (x - mean) * contrast * gain + mean + shift


def train_augmentation(rotation: float = 10.0, zoom: float = 0.15, jitter: float = 0.2) -> torch.nn.Module:
    """Flip, rotation, zoom/crop and colour jitter."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=rotation, scale=(1 - zoom, 1 + zoom), translate=(0.05, 0.05)),
            ColourJitter(jitter),
        ]
    )

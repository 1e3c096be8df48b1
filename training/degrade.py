"""Real-world degradations: lossy re-encoding, Gaussian and salt-and-pepper noise, downscaling.

Used twice: as training augmentation (random, so the model sees what marketplaces receive) and as the fixed
corruptions of the robustness table.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from app.preprocessing import reencode

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    return reencode(rgb, "jpeg", quality)


def gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def salt_and_pepper(rgb: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    out = rgb.copy()
    mask = rng.random(rgb.shape[:2])
    out[mask < amount / 2] = 0
    out[mask > 1 - amount / 2] = 255
    return out


def downscale(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# The fixed corruptions of the robustness table (name -> function of (rgb, rng)).
CORRUPTIONS: dict[str, Degrade] = {
    "clean": lambda x, rng: x,
    "jpeg_q10": lambda x, rng: jpeg(x, 10),
    "jpeg_q30": lambda x, rng: jpeg(x, 30),
    "gauss_sigma10": lambda x, rng: gaussian_noise(x, 10, rng),
    "gauss_sigma25": lambda x, rng: gaussian_noise(x, 25, rng),
    "salt_pepper_2pct": lambda x, rng: salt_and_pepper(x, 0.02, rng),
    "downscale_4x": lambda x, rng: downscale(x, 4),
}


def random_degradation(probability: float) -> Degrade:
    """With `probability`, apply one random degradation of random strength (training augmentation).

    Also rescales by a random factor (0.5x-2x) half the time, so the model cannot learn a collection from
    its source resolution.
    """

    def apply(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            f = float(rng.uniform(0.5, 2.0))
            h, w = rgb.shape[:2]
            interp = cv2.INTER_NEAREST if f > 1 else cv2.INTER_AREA
            rgb = cv2.resize(rgb, (max(4, round(w * f)), max(4, round(h * f))), interpolation=interp)
        if rng.random() >= probability:
            return rgb
        kind = rng.integers(4)
        if kind == 0:
            return jpeg(rgb, int(rng.integers(8, 60)))
        if kind == 1:
            return gaussian_noise(rgb, float(rng.uniform(5, 30)), rng)
        if kind == 2:
            return salt_and_pepper(rgb, float(rng.uniform(0.005, 0.03)), rng)
        return downscale(rgb, float(rng.uniform(2, 4)))

    return apply


def downscale_blur(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Downscale by `factor` and back up to the same size (linear): the blur of a resampled upload."""
    h, w = rgb.shape[:2]
    return cv2.resize(downscale(rgb, factor), (w, h), interpolation=cv2.INTER_LINEAR)


# The same-size corruptions a denoiser is scored on against the clean image (PSNR/SSIM).
DENOISE_CORRUPTIONS: dict[str, Degrade] = {
    "clean": CORRUPTIONS["clean"],
    "gauss_sigma25": CORRUPTIONS["gauss_sigma25"],
    "salt_pepper_2pct": CORRUPTIONS["salt_pepper_2pct"],
    "jpeg_q10": CORRUPTIONS["jpeg_q10"],
    "downscale_blur_2x": lambda x, rng: downscale_blur(x, 2),
}

# What the learned denoiser trains on: (name, weight, strength range); `clean` teaches it to leave
# clean pixels alone.
DENOISER_TRAINING_MIX: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("clean", 0.1, (0, 0)),
    ("gaussian_sigma", 0.25, (5, 35)),
    ("salt_pepper_amount", 0.25, (0.005, 0.04)),
    ("jpeg_quality", 0.2, (8, 60)),
    ("downscale_blur_factor", 0.2, (1.5, 3)),
)


def denoiser_degradation(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw from `DENOISER_TRAINING_MIX`: a same-size degradation of random kind and strength."""
    weights = np.array([w for _, w, _ in DENOISER_TRAINING_MIX])
    kind, _, (lo, hi) = DENOISER_TRAINING_MIX[rng.choice(len(weights), p=weights / weights.sum())]
    strength = float(rng.uniform(lo, hi))
    if kind == "gaussian_sigma":
        return gaussian_noise(rgb, strength, rng)
    if kind == "salt_pepper_amount":
        return salt_and_pepper(rgb, strength, rng)
    if kind == "jpeg_quality":
        return jpeg(rgb, round(strength))
    if kind == "downscale_blur_factor":
        return downscale_blur(rgb, strength)
    return rgb

"""Occlusion heatmaps: which regions of an image drove a decision, computed through ONNX Runtime alone.

The 96-px ResNet's last feature map is 3x3, too coarse for class activation maps, so the heatmap comes from
*occlusion sensitivity*: every patch of the network input (a `patch`-px square every `stride` px) is
replaced by a heavily blurred copy of the same region, all occluded inputs run through the model as one
batch, and each patch's weight is how much the decision's score fell without it. Blurring rather than
painting grey keeps a flat background flat, so occluding it costs nothing and the heat lands on what
carries the decision (the ape, not the sky). Per-pixel heat is the mean drop of the patches that cover the
pixel, so overlapping patches give a map finer than the patch grid; the map is then carried back through
the resize geometry onto the original image.

    decision score  class: the calibrated log-odds of `target` (a probability saturates at 1.0 on a
                           confident image, so no single patch would move it)
                    copy:  cosine similarity of the instance vector to the stored original's

Cost is bounded: one image, `1 + ((S - patch) // stride + 1)^2` network inputs (50 at the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.imaging import read_image_file
from app.inference import OnnxModel, logits_of
from app.preprocessing import PreprocessConfig, ResizeConfig, encode, normalize, prepare_pixels

PATCH = 24  # occluder side, in network-input pixels
STRIDE = 12  # step between occluders: half a patch, so every pixel is covered by up to 4


@dataclass
class Heatmap:
    """Per-pixel heat on the network input (0 = no effect, 1 = the strongest drop), and the scores."""

    heat: np.ndarray  # [S, S] float32 in [0, 1]
    grid: np.ndarray  # [G, G] the drop of each patch (score units, not normalised)
    score: float  # the unoccluded score
    patch: int
    stride: int


def occluders(size: int, patch: int = PATCH, stride: int = STRIDE) -> list[tuple[int, int]]:
    """Top-left corners of the occluding patches, row by row, covering the whole `size` square."""
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:  # the last row/column reaches the edge
        starts.append(size - patch)
    return [(y, x) for y in starts for x in starts]


def occluded_batch(pixels: np.ndarray, patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
    """[S,S,3] uint8 network-input pixels -> [1 + P, S, S, 3]: the image, then one copy per patch with that
    patch replaced by the blurred image."""
    size = pixels.shape[0]
    sigma = max(2.0, patch / 2)
    blurred = cv2.GaussianBlur(pixels, (0, 0), sigma)
    corners = occluders(size, patch, stride)
    batch = np.repeat(pixels[None], 1 + len(corners), axis=0)
    for i, (y, x) in enumerate(corners, start=1):
        batch[i, y : y + patch, x : x + patch] = blurred[y : y + patch, x : x + patch]
    return batch


def occlusion_inputs(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A decoded RGB image -> the network inputs [1 + P, 3, S, S] (the unoccluded one first), through the
    model's own preprocessing."""
    batch = occluded_batch(prepare_pixels(rgb, cfg))
    return np.stack([normalize(p, cfg.normalize) for p in batch])


def class_heatmap(
    logits: np.ndarray, size: int, temperature: float = 1.0, label: int | None = None
) -> tuple[Heatmap, int]:
    """Logits of `occlusion_inputs`' rows (network inputs of side `size`) -> (the heatmap of class
    `label`'s calibrated log-odds, the label; None: the class predicted on the unoccluded image)."""
    z = np.asarray(logits) / temperature
    label = int(np.argmax(z[0])) if label is None else label
    return heatmap(log_odds(z, label), size), label


def log_odds(logits: np.ndarray, label: int) -> np.ndarray:
    """[N, C] logits -> [N] log(p / (1 - p)) of class `label` under the softmax, computed stably."""
    z = np.asarray(logits, dtype=np.float64)
    others = np.delete(z, label, axis=1)
    top = others.max(axis=1, keepdims=True)
    return z[:, label] - (top[:, 0] + np.log(np.exp(others - top).sum(axis=1)))


def heatmap(scores: np.ndarray, size: int, patch: int = PATCH, stride: int = STRIDE) -> Heatmap:
    """Scores of `occluded_batch`'s rows (the unoccluded first) -> the heatmap. A patch whose removal
    raised the score counts as zero."""
    base, rest = float(scores[0]), np.asarray(scores[1:], dtype=np.float32)
    drops = np.maximum(base - rest, 0.0)
    total = np.zeros((size, size), np.float32)
    cover = np.zeros((size, size), np.float32)
    for drop, (y, x) in zip(drops, occluders(size, patch, stride), strict=True):
        total[y : y + patch, x : x + patch] += drop
        cover[y : y + patch, x : x + patch] += 1
    heat = cv2.GaussianBlur(total / np.maximum(cover, 1), (0, 0), stride / 2)  # soften the patch edges
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    side = int(round(len(drops) ** 0.5))
    return Heatmap(heat, drops.reshape(side, side), base, patch, stride)


def to_original(heat: np.ndarray, shape: tuple[int, int], cfg: ResizeConfig) -> np.ndarray:
    """Carry a heatmap on the [S,S] network input back onto the original HxW image (inverting `resize`:
    the padding is cut off, a centre crop's outside gets zero heat)."""
    h, w = shape
    s = cfg.size
    if cfg.mode == "stretch":
        return cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    scale = s / max(h, w) if cfg.mode == "pad" else s / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if cfg.mode == "pad":
        top, left = (s - nh) // 2, (s - nw) // 2
        region = heat[top : top + nh, left : left + nw]
        return cv2.resize(region, (w, h), interpolation=cv2.INTER_LINEAR)
    full = np.zeros((nh, nw), np.float32)
    top, left = (nh - s) // 2, (nw - s) // 2
    full[top : top + s, left : left + s] = heat
    return cv2.resize(full, (w, h), interpolation=cv2.INTER_LINEAR)


def overlay(rgb: np.ndarray, heat: np.ndarray, min_side: int = 256, alpha: float = 0.5) -> np.ndarray:
    """The image with its heatmap (same HxW) blended on top as a colour map; small images (pixel art) are
    first enlarged with nearest-neighbour so the result is at least `min_side` px."""
    h, w = rgb.shape[:2]
    factor = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if factor > 1:
        rgb = cv2.resize(rgb, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
        heat = cv2.resize(heat, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    weight = (alpha * np.clip(heat, 0, 1) ** 0.5)[..., None]  # cold regions stay close to the image
    return np.uint8(rgb * (1 - weight) + colours * weight)


def heat_share(heat: np.ndarray, mask: np.ndarray) -> float:
    """The share of the heat that lies inside `mask` (a bool array of the same shape)."""
    total = float(heat.sum())
    return float(heat[mask].sum()) / total if total > 0 else 0.0


def foreground_mask(rgb: np.ndarray, tolerance: int = 24) -> np.ndarray:
    """Pixels that differ from the image's border colour (the most common colour on its edge) by more than
    `tolerance` in any channel: the subject of a flat-background NFT."""
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    colours, counts = np.unique(edge, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return np.abs(rgb.astype(np.int16) - background).max(axis=-1) > tolerance


def explain_files(model: OnnxModel, paths: list, out: str | Path, target: str | None = None) -> list[dict]:
    """Heatmaps of image files with an `OnnxModel` (no server): `out`/<name>.png (the image beside its
    overlay) and `out`/EXPLAIN.md with, per image, the share of the heat on the subject (pixels unlike the
    border colour) against the subject's share of the area. Returns the table's rows."""
    m = model.manifest
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = None if target is None else model.labels.index(target)
    rows = []
    for path in map(Path, paths):
        rgb = read_image_file(str(path), m.preprocessing.background_rgb)
        logits = logits_of(model.run(occlusion_inputs(rgb, m.preprocessing)))
        t = m.calibration.temperature if m.calibration else 1.0
        heat, explained = class_heatmap(logits, m.input_size, t, label)
        full = to_original(heat.heat, rgb.shape[:2], m.preprocessing.resize)
        subject = foreground_mask(rgb)
        shown = overlay(rgb, full)
        side = cv2.resize(rgb, shown.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        (out / f"{path.parent.name}-{path.stem}.png").write_bytes(encode(np.hstack([side, shown]), "png"))
        rows.append(
            {
                "image": f"{path.parent.name}/{path.name}",
                "explained": model.labels[explained],
                "predicted": model.labels[int(np.argmax(logits[0]))],
                "heat on subject": round(heat_share(full, subject), 3),
                "subject area": round(float(subject.mean()), 3),
            }
        )
    lines = [
        f"# Occlusion heatmaps: {m.name}@{m.version}",
        "",
        "Made by `nftlens explain "
        + " ".join(str(p) for p in paths)
        + f" --out {out}`"
        + (f" --target {target}" if target else "")
        + ". *Heat on subject*: the share of the heatmap on pixels unlike the border colour (the subject of "
        "a flat-background NFT); *subject area*: their share of the image. Heat on subject above subject "
        "area means the decision rests on the subject more than on the background.",
        "",
        "| image | predicted | explained | heat on subject | subject area |",
        "|---|---|---|---:|---:|",
        *(
            f"| {r['image']} | {r['predicted']} | {r['explained']} | {r['heat on subject']:.3f} | "
            f"{r['subject area']:.3f} |"
            for r in rows
        ),
        "",
        *(f"![{r['image']}]({r['image'].replace('/', '-').rsplit('.', 1)[0]}.png)" for r in rows),
        "",
    ]
    (out / "EXPLAIN.md").write_text("\n".join(lines))
    return rows

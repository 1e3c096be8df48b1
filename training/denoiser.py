"""The learned denoiser: a small residual U-Net trained on training-split NFTs, exported to ONNX.

    degraded RGB [0,1] ─► conv ─► ↓2 ─► ↓2 ─► ↑2 (+skip) ─► ↑2 (+skip) ─► residual ─► + input ─► clamp

It sees each image at the resolution the service denoises it (before the resize), so pixel art trains at
its native 24/32 px (and nearest-upscaled 2-3x, as marketplaces show it) and painted thumbnails as random
crops. Batches hold one source each and a fixed pixel budget. `evaluate_denoisers` scores every denoise
method of the preprocessing contract (PSNR/SSIM against the clean image, ms per image) on test images.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from app.denoiser import DENOISER_MANIFEST, DENOISER_ONNX, Denoiser, DenoiserManifest, autoencoder_config
from app.imaging import decode_image
from app.manifest import sha256_of
from app.preprocessing import DenoiseConfig, denoise
from training.datasets.select import select_spec_rows
from training.degrade import DENOISE_CORRUPTIONS, DENOISER_TRAINING_MIX, denoiser_degradation
from training.export import OPSET, library_versions
from training.reports import markdown_table, plot_grouped_bars

TRAIN_DATA = ("data/nft-thumbs@train", "data/cryptopunks@train", "data/nouns@train")
VAL_DATA = ("data/nft-thumbs@val", "data/cryptopunks@val", "data/nouns@val")
EVAL_DOMAINS = {
    "pixel art": ("data/cryptopunks@test", "data/nouns@test"),
    "painted": ("data/nft-thumbs@test",),
}
UPSCALES = ((1, 0.6), (2, 0.25), (3, 0.15))  # pixel art (max side <= 64): nearest factor, probability
CLASSIC = ("none", "median", "gaussian", "bilateral", "nlmeans")


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class DenoiserNet(nn.Module):
    """Residual U-Net with two stride-2 downsamplings; H and W must be multiples of 4."""

    def __init__(self, base: int = 16):
        super().__init__()
        c = base
        self.enc0 = _block(3, c)
        self.enc1 = nn.Sequential(_block(c, 2 * c, 2), _block(2 * c, 2 * c))
        self.enc2 = nn.Sequential(_block(2 * c, 4 * c, 2), _block(4 * c, 4 * c))
        self.up1 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2)
        self.dec1 = _block(4 * c, 2 * c)
        self.up0 = nn.ConvTranspose2d(2 * c, c, 2, 2)
        self.dec0 = _block(2 * c, c)
        self.out = nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        d1 = self.dec1(torch.cat([self.up1(self.enc2(e1)), e1], 1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], 1))
        return torch.clamp(x + self.out(d0), 0.0, 1.0)


def load_images(specs: list[str] | tuple[str, ...], limit: int | None = None) -> dict[str, list[np.ndarray]]:
    """Decoded RGB uint8 images per `DIR@SPLIT` spec (evenly thinned to `limit`), on the white background
    the service composites transparency onto."""
    out = {}
    for spec in specs:
        paths, _ = select_spec_rows([spec], skip_missing=True)
        if not paths:
            continue
        step = max(1, len(paths) // limit) if limit else 1
        out[spec] = [decode_image(p.read_bytes(), (255, 255, 255)) for p in paths[::step][:limit]]
    return out


def _patch(rgb: np.ndarray, k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if k > 1:
        rgb = cv2.resize(rgb, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    top = int(rng.integers(rgb.shape[0] - size + 1))
    left = int(rng.integers(rgb.shape[1] - size + 1))
    return rgb[top : top + size, left : left + size]


def sample_batch(
    images: list[np.ndarray], patch: int, batch_pixels: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, clean) float32 NCHW in [0, 1] from one source: crops of min(patch, smallest side) at a
    random nearest upscale for pixel art, as many as fit in `batch_pixels`."""
    k = 1
    if max(images[0].shape[:2]) <= 64:
        k = int(rng.choice([f for f, _ in UPSCALES], p=[p for _, p in UPSCALES]))
    size = min(patch, min(min(im.shape[:2]) for im in images) * k) // 4 * 4
    n = int(np.clip(batch_pixels // (size * size), 4, 512))
    clean = [_patch(images[i], k, size, rng) for i in rng.integers(len(images), size=n)]
    noisy = [denoiser_degradation(c, rng) for c in clean]

    def stack(xs: list[np.ndarray]) -> np.ndarray:
        return np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)

    return stack(noisy), stack(clean)


def train_step(
    net: DenoiserNet, opt: torch.optim.Optimizer, noisy: np.ndarray, clean: np.ndarray, loss: str = "mse"
) -> float:
    """One step on a batch with `loss` (mse: what PSNR scores; l1); returns the loss."""
    net.train()
    fn = nn.functional.mse_loss if loss == "mse" else nn.functional.l1_loss
    value = fn(net(torch.from_numpy(noisy)), torch.from_numpy(clean))
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return value.item()


def export_onnx(net: DenoiserNet, path: Path) -> None:
    """Fully convolutional ONNX graph (dynamic batch, height, width), checked by onnx and ONNX Runtime."""
    import onnx

    net.eval()
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        net,
        (torch.rand(1, 3, 32, 32),),
        str(path),
        opset_version=OPSET,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": dims, "output": dims},
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        ref = net(x).numpy()
    got = Denoiser(path, sha256_of(path)).session.run(None, {"input": x.numpy()})[0]
    if float(np.abs(ref - got).max()) > 1e-4:
        raise RuntimeError(f"torch vs ONNX Runtime differ by {np.abs(ref - got).max():.2e}")


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on the 0-255 scale (100 dB for identical images)."""
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(clean: np.ndarray, other: np.ndarray) -> float:
    """Mean SSIM over RGB channels (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5)."""
    a, b = clean.astype(np.float64), other.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def score(
    images: list[np.ndarray],
    corruption: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    fn: Callable[[np.ndarray], np.ndarray],
    seed: int = 0,
) -> dict[str, float]:
    """PSNR of the mean squared error over the set (so one unchanged image cannot dominate a mean of
    per-image PSNRs), mean SSIM, and fn's mean ms per image, of `fn(corrupted)` against the clean images."""
    mse, s, secs = [], [], 0.0
    for i, clean in enumerate(images):
        noisy = corruption(clean, np.random.default_rng((seed, i)))
        t0 = time.perf_counter()
        out = fn(noisy)
        secs += time.perf_counter() - t0
        mse.append(np.mean((clean.astype(np.float64) - out.astype(np.float64)) ** 2))
        s.append(ssim(clean, out))
    return {"psnr": psnr(float(np.mean(mse))), "ssim": float(np.mean(s)), "ms": 1000 * secs / len(images)}


def train_denoiser(
    out: Path,
    data: list[str] | tuple[str, ...] = TRAIN_DATA,
    val_data: list[str] | tuple[str, ...] = VAL_DATA,
    steps: int = 3000,
    base: int = 24,
    patch: int = 96,
    batch_pixels: int = 16 * 96 * 96,
    lr: float = 2e-3,
    loss: str = "mse",
    threads: int = 2,
    seed: int = 0,
    val_images: int = 100,
    command: str | None = None,
) -> DenoiserManifest:
    """Train on `data` (never test images), export `out/denoiser.onnx` and write `out/denoiser.json`."""
    if any(s.endswith("@test") for s in data):
        raise ValueError("the denoiser never trains on test images")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    sources = load_images(data)
    if not sources:
        raise ValueError(f"no training images in {data}")
    names = list(sources)
    net = DenoiserNet(base)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    t0, bar, ema = time.perf_counter(), tqdm(range(steps), desc="train-denoiser"), None
    for _ in bar:
        noisy, clean = sample_batch(sources[names[rng.integers(len(names))]], patch, batch_pixels, rng)
        value = train_step(net, opt, noisy, clean, loss)
        sched.step()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        bar.set_postfix(loss=f"{ema:.5f}")
    train_seconds = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / DENOISER_ONNX
    export_onnx(net, onnx_path)
    served = Denoiser(onnx_path, sha256_of(onnx_path))
    val: dict[str, dict] = {}
    for spec, images in load_images(val_data, val_images).items():
        val[spec] = {
            name: {
                "none_psnr": score(images, fn, lambda x: x)["psnr"],
                "autoencoder_psnr": score(images, fn, served)["psnr"],
            }
            for name, fn in DENOISE_CORRUPTIONS.items()
        }
    manifest = DenoiserManifest(
        sha256=sha256_of(onnx_path),
        degradations={name: {"weight": w, "range": list(r)} for name, w, r in DENOISER_TRAINING_MIX}
        | {"pixel_art_nearest_upscale": dict(UPSCALES)},
        training={
            "data": list(data),
            "steps": steps,
            "base_channels": base,
            "parameters": sum(p.numel() for p in net.parameters()),
            "patch": patch,
            "batch_pixels": batch_pixels,
            "lr": lr,
            "loss": loss,
            "seed": seed,
            "threads": threads,
            "seconds": round(train_seconds, 1),
            "final_loss_ema": ema,
            "opset": OPSET,
        },
        val={"data": list(val_data), "images_per_source": val_images, "psnr": val},
        command=command or shlex.join(["nftlens", *sys.argv[1:]]),
        library_versions=library_versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (out / DENOISER_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def evaluate_denoisers(
    denoiser_dir: Path | None,
    out: Path,
    per_domain: int = 300,
    command: str | None = None,
) -> dict:
    """PSNR/SSIM against clean test images and ms per image for every denoise method (OpenCV defaults of
    `DenoiseConfig`) under each `DENOISE_CORRUPTIONS` entry, per domain; writes DENOISE.md/json/png."""
    methods = {m: DenoiseConfig(method=m) for m in CLASSIC}
    if denoiser_dir is not None and (Path(denoiser_dir) / DENOISER_MANIFEST).is_file():
        methods["autoencoder"] = autoencoder_config(Path(denoiser_dir))
    result: dict = {
        "per_domain": per_domain,
        "domains": {d: list(s) for d, s in EVAL_DOMAINS.items()},
        "threads": {"opencv": cv2.getNumThreads(), "autoencoder_ort_intra_op": 1},
        "scores": {},
        "cost_96px_ms": {},
    }
    for domain, specs in EVAL_DOMAINS.items():
        loaded = load_images(list(specs), per_domain // len(specs))
        images = [im for ims in loaded.values() for im in ims]
        result["scores"][domain] = {
            name: {m: score(images, fn, lambda x, c=cfg: denoise(x, c)) for m, cfg in methods.items()}
            for name, fn in tqdm(DENOISE_CORRUPTIONS.items(), desc=f"denoise-eval {domain}")
        }
        result["scores"][domain]["_n"] = len(images)
    probe = load_images(["data/nft-thumbs@test"], 20)["data/nft-thumbs@test"]
    probe = [
        cv2.resize(DENOISE_CORRUPTIONS["gauss_sigma25"](im, np.random.default_rng(i)), (96, 96))
        for i, im in enumerate(probe)
    ]
    for m, cfg in methods.items():
        denoise(probe[0], cfg)  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            for im in probe:
                denoise(im, cfg)
        result["cost_96px_ms"][m] = 1000 * (time.perf_counter() - t0) / (5 * len(probe))
    if "autoencoder" in methods:
        result["denoiser"] = {"dir": str(denoiser_dir), "sha256": methods["autoencoder"].model_sha256}
    result["command"] = command or shlex.join(["nftlens", *sys.argv[1:]])
    out.mkdir(parents=True, exist_ok=True)
    (out / "denoise.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "DENOISE.md").write_text(render_denoise_markdown(result))
    for domain, table in result["scores"].items():
        plot_grouped_bars(
            {m: {c: v[m]["ssim"] for c, v in table.items() if c != "_n"} for m in methods},
            out / f"ssim_{domain.replace(' ', '_')}.png",
            f"{domain}: SSIM against the clean test image",
            "SSIM",
        )
    return result


def render_denoise_markdown(r: dict) -> str:
    """DENOISE.md: one PSNR/SSIM/ms table per domain and the cost at the classifier's input size."""
    lines = [
        "# Denoise methods on test images",
        "",
        f"Command: `{r['command']}`. Each cell: PSNR (dB, of the mean squared error over the images; 100 "
        "= unchanged) / mean SSIM of the method's output against the clean image; ms/image at native "
        "resolution (24/32 px pixel art, 128 px thumbnails) on this machine's 2 CPU cores, the "
        "autoencoder in ONNX Runtime with 1 intra-op thread. Classic methods use `DenoiseConfig` defaults"
        + (
            f"; autoencoder `{r['denoiser']['dir']}` (sha256 {r['denoiser']['sha256'][:12]}…)."
            if "denoiser" in r
            else "."
        ),
    ]
    for domain, table in r["scores"].items():
        corruptions = [c for c in table if c != "_n"]
        methods = list(table[corruptions[0]])
        lines += ["", f"## {domain} ({', '.join(r['domains'][domain])}; {table['_n']} images)", ""]
        rows = [
            {
                "method": m,
                **{c: f"{table[c][m]['psnr']:.2f} / {table[c][m]['ssim']:.3f}" for c in corruptions},
                "ms/image": round(float(np.mean([table[c][m]["ms"] for c in corruptions])), 3),
            }
            for m in methods
        ]
        lines.append(markdown_table(rows, ["method", *corruptions, "ms/image"]))
    lines += [
        "",
        "## Cost at the classifier's input size (96x96, Gaussian-noised thumbnails)",
        "",
        markdown_table(
            [{"method": m, "ms/image": round(v, 3)} for m, v in r["cost_96px_ms"].items()],
            ["method", "ms/image"],
        ),
        "",
        *[f"![{d}](ssim_{d.replace(' ', '_')}.png)" for d in r["scores"]],
    ]
    return "\n".join(lines) + "\n"

"""The preprocessing contract: compression, denoising, resizing, normalisation, serialisation."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from app.preprocessing import (
    CompressionConfig,
    DenoiseConfig,
    PreprocessConfig,
    ResizeConfig,
    compress,
    denoise,
    encode,
    preprocess,
    preprocess_batch,
    resize,
)

# IJG (libjpeg) base luminance table; the encoder scales it by quality.
_IJG_LUMA = [
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
]


def _ijg_table(quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (v * scale + 50) // 100)) for v in _IJG_LUMA]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _real_images(punks, nouns) -> list[np.ndarray]:
    """A real punk and a real noun, upscaled 4x nearest (as a marketplace shows them)."""
    out = []
    for ds, idx in ((punks, 7804), (nouns, 3)):
        img = np.asarray(Image.open(ds.image_path(ds.rows[idx])).convert("RGB"))
        out.append(cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST))
    return out


@pytest.mark.parametrize("method", ["median", "gaussian", "bilateral", "nlmeans"])
def test_each_denoise_method_raises_psnr_on_noisy_real_nfts(punks, nouns, method):
    cfg = DenoiseConfig(method=method)  # the defaults a user gets
    rng = np.random.default_rng(0)
    for clean in _real_images(punks, nouns):
        noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
        before, after = psnr(clean, noisy), psnr(clean, denoise(noisy, cfg))
        # Gaussian blur gains least on hard-edged pixel art (~0.5 dB on the alien punk); all must gain.
        assert after > before + 0.3, f"{method}: PSNR {before:.2f} -> {after:.2f} dB"


def test_denoise_none_is_identity():
    x = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert denoise(x, DenoiseConfig()) is x


@pytest.mark.parametrize("quality", [10, 30, 75])
def test_jpeg_compression_reencodes_at_the_set_quality(quality):
    rng = np.random.default_rng(2)
    img = cv2.resize(
        rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_LINEAR
    )
    data = encode(img, "jpeg", quality)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert sorted(im.quantization[0]) == sorted(_ijg_table(quality))
    out = compress(img, CompressionConfig(format="jpeg", quality=quality))
    assert out.shape == img.shape and not np.array_equal(out, img)


def test_lower_quality_loses_more_and_webp_and_downscale_work():
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (5, 5), 0)
    q10 = compress(img, CompressionConfig(format="jpeg", quality=10))
    q90 = compress(img, CompressionConfig(format="jpeg", quality=90))
    assert psnr(img, q10) < psnr(img, q90)
    webp = compress(img, CompressionConfig(format="webp", quality=20))
    with Image.open(io.BytesIO(encode(img, "webp", 20))) as im:
        assert im.format == "WEBP"
    assert webp.shape == img.shape
    small = compress(img, CompressionConfig(format="none", max_side=64))
    assert small.shape == (48, 64, 3)


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_resize_modes(mode):
    img = np.zeros((24, 48, 3), np.uint8)
    img[:, :24] = 255
    out = resize(img, ResizeConfig(size=32, mode=mode), background=(1, 2, 3))
    assert out.shape == (32, 32, 3)
    if mode == "pad":
        assert tuple(out[0, 0]) == (1, 2, 3) and tuple(out[16, 0]) == (255, 255, 255)


def test_auto_interpolation_keeps_pixel_art_crisp(punks):
    punk = np.asarray(Image.open(punks.image_path(punks.rows[0])).convert("RGB"))
    big = resize(punk, ResizeConfig(size=96, mode="stretch"))
    # nearest-neighbour 4x upscaling introduces no new colours
    assert {tuple(c) for c in big.reshape(-1, 3)} <= {tuple(c) for c in punk.reshape(-1, 3)}


def test_normalised_output_and_batch_match_single():
    cfg = PreprocessConfig(resize=ResizeConfig(size=40))
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 255, (h, 30, 3), dtype=np.uint8) for h in (20, 40, 55)]
    batch = preprocess_batch(imgs, cfg)
    assert batch.shape == (3, 3, 40, 40) and batch.dtype == np.float32
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(img, cfg))
    white = preprocess(np.full((8, 8, 3), 255, np.uint8), cfg)
    np.testing.assert_allclose(
        white[:, 0, 0],
        [(1 - m) / s for m, s in zip(cfg.normalize.mean, cfg.normalize.std, strict=True)],
        rtol=1e-6,
    )


def test_config_roundtrips_through_json_and_rejects_unknown_keys():
    cfg = PreprocessConfig(
        compression=CompressionConfig(format="jpeg", quality=40, max_side=256),
        denoise=DenoiseConfig(method="bilateral", diameter=7),
        alpha_background="#638596",
    )
    assert PreprocessConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError):
        PreprocessConfig.model_validate({"resize": {"size": 64, "colour": "red"}})

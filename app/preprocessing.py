"""The preprocessing contract shared by training and serving.

    RGB uint8 ─► compress (re-encode, optional downscale) ─► denoise ─► resize ─► normalise ─► float32 CHW

`PreprocessConfig` is serialised into every model manifest, and both the training data loader and the
service call `preprocess` / `preprocess_batch` with it, so a model and its input pipeline cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.denoiser import denoiser_for
from app.imaging import DEFAULT_MAX_PIXELS, decode_image, parse_hex_color

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompressionConfig(_Strict):
    """Re-encode the image as the research pipeline does, before denoising."""

    format: Literal["none", "jpeg", "webp"] = Field("none", description="codec to re-encode with; none skips")
    quality: int = Field(90, ge=1, le=100, description="encoder quality, 1 (worst) to 100")
    max_side: int | None = Field(None, ge=8, description="downscale so the longer side is at most this")


class DenoiseConfig(_Strict):
    """Noise removal: an OpenCV filter, or the learned `autoencoder` (ONNX Runtime, `app.denoiser`).
    Only the parameters of the chosen method are used."""

    method: Literal["none", "median", "gaussian", "bilateral", "nlmeans", "autoencoder"] = "none"
    ksize: int = Field(3, ge=1, description="median/gaussian kernel size (odd)")
    sigma: float = Field(0.0, ge=0, description="gaussian sigma; 0 derives it from ksize")
    diameter: int = Field(7, ge=1, description="bilateral neighbourhood diameter")
    sigma_color: float = Field(75.0, gt=0, description="bilateral colour sigma")
    sigma_space: float = Field(75.0, gt=0, description="bilateral space sigma")
    h: float = Field(10.0, gt=0, description="non-local means filter strength (luma and colour)")
    template_window: int = Field(7, ge=3, description="non-local means template window (odd)")
    search_window: int = Field(21, ge=3, description="non-local means search window (odd)")
    model_file: str | None = Field(
        None, description="autoencoder: its ONNX file, relative to the model folder whose manifest names it"
    )
    model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="autoencoder: sha256 of `model_file` (checked at load)"
    )

    @model_validator(mode="after")
    def _autoencoder_named(self) -> DenoiseConfig:
        if self.method == "autoencoder" and not (self.model_file and self.model_sha256):
            raise ValueError("denoise method autoencoder needs model_file and model_sha256")
        return self


class ResizeConfig(_Strict):
    size: int = Field(128, ge=8, le=1024, description="square side fed to the network")
    mode: Literal["pad", "crop", "stretch"] = Field(
        "pad", description="keep aspect and pad, centre-crop, or stretch"
    )
    interpolation: Literal["auto", "nearest", "linear", "area", "cubic", "lanczos"] = Field(
        "auto", description="auto: nearest when upscaling >= 2x (pixel art), area when shrinking, else linear"
    )


class NormalizeConfig(_Strict):
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class PreprocessConfig(_Strict):
    """Everything between decoded pixels and the network input. Travels in the model manifest."""

    compression: CompressionConfig = CompressionConfig()
    denoise: DenoiseConfig = DenoiseConfig()
    resize: ResizeConfig = ResizeConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    alpha_background: str = Field(
        "#FFFFFF", pattern=r"^#?[0-9a-fA-F]{6}$", description="colour transparent pixels are composited onto"
    )

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return parse_hex_color(self.alpha_background)


def _odd(n: int) -> int:
    return n if n % 2 == 1 else n + 1


def _to_bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode(rgb: np.ndarray, codec: Literal["jpeg", "webp", "png"], quality: int = 90) -> bytes:
    """Encode RGB uint8 to JPEG/WebP/PNG bytes with OpenCV (libjpeg-turbo / libwebp)."""
    if codec == "jpeg":
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif codec == "webp":
        ext, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    else:
        ext, params = ".png", []
    ok, buf = cv2.imencode(ext, _to_bgr(rgb), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return buf.tobytes()


def reencode(rgb: np.ndarray, codec: Literal["jpeg", "webp"], quality: int) -> np.ndarray:
    """Round-trip through a lossy codec: the artefacts are the point."""
    buf = np.frombuffer(encode(rgb, codec, quality), dtype=np.uint8)
    return _to_rgb(cv2.imdecode(buf, cv2.IMREAD_COLOR))


def downscale_max_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def compress(rgb: np.ndarray, cfg: CompressionConfig) -> np.ndarray:
    """Optional downscale, then a lossy re-encode at the configured quality."""
    if cfg.max_side is not None:
        rgb = downscale_max_side(rgb, cfg.max_side)
    if cfg.format == "none":
        return rgb
    return reencode(rgb, cfg.format, cfg.quality)


def denoise(rgb: np.ndarray, cfg: DenoiseConfig) -> np.ndarray:
    """Apply the configured noise removal; `autoencoder` runs the registered denoiser of that sha256."""
    if cfg.method == "none":
        return rgb
    if cfg.method == "autoencoder":
        return denoiser_for(cfg.model_sha256)(rgb)
    if cfg.method == "median":
        return cv2.medianBlur(rgb, _odd(cfg.ksize))
    if cfg.method == "gaussian":
        k = _odd(cfg.ksize)
        return cv2.GaussianBlur(rgb, (k, k), cfg.sigma)
    if cfg.method == "bilateral":
        return cv2.bilateralFilter(rgb, cfg.diameter, cfg.sigma_color, cfg.sigma_space)
    return cv2.fastNlMeansDenoisingColored(
        rgb, None, cfg.h, cfg.h, _odd(cfg.template_window), _odd(cfg.search_window)
    )


def _interpolation(name: str, scale: float) -> int:
    if name != "auto":
        return _INTERPOLATION[name]
    if scale >= 2.0:
        return cv2.INTER_NEAREST
    if scale < 1.0:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def resize(
    rgb: np.ndarray, cfg: ResizeConfig, background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Resize to `cfg.size` square by padding, centre-cropping or stretching."""
    s = cfg.size
    h, w = rgb.shape[:2]
    if cfg.mode == "stretch":
        if (h, w) == (s, s):
            return rgb
        return cv2.resize(rgb, (s, s), interpolation=_interpolation(cfg.interpolation, s / max(h, w)))
    scale = s / max(h, w) if cfg.mode == "pad" else s / min(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = (
        rgb
        if (nh, nw) == (h, w)
        else cv2.resize(rgb, (nw, nh), interpolation=_interpolation(cfg.interpolation, scale))
    )
    if cfg.mode == "crop":
        top, left = (nh - s) // 2, (nw - s) // 2
        return scaled[top : top + s, left : left + s]
    if (nh, nw) == (s, s):
        return scaled
    canvas = np.empty((s, s, 3), dtype=np.uint8)
    canvas[:] = background
    top, left = (s - nh) // 2, (s - nw) // 2
    canvas[top : top + nh, left : left + nw] = scaled
    return canvas


def normalize(rgb: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (x/255 - mean) / std."""
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(cfg.mean, dtype=np.float32)
    x /= np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare_pixels(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The uint8 part of the pipeline (compress, denoise, resize): HxWx3 -> SxSx3."""
    rgb = compress(rgb, cfg.compression)
    rgb = denoise(rgb, cfg.denoise)
    return resize(rgb, cfg.resize, cfg.background_rgb)


def preprocess(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """One decoded RGB uint8 image -> the network's float32 [3, S, S] input."""
    return normalize(prepare_pixels(rgb, cfg), cfg.normalize)


InputFormat = Literal["float32_nchw", "uint8_nhwc"]


def model_input(rgb: np.ndarray, cfg: PreprocessConfig, fmt: InputFormat) -> np.ndarray:
    """One decoded image -> what a graph of input format `fmt` takes: the float32 [3,S,S] of `preprocess`,
    or for uint8_nhwc its pixels before normalising, [S,S,3] uint8 (the graph normalises them)."""
    return prepare_pixels(rgb, cfg) if fmt == "uint8_nhwc" else preprocess(rgb, cfg)


def to_pixels(x: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    """Normalised float32 [...,3,S,S] -> the uint8 [...,S,S,3] pixels it was made from (`normalize`
    undone, rounded): exact for tensors made from images; a view that was blurred in float space loses
    less than half a grey level."""
    mean = np.asarray(cfg.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.std, np.float32)[:, None, None]
    px = np.rint((x * std + mean) * np.float32(255.0))
    return np.ascontiguousarray(np.moveaxis(np.clip(px, 0, 255).astype(np.uint8), -3, -1))


def preprocess_batch(images: Sequence[np.ndarray], cfg: PreprocessConfig) -> np.ndarray:
    """Several decoded images -> float32 [N, 3, S, S]."""
    s = cfg.resize.size
    out = np.empty((len(images), 3, s, s), dtype=np.float32)
    for i, rgb in enumerate(images):
        out[i] = preprocess(rgb, cfg)
    return out


def decode_and_preprocess(
    data: bytes,
    cfg: PreprocessConfig,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timings: dict[str, float] | None = None,
    fmt: InputFormat = "float32_nchw",
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes -> (decoded RGB uint8, network input in format `fmt`: [3, S, S] float32 by default); see
    `load_tensor`."""
    t0 = time.perf_counter()
    rgb = decode_image(data, cfg.background_rgb, max_pixels)
    t1 = time.perf_counter()
    tensor = model_input(rgb, cfg, fmt)
    if timings is not None:
        timings["decode"] = timings.get("decode", 0.0) + (t1 - t0) * 1000
        timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - t1) * 1000
    return rgb, tensor


def load_tensor(
    data: bytes,
    cfg: PreprocessConfig,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """Bytes -> network input [3, S, S]: decode with the config's background, then `preprocess`.

    The training data loader and the service both go through this one function. When `timings` is
    given, the decode and preprocess milliseconds are added to it.
    """
    return decode_and_preprocess(data, cfg, max_pixels, timings)[1]

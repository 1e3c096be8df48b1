"""Training and serving compute byte-identical network inputs for the same file."""

from __future__ import annotations

import numpy as np
import pytest

from app.preprocessing import CompressionConfig, DenoiseConfig, PreprocessConfig, ResizeConfig, load_tensor

torch = pytest.importorskip("torch", reason="the training loader needs the [train] extra")


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(resize=ResizeConfig(size=64)),
        PreprocessConfig(
            compression=CompressionConfig(format="jpeg", quality=30),
            denoise=DenoiseConfig(method="bilateral"),
            alpha_background="#638596",
        ),
    ],
    ids=["plain", "jpeg30+bilateral"],
)
def test_training_loader_equals_service_path(punks, nouns, cfg):
    from training.loader import ImageDataset

    rows = [punks.rows[7804], punks.rows[1], nouns.rows[0]]
    paths = [punks.image_path(rows[0]), punks.image_path(rows[1]), nouns.image_path(rows[2])]
    ds = ImageDataset(paths, [0, 1, 2], cfg)
    for i, path in enumerate(paths):
        from_loader = ds[i][0].numpy()
        from_service = load_tensor(path.read_bytes(), cfg)  # what app.inference feeds ONNX Runtime
        assert from_loader.dtype == from_service.dtype == np.float32
        assert from_loader.tobytes() == from_service.tobytes()

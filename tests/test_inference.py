"""The session wrapper: provider options, batch buckets and settings, on a real ORT session (CPU here;
the GPU path runs where a GPU is lent)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.inference import GpuOptions, OnnxModel, bucket_for, buckets, provider_options
from app.preprocessing import load_tensor


def test_buckets_are_powers_of_two_up_to_max_batch():
    assert buckets(16) == [1, 2, 4, 8, 16] and buckets(12) == [1, 2, 4, 8, 12] and buckets(1) == [1]
    assert [bucket_for(n, buckets(12)) for n in (1, 3, 5, 9, 12, 20)] == [1, 4, 8, 12, 12, 20]


def test_gpu_provider_options(tmp_path):
    gpu = GpuOptions(device_id=1, cudnn_conv_algo_search="HEURISTIC", trt_engine_cache=str(tmp_path / "trt"))
    assert provider_options("CUDAExecutionProvider", gpu)["cudnn_conv_algo_search"] == "HEURISTIC"
    trt = provider_options("TensorrtExecutionProvider", gpu)
    assert trt["device_id"] == "1" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert "trt_engine_cache_enable" not in provider_options("TensorrtExecutionProvider", GpuOptions())
    assert provider_options("CPUExecutionProvider", gpu) == {}


def test_padded_bucket_gives_the_same_rows_as_the_exact_batch(model_dir, punks):
    plain = OnnxModel(model_dir, ["CPUExecutionProvider"])
    padded = OnnxModel(model_dir, ["CPUExecutionProvider"], gpu=GpuOptions(max_batch=8), bucketed=True)
    assert plain.buckets == [] and padded.buckets == [1, 2, 4, 8]
    cfg = plain.manifest.preprocessing
    x = np.stack([load_tensor(punks.image_path(r).read_bytes(), cfg) for r in punks.rows[:5]])  # bucket 8
    a, b = plain.run(x), padded.run(x)
    for name in a:
        assert b[name].shape == a[name].shape
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5)


def test_gpu_settings_are_validated():
    with pytest.raises(ValidationError):
        Settings(gpu_cudnn_algo_search="FASTEST")
    with pytest.raises(ValidationError):
        Settings(gpu_device_id=-1)
    with pytest.raises(ValidationError):
        Settings(workers=-1)
    assert Settings(trt_engine_cache="/tmp/trt").trt_fp16 is True

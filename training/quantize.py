"""Static int8 quantisation of an exported model, calibrated on real training images.

The result is a model folder of its own (model.onnx + model.json), because every calibrated number the
service applies (temperature, unknown detector, copy thresholds) belongs to one set of weights:
`nftlens calibrate` and `nftlens evaluate` then run on it exactly as on the fp32 model, and
`NFTLENS_MODEL_DIR` chooses which one is served.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.manifest import load_manifest, sha256_of
from app.openset import NETWORK_EMBEDDING
from app.preprocessing import InputFormat, decode_and_preprocess
from training.stagestats import is_stage_output, strip_stage_statistics
from training.uint8input import PREFIX
from training.whiten import is_whitened, strip_whitening


class ImageReader:
    """onnxruntime CalibrationDataReader over preprocessed real images, in batches."""

    def __init__(
        self, input_name: str, paths: list[Path], cfg, batch: int = 32, fmt: InputFormat = "float32_nchw"
    ):
        self.input_name, self.paths, self.cfg, self.batch = input_name, paths, cfg, batch
        self.fmt = fmt  # the graph's input format: a uint8_nhwc graph takes the pixels
        self._bar = tqdm(total=len(paths), desc="calibrate int8", unit="img")
        self._start = 0

    def get_next(self) -> dict | None:
        if self._start >= len(self.paths):
            self._bar.close()
            return None
        chunk = self.paths[self._start : self._start + self.batch]
        self._start += len(chunk)
        self._bar.update(len(chunk))
        x = np.stack([decode_and_preprocess(p.read_bytes(), self.cfg, fmt=self.fmt)[1] for p in chunk])
        return {self.input_name: x}

    def rewind(self) -> None:
        self._start = 0


def quantize_model(model_dir: Path, out: Path, images: list[Path], per_channel: bool = True) -> Path:
    """Write OUT/model.onnx (QDQ int8: weights per channel, activations from `images`) + model.json."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = load_manifest(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre, source = Path(tmp) / "pre.onnx", model_dir / m.onnx_file
        if any(is_stage_output(o) for o in m.outputs):  # quantise the network; `stage-stats` adds them after
            strip_stage_statistics(source, Path(tmp) / "network.onnx")
            source = Path(tmp) / "network.onnx"
        if is_whitened(source):  # ... and `whiten` fits the int8 embedding's own
            strip_whitening(source, Path(tmp) / "unwhitened.onnx")
            source = Path(tmp) / "unwhitened.onnx"
        quant_pre_process(str(source), str(pre))
        prefix = [n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(PREFIX)]
        if m.input_format == "uint8_nhwc" and len(prefix) != 4:
            raise RuntimeError(f"expected the 4 {PREFIX}* nodes after pre-processing, found {prefix}")
        quantize_static(
            str(pre),
            str(out / m.onnx_file),
            ImageReader(m.input_name, images, m.preprocessing, fmt=m.input_format),
            nodes_to_exclude=prefix,  # the uint8 input's normalising stays float
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    manifest = m.model_copy(
        update={
            "name": f"{m.name}-int8",
            "outputs": [o for o in m.outputs if not is_stage_output(o) and o != NETWORK_EMBEDDING],
            "sha256": sha256_of(out / m.onnx_file),
            "vectors_sha256": None,  # new weights, new vectors
            "unknown": None,
            "calibration": None,
            "copies": None,
            "metrics": {},
            "robustness": {},
            "training": {
                **{k: v for k, v in m.training.items() if k != "embedding_whitening"},
                "quantized_from": {"model": f"{m.name}@{m.version}", "sha256": m.sha256},
                "quantization": {
                    "format": "QDQ",
                    "weights": "int8, per channel" if per_channel else "int8, per tensor",
                    "activations": "uint8, MinMax on real training images",
                    "calibration_images": len(images),
                },
            },
        }
    )
    manifest.write(out)  # calibrations are cleared: `nftlens calibrate` fits them on this model
    return out

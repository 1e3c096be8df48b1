"""ONNX Runtime session wrapper: execution providers, their options and the GPU data path live here and
nowhere else.

On CUDA / TensorRT the session runs through IO binding: outputs go to device buffers preallocated per
batch bucket and are copied back once, and a batch is padded up to its bucket (1, 2, 4, … max_batch) so
TensorRT engines and cuDNN algorithm choices are built once per bucket and reused. On CPU none of that
pays, so batches run as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.manifest import ModelManifest, load_manifest
from app.preprocessing import to_pixels

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: list[str] | None = None, require_gpu: bool = False) -> list[str]:
    """Requested providers (default CUDA → CPU) that this onnxruntime build offers, CPU always last.

    Missing ones are dropped with a logged warning; `require_gpu` raises instead of falling back to CPU.
    """
    available = ort.get_available_providers()
    wanted = list(requested or DEFAULT_PROVIDERS)
    chosen = [p for p in wanted if p in available]
    explicit = requested is not None and list(requested) != list(DEFAULT_PROVIDERS)
    for p in wanted:
        if p not in available:  # expected on CPU-only builds unless the user asked for it by name
            log.log(
                logging.WARNING if explicit else logging.INFO,
                "execution provider %s is not available in this onnxruntime build (%s)",
                p,
                available,
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if require_gpu and not any(p in GPU_PROVIDERS for p in chosen):
        raise ModelIntegrityError(f"require_gpu is set but no GPU provider is available (have {available})")
    return chosen


@dataclass(frozen=True)
class GpuOptions:
    """How the GPU providers are configured (NFTLENS_GPU_* settings)."""

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # EXHAUSTIVE | HEURISTIC | DEFAULT
    trt_fp16: bool = True
    trt_engine_cache: str = ""  # folder for TensorRT engines ("" = rebuild at every start)
    max_batch: int = 16


def provider_options(name: str, gpu: GpuOptions) -> dict[str, str]:
    """The ONNX Runtime options of one provider (empty for CPU)."""
    if name == "CUDAExecutionProvider":
        return {
            "device_id": str(gpu.device_id),
            "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search,
            "do_copy_in_default_stream": "1",
        }
    if name == "TensorrtExecutionProvider":
        opts = {"device_id": str(gpu.device_id), "trt_fp16_enable": str(gpu.trt_fp16)}
        if gpu.trt_engine_cache:
            Path(gpu.trt_engine_cache).mkdir(parents=True, exist_ok=True)
            opts |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": gpu.trt_engine_cache}
        return opts
    return {}


def buckets(max_batch: int) -> list[int]:
    """Batch sizes a GPU session is run at: powers of two up to max_batch, and max_batch itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return [*out, max_batch]


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest bucket holding n images (n itself when over the largest)."""
    return next((b for b in sizes if b >= n), n)


Outputs = dict[str, np.ndarray]  # ONNX output name -> [N, ...] array


def logits_of(out: Outputs) -> np.ndarray:
    """The logits output, or log-probabilities for models exported before it existed."""
    return out["logits"] if "logits" in out else np.log(np.maximum(out["probabilities"], 1e-12))


class OnnxModel:
    """A verified model: manifest + InferenceSession. `run` takes preprocessed [N,3,S,S] float32 and
    returns every output the manifest lists (probabilities, embedding, and logits/instance when present)."""

    def __init__(
        self,
        model_dir: str | Path,
        providers: list[str] | None = None,
        require_gpu: bool = False,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        gpu: GpuOptions | None = None,
        bucketed: bool | None = None,
        spinning: bool = True,
    ):
        self.model_dir = Path(model_dir)
        self.gpu = gpu or GpuOptions()
        self.manifest: ModelManifest = load_manifest(self.model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spinning:  # idle intra-op threads sleep instead of spinning on cores others need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = choose_providers(providers, require_gpu)
        self.session = ort.InferenceSession(
            str(self.model_dir / self.manifest.onnx_file),
            sess_options=options,
            providers=[(p, provider_options(p, self.gpu)) for p in chosen],
        )
        active = self.session.get_providers()
        self.provider: str = active[0]
        if require_gpu and self.provider not in GPU_PROVIDERS:
            raise ModelIntegrityError(f"require_gpu is set but the session runs on {self.provider}")
        if chosen[0] != self.provider:
            log.warning("asked for %s first, but ONNX Runtime runs on %s", chosen[0], self.provider)
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [o for o in self.manifest.outputs if o not in graph_outputs]
        if missing:
            raise ModelIntegrityError(f"the manifest lists outputs {missing} that model.onnx lacks")
        log.info("model %s %s on %s", self.manifest.name, self.manifest.version, self.provider)
        self.on_gpu = self.provider in GPU_PROVIDERS
        self.buckets = buckets(self.gpu.max_batch) if (self.on_gpu if bucketed is None else bucketed) else []
        self._bindings: dict[int, tuple] = {}  # bucket -> (io binding, output OrtValues)

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def native(self, x: np.ndarray) -> np.ndarray:
        """One input or a batch in the graph's own format: float32 [..,3,S,S] tensors become uint8
        [..,S,S,3] pixels for a uint8_nhwc graph; anything already native passes through."""
        if self.manifest.input_format == "float32_nchw":
            return x.astype(np.float32, copy=False)
        return x if x.dtype == np.uint8 else to_pixels(x, self.manifest.preprocessing.normalize)

    def run(self, batch: np.ndarray) -> Outputs:
        """[N,3,S,S] float32 tensors (or the graph's native input, see `native`) -> {output name: [N, ...]}
        for every output in the manifest."""
        names = self.manifest.outputs
        batch = self.native(batch)
        n = len(batch)
        size = bucket_for(n, self.buckets) if self.buckets else n
        if size != n:  # pad to the bucket: one engine / algorithm choice per bucket, reused
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        if self.on_gpu:
            out = self._run_bound(np.ascontiguousarray(batch))
        else:
            out = self.session.run(names, {self.manifest.input_name: batch})
        return {name: o[:n] for name, o in zip(names, out, strict=True)}

    def _run_bound(self, batch: np.ndarray) -> list[np.ndarray]:
        """IO binding: the input is copied to the device once, outputs land in buffers preallocated for
        this batch size and come back in one copy each."""
        size = len(batch)
        if size not in self._bindings:
            binding = self.session.io_binding()
            dims = {o.name: o.shape for o in self.session.get_outputs()}
            values = []
            for name in self.manifest.outputs:
                shape = [size, *[d if isinstance(d, int) else 1 for d in dims[name][1:]]]
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, np.float32, "cuda", self.gpu.device_id
                )
                binding.bind_ortvalue_output(name, value)
                values.append(value)
            self._bindings[size] = (binding, values)
        binding, values = self._bindings[size]
        binding.bind_cpu_input(self.manifest.input_name, batch)
        self.session.run_with_iobinding(binding)
        return [v.numpy() for v in values]

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run zeros once per batch size (every bucket on a GPU: engines and algorithms get built now)."""
        s = self.manifest.input_size
        for n in self.buckets or batch_sizes:
            self.run(np.zeros((n, 3, s, s), dtype=np.float32))

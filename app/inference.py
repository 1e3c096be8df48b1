"""ONNX Runtime session wrapper: execution providers are chosen here and nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.manifest import ModelManifest, load_manifest

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
    ):
        self.model_dir = Path(model_dir)
        self.manifest: ModelManifest = load_manifest(self.model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        chosen = choose_providers(providers, require_gpu)
        self.session = ort.InferenceSession(
            str(self.model_dir / self.manifest.onnx_file), sess_options=options, providers=chosen
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

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    def run(self, batch: np.ndarray) -> Outputs:
        """[N,3,S,S] float32 -> {output name: [N, ...]} for every output in the manifest."""
        names = self.manifest.outputs
        return dict(zip(names, self.session.run(names, {self.manifest.input_name: batch}), strict=True))

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        s = self.manifest.input_size
        for n in batch_sizes:
            self.run(np.zeros((n, 3, s, s), dtype=np.float32))

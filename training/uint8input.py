"""Give an exported model the uint8 input contract: pixels in, normalising inside the graph.

`nftlens uint8-input MODEL_DIR` rewrites MODEL_DIR/model.onnx so that it takes the resized pixels,
uint8 [N,S,S,3], and prepends Cast -> Transpose -> Mul -> Add, which compute exactly what
`app.preprocessing.normalize` computes in numpy, ((x / 255) - mean) / std, with the manifest's mean and
std. The service then skips a numpy pass over every request's image and sends 4x fewer bytes to the
device. Every output is unchanged up to float rounding (`tests/test_parity.py`), so
the manifest's calibrations and figures carry over; the manifest records the rewrite and the new sha256.

The scale and shift constants are stored tiled to the whole image, [1,3,S,S], not [1,3,1,1]. The values
and every output are identical, but in a quantised graph ONNX Runtime moves Mul and Add to NHWC, where a
per-channel [3] broadcast runs element by element: 11 % of the int8 model's kernel time at batch 4,
against 2 % tiled (reports/bench/PROFILE.md). Run on a model that already takes pixels, the command only tiles its
constants (bit-identical outputs, so the catalog key stays).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.manifest import ModelManifest, load_manifest, sha256_of

PIXELS = "pixels"
PREFIX = "uint8_input/"  # node names: `nftlens quantize` leaves these in float


def add_uint8_input(model_dir: Path) -> Path:
    """Rewrite MODEL_DIR's graph and manifest for uint8 NHWC input (a no-op if it has it already)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = load_manifest(model_dir)
    path = Path(model_dir) / m.onnx_file
    if m.input_format == "uint8_nhwc":
        return _tile_constants(model_dir, m, path)
    model = onnx.load(str(path))
    graph = model.graph
    old = next(i for i in graph.input if i.name == m.input_name)
    s = m.input_size
    norm = m.preprocessing.normalize
    std = np.asarray(norm.std, np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(norm.mean, np.float32).reshape(1, 3, 1, 1)
    scale = _tiled((1.0 / (255.0 * std)).astype(np.float32), s)
    shift = _tiled((-mean / std).astype(np.float32), s)
    graph.initializer.extend(
        [numpy_helper.from_array(scale, PREFIX + "scale"), numpy_helper.from_array(shift, PREFIX + "shift")]
    )
    nodes = [
        helper.make_node("Cast", [PIXELS], [PREFIX + "float"], to=TensorProto.FLOAT, name=PREFIX + "cast"),
        helper.make_node(
            "Transpose", [PREFIX + "float"], [PREFIX + "nchw"], perm=[0, 3, 1, 2], name=PREFIX + "nchw"
        ),
        helper.make_node(
            "Mul", [PREFIX + "nchw", PREFIX + "scale"], [PREFIX + "scaled"], name=PREFIX + "mul"
        ),
        helper.make_node("Add", [PREFIX + "scaled", PREFIX + "shift"], [m.input_name], name=PREFIX + "add"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    batch = old.type.tensor_type.shape.dim[0]
    pixels = helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, [batch.dim_param or "batch", s, s, 3])
    graph.input.remove(old)
    graph.input.insert(0, pixels)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = m.model_copy(
        update={
            "input_name": PIXELS,
            "input_format": "uint8_nhwc",
            "sha256": sha256_of(path),
            "vectors_sha256": None,  # outputs equal up to float rounding only: a new catalog key
            "training": {**m.training, "uint8_input_from": {"sha256": m.sha256}},
        }
    )
    manifest.write(model_dir)
    return model_dir


def _tiled(per_channel: np.ndarray, size: int) -> np.ndarray:
    """A [1,3,1,1] constant repeated over the image, [1,3,S,S] (see the module docstring)."""
    return np.ascontiguousarray(np.broadcast_to(per_channel, (1, 3, size, size)))


def _tile_constants(model_dir: Path, m: ModelManifest, path: Path) -> Path:
    """Tile the normalising constants of `path`, a graph that already takes pixels, with manifest `m` (a
    no-op when they are tiled)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    names = {PREFIX + "scale", PREFIX + "shift"}
    consts = [init for init in model.graph.initializer if init.name in names]
    if len(consts) != len(names):
        raise ValueError(f"{path} takes pixels but lacks the {sorted(names)} constants `uint8-input` writes")
    changed = False
    for init in consts:
        if tuple(init.dims) != (1, 3, m.input_size, m.input_size):
            init.CopyFrom(
                numpy_helper.from_array(_tiled(numpy_helper.to_array(init), m.input_size), init.name)
            )
            changed = True
    if not changed:
        return model_dir
    onnx.checker.check_model(model)
    before = _outputs(path.read_bytes(), m.input_size)
    onnx.save(model, str(path))
    same = all(
        np.array_equal(a, b) for a, b in zip(before, _outputs(path.read_bytes(), m.input_size), strict=True)
    )
    update = {
        "sha256": sha256_of(path),
        "vectors_sha256": (m.vectors_sha256 or m.sha256) if same else None,  # same vectors: same catalog key
        "training": {**m.training, "constants_tiled_from": {"sha256": m.sha256}},
    }
    m.model_copy(update=update).write(model_dir)
    return model_dir


def _outputs(graph: bytes, size: int) -> list[np.ndarray]:
    """Every output of a pixels-in graph on a fixed random batch (the bit-identity check)."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    return session.run(None, {PIXELS: pixels})

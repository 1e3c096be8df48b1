"""Give an exported residual network per-stage feature statistics as extra outputs.

`nftlens stage-stats MODEL_DIR` adds, for the last block of every stage (the block outputs that feed a
stride-2 convolution, and the final one), an output `stageI`: each channel's spatial mean and standard
deviation, [N, 2C]. These are the "style" statistics of the image at that depth (what a collection's
palette, line work and texture do to the network), and the `multilayer` open-set score
(`app.openset.LayeredMahalanobis`) compares them with the known collections' (Lee et al., 2018, scored
at several depths). The existing outputs are untouched, so every calibration and figure of the model
carries over; the manifest records the rewrite and the new sha256, and keeps the old one as
`vectors_sha256`: the embeddings are bit for bit the same, so a catalog built with the model needs no
reindex. It costs a few reductions over feature maps that the network computes anyway.
"""

from __future__ import annotations

from pathlib import Path

from app.manifest import load_manifest, sha256_of

PREFIX = "stage_stats/"


def stage_ends(graph) -> list[str]:
    """Output tensors of the last residual block of each stage, shallow to deep."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    constants = {i.name for i in graph.initializer}

    def made_by(tensor: str, *ops: str) -> bool:
        """`tensor` comes out of the chain ops[-1] -> ... -> ops[0] (nearest first), and that first op is
        a residual Add (two computed inputs, not the input normalisation's Add of a constant)."""
        node = None
        for op in ops:
            node = producer.get(tensor)
            if node is None or node.op_type != op:
                return False
            tensor = node.input[0]
        return not constants.intersection(node.input)

    # a block's output: ReLU(Add) in a float graph; in a QDQ int8 graph the ReLU is folded into the
    # quantisation range, so it is the DequantizeLinear after the Add's QuantizeLinear
    blocks = [
        n.output[0]
        for n in graph.node
        if made_by(n.output[0], "Relu", "Add")
        or made_by(n.output[0], "DequantizeLinear", "QuantizeLinear", "Add")
    ]

    def downsamples(node) -> bool:
        return node.op_type == "Conv" and any(a.name == "strides" and max(a.ints) > 1 for a in node.attribute)

    ends = [b for b in blocks[:-1] if any(downsamples(c) for c in consumers.get(b, []))]
    return [*ends, blocks[-1]] if blocks else []


def is_stage_output(name: str) -> bool:
    return name.startswith("stage") and name[5:].isdigit()


def strip_stage_statistics(src: Path, dst: Path) -> None:
    """Write `src`'s graph without the stage statistics (what `nftlens quantize` quantises: the network
    alone; `add_stage_statistics` then adds them to the int8 graph)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    keep_nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
    keep_outputs = [o for o in graph.output if not is_stage_output(o.name)]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    del graph.output[:]
    graph.output.extend(keep_outputs)
    onnx.save(model, str(dst))


def add_stage_statistics(model_dir: Path) -> list[str]:
    """Rewrite MODEL_DIR's graph and manifest with the `stageI` outputs (a no-op if it has them)."""
    import onnx
    from onnx import TensorProto, helper

    m = load_manifest(model_dir)
    have = [o for o in m.outputs if is_stage_output(o)]
    if have:
        return have
    path = Path(model_dir) / m.onnx_file
    model = onnx.load(str(path))
    graph = model.graph
    ends = stage_ends(graph)
    if not ends:
        raise ValueError(f"{path}: no residual blocks found; stage statistics need a ResNet-style network")
    names = []
    for i, t in enumerate(ends):
        p, out = f"{PREFIX}{i}/", f"stage{i}"

        def node(op, inputs, output, p=p, **kw):
            return helper.make_node(op, inputs, [p + output], name=p + output, **kw)

        graph.node.extend(
            [
                node("ReduceMean", [t], "mean", axes=[2, 3], keepdims=0),
                node("Mul", [t, t], "square"),
                node("ReduceMean", [p + "square"], "mean_square", axes=[2, 3], keepdims=0),
                node("Mul", [p + "mean", p + "mean"], "mean_squared"),
                node("Sub", [p + "mean_square", p + "mean_squared"], "var"),
                node("Relu", [p + "var"], "var_clipped"),  # float rounding can leave a tiny negative
                node("Sqrt", [p + "var_clipped"], "std"),
                helper.make_node("Concat", [p + "mean", p + "std"], [out], name=p + "concat", axis=1),
            ]
        )
        graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", None]))
        names.append(out)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = m.model_copy(
        update={
            "outputs": [*m.outputs, *names],
            "sha256": sha256_of(path),
            "vectors_sha256": m.catalog_key,  # same embeddings: catalogs need no reindex
            "training": {**m.training, "stage_statistics_from": {"sha256": m.sha256}},
        }
    )
    manifest.write(model_dir)
    return names

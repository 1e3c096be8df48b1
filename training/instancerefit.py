"""Refit an exported model's instance head on frozen backbone features, inside its graph.

`nftlens refit-instance MODEL_DIR` runs the model's backbone over training tokens (split `train` of the
datasets it was trained on, never validation or test) and over copymint edits of each (`training.edits`,
drawn with the training run's edit weights, or `--weight EDIT=W`), caches the instance head's input (the
mean- and max-pooled last feature map, which the graph exposes for this only), and trains the head's two
layers again from their current weights with the training run's objective (InfoNCE between a token's
original and an edited view, batches of a few collections as hard negatives, plus the KoLeo spreading
term). Each epoch is scored on validation tokens the same way (each edited view must find its own original
among the originals of the training and validation tokens) and the best epoch's weights replace the
graph's `net.instance.mlp.*` initializers.

Why: the head was trained while `background_swap` left a painted token with rounded corners untouched
(the background region missed them until stop 45), so it never saw a real BAYC/MAYC background swap;
refitting the head alone is minutes on 2 cores where the full chain is hours.

Every other output is bit for bit unchanged (probabilities, embedding, network_embedding, stage
statistics), so classification, retrieval and the unknown detector carry over. The instance space is new:
the manifest gets a new sha256 and no `vectors_sha256` (catalogs need `nftlens catalog reindex`), and the
copy verdict must be calibrated again (`nftlens calibrate MODEL_DIR --copies-only`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from app.manifest import load_manifest, sha256_of

POOLED = "instance_pooled"  # the head's input, exposed in the temporary graph only
WEIGHTS = (
    "net.instance.mlp.0.weight",
    "net.instance.mlp.0.bias",
    "net.instance.mlp.2.weight",
    "net.instance.mlp.2.bias",
)


def _head_input(graph) -> str:
    """The name of the tensor the head's first layer reads (the pooled feature map)."""
    for node in graph.node:
        if WEIGHTS[0] in node.input:
            return next(i for i in node.input if i != WEIGHTS[0] and i != WEIGHTS[1])
    raise ValueError("the graph has no instance head (net.instance.mlp.0.weight)")


def pooled_model_dir(model_dir: Path, tmp: Path) -> Path:
    """A copy of MODEL_DIR whose graph also outputs the head's input as `instance_pooled`."""
    import onnx

    m = load_manifest(model_dir)
    proto = onnx.load(str(Path(model_dir) / m.onnx_file))
    name = _head_input(proto.graph)
    proto.graph.node.append(onnx.helper.make_node("Identity", [name], [POOLED]))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(POOLED, onnx.TensorProto.FLOAT, None))
    path = tmp / m.onnx_file
    onnx.save(proto, str(path))
    m.model_copy(update={"outputs": [*m.outputs, POOLED], "sha256": sha256_of(path)}).write(tmp)
    return tmp


def features(model_dir: Path, paths: list[Path], views: int, weights: dict[str, float], seed: int, desc: str):
    """(originals [N, F], edited views [N, V, F], the first edit of each view [N, V]) of the head's input."""
    from app.inference import OnnxModel
    from training.edits import random_edit
    from training.runner import infer

    with tempfile.TemporaryDirectory() as tmp:
        model = OnnxModel(pooled_model_dir(model_dir, Path(tmp)), providers=["CPUExecutionProvider"])
        orig = infer(model, paths, desc=f"{desc} originals")[POOLED]
        edited, kinds = [], []
        for v in range(views):
            names: list[str] = []
            edited.append(
                infer(
                    model,
                    paths,
                    random_edit(None, weights=weights, record=names),
                    desc=f"{desc} view {v + 1}/{views}",
                    seed=seed + v,
                )[POOLED]
            )
            kinds.append(names)
    return orig, np.stack(edited, 1), np.array(kinds).T


def _balanced(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of about `k` indices, as many of each label as it has up to k / labels (the
    training split has 8,000 punks to 800 tokens of a painted collection)."""
    from training.whiten import _sample

    names = sorted(set(labels.tolist()))
    each = max(1, k // len(names))
    idx = [
        np.flatnonzero(labels == c)[_sample(int((labels == c).sum()), each, seed + i)]
        for i, c in enumerate(names)
    ]
    return np.sort(np.concatenate(idx))


def _head(state: dict[str, np.ndarray]):
    import torch

    from training.models import InstanceHead

    head = InstanceHead(
        state[WEIGHTS[0]].shape[1] // 2, state[WEIGHTS[2]].shape[0], state[WEIGHTS[0]].shape[0]
    )
    head.mlp.load_state_dict(
        {k.removeprefix("net.instance.mlp."): torch.from_numpy(v.copy()) for k, v in state.items()}
    )
    return head


def _embed(head, pooled: np.ndarray):
    import torch

    with torch.no_grad():
        z = head.mlp(torch.from_numpy(pooled.reshape(-1, pooled.shape[-1])))
        return torch.nn.functional.normalize(z, dim=1).numpy().reshape(*pooled.shape[:-1], -1)


def top1_by_edit(
    head, catalog: np.ndarray, queries: np.ndarray, truth: np.ndarray, kinds: np.ndarray
) -> dict:
    """Per first edit (and "all"): the share of edited views whose nearest catalog original is their own."""
    cat = _embed(head, catalog)
    q = _embed(head, queries)  # [N, V, D]
    hit = (q @ cat.T).argmax(-1) == truth[:, None]
    out = {k: float(hit[kinds == k].mean()) for k in sorted(set(kinds.ravel()))}
    out["all"] = float(hit.mean())
    return out


def refit_instance(
    model_dir: Path,
    tokens: int = 6000,
    val_tokens: int = 1000,
    views: int = 6,
    epochs: int = 60,
    lr: float = 1e-3,
    batch: int = 256,
    groups: int = 4,
    temperature: float | None = None,
    koleo_weight: float | None = None,
    weights: dict[str, float] | None = None,
    seed: int = 0,
    out: Path | None = None,
    select: str = "best",
    cache: Path | None = None,
) -> dict:
    """Refit the head (see the module) and rewrite MODEL_DIR's graph and manifest, or write the refitted
    model to `out` (a copy of MODEL_DIR). `select` "best" keeps the epoch with the best validation top-1
    (none when no epoch beats the head as it was: the graph is left as it is), "last" the last epoch.
    With `cache`, the features are kept in (and read back from) a file there named for what made them.
    Returns what was done (the manifest's `training.instance_refit`)."""
    if select not in ("best", "last"):
        raise ValueError(f"select must be best or last, not {select!r}")
    import shutil

    import onnx
    import torch
    from onnx import numpy_helper
    from tqdm import tqdm

    from training.train import info_nce, koleo
    from training.whiten import _images

    m = load_manifest(model_dir)
    if "instance" not in m.outputs:
        raise ValueError(f"{model_dir} has no instance head to refit")
    config = m.training.get("config", {})
    temperature = temperature or config.get("instance_temperature", 0.1)
    koleo_weight = config.get("koleo_weight", 0.0) if koleo_weight is None else koleo_weight
    weights = {**(config.get("edit_weights") or {}), **(weights or {})}
    from training.edits import random_edit

    random_edit(weights=weights)  # a clear ValueError for an unknown edit or a negative weight
    _, tpaths, tlabels = _images(m, "train")
    _, vpaths, vlabels = _images(m, "val")
    tk, vk = _balanced(tlabels, tokens, seed), _balanced(vlabels, val_tokens, seed + 1)
    tpaths, tlabels = [tpaths[i] for i in tk], tlabels[tk]
    vpaths = [vpaths[i] for i in vk]
    key = json.dumps([m.sha256, [str(p) for p in tpaths], [str(p) for p in vpaths], views, weights, seed])
    cached = Path(cache, f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz") if cache else None
    if cached is not None and cached.is_file():  # the same model, tokens, views, weights and seed
        f = np.load(cached)
        t_orig, t_edit, v_orig, v_edit, v_kinds = (
            f[k] for k in ("t_orig", "t_edit", "v_orig", "v_edit", "v_kinds")
        )
    else:
        t_orig, t_edit, _ = features(model_dir, tpaths, views, weights, seed * 1000, "train")
        v_orig, v_edit, v_kinds = features(model_dir, vpaths, views, weights, seed * 1000 + 500, "val")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, t_orig=t_orig, t_edit=t_edit, v_orig=v_orig, v_edit=v_edit, v_kinds=v_kinds)
    catalog = np.concatenate([t_orig, v_orig])
    truth = np.arange(len(vpaths)) + len(tpaths)

    proto = onnx.load(str(Path(model_dir) / m.onnx_file))
    inits = {i.name: i for i in proto.graph.initializer}
    state = {k: numpy_helper.to_array(inits[k]) for k in WEIGHTS}
    head = _head(state)
    before = top1_by_edit(head, catalog, v_edit, truth, v_kinds)
    best, best_state, kept, history = before["all"], None, 0, []
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    by_label = {c: np.flatnonzero(tlabels == c) for c in sorted(set(tlabels))}
    per_group = batch // groups
    steps = max(1, len(tpaths) // batch)
    xo, xe = torch.from_numpy(t_orig), torch.from_numpy(t_edit)
    for epoch in tqdm(range(epochs), desc="refit instance head"):
        head.train()
        for _ in range(steps):
            picked = rng.choice(list(by_label), min(groups, len(by_label)), replace=False)
            idx = np.concatenate(
                [rng.choice(by_label[c], min(per_group, len(by_label[c])), replace=False) for c in picked]
            )
            view = rng.integers(views, size=len(idx))
            pair = torch.stack([xo[idx], xe[idx, view]], 1)
            z = torch.nn.functional.normalize(head.mlp(pair.reshape(-1, pair.shape[-1])), dim=1).reshape(
                len(idx), 2, -1
            )
            loss = info_nce(z, temperature) + (koleo_weight * koleo(z) if koleo_weight else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        score = top1_by_edit(head, catalog, v_edit, truth, v_kinds)
        history.append({"epoch": epoch + 1, "loss": float(loss.item()), **score})
        if score["all"] > best or select == "last":
            best, kept = score["all"], epoch + 1
            best_state = {
                f"net.instance.mlp.{k}": v.detach().numpy().copy() for k, v in head.mlp.state_dict().items()
            }
    if best_state is not None:
        head = _head(best_state)
    after = top1_by_edit(head, catalog, v_edit, truth, v_kinds)
    done = {
        "tokens": len(tpaths),
        "val_tokens": len(vpaths),
        "views": views,
        "epochs": epochs,
        "select": select,
        "epoch_kept": kept,  # 0: none beat the head as it was, which stays
        "lr": lr,
        "batch": batch,
        "groups": groups,
        "temperature": temperature,
        "koleo_weight": koleo_weight,
        "edit_weights": weights,
        "seed": seed,
        "view_edits": dict(Counter(v_kinds.ravel().tolist())),
        "val_top1_before": before,
        "val_top1_after": after,
        "from_sha256": m.sha256,
    }
    target = Path(out or model_dir)
    if out is not None:
        shutil.copytree(model_dir, target, dirs_exist_ok=True)
    if best_state is not None:
        for k, v in best_state.items():
            inits[k].CopyFrom(numpy_helper.from_array(v.astype(np.float32), k))
        path = target / m.onnx_file
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
        manifest = m.model_copy(
            update={
                "sha256": sha256_of(path),
                "vectors_sha256": None,  # a new instance space: catalogs need a reindex
                "training": {**m.training, "instance_refit": done},
            }
        )
        manifest.write(target)
    (target / "instance_refit.json").write_text(json.dumps({**done, "history": history}, indent=2) + "\n")
    return done

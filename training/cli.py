"""The data, training and evaluation commands of `nftlens`.

The command's root is `app.cli`, which mounts these when the `training` package is installed (a source
checkout); the serving install has only the serving commands. Nothing here imports torch at import time:
commands that need it import it when run and say which extra to install.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="nftlens training commands.")
data_app = typer.Typer(no_args_is_help=True, help="Fetch and import datasets into the standard format.")
app.add_typer(data_app, name="data")


def _report(ds) -> None:
    t = ds.card["totals"]
    typer.echo(
        f"{ds.card['name']}: {t['total']} images in {ds.root} (train {t['train']}, val {t['val']}, test {t['test']})"
    )
    for label, c in ds.card["counts"].items():
        typer.echo(f"  {label:>20}: {c['total']:>6}  ({c['train']}/{c['val']}/{c['test']})")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="cryptopunks | nouns | avatars (open-set outliers; needs Node.js)"),
    out: Path = typer.Option(Path("data"), help="parent folder; the dataset goes to OUT/NAME"),
    count: int = typer.Option(None, help="nouns, avatars: how many to render (default 2000, 3100)"),
    seed: int = typer.Option(0, help="nouns, avatars: RNG seed"),
) -> None:
    """Download a pinned NFT package, verify its sha256, and write a standard dataset."""
    if name == "cryptopunks":
        from training.datasets.cryptopunks import fetch_cryptopunks

        _report(fetch_cryptopunks(out / "cryptopunks"))
    elif name == "nouns":
        from training.datasets.nouns import fetch_nouns

        _report(fetch_nouns(out / "nouns", count=count or 2000, seed=seed))
    elif name == "avatars":
        from training.datasets.avatars import fetch_avatars

        _report(fetch_avatars(out / "avatars", count=count or 3100, seed=seed))
    else:
        raise typer.BadParameter(
            f"unknown dataset {name!r}; choose cryptopunks, nouns or avatars", param_hint="NAME"
        )


@data_app.command("import")
def data_import(
    src: Path = typer.Argument(
        ..., exists=True, help="DIR/<label>/*.png, a CSV path,label[,...], or a MANIFEST.csv folder"
    ),
    collection: str = typer.Option(None, help="collection name (default: the folder's name)"),
    out: Path = typer.Option(None, help="output folder (default: data/<collection>)"),
) -> None:
    """Turn a user's folder of labelled images into the standard dataset format."""
    from training.datasets.folder import import_folder

    name = collection or (src.parent.name if src.is_file() else src.name)
    _report(import_folder(src, out or Path("data") / name, collection=collection))


_TRAIN_HINT = "this command needs torch and timm: pip install 'nftlens[train]'"


def _need_train_extra() -> None:
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        typer.echo(f"error: {_TRAIN_HINT} ({exc})", err=True)
        raise typer.Exit(2) from exc


@app.command("train")
def train_cmd(
    config: Path = typer.Option(
        None, "--config", "-c", exists=True, help="YAML run config (see training/configs/)"
    ),
    data: list[Path] = typer.Option(None, help="dataset folder(s); overrides the config"),
    arch: str = typer.Option(
        None, help="any timm model name, e.g. resnet18, resnet50, vgg16, efficientnet_lite0"
    ),
    pretrained: str = typer.Option(None, help="none | timm | file:PATH | efficientnet-lite0"),
    epochs: int = typer.Option(None),
    batch_size: int = typer.Option(None),
    lr: float = typer.Option(None),
    size: int = typer.Option(None, help="input side (preprocess.resize.size)"),
    label_field: str = typer.Option(None, help="label | collection"),
    out: Path = typer.Option(None, help="run folder (checkpoints, config.yaml, history.json)"),
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    seed: int = typer.Option(None),
    max_steps: int = typer.Option(None, help="cap steps per epoch (smoke runs)"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
) -> None:
    """Fine-tune a timm model; the best checkpoint by validation macro-F1 is OUT/best.pt."""
    _need_train_extra()
    from training.models import WeightsError
    from training.train import TrainConfig, load_config, train

    overrides = {
        "data": [str(d) for d in data] if data else None,
        "arch": arch,
        "pretrained": pretrained,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "label_field": label_field,
        "out": str(out) if out else None,
        "device": device,
        "seed": seed,
        "max_steps": max_steps,
    }
    if config:
        cfg = load_config(config, **overrides)
    else:
        cfg = TrainConfig.model_validate({k: v for k, v in overrides.items() if v is not None})
    if size:
        cfg.preprocess.resize.size = size
    try:
        best = train(cfg, resume=resume)
    except WeightsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"best checkpoint: {best}")


@app.command("refit-head")
def refit_head_cmd(
    checkpoint: Path = typer.Argument(..., exists=True, help="a trained run's best.pt"),
    out: Path = typer.Option(..., help="run folder for the refitted best.pt and history.json"),
    epochs: int = typer.Option(2, min=1),
    lr: float = typer.Option(1e-3),
) -> None:
    """Refit the collection classifier's last layer on frozen features (embedding and instance unchanged)."""
    _need_train_extra()
    from training.train import refit_head

    typer.echo(f"best checkpoint: {refit_head(checkpoint, out, epochs, lr)}")


@app.command("refit-instance")
def refit_instance_cmd(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="an exported model folder"),
    out: Path = typer.Option(None, help="write the refitted model here (default: rewrite MODEL_DIR)"),
    tokens: int = typer.Option(6000, min=64, help="training tokens whose features are cached"),
    val_tokens: int = typer.Option(1000, min=1, help="validation tokens that pick the epoch"),
    views: int = typer.Option(6, min=1, help="edited views cached per token"),
    epochs: int = typer.Option(60, min=1),
    lr: float = typer.Option(1e-3),
    weight: list[str] = typer.Option(None, help="EDIT=W: an edit's draw weight over the run's (repeatable)"),
    seed: int = typer.Option(0),
    cache: Path = typer.Option(
        Path("runs/instance-features"), help="where the cached features are kept between runs"
    ),
) -> None:
    """Refit the instance head on frozen backbone features with today's edits (training/instancerefit.py);
    then calibrate the copy verdict again (`nftlens calibrate MODEL_DIR --copies-only`)."""
    _need_train_extra()
    from training.instancerefit import refit_instance

    weights = {}
    for w in weight or []:
        name, _, value = w.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--weight takes EDIT=NUMBER, not {w!r}") from None
    try:
        done = refit_instance(
            model_dir, tokens, val_tokens, views, epochs, lr, weights=weights, seed=seed, out=out, cache=cache
        )
    except ValueError as e:  # a name that is no edit, a model without the head
        raise typer.BadParameter(str(e)) from None
    before, after = done["val_top1_before"], done["val_top1_after"]
    typer.echo("| first edit | val top-1 before | after |\n|---|---:|---:|")
    for k in before:
        typer.echo(f"| {k} | {before[k]:.3f} | {after[k]:.3f} |")
    if done["epoch_kept"]:
        typer.echo(f"kept epoch {done['epoch_kept']} of {epochs}; wrote {out or model_dir}")
    else:
        typer.echo(f"no epoch beat the head as it was: {out or model_dir} keeps it")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., exists=True, help="a best.pt from `nftlens train`"),
    out: Path = typer.Option(Path("models/custom"), help="model folder to write model.onnx + model.json"),
    parity_images: int = typer.Option(32, help="real test images for the torch vs ONNX Runtime check"),
) -> None:
    """Export to ONNX (probabilities + embedding), check it, and write the manifest."""
    _need_train_extra()
    from training.export import export, load_checkpoint
    from training.train import TrainConfig, gather

    _, ckpt = load_checkpoint(checkpoint)
    paths, _, _, _ = gather(TrainConfig.model_validate(ckpt["config"]), "test")
    manifest = export(checkpoint, out, paths[:: max(1, len(paths) // parity_images)][:parity_images])
    typer.echo(
        f"wrote {out}/model.onnx ({manifest.embedding_dim}-d embedding, {len(manifest.labels)} labels)"
    )
    typer.echo(f"parity: {manifest.metrics['export_parity']}")


@app.command("evaluate")
def evaluate_cmd(
    model_dir: Path = typer.Argument(..., exists=True, help="folder with model.onnx + model.json"),
    data: list[Path] = typer.Option(..., help="dataset folder(s) to evaluate on"),
    split: str = typer.Option("test", help="train | val | test | all (all: a held-out dataset)"),
    label_field: str = typer.Option("label", help="label | collection"),
    out: Path = typer.Option(None, help="report folder (default MODEL_DIR/report)"),
    robustness: bool = typer.Option(True, help="robustness table over the standard corruptions"),
    denoise_sweep: bool = typer.Option(False, help="also compare denoise methods at test time"),
    denoiser: Path = typer.Option(
        Path("models/denoiser"), help="learned denoiser the sweep also swaps in (skipped if absent)"
    ),
    update_manifest: bool = typer.Option(
        True, help="record metrics.test and the unknown threshold in model.json"
    ),
) -> None:
    """Accuracy, P/R/F1, confusion matrix, robustness, embedding quality and unknown AUROC (ONNX Runtime)."""
    from training.evaluate import evaluate

    r = evaluate(
        model_dir,
        [str(d) for d in data],
        label_field,
        split,
        out,
        robustness,
        denoise_sweep,
        update_manifest,
        denoiser,
    )
    c = r["clean"]
    typer.echo(
        f"accuracy {c['accuracy']:.4f}  macro-F1 {c['macro_f1']:.4f}  P@10 {r['retrieval']['precision_at_10_collection']:.4f}"
    )
    typer.echo(f"report: {out or model_dir / 'report'}/report.md")


@app.command("train-denoiser")
def train_denoiser_cmd(
    out: Path = typer.Option(Path("models/denoiser"), help="folder for denoiser.onnx + denoiser.json"),
    data: list[str] = typer.Option(
        ["data/nft-thumbs@train", "data/cryptopunks@train", "data/nouns@train"],
        help="training images: DIR@SPLIT (repeatable); never test data",
    ),
    steps: int = typer.Option(4500, help="optimiser steps (one source per batch)"),
    base: int = typer.Option(24, help="channels of the first level (x2, x4 below)"),
    patch: int = typer.Option(96, help="crop side for large images (pixel art trains whole)"),
    batch_pixels: int = typer.Option(16 * 96 * 96, help="pixels per batch (the batch size follows)"),
    lr: float = typer.Option(2e-3, help="peak learning rate (one-cycle)"),
    loss: str = typer.Option("mse", help="mse (what PSNR scores) | l1"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    seed: int = typer.Option(0),
) -> None:
    """Train the denoising autoencoder on degraded training images, export it to ONNX and score it on val."""
    _need_train_extra()
    from training.denoiser import train_denoiser

    m = train_denoiser(
        out,
        data,
        steps=steps,
        base=base,
        patch=patch,
        batch_pixels=batch_pixels,
        lr=lr,
        loss=loss,
        threads=threads,
        seed=seed,
    )
    typer.echo(f"wrote {out}/{m.onnx_file} (sha256 {m.sha256[:12]}…) in {m.training['seconds']:.0f} s")
    for spec, table in m.val["psnr"].items():
        typer.echo(
            f"  {spec}: "
            + ", ".join(f"{c} {v['none_psnr']:.2f}->{v['autoencoder_psnr']:.2f} dB" for c, v in table.items())
        )


@app.command("denoise-eval")
def denoise_eval_cmd(
    denoiser: Path = typer.Option(Path("models/denoiser"), help="denoiser folder (skipped if absent)"),
    per_domain: int = typer.Option(300, help="test images per domain (pixel art, painted), evenly drawn"),
    out: Path = typer.Option(Path("reports/denoise"), help="writes DENOISE.md, denoise.json and plots"),
) -> None:
    """PSNR/SSIM against clean test images and ms per image of every denoise method, per corruption."""
    _need_train_extra()
    from training.denoiser import evaluate_denoisers

    evaluate_denoisers(denoiser, out, per_domain)
    typer.echo((out / "DENOISE.md").read_text())


@app.command("quantize")
def quantize_cmd(
    model_dir: Path = typer.Argument(..., exists=True, help="folder with the fp32 model.onnx + model.json"),
    out: Path = typer.Option(..., help="folder for the int8 model (then run `nftlens calibrate` on it)"),
    data: list[str] = typer.Option(
        ["data/nft-thumbs@train", "data/cryptopunks@train", "data/nouns@train"],
        help="calibration images: dataset folders, DIR@SPLIT (repeatable); never test data",
    ),
    images: int = typer.Option(512, help="how many calibration images (evenly drawn)"),
) -> None:
    """Static int8 quantisation (QDQ, per-channel weights), calibrated on real training images."""
    _need_train_extra()
    from training.datasets.select import select_spec_rows
    from training.quantize import quantize_model

    paths, _ = select_spec_rows(data, "train", skip_missing=True)
    if not paths:
        raise typer.BadParameter("no calibration images found", param_hint="--data")
    step = max(1, len(paths) // images)
    written = quantize_model(model_dir, out, paths[::step][:images])
    typer.echo(
        f"wrote {written}/model.onnx; next: nftlens calibrate {written}, then nftlens evaluate {written}"
    )


@app.command("uint8-input")
def uint8_input_cmd(
    model_dir: Path = typer.Argument(
        ..., exists=True, help="folder with model.onnx + model.json (rewritten)"
    ),
) -> None:
    """Make the model take uint8 [N,S,S,3] pixels and normalise inside the graph (outputs unchanged)."""
    _need_train_extra()
    from app.manifest import load_manifest
    from training.uint8input import add_uint8_input

    before = load_manifest(model_dir)
    add_uint8_input(model_dir)
    after = load_manifest(model_dir)
    typer.echo(f"{model_dir}: input is uint8 NHWC pixels, normalised in the graph (constants tiled)")
    if after.sha256 == before.sha256:
        typer.echo("already so: nothing changed")
    elif after.catalog_key == before.catalog_key:
        typer.echo("every output bit for bit as before: catalogs keep their vectors")
    else:
        typer.echo("new catalog key: run `nftlens catalog reindex` on catalogs made with the old file")


@app.command("stage-stats")
def stage_stats_cmd(
    model_dir: Path = typer.Argument(
        ..., exists=True, help="folder with model.onnx + model.json (rewritten)"
    ),
) -> None:
    """Add per-stage channel statistics outputs (`stageI`) for the multilayer unknown score."""
    _need_train_extra()
    from training.stagestats import add_stage_statistics

    names = add_stage_statistics(model_dir)
    typer.echo(
        f"{model_dir}: outputs {', '.join(names)}; next: nftlens calibrate {model_dir} --method multilayer"
    )


@app.command("whiten")
def whiten_cmd(
    model_dir: Path = typer.Argument(
        ..., exists=True, help="folder with model.onnx + model.json (rewritten)"
    ),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="power of the whitening: 0 none, 1 full"),
    shrink: float = typer.Option(0.01, min=0.0, max=1.0, help="shrinkage of the covariance to the identity"),
    images: int = typer.Option(6000, min=100, help="training images the statistics are fitted on"),
    data: list[str] = typer.Option(None, help="training datasets (default: the manifest's)"),
) -> None:
    """Whiten the collection embedding inside the graph, fitted on training images (training/whiten.py)."""
    _need_train_extra()
    from training.whiten import whiten_model

    try:
        fitted = whiten_model(model_dir, alpha, shrink, images, data or None)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="MODEL_DIR") from e
    typer.echo(
        f"{model_dir}: embedding whitened (alpha {alpha}, shrink {shrink}, {fitted['images']} training "
        f"images); new catalog key: run `nftlens catalog reindex` on catalogs made with the old file"
    )


@app.command("calibrate")
def calibrate_cmd(
    model_dir: Path = typer.Argument(..., exists=True, help="folder with model.onnx + model.json"),
    method: str = typer.Option(
        "mahalanobis", help="open-set score: max_probability | energy | mahalanobis | knn | multilayer"
    ),
    outliers: list[str] = typer.Option(
        None, help="auxiliary outlier dataset(s) whose val split picks multilayer's layers (data/avatars)"
    ),
    openset_only: bool = typer.Option(False, help="re-fit only temperature and unknown detector"),
    false_unknown: float = typer.Option(
        0.01, help="share of known validation images allowed to be flagged unknown (the promise)"
    ),
    false_copy: float = typer.Option(
        0.005, help="share of distinct validation tokens allowed to be called copies"
    ),
    out: Path = typer.Option(None, help="plots and calibration.json (default MODEL_DIR/report)"),
    peel: bool = typer.Option(
        True, help="copy queries also run the image inside its uniform frame or canvas (one more view)"
    ),
    deskew: bool = typer.Option(True, help="copy queries also run the image turned upright (one more view)"),
    hues: int = typer.Option(
        5, min=0, max=11, help="copy queries also run N hue-rotated views (360/(N+1) degrees apart)"
    ),
    background: bool = typer.Option(
        True, help="copy queries also run the image on the model's alpha background (one more view)"
    ),
    copies_only: bool = typer.Option(False, help="re-fit only the copy thresholds (keep the rest)"),
    verify_k: int = typer.Option(
        50,
        min=0,
        help="candidates checked against each pair (the service's copy_verify_k): their checks get minima "
        "that call a copy alone where validation allows (0: the score alone decides)",
    ),
    keypoints: bool = typer.Option(True, help="check painted candidates by keypoints (copy_keypoints)"),
    crossfit: bool = typer.Option(
        True,
        help="raise each copy cut by the margin that cross-fitting on the distinct validation tokens says "
        "keeps --false-copy on new ones (--no-crossfit: cuts just above the validation tokens)",
    ),
    overlay_witness: str = typer.Option(
        "one",
        help="who must show a painted candidate's pasted-on region for `overlay` not to forgive it: one other "
        "candidate, or the others together (the first rule)",
    ),
    overlay_beyond: str = typer.Option(
        "0.01",
        help="forgive a painted candidate's pasted-on region only when, outside it, the query shows at most "
        "this share of the figure beyond the candidate's figure (`none`: not looked at, the rule before)",
    ),
    overlay_lines: bool = typer.Option(
        True,
        help="take regions that line up as a line of text in one colour (a caption's letters) as one pasted-on "
        "region (--no-overlay-lines: each region on its own, the rule before)",
    ),
    overlay_compact: bool = typer.Option(
        True,
        help="let a compact pasted-on region (a sticker, badge or emoji) cover up to COMPACT_MAX of the figure "
        "(--no-overlay-compact: every region OVERLAY_MAX, the rule before)",
    ),
) -> None:
    """Fit temperature, unknown detector (+ openset.npz) and copy threshold on validation data."""
    _need_train_extra()
    from app.agreement import WITNESSES, OverlayRule
    from training.calibrate import OPENSET_METHODS, calibrate

    if method not in OPENSET_METHODS:
        raise typer.BadParameter(f"choose one of {', '.join(OPENSET_METHODS)}", param_hint="--method")
    if overlay_witness not in WITNESSES:
        raise typer.BadParameter(f"choose one of {', '.join(WITNESSES)}", param_hint="--overlay-witness")
    try:
        beyond = None if overlay_beyond.strip().lower() == "none" else float(overlay_beyond)
        # OverlayRule refuses a share outside 0..1
        rule = OverlayRule(overlay_witness, beyond, overlay_lines, overlay_compact)
    except ValueError:
        raise typer.BadParameter(
            "a share of the figure (0..1) or none", param_hint="--overlay-beyond"
        ) from None
    r = calibrate(
        model_dir,
        method,
        false_unknown,
        false_copy,
        out,
        peel=peel,
        deskew=deskew,
        hues=hues,
        background=background,
        copies_only=copies_only,
        copies=not openset_only,
        outliers=outliers or None,
        verify_k=verify_k,
        keypoints=keypoints,
        crossfit=crossfit,
        overlay_rule=rule,
    )
    if not copies_only:
        typer.echo(
            f"temperature {r['temperature']:.3f}: val ECE {r['ece_val_before']:.4f} -> {r['ece_val_after']:.4f}"
        )
        typer.echo(f"unknown thresholds (val): {r['openset_thresholds']}")
        if "multilayer_layers" in r:
            typer.echo(f"multilayer layers: {'+'.join(r['multilayer_layers'])}")
    if "copies" in r:
        c = r["copies"]
        typer.echo(
            f"copy thresholds {c['per_collection']} (else {c['threshold']:.4f}): "
            f"val precision {c['precision']:.4f}, recall {c['recall']:.4f}"
        )
        if c["colours_min"] or c["layout_min"] or c.get("overlay_min"):
            typer.echo(
                f"check minima: colours {c['colours_min']}, overlay {c.get('overlay_min', {})}, "
                f"layout {c['layout_min']}"
            )
        if c.get("margins"):
            typer.echo(
                f"margins (tail scales) {c['margins']}: cross-fitted false-copy rate {c['crossfit_false_copy']} "
                f"(95 % intervals {c['crossfit_interval_95']})"
            )


@app.command("loo")
def loo_cmd(
    config: Path = typer.Option(Path("training/configs/default-resnet18.yaml"), exists=True),
    collections: str = typer.Option("cryptopunks,doodles,bayc,nouns", help="collections to hold out in turn"),
    epochs: int = typer.Option(6, help="epochs per held-out model (CPU budget)"),
    runs: Path = typer.Option(Path("runs/loo"), help="one run folder per held-out collection"),
    out: Path = typer.Option(Path("reports/openset"), help="report folder"),
    false_unknown: float = typer.Option(0.01, help="as in `calibrate`"),
    outliers: list[str] = typer.Option(
        None, help="auxiliary outlier dataset(s) to train every held-out model on (e.g. data/avatars)"
    ),
    outlier_check: list[str] = typer.Option(
        None,
        help="outlier dataset(s) whose val split picks the multilayer score's layers (calibrate --outliers)",
    ),
    outlier_edits: bool = typer.Option(
        False, help="give the outliers the known images' copy edits (reports/openset-oe-edits)"
    ),
) -> None:
    """Leave-one-collection-out open-set evaluation (trains one model per collection; resumes)."""
    _need_train_extra()
    from training.loo import leave_one_out

    leave_one_out(
        config,
        collections.split(","),
        epochs,
        runs,
        out,
        false_unknown=false_unknown,
        outliers=outliers or None,
        outlier_check=outlier_check or None,
        outlier_edits=outlier_edits,
    )
    typer.echo((out / "OPENSET.md").read_text())


copies_app = typer.Typer()  # merged into the root's `copies` group by app.cli


@copies_app.command("evaluate")
def copies_evaluate(
    model_dir: Path = typer.Argument(Path("models/default"), exists=True),
    data: list[str] = typer.Option(
        None, help="dataset folders for the catalog (default: the four demo ones)"
    ),
    out: Path = typer.Option(Path("reports/copies"), help="report folder"),
    space: str = typer.Option("instance", help="instance | embedding (the collection space, for old models)"),
    per_domain: int = typer.Option(150, help="originals per domain (pixel art, painted) for each edit"),
    holdout: list[str] = typer.Option(
        None, help="test datasets (tokens never trained on); default: the model's training holdout"
    ),
    verify_k: int = typer.Option(
        50, min=0, help="candidates checked and re-ranked, as the service's copy_verify_k (0: off)"
    ),
    keypoints: bool = typer.Option(True, help="check painted candidates by keypoints (copy_keypoints)"),
    split: str = typer.Option(
        "test",
        help="test | val: val is a design run on validation tokens; every test token (test split, holdout) "
        "is left out of its catalog",
    ),
    edit: list[str] = typer.Option(None, help="only these edits' rows (default: every edit)"),
) -> None:
    """Edited copies of unseen tokens against the full catalog: top-1 and verdict per edit."""
    from training.copyeval import evaluate_copies

    try:
        r = evaluate_copies(
            model_dir,
            data or None,
            out,
            per_domain,
            space=space,
            holdout=holdout or None,
            verify_k=verify_k,
            keypoints=keypoints,
            split=split,
            edits=edit or None,
        )
    except ValueError as e:  # an unknown --edit or --split, a space the model lacks, no unseen token
        raise typer.BadParameter(str(e)) from None
    typer.echo((out / "COPIES.md").read_text())
    if r["thresholds"] is None:
        typer.echo("(no copy verdict in this space: top-1 only)")


@copies_app.command("render")
def copies_render(
    report: Path = typer.Argument(Path("reports/copies"), exists=True, file_okay=False, help="report folder"),
) -> None:
    """Write COPIES.md again from the folder's copies.json (after the report's wording changed; nothing is
    re-measured)."""
    import json

    from training.copyeval import render_markdown

    source = report / "copies.json"
    if not source.is_file():
        raise typer.BadParameter(f"{source} not found: run `nftlens copies evaluate --out {report}` first")
    (report / "COPIES.md").write_text(render_markdown(json.loads(source.read_text())))
    typer.echo((report / "COPIES.md").read_text())


@copies_app.command("twins")
def copies_twins(
    data: list[str] = typer.Argument(None, help="pixel-art dataset folders (default: punks and Nouns)"),
    out: Path = typer.Option(Path("reports/copies"), help="report folder (TWINS.md, twins.json)"),
    sample: int = typer.Option(500, min=1, help="tokens per collection whose nearest other token is found"),
) -> None:
    """How many genuine pixel-art tokens are recoloured or near copies of another genuine token."""
    from training.twins import analyse_twins

    analyse_twins(data or ["data/cryptopunks", "data/nouns"], out, sample)
    typer.echo((out / "TWINS.md").read_text())


report_app = typer.Typer(no_args_is_help=True, help="Combine evaluation reports.")
app.add_typer(report_app, name="report")


@report_app.command("compare")
def report_compare(
    reports: list[str] = typer.Argument(..., help="NAME=REPORT_DIR pairs (folders holding metrics.json)"),
    out: Path = typer.Option(Path("models/default/report/comparison"), help="output folder"),
) -> None:
    """Robustness and quality of several evaluated models side by side (JSON, Markdown, PNG)."""
    from training.reports import compare_reports

    pairs = dict(r.split("=", 1) for r in reports)
    compare_reports({k: Path(v) for k, v in pairs.items()}, out)
    typer.echo((out / "comparison.md").read_text())


@app.command("bench")
def bench_cmd(
    what: str = typer.Argument(
        "all", help="model | service | peers | tuning | catalog | copies | explain | all"
    ),
    model_dir: Path = typer.Option(Path("models/default"), exists=True),
    images: Path = typer.Option(
        Path("data/cryptopunks"), help="dataset folder whose images the load generator sends"
    ),
    thumbs: Path = typer.Option(
        Path("data/nft-thumbs"),
        help="dataset whose first image (a real 128-px WebP thumbnail) the peers and tuning benches post",
    ),
    clients: int = typer.Option(16, help="concurrent clients"),
    requests: int = typer.Option(400, help="requests per mode"),
    sizes: str = typer.Option("100000,1000000", help="catalog sizes (real embeddings replicated to each)"),
    catalog_sources: list[Path] = typer.Option(
        [Path("data/cryptopunks"), Path("data/nouns"), Path("data/nft-thumbs")],
        help="dataset folders whose real embeddings fill the catalog bench (repeatable)",
    ),
    seconds: float = typer.Option(4.0, help="time per model measurement"),
    copies_tokens: int = typer.Option(100_000, help="catalog rows for the copies row"),
    out: Path = typer.Option(Path("reports/bench"), help="writes bench.json and BENCH.md here"),
) -> None:
    """Throughput and latency figures (JSON + Markdown), with ratios measured in the same run."""
    import json

    from benchmarks import bench
    from training.datasets import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
    for section in (
        "model",
        "service",
        "peers",
        "tuning",
        "catalog",
        "copies",
        "explain",
    ):  # sections not re-run are kept, with their machine
        if isinstance(previous.get(section), dict):
            previous[section].setdefault("machine", previous.get("machine"))
    report: dict = {**previous, "machine": bench.machine()}
    if what in ("model", "service", "all"):
        report["model"] = {**bench.bench_model(model_dir, seconds=seconds), "machine": report["machine"]}
    if what in ("service", "all"):
        ds = load_dataset(images)
        paths = [ds.image_path(r) for r in ds.rows[:: max(1, len(ds.rows) // 200)]]
        report["service"] = {
            **bench.bench_service(model_dir, paths, clients, requests, raw_ort=report["model"]),
            "machine": report["machine"],
        }
    if what in ("peers", "all"):
        ds = load_dataset(thumbs)
        report["peers"] = {
            **bench.bench_peers(model_dir, ds.image_path(ds.rows[0]), connections=min(clients, 8)),
            "machine": report["machine"],
        }
    if what in ("tuning", "all"):
        ds = load_dataset(thumbs)
        report["tuning"] = {
            **bench.bench_tuning(model_dir, ds.image_path(ds.rows[0]), connections=min(clients, 8)),
            "machine": report["machine"],
        }
    if what in ("catalog", "all"):
        report["catalog"] = {
            **bench.bench_catalog(model_dir, catalog_sources, tuple(int(s) for s in sizes.split(","))),
            "machine": report["machine"],
        }
    if what in ("copies", "all"):
        ds = load_dataset(images)
        paths = [ds.image_path(r) for r in ds.rows[:: max(1, len(ds.rows) // 200)]]
        report["copies"] = {
            **bench.bench_copies(model_dir, paths, copies_tokens, min(clients, 4), requests // 2),
            "machine": report["machine"],
        }
    if what in ("explain", "all"):
        ds = load_dataset(images)
        paths = [ds.image_path(r) for r in ds.rows[:: max(1, len(ds.rows) // 20)]]
        report["explain"] = {
            **bench.bench_explain(model_dir, paths, max(20, requests // 8)),
            "machine": report["machine"],
        }
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "BENCH.md").write_text(bench.render_markdown(report))
    typer.echo((out / "BENCH.md").read_text())

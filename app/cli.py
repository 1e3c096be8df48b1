"""The `nftlens` command: serving commands here (`serve`, `catalog ...`, `copies scan`).

The data, training and evaluation commands live in `training/cli.py` and are mounted when the `training`
package is present (a source checkout with `pip install -e '.[train]'`). The serving install has no
`training/`: those commands then answer with what to install instead.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer

serve_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="nftlens: NFT image classification, similarity and copy detection.",
)


@serve_app.command("serve")
def serve(
    host: str = typer.Option(None, help="bind address (NFTLENS_HOST, default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (NFTLENS_PORT, default 8000)"),
    model_dir: str = typer.Option(None, help="folder with model.onnx + model.json (NFTLENS_MODEL_DIR)"),
    catalog: str = typer.Option(None, help="catalog URL or SQLite path (NFTLENS_CATALOG)"),
    workers: int = typer.Option(
        None, help="server processes sharing the port (NFTLENS_WORKERS; default 0: one per core, at most 4)"
    ),
) -> None:
    """Run the HTTP service (uvicorn). With several workers, each process holds its own model session
    and catalog indexes; the catalog's change log keeps every worker's searches consistent, and one
    acceptor hands each new connection to the worker with the fewest open ones."""
    import os
    import tempfile

    import uvicorn

    from app import supervisor
    from app.config import Settings
    from app.main import create_app
    from app.metrics import MULTIPROC_ENV

    overrides = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "model_dir": model_dir,
            "catalog": catalog,
            "workers": workers,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    workers = settings.worker_count()
    settings = settings.model_copy(update={"workers": workers})
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level}
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    overrides["workers"] = workers  # resolved once here, so every worker splits the cores the same way
    for key, value in overrides.items():  # worker processes read their settings from the environment
        os.environ[f"NFTLENS_{key.upper()}"] = str(value)
    with tempfile.TemporaryDirectory(prefix="nftlens-metrics-") as folder:  # /metrics sums the workers
        os.environ[MULTIPROC_ENV] = folder  # fresh: no counts left from an earlier run
        # one acceptor hands each connection to the least busy worker (app/supervisor.py)
        supervisor.serve({"app": "app.main:create_app", "factory": True, **common}, workers)


catalog_app = typer.Typer(no_args_is_help=True, help="Build and maintain the token catalog.")
serve_app.add_typer(catalog_app, name="catalog")


def _open(model_dir: str | None, catalog: str | None):
    from app.catalog import open_catalog
    from app.config import Settings
    from app.service import open_model

    s = Settings(**{k: v for k, v in {"model_dir": model_dir, "catalog": catalog}.items() if v})
    model = open_model(s)
    m = model.manifest
    return model, open_catalog(
        s.catalog, m.embedding_dim, m.catalog_key, s.faiss_index, m.instance_dim, f"{m.name}@{m.version}"
    )


@catalog_app.command("index")
def catalog_index(
    source: str = typer.Argument(
        ..., help="dataset folder (manifest.csv), a manifest CSV, or a folder of images"
    ),
    collection: str = typer.Option(
        None, help="collection name (required for a plain folder; overrides the manifest)"
    ),
    model_dir: str = typer.Option(None, help="model folder (NFTLENS_MODEL_DIR)"),
    catalog: str = typer.Option(None, help="catalog path (NFTLENS_CATALOG)"),
    batch: int = typer.Option(64, help="images per inference batch"),
) -> None:
    """Embed many images into the catalog (batched inference, progress bar).

    Resumable: tokens already stored with the same image bytes (sha256) by the same model are skipped, so
    rerunning after a crash or Ctrl-C embeds only what is missing. Running servers see the new tokens at
    their next search.
    """
    from pathlib import Path

    from app.indexing import index_source

    model, cat = _open(model_dir, catalog)
    try:
        result = index_source(model, cat, Path(source), collection, batch)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        cat.close()
    typer.echo(
        f"{result['indexed']} indexed, {result['skipped']} already stored, {result['failed']} undecodable; "
        f"catalog holds {result['catalog']} tokens"
    )


@catalog_app.command("reindex")
def catalog_reindex(
    model_dir: str = typer.Option(None, help="model folder (NFTLENS_MODEL_DIR)"),
    catalog: str = typer.Option(None, help="catalog path (NFTLENS_CATALOG)"),
    all_tokens: bool = typer.Option(
        False, "--all", help="re-embed every token, not only other models' vectors"
    ),
) -> None:
    """Re-embed stored images with the current model so no search mixes model versions."""
    from app.indexing import reindex

    model, cat = _open(model_dir, catalog)
    try:
        result = reindex(model, cat, everything=all_tokens)
        typer.echo(
            f"{result['indexed']} re-embedded in place, {result['failed']} failed; "
            f"{cat.stale_count()} still stale"
        )
    finally:
        cat.close()


copies_app = typer.Typer(no_args_is_help=True, help="Copymint detection against the catalog.")
serve_app.add_typer(copies_app, name="copies")


@copies_app.command("scan")
def copies_scan(
    folder: str = typer.Argument(..., help="folder of images to check (searched recursively)"),
    collection: list[str] = typer.Option(
        None, help="only compare against these catalog collections (repeatable; default: all)"
    ),
    out: str = typer.Option(None, help="report folder (default: copies-scan-<folder name>)"),
    model_dir: str = typer.Option(None, help="model folder (NFTLENS_MODEL_DIR)"),
    catalog: str = typer.Option(None, help="catalog path (NFTLENS_CATALOG)"),
    batch: int = typer.Option(64, help="images per inference batch"),
) -> None:
    """Check every image of a folder against the catalog: copies.csv (query, best match, score,
    is_copy) and SUMMARY.md."""
    from pathlib import Path

    from app.config import Settings
    from app.copyscan import scan_folder

    src = Path(folder)
    if not src.is_dir():
        typer.echo(f"error: {src} is not a folder", err=True)
        raise typer.Exit(2)
    dest = Path(out) if out else Path(f"copies-scan-{src.resolve().name}")
    model, cat = _open(model_dir, catalog)
    try:
        verify_k = Settings().copy_verify_k  # NFTLENS_COPY_VERIFY_K, as the service reads it
        s = scan_folder(
            model, cat, src, dest, set(collection) if collection else None, batch, verify_k=verify_k
        )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        cat.close()
    typer.echo(f"{s['copies']} of {s['images']} images are copies (threshold {s['threshold']:.4f})")
    typer.echo(f"report: {dest}/copies.csv, {dest}/SUMMARY.md")


@serve_app.command("explain")
def explain_cmd(
    images: list[str] = typer.Argument(..., help="image files to explain"),
    out: str = typer.Option("reports/explain", help="writes the overlays and EXPLAIN.md here"),
    target: str = typer.Option(None, help="label to explain (default: each image's prediction)"),
    model_dir: str = typer.Option(None, help="model folder (NFTLENS_MODEL_DIR)"),
) -> None:
    """Occlusion heatmaps of image files, without a server, and how much of the heat is on the subject."""
    from app.config import Settings
    from app.explain import explain_files
    from app.inference import OnnxModel

    model = OnnxModel(model_dir or Settings().model_dir)
    if target is not None and target not in model.labels:
        typer.echo(f"error: unknown target {target!r}; labels: {', '.join(model.labels)}", err=True)
        raise typer.Exit(2)
    for row in explain_files(model, images, out, target):
        typer.echo(f"{row['image']}: {row['explained']}, heat on subject {row['heat on subject']:.2f}")
    typer.echo(f"report: {out}/EXPLAIN.md")


TRAINING_COMMANDS = ("data", "train", "export", "calibrate", "evaluate", "loo", "report", "bench")
_TRAINING_HINT = (
    "this command needs the training package and its extra: from a source checkout, pip install -e "
    "'.[train]' (nftlens[train])"
)


def _training_missing(name: str):
    def command(ctx: typer.Context) -> None:
        typer.echo(f"error: `nftlens {name}`: {_TRAINING_HINT}", err=True)
        raise typer.Exit(2)

    command.__doc__ = f"(needs the training package) {name}"
    return command


def _mount_training() -> None:
    """Add training/cli.py's commands to the root, or stand-ins that say what to install."""
    if importlib.util.find_spec("training") is None:
        for name in TRAINING_COMMANDS:
            serve_app.command(
                name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
            )(_training_missing(name))
        return
    training_cli = importlib.import_module("training.cli")
    serve_app.registered_commands += training_cli.app.registered_commands
    serve_app.registered_groups += training_cli.app.registered_groups
    copies_app.registered_commands += training_cli.copies_app.registered_commands


_mount_training()


def main() -> None:
    serve_app()


if __name__ == "__main__":
    main()

"""The `nftlens` command line.

It lives here, not in `app/`, because it reaches both halves: data and training commands (this package)
and the serving commands from `app.cli`. Nothing here imports torch at import time: commands that need it
import it when run and say which extra to install.
"""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli import serve_app

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="nftlens: NFT image classification and similarity."
)
data_app = typer.Typer(no_args_is_help=True, help="Fetch and import datasets into the standard format.")
app.add_typer(data_app, name="data")
app.registered_commands += serve_app.registered_commands
app.registered_groups += serve_app.registered_groups


def _report(ds) -> None:
    t = ds.card["totals"]
    typer.echo(
        f"{ds.card['name']}: {t['total']} images in {ds.root} (train {t['train']}, val {t['val']}, test {t['test']})"
    )
    for label, c in ds.card["counts"].items():
        typer.echo(f"  {label:>20}: {c['total']:>6}  ({c['train']}/{c['val']}/{c['test']})")


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="cryptopunks | nouns"),
    out: Path = typer.Option(Path("data"), help="parent folder; the dataset goes to OUT/NAME"),
    count: int = typer.Option(2000, help="nouns: how many to render"),
    seed: int = typer.Option(0, help="nouns: RNG seed for the trait draw"),
) -> None:
    """Download a pinned NFT package, verify its sha256, and write a standard dataset."""
    if name == "cryptopunks":
        from training.datasets.cryptopunks import fetch_cryptopunks

        _report(fetch_cryptopunks(out / "cryptopunks"))
    elif name == "nouns":
        from training.datasets.nouns import fetch_nouns

        _report(fetch_nouns(out / "nouns", count=count, seed=seed))
    else:
        raise typer.BadParameter(f"unknown dataset {name!r}; choose cryptopunks or nouns", param_hint="NAME")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

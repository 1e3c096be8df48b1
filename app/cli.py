"""Serving commands (`nftlens serve`, `nftlens catalog ...`). Mounted by the root CLI in training/cli.py."""

from __future__ import annotations

import typer

serve_app = typer.Typer(add_completion=False)


@serve_app.command("serve")
def serve(
    host: str = typer.Option(None, help="bind address (NFTLENS_HOST, default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (NFTLENS_PORT, default 8000)"),
    model_dir: str = typer.Option(None, help="folder with model.onnx + model.json (NFTLENS_MODEL_DIR)"),
    catalog: str = typer.Option(None, help="catalog URL or SQLite path (NFTLENS_CATALOG)"),
) -> None:
    """Run the HTTP service (uvicorn)."""
    import uvicorn

    from app.config import Settings
    from app.main import create_app

    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "model_dir": model_dir, "catalog": catalog}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)

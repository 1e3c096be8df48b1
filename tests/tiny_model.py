"""A small real model (resnet18, 32 px, a few steps) trained and exported by the real pipeline."""

from __future__ import annotations

from pathlib import Path

from app.preprocessing import PreprocessConfig, ResizeConfig


def export_tiny_model(out: Path, data: list[Path], steps: int = 4) -> Path:
    from training.export import export
    from training.train import TrainConfig, gather, train

    cfg = TrainConfig(
        data=[str(d) for d in data],
        label_field="collection",
        arch="resnet18",
        epochs=1,
        max_steps=steps,
        batch_size=16,
        num_workers=0,
        max_per_label=64,
        out=str(out / "run"),
        preprocess=PreprocessConfig(resize=ResizeConfig(size=32)),
        name="tiny",
        version="0.0.1",
    )
    best = train(cfg)
    paths, *_ = gather(cfg, "test")
    export(best, out / "model", paths[:: max(1, len(paths) // 8)][:8], command="tests/tiny_model.py")
    return out / "model"

"""Fine-tune a timm model on standard datasets with the shared preprocessing contract."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from app.preprocessing import PreprocessConfig
from training.augment import train_augmentation
from training.datasets import load_dataset
from training.degrade import random_degradation
from training.loader import ImageDataset
from training.metrics import classification_report
from training.models import create_model


class TrainConfig(BaseModel):
    """One training run. Saved as `config.yaml` beside its outputs; load one with `--config`."""

    model_config = ConfigDict(extra="forbid")

    name: str = "nftlens"
    version: str = "0.1.0"
    data: list[str] = Field(..., min_length=1, description="standard dataset folders")
    label_field: Literal["label", "collection"] = "label"
    exclude: dict[str, list[str]] = Field({}, description="drop rows whose column has one of these values")
    max_per_label: int | None = Field(None, description="cap training images per label (CPU budgets)")
    arch: str = "resnet18"
    pretrained: str = "none"
    preprocess: PreprocessConfig = PreprocessConfig()
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "adam"] = "adamw"
    label_smoothing: float = 0.0
    balance: Literal["sampler", "weights", "none"] = "sampler"
    augment: bool = True
    degrade_prob: float = Field(
        0.5, ge=0, le=1, description="share of training images given a random degradation"
    )
    patience: int = Field(3, description="early stop after this many epochs without a better val macro-F1")
    max_steps: int | None = Field(None, description="cap optimiser steps per epoch (smoke tests)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    num_workers: int = 2
    out: str = "runs/nftlens"


def load_config(path: str | Path, **overrides) -> TrainConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(raw)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gather(cfg: TrainConfig, split: str) -> tuple[list[Path], list[str], list[dict], list[dict]]:
    """Paths, labels, rows and data cards for one split across all datasets."""
    paths, labels, rows, cards = [], [], [], []
    for root in cfg.data:
        ds = load_dataset(root)
        cards.append(ds.card)
        for r in ds.split(split):
            if any(r.get(col) in values for col, values in cfg.exclude.items()):
                continue
            paths.append(ds.image_path(r))
            labels.append(r[cfg.label_field])
            rows.append(r)
    if split == "train" and cfg.max_per_label:
        rng = random.Random(cfg.seed)
        keep: dict[str, list[int]] = {}
        for i, lab in enumerate(labels):
            keep.setdefault(lab, []).append(i)
        chosen = sorted(
            i
            for idx in keep.values()
            for i in (rng.sample(idx, cfg.max_per_label) if len(idx) > cfg.max_per_label else idx)
        )
        paths, labels, rows = (
            [paths[i] for i in chosen],
            [labels[i] for i in chosen],
            [rows[i] for i in chosen],
        )
    return paths, labels, rows, cards


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no GPU")
    return torch.device(name)


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, desc: str = "eval"
) -> np.ndarray:
    model.eval()
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False):
        out.append(model(x.to(device)).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train; write config.yaml, history.json, last.pt and best.pt (by val macro-F1) into `cfg.out`."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    train_paths, train_labels, _, cards = gather(cfg, "train")
    val_paths, val_labels, _, _ = gather(cfg, "val")
    labels = sorted(set(train_labels))
    if len(labels) < 2:
        raise ValueError(f"need at least 2 labels to train, found {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    y_train = np.array([index[lab] for lab in train_labels])
    val_keep = [i for i, lab in enumerate(val_labels) if lab in index]
    y_val = np.array([index[val_labels[i]] for i in val_keep])

    train_ds = ImageDataset(
        train_paths,
        y_train.tolist(),
        cfg.preprocess,
        degrade=random_degradation(cfg.degrade_prob) if cfg.degrade_prob > 0 else None,
        augment=train_augmentation() if cfg.augment else None,
        seed=cfg.seed,
    )
    val_ds = ImageDataset([val_paths[i] for i in val_keep], y_val.tolist(), cfg.preprocess)
    counts = np.bincount(y_train, minlength=len(labels)).astype(float)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if cfg.balance == "sampler":
        weights = (1.0 / counts)[y_train]
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(y_train), generator=gen)
    loader_kw = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "persistent_workers": False}
    train_loader = DataLoader(
        train_ds,
        sampler=sampler,
        shuffle=sampler is None,
        generator=gen,
        drop_last=len(y_train) > cfg.batch_size,
        **loader_kw,
    )
    val_loader = DataLoader(val_ds, shuffle=False, **loader_kw)

    model = create_model(cfg.arch, len(labels), cfg.pretrained).to(device)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = min(len(train_loader), cfg.max_steps or len(train_loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, cfg.epochs * steps_per_epoch)
    )
    class_weights = (
        torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
        if cfg.balance == "weights"
        else None
    )
    criterion = torch.nn.CrossEntropyLoss(
        weight=class_weights.to(device) if class_weights is not None else None,
        label_smoothing=cfg.label_smoothing,
    )
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_f1, stale, history = 0, -1.0, 0, []
    if resume and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_f1, stale, history = (
            ckpt["epoch"] + 1,
            ckpt["best_f1"],
            ckpt["stale"],
            ckpt["history"],
        )
        tqdm.write(f"resumed from epoch {ckpt['epoch']} (best val macro-F1 {best_f1:.4f})")

    meta = {"labels": labels, "arch": cfg.arch, "config": cfg.model_dump(mode="json"), "data_cards": cards}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_ds.epoch = epoch
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                lr=f"{scheduler.get_last_lr()[0]:.1e}",
            )
        report = classification_report(y_val, predict(model, val_loader, device, "val"), labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_acc": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "seconds": round(time.time() - t0, 1),
        }
        history.append(row)
        tqdm.write(json.dumps(row))
        improved = report["macro_f1"] > best_f1
        if improved:
            best_f1, stale = report["macro_f1"], 0
            torch.save({**meta, "model": model.state_dict(), "epoch": epoch, "val": report}, out / "best.pt")
        else:
            stale += 1
        torch.save(
            {
                **meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "best_f1": best_f1,
                "stale": stale,
                "history": history,
            },
            out / "last.pt",
        )
        (out / "history.json").write_text(json.dumps(history, indent=2))
        if stale >= cfg.patience:
            tqdm.write(f"early stop: no better val macro-F1 for {cfg.patience} epochs")
            break
    return out / "best.pt"

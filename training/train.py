"""Fine-tune a timm model on standard datasets with the shared preprocessing contract."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, RandomSampler, Sampler
from tqdm import tqdm

from app.preprocessing import PreprocessConfig
from training.augment import train_augmentation
from training.datasets import load_dataset
from training.datasets.select import select_rows
from training.degrade import random_degradation
from training.edits import random_edit
from training.loader import ImageDataset
from training.metrics import classification_report
from training.models import NftNet, create_net
from training.sampling import EpochBatchSampler


class TrainConfig(BaseModel):
    """One training run. Saved as `config.yaml` beside its outputs; load one with `--config`."""

    model_config = ConfigDict(extra="forbid")

    name: str = "nftlens"
    version: str = "0.1.0"
    data: list[str] = Field(..., min_length=1, description="standard dataset folders")
    label_field: Literal["label", "collection"] = "label"
    exclude: dict[str, list[str]] = Field({}, description="drop rows whose column has one of these values")
    holdout: list[str] = Field(
        [], description="dataset folders whose tokens (collection+token_id) never enter train or val"
    )
    max_per_label: int | None = Field(
        None, description="training images per label and epoch, drawn afresh each epoch (CPU budgets)"
    )
    groups_per_batch: int | None = Field(
        None, description="labels per batch (hard negatives for the instance loss); None: mixed batches"
    )
    instance_dim: int = Field(128, ge=0, description="instance-embedding size; 0 trains no copy head")
    instance_weight: float = Field(1.0, ge=0, description="weight of the contrastive instance loss")
    instance_temperature: float = Field(0.1, gt=0, description="InfoNCE temperature")
    edit_identity_prob: float = Field(0.2, ge=0, le=1, description="share of views left unedited")
    edit_weights: dict[str, float] = Field(
        {}, description="relative weight of each copymint edit in training views (unnamed edits: 1)"
    )
    koleo_weight: float = Field(
        0.0, ge=0, description="KoLeo spreading term on the instance embedding (SSCD); 0 turns it off"
    )
    outliers: list[str] = Field(
        [],
        description="dataset folders of auxiliary outliers (e.g. data/avatars), shown to the classifier with a "
        "uniform target (outlier exposure): an unseen collection then scores as unknown",
    )
    outlier_weight: float = Field(0.5, ge=0, description="weight of the outlier-exposure loss")
    outliers_per_batch: int = Field(32, ge=1, description="outlier images added to every training batch")
    outlier_edits: bool = Field(
        False,
        description="give outliers the known images' copy edits (or augmentation), not only their "
        "degradations, so that an edit cannot come to mean 'known' (about the same on one held-out "
        "collection: reports/openset-oe-edits against reports/openset-oe)",
    )
    select: Literal["val_macro_f1", "last"] = Field(
        "val_macro_f1", description="which epoch's weights become best.pt"
    )
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

    @property
    def views(self) -> int:
        return 2 if self.instance_dim and self.instance_weight > 0 else 1


def load_config(path: str | Path, **overrides) -> TrainConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.model_validate(raw)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gather(cfg: TrainConfig, split: str) -> tuple[list[Path], list[str], list[dict], list[dict]]:
    """Paths, labels, rows and data cards for one split across all datasets (holdout tokens dropped).

    The per-label cap is not applied here: `EpochBatchSampler` draws it afresh each epoch.
    """
    paths, rows = select_rows(cfg.data, split, cfg.label_field, cfg.exclude, cfg.holdout)
    cards = [load_dataset(root).card for root in cfg.data]
    return paths, [r["_label"] for r in rows], rows, cards


def val_split(cfg: TrainConfig, index: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    """The validation images whose label is one of `index`'s, and their label indices."""
    paths, labels, _, _ = gather(cfg, "val")
    keep = [i for i, lab in enumerate(labels) if lab in index]
    return [paths[i] for i in keep], np.array([index[labels[i]] for i in keep])


def degradation(cfg: TrainConfig):
    """The run's random degradation of training images (None when `degrade_prob` is 0)."""
    return random_degradation(cfg.degrade_prob) if cfg.degrade_prob > 0 else None


def view_transforms(cfg: TrainConfig) -> dict:
    """What a training view gets besides its degradation: copy edits when the run trains an instance head,
    the augmentation otherwise (ImageDataset's `augment` and `edit`)."""
    return {
        "augment": train_augmentation() if cfg.augment and cfg.views == 1 else None,
        "edit": random_edit(cfg.edit_identity_prob, weights=cfg.edit_weights) if cfg.views == 2 else None,
    }


class FreshDraws(Sampler[int]):
    """Endless draws with replacement from `n` items, the k-th draw of item i given as index i + k * n, so
    that `ImageDataset` edits and degrades every draw afresh (as known views are, every epoch)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self) -> Iterator[int]:
        for k in itertools.count():
            yield int(torch.randint(self.n, (1,), generator=self.generator)) + k * self.n


def outlier_batches(cfg: TrainConfig) -> Iterator[torch.Tensor]:
    """Endless batches of `cfg.outliers` training images (seeded draws with replacement), or none.

    By default they get the known images' degradations, drawn once per image (how reports/openset-oe was
    made). With `cfg.outlier_edits` they get what a known view gets: one copy-edited view each when the
    run trains an instance head, the augmentation otherwise, with fresh edits and degradations at every
    draw (`FreshDraws`), so that an edit cannot come to mean "known".
    """
    if not cfg.outliers:
        return iter(())
    paths, _ = select_rows(cfg.outliers, "train", "collection")
    extra = view_transforms(cfg) if cfg.outlier_edits else {}  # one view per outlier, never a pair
    ds = ImageDataset(
        paths, [0] * len(paths), cfg.preprocess, degrade=degradation(cfg), seed=cfg.seed + 1, **extra
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.outlier_edits:
        sampler = FreshDraws(len(ds), gen)
    else:
        sampler = RandomSampler(ds, replacement=True, num_samples=1 << 30, generator=gen)
    loader = DataLoader(ds, batch_size=cfg.outliers_per_batch, sampler=sampler, num_workers=cfg.num_workers)
    return (x for x, _ in loader)


def uniform_ce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the uniform distribution: the outlier-exposure loss (Hendrycks et al. 2019)."""
    return -logits.float().log_softmax(1).mean(1).mean()


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


def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over [N, 2, D] unit vectors: view 0 of item i must pick view 1 of item i among all
    2N views (every other item, of whatever collection, is a negative)."""
    n = z.shape[0]
    flat = z.reshape(2 * n, -1)
    sims = flat @ flat.T / temperature
    sims.fill_diagonal_(float("-inf"))
    target = torch.arange(2 * n, device=z.device).reshape(n, 2).flip(1).reshape(-1)
    return torch.nn.functional.cross_entropy(sims, target)


def koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo entropy term (Sablayrolles et al. 2019, as SSCD uses it) over [N, 2, D] unit vectors: minus the
    mean log distance from each view to its nearest view of another item, so distinct tokens spread out and
    one copy threshold separates them from edited copies."""
    n = z.shape[0]
    flat = z.reshape(2 * n, -1)
    dist = torch.cdist(flat, flat)
    same = torch.arange(n, device=z.device).repeat_interleave(2)
    dist = dist.masked_fill(same[:, None] == same[None, :], float("inf"))
    return -torch.log(dist.min(1).values + eps).mean()


@torch.no_grad()
def copy_top1(model: NftNet, originals: torch.Tensor, edited: torch.Tensor) -> float:
    """Share of edited views whose nearest original (instance space) is their own source."""
    model.eval()
    a = torch.cat([model.forward_all(originals[s : s + 128])[2] for s in range(0, len(originals), 128)])
    b = torch.cat([model.forward_all(edited[s : s + 128])[2] for s in range(0, len(edited), 128)])
    return float(((b @ a.T).argmax(1) == torch.arange(len(b))).float().mean())


def _copy_probe(cfg: TrainConfig, paths: list[Path], n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of val images and one random copymint edit of each, to follow the instance head."""
    pick = paths[:: max(1, len(paths) // n)][:n]
    ds = ImageDataset(pick, [0] * len(pick), cfg.preprocess, edit=random_edit(0.0), seed=cfg.seed + 1)
    plain = ImageDataset(pick, [0] * len(pick), cfg.preprocess)
    return torch.stack([plain[i][0] for i in range(len(pick))]), torch.stack(
        [ds[i][0] for i in range(len(pick))]
    )


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train; write config.yaml, history.json, last.pt and best.pt (see `select`) into `cfg.out`."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    train_paths, train_labels, _, cards = gather(cfg, "train")
    labels = sorted(set(train_labels))
    if len(labels) < 2:
        raise ValueError(f"need at least 2 labels to train, found {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    y_train = np.array([index[lab] for lab in train_labels])
    val_paths, y_val = val_split(cfg, index)
    views = cfg.views

    train_ds = ImageDataset(
        train_paths,
        y_train.tolist(),
        cfg.preprocess,
        degrade=degradation(cfg),
        views=views,
        **view_transforms(cfg),
        seed=cfg.seed,
    )
    val_ds = ImageDataset(val_paths, y_val.tolist(), cfg.preprocess)
    outliers = outlier_batches(cfg)
    counts = np.bincount(y_train, minlength=len(labels)).astype(float)
    batches = EpochBatchSampler(
        train_labels,
        cfg.batch_size,
        cfg.max_per_label,
        cfg.groups_per_batch,
        seed=cfg.seed,
        drop_last=len(y_train) > cfg.batch_size,
        balanced=cfg.balance == "sampler",
    )
    loader_kw = {"num_workers": cfg.num_workers, "persistent_workers": False}
    train_loader = DataLoader(train_ds, batch_sampler=batches, **loader_kw)
    val_loader = DataLoader(val_ds, shuffle=False, batch_size=cfg.batch_size, **loader_kw)
    probe = _copy_probe(cfg, val_paths) if views == 2 else None

    model = create_net(cfg.arch, len(labels), cfg.pretrained, cfg.instance_dim if views == 2 else 0).to(
        device
    )
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = min(len(batches), cfg.max_steps or len(batches))
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

    meta = {
        "labels": labels,
        "arch": cfg.arch,
        "instance_dim": cfg.instance_dim if views == 2 else 0,
        "config": cfg.model_dump(mode="json"),
        "data_cards": cards,
    }
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        train_ds.epoch = epoch
        batches.set_epoch(epoch)
        t0, seen, loss_sum, inst_sum, oe_sum, correct = time.time(), 0, 0.0, 0.0, 0.0, 0
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        for step, (x, y) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if views == 2:  # [B,2,3,S,S] -> [2B,3,S,S], labels repeated per view
                x, y = x.flatten(0, 1), y.repeat_interleave(2)
            xo = next(outliers, None)
            if xo is not None:  # one forward pass: BatchNorm sees known and outlier images together
                x = torch.cat([x, xo.to(device, non_blocking=True)])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits, _, inst = model.forward_all(x)
                if xo is not None:
                    n = len(y)
                    oe_loss = uniform_ce(logits[n:])
                    logits, inst = logits[:n], inst[:n] if inst is not None else None
                loss = criterion(logits, y)
                if xo is not None:
                    loss = loss + cfg.outlier_weight * oe_loss
                    oe_sum += float(oe_loss.detach()) * len(y)
                if views == 2:
                    pairs = inst.float().reshape(-1, 2, inst.shape[1])
                    inst_loss = info_nce(pairs, cfg.instance_temperature)
                    if cfg.koleo_weight:
                        inst_loss = inst_loss + cfg.koleo_weight * koleo(pairs)
                    loss = loss + cfg.instance_weight * inst_loss
                    inst_sum += float(inst_loss.detach()) * len(y)
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
                **({"nce": f"{inst_sum / seen:.3f}"} if views == 2 else {}),
                **({"oe": f"{oe_sum / seen:.3f}"} if cfg.outliers else {}),
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
        if cfg.outliers:
            row["train_outlier_loss"] = oe_sum / max(seen, 1)
        if probe is not None:
            row["train_instance_loss"] = inst_sum / max(seen, 1)
            row["val_copy_top1"] = copy_top1(model, probe[0].to(device), probe[1].to(device))
        history.append(row)
        tqdm.write(json.dumps(row))
        improved = report["macro_f1"] > best_f1
        if improved:
            best_f1, stale = report["macro_f1"], 0
        else:
            stale += 1
        if improved if cfg.select == "val_macro_f1" else epoch + 1 == cfg.epochs:
            torch.save({**meta, "model": model.state_dict(), "epoch": epoch, "val": report}, out / "best.pt")
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
        if cfg.select == "val_macro_f1" and stale >= cfg.patience:
            tqdm.write(f"early stop: no better val macro-F1 for {cfg.patience} epochs")
            break
    if cfg.groups_per_batch and cfg.select == "last":
        # batches of a few collections leave BatchNorm's running statistics biased towards the last ones:
        # re-estimate them over mixed batches of the whole training set, then validate and keep that
        recalibrate_batchnorm(model, train_paths, y_train.tolist(), cfg, device)
        report = classification_report(y_val, predict(model, val_loader, device, "val"), labels)
        tqdm.write(json.dumps({"batchnorm_recalibrated": True, "val_macro_f1": report["macro_f1"]}))
        torch.save(
            {
                **meta,
                "model": model.state_dict(),
                "epoch": cfg.epochs - 1,
                "val": report,
                "bn_recalibrated": True,
            },
            out / "best.pt",
        )
    elif not (out / "best.pt").is_file():  # `last` with early stop or an interrupted schedule
        torch.save({**meta, "model": model.state_dict(), "epoch": epoch, "val": report}, out / "best.pt")
    return out / "best.pt"


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module, paths: list[Path], targets: list[int], cfg: TrainConfig, device, batches: int = 60
) -> None:
    """Cumulative BatchNorm statistics over `batches` shuffled, mixed batches of training images (seeded)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    ds = ImageDataset(
        paths,
        targets,
        cfg.preprocess,
        degrade=degradation(cfg),
        edit=random_edit(cfg.edit_identity_prob) if cfg.views == 2 else None,
        seed=cfg.seed + 7,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, num_workers=cfg.num_workers
    )
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for i, (x, _) in enumerate(tqdm(loader, total=batches, desc="batchnorm", leave=False)):
        if i >= batches:
            break
        model(x.to(device))
    for m in norms:
        m.momentum = 0.1
    model.eval()


REFIT_FILE = "refit.json"  # written by refit_head beside its best.pt: what it refitted, how


def refit_head(checkpoint: str | Path, out: str | Path, epochs: int = 2, lr: float = 1e-3) -> Path:
    """Refit the collection classifier (the last linear layer) of a trained net on frozen features.

    Batches of a few collections (`groups_per_batch`, the instance loss's hard negatives) and the final
    BatchNorm re-estimate can leave the linear classifier out of step with features that still separate
    the collections. This trains that layer alone, on mixed balanced batches of unedited training views
    with the run's degradations, everything else frozen in eval mode (so the embedding and instance
    outputs are unchanged), and writes OUT/best.pt with its validation report and OUT/history.json.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.model_validate({**ckpt["config"], "out": str(out)})
    seed_everything(cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels, device = ckpt["labels"], pick_device(cfg.device)
    model = create_net(cfg.arch, len(labels), "none", ckpt.get("instance_dim", 0))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    head = model.backbone.get_classifier()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)

    train_paths, train_labels, _, _ = gather(cfg, "train")
    index = {lab: i for i, lab in enumerate(labels)}
    keep = [i for i, lab in enumerate(train_labels) if lab in index]
    y = [index[train_labels[i]] for i in keep]
    val_paths, y_val = val_split(cfg, index)
    ds = ImageDataset(
        [train_paths[i] for i in keep],
        y,
        cfg.preprocess,
        degrade=degradation(cfg),
        seed=cfg.seed + 11,
    )
    batches = EpochBatchSampler(
        [train_labels[i] for i in keep], cfg.batch_size, cfg.max_per_label, None, seed=cfg.seed + 11
    )
    loader = DataLoader(ds, batch_sampler=batches, num_workers=cfg.num_workers)
    val_loader = DataLoader(
        ImageDataset(val_paths, y_val.tolist(), cfg.preprocess),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
    )
    before = classification_report(y_val, predict(model, val_loader, device, "val"), labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(batches)))
    history = [{"head_refit": "before", "val_acc": before["accuracy"], "val_macro_f1": before["macro_f1"]}]
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        ds.epoch = epoch
        t0, seen, loss_sum = time.time(), 0, 0.0
        bar = tqdm(loader, total=len(batches), desc=f"head refit {epoch + 1}/{epochs}")
        for x, target in bar:
            x, target = x.to(device), target.to(device)
            with torch.no_grad():
                features = model.pre_logits(model.backbone.forward_features(x))
            loss = torch.nn.functional.cross_entropy(model.classify(features), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(target)
            loss_sum += float(loss.detach()) * len(target)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        report = classification_report(y_val, predict(model, val_loader, device, "val"), labels)
        row = {
            "head_refit_epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "val_acc": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "seconds": round(time.time() - t0, 1),
        }
        history.append(row)
        tqdm.write(json.dumps(row))
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "val", "optimizer", "scheduler")}
    meta["head_refit"] = {"from": str(checkpoint), "epochs": epochs, "lr": lr}
    torch.save({**meta, "model": model.state_dict(), "val": report}, out / "best.pt")
    (out / REFIT_FILE).write_text(json.dumps(meta["head_refit"], indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    return out / "best.pt"

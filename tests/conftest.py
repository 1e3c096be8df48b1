"""Shared fixtures: real NFT datasets fetched from the registries (cached), real images."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def punks(tmp_path_factory):
    """All 10,000 CryptoPunks in the standard format (download cached in NFTLENS_CACHE_DIR)."""
    from training.datasets.cryptopunks import fetch_cryptopunks

    return fetch_cryptopunks(tmp_path_factory.mktemp("data") / "cryptopunks", progress=False)


@pytest.fixture(scope="session")
def nouns(tmp_path_factory):
    from training.datasets.nouns import fetch_nouns

    return fetch_nouns(tmp_path_factory.mktemp("data") / "nouns", count=60, seed=1, progress=False)


@pytest.fixture(scope="session")
def avatars(tmp_path_factory):
    """Open-set outliers: DiceBear avatars rendered with the pinned npm packages (two per style)."""
    from training.datasets.avatars import fetch_avatars

    return fetch_avatars(tmp_path_factory.mktemp("data") / "avatars", count=62, seed=3, progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "nft-thumbs" / "MANIFEST.csv").is_file():
        pytest.skip(
            f"shared NFT data not found at {SHARED_DATA} (it exists only in the project's dev/CI machines)"
        )
    return SHARED_DATA


DEFAULT_MODEL = ROOT / "models" / "default"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, punks, nouns) -> Path:
    """The shipped default model; without it (before one is trained), a tiny model exported here."""
    if (DEFAULT_MODEL / "model.json").is_file():
        return DEFAULT_MODEL
    pytest.importorskip("torch", reason="no models/default and no torch to export a small model")
    from tests.tiny_model import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("tiny"), [punks.root, nouns.root])

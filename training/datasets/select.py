"""Choose dataset rows for a split: the one selector training, calibration and evaluation share.

`holdout` names dataset folders whose tokens (collection + token_id) are test material: any row of the
selected datasets that is one of those tokens is dropped, whatever split its own dataset gave it. That is
how the test punks of `nft-collections` never enter CryptoPunks' training or validation split.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.standard import load_dataset


def token_key(row: dict) -> str:
    """A selected row's token: collection/token id (its path where it has no id)."""
    return f"{row['collection']}/{row['token_id'] or row['path']}"


def holdout_keys(folders: list[str]) -> set[tuple[str, str]]:
    """(collection, token_id) of every row of the holdout datasets that has a token id."""
    keys = set()
    for root in folders:
        for r in load_dataset(root).rows:
            if r.get("token_id"):
                keys.add((r["collection"], r["token_id"]))
    return keys


def select_rows(
    data: list[str],
    split: str,
    label_field: str = "label",
    exclude: dict[str, list[str]] | None = None,
    holdout: list[str] | None = None,
) -> tuple[list[Path], list[dict]]:
    """Image paths and rows (with `_label`) of `split` (`all` for every row) across `data`."""
    held = holdout_keys(holdout) if holdout else set()
    paths, rows = [], []
    for root in data:
        ds = load_dataset(root)
        for r in ds.rows if split == "all" else ds.split(split):
            if exclude and any(r.get(c) in v for c, v in exclude.items()):
                continue
            if (r["collection"], r["token_id"]) in held:
                continue
            paths.append(ds.image_path(r))
            rows.append({**r, "_label": r[label_field]})
    return paths, rows


def select_spec_rows(
    specs: list[str], split: str = "all", label_field: str = "label", skip_missing: bool = False
) -> tuple[list[Path], list[dict]]:
    """`select_rows` over folders written `DIR` or `DIR@SPLIT` (that folder's split instead of `split`);
    with `skip_missing`, folders without a manifest are passed over."""
    paths, rows = [], []
    for spec in specs:
        root, _, own = spec.partition("@")
        if skip_missing and not Path(root, "manifest.csv").is_file():
            continue
        p, r = select_rows([root], own or split, label_field)
        paths += p
        rows += r
    return paths, rows

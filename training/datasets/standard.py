"""The standard dataset folder every source is turned into.

<root>/manifest.csv     path, collection, token_id, label, split, then any attribute columns
<root>/images/...       the image files (paths in the manifest are relative to <root>)
<root>/datacard.json    counts per label and split, source package, version and sha256
<root>/DATACARD.md      the same, for people
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.datasets.splits import SPLITS, assign_splits

MANIFEST_NAME = "manifest.csv"
CARD_NAME = "datacard.json"
BASE_COLUMNS = ("path", "collection", "token_id", "label", "split")


@dataclass
class Dataset:
    """A loaded standard dataset: its root folder and manifest rows (all values are strings)."""

    root: Path
    rows: list[dict[str, str]]
    card: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted({r["label"] for r in self.rows})

    def split(self, name: str) -> list[dict[str, str]]:
        return [r for r in self.rows if r["split"] == name]

    def image_path(self, row: dict[str, str]) -> Path:
        return self.root / row["path"]


def count_table(rows: list[dict]) -> dict[str, dict[str, int]]:
    """{label: {train, val, test, total}}."""
    counts = Counter((r["label"], r["split"]) for r in rows)
    table: dict[str, dict[str, int]] = {}
    for label in sorted({r["label"] for r in rows}):
        per = {s: counts.get((label, s), 0) for s in SPLITS}
        per["total"] = sum(per.values())
        table[label] = per
    return table


def _card_markdown(card: dict) -> str:
    lines = [f"# Data card: {card['name']}", "", card.get("description", ""), ""]
    src = card.get("source", {})
    if src:
        lines += ["## Source", ""] + [f"- {k}: `{v}`" for k, v in src.items()] + [""]
    lines += ["## Counts", "", "| label | train | val | test | total |", "|---|---:|---:|---:|---:|"]
    for label, c in card["counts"].items():
        lines.append(f"| {label} | {c['train']} | {c['val']} | {c['test']} | {c['total']} |")
    t = card["totals"]
    lines.append(f"| **all** | {t['train']} | {t['val']} | {t['test']} | {t['total']} |")
    return "\n".join(lines) + "\n"


def write_dataset(
    root: Path,
    rows: list[dict],
    name: str,
    description: str,
    source: dict | None = None,
    split_by: str = "label",
) -> Dataset:
    """Assign splits (unless rows carry one), write manifest.csv and the data card, return the Dataset."""
    root.mkdir(parents=True, exist_ok=True)
    if any(not r.get("split") for r in rows):
        for row, split in zip(rows, assign_splits(rows, key=split_by), strict=True):
            row["split"] = split
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in BASE_COLUMNS]
    with open(root / MANIFEST_NAME, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*BASE_COLUMNS, *extra], extrasaction="raise")
        writer.writeheader()
        writer.writerows(rows)
    counts = count_table(rows)
    totals = {s: sum(c[s] for c in counts.values()) for s in (*SPLITS, "total")}
    card = {
        "name": name,
        "description": description,
        "source": source or {},
        "labels": list(counts),
        "counts": counts,
        "totals": totals,
        "split_rule": f"stratified by {split_by}; sha256(collection/token_id) order; 80/10/10",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (root / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    (root / "DATACARD.md").write_text(_card_markdown(card))
    return Dataset(root=root, rows=[{k: str(v) for k, v in r.items()} for r in rows], card=card)


def load_dataset(root: str | Path) -> Dataset:
    """Read a standard dataset folder (as written by `nftlens data fetch|import`)."""
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} not found: create it with `nftlens data fetch` or `nftlens data import`"
        )
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in BASE_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{manifest} lacks columns {missing}")
    card_path = root / CARD_NAME
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return Dataset(root=root, rows=rows, card=card)

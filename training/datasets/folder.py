"""Import a user's images into the standard format.

Accepted sources:
- a folder of class folders: `DIR/<label>/*.png|jpg|jpeg|webp|gif|bmp`
- a CSV with columns `path,label[,token_id,collection]` (paths relative to the CSV)
- a folder with `MANIFEST.csv` (`collection,token_id,file`), as in ../shared/data/nft-*: label = collection
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from app.imaging import IMAGE_SUFFIXES
from training.datasets.standard import Dataset, write_dataset


def _from_class_folders(src: Path, collection: str) -> list[dict]:
    rows = []
    for label_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for f in sorted(label_dir.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append(
                    {"source": f, "label": label_dir.name, "token_id": f.stem, "collection": collection}
                )
    return rows


def _from_csv(csv_path: Path, collection: str) -> list[dict]:
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path} needs the columns path,label[,token_id,collection]")
        rows = []
        for r in reader:
            src = (csv_path.parent / r["path"]).resolve()
            rows.append(
                {
                    "source": src,
                    "label": r["label"],
                    "token_id": r.get("token_id") or src.stem,
                    "collection": r.get("collection") or collection,
                }
            )
    return rows


def _from_shared_manifest(src: Path) -> list[dict]:
    with open(src / "MANIFEST.csv", newline="") as fh:
        rows = []
        for r in csv.DictReader(fh):
            file = r["file"]
            rows.append(
                {
                    "source": src / file,
                    "label": r["collection"],
                    "collection": r["collection"],
                    "token_id": r["token_id"] or Path(file).stem.removesuffix("_hires"),
                    "file": file,
                    "hires": int(Path(file).stem.endswith("_hires")),
                }
            )
    return rows


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError):
        return False


def import_folder(src: Path, out: Path, collection: str | None = None, progress: bool = True) -> Dataset:
    """Copy images into `out/images/<label>/` and write the standard manifest + data card.

    Unreadable files are skipped and counted in the data card.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".csv":
        name = collection or src.parent.name
        found, kind = _from_csv(src, name), "csv"
    elif (src / "MANIFEST.csv").is_file():
        name = collection or src.name
        found, kind = _from_shared_manifest(src), "MANIFEST.csv"
    elif src.is_dir():
        name = collection or src.name
        found, kind = _from_class_folders(src, name), "class folders"
    else:
        raise FileNotFoundError(f"{src}: not a folder of class folders, a CSV, or a folder with MANIFEST.csv")
    if not found:
        raise ValueError(f"{src}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rows, skipped = [], []
    for item in tqdm(found, desc=f"import {name}", disable=not progress):
        source: Path = item.pop("source")
        if not source.is_file() or not _readable(source):
            skipped.append(str(source))
            continue
        rel = Path("images") / item["label"] / source.name
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / rel)
        rows.append(
            {
                "path": rel.as_posix(),
                "collection": item["collection"],
                "token_id": item["token_id"],
                "label": item["label"],
                "split": "",
                **{k: v for k, v in item.items() if k not in ("collection", "token_id", "label")},
            }
        )
    return write_dataset(
        out,
        rows,
        name=name,
        description=f"Imported from {src} ({kind}); {len(skipped)} unreadable files skipped.",
        source={"path": str(src.resolve()), "format": kind, "skipped": str(len(skipped))},
    )

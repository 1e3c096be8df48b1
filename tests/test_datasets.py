"""Real datasets from the registries, the import formats and deterministic splits."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets import load_dataset
from training.datasets.folder import import_folder
from training.datasets.nouns import NounsAssets, decode_part, render_noun
from training.datasets.packages import NOUNS_ASSETS, fetch_package
from training.datasets.splits import assign_splits


def test_cryptopunks_all_10000_with_five_types(punks):
    assert len(punks.rows) == 10_000
    types = Counter(r["label"] for r in punks.rows)
    assert types == {"alien": 9, "ape": 24, "zombie": 88, "female": 3840, "male": 6039}
    assert {r["collection"] for r in punks.rows} == {"cryptopunks"}
    attrs = [c for c in punks.rows[0] if c not in ("path", "collection", "token_id", "label", "split")]
    assert len(attrs) == 87
    # every type appears in every split (stratified)
    for label in types:
        assert {r["split"] for r in punks.rows if r["label"] == label} == {"train", "val", "test"}
    # re-read from disk: the manifest is the source of truth
    again = load_dataset(punks.root)
    assert again.rows[7804]["token_id"] == "7804" and again.rows[7804]["label"] == "alien"
    assert again.card["source"]["sha256"] and again.card["totals"]["total"] == 10_000


def test_punk_images_sit_on_the_cryptopunks_background(punks):
    img = np.asarray(Image.open(punks.image_path(punks.rows[0])))
    assert img.shape == (24, 24, 3)
    assert tuple(img[0, 0]) == (0x63, 0x85, 0x96)


# Glasses part 0 (`glasses-hip-rose`), rows 11-16, columns 7-22: the Nouns "noggles".
NOGGLES = [
    "...RRRRRR.RRRRRR",
    "...RWWKKR.RWWKKR",
    "RRRRWWKKRRRWWKKR",
    "RRRRWWKKRRRWWKKR",
    "R..RWWKKR.RWWKKR",
    "...RRRRRR.RRRRRR",
]


def test_nouns_part_decoder_matches_known_pixels():
    assets = NounsAssets.from_tarball(fetch_package(NOUNS_ASSETS))
    assert {k: len(v) for k, v in assets.parts.items()} == {
        "bodies": 30,
        "accessories": 143,
        "heads": 254,
        "glasses": 23,
    }
    part = assets.parts["glasses"][0]
    assert part["filename"] == "glasses-hip-rose"
    rgba = decode_part(part["data"], assets.palette)
    colours = {"R": (0xFF, 0x63, 0x8D), "W": (255, 255, 255), "K": (0, 0, 0)}
    for dy, row in enumerate(NOGGLES):
        for dx, ch in enumerate(row):
            px = rgba[11 + dy, 7 + dx]
            if ch == ".":
                assert px[3] == 0, (dy, dx)
            else:
                assert px[3] == 255 and tuple(px[:3]) == colours[ch], (dy, dx)
    assert rgba[:11].max() == 0 and rgba[17:].max() == 0  # nothing outside the part's rows
    # a full noun: background where no layer paints, glasses on top of the head
    noun = render_noun(assets, {"background": 1, "body": 0, "accessory": 0, "head": 0, "glasses": 0})
    assert tuple(noun[0, 0]) == (0xE1, 0xD7, 0xD5)
    assert tuple(noun[12, 11]) == (255, 255, 255) and tuple(noun[12, 13]) == (0, 0, 0)


def test_nouns_dataset_has_traits_and_one_label(nouns):
    assert len(nouns.rows) == 60 and {r["label"] for r in nouns.rows} == {"nouns"}
    row = nouns.rows[0]
    assert (
        row["head"].startswith("head-")
        and row["glasses"].startswith("glasses-")
        and row["body"].startswith("body-")
    )
    assert Image.open(nouns.image_path(row)).size == (32, 32)
    assert (
        len({(r["body"], r["accessory"], r["head"], r["glasses"], r["background"]) for r in nouns.rows}) == 60
    )


def test_avatar_outliers_cover_every_style_and_render_the_same_again(avatars, tmp_path):
    from training.datasets.avatars import fetch_avatars

    styles = Counter(r["style"] for r in avatars.rows)
    assert len(styles) == 31 and set(styles.values()) == {2}  # DiceBear 9's styles, in turn
    assert all(r["collection"] == f"avatars-{r['style']}" for r in avatars.rows)
    first = avatars.image_path(avatars.rows[0])
    with Image.open(first) as im:
        assert im.size == (128, 128)
    again = fetch_avatars(tmp_path / "again", count=1, seed=3, progress=False)
    assert again.image_path(again.rows[0]).read_bytes() == first.read_bytes()  # seeded: reproducible


def test_splits_are_deterministic_stratified_and_keep_pairs_together():
    rows = [{"collection": c, "token_id": str(i), "label": c} for c in ("a", "b") for i in range(200)]
    rows.append({"collection": "a", "token_id": "5", "label": "a"})  # a hi-res copy of a/5
    s1, s2 = assign_splits(rows), assign_splits(list(reversed(rows)))[::-1]
    assert s1 == s2
    for c in ("a", "b"):
        got = Counter(s for r, s in zip(rows, s1, strict=True) if r["label"] == c)
        assert got["test"] == 20 and got["val"] == 20
    assert s1[5] == s1[-1]


def _write_png(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_import_class_folders_and_csv(tmp_path):
    src = tmp_path / "mine"
    for i in range(5):
        _write_png(src / "cats" / f"{i}.png", (200, 0, 0))
        _write_png(src / "dogs" / f"{i}.png", (0, 0, 200))
    (src / "dogs" / "broken.png").write_bytes(b"not an image")
    ds = import_folder(src, tmp_path / "out", collection="pets", progress=False)
    assert Counter(r["label"] for r in ds.rows) == {"cats": 5, "dogs": 5}
    assert ds.card["source"]["skipped"] == "1"
    assert all((ds.root / r["path"]).is_file() for r in ds.rows)
    assert {r["collection"] for r in ds.rows} == {"pets"}

    table = tmp_path / "list.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "token_id"])
        w.writerows([[f"mine/cats/{i}.png", "feline", f"t{i}"] for i in range(3)])
    ds2 = import_folder(table, tmp_path / "out2", progress=False)
    assert [r["token_id"] for r in ds2.rows] == ["t0", "t1", "t2"] and ds2.labels == ["feline"]


def test_import_reads_shared_manifests(shared_data, tmp_path):
    thumbs = import_folder(shared_data / "nft-thumbs", tmp_path / "thumbs", progress=False)
    assert len(thumbs.rows) == 10_000 and len(thumbs.labels) == 10
    test = import_folder(shared_data / "nft-collections", tmp_path / "coll", progress=False)
    hires = [r for r in test.rows if r["hires"] == "1"]
    assert len(hires) == 36 and "alien_frens" in test.labels
    thumb_ids = {(r["collection"], r["token_id"]) for r in test.rows if r["hires"] == "0"}
    assert all((r["collection"], r["token_id"]) in thumb_ids for r in hires)

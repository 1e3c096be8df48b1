"""Candidate checks of the copy search: keypoints on real painted thumbnails, and the order they make."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging import decode_image
from app.keypoints import MIN_INLIERS, Match, features, match
from app.verify import Check, check_candidates, colour_check, verified_order

BACKGROUND = (99, 133, 150)


@pytest.fixture(scope="module")
def apes(shared_data) -> list[np.ndarray]:
    """Six real BAYC thumbnails: one collection, one base drawing, different details."""
    files = sorted((shared_data / "nft-thumbs" / "bayc").glob("*.webp"))[:6]
    return [decode_image(f.read_bytes(), BACKGROUND) for f in files]


@pytest.mark.parametrize(
    "edit", ["crop_zoom", "background_swap", "saturate", "logo", "border", "mirror_reencode"]
)
def test_an_edited_painting_keeps_more_keypoints_with_its_original_than_with_its_siblings(apes, edit):
    from training.edits import apply_edit

    for j, ape in enumerate(apes):
        query = apply_edit(edit, ape, np.random.default_rng(j))
        checks = check_candidates(query, apes)
        assert all(c.layout is None and c.keypoints is not None for c in checks)
        own = checks[j].keypoints
        assert own >= MIN_INLIERS and own > max(c.keypoints for k, c in enumerate(checks) if k != j), (
            edit,
            j,
            [c.keypoints for c in checks],
        )
        assert verified_order([0.5] * len(apes), checks)[0] == j
        # aligned, the copy shows more of its original's figure in its colours than of any sibling's
        siblings = [c.colours for k, c in enumerate(checks) if k != j and c.colours is not None]
        assert checks[j].colours > max(siblings, default=0.0), (edit, j, checks[j].colours, siblings)


def test_a_flipped_painting_is_checked_facing_its_candidates_way(apes):
    """SIFT matches no drawing to its mirror image: a flipped, re-encoded copy is turned back (the way its
    candidates agree with most, siblings included) before its keypoints and colours are compared;
    without keypoints, the colours choose. An unflipped query stays as it is."""
    from app.verify import facing
    from training.edits import apply_edit

    def features_of(i, image):
        return features(image)

    for j, ape in enumerate(apes):
        flipped = apply_edit("mirror_reencode", ape, np.random.default_rng(j))
        others = apes[:j] + apes[j + 1 :]  # the original itself need not be among the first candidates
        for keypoints in (True, False):
            rgb, _, found, _ = facing(flipped, None, others, keypoints, features_of)
            assert np.array_equal(rgb, flipped[:, ::-1]) and (found is not None) == keypoints
            plain, _, _, _ = facing(ape, None, others, keypoints, features_of)
            assert plain is ape
        checks = check_candidates(flipped, apes, keypoints=False)
        assert checks[j].colours > 0.9 > max(c.colours for k, c in enumerate(checks) if k != j)


def test_a_painting_faces_the_way_its_best_candidate_agrees_not_its_first_ones(apes):
    """An unflipped crop whose first candidates are siblings facing the other way (their mirror images
    share the base drawing with the query's mirror image) and whose original comes fourth: the original
    agrees most, so the query stays as it is, and the original is checked first with its transform."""
    from app.verify import facing
    from training.edits import apply_edit

    def features_of(i, image):
        return features(image)

    for j, ape in enumerate(apes):
        query = apply_edit("crop_zoom", ape, np.random.default_rng(j))
        turned = [np.ascontiguousarray(a[:, ::-1]) for k, a in enumerate(apes) if k != j][:3]
        candidates = [*turned, ape]
        rgb, _, _, matched = facing(query, None, candidates, True, features_of)
        assert rgb is query and matched[3].inliers > max(matched[k].inliers for k in range(3)), j
        checks = check_candidates(query, candidates)
        assert not checks[3].mirrored and checks[3].transform is not None
        assert verified_order([0.9, 0.8, 0.7, 0.6], checks)[0] == 3


def test_keypoints_on_flat_and_tiny_images_and_the_switch(apes):
    flat = np.full((128, 128, 3), 90, np.uint8)
    assert match(features(flat), features(apes[0])) == Match(0)  # no keypoints: nothing to match
    tiny = features(apes[0][:8, :8])
    assert match(tiny, features(apes[0])).inliers >= 0
    assert check_candidates(apes[0], [apes[0], None], keypoints=False) == [
        Check(colours=1.0, overlay=1.0),
        Check(),
    ]
    big = np.kron(apes[0], np.ones((16, 16, 1), np.uint8))  # 2048 px: worked on at 512
    found = match(features(big), features(apes[0]))
    assert found.inliers >= MIN_INLIERS and found.transform is not None  # the same drawing, 16 times larger
    assert np.allclose(found.transform[:, :2], np.eye(2) / 16, atol=0.002)  # in the images' own pixels
    assert colour_check(big, apes[0], found) > 0.99


def test_verified_order_puts_checked_candidates_first():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    checks = [
        Check(),
        Check(layout=0.95),
        Check(layout=0.5),
        Check(layout=0.99),
        Check(keypoints=40),
        Check(keypoints=5),
    ]
    # sprites that pass (by layout), paintings that pass (by colours, then inliers), then the rest by score
    assert verified_order(scores, checks) == [3, 1, 4, 0, 2, 5]
    assert verified_order(scores, [Check()] * 6) == [0, 1, 2, 3, 4, 5]
    assert verified_order([0.5, 0.9], [Check(keypoints=30), Check(keypoints=30)]) == [1, 0]  # ties: score
    # aligned paintings whose colours show all of the query first: a sibling a few inliers up does not
    # pass the original; below FOUND (a badge hides part of the query) the inliers decide, not the colours
    near_twins = [Check(keypoints=54, colours=0.937), Check(keypoints=53, colours=1.0), Check(keypoints=60)]
    assert verified_order([0.9, 0.8, 0.7], near_twins) == [1, 2, 0]
    badged = [Check(keypoints=40, colours=0.97), Check(keypoints=48, colours=0.93), Check(keypoints=45)]
    assert verified_order([0.9, 0.8, 0.7], badged) == [1, 2, 0]
    assert verified_order([], []) == []


def test_degenerate_images_are_checked_without_error(apes):
    """Tiny, thin and flat queries and candidates (what a fuzzer uploads) get a check, never an error."""
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (2, 2), (1, 5), (5, 1), (9, 9), (17, 17), (24, 24), (1, 300), (64, 2)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    images += [np.full((24, 24, 3), 7, np.uint8), apes[0]]
    for query in images:
        for check in check_candidates(query, images):
            assert (check.layout is None or 0 <= check.layout <= 1) and (check.keypoints or 0) >= 0
            assert check.colours is None or 0 <= check.colours <= 1


def test_keypoints_are_for_painted_queries_only(apes, punks):
    """A pixelated query (SIFT would see its blocks) gets the colour check without keypoints, stretched
    over each candidate; a query whose best candidate is a sprite (pixel art) leaves paintings unchecked."""
    from training.edits import apply_edit

    pixelated = apply_edit("pixelate", apes[1], np.random.default_rng(0))
    checks = check_candidates(pixelated, apes)
    assert all(c.keypoints is None and c.colours is not None for c in checks)
    # block by block, the pixelation of its own original agrees everywhere, a sibling's does not
    assert checks[1].colours > 0.99 and max(c.colours for k, c in enumerate(checks) if k != 1) < 0.97
    punk = decode_image(punks.image_path(punks.rows[5]).read_bytes(), BACKGROUND)
    checks = check_candidates(apply_edit("text", punk, np.random.default_rng(0)), [punk, *apes])
    assert checks[0].layout is not None
    assert all(c.keypoints is None and c.colours is None for c in checks[1:])
    # the same painting first: checked
    assert check_candidates(apes[1], [apes[1], punk])[0].keypoints >= MIN_INLIERS


def test_a_lossless_sprite_check_overrules_the_score(punks):
    """Punks 1000 and 9013 differ in four pixels: the instance score cannot tell them apart, the pixels
    can. A query that shows the sprite's own grid (a nearest upscale) is judged by its layout alone; a
    query resized off the grid (no exact pixels left) keeps the score's verdict."""
    import cv2

    from app.manifest import CopyDetector
    from app.verify import is_copy

    a, b = (decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND) for i in (1000, 9013))
    query = np.repeat(np.repeat(a, 8, 0), 8, 1)
    twin, itself = check_candidates(query, [b, a])
    assert twin.lossless and itself.lossless and twin.layout < 1.0 and itself.layout == 1.0
    detector = CopyDetector(threshold=0.9, layout_min={"cryptopunks": 1.0 - 0.5 / 576})
    assert not is_copy(detector, "cryptopunks", 0.9999, twin)  # the score over its threshold, overruled
    assert is_copy(detector, "cryptopunks", 0.1, itself)  # every pixel as it was: a copy at any score
    assert is_copy(detector, "nouns", 0.9999, Check(layout=0.5, lossless=True))  # no minimum: the score
    blurred = cv2.resize(a, (100, 100), interpolation=cv2.INTER_CUBIC)
    off_grid = check_candidates(blurred, [b])[0]
    assert off_grid.layout is not None and not off_grid.lossless
    assert is_copy(detector, "cryptopunks", 0.9999, off_grid)  # the score decides, as before


@pytest.fixture(scope="module")
def punk_catalog(punks, model_dir, tmp_path_factory):
    """A real catalog (SQLite + FAISS) of 200 punks with the shipped model's vectors: (model, manifest,
    catalog, decoded images by punk, their model outputs, the punks in order)."""
    from app.catalog import Token, open_catalog
    from app.inference import OnnxModel
    from app.manifest import load_manifest
    from app.preprocessing import preprocess_batch

    m = load_manifest(model_dir)
    if not m.instance_dim or m.copies is None:
        pytest.skip("the model under test has no copy head")
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    ids = [*range(3, 10000, 50), 7804, 1233, 5739]
    data = {i: punks.image_path(punks.rows[i]).read_bytes() for i in ids}
    rgbs = {i: decode_image(b, BACKGROUND) for i, b in data.items()}
    out = model.run(preprocess_batch([rgbs[i] for i in ids], m.preprocessing))
    catalog = open_catalog(
        str(tmp_path_factory.mktemp("punks") / "c.db"), m.embedding_dim, "k", "flat", m.instance_dim
    )
    catalog.upsert_many(
        [
            (Token("cryptopunks", str(i)), out["embedding"][n], data[i], out["instance"][n])
            for n, i in enumerate(ids)
        ]
    )
    yield model, m, catalog, rgbs, out, ids
    catalog.close()


def _found_by_completion(punk_catalog, query: np.ndarray, target: int):
    """The query's checked ranking when the instance search missed `target` (dropped from its hits) and
    `find_by_completion` may look further in the catalog, and the sizes of the embedding calls."""
    from app.catalog import SearchFilter
    from app.preprocessing import preprocess_batch
    from app.verify import catalog_lookup, rank_by_checks

    model, m, catalog, *_ = punk_catalog
    calls = []

    def embed(images: list[np.ndarray]) -> np.ndarray:
        calls.append(len(images))
        return model.run(preprocess_batch(images, m.preprocessing))["instance"]

    own = model.run(preprocess_batch([query], m.preprocessing))["instance"]
    hits = [
        h for h in catalog.search(own[0], 50, SearchFilter(), space="instance") if h.token_id != str(target)
    ]
    more = catalog_lookup(catalog, embed, own, 50, SearchFilter(), BACKGROUND)
    ranked, checks = rank_by_checks(catalog, hits, query, BACKGROUND, False, more)
    return ranked, checks, calls, own


def test_a_crop_the_instance_space_misses_is_found_through_its_completion(punk_catalog):
    """A cropped punk whose original is not among the first candidates: the crop completed from the
    candidates it fits best is looked up in a real catalog (SQLite + FAISS, the shipped model's instance
    vectors), which brings the original in; it is checked whole (layout 1), ranked first and scored by
    the query's own vectors. A whole query, which some candidate shows all of, looks nothing up."""
    from app.catalog import SearchFilter
    from app.verify import catalog_lookup, rank_by_checks
    from training.edits import apply_edit

    model, m, catalog, rgbs, out, ids = punk_catalog
    target = 7804
    query = apply_edit("crop_zoom", rgbs[target], np.random.default_rng(3))
    ranked, checks, calls, own = _found_by_completion(punk_catalog, query, target)
    assert calls and ranked[0].token_id == "7804" and checks[0].layout == 1.0, [
        h.token_id for h in ranked[:5]
    ]
    assert ranked[0].score == pytest.approx(float(own[0] @ out["instance"][ids.index(target)]), abs=1e-5)
    assert len({h.token_id for h in ranked}) == len(ranked)  # each token once
    whole = np.kron(rgbs[target], np.ones((8, 8, 1), np.uint8))  # its nearest upscale: nothing cut off
    hits = catalog.search(own[0], 50, SearchFilter(), space="instance")
    ranked, checks = rank_by_checks(
        catalog,
        hits,
        whole,
        BACKGROUND,
        False,
        catalog_lookup(catalog, None, own, 50, SearchFilter(), BACKGROUND),
    )
    assert ranked[0].token_id == "7804"  # `embed` (None) never called


def test_a_crop_whose_original_sits_behind_the_completions_siblings_is_found_by_its_fit(punk_catalog):
    """A cropped punk (3953, seeded; 2703 until stop 48's refitted instance head found it plainly)
    completed from the 5 candidates the instance space gives it: the 5 tokens nearest its completions
    are siblings that share what the crop shows but not what it cut off, so a look-up of 5 misses it.
    Asked with the crop's fit (`crop_misfit`), the look-up reads `CROP_DEPTH` deep and keeps the 5 the
    crop's pixels fit best: the original (fitting better than those 5) among them, and the served
    ranking puts it first, whole (layout 1)."""
    from app.catalog import SearchFilter
    from app.preprocessing import preprocess_batch
    from app.sprites import SpriteQuery, crop_misfit, native_sprite
    from app.verify import catalog_lookup, crop_completions, rank_by_checks, stored_rgb
    from training.edits import apply_edit

    model, m, catalog, rgbs, _, _ = punk_catalog

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return model.run(preprocess_batch(images, m.preprocessing))["instance"]

    original = "3953"
    query = apply_edit("crop_zoom", rgbs[int(original)], np.random.default_rng(1))
    own = embed([query])
    hits = [h for h in catalog.search(own[0], 5, SearchFilter(), space="instance") if h.token_id != original]
    images = [stored_rgb(catalog.image(h.collection, h.token_id), BACKGROUND) for h in hits]
    patch = SpriteQuery(query).patch
    completions, turned = crop_completions(patch, images)
    more = catalog_lookup(catalog, embed, own, 5, SearchFilter(), BACKGROUND)
    plain = more(completions)
    assert original not in [h.token_id for h in plain]  # the plain look-up's 5

    def fit(key: tuple[str, str], image: np.ndarray | None) -> float:
        return crop_misfit(turned, None if image is None else native_sprite(image))

    fitting = more(completions, fit)
    assert original in [h.token_id for h in fitting] and len(fitting) == 5
    misfit = {h.token_id: fit((h.collection, h.token_id), rgbs[int(h.token_id)]) for h in plain + fitting}
    assert misfit[original] < min(misfit[h.token_id] for h in plain), misfit  # it fits better than they do
    ranked, checks = rank_by_checks(catalog, hits, query, BACKGROUND, False, more)
    assert ranked[0].token_id == original and checks[0].layout == 1.0, [h.token_id for h in ranked[:5]]


def test_a_saturated_copy_the_instance_space_misses_is_found_in_its_siblings_palette(punk_catalog):
    """A lossless saturated copy of punk 1233 (the seeded edit the copy evaluation makes of it) lays out
    on its sibling 5739 at 0.98 only: put back into 5739's palette (`recolour_completions`, two
    renderings) and looked up, it brings 1233 in, lossless at layout 1, ranked first."""
    from training.edits import apply_edit

    _, _, _, rgbs, _, _ = punk_catalog
    query = apply_edit("saturate", rgbs[1233], np.random.default_rng((13, 1233)))  # 192 px, lossless
    ranked, checks, calls, _ = _found_by_completion(punk_catalog, query, 1233)
    assert calls and calls[0] % 2 == 0, calls
    assert ranked[0].token_id == "1233" and checks[0].layout == 1.0 and checks[0].lossless, [
        (h.token_id, c.layout) for h, c in zip(ranked[:5], checks[:5], strict=True)
    ]


def _thumb_catalog(shared_data, model_dir, tmp_path, n: int, collection: str = "bayc"):
    """A real catalog (SQLite + FAISS, the shipped model's vectors) of the first `n` thumbnails of a
    collection (BAYC): (model, manifest, catalog, decoded images, model outputs; token ids are their
    indices)."""
    from app.catalog import Token, open_catalog
    from app.inference import OnnxModel
    from app.manifest import load_manifest
    from app.preprocessing import preprocess_batch

    m = load_manifest(model_dir)
    if not m.instance_dim:
        pytest.skip("the model under test has no copy head")
    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    files = sorted((shared_data / "nft-thumbs" / collection).glob("*.webp"))[:n]
    data = [f.read_bytes() for f in files]
    rgbs = [decode_image(b, BACKGROUND) for b in data]
    out = model.run(preprocess_batch(rgbs, m.preprocessing))
    catalog = open_catalog(str(tmp_path / "c.db"), m.embedding_dim, "k", "flat", m.instance_dim)
    catalog.upsert_many(
        [(Token(collection, str(i)), out["embedding"][i], b, out["instance"][i]) for i, b in enumerate(data)]
    )
    return model, m, catalog, rgbs, out


def test_the_feature_cache_keeps_candidates_keypoints_between_queries(shared_data, model_dir, tmp_path):
    """Painted candidates checked with a `FeatureCache` rank and check exactly as without one; a second
    query reads their features from it, a replaced image is computed again, the least recently used go
    past its size, and size 0 keeps none."""
    from app.catalog import SearchFilter, Token
    from app.keypoints import FeatureCache
    from app.preprocessing import preprocess_batch
    from app.verify import rank_by_checks
    from training.edits import apply_edit

    model, m, catalog, rgbs, out = _thumb_catalog(shared_data, model_dir, tmp_path, 12)
    try:

        def ranked(query: np.ndarray, cache: FeatureCache | None):
            own = model.run(preprocess_batch([query], m.preprocessing))["instance"][0]
            hits = catalog.search(own, 12, SearchFilter(), space="instance")
            found, checks = rank_by_checks(catalog, hits, query, BACKGROUND, True, None, cache)
            return [h.token_id for h in found], checks

        query = apply_edit("logo", rgbs[3], np.random.default_rng(0))
        cache = FeatureCache(64)
        plain = ranked(query, None)
        assert plain[0][0] == "3" and plain[1][0].keypoints >= MIN_INLIERS
        assert ranked(query, cache) == plain and cache.misses == 12  # each candidate's features read once
        hits = cache.hits
        other = apply_edit("crop_zoom", rgbs[5], np.random.default_rng(1))
        assert ranked(other, cache) == ranked(other, None) and cache.misses == 12 and cache.hits >= hits + 12
        replaced = apply_edit("reencode_resize", rgbs[5], np.random.default_rng(2))
        from app.preprocessing import encode

        catalog.upsert_many(
            [(Token("bayc", "5"), out["embedding"][5], encode(replaced, "png"), out["instance"][5])]
        )
        ranked(other, cache)
        assert cache.misses == 13  # token 5's new image is a new entry
        small = FeatureCache(2)
        ranked(query, small)
        # facing reads each candidate once for both sides (a re-read after eviction would be a miss)
        assert small.misses == 12 and len(small._entries) == 2
        none = FeatureCache(0)
        assert ranked(query, none) == ranked(query, None) and len(none._entries) == 0 and none.misses >= 12
    finally:
        catalog.close()


def test_a_painted_crop_is_completed_from_the_candidate_it_aligns_with(apes):
    """A cropped painting aligned with its original by keypoints, put over it (`painted_completions`):
    the completion is the original again, the crop where it was and the original's pixels around it. A
    query that covers all of the candidate (a border, a whole copy) is not completed."""
    from app.verify import painted_completions
    from training.edits import apply_edit

    for j in range(3):
        crop = apply_edit("crop_zoom", apes[j], np.random.default_rng(j))
        checks = check_candidates(crop, apes)
        assert checks[j].transform is not None and not checks[j].mirrored
        done = painted_completions(crop, [apes[j]], [checks[j]])
        assert len(done) == 1 and done[0].shape == apes[j].shape
        off = np.abs(done[0].astype(int) - apes[j].astype(int)).mean()
        assert off < 6, off  # the crop was resized twice: not to the level
        assert np.abs(crop.astype(int) - apes[j].astype(int)).mean() > 3 * off  # much closer than the crop
        for whole in (apes[j], apply_edit("border", apes[j], np.random.default_rng(j))):
            checks = check_candidates(whole, apes)
            assert painted_completions(whole, apes, checks) == []


@pytest.mark.parametrize(("edit", "collection"), [("crop_zoom", "bayc"), ("background_swap", "azuki")])
def test_a_painted_copy_the_instance_space_misses_is_found_through_its_completion(
    shared_data, model_dir, tmp_path, edit, collection
):
    """An edited painting whose original is not among the first candidates, over a real catalog (SQLite +
    FAISS, the shipped model's instance vectors) of 60 thumbnails of its collection: a crop put over the
    siblings its keypoints align with (`painted_completions`), a painting on a new background put on the
    backgrounds its candidates are drawn on (`backdrop_completions`), is looked up, which brings the
    original in, checked whole in its colours and ranked first."""
    from app.catalog import SearchFilter
    from app.preprocessing import preprocess_batch
    from app.verify import FOUND, catalog_lookup, rank_by_checks
    from training.edits import apply_edit

    model, m, catalog, rgbs, _ = _thumb_catalog(shared_data, model_dir, tmp_path, 60, collection)

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return model.run(preprocess_batch(images, m.preprocessing))["instance"]

    try:
        found = 0
        for target in range(8):
            query = apply_edit(edit, rgbs[target], np.random.default_rng(target))
            own = embed([query])
            hits = [
                h
                for h in catalog.search(own[0], 20, SearchFilter(), space="instance")
                if h.token_id != str(target)
            ]
            more = catalog_lookup(catalog, embed, own, 20, SearchFilter(), BACKGROUND)
            ranked, checks = rank_by_checks(catalog, hits, query, BACKGROUND, True, more)
            found += ranked[0].token_id == str(target) and checks[0].colours >= FOUND
            assert len({h.token_id for h in ranked}) == len(ranked)
        assert found >= 6, found
    finally:
        catalog.close()


@pytest.mark.parametrize("collection", ["azuki", "bayc"])  # BAYC: rounded corners (stop 45)
def test_a_painting_on_a_swapped_background_is_put_back_on_its_candidates_backgrounds(
    shared_data, collection
):
    """A background-swapped Azuki or BAYC ape (`backdrop_completions`) is painted on the background
    colours its candidates show, never its own new one: on its original's colour it is the original again,
    to the level of the thumbnail's compression. Not completed: a query on the background colour some
    candidate is drawn on (a genuine token among its siblings, or a copy whose new colour happens to be one
    of theirs), nor one with hardly any background (an Azuki's centre)."""
    from app.imaging import background_region
    from app.verify import backdrop_completions
    from training.edits import apply_edit

    files = sorted((shared_data / "nft-thumbs" / collection).glob("*.webp"))[:6]
    azukis = [decode_image(f.read_bytes(), BACKGROUND) for f in files]
    theirs = [np.median(a[background_region(a)], axis=0) for a in azukis]
    near = completed = 0
    for j, azuki in enumerate(azukis):
        query = apply_edit("background_swap", azuki, np.random.default_rng(j))
        region = background_region(query)
        own = query[region].mean(axis=0)
        done = backdrop_completions(query, azukis, n=len(azukis))
        if min(np.linalg.norm(c - own) for c in theirs) <= 40:  # a sibling is drawn on the new colour
            assert done == []
            continue
        completed += 1
        assert done and all(d.shape == query.shape for d in done)
        assert all(np.linalg.norm(d[region].mean(axis=0) - own) > 40 for d in done)
        assert all(np.array_equal(d[~region], query[~region]) for d in done)  # only the background changes
        best = min(np.abs(d.astype(int) - azuki.astype(int)).mean() for d in done)
        near += best < 2.5 < np.abs(query.astype(int) - azuki.astype(int)).mean()
        assert backdrop_completions(azuki, azukis) == []  # itself, and maybe siblings, on its colour
    assert near >= completed - 1 >= 4, (near, completed)
    if collection == "azuki":  # an ape's figure is smaller: its centre still shows background
        h, w = azukis[0].shape[:2]
        inner = azukis[0][h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
        assert background_region(inner).mean() < 0.05 and backdrop_completions(inner, azukis) == []

"""The pixel-art layout check that re-ranks copy candidates, on real punks and OpenSea's edits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app import sprites as sprites_module
from app.imaging import background_region, decode_image
from app.sprites import (
    COVERED_MAX,
    GATE,
    LOSSY_TOLERANCE,
    TOLERANCE,
    SpriteQuery,
    candidate_layouts,
    collapse_runs,
    completed_crop,
    drawn_over,
    edge_layouts,
    layout_agreement,
    native_sprite,
    pixel_grid,
    query_views,
    recoloured_as,
    regrid,
    strict_layouts,
    whole_tolerance,
)
from app.verify import stored_rgb

BACKGROUND = (99, 133, 150)
PUNKS = (7804, 3100, 5, 1190, 2890, 6965, 4156, 8857)
LOSSLESS = ("exact", "mirror", "rotate_90", "colour_shift", "background_swap")  # nearest upscales, recoloured


@pytest.fixture(scope="module")
def sprites(punks) -> dict[int, np.ndarray]:
    return {i: decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND) for i in PUNKS}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_native_sprite_undoes_upscaling_and_skips_paintings(sprites):
    punk = sprites[7804]
    assert punk.shape == (24, 24, 3) and np.array_equal(native_sprite(punk), punk)
    assert np.array_equal(native_sprite(np.repeat(np.repeat(punk, 8, 0), 8, 1)), punk)
    rng = np.random.default_rng(0)
    assert native_sprite(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) is None
    assert np.array_equal(native_sprite(stored_rgb(_png(punk), BACKGROUND)), punk)
    assert stored_rgb(b"not an image", BACKGROUND) is None and stored_rgb(None, BACKGROUND) is None


@pytest.mark.parametrize(
    "edit",
    ["exact", "mirror", "rotate_90", "colour_shift", "saturate", "background_swap", "border", "reposition"],
)
def test_a_copy_keeps_its_layout_and_other_punks_do_not(sprites, edit):
    """Edits that keep the pixel grid (or whose frame or canvas the views peel off) agree with their own
    sprite above the gate, and every copy agrees with its own sprite more than with the other punks'."""
    from training.edits import apply_edit

    for j, (i, punk) in enumerate(sprites.items()):
        views = query_views(apply_edit(edit, punk, np.random.default_rng(j)))
        own = layout_agreement(views, punk)
        assert own >= GATE, (edit, i, own)
        if edit in LOSSLESS:  # the sprite's own pixels, recoloured at most: every pixel agrees
            assert own == 1.0, (edit, i, own)
        others = [layout_agreement(views, s) for k, s in sprites.items() if k != i]
        assert own > max(others), (edit, i, own, max(others))


def test_a_hue_turned_copy_scores_one_and_a_flat_image_low(sprites):
    import cv2

    punk = sprites[3100]
    hsv = cv2.cvtColor(np.repeat(np.repeat(punk, 8, 0), 8, 1), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 60) % 180
    turned = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    assert layout_agreement(turned, punk) == pytest.approx(1.0)
    # a flat image keeps none of the sprite's edges: below the gate, at any size
    for shape in ((24, 24, 3), (40, 20, 3), (300, 300, 3)):
        assert layout_agreement(np.full(shape, 128, np.uint8), punk) < GATE


def test_candidate_layouts_skip_what_is_no_sprite():
    punk = np.zeros((24, 24, 3), np.uint8)
    punk[6:18, 6:18] = (200, 30, 30)
    assert candidate_layouts(punk, [None, punk]) == [None, pytest.approx(1.0)]


def test_cropped_and_pixelated_copies_are_found_through_their_own_grid(sprites):
    import cv2

    """A crop zoomed back to size no longer lines up with any whole sprite; its grid of native pixels
    (`pixel_grid`, `regrid`) still fits inside its own sprite and no other."""
    from training.edits import apply_edit

    for j, (i, punk) in enumerate(sprites.items()):
        rng = np.random.default_rng(j)
        side = float(np.random.default_rng(j).uniform(0.7, 0.9))  # crop_zoom's first draw: the kept share
        query = apply_edit("crop_zoom", punk, rng)
        period, _, _ = pixel_grid(query)
        assert period == pytest.approx(8 / side, rel=0.03), (i, period, 8 / side)
        patch = regrid(query)
        assert patch is not None and 24 * 0.7 - 2 <= patch.shape[0] <= 24 * 0.9 + 1
        layouts = candidate_layouts(query, list(sprites.values()))
        own = layouts[j]
        assert own >= GATE and own > max(a for k, a in enumerate(layouts) if k != j), (i, layouts)
    # a pixelated copy: its blocks (`collapse_runs`) against each sprite rendered onto as many blocks
    for j, (i, punk) in enumerate(sprites.items()):
        blocks = int(np.random.default_rng(j).integers(24, 49))  # pixelate's first draw
        query = apply_edit("pixelate", punk, np.random.default_rng(j))
        cells = collapse_runs(query)
        assert cells is not None and cells.shape[:2] == (blocks, blocks), (i, blocks)
        layouts = candidate_layouts(query, list(sprites.values()))
        assert layouts[j] >= GATE and layouts[j] > max(a for k, a in enumerate(layouts) if k != j), (
            i,
            layouts,
        )
    assert collapse_runs(apply_edit("crop_zoom", sprites[5], np.random.default_rng(0))) is None  # linear zoom
    # a large crop is searched shrunk: the same cells come back
    big = cv2.resize(apply_edit("crop_zoom", sprites[5], np.random.default_rng(0)), (1536, 1536))
    small = regrid(apply_edit("crop_zoom", sprites[5], np.random.default_rng(0)))
    assert regrid(big) is not None and regrid(big).shape == small.shape
    # a painting shows no grid of whole cells that fits a sprite: nothing passes
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
    assert all(a < GATE for a in candidate_layouts(noise, list(sprites.values())))


def _upscale(sprite: np.ndarray, f: int = 8) -> np.ndarray:
    return np.repeat(np.repeat(sprite, f, 0), f, 1)


def test_the_palette_tells_apart_twins_that_differ_by_one_colour(punks):
    """Punks 1000 and 9013 differ only in four pixels, by 7 RGB levels: the same layout, another palette.
    A lossless image of one is not the other; either is itself. A region recoloured alone (a sibling's
    lipstick) is no global colour change: pixels disagree, though the layout is the same."""
    a, b = (decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND) for i in (1000, 9013))
    differ = np.any(a != b, axis=-1)
    gap = np.linalg.norm(a.astype(float) - b.astype(float), axis=-1)
    assert differ.sum() == 4 and 7 <= gap.max() < 8  # under the layout's 24-level tolerance
    assert layout_agreement(_upscale(a), b) < 1.0 and layout_agreement(_upscale(b), a) < 1.0
    assert layout_agreement(_upscale(a), a) == 1.0 and layout_agreement(b, b) == 1.0
    for i, j in ((350, 7087), (8809, 31)):  # siblings four pixels apart that the instance score confuses
        x, y = (decode_image(punks.image_path(punks.rows[k]).read_bytes(), BACKGROUND) for k in (i, j))
        assert np.any(x != y, axis=-1).sum() == 4 and layout_agreement(_upscale(x), y) < 1.0 - 1 / 576
    punk = a.copy()
    figure = ~background_region(punk)
    colours, counts = np.unique(punk[figure], axis=0, return_counts=True)
    region = np.all(punk == colours[np.argsort(counts)[-2]], axis=-1) & figure  # the second-largest colour
    punk[region] = 255 - punk[region]
    assert layout_agreement(_upscale(punk), a) < 0.99  # either it or the rest fails the fitted change


def test_a_new_background_leaves_enclosed_pixels_of_its_colour_alone(sprites):
    """Punk 7804 shows the background colour at 11 pixels that no corner reaches; a background swap
    keeps them, and the copy still agrees everywhere (the background is a region of its own)."""
    from training.edits import apply_edit

    punk = sprites[7804]
    enclosed = np.all(punk == BACKGROUND, axis=-1) & ~background_region(punk)
    assert enclosed.sum() == 11
    swapped = apply_edit("background_swap", punk, np.random.default_rng(3))
    assert layout_agreement(swapped, punk) == 1.0


def test_a_sibling_on_another_skin_tone_is_no_filtered_copy(punks):
    """Punks 210 and 319 are one drawing on two skin tones, which one brightness factor nearly explains.
    A filter changes the whole picture, background included; the sibling keeps the collection's
    background, so its figure was recoloured alone: not a copy. The filtered punk itself agrees."""
    import cv2

    a, b = (decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND) for i in (210, 319))
    assert np.array_equal(np.any(a != a[0, 0], -1), np.any(b != b[0, 0], -1))  # the same layout
    assert layout_agreement(_upscale(a), b) < 0.9
    hsv = cv2.cvtColor(_upscale(b), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 2] = np.clip(hsv[..., 2] * 0.8, 0, 255)  # darkened as a whole, as a filter does
    filtered = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    assert layout_agreement(filtered, b) == 1.0


def test_a_lossless_saturated_copy_keeps_edges_that_clipping_brought_close(punks):
    """Saturating punk 4792 2.45x (brightness 0.86x) clips two skin shades 17 levels apart to 6 levels
    apart: under the 8 levels that tell an edge in a resized query, yet a lossless query shows it exactly,
    so every pixel still agrees."""
    import cv2

    punk = decode_image(punks.image_path(punks.rows[4792]).read_bytes(), BACKGROUND)
    hsv = cv2.cvtColor(_upscale(punk), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * 2.45, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * 0.86, 0, 255)
    saturated = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    shades = [np.all(punk == c, axis=-1) for c in ((167, 124, 71), (174, 139, 97))]
    assert all(m.any() for m in shades)
    before, after = (
        np.linalg.norm(x[shades[0]][0].astype(float) - x[shades[1]][0]) for x in (punk, saturated[::8, ::8])
    )
    assert before > 16 and after < 8
    assert layout_agreement(saturated, punk) == 1.0


@pytest.mark.parametrize("edit", ["text", "logo", "rotate_small", "pixelate"])
def test_what_a_copy_covers_or_cuts_off_is_set_aside_and_every_shown_cell_agrees(sprites, nouns, edit):
    """A caption or badge drawn on the minted image covers cells with finer strokes than the grid
    (`drawn_over`); a small rotation cuts off the corners (the upright view's frame); a pixelation may
    be coarser than the sprite (a Noun's 32 pixels on 24-31 blocks). What is left agrees everywhere,
    and a sibling still does not."""
    from training.edits import apply_edit

    tokens = [
        *sprites.values(),
        *(decode_image(nouns.image_path(r).read_bytes(), BACKGROUND) for r in nouns.rows[:4]),
    ]
    for j, sprite in enumerate(tokens):
        query = apply_edit(edit, sprite, np.random.default_rng(j))
        own, *others = candidate_layouts(query, [sprite, *(t for t in tokens if t is not sprite)])
        assert own == 1.0, (edit, j, own)
        assert max(o for o in others if o is not None) < 0.99, (edit, j)


def test_drawn_over_sets_aside_only_finer_strokes_on_an_exact_upscale(sprites):
    from training.edits import apply_edit

    punk = sprites[3100]
    clean = _upscale(punk)
    assert not drawn_over(clean, 24, 24).any()  # drawn on the grid: nothing to set aside
    assert drawn_over(punk, 24, 24) is None and drawn_over(clean[:190], 24, 24) is None  # no exact upscale
    badge = apply_edit("logo", punk, np.random.default_rng(1))
    covered = drawn_over(badge, 24, 24)
    assert 0 < covered.mean() <= COVERED_MAX
    changed = np.any(badge != clean, -1).reshape(24, 8, 24, 8).any((1, 3))
    assert covered[changed].all()  # every cell the badge touched, and what its rim encloses
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    assert drawn_over(noisy, 24, 24) is None  # noise everywhere: more than a badge, nothing set aside


def test_a_crop_is_completed_from_any_sprite_it_fits(sprites, punks):
    """`completed_crop` puts a crop's native pixels back where they fit best: into its own sprite they
    fit everywhere and give the sprite back; into a sibling they replace what the sibling shows there,
    and what the crop cut off stays the sibling's. No crop (the whole grid) has no completion."""
    from training.edits import apply_edit

    for j, (i, punk) in enumerate(sprites.items()):
        query = apply_edit("crop_zoom", punk, np.random.default_rng(j))
        patch = SpriteQuery(query).patch
        assert patch is not None and patch.shape[0] < 24
        misfit, own, _ = completed_crop(patch, punk)
        assert misfit == 0.0 and np.array_equal(own, punk), i
        other = sprites[PUNKS[(j + 1) % len(PUNKS)]]
        misfit, mixed, _ = completed_crop(patch, other)
        assert misfit > 0.0
        cells = np.rint(patch).astype(np.uint8)
        placed = [  # the crop's cells, as they are in some dihedral turn, at one place
            (y, x, t.shape[:2])
            for t in (np.rot90(v, k) for v in (cells, cells[:, ::-1]) for k in range(4))
            for y in range(25 - t.shape[0])
            for x in range(25 - t.shape[1])
            if np.array_equal(mixed[y : y + t.shape[0], x : x + t.shape[1]], t)
        ]
        assert placed
        y, x, (a, b) = placed[0]
        outside = np.ones((24, 24), bool)
        outside[y : y + a, x : x + b] = False
        assert np.array_equal(mixed[outside], other[outside])  # the rest is the sibling's
    assert completed_crop(sprites[5].astype(np.float32), sprites[5]) is None  # the whole grid: no crop
    assert SpriteQuery(apply_edit("pixelate", sprites[5], np.random.default_rng(0))).patch is None  # blocks


def test_a_lossy_query_read_whole_gets_the_wider_tolerance(sprites, monkeypatch):
    """A punk shrunk to 104 px (4.3-px cells) and saved as JPEG at quality 50 bleeds colour across its
    cells: at 24 levels some cells leave their region's colour, at `LOSSY_TOLERANCE` every cell agrees.
    The other punks stay far below the gate; a lossless query keeps the narrower tolerance."""
    import cv2

    from app.preprocessing import reencode

    served = {}
    for i in (3100, 6965, 8857):
        small = cv2.resize(_upscale(sprites[i]), (104, 104), interpolation=cv2.INTER_AREA)
        served[i] = reencode(small, "jpeg", 50)
        assert layout_agreement(served[i], sprites[i]) == 1.0
        assert max(layout_agreement(served[i], s) for k, s in sprites.items() if k != i) < GATE
    monkeypatch.setattr(sprites_module, "codec_bleed", lambda sprite, size: None)  # the tolerance alone
    for i, query in served.items():
        assert layout_agreement(query, sprites[i], TOLERANCE) < 1.0 - 1 / 576
        assert layout_agreement(query, sprites[i]) == 1.0
    assert whole_tolerance(True) == TOLERANCE < whole_tolerance(False) == LOSSY_TOLERANCE


def test_the_codec_bleed_lets_small_cells_of_a_compressed_copy_agree(punks, monkeypatch):
    """Punks whose 104-px JPEG (quality 50) leaves cells out even at `LOSSY_TOLERANCE`: chroma
    subsampling smears their one-cell eyes and mouths into the skin. Each cell may move as far as the
    sprite's own rendering at that size moves it (`codec_bleed`), so they agree whole; a sibling a shade
    away (punk 918's five darker skin pixels, 35 RGB levels from 7144's) still shows a cell off, at
    every size; at 16 pixels a cell and more nothing bleeds."""
    import cv2

    from app.preprocessing import reencode

    def sprite(i: int) -> np.ndarray:
        return decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND)

    def copy(s: np.ndarray, side: int) -> np.ndarray:
        return reencode(cv2.resize(_upscale(s), (side, side), interpolation=cv2.INTER_AREA), "jpeg", 50)

    bleeding = {i: sprite(i) for i in (0, 12, 37)}
    assert all(sprites_module.codec_bleed(s, (104, 104)).max() > 0 for s in bleeding.values())
    assert sprites_module.codec_bleed(bleeding[0], (16 * 24, 16 * 24)) is None
    with_bleed = {i: layout_agreement(copy(s, 104), s) for i, s in bleeding.items()}
    shade, sibling = sprite(918), sprite(7144)
    sizes = (96, 104, 120, 150, 192, 250)
    apart = [layout_agreement(copy(shade, side), sibling) for side in sizes]
    apart += [layout_agreement(copy(sibling, side), shade) for side in sizes]
    monkeypatch.setattr(sprites_module, "codec_bleed", lambda s, size: None)
    without = {i: layout_agreement(copy(s, 104), s) for i, s in bleeding.items()}
    assert all(v == 1.0 for v in with_bleed.values()) and all(v < 1.0 for v in without.values())
    assert max(apart) < 1.0  # a cell off at least: below any layout minimum calibration can choose


@pytest.mark.parametrize(
    ("edit", "original", "sibling", "field"),
    [("crop_zoom", 6869, 2412, "edges"), ("text", 66, 5809, "strict")],
)
def test_a_copy_two_sprites_show_alike_is_told_apart(punks, edit, original, sibling, field):
    """Two punks lay out at 1.0 on the copy evaluation's seeded edit of the first. Punk 6869's crop shows
    only whole cells that 2412 shows too: the cells its edge cuts (`edge_layouts`) show where they
    differ. A caption over punk 66 breaks its nearest upscale, so the query is lossy and read at
    `LOSSY_TOLERANCE`, which 5809 passes too: at `TOLERANCE` (`strict_layouts`) only 66 does. Either
    way `verified_order` puts the original first whatever the scores; no tie, no tie-break."""
    from app.verify import Check, verified_order
    from training.edits import apply_edit

    tie_break = {"edges": edge_layouts, "strict": strict_layouts}[field]
    own, other = (
        decode_image(punks.image_path(punks.rows[i]).read_bytes(), BACKGROUND) for i in (original, sibling)
    )
    query = apply_edit(edit, own, np.random.default_rng((13, original)))
    layouts = candidate_layouts(query, [other, own])
    assert layouts == [1.0, 1.0]
    values = tie_break(query, [other, own], layouts)
    assert values[1] == 1.0 > values[0], values
    checks = [Check(layout=a, **{field: v}) for a, v in zip(layouts, values, strict=True)]
    assert verified_order([0.99, 0.98], checks) == [1, 0]  # the sibling scored higher
    assert tie_break(query, [other, own], [0.95, 1.0]) == [None, None]  # no tie
    assert tie_break(_upscale(own), [own, own], [1.0, 1.0]) == [None, None]  # lossless whole: no crop, exact


@pytest.mark.parametrize("turned", [False, True])
def test_a_saturated_copy_is_put_back_into_its_originals_palette(sprites, turned):
    """`recoloured_as`: a lossless saturated copy (mirrored too, with `turned`) in its original's colours,
    turned back: mapped colour by colour it is the original exactly; by the global change, within a few
    levels (the query itself is 12-50 levels off)."""
    from training.edits import apply_edit

    for i in (7804, 3100, 8857):
        query = apply_edit("saturate", sprites[i], np.random.default_rng((13, i)))
        if turned:
            query = query[:, ::-1]
        changed, mapped = recoloured_as(native_sprite(query), sprites[i])
        assert np.array_equal(mapped, sprites[i])
        assert np.abs(changed.astype(int) - sprites[i]).mean() < 6
        assert np.abs(native_sprite(query)[:, :: -1 if turned else 1].astype(int) - sprites[i]).mean() > 10

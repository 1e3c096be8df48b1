"""The copymint edit generator: OpenSea's list of edits, deterministic, on real punks and thumbnails."""

from __future__ import annotations

import numpy as np
import pytest

from app.imaging import decode_image

cv2 = pytest.importorskip("cv2")
from training.edits import (  # noqa: E402
    COMBINED,
    EDITS,
    PIXEL_ART_SIDE,
    apply_edit,
    border_colour,
    random_edit,
    working_copy,
)

OPENSEA = {
    "exact",
    "reencode_resize",
    "mirror",
    "crop_zoom",
    "reposition",
    "rotate_small",
    "rotate_90",
    "border",
    "text",
    "logo",
    "background_swap",
    "colour_shift",
    "saturate",
    "pixelate",
}


@pytest.fixture(scope="module")
def punk(punks) -> np.ndarray:
    return decode_image(punks.image_path(punks.rows[7804]).read_bytes(), "#638596")


@pytest.fixture(scope="module")
def painted() -> np.ndarray:
    """A smooth 128-px image with a flat background and a painted subject."""
    y, x = np.mgrid[0:128, 0:128]
    img = np.full((128, 128, 3), (200, 180, 40), np.uint8)
    disc = (y - 64) ** 2 + (x - 60) ** 2 < 40**2
    img[disc] = np.stack([x[disc] * 2 % 256, y[disc] * 2 % 256, (x[disc] + y[disc]) % 256], 1)
    return img


def test_every_listed_edit_exists_and_is_deterministic(punk, painted):
    assert set(EDITS) == OPENSEA
    for img in (punk, painted):
        for name in EDITS:
            a = apply_edit(name, img, np.random.default_rng(3))
            b = apply_edit(name, img, np.random.default_rng(3))
            assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
            assert np.array_equal(a, b), f"{name} is not deterministic for a seed"
            if name != "exact":
                assert not np.array_equal(a, working_copy(img)), f"{name} changed nothing"


def test_a_combined_edit_applies_its_parts_in_turn_and_is_no_training_view(punk, painted):
    assert COMBINED["mirror_reencode"] == ("mirror", "reencode_resize") and not set(COMBINED) & set(EDITS)
    for img in (punk, painted):
        rng, twin = np.random.default_rng(4), np.random.default_rng(4)
        expected = apply_edit("reencode_resize", apply_edit("mirror", img, twin), twin)
        assert np.array_equal(apply_edit("mirror_reencode", img, rng), expected)
    with pytest.raises(ValueError, match="unknown edits"):  # not one of the training views
        random_edit(weights={"mirror_reencode": 1.0})


def test_exact_keeps_pixels_and_pixel_art_is_upscaled_for_other_edits(punk, painted):
    assert np.array_equal(apply_edit("exact", punk, np.random.default_rng(0)), punk)
    big = working_copy(punk)
    assert min(punk.shape[:2]) < PIXEL_ART_SIDE and min(big.shape[:2]) >= 192
    f = big.shape[0] // punk.shape[0]
    assert np.array_equal(big[::f, ::f], punk)  # nearest neighbour, integer factor
    assert working_copy(painted) is painted


def test_geometric_edits_do_what_they_say(punk):
    rng = np.random.default_rng(0)
    w = working_copy(punk)
    assert np.array_equal(apply_edit("mirror", punk, rng), w[:, ::-1])
    rot = apply_edit("rotate_90", punk, np.random.default_rng(1))
    assert any(np.array_equal(rot, np.rot90(w, k)) for k in (1, 2, 3))
    framed = apply_edit("border", punk, np.random.default_rng(2))
    assert framed.shape == w.shape
    edge = np.concatenate([framed[0], framed[-1], framed[:, 0], framed[:, -1]])
    assert (edge == edge[0]).all()  # one solid frame colour


def test_background_swap_changes_background_not_subject(punk):
    w = working_copy(punk)
    bg = np.all(w == border_colour(w).astype(np.uint8), axis=2)
    out = apply_edit("background_swap", punk, np.random.default_rng(5))
    assert (out[bg] != w[bg]).any(axis=1).mean() > 0.95
    assert np.array_equal(out[~bg], w[~bg])  # the punk itself is untouched


def test_random_edit_mixes_edits(punk):
    edit = random_edit(identity_prob=0.0)
    outs = [edit(punk, np.random.default_rng(i)) for i in range(12)]
    assert len({o.tobytes() for o in outs}) == 12


def test_random_edit_weights_pick_the_named_edits(punk):
    only = {name: 0.0 for name in EDITS if name != "exact"} | {"colour_shift": 1.0}
    edit = random_edit(identity_prob=0.0, second_prob=0.0, weights=only)
    for seed in range(4):  # every view is that edit: the same output as calling it on the same stream
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        twin.random(), twin.choice(13, p=np.ones(13) / 13)  # the draws random_edit made before editing
        assert np.array_equal(edit(punk, rng), EDITS["colour_shift"](working_copy(punk), twin))
    names: list[str] = []
    every = random_edit(None, second_prob=0.0, weights=only, record=names)  # no identity draw at all
    rng, twin = np.random.default_rng(7), np.random.default_rng(7)
    twin.choice(13, p=np.ones(13) / 13)
    assert np.array_equal(every(punk, rng), EDITS["colour_shift"](working_copy(punk), twin))
    random_edit(1.0, record=names)(punk, rng)
    assert names == ["colour_shift", "identity"]
    with pytest.raises(ValueError, match="unknown edits"):
        random_edit(weights={"sepia": 2.0})
    with pytest.raises(ValueError, match="positive sum"):
        random_edit(weights=dict.fromkeys(only, 0.0))


def test_pixel_fingerprint_ignores_upscale_mirror_and_turns_only(punk):
    from app.fingerprint import pixel_fingerprint, reduce_integer_upscale

    fp = pixel_fingerprint(punk)
    big = np.repeat(np.repeat(punk, 20, axis=0), 20, axis=1)
    assert np.array_equal(reduce_integer_upscale(big), punk)
    for same in (big, big[:, ::-1], np.rot90(big), np.rot90(punk[::-1], 3)):
        assert pixel_fingerprint(np.ascontiguousarray(same)) == fp
    changed = punk.copy()
    changed[10, 10] = 255 - changed[10, 10]  # one pixel
    assert pixel_fingerprint(changed) != fp
    assert pixel_fingerprint(apply_edit("reencode_resize", punk, np.random.default_rng(0))) != fp


@pytest.mark.parametrize("edit", ["border", "reposition"])
def test_peel_undoes_a_frame_or_canvas(edit, punk, painted):
    from app.views import peel_canvas

    for img in (working_copy(punk), painted):
        edited = apply_edit(edit, img, np.random.default_rng(5))
        inner = peel_canvas(edited)
        assert inner is not None and inner.shape[0] < img.shape[0]
        # what is left is the original, scaled: compare at the original's size
        back = cv2.resize(inner, img.shape[1::-1], interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(back - img.astype(int)).mean() < 12


def test_peel_leaves_plain_images_and_view_set_counts(punk, painted):
    from app.preprocessing import PreprocessConfig, preprocess
    from app.views import ViewSet, peel_canvas

    assert peel_canvas(np.full((32, 32, 3), 9, np.uint8)) is None  # all one colour: nothing inside
    assert peel_canvas(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)) is None
    cfg = PreprocessConfig()
    x = preprocess(painted, cfg)
    for views, n in (
        (ViewSet(), 1),
        (ViewSet(dihedral=True), 8),
        (ViewSet(True, True), 9),
        (ViewSet(True, True, True), 10),
        (ViewSet(True, True, True, hues=5), 15),
        (ViewSet(True, True, True, hues=5, background=True), 16),
    ):
        out = views.inputs(painted, x, cfg)
        assert out.shape == (n, *x.shape) and views.count == n
        assert np.array_equal(out[0], x)
    framed = apply_edit("border", painted, np.random.default_rng(1))
    peeled = ViewSet(peel=True).inputs(framed, preprocess(framed, cfg), cfg)
    assert not np.array_equal(peeled[1], peeled[0])  # the extra view is the image inside the frame


def test_the_background_view_undoes_a_background_swap_on_a_transparent_punk(punk):
    from app.preprocessing import PreprocessConfig
    from app.views import repaint_background

    cfg = PreprocessConfig(alpha_background="#638596")  # what punks are decoded and catalogued on
    original = working_copy(punk)
    assert np.array_equal(border_colour(original).astype(np.uint8), cfg.background_rgb)
    swapped = apply_edit("background_swap", punk, np.random.default_rng(3))
    assert (swapped != original).any(axis=2).mean() > 0.3
    assert np.array_equal(repaint_background(swapped, cfg.background_rgb), original)
    assert (
        repaint_background(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), (0, 0, 0))
        is None
    )


def test_a_hue_view_undoes_a_colour_shift(painted):
    from app.preprocessing import PreprocessConfig, preprocess
    from app.views import ViewSet, rotate_hue

    shifted = rotate_hue(painted, 120)
    assert np.abs(shifted.astype(int) - painted).mean() > 20  # a real change of colour
    assert np.abs(rotate_hue(shifted, 240).astype(int) - painted).mean() < 3  # a full turn: back again
    cfg = PreprocessConfig()
    views = ViewSet(hues=2).inputs(shifted, preprocess(shifted, cfg), cfg)  # turned by 120 and 240 degrees
    err = [np.abs(v - preprocess(painted, cfg)).mean() for v in views]
    assert int(np.argmin(err)) == 2 and err[2] < 0.1 * err[0]


def test_deskew_turns_a_slightly_rotated_copy_upright(punk):
    from app.views import deskew, deskew_framed, refine_skew, skew_degrees

    upright = working_copy(punk)
    assert abs(skew_degrees(upright)) < 1 and deskew(upright) is None  # pixel art is axis-aligned
    for degrees in (-15.0, 8.0):
        turned = cv2.warpAffine(
            upright,
            cv2.getRotationMatrix2D((upright.shape[1] / 2, upright.shape[0] / 2), degrees, 1.0),
            upright.shape[1::-1],
            flags=cv2.INTER_LINEAR,
            borderValue=tuple(int(c) for c in border_colour(upright)),
        )
        assert abs(skew_degrees(turned) + degrees) < 2.5  # turning by +d counter-clockwise reads as -d
        back = deskew(turned)
        assert (
            np.abs(back.astype(int) - upright.astype(int)).mean()
            < np.abs(turned.astype(int) - upright.astype(int)).mean() / 2
        )
        # the staircase edges bias the gradients towards the axes; the grid's sharpness finds the turn
        assert abs(refine_skew(turned, skew_degrees(turned)) + degrees) < 0.1
        framed, shown = deskew_framed(turned, refine=True)
        assert 0.01 < 1 - shown.mean() < 0.2  # its corners were cut off
        assert (
            np.abs(framed.astype(int) - upright.astype(int))[shown].mean()
            < np.abs(back.astype(int) - upright.astype(int))[shown].mean()
        )

"""The colour check (app/agreement.py) on real painted thumbnails: what it forgives and what it counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.agreement import (
    OVERLAY_MAX,
    OverlayRule,
    agreement,
    block_agreement,
    comparison,
    global_change,
    overlay,
    scale_transform,
    text_lines,
)
from app.imaging import background_region, decode_image

BACKGROUND = (99, 133, 150)


@pytest.fixture(scope="module")
def apes(shared_data) -> list[np.ndarray]:
    files = sorted((shared_data / "nft-thumbs" / "bayc").glob("*.webp"))[:6]
    return [decode_image(f.read_bytes(), BACKGROUND) for f in files]


@pytest.fixture(scope="module")
def framed(shared_data) -> list[np.ndarray]:
    """Five World of Women thumbnails whose figure fills the frame (no background region: a gradient
    backdrop), for marks placed anywhere on the image to land on the figure."""
    files = sorted((shared_data / "nft-thumbs" / "world_of_women").glob("*.webp"))
    images = (decode_image(f.read_bytes(), BACKGROUND) for f in files)
    return list(itertools.islice((image for image in images if not background_region(image).any()), 5))


def stretched(query: np.ndarray, candidate: np.ndarray) -> float | None:
    return agreement(query, candidate, scale_transform(query.shape, candidate.shape))


@pytest.mark.parametrize("edit", ["exact", "reencode_resize", "colour_shift", "saturate", "background_swap"])
def test_a_copy_in_the_same_frame_agrees_almost_everywhere(apes, edit):
    from training.edits import apply_edit

    for j, ape in enumerate(apes):
        copy = apply_edit(edit, ape, np.random.default_rng(j))
        own = stretched(copy, ape)
        siblings = [stretched(copy, other) for k, other in enumerate(apes) if k != j]
        assert own >= 0.9 and own > max(siblings), (edit, j, own, siblings)


def test_a_changed_region_counts_by_its_area_and_thin_marks_do_not(apes):
    ape = apes[0]
    figure = ~background_region(ape)
    patched = ape.copy()
    h, w = ape.shape[:2]
    box = np.zeros(figure.shape, bool)
    box[h // 4 : h // 2, w // 4 : w // 2] = True  # a trait-sized block painted a colour the ape lacks
    patched[box] = (255, 0, 255)
    share = (box & figure).sum() / figure.sum()
    assert stretched(patched, ape) == pytest.approx(1 - share, abs=0.03)
    lined = ape.copy()
    lined[::16, :] = (255, 0, 255)  # one-pixel lines: outline-thin, not a region
    assert stretched(lined, ape) > 0.98


def test_a_transform_moves_the_query_into_place_and_a_degenerate_one_gives_none(apes):
    ape = apes[2]
    big = np.kron(ape, np.ones((3, 3, 1), np.uint8))  # 3x larger: the transform shrinks it back
    assert agreement(big, ape, np.float64([[1 / 3, 0, 0], [0, 1 / 3, 0]])) > 0.99
    shifted = np.roll(ape, 10, axis=1)
    assert agreement(shifted, ape, np.float64([[1, 0, -10], [0, 1, 0]])) > agreement(
        shifted, ape, scale_transform(shifted.shape, ape.shape)
    )
    off = np.float64([[1, 0, 10_000], [0, 1, 0]])  # the query lands outside the candidate
    assert agreement(ape, ape, off) is None
    flat = np.full((64, 64, 3), 40, np.uint8)  # all background: no figure to compare
    assert stretched(flat, flat) is None


def test_a_pixelated_copy_is_compared_block_by_block(apes):
    from app.sprites import collapse_runs
    from training.edits import apply_edit

    for j, ape in enumerate(apes):
        blocks = collapse_runs(apply_edit("pixelate", ape, np.random.default_rng(j)))
        assert blocks is not None and 24 <= max(blocks.shape[:2]) <= 48
        own = block_agreement(blocks, ape)
        siblings = [block_agreement(blocks, other) for k, other in enumerate(apes) if k != j]
        assert own > 0.99 and own > max(siblings), (j, own, siblings)
    assert block_agreement(np.full((30, 30, 3), 40.0, np.float32), np.full((64, 64, 3), 40, np.uint8)) is None


def test_a_clipping_saturation_filter_is_fitted(apes):
    """Saturation x2.5 clips most of a painting's colours at 255; the fitted change still predicts the
    query (a median ratio of clipped pixels reads the factor low)."""
    import cv2

    ape = apes[0]
    hsv = cv2.cvtColor(ape, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * 2.5, 0, 255)
    query = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    where = ~background_region(ape)
    expected = global_change(query, ape, where)
    close = np.linalg.norm(query.astype(np.float32) - expected, axis=-1) < 8
    assert close[where].mean() > 0.95


def test_the_factor_fit_is_the_brute_force_one():
    """`_factor` reads every factor's fit off a table of level pairs; it picks the factor that scoring
    every pixel against every factor picks (a saturation filter that clips, a dimming, noise)."""
    from app.agreement import FACTOR_TOLERANCE, FACTORS, _factor

    def brute(c: np.ndarray, q: np.ndarray) -> float:
        predicted = np.minimum(FACTORS[:, None] * c[None, :], 255)
        fit = np.maximum(FACTOR_TOLERANCE + 1 - np.abs(predicted - q[None, :]), 0).sum(axis=1)
        return float(FACTORS[int(np.argmax(fit))])

    rng = np.random.default_rng(0)
    for f in (0.35, 0.8, 1.0, 1.7, 2.5):
        c = rng.integers(31, 256, 3000).astype(np.float32)
        q = np.clip(np.round(np.minimum(f * c, 255) + rng.normal(0, 3, c.size)), 0, 255).astype(np.float32)
        q[:300] = rng.integers(0, 256, 300)  # pixels no factor explains
        assert _factor(c, q) == brute(c, q)
        assert abs(np.log(_factor(c, q) / f)) < 0.05


def test_one_small_pasted_region_that_no_other_candidate_shows_is_forgiven(apes):
    """A badge pasted on a copy: its colours miss the badge's region, its `overlay` forgives it. The same
    region is not forgiven when another candidate shows the query's pixels there (a sibling's trait), when
    it is larger than `OVERLAY_MAX` of the figure, nor, of two regions, the smaller one."""
    import cv2

    ape, others = apes[0], apes[1:]
    figure = ~background_region(ape)
    ys, xs = np.nonzero(figure)
    centre = (int(xs.mean()), int(ys.mean()))
    badge = ape.copy()
    cv2.circle(badge, centre, ape.shape[0] // 14, (255, 0, 255), -1)
    found = comparison(badge, ape, scale_transform(badge.shape, ape.shape))
    assert found is not None and found.share < 0.99
    assert overlay(found, others) == pytest.approx(1.0, abs=0.005)
    assert overlay(found, [*others, badge]) == found.share  # a candidate drawn with those pixels there
    big = ape.copy()
    cv2.circle(big, centre, ape.shape[0] // 5, (255, 0, 255), -1)
    found = comparison(big, ape, scale_transform(big.shape, ape.shape))
    assert 1 - found.share > OVERLAY_MAX and overlay(found, others) == found.share
    two = badge.copy()
    cv2.circle(two, (centre[0], centre[1] - ape.shape[0] // 5), ape.shape[0] // 20, (0, 255, 0), -1)
    found = comparison(two, ape, scale_transform(two.shape, ape.shape))
    assert found.share < overlay(found, others) < 0.995


def test_a_region_shown_only_piecemeal_by_several_candidates_is_forgiven_when_one_witness_must_show_it(apes):
    """`witness` "one": a sibling's trait is drawn whole on the tokens that have it, so a pasted region
    that two candidates each show half of (the left and the right) is forgiven, while the first rule
    ("together") counts their halves together and does not forgive it; a candidate showing all of it
    stops both. Any other witness is refused."""
    import cv2

    ape, others = apes[0], apes[1:]
    figure = ~background_region(ape)
    ys, xs = np.nonzero(figure)
    centre, r = (int(xs.mean()), int(ys.mean())), ape.shape[0] // 14
    badge = ape.copy()
    cv2.circle(badge, centre, r, (255, 0, 255), -1)
    left, right = ape.copy(), ape.copy()
    left[:, : centre[0]] = badge[:, : centre[0]]
    right[:, centre[0] :] = badge[:, centre[0] :]
    found = comparison(badge, ape, scale_transform(badge.shape, ape.shape))
    one, together = OverlayRule("one"), OverlayRule("together")
    assert overlay(found, others, one) == overlay(found, others, together) == pytest.approx(1.0, abs=0.005)
    halves = [*others, left, right]
    assert overlay(found, halves, together) == found.share
    assert overlay(found, halves, one) == pytest.approx(1.0, abs=0.005)
    assert overlay(found, [*halves, badge], one) == found.share
    with pytest.raises(ValueError, match="witness"):
        OverlayRule("anyone")


@pytest.fixture(scope="module")
def moonbirds(shared_data) -> list[np.ndarray]:
    files = sorted((shared_data / "nft-thumbs" / "moonbirds").glob("*.webp"))[:6]
    return [decode_image(f.read_bytes(), BACKGROUND) for f in files]


def test_a_region_is_not_forgiven_when_the_query_wears_something_else_beyond_the_figure(moonbirds):
    """`OverlayRule.beyond`: a sibling on another background that differs by one trait inside the figure
    often wears another over the background (a validation MoonBird's flame), which the colours, counted
    on the candidate's figure only, do not see. On a real MoonBird with its background swapped and a
    badge on its figure, the badge is forgiven with or without `beyond` (the query's own background is
    not counted, nor the part of a badge that spills over the background); with a second object drawn on
    the background, only the rule without `beyond` still forgives it. A share outside 0..1 is refused."""
    import cv2

    from training.edits import apply_edit

    bird, others = moonbirds[0], moonbirds[1:]
    figure = ~background_region(bird)
    assert 0.2 < figure.mean() < 0.8  # a background to wear something on
    ys, xs = np.nonzero(figure)
    centre, r = (int(xs.mean()), int(ys.mean())), bird.shape[0] // 14
    swapped = apply_edit("background_swap", bird, np.random.default_rng(0))
    badge = swapped.copy()
    cv2.circle(badge, centre, r, (255, 0, 255), -1)
    spill = swapped.copy()  # a badge half over the figure's left edge, half over the background
    cv2.circle(spill, (int(np.argmax(figure[centre[1]])), centre[1]), r, (255, 0, 255), -1)
    h, w = bird.shape[:2]
    far = cv2.distanceTransform((~figure).astype(np.uint8), cv2.DIST_L2, 3) > r + 2
    yy, xx = np.mgrid[:h, :w]
    inside = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]) > r + 2  # the corners stay background
    y, x = np.argwhere(far & inside)[0]
    worn = badge.copy()
    cv2.circle(worn, (int(x), int(y)), r, (255, 128, 0), -1)
    plain, strict = OverlayRule("one"), OverlayRule("one", 0.01)
    for query in (badge, spill):
        found = comparison(query, bird, scale_transform(query.shape, bird.shape))
        assert found.share < 0.99
        assert (
            overlay(found, others, plain) == overlay(found, others, strict) == pytest.approx(1.0, abs=0.005)
        )
    found = comparison(worn, bird, scale_transform(worn.shape, bird.shape))
    assert found.beyond.sum() > 0.01 * found.where.sum()
    assert overlay(found, others, plain) == pytest.approx(1.0, abs=0.005)
    assert overlay(found, others, strict) == found.share < 0.99
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beyond"):
            OverlayRule("one", share)


def _caption(image: np.ndarray, colours: list[tuple[int, int, int]], text: str = "NFT COPY") -> np.ndarray:
    """`text` written letter by letter across the lower part of `image`, each letter in its colour."""
    import cv2

    out, (h, w) = image.copy(), image.shape[:2]
    x, scale, thick = w // 10, h / 200 * 1.4, max(1, round(h / 32))
    for letter, colour in zip(text, colours, strict=True):
        cv2.putText(
            out, letter, (x, int(h * 0.8)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA
        )
        x += cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] + 1
    return out


def test_a_caption_in_one_colour_is_one_region_when_lines_are_joined(framed):
    """`OverlayRule.lines`: a caption is a region per letter, and forgiving the largest leaves the rest;
    regions that line up as text in one colour (`text_lines`) are one, forgiven whole. The same letters
    each in another colour stay regions on their own, and so do two same-coloured marks side by side
    (two eyes: fewer than `LINE_MIN`)."""
    import cv2

    token, others = framed[0], framed[1:]
    joined, apart = OverlayRule("one", 0.01, lines=True), OverlayRule("one", 0.01)
    one = _caption(token, [(255, 0, 255)] * 8)
    found = comparison(one, token, scale_transform(one.shape, token.shape))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(found.differ.astype(np.uint8), connectivity=8)
    assert count - 1 >= 4 and found.share < 0.97  # several letters, more than one region forgiven can mend
    assert text_lines(stats, labels, found.query) == [list(range(1, count))]
    assert overlay(found, others, apart) < 0.98
    assert overlay(found, others, joined) == pytest.approx(1.0, abs=0.005)
    assert overlay(found, [*others, one], joined) == found.share  # a candidate that shows the caption
    rainbow = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    many = _caption(token, [*rainbow, (255, 255, 255), (0, 0, 0)])
    found = comparison(many, token, scale_transform(many.shape, token.shape))
    assert overlay(found, others, joined) == overlay(found, others, apart) < 0.98
    h, w = token.shape[:2]
    eyes = token.copy()
    for x in (w // 3, 2 * w // 3):
        cv2.circle(eyes, (x, h // 2), h // 16, (255, 0, 255), -1)
    found = comparison(eyes, token, scale_transform(eyes.shape, token.shape))
    assert overlay(found, others, joined) == overlay(found, others, apart) < 0.995


def test_a_compact_region_may_be_larger_when_compact_regions_are_allowed(framed):
    """`OverlayRule.compact`: a badge over a tenth of the figure is more than `OVERLAY_MAX`, but compact
    (a disc fills its hull, its box is square), so it is forgiven up to `COMPACT_MAX`; a bar of the same
    colour and about the same area (a long, thin box) is not, nor is a disc over `COMPACT_MAX`."""
    import cv2

    from app.agreement import COMPACT_MAX, compact

    token, others = framed[0], framed[1:]
    figure = ~background_region(token)
    ys, xs = np.nonzero(figure)
    centre = (int(xs.mean()), int(ys.mean()))
    larger, plain = OverlayRule("one", 0.01, compact=True), OverlayRule("one", 0.01)

    def disc(share: float) -> np.ndarray:
        out = token.copy()
        cv2.circle(out, centre, round(np.sqrt(share * figure.sum() / np.pi)), (255, 0, 255), -1)
        return out

    found = comparison(disc(0.1), token, scale_transform(token.shape, token.shape))
    assert OVERLAY_MAX < 1 - found.share < COMPACT_MAX
    assert compact(found.differ)
    assert overlay(found, others, plain) == found.share
    assert overlay(found, others, larger) == pytest.approx(1.0, abs=0.005)
    h = max(3, round(0.1 * figure.sum() / (0.8 * token.shape[1])))
    bar = token.copy()
    bar[centre[1] - h // 2 : centre[1] - h // 2 + h, token.shape[1] // 10 : token.shape[1] * 9 // 10] = (
        255,
        0,
        255,
    )
    found = comparison(bar, token, scale_transform(token.shape, token.shape))
    assert 1 - found.share > OVERLAY_MAX and not compact(found.differ)
    assert overlay(found, others, larger) == found.share
    found = comparison(disc(0.16), token, scale_transform(token.shape, token.shape))
    assert overlay(found, others, larger) == found.share

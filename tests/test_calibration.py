"""Temperature scaling, ECE, open-set scores and their sidecar statistics, the copy threshold, and the
data-selection rules that keep test tokens out of training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.errors import ModelIntegrityError
from app.manifest import UnknownDetector, sha256_of
from app.openset import (
    LayeredMahalanobis,
    OpenSetScorer,
    energy_score,
    fit_statistics,
    knn_score,
    mahalanobis_score,
    max_probability_score,
    save_statistics,
    softmax,
)

pytest.importorskip("torch", reason="the calibration code lives in training/")
from training.calibrate import (  # noqa: E402
    DETECTOR_FIELDS,
    MARGINS,
    OVERLAY_SHARE,
    called_copies,
    checked_threshold,
    choose_margins,
    copy_threshold,
    copy_thresholds,
    crossfit_false_copies,
    expected_calibration_error,
    fit_temperature,
    overlay_margin,
    pr_curve,
    tail_scale,
)


def _overconfident(n=4000, c=5, t_true=2.5, seed=0):
    """Logits whose labels are drawn from softmax(logits / t_true): the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, c))
    p = softmax(logits, t_true)
    y = np.array([rng.choice(c, p=row / row.sum()) for row in p.astype(float)])
    return logits, y


def test_temperature_recovers_the_true_one_and_lowers_ece():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert 2.1 < t < 2.9
    before = expected_calibration_error(softmax(logits, 1.0), y)
    after = expected_calibration_error(softmax(logits, t), y)
    assert after["ece"] < 0.03 < before["ece"]
    assert sum(b["n"] for b in after["bins"]) == len(y)


def test_scores_match_their_definitions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4))
    p = softmax(logits, 2.0)
    np.testing.assert_allclose(max_probability_score(logits, 2.0), 1 - p.max(1), atol=1e-6)
    np.testing.assert_allclose(
        energy_score(logits, 2.0), -2.0 * np.log(np.exp(logits / 2.0).sum(1)), atol=1e-6
    )
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    labels = np.repeat(np.arange(5), 10)
    stats = fit_statistics(emb, labels)
    q = rng.normal(size=(3, 8))
    brute = [
        min((x - mu) @ stats["precision"].astype(float) @ (x - mu) for mu in stats["means"].astype(float))
        for x in q
    ]
    np.testing.assert_allclose(mahalanobis_score(q, stats["means"], stats["precision"]), brute, rtol=1e-4)
    refs = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    qn = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    kth = np.sort(qn @ refs.T, axis=1)[:, ::-1][:, 4]
    np.testing.assert_allclose(knn_score(qn, refs, 5), 1 - kth, atol=1e-6)


def test_sidecar_statistics_are_pinned_by_sha256(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, 6)).astype(np.float32)
    stats = fit_statistics(emb, np.repeat(np.arange(4), 10))
    stats["references"] = emb
    save_statistics(tmp_path / "openset.npz", stats)
    det = UnknownDetector(
        method="mahalanobis",
        threshold=10.0,
        stats_file="openset.npz",
        stats_sha256=sha256_of(tmp_path / "openset.npz"),
    )
    scorer = OpenSetScorer(det, tmp_path)
    far = scorer.verdict(scorer.score({"logits": np.zeros((1, 4)), "embedding": np.full((1, 6), 50.0)})[0])
    near = scorer.verdict(scorer.score({"logits": np.zeros((1, 4)), "embedding": stats["means"][:1]})[0])
    assert far["is_unknown"] and not near["is_unknown"] and far["method"] == "mahalanobis"
    # a different file under the same name is refused, as is a missing one or one lacking its arrays
    save_statistics(tmp_path / "openset.npz", {k: v + 1 for k, v in stats.items()})
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OpenSetScorer(det, tmp_path)
    with pytest.raises(ModelIntegrityError, match="not found"):
        OpenSetScorer(det, tmp_path / "elsewhere")
    np.savez(tmp_path / "partial.npz", means=stats["means"])
    partial = det.model_copy(
        update={"stats_file": "partial.npz", "stats_sha256": sha256_of(tmp_path / "partial.npz")}
    )
    with pytest.raises(ModelIntegrityError, match="lacks"):
        OpenSetScorer(partial, tmp_path)
    with pytest.raises(ModelIntegrityError, match="stats_file"):
        OpenSetScorer(UnknownDetector(method="knn", threshold=0.1), tmp_path)


def test_multilayer_score_sums_standardised_layers_and_picks_layers_on_outliers(tmp_path):
    """The multilayer detector: per-layer Mahalanobis, standardised on known validation data, summed;
    its layers chosen by how many auxiliary outliers they flag; its sidecar arrays checked like any other."""
    from training.calibrate import choose_layers, fit_stage_statistics, layer_spread

    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 60)

    def outputs(n_or_y, shift_emb=0.0, shift_stage=0.0):
        labels = n_or_y if isinstance(n_or_y, np.ndarray) else np.zeros(n_or_y, int)
        emb = rng.normal(size=(len(labels), 6)) + labels[:, None] * 4 + shift_emb
        stage = np.abs(rng.normal(1.0, 0.1, size=(len(labels), 8)) + labels[:, None] * 0.5 + shift_stage)
        noise = np.abs(rng.normal(1.0, 0.1, size=(len(labels), 8)))  # carries no class information
        return {"embedding": emb, "stage0": stage.astype(np.float32), "stage1": noise.astype(np.float32)}

    train, val = outputs(y), outputs(y)
    stats = fit_statistics(train["embedding"], y) | fit_stage_statistics(train, y)
    assert {"stage0/center", "stage0/scale", "stage1/means", "stage1/precision"} <= set(stats)
    candidates = ["embedding", "stage0", "stage1"]
    layer_spread(stats, candidates, val)
    scorer = LayeredMahalanobis(candidates, stats)
    known = scorer.score(val)
    assert abs(known.mean()) < 1e-6  # each layer standardised on these very images
    # outliers that differ only in the stage-0 statistics (an unseen style) are caught by that layer alone
    styled = outputs(60, shift_stage=3.0)
    layers, table = choose_layers(stats, candidates, val, styled, false_unknown=0.01)
    assert "stage0" in layers and table["stage0"]["outliers_flagged"] > table["embedding"]["outliers_flagged"]
    assert choose_layers(stats, candidates, val, None, 0.01)[0] == candidates
    # shipped as a sidecar: loads, scores the same, and refuses a file without the layers' arrays
    save_statistics(tmp_path / "openset.npz", stats)
    det = UnknownDetector(
        method="multilayer",
        layers=layers,
        threshold=float(np.quantile(LayeredMahalanobis(layers, stats).score(val), 0.99)),
        stats_file="openset.npz",
        stats_sha256=sha256_of(tmp_path / "openset.npz"),
    )
    served = OpenSetScorer(det, tmp_path)
    np.testing.assert_allclose(
        served.score(styled), LayeredMahalanobis(layers, stats).score(styled), rtol=1e-4
    )
    assert served.verdict(served.score(styled)[:1][0])["method"] == "multilayer"
    assert np.mean(served.score(styled) > det.threshold) > 0.9
    stats.pop(f"{layers[-1]}/z")
    save_statistics(tmp_path / "bad.npz", stats)
    bad = det.model_copy(update={"stats_file": "bad.npz", "stats_sha256": sha256_of(tmp_path / "bad.npz")})
    with pytest.raises(ModelIntegrityError, match="lacks"):
        OpenSetScorer(bad, tmp_path)


def test_copy_threshold_keeps_the_false_copy_promise():
    rng = np.random.default_rng(3)
    neg = rng.normal(0.5, 0.1, 2000)
    pos = rng.normal(0.9, 0.05, 1000)
    chosen = copy_threshold(pos, neg, 0.005)
    assert chosen["false_copy_rate"] <= 0.005 and (neg >= chosen["threshold"]).mean() <= 0.005
    assert chosen["recall"] == pytest.approx((pos >= chosen["threshold"]).mean())
    curve = pr_curve(pos, neg)
    assert curve["recall"] == sorted(curve["recall"]) and curve["recall"][-1] == 1.0


def test_a_check_minimum_calls_more_copies_within_the_same_false_copy_budget():
    rng = np.random.default_rng(5)
    neg, neg_colours = rng.normal(0.5, 0.1, 400), rng.uniform(0.6, 0.95, 400)
    pos, pos_colours = rng.normal(0.7, 0.1, 300), rng.uniform(0.9, 1.0, 300)
    neg_colours[:50] = np.nan  # not checked (e.g. no figure to compare)
    score_alone = copy_threshold(pos, neg, 0.005)
    s, least = checked_threshold(pos, pos_colours, neg, neg_colours, 0.005, floor=0.9)
    assert least is not None and least >= 0.9
    called = (neg >= s) | (np.nan_to_num(neg_colours, nan=-1) >= least)
    assert called.sum() <= int(0.005 * len(neg))  # the union keeps the promise
    recall = ((pos >= s) | (pos_colours >= least)).mean()
    assert recall > score_alone["recall"] + 0.3
    # a check that distinct tokens reach as easily as copies never decides: the score alone is left
    s, least = checked_threshold(pos, pos_colours, neg, np.ones(len(neg)), 0.005, floor=0.9)
    assert least is None and s == pytest.approx(score_alone["threshold"])
    # nothing checked at all: the same as the score alone
    s, least = checked_threshold(pos, np.full(len(pos), np.nan), neg, np.full(len(neg), np.nan), 0.005, 0.9)
    assert least is None and s == pytest.approx(score_alone["threshold"])


def test_copy_thresholds_give_a_check_minimum_only_where_distinct_tokens_stay_below_it():
    rng = np.random.default_rng(6)
    n, p = 200, 140
    pairs = {
        "pos": rng.normal(0.8, 0.1, 2 * p),
        "pos_coll": np.array(["apes"] * p + ["punks"] * p),
        "pos_edit": np.array(["crop", "logo"] * p),
        "neg": rng.normal(0.6, 0.1, 2 * n),
        "neg_coll": np.array(["apes"] * n + ["punks"] * n),
        # apes are paintings (colours), punks sprites (layout) whose distinct tokens often share a layout
        "pos_colours": np.r_[rng.uniform(0.95, 1.0, p), np.full(p, np.nan)],
        "neg_colours": np.r_[rng.uniform(0.5, 0.96, n), np.full(n, np.nan)],
        "pos_layout": np.r_[np.full(p, np.nan), np.ones(p)],
        "neg_layout": np.r_[np.full(n, np.nan), np.where(rng.random(n) < 0.5, 1.0, 0.7)],
    }
    chosen = copy_thresholds(pairs, 0.005)
    assert set(chosen["colours_min"]) == {"apes"} and 0.95 <= chosen["colours_min"]["apes"] <= 0.97
    assert chosen["layout_min"] == {}  # twins: a layout of 1.0 is no proof of a copy
    assert chosen["false_copy_rate"] <= 0.005 and chosen["recall"] > 0.5
    assert chosen["recall_by_edit"]["crop"] > 0.5
    # a collection whose few distinct tokens stay far below is held to what all painted negatives allow
    cats = {
        "pos": rng.normal(0.8, 0.1, 60),
        "pos_coll": np.array(["cats"] * 60),
        "pos_edit": np.array(["crop"] * 60),
        "neg": rng.normal(0.6, 0.1, 60),
        "neg_coll": np.array(["cats"] * 60),
        "pos_colours": rng.uniform(0.9, 1.0, 60),
        "neg_colours": rng.uniform(0.5, 0.8, 60),
        "pos_layout": np.full(60, np.nan),
        "neg_layout": np.full(60, np.nan),
    }
    alone = copy_thresholds(cats, 0.005)["colours_min"]["cats"]
    both = copy_thresholds({k: np.concatenate([pairs[k], cats[k]]) for k in pairs}, 0.005)["colours_min"]
    assert alone < 0.91 and both["cats"] == pytest.approx(both["apes"]) and both["cats"] >= 0.95


def test_an_overlay_minimum_is_chosen_within_what_the_score_and_colours_leave_of_the_budget():
    """Badge copies show their original's colours everywhere but one region (`overlay` near 1.0, colours
    lower); a collection whose distinct tokens never reach such an overlay gets a minimum that calls them,
    one with a twin at 1.0 none, and the pairs' verdict (as served) keeps the false-copy promise."""
    rng = np.random.default_rng(7)
    n, p = 400, 200
    pos_colours = rng.uniform(0.92, 0.97, 2 * p)
    neg_colours = rng.uniform(0.5, 0.94, 2 * n)
    neg_overlay = np.minimum(neg_colours + rng.uniform(0, 0.04, 2 * n), 0.975)
    neg_overlay[n + 3 : n + 6] = 1.0  # single-trait twins among the dogs that no other candidate gave away
    pairs = {
        "pos": rng.normal(0.5, 0.05, 2 * p),
        "pos_coll": np.array(["apes"] * p + ["dogs"] * p),
        "pos_edit": np.array(["logo"] * 2 * p),
        "neg": rng.normal(0.4, 0.05, 2 * n),
        "neg_coll": np.array(["apes"] * n + ["dogs"] * n),
        "pos_colours": pos_colours,
        "neg_colours": neg_colours,
        "pos_overlay": np.r_[np.ones(p), np.ones(p)],
        "neg_overlay": neg_overlay,
        "pos_layout": np.full(2 * p, np.nan),
        "neg_layout": np.full(2 * n, np.nan),
    }
    chosen = copy_thresholds(pairs, 0.005)
    allowed = int(0.005 * n)  # per collection: above all but this many of its distinct tokens
    assert np.sort(neg_overlay[:n])[-allowed - 1] < chosen["overlay_min"]["apes"] <= 1.0
    assert "dogs" not in chosen["overlay_min"]
    assert chosen["recall_by_edit"]["logo"] >= 0.5 and chosen["false_copy_rate"] <= 0.005
    without = copy_thresholds({k: v for k, v in pairs.items() if "overlay" not in k}, 0.005)
    assert without["overlay_min"] == {} and without["recall"] < chosen["recall"]


def test_a_lossless_layout_decides_the_pairs_verdict_where_its_collection_has_a_minimum():
    """As served (`app.verify.is_copy`): a lossless sprite pair below the layout minimum is no copy
    whatever its score, one at the minimum is; elsewhere the score or the check calls it."""
    from app.manifest import CopyDetector

    detector = CopyDetector(threshold=0.5, layout_min={"punks": 0.999})
    scores = np.array([0.9, 0.9, 0.1, 0.9, 0.1])
    colls = np.array(["punks", "punks", "punks", "nouns", "punks"])
    layouts = np.array([0.99, 0.99, 1.0, 0.5, 0.99])
    lossless = np.array([True, False, True, True, False])
    called = called_copies(detector, scores, colls, layouts, np.full(5, np.nan), lossless)
    assert called.tolist() == [False, True, True, True, False]
    assert called_copies(detector, scores, colls, layouts, np.full(5, np.nan)).tolist()[0]  # not lossless


def test_shipped_model_manifest_pins_its_statistics(model_dir, tmp_path):
    """The service refuses the default model if its open-set sidecar is swapped."""
    from app.inference import OnnxModel

    m = OnnxModel(model_dir, providers=["CPUExecutionProvider"]).manifest
    if m.unknown is None or not m.unknown.stats_file:
        pytest.skip("the model under test ships no open-set statistics")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    OpenSetScorer(m.unknown, copy)  # as shipped: loads
    with np.load(copy / m.unknown.stats_file) as f:
        arrays = {k: f[k] for k in f}
    arrays["means"] = arrays["means"] * 0
    np.savez_compressed(copy / m.unknown.stats_file, **arrays)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OpenSetScorer(m.unknown, copy)
    assert json.loads((copy / "model.json").read_text())["unknown"]["stats_sha256"] == m.unknown.stats_sha256


def test_a_multilayer_detector_must_name_layers_the_graph_has(model_dir):
    """A manifest whose multilayer detector lists no layer, or one the graph lacks, is refused at load."""
    from app.manifest import ModelManifest, load_manifest

    raw = load_manifest(model_dir).model_dump(mode="json")
    det = {"method": "multilayer", "threshold": 1.0, "stats_file": "openset.npz"}
    for layers in ([], ["embedding", "stage9"]):
        with pytest.raises(ValueError, match="multilayer needs layers"):
            ModelManifest.model_validate({**raw, "unknown": {**det, "layers": layers}})
    ModelManifest.model_validate({**raw, "unknown": {**det, "layers": ["embedding"]}})


def test_holdout_keeps_test_punks_out_of_training_and_validation(punks, tmp_path):
    """A token listed in a holdout dataset can never enter the train or val split of another dataset."""
    from training.datasets import write_dataset
    from training.train import TrainConfig, gather

    test_ids = ["0", "1", "7804", "3100", "9999"]
    write_dataset(
        tmp_path / "test-punks",
        [
            {
                "path": f"x/{i}.png",
                "collection": "cryptopunks",
                "token_id": i,
                "label": "cryptopunks",
                "split": "test",
            }
            for i in test_ids
        ],
        "test-punks",
        "ids only",
    )
    cfg = TrainConfig(
        data=[str(punks.root)], holdout=[str(tmp_path / "test-punks")], label_field="collection"
    )
    for split in ("train", "val"):
        _, _, rows, _ = gather(cfg, split)
        assert rows and not {r["token_id"] for r in rows} & set(test_ids)
    without = TrainConfig(data=[str(punks.root)], label_field="collection")
    seen = {r["token_id"] for s in ("train", "val") for r in gather(without, s)[2]}
    assert seen & set(test_ids)  # without the holdout some of them would have been trained on


def test_per_label_cap_is_drawn_afresh_each_epoch_and_seeded():
    from training.sampling import EpochBatchSampler

    labels = ["a"] * 300 + ["b"] * 50 + ["c"] * 200
    s = EpochBatchSampler(labels, batch_size=30, max_per_label=40, groups_per_batch=3, seed=7)
    s.set_epoch(0)
    e0 = [i for b in s for i in b]
    s.set_epoch(1)
    e1 = [i for b in s for i in b]
    again = EpochBatchSampler(labels, batch_size=30, max_per_label=40, groups_per_batch=3, seed=7)
    again.set_epoch(1)
    assert [i for b in again for i in b] == e1  # seeded
    assert set(e0) != set(e1)  # a fresh draw, not one fixed subset
    for b in s:
        assert len(b) == 30 and len({labels[i] for i in b}) <= 3
    counts = {lab: sum(labels[i] == lab for i in e1) for lab in "abc"}
    assert counts == {"a": 40, "b": 40, "c": 40}  # balanced to the cap


def test_dihedral_views_cover_flips_and_turns():
    from app.views import N_VIEWS, best_over_views, dihedral_views

    x = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    views = dihedral_views(x)
    assert views.shape == (N_VIEWS, 3, 4, 4) and len({v.tobytes() for v in views}) == 8
    assert np.array_equal(views[0], x) and np.array_equal(views[4], x[:, :, ::-1])
    assert any(np.array_equal(v, np.rot90(x[:, ::-1], 1, axes=(1, 2))) for v in views)
    assert best_over_views(np.array([[0.1, 0.9], [0.5, 0.2]])).tolist() == [0.5, 0.9]


def test_reproduce_command_chains_training_stages(tmp_path):
    import yaml

    from training.export import reproduce_command

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "config.yaml").write_text(yaml.safe_dump({"pretrained": "none"}))
    (second / "config.yaml").write_text(yaml.safe_dump({"pretrained": f"file:{first / 'best.pt'}"}))
    cmd = reproduce_command(second / "best.pt", tmp_path / "model")
    assert cmd.split(" && ") == [
        f"nftlens train --config {first / 'config.yaml'}",
        f"nftlens train --config {second / 'config.yaml'}",
        f"nftlens export {second / 'best.pt'} --out {tmp_path / 'model'}",
    ]


def test_tail_scale_is_the_scale_of_an_exponential_top():
    rng = np.random.default_rng(8)
    assert tail_scale(rng.exponential(0.01, 20000), tail=200) == pytest.approx(0.01, rel=0.2)
    assert tail_scale(np.r_[np.full(5, np.nan), np.arange(5.0)]) == 0.0  # too few to fit


def _painted_pairs(rng, collections: int, negatives: int, positives: int = 60) -> dict:
    """Pairs of painted collections whose distinct tokens' scores and colour checks have exponential tops
    (as near twins make them); copies keep their colours, their scores spread."""
    n, p = collections * negatives, collections * positives
    names = [f"c{i}" for i in range(collections)]
    return {
        "pos": rng.uniform(0.6, 1.0, p),
        "pos_coll": np.repeat(names, positives),
        "pos_edit": np.array(["crop", "logo"] * (p // 2)),
        "neg": 0.6 + rng.exponential(0.03, n),
        "neg_coll": np.repeat(names, negatives),
        "pos_colours": rng.uniform(0.93, 1.0, p),
        "neg_colours": np.minimum(0.7 + rng.exponential(0.02, n), 1.0),
        "pos_layout": np.full(p, np.nan),
        "neg_layout": np.full(n, np.nan),
    }


def _fresh_false_copies(chosen: dict, fresh: dict) -> float:
    """The share of `fresh` distinct tokens that `copy_thresholds`' cuts call copies."""
    from app.manifest import CopyDetector

    detector = CopyDetector(**{k: chosen[k] for k in DETECTOR_FIELDS})
    called = called_copies(
        detector,
        fresh["neg"],
        fresh["neg_coll"],
        fresh["neg_layout"],
        fresh["neg_colours"],
        overlays=fresh.get("neg_overlay"),
    )
    return float(called.mean())


def test_cross_fitted_margins_keep_the_false_copy_promise_on_tokens_calibration_never_saw():
    """Cuts just above ~100 distinct tokens per collection call ~1 % of new ones: the cross-fit sees it,
    and the margin it chooses brings new tokens' false-copy rate within the promise."""
    rng = np.random.default_rng(9)
    pairs, fresh = _painted_pairs(rng, 20, 100), _painted_pairs(rng, 20, 3000)
    plain = copy_thresholds(pairs, 0.005)
    assert plain["false_copy_rate"] <= 0.005  # within the promise on the tokens it was chosen on ...
    assert _fresh_false_copies(plain, fresh) > 0.006  # ... but not on new ones
    assert crossfit_false_copies(pairs, 0.005)["colours"] > 0.005  # the cross-fit says so
    margins, rates, counts, _ = choose_margins(pairs, 0.005)
    assert margins["colours"] in MARGINS and margins["colours"] > 0 and rates["colours"] <= 0.005
    k, n = counts["colours"]
    assert n == 2000 and rates["colours"] == (k + 1) / (n + 1)  # every distinct token judged once
    kept = copy_thresholds(pairs, 0.005, margins=margins)
    assert _fresh_false_copies(kept, fresh) <= 0.005
    assert kept["per_collection"]["c0"] > plain["per_collection"]["c0"]
    assert kept["colours_min"]["c0"] > plain["colours_min"]["c0"]
    assert kept["recall"] > 0.5  # copies stay well above the raised cuts


def _badged_pairs(rng, collections: int, negatives: int) -> dict:
    """`_painted_pairs` whose copies are half badged (colours broken where the badge sits, `overlay` near
    1) and whose distinct tokens' overlays have an exponential top."""
    pairs = _painted_pairs(rng, collections, negatives)
    badged = pairs["pos_edit"] == "logo"
    pairs["pos_colours"][badged] = rng.uniform(0.8, 0.9, badged.sum())
    pairs["pos_overlay"] = np.where(badged, rng.uniform(0.9, 1.0, len(badged)), pairs["pos_colours"])
    pairs["neg_overlay"] = np.minimum(0.8 + rng.exponential(0.02, len(pairs["neg"])), 1.0)
    return pairs


def test_the_overlay_cut_alone_is_lowered_within_a_share_of_the_budget():
    """Below the paintings' shared margin, the overlay cut gets the least margin whose cross-fitted rate,
    pooled over seeds, spends at most `OVERLAY_SHARE` of the budget: badged copies gain, new distinct
    tokens stay within the promise; with no share to spend it stays at the shared margin."""
    rng = np.random.default_rng(12)
    pairs, fresh = _badged_pairs(rng, 10, 100), _badged_pairs(rng, 10, 3000)
    shared = {"colours": 4.0, "layout": 0.0, "none": 0.0}  # score and colour cuts well above their tokens
    margin, tried = overlay_margin(pairs, 0.005, shared)
    assert margin < shared["colours"] and tried[margin] <= OVERLAY_SHARE * 0.005
    assert all(rate > OVERLAY_SHARE * 0.005 for m, rate in tried.items() if m < margin)  # the least
    assert overlay_margin(pairs, 0.005, shared, share=1e-4)[0] == shared["colours"]
    before = copy_thresholds(pairs, 0.005, margins=shared)
    after = copy_thresholds(pairs, 0.005, margins={**shared, "overlay": margin})
    assert after["overlay_min"]["c0"] < before["overlay_min"]["c0"]
    assert (
        after["colours_min"] == before["colours_min"] and after["per_collection"] == before["per_collection"]
    )
    assert after["recall_by_edit"]["logo"] > before["recall_by_edit"]["logo"] + 0.1
    assert _fresh_false_copies(after, fresh) <= 0.005
    chosen = choose_margins(pairs, 0.005)[0]  # the kind margins, then the overlay's where it is lower
    kinds = {k: v for k, v in chosen.items() if k != "overlay"}
    assert (
        chosen.get("overlay", kinds["colours"]) == overlay_margin(pairs, 0.005, kinds)[0] <= kinds["colours"]
    )


def test_a_layout_minimum_raised_above_one_is_dropped_so_the_score_decides_again():
    """A lossless sprite's layout decides alone where its collection has a layout minimum: one above 1
    would refuse every copy, so a margin that lifts it past 1 leaves the collection none."""
    rng = np.random.default_rng(10)
    n, p = 200, 100
    pairs = {
        "pos": rng.uniform(0.6, 1.0, p),
        "pos_coll": np.array(["punks"] * p),
        "pos_edit": np.array(["crop"] * p),
        "neg": rng.normal(0.6, 0.05, n),
        "neg_coll": np.array(["punks"] * n),
        "pos_colours": np.full(p, np.nan),
        "neg_colours": np.full(n, np.nan),
        "pos_layout": np.ones(p),
        "neg_layout": rng.uniform(0.5, 0.99, n),
    }
    plain = copy_thresholds(pairs, 0.005)
    assert 0.98 < plain["layout_min"]["punks"] <= 1.0
    assert (
        copy_thresholds(pairs, 0.005, margins={"layout": 0.5})["layout_min"]["punks"]
        > plain["layout_min"]["punks"]
    )
    lifted = copy_thresholds(pairs, 0.005, margins={"layout": 4.0})
    assert lifted["layout_min"] == {} and lifted["per_collection"]["punks"] > plain["per_collection"]["punks"]


def test_a_manifest_without_an_overlay_witness_keeps_the_first_rule_and_no_other_is_taken():
    """`overlay_min` cuts fit the `overlay` they were calibrated with: a manifest written before the
    witness was a choice keeps "together" and does not look beyond the figure (`overlay_beyond` None),
    joins no caption's letters (`overlay_lines` False) nor lets a compact region be larger
    (`overlay_compact` False); the shipped int8 model is calibrated with the same command as fp32's, so
    both carry the same rule; an unknown witness, or a `--overlay-beyond` that is not a share, is refused
    before the manifest is touched."""
    from pydantic import ValidationError

    from app.agreement import OverlayRule
    from app.manifest import CopyDetector, load_manifest

    assert CopyDetector(threshold=0.5).overlay_rule == OverlayRule(
        "together", None, lines=False, compact=False
    )
    chosen = CopyDetector(
        threshold=0.5, overlay_witness="one", overlay_beyond=0.01, overlay_lines=True, overlay_compact=True
    )
    assert chosen.overlay_rule == OverlayRule("one", 0.01, lines=True, compact=True)
    for wrong in ({"overlay_witness": "anyone"}, {"overlay_beyond": 1.5}):
        with pytest.raises(ValidationError):
            CopyDetector(threshold=0.5, **wrong)
    models = Path(__file__).resolve().parents[1] / "models"
    shipped_int8 = models / "default-int8"
    for shipped in (models / "default", shipped_int8):  # `nftlens calibrate`'s default rule
        assert load_manifest(shipped).copies.overlay_rule == chosen.overlay_rule
    from typer.testing import CliRunner

    from app.cli import serve_app

    before = (shipped_int8 / "model.json").read_bytes()
    refused = CliRunner().invoke(serve_app, ["calibrate", str(shipped_int8), "--overlay-witness", "anyone"])
    assert refused.exit_code == 2 and "overlay-witness" in refused.output
    for share in ("lots", "1.5"):
        refused = CliRunner().invoke(serve_app, ["calibrate", str(shipped_int8), "--overlay-beyond", share])
        assert refused.exit_code == 2 and "overlay-beyond" in refused.output
    assert (shipped_int8 / "model.json").read_bytes() == before

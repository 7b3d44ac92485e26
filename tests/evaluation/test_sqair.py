"""SQAIR evaluation: IoU matching, CLEAR-MOT tracking errors (swaps vs re-detections), failure-mode labels, the
addition experiment's features/targets/classifier, and the wiring on an untrained quick-config SQAIR."""

import json

import jax
import numpy as np
import pytest

from ocr_jax.evaluation import sqair as se

T = 4


def _box(y, x, h=10, w=10):
    return [y, x, y + h, x + w]


def _two_objects():
    """Ground truth [T, 2, 4] / [T, 2]: object 0 moves right along the top, object 1 moves left along the bottom."""
    boxes = np.array([[_box(0, 2 * t), _box(30, 30 - 2 * t)] for t in range(T)], np.float32)
    return boxes, np.ones((T, 2), bool)


def _inferred(true_boxes, ids, slots=(1, 0), num_slots=3):
    """Inferred [T, num_slots, ...]: true object j sits in slot slots[j] with identity ids[t][j]; other slots absent."""
    boxes = np.zeros((T, num_slots, 4), np.float32)
    pres = np.zeros((T, num_slots), np.float32)
    out_ids = np.full((T, num_slots), -1, np.int32)
    for t in range(T):
        for j, s in enumerate(slots):
            boxes[t, s] = true_boxes[t, j] + 0.5  # IoU ≈ 0.82
            pres[t, s] = 1.0
            out_ids[t, s] = ids[t][j]
    return boxes, pres, out_ids


def test_perfect_tracking_has_no_errors():
    tb, tp = _two_objects()
    boxes, pres, ids = _inferred(tb, [(7, 3)] * T)  # slots permuted w.r.t. the ground truth: matching is by box
    np.testing.assert_array_equal(se.match_objects(tb, tp, boxes, pres), np.tile([1, 0], (T, 1)))
    r = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (r["matches"], r["misses"], r["false_positives"]) == (2 * T, 0, 0)
    assert (r["switches"], r["swaps"], r["redetections"], r["redetections_at_t2"]) == (0, 0, 0, 0)
    assert r["continuations"] == 2 * (T - 1) and r["matched_tracks"] == r["num_tracks"] == 2
    assert r["mota"] == 1.0 and r["switches_per_track"] == 0.0 and r["recall"] == r["precision"] == 1.0
    assert r["motp"] == pytest.approx(float(se.box_iou(tb[0, 0], tb[0, 0] + 0.5)))
    assert r["failure_mode"] == "tracks"
    json.dumps(r)


@pytest.mark.parametrize("continuity", [True, False])
def test_exchanging_two_identities_is_a_swap(continuity):
    tb, tp = _two_objects()
    boxes, pres, ids = _inferred(tb, [(0, 1), (0, 1), (1, 0), (1, 0)])
    r = se.tracking_errors(tb, tp, boxes, pres, ids, continuity=continuity)
    assert (r["switches"], r["swaps"], r["exchanges"], r["redetections"]) == (2, 2, 2, 0)
    assert r["swaps_near_overlap"] == 0 and r["swaps_near_overlap_fraction"] == 0.0  # the two never overlap
    # the same exchange right after the two objects' boxes overlapped (frame 1 of 4): near an overlap
    tb[1, 1] = tb[1, 0] + 3
    boxes, pres, ids = _inferred(tb, [(0, 1), (0, 1), (1, 0), (1, 0)])
    r = se.tracking_errors(tb, tp, boxes, pres, ids, continuity=continuity)
    assert (r["swaps"], r["swaps_near_overlap"], r["swaps_near_overlap_fraction"]) == (2, 2, 1.0)
    assert r["swaps_per_track"] == 1.0 and r["switch_rate"] == r["exchange_rate"] == pytest.approx(2 / 6)
    assert r["mota"] == pytest.approx(1 - 2 / 8)
    assert r["failure_mode"] == "switches"


def test_new_identity_at_second_frame_is_a_redetection():
    tb, tp = _two_objects()
    boxes, pres, ids = _inferred(tb, [(0, 1), (2, 1), (2, 1), (2, 1)])  # object 0 forgotten and re-discovered at t=1
    r = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (r["switches"], r["swaps"], r["redetections"], r["redetections_at_t2"]) == (1, 0, 1, 1)
    assert r["continuations_at_t2"] == 2 and r["redetection_rate_at_t2"] == 0.5
    assert r["redetections_late"] == 0 and r["failure_mode"] == "redetects_at_t2"
    # a new identity in every frame: DISC-only
    boxes, pres, ids = _inferred(tb, [(2 * t, 2 * t + 1) for t in range(T)])
    r = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (r["switches"], r["redetections"], r["swaps"], r["redetections_at_t2"]) == (6, 6, 0, 2)
    assert r["failure_mode"] == "disc_only"


def test_one_window_over_two_digits_is_a_merged_miss():
    """One inferred window holding both digits: it matches one of them, the other is a miss that lies inside the
    matched window — a merged miss; merged in every frame, the run is labelled "merges"."""
    tb, tp = _two_objects()
    tb[:, 1] = tb[:, 0] + [0, 12, 0, 12]  # object 1 beside object 0, no overlap
    boxes, pres, ids = _inferred(tb, [(0, 1)] * T, slots=(0, 1))
    boxes[:, 0] = np.concatenate([tb[:, 0, :2], tb[:, 1, 2:]], -1)  # one window over both digits, the other absent
    pres[:, 1] = 0.0
    ids[:, 1] = -1
    r = se.tracking_errors(tb, tp, boxes, pres, ids, coverage_threshold=0.5)
    assert (r["matches"], r["misses"], r["merged_misses"]) == (T, T, T)
    assert r["merged_miss_rate"] == 0.5 and r["failure_mode"] == "merges"
    # a miss far from every window is no merge, nor is a window covering under MERGE_COVERAGE of the digit
    boxes[:, 0] = tb[:, 0]
    r = se.tracking_errors(tb, tp, boxes, pres, ids, coverage_threshold=0.5)
    assert (r["misses"], r["merged_misses"], r["failure_mode"]) == (T, 0, "tracks")
    boxes[:, 0, 3] = tb[:, 1, 1] + 0.4 * 10  # 40 % of object 1 inside the window
    r = se.tracking_errors(tb, tp, boxes, pres, ids, coverage_threshold=0.5)
    assert (r["misses"], r["merged_misses"]) == (T, 0)


def test_misses_false_positives_and_redetection_across_a_gap():
    tb, tp = _two_objects()
    boxes, pres, ids = _inferred(tb, [(0, 1)] * T)
    pres[2, 1] = 0.0  # object 0's detection is missing at t=2 (it comes back with its identity: no switch)
    ids[2, 1] = -1
    boxes[1, 2], pres[1, 2], ids[1, 2] = _box(12, 12), 1.0, 9  # a spurious object at t=1
    r = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (r["matches"], r["misses"], r["false_positives"], r["switches"]) == (7, 1, 1, 0)
    assert r["num_true"] == 8 and r["num_inferred"] == 8
    assert r["mota"] == pytest.approx(1 - 2 / 8)
    # object 0 unmatched at t=1 and t=2, then matched to identity 5, created during the gap: a re-detection (its
    # identity did not exist at t=0, the frame of the last match), not counted at frame index 1
    boxes, pres, ids = _inferred(tb, [(0, 1), (0, 1), (5, 1), (5, 1)])
    boxes[1:3, 1] = [_box(40, 40)] * 2
    r = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (r["misses"], r["false_positives"], r["switches"], r["redetections"]) == (2, 2, 1, 1)
    assert r["redetections_at_t2"] == 0 and r["redetections_late"] == 1
    # batched input sums the sequences' counts
    rb = se.tracking_errors(
        np.stack([tb, tb]), np.stack([tp, tp]), np.stack([boxes] * 2), np.stack([pres] * 2), np.stack([ids] * 2)
    )
    assert rb["num_sequences"] == 2 and rb["redetections"] == 2 and rb["matches"] == 2 * r["matches"]


def test_continuity_keeps_a_still_valid_correspondence():
    """A duplicate with a better box appears at t=1: CLEAR-MOT keeps the old identity (the duplicate is a false
    positive); frame-by-frame matching switches to the duplicate (a re-detection)."""
    tb = np.array([[_box(0, 0)]] * 2, np.float32)
    tp = np.ones((2, 1), bool)
    boxes = np.array([[_box(0, 0, 10, 7), [0, 0, 0, 0]], [_box(0, 0, 10, 7), _box(0, 0, 10, 9)]], np.float32)
    pres = np.array([[1, 0], [1, 1]], np.float32)
    ids = np.array([[0, -1], [0, 1]], np.int32)
    kept = se.tracking_errors(tb, tp, boxes, pres, ids)
    assert (kept["switches"], kept["false_positives"]) == (0, 1)
    # identity 1 (a spurious object at t=0) takes the object over at t=1 while identity 0 drifts off it, following
    # nothing: a swap, not an exchange
    boxes = np.array([[_box(0, 0), _box(30, 30)], [_box(30, 30), _box(0, 0)]], np.float32)
    taken = se.tracking_errors(tb, tp, boxes, np.ones((2, 2)), np.array([[0, 1], [0, 1]], np.int32))
    assert (taken["switches"], taken["swaps"], taken["exchanges"]) == (1, 1, 0)
    fresh = se.tracking_errors(tb, tp, boxes, pres, ids, continuity=False)
    assert (fresh["switches"], fresh["redetections"], fresh["redetections_at_t2"]) == (1, 1, 1)


def test_iou_matching_respects_the_threshold_and_maximises_total_iou():
    full = lambda x0, x1: [0, x0, 10, x1]  # noqa: E731  boxes of height 10 over columns x0..x1
    assert float(se.box_iou(np.array(full(0, 10)), np.array(full(0, 6)))) == pytest.approx(0.6)
    tb, tp = np.array([[full(0, 10)]], np.float32), np.ones((1, 1), bool)
    b, p = np.array([[full(0, 6)]], np.float32), np.ones((1, 1))
    assert se.match_objects(tb, tp, b, p, iou_threshold=0.5)[0, 0] == 0
    assert se.match_objects(tb, tp, b, p, iou_threshold=0.7)[0, 0] == -1
    assert se.match_objects(tb, tp, b, np.zeros((1, 1)), iou_threshold=0.1)[0, 0] == -1  # absent: never matched
    # A = [0, 10] and B = [1, 11]; s0 = [0, 10] (IoU 1 with A, 9/11 with B), s1 = [0, 7] (0.7 with A, 6/11 with B).
    # At threshold 0.6 the greedy A -> s0 leaves B unmatched; the best one-to-one assignment is A -> s1, B -> s0.
    tb, tp = np.array([[full(0, 10), full(1, 11)]], np.float32), np.ones((1, 2), bool)
    b, p = np.array([[full(0, 10), full(0, 7)]], np.float32), np.ones((1, 2))
    np.testing.assert_array_equal(se.match_objects(tb, tp, b, p, iou_threshold=0.6), [[1, 0]])
    np.testing.assert_array_equal(se.match_objects(tb, tp, b, p, iou_threshold=0.5), [[0, 1]])  # 1 + 6/11 > 0.7 + 9/11


def test_coverage_matching_accepts_a_glimpse_window_around_the_digit_and_refuses_a_partial_one():
    # A 10×10 digit inside a 20×20 window: coverage 1, IoU 0.25 — held by the window, unmatched by IoU ≥ 0.3.
    digit, window = np.array(_box(10, 10), np.float32), np.array(_box(5, 5, 20, 20), np.float32)
    assert float(se.box_coverage(digit, window)) == pytest.approx(1.0)
    assert float(se.box_iou(digit, window)) == pytest.approx(0.25)
    half = np.array(_box(10, 15, 10, 20), np.float32)  # covers the right half of the digit
    assert float(se.box_coverage(digit, half)) == pytest.approx(0.5)
    assert float(se.box_coverage(np.array([3, 3, 3, 9], np.float32), window)) == 0.0  # an empty true box
    tb, tp, p = digit[None, None], np.ones((1, 1), bool), np.ones((1, 1))
    assert se.match_objects(tb, tp, window[None, None], p, iou_threshold=0.3)[0, 0] == -1
    assert se.match_objects(tb, tp, window[None, None], p, coverage_threshold=0.5)[0, 0] == 0
    assert se.match_objects(tb, tp, half[None, None], p, coverage_threshold=0.5)[0, 0] == 0
    assert se.match_objects(tb, tp, half[None, None], p, coverage_threshold=0.6)[0, 0] == -1
    with pytest.raises(ValueError, match="coverage_threshold"):
        se.match_objects(tb, tp, window[None, None], p, coverage_threshold=1.5)


def test_coverage_tracking_keeps_an_identity_that_iou_tracking_loses():
    """One digit followed by identity 7 whose window grows from tight to twice the digit's side in frame 2: IoU
    matching loses it there (a miss, then a continuation from frame 1), coverage matching keeps it in every frame."""
    tb = np.array([[_box(0, 2 * t)] for t in range(T)], np.float32)
    windows = tb.copy()
    windows[2, 0] = _box(-5, 4 - 5, 20, 20)
    pres, ids = np.ones((T, 1)), np.full((T, 1), 7, np.int32)
    by_iou = se.tracking_errors(tb, np.ones((T, 1), bool), windows, pres, ids, iou_threshold=0.3)
    by_coverage = se.tracking_errors(tb, np.ones((T, 1), bool), windows, pres, ids, coverage_threshold=0.5)
    assert (by_iou["matches"], by_iou["misses"], by_iou["false_positives"]) == (3, 1, 1)
    assert (by_coverage["matches"], by_coverage["misses"], by_coverage["false_positives"]) == (4, 0, 0)
    assert by_coverage["switches"] == by_iou["switches"] == 0


def test_tracking_match_options_read_the_eval_config():
    import ml_collections

    ev = ml_collections.ConfigDict(
        dict(tracking_match="coverage", tracking_coverage_threshold=0.6, tracking_iou_threshold=0.3)
    )
    assert se.tracking_match_options(ev) == dict(iou_threshold=0.3, coverage_threshold=0.6)
    ev.tracking_match = "iou"
    assert se.tracking_match_options(ev) == dict(iou_threshold=0.3, coverage_threshold=None)
    ev.tracking_match = "centre"
    with pytest.raises(ValueError, match="tracking_match"):
        se.tracking_match_options(ev)


def test_bad_inputs_raise():
    tb, tp = _two_objects()
    boxes, pres, ids = _inferred(tb, [(0, 1)] * T)
    with pytest.raises(ValueError, match="presence must be"):
        se.match_objects(tb, tp, boxes, pres[:, :2])
    with pytest.raises(ValueError, match="true_presence must be"):
        se.tracking_errors(tb, tp[:, :1], boxes, pres, ids)
    with pytest.raises(ValueError, match="ids must be"):
        se.tracking_errors(tb, tp, boxes, pres, ids[:-1])
    with pytest.raises(ValueError, match="frames"):
        se.tracking_errors(tb[:-1], tp[:-1], boxes, pres, ids)
    with pytest.raises(ValueError, match="labels"):
        se.addition_targets(np.zeros((2, 2), np.int32), np.zeros((2, 3, 3), bool))
    with pytest.raises(ValueError, match="targets_train must be integers in 0..18"):
        se.train_addition_classifier(
            np.zeros((4, 3)), np.array([0, 1, 2, 19]), np.zeros((2, 3)), np.zeros(2, int), steps=1
        )
    with pytest.raises(ValueError, match="same width"):
        se.train_addition_classifier(np.zeros((4, 3)), np.zeros(4, int), np.zeros((2, 5)), np.zeros(2, int), steps=1)


def test_addition_targets_and_features():
    labels = np.array([[3, 7], [5, -1], [-1, -1]], np.int32)
    presence = np.array([[[1, 1], [0, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]], bool)
    np.testing.assert_array_equal(se.addition_targets(labels, presence), [[10, 7], [5, 0], [0, 0]])
    with pytest.raises(ValueError, match="label -1"):
        se.addition_targets(labels, np.ones((3, 2, 2), bool))
    z_what = np.arange(6, dtype=np.float32).reshape(1, 3, 2)  # slots [0 1], [2 3], [4 5]
    f = se.addition_features(z_what, np.array([[1.0, 1.0, 0.0]]), np.array([[5, 2, -1]]))
    np.testing.assert_array_equal(f, [[2, 3, 0, 1, 0, 0]])  # identity order (2 then 5), the absent slot zeroed
    f = se.addition_features(z_what, np.array([[1.0, 1.0, 0.0]]), np.array([[2, 5, -1]]))  # model order: unchanged
    np.testing.assert_array_equal(f, [[0, 1, 2, 3, 0, 0]])


def _digit_features(n, rng):
    """Two digit slots coded one-hot (times presence) plus noise and 4 distractor dimensions; targets = digit sum."""
    digits = rng.integers(0, 10, size=(n, 2))
    pres = rng.random((n, 2)) < 0.8
    x = (np.eye(10)[digits] * pres[..., None]).reshape(n, 20)
    x = np.concatenate([x, rng.normal(size=(n, 4))], axis=1) + 0.05 * rng.normal(size=(n, 24))
    return x.astype(np.float32), np.sum(digits * pres, axis=1)


def test_addition_classifier_learns_sums_and_not_noise():
    rng = np.random.default_rng(0)
    xs, ys = _digit_features(2000, rng)
    xt, yt = _digit_features(500, rng)
    kw = dict(steps=400, batch_size=128, learning_rate=3e-3, seed=0)
    groups = (yt > 9).astype(int)  # sums above 9 need two digits
    r = se.train_addition_classifier(xs, ys, xt, yt, test_groups=groups, **kw)
    assert r["test_accuracy"] > 0.95 and r["train_accuracy"] > 0.95
    frames, acc = r["test_frames_by_group"], r["test_accuracy_by_group"]
    assert frames == {"0": int(np.sum(groups == 0)), "1": int(np.sum(groups == 1))}
    np.testing.assert_allclose(
        (frames["0"] * acc["0"] + frames["1"] * acc["1"]) / len(yt), r["test_accuracy"], rtol=1e-6
    )
    predict = se.train_addition_classifier(xs, ys, xt, yt, return_predictor=True, **kw).pop("predict")
    np.testing.assert_allclose(np.mean(predict(xt) == yt), r["test_accuracy"], rtol=1e-6)  # the same classifier
    assert (r["num_train"], r["num_test"], r["num_classes"]) == (2000, 500, 19)
    control = se.train_addition_classifier(xs, rng.permutation(ys), xt, yt, **kw)  # shuffled training targets
    assert control["test_accuracy"] < control["majority_baseline"] + 0.1
    json.dumps(r)


def test_addition_classifier_does_not_depend_on_steps_per_call():
    """Step i draws its batch from fold_in(key, i) whatever the chunking: 1 step per call, 7 (uneven) or all 30 in
    one scan train the same classifier, and the tail loss covers the same last 10 % of steps."""
    rng = np.random.default_rng(1)
    xs, ys = _digit_features(300, rng)
    xt, yt = _digit_features(100, rng)
    runs = [se.train_addition_classifier(xs, ys, xt, yt, steps=30, batch_size=16, steps_per_call=c) for c in (1, 7, 30)]
    for r in runs[1:]:
        for k in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
            np.testing.assert_allclose(r[k], runs[0][k], rtol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="test_groups must be"):
        se.train_addition_classifier(xs, ys, xt, yt, steps=3, test_groups=np.zeros(5, int))
    with pytest.raises(ValueError, match="steps_per_call must be positive"):
        se.train_addition_classifier(xs, ys, xt, yt, steps=3, steps_per_call=0)


def test_tracking_and_addition_on_untrained_quick_sqair():
    from ocr_jax.configs import sqair_mnist
    from ocr_jax.tasks import sqair as sqair_task

    config = sqair_mnist.get_config("quick")
    config.task_config.num_eval = 16
    config.task_config.eval.update(batch_size=8)
    task = sqair_task.SQAIRTask(config.task_config)
    params = jax.jit(task.model.init)(jax.random.key(0))
    data = task.test_data
    r = se.tracking_and_addition(
        task, params, data, key=jax.random.key(1), classifier_steps=20, classifier_hidden=(16,)
    )
    json.dumps(r)
    tr, add = r["tracking"], r["addition"]
    assert (r["num_sequences"], r["num_frames"], tr["num_sequences"]) == (16, 3, 16)
    assert tr["num_true"] == int(data["presence"][:16].sum())
    assert tr["matches"] + tr["misses"] == tr["num_true"]
    assert tr["matches"] + tr["false_positives"] == tr["num_inferred"]
    assert tr["switches"] == tr["swaps"] + tr["redetections"] <= tr["continuations"] <= tr["matches"]
    assert tr["failure_mode"] in se.FAILURE_MODES
    for k in ("recall", "precision", "switch_rate", "redetection_rate", "motp"):
        assert tr[k] is None or 0.0 <= tr[k] <= 1.0
    # the same best particles as evaluate_sqair (same key): the inferred object count agrees with its confusion
    ev = se.evaluate_sqair(task, params, data, key=jax.random.key(1), log_marginal_sequences=0)
    confusion = np.asarray(ev["confusion"])
    assert ev["out_of_view_objects_per_frame"] == 0.0  # the official shift map keeps every glimpse on the canvas
    assert tr["num_inferred"] == int((confusion * np.arange(confusion.shape[1])).sum())
    assert (add["num_train_sequences"], add["num_test_sequences"]) == (8, 8)
    assert (add["num_train"], add["num_test"], add["num_classes"]) == (24, 24, 19)
    assert 0.0 <= add["train_accuracy"] <= 1.0 and 0.0 <= add["test_accuracy"] <= 1.0
    assert add["posterior_means"] is True
    # from the tracking particles instead: the tracking is the same, the features (and so the classifier) are not
    sampled = se.tracking_and_addition(
        task,
        params,
        data,
        key=jax.random.key(1),
        classifier_steps=20,
        classifier_hidden=(16,),
        addition_posterior_means=False,
    )
    assert sampled["tracking"] == tr and sampled["addition"]["posterior_means"] is False
    assert sampled["addition"]["train_loss"] != add["train_loss"]


def test_visible_objects_counts_present_windows_on_the_canvas():
    """A 10x10 canvas; 10x10 windows inside, 5 % inside, 20 % inside, wholly outside, and absent."""
    boxes = np.array(
        [
            [0.0, 0.0, 10.0, 10.0],  # all on the canvas
            [9.5, 0.0, 19.5, 10.0],  # 0.5 of 10 rows on it: 5 %
            [8.0, 0.0, 18.0, 10.0],  # 20 %
            [10.0, 10.0, 20.0, 20.0],  # wholly outside (touches the corner)
            [0.0, 0.0, 10.0, 10.0],  # absent
        ]
    )
    presence = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10)), [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10), 0.0), [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10), 0.25), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(se.window_fraction_on_canvas(boxes, (10, 10)), [1.0, 0.05, 0.2, 0.0, 1.0])
    assert se.window_fraction_on_canvas(np.zeros(4), (10, 10)) == 0.0  # an empty window
    # leading axes pass through
    assert se.visible_objects(np.tile(boxes, (2, 3, 1, 1)), np.tile(presence, (2, 3, 1)), (10, 10)).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="min_fraction"):
        se.visible_objects(boxes, presence, (10, 10), 1.5)
    with pytest.raises(ValueError, match="shape"):
        se.visible_objects(boxes[:4], presence, (10, 10))


def test_visible_objects_with_an_ink_rule_drops_windows_that_draw_nothing_on_the_canvas():
    """The window rule and the ink rule together: an object is in view only if both hold; min_ink = 0 ignores the
    ink (and needs none)."""
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0], [8.0, 0.0, 18.0, 10.0], [9.5, 0.0, 19.5, 10.0]])
    presence = np.ones(4, bool)
    ink = np.array([0.9, 0.02, 0.6, 0.9])  # a digit; a window held at the edge; a sliver; a 5 % window
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10), ink=ink, min_ink=0.0), [1, 1, 1, 0])
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10)), [1, 1, 1, 0])
    np.testing.assert_array_equal(se.visible_objects(boxes, presence, (10, 10), ink=ink, min_ink=0.1), [1, 0, 1, 0])
    np.testing.assert_array_equal(
        se.visible_objects(boxes, np.array([1, 1, 0, 1], bool), (10, 10), 0.0, ink=ink, min_ink=0.5), [1, 0, 0, 1]
    )
    with pytest.raises(ValueError, match="needs the objects' ink"):
        se.visible_objects(boxes, presence, (10, 10), min_ink=0.1)
    with pytest.raises(ValueError, match="min_ink"):
        se.visible_objects(boxes, presence, (10, 10), ink=ink, min_ink=1.5)
    with pytest.raises(ValueError, match="ink"):
        se.visible_objects(boxes, presence, (10, 10), ink=ink[:3], min_ink=0.1)


def test_task_visible_objects_reads_the_ink_rule_of_the_eval_config():
    """On an untrained quick SQAIR: with eval.visible_min_ink = 0 the visible objects are the window rule's; with a
    threshold they are those whose SQAIR.object_ink (checked here against one object's pasted glimpse) reaches it."""
    from ocr_jax import spatial_transformer as st
    from ocr_jax.configs import sqair_mnist
    from ocr_jax.models.sqair import SQAIRGenerative
    from ocr_jax.tasks import sqair as sqair_task

    config = sqair_mnist.get_config("quick")
    task = sqair_task.SQAIRTask(config.task_config)
    model = task.model
    params = jax.jit(model.init)(jax.random.key(0))
    rng = np.random.default_rng(0)
    n, T, N, D = 3, 2, model.config.max_objects, model.config.z_what_dim
    z_what = rng.normal(size=(n, T, N, D)).astype(np.float32)
    z_where_raw = rng.normal(0.0, 2.0, size=(n, T, N, 4)).astype(np.float32)
    presence = rng.random((n, T, N)) < 0.8
    window_rule = se.visible_objects(se.boxes_of_raw(task, z_where_raw), presence, model.config.image_shape)
    np.testing.assert_array_equal(se.task_visible_objects(task, params, z_what, z_where_raw, presence), window_rule)

    ink = np.asarray(model.object_ink(params, z_what, model.to_transform(z_where_raw)))
    glimpse = model._generative(params, SQAIRGenerative.decode, z_what[1, 0, N - 1])
    pasted = st.paste_glimpse(glimpse, model.to_transform(z_where_raw[1, 0, N - 1]), model.config.image_shape)
    np.testing.assert_allclose(ink[1, 0, N - 1], np.max(np.asarray(pasted)), rtol=1e-5)
    assert ink.shape == (n, T, N) and np.all((ink >= 0) & (ink < 1))
    np.testing.assert_allclose(se.task_object_ink(task, params, z_what, z_where_raw), ink, rtol=1e-5, atol=1e-7)
    threshold = float(np.median(ink))
    task.config.eval.visible_min_ink = threshold
    np.testing.assert_array_equal(
        se.task_visible_objects(task, params, z_what, z_where_raw, presence), window_rule & (ink >= threshold)
    )


def test_under_the_official_shift_map_every_present_object_is_in_view():
    """shift_bound = 1: a glimpse's centre stays on the canvas, so the visible count is the present count (the
    readout changes nothing for such models), whatever the raw shift; with shift_bound = 3 a large shift is out."""
    from ocr_jax import spatial_transformer as st
    from ocr_jax.models.sqair import where_to_transform

    raw = np.random.default_rng(0).normal(0.0, 3.0, (500, 4)).astype(np.float32)
    raw[:, 2:] *= 5.0
    for bound, all_in in ((1.0, True), (3.0, False)):
        z = np.asarray(where_to_transform(raw, "sigmoid_tanh", bound))
        boxes = np.asarray(st.z_where_to_box(z, (50, 50)))
        visible = se.visible_objects(boxes, np.ones(500, bool), (50, 50))
        assert visible.all() == all_in


def test_lost_digit_anatomy_names_what_became_of_each_uncovered_digit():
    """Four sequences of T frames, two digits each (tight 10x10 boxes far apart), inferred glimpses 20x20 (covering
    a tight box wholly when centred on it): one kind of loss per sequence, from frame 2 on."""
    true_boxes, true_pres = _two_objects()
    glimpse = lambda b: [b[0] - 5, b[1] - 5, b[2] + 5, b[3] + 5]  # noqa: E731
    n, N = 4, 3
    tb = np.broadcast_to(true_boxes, (n, T, 2, 4)).copy()
    tp = np.broadcast_to(true_pres, (n, T, 2)).copy()
    boxes = np.zeros((n, T, N, 4))
    pres = np.zeros((n, T, N), bool)
    ids = np.full((n, T, N), -1)
    for b in range(n):
        for t in range(T):
            for j in range(2):
                boxes[b, t, j], pres[b, t, j], ids[b, t, j] = glimpse(tb[b, t, j]), True, j
    # seq 0: digit 1 never found (slot 1 absent throughout)
    pres[0, :, 1], ids[0, :, 1] = False, -1
    # seq 1: digit 1 dropped from frame 2
    pres[1, 2:, 1], ids[1, 2:, 1] = False, -1
    # seq 2: identity 1 moves onto digit 0 from frame 2
    boxes[2, 2:, 1] = boxes[2, 2:, 0]
    # seq 3: identity 1 wanders off into empty space from frame 2
    boxes[3, 2:, 1] = [100, 100, 120, 120]
    out = se.lost_digit_anatomy(tb, tp, boxes, pres, ids)
    assert out["digit_frames"] == n * T * 2
    assert out["never_found"]["total"] == T and out["never_found"]["by_frame"] == [1] * T
    for kind, seq in (("dropped", 1), ("moved_to_other", 2), ("astray", 3)):
        assert out[kind]["total"] == T - 2, kind
        assert out[kind]["by_frame"] == [0, 0, 1, 1], kind
        assert out["examples"][kind][0] == [seq, 2, 1], kind
    assert out["uncovered"] == T + 3 * (T - 2)
    # undercounted frames: never_found (1 of 2 present) and dropped; moved/astray keep the count
    assert out["never_found"]["in_undercounted_frames"] == T
    assert out["dropped"]["in_undercounted_frames"] == T - 2
    assert out["moved_to_other"]["in_undercounted_frames"] == 0 == out["astray"]["in_undercounted_frames"]
    # an invisible digit is never lost; a bad shape is an error
    tp[1, 2:, 1] = False
    assert se.lost_digit_anatomy(tb, tp, boxes, pres, ids)["dropped"]["total"] == 0
    with pytest.raises(ValueError, match="need true_boxes"):
        se.lost_digit_anatomy(tb[0], tp[0], boxes[0], pres[0], ids[0])


def test_held_objects_while_a_digit_is_wholly_outside():
    # frame 0: a digit has left (visible 1 of 2); the model holds it at the edge, in view (window 10/20 × 5/20 on it)
    # frame 1: one digit, counted right; frame 2: two digits, one object
    data = dict(counts=np.array([1, 1, 2]), sequence_counts=np.array([2, 1, 2]))
    boxes = np.zeros((3, 2, 4))
    boxes[:, 0] = [10, 10, 30, 30]
    boxes[0, 1] = [40, 45, 60, 65]
    presence = np.array([[True, True], [True, False], [True, False]])
    pred = dict(boxes=boxes, presence=presence, counts=np.array([2, 1, 1]), present_counts=presence.sum(-1))
    held = se.held_objects(data, pred, (50, 50))
    assert held["frames"] == 1
    assert held["present_count_is_the_label"] == 1.0 and held["count_in_view_is_visible_count"] == 0.0
    assert held["count_in_view_is_visible_count_in_the_other_frames"] == 0.5
    assert held["min_window_fraction_on_canvas"] == pytest.approx(0.125)
    np.testing.assert_allclose(held["smallest_window_fraction_quantiles"], [0.125] * 5)

"""Where AIR's and SQAIR's counting errors are (ocr_jax.evaluation.air's two-digit anatomy and
experiments/count_errors.py): box gaps and coverage against hand-computed values, the anatomy of a made-up set of
predictions, and (slow) the script on two-step runs of both models."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ocr_jax.evaluation import air as air_eval


def test_signed_box_gap_apart_touching_overlapping():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    assert air_eval.signed_box_gap(a, [0.0, 14.0, 10.0, 20.0]) == 4.0  # 4 empty columns
    assert air_eval.signed_box_gap(a, [13.0, 0.0, 20.0, 5.0]) == 3.0  # 3 empty rows
    assert air_eval.signed_box_gap(a, [12.0, 15.0, 20.0, 20.0]) == 5.0  # diagonal: the separating axis
    assert air_eval.signed_box_gap(a, [0.0, 10.0, 10.0, 20.0]) == 0.0  # touching
    assert air_eval.signed_box_gap(a, [2.0, 7.0, 12.0, 20.0]) == -3.0  # overlap 3 columns (8 rows)
    b = np.stack([a, a + 20.0])
    np.testing.assert_array_equal(air_eval.signed_box_gap(b, b[::-1]), [10.0, 10.0])  # batched, symmetric


def test_box_coverage():
    window = np.array([0.0, 0.0, 10.0, 10.0])
    assert air_eval.box_coverage(window, [2.0, 2.0, 6.0, 6.0]) == 1.0
    assert air_eval.box_coverage(window, [5.0, 5.0, 15.0, 15.0]) == 0.25
    assert air_eval.box_coverage(window, [20.0, 20.0, 30.0, 30.0]) == 0.0
    assert air_eval.box_coverage(window, [0.0, 0.0, 0.0, 0.0]) == 0.0  # an absent (empty) box


def test_two_digit_anatomy_counts_each_kind_of_error():
    left, right = [10.0, 0.0, 30.0, 15.0], [10.0, 25.0, 30.0, 40.0]  # 10 px apart
    near = [10.0, 16.0, 30.0, 31.0]  # 1 px from `left`
    absent = [0.0, 0.0, 0.0, 0.0]
    # image 2 is a one-digit image whose box is in the second slot (the anatomy sorts present boxes first)
    true_boxes = np.array([[left, right], [left, near], [absent, left], [left, near], [left, absent]])
    true_counts = np.array([2, 2, 1, 2, 1])
    both = [8.0, 0.0, 32.0, 32.0]  # one glimpse around `left` and `near`
    # present glimpses may come in any slot (SQAIR's object slots): image 3's is in the second one
    pred_boxes = np.array(
        [[left, right], [both, absent], [left, absent], [absent, [50.0, 50.0, 60.0, 60.0]], [left, absent]]
    )
    pred_counts = np.array([2, 1, 1, 1, 1])
    a = air_eval.two_digit_anatomy(true_boxes, true_counts, pred_boxes, pred_counts)
    t = a["two_as_one"]
    assert t["two_digit_images"] == 3 and t["errors"] == 2
    assert t["glimpse_covers_both"] == 0.5 and t["glimpse_covers_neither"] == 0.5 and t["glimpse_covers_one"] == 0.0
    assert t["median_glimpse_side_px"] == pytest.approx((32.0 + 10.0) / 2)
    assert t["median_glimpse_side_one_digit_right_px"] == 20.0  # images 2 and 4: `left` is 20 × 15
    assert t["median_gap_px"] == 1.0 and t["median_gap_two_digits_right_px"] == 10.0
    rows = {r["gap_px"]: r for r in a["by_gap"]}
    assert rows["(0, 3]"]["images"] == 2 and rows["(0, 3]"]["right"] == 0
    assert rows["(6, 10]"]["images"] == 1 and rows["(6, 10]"]["accuracy"] == 1.0
    assert rows["(-inf, 0]"]["accuracy"] is None
    json.dumps(a)  # serialisable


def test_pair_direction_in_image_axes_and_symmetric():
    at = lambda y, x: np.array([y - 2.0, x - 2.0, y + 2.0, x + 2.0])  # noqa: E731  a box centred at (y, x)
    assert air_eval.pair_direction(at(10, 10), at(10, 30)) == 0.0  # side by side
    assert air_eval.pair_direction(at(10, 10), at(30, 10)) == 90.0  # one above the other
    assert air_eval.pair_direction(at(10, 10), at(30, 30)) == pytest.approx(45.0)  # upper-left, lower-right
    assert air_eval.pair_direction(at(10, 30), at(30, 10)) == pytest.approx(135.0)  # upper-right, lower-left
    a, b = np.stack([at(10, 30), at(5, 5)]), np.stack([at(30, 10), at(20, 40)])
    np.testing.assert_allclose(air_eval.pair_direction(a, b), air_eval.pair_direction(b, a))  # batched, symmetric
    np.testing.assert_allclose(air_eval.pair_direction(a, b), [135.0, np.degrees(np.arctan2(15.0, 35.0))])


def test_two_digit_anatomy_by_direction_and_the_extra_glimpse_of_two_read_as_three():
    upper_right, lower_left = [0.0, 34.0, 10.0, 44.0], [30.0, 0.0, 40.0, 10.0]  # centres (5, 39), (35, 5): 138.6°
    left, right = [10.0, 0.0, 20.0, 10.0], [10.0, 30.0, 20.0, 40.0]  # side by side: 0°
    top, bottom = [0.0, 10.0, 10.0, 20.0], [30.0, 10.0, 40.0, 20.0]  # one above the other: 90°
    absent = [0.0, 0.0, 0.0, 0.0]
    ghost_at_midpoint = [18.0, 20.0, 22.0, 24.0]  # centre (20, 22), the digits' midpoint
    ghost_off_midpoint = [18.0, 24.0, 22.0, 28.0]  # centre (20, 26): 4 px from it
    true_boxes = np.array([[upper_right, lower_left], [left, right], [top, bottom], [lower_left, upper_right]])
    true_counts = np.array([2, 2, 2, 2])
    pred_boxes = np.array(
        [
            [ghost_at_midpoint, upper_right, lower_left],  # the first step's glimpse is the extra one
            [left, right, absent],
            [[0.0, 8.0, 40.0, 22.0], absent, absent],  # one glimpse for both
            [upper_right, lower_left, ghost_off_midpoint],  # the third step's
        ]
    )
    pred_counts = np.array([3, 2, 1, 3])
    a = air_eval.two_digit_anatomy(true_boxes, true_counts, pred_boxes, pred_counts)
    rows = {r["direction_deg"]: r for r in a["by_direction"]}
    assert rows["[135, 157.5)"] == dict(
        direction_deg="[135, 157.5)", images=2, right=0, accuracy=0.0, read_as_one=0, read_as_three=2
    )
    assert rows["[0, 22.5)"]["images"] == 1 and rows["[0, 22.5)"]["accuracy"] == 1.0
    assert rows["[90, 112.5)"]["read_as_one"] == 1 and rows["[90, 112.5)"]["accuracy"] == 0.0
    assert rows["[45, 67.5)"]["images"] == 0 and rows["[45, 67.5)"]["accuracy"] is None
    assert sum(r["images"] for r in a["by_direction"]) == 4
    t = a["two_as_three"]
    assert t["errors"] == 2 and t["extra_glimpse_step"] == [1, 0, 1]
    assert t["median_extra_from_midpoint_px"] == pytest.approx(2.0)  # 0 and 4 px
    assert t["median_extra_from_nearer_digit_px"] == pytest.approx((np.sqrt(514.0) + np.sqrt(394.0)) / 2)
    assert a["two_as_one"]["errors"] == 1 and a["two_as_one"]["glimpse_covers_both"] == 1.0
    json.dumps(a)


def test_two_digit_anatomy_without_two_read_as_three():
    boxes = np.array([[[0.0, 0.0, 10.0, 10.0], [0.0, 20.0, 10.0, 30.0]]])
    a = air_eval.two_digit_anatomy(boxes, [2], boxes, [2])
    assert a["two_as_three"] == dict(
        errors=0,
        extra_glimpse_step=[0, 0, 0],
        median_extra_from_midpoint_px=None,
        median_extra_from_nearer_digit_px=None,
    )


@pytest.mark.slow
@pytest.mark.parametrize("config", ["air_multi_mnist:quick", "sqair_mnist:quick"])
def test_count_errors_cli_on_a_two_step_run(tmp_path, config):
    workdir = tmp_path / "run"
    common = ["--config.num_steps=2", "--config.eval_every=0", "--config.progress_bar=False"]
    if config.startswith("air"):
        data = ["--config.task_config.data.num_train=32", "--config.task_config.data.num_test=16"]
    else:
        data = ["--config.task_config.num_train=16", "--config.task_config.num_eval=4"]
    train = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}"]
    subprocess.run(train + common + data, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "experiments.count_errors", f"--workdir={workdir}", "--num_images=4", "--data_seed=5"]
    subprocess.run(cmd, check=True, capture_output=True)
    summary = json.loads((workdir / "errors_seed5.json").read_text())
    images = 4 if config.startswith("air") else 4 * 3  # SQAIR quick: 3 frames per sequence
    assert summary["num_images"] == images and summary["data_seed"] == 5
    assert sum(map(sum, summary["confusion"])) == images
    assert (workdir / "errors_seed5.png").stat().st_size > 0
    if config.startswith("air"):
        blank = summary["blank_canvas"]
        assert blank["particles"] == 1000 and 0 <= blank["fraction_with_an_object"] <= 1
    else:
        lost = summary["lost_digits"]
        kinds = ("never_found", "dropped", "moved_to_other", "astray")
        assert lost["uncovered"] == sum(lost[k]["total"] for k in kinds)
        assert len(lost["never_found"]["by_frame"]) == 3 and lost["uncovered"] <= lost["digit_frames"]
        held = summary["while_a_digit_is_wholly_outside"]
        assert 0 <= held["frames"] <= images
        if held["min_window_fraction_on_canvas"] is not None:  # the official shift map: held at the edge
            assert held["min_window_fraction_on_canvas"] >= 0.25
        tracking = summary["tracking"]
        assert tracking["num_true"] == sum(i * sum(row) for i, row in enumerate(summary["confusion"]))
        assert tracking["num_inferred"] == sum(j * sum(col) for j, col in enumerate(zip(*summary["confusion"])))
        assert tracking["matches"] + tracking["misses"] == tracking["num_true"]
        assert tracking["switches"] == tracking["swaps"] + tracking["redetections"]

"""Evaluation reports: SQAIR test-set evaluation and its pictures (fast, synthetic data), the AIR main job (slow)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import sqair_report
from ocr_jax.configs import sqair_mnist
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.tasks import sqair as sqair_task


@pytest.fixture(scope="module")
def sqair_setup():
    """An untrained quick-config SQAIR and its evaluation on 8 test sequences (one batch shape: one compilation)."""
    config = sqair_mnist.get_config("quick")
    config.task_config.num_eval = 8
    config.task_config.eval.update(
        batch_size=8, log_marginal_sequences=8, log_marginal_particles=12, log_marginal_chunk=6
    )
    task = sqair_task.SQAIRTask(config.task_config)
    params = jax.jit(task.model.init)(jax.random.key(0))
    return task, params, sqair_eval.evaluate_sqair(task, params, task.test_data, key=jax.random.key(0))


def test_sqair_evaluation_values_are_consistent(sqair_setup):
    task, params, r = sqair_setup
    data = task.test_data
    n, T = data["frames"].shape[:2]
    assert n == 8 and data["counts"].shape == (n, T) and r["num_sequences"] == n
    confusion = np.asarray(r["confusion"])
    assert confusion.sum() == n * T
    np.testing.assert_array_equal(
        confusion.sum(1)[: data["counts"].max() + 1], np.bincount(data["counts"].ravel())
    )  # rows are the true counts
    assert r["count_accuracy"] == pytest.approx(np.trace(confusion) / (n * T))
    assert 0.0 <= r["sequence_count_accuracy"] <= r["count_accuracy"] <= 1.0
    by_frame = np.asarray(r["count_accuracy_by_frame"])
    assert by_frame.shape == (T,) and r["count_accuracy"] == pytest.approx(by_frame.mean())
    assert r["count_accuracy_first_frame"] == pytest.approx(by_frame[0])
    assert r["count_accuracy_later_frames"] == pytest.approx(by_frame[1:].mean())
    from ocr_jax.evaluation.sqair import two_digit_overlap

    overlap = two_digit_overlap(data)
    assert np.all((overlap == -1) == (data["presence"].sum(-1) != 2))
    for o, name in ((0, "apart"), (1, "overlapping")):
        assert (f"count_accuracy_two_digits_{name}" in r) == bool(np.any(overlap == o))
    # Against the official per-sequence label: equal to the per-frame score where every digit is visible.
    assert 0.0 <= r["count_accuracy_official_label"] <= 1.0
    if np.all(data["counts"] == data["sequence_counts"][:, None]):
        assert r["count_accuracy_official_label"] == pytest.approx(r["count_accuracy"])
    assert r["kl"] == pytest.approx(r["log_likelihood"] - r["elbo"], rel=1e-6, abs=1e-4)
    assert r["iwae"] >= r["elbo"] - 1e-3  # Jensen, sequence by sequence
    assert r["iwae_per_frame"] == pytest.approx(r["iwae"] / T)
    assert np.isfinite(r["log_marginal"]) and r["log_marginal_sequences"] == n
    ex = r["example"]
    assert ex["frames"].shape[:2] == (2, T) and ex["boxes"].shape == ex["z_pres"].shape + (4,)
    np.testing.assert_array_equal(ex["counts"], ex["z_pres"].sum(-1))
    # Same key, same numbers (and the cached jitted functions are reused).
    again = sqair_eval.evaluate_sqair(task, params, data, key=jax.random.key(0))
    assert again["iwae"] == r["iwae"] and again["count_accuracy"] == r["count_accuracy"]


def test_sqair_pictures_are_written(sqair_setup, tmp_path):
    task, params, r = sqair_setup
    paths = sqair_report.write_pictures(task, params, r, 0, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == [
        "conditional.png",
        "prior_samples.png",
        "reconstructions.png",
        "sequences.gif",
    ]
    assert all(os.path.getsize(p) > 1000 for p in paths)


@pytest.mark.slow
def test_main_job_quick_writes_results_and_pictures(tmp_path):
    """The README's main command in its quick variant (needs MNIST: cached or fetched)."""
    env = {**os.environ, "WORKDIR": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "experiments.main_job", "--variant=quick"],
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        timeout=1800,
    )
    results = json.load(open(tmp_path / "air" / "results.json"))
    assert 0.0 <= results["count_accuracy"] <= 1.0 and np.isfinite(results["log_marginal"])
    for name in ("reconstructions.png", "confusion.png", "prior_samples.png"):
        assert (tmp_path / "air" / name).stat().st_size > 1000


def test_sqair_periodic_evaluation_writes_counting_and_tracking(sqair_setup, tmp_path):
    task, params, r = sqair_setup
    scalars = task.evaluate(params, {}, 3, str(tmp_path))
    saved = json.load(open(tmp_path / "eval_step3.json"))
    assert saved["step"] == 3 and saved["count_accuracy"] == scalars["eval/count_accuracy"]
    assert saved["num_sequences"] == r["num_sequences"] and 0.0 <= saved["count_accuracy"] <= 1.0
    for k in sqair_eval.PERIODIC_TRACKING_KEYS:
        assert f"tracking_{k}" in saved
    assert saved["tracking_failure_mode"] in sqair_eval.FAILURE_MODES
    recall = saved["tracking_recall"]
    assert recall is None or (0.0 <= recall <= 1.0 and scalars["eval/tracking_recall"] == recall)


def test_two_digit_overlap_on_hand_made_boxes():
    from ocr_jax.evaluation.sqair import two_digit_overlap

    boxes = np.zeros((1, 3, 2, 4), np.float32)
    presence = np.array([[[True, True], [True, True], [True, False]]])
    boxes[0, 0] = [[0, 0, 10, 10], [5, 5, 15, 15]]  # intersect
    boxes[0, 1] = [[0, 0, 10, 10], [10, 0, 20, 10]]  # touch at an edge: apart
    boxes[0, 2] = [[0, 0, 10, 10], [0, 0, 0, 0]]  # one digit
    np.testing.assert_array_equal(two_digit_overlap(dict(boxes=boxes, presence=presence)), [[1, 0, -1]])

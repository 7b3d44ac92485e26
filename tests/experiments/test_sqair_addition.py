"""experiments/sqair_addition.py: the digit probe's frame selection against a hand-made case, and the command line on
a two-step quick SQAIR run (slow)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import sqair_addition


def test_digit_probe_takes_frames_with_one_digit_and_one_object():
    # 1 sequence, 4 frames, 2 true digits (labels 3 and 7), 2 slots with z_what of size 2.
    presence = np.array([[[1, 0], [0, 1], [1, 1], [0, 0]]], bool)
    z_pres = np.array([[[0, 1], [1, 0], [1, 0], [1, 0]]], np.float32)
    z_what = np.arange(16, dtype=np.float32).reshape(1, 4, 2, 2)
    features, digits = sqair_addition.digit_probe_data(
        dict(z_what=z_what, z_pres=z_pres), dict(presence=presence, labels=np.array([[3, 7]]))
    )
    # frame 0: digit 3 with slot 1's z_what; frame 1: digit 7 with slot 0's; frames 2 (two digits) and 3 (none) out
    np.testing.assert_array_equal(digits, [3, 7])
    np.testing.assert_array_equal(features, [[2.0, 3.0], [4.0, 5.0]])


def test_sum_of_digit_readings_sums_every_present_object():
    # 1 sequence, 3 frames, 2 true digits (3 and 7), 2 slots; the "reader" returns z_what's first entry as the digit.
    presence = np.array([[[1, 1], [1, 0], [0, 0]]], bool)  # targets 10, 3, 0
    z_pres = np.array([[[1, 1], [1, 1], [0, 0]]], np.float32)  # frame 1 keeps a second object: reads 3 + 7
    z_what = np.array([[[[3, 0], [7, 0]], [[3, 0], [7, 0]], [[9, 0], [9, 0]]]], np.float32)
    r = sqair_addition.sum_of_digit_readings(
        dict(z_what=z_what, z_pres=z_pres), dict(presence=presence, labels=np.array([[3, 7]])), lambda x: x[:, 0]
    )
    assert r["accuracy_by_visible_digits"] == {"0": 1.0, "1": 0.0, "2": 1.0}
    np.testing.assert_allclose([r["accuracy"], r["object_count_matches"]], [2 / 3, 2 / 3])


@pytest.mark.slow
def test_sqair_addition_cli_on_a_two_step_run(tmp_path):
    workdir = tmp_path / "run"
    train = [sys.executable, "-m", "experiments.main", "--config=sqair_mnist:quick", f"--workdir={workdir}"]
    flags = ["--config.num_steps=2", "--config.eval_every=0", "--config.progress_bar=False"]
    flags += ["--config.task_config.num_train=16", "--config.task_config.num_eval=4"]
    subprocess.run(train + flags, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "experiments.sqair_addition", f"--workdir={workdir}"]
    subprocess.run(cmd + ["--train_sequences=4,8", "--classifier_steps=5"], check=True, capture_output=True)
    result = json.loads((workdir / "addition_study.json").read_text())
    assert [(r["train_sequences"], r["classifier_steps"]) for r in result["addition"]] == [(4, 5), (8, 5)]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in result["addition"])
    assert result["step"] == 2 and result["num_test_sequences"] == 4
    probe = result["digit_from_one_z_what"]
    assert 0 <= probe["test_frames"] <= 4 * 3
    assert probe["test_accuracy"] is None or 0.0 <= probe["test_accuracy"] <= 1.0
    readings = result["sum_of_probe_readings"]
    assert (readings is None) == (probe["test_accuracy"] is None)
    assert readings is None or 0.0 <= readings["accuracy"] <= 1.0
    assert result["posterior_means"] is False
    assert all(sum(r["test_frames_by_group"].values()) == 4 * 3 for r in result["addition"])  # 4 sequences, 3 frames
    # the second run reads the model's outputs from the cache and trains the same classifiers
    assert (workdir / "addition_outputs_step2_train8.npz").exists()
    subprocess.run(cmd + ["--train_sequences=4,8", "--classifier_steps=5"], check=True, capture_output=True)
    assert json.loads((workdir / "addition_study.json").read_text())["addition"] == result["addition"]
    means = cmd + ["--train_sequences=4", "--classifier_steps=5", "--posterior_means"]
    subprocess.run(means, check=True, capture_output=True)
    at_means = json.loads((workdir / "addition_study_means.json").read_text())
    assert at_means["posterior_means"] is True and [r["train_sequences"] for r in at_means["addition"]] == [4]

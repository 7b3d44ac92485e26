"""experiments/air_estimators.py (thesis §8.4.2 study driver) on the tiny synthetic config."""

import json
import os
import shutil

import numpy as np
import pytest

from experiments import air_estimators, air_estimators_seeds
from ocr_jax.configs import air_multi_mnist


def test_study_config_sets_estimator_and_particles_only():
    base = air_multi_mnist.get_config("bernoulli+quick")
    c = air_estimators.study_config(base, "ww", 7)
    assert c.task_config.estimator == "ww" and c.task_config.num_particles == 7
    assert c.task_config.data.binarize and base.task_config.num_particles == 5  # base untouched
    c.task_config.num_particles, c.task_config.estimator = 5, base.task_config.estimator
    assert c.to_dict() == base.to_dict()


def test_read_train_curve_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
    rows = [
        {"step": 100, "bound": -50.0},
        {"step": 100, "compile_seconds": 3.0},
        {"step": 200, "bound": -40.0},
        {"step": 100, "bound": -45.0},  # resumed from a checkpoint at step 0: step 100 logged again
        {"step": 300, "bound": "nan"},  # a non-finite value is stored as a string and skipped
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert air_estimators.read_train_curve(str(tmp_path)) == [[100, -45.0], [200, -40.0]]
    assert air_estimators.read_train_curve(str(tmp_path / "missing")) == []


def test_curve_noise_is_the_spread_about_the_trend_of_the_second_half():
    steps = np.arange(400)
    trend = np.linspace(-100.0, -50.0, 400)
    quiet = air_estimators.curve_noise(np.stack([steps, trend], 1).tolist())
    assert quiet < 1e-9  # a straight line has no spread about its running mean
    alternating = np.where(steps % 2 == 0, 1.0, -1.0) * 3.0
    noisy = air_estimators.curve_noise(np.stack([steps, trend + alternating], 1).tolist())
    np.testing.assert_allclose(noisy, 3.0, rtol=0.02)  # ±3 alternating: std 3 about a 10-point mean (±0.3)
    first_half_noise = np.where(steps < 200, alternating, 0.0)
    assert air_estimators.curve_noise(np.stack([steps, trend + first_half_noise], 1).tolist()) < 1e-9
    assert np.isnan(air_estimators.curve_noise([[0, 1.0]] * 10))


def test_config_fingerprint_ignores_presentation_only():
    base = air_multi_mnist.get_config("bernoulli+quick")
    shown = base.copy_and_resolve_references()
    shown.progress_bar, shown.checkpoint.every = not base.progress_bar, 7
    shown.stop_after_seconds = 540.0  # as the command line adds run-control fields to every config
    assert air_estimators.config_fingerprint(shown) == air_estimators.config_fingerprint(base)
    other = base.copy_and_resolve_references()
    other.task_config.count_prior.end = 0.5
    assert air_estimators.config_fingerprint(other) != air_estimators.config_fingerprint(base)


# Experiment-level (the study driver end to end, ~45 s): bash scripts/test.sh -m slow
@pytest.mark.slow
def test_driver_trains_evaluates_and_writes_table(tmp_path):
    config = air_multi_mnist.get_config("bernoulli+quick")
    config.num_steps, config.eval_every, config.log_every, config.progress_bar = 4, 2, 1, False
    study = dict(estimators=["vimco", "ww"], particles=["2"], count_images=64, log_marginal_images=8)
    study["log_marginal_particles"] = 16
    air_estimators.run_study(
        config,
        str(tmp_path),
        **study,
        results_dir=str(tmp_path / "kept"),
    )
    results = json.loads((tmp_path / "kept" / "results.json").read_text())
    assert sorted(results) == ["vimco_K2", "ww_K2"]
    for r in results.values():
        assert r["step"] == 4 and r["count_images"] == 64 and r["log_marginal_images"] == 8
        assert 0.0 <= r["count_accuracy"] <= 1.0 and np.isfinite(r["log_marginal"])
        assert np.isclose(r["kl"], r["log_marginal"] - r["elbo"])
        assert np.sum(r["confusion"]) == 64
        assert [step for step, _ in r["train_curve"]] == [1, 2, 3, 4] and np.isnan(r["curve_noise"])
        assert [step for step, _ in r["count_curve"]] == [2, 4]  # the periodic evaluations (eval_every = 2)
        assert all(0.0 <= accuracy <= 1.0 for _, accuracy in r["count_curve"])
    assert (tmp_path / "kept" / "air_estimators.png").stat().st_size > 1000

    # The checkpoints are lost (a fresh checkout), the results directory is kept: nothing is retrained.
    for name in results:
        shutil.rmtree(tmp_path / name)
    again = air_estimators.run_study(config, str(tmp_path), results_dir=str(tmp_path / "kept"), **study)
    assert again == results and not (tmp_path / "vimco_K2").exists()
    # Another config's study is refused rather than mixed into (or overwriting) the kept results.
    other = config.copy_and_resolve_references()
    other.seed = 1
    with pytest.raises(ValueError, match="another config"):
        air_estimators.run_study(other, str(tmp_path), results_dir=str(tmp_path / "kept"), **study)


def test_seeds_are_combined_per_estimator_and_k_with_missing_runs_marked(tmp_path):

    def study(values, step=100):  # {(estimator, K): (count, log p̂, KL)} -> a results.json's contents
        return {
            air_estimators.run_name(e, k): dict(
                estimator=e, num_particles=k, step=step, count_accuracy=c, log_marginal=lp, kl=kl
            )
            for (e, k), (c, lp, kl) in values.items()
        }

    seed0 = study({("vimco", 2): (0.9, -130.0, 20.0), ("ww", 2): (0.8, -135.0, 22.0), ("ww", 5): (0.7, -133.0, 25.0)})
    seed1 = study({("vimco", 2): (0.7, -128.0, 18.0), ("ww", 2): (0.9, -131.0, 21.0)})
    combined = air_estimators_seeds.combine_seeds([seed0, seed1])
    assert list(combined) == [("vimco", 2), ("ww", 2), ("ww", 5)]
    assert combined["ww", 5]["kl"] == [25.0, None]
    table = air_estimators_seeds.seeds_table_markdown(combined)
    assert "| vimco | 2 | 0.8000 (0.9000, 0.7000) | -129.00 (-130.00, -128.00) | 19.00 (20.00, 18.00) |" in table
    assert "| ww | 5 | 0.7000 (0.7000, —) | -133.00 (-133.00, —) | 25.00 (25.00, —) |" in table
    assert os.path.getsize(air_estimators_seeds.plot_seeds(combined, str(tmp_path / "seeds.png"))) > 1000
    with pytest.raises(ValueError, match="different lengths"):
        air_estimators_seeds.combine_seeds([seed0, study({("ww", 2): (0.9, -131.0, 21.0)}, step=200)])

"""experiments/air_estimators.py (thesis §8.4.2 study driver) on the tiny synthetic config."""

import json

import numpy as np
import pytest

from experiments import air_estimators
from ocr_jax.configs import air_multi_mnist


def test_study_config_sets_estimator_and_particles_only():
    base = air_multi_mnist.get_config("bernoulli+quick")
    c = air_estimators.study_config(base, "ww", 7)
    assert c.task_config.estimator == "ww" and c.task_config.num_particles == 7
    assert c.task_config.data.binarize and base.task_config.num_particles == 5  # base untouched
    c.task_config.num_particles, c.task_config.estimator = 5, base.task_config.estimator
    assert c.to_dict() == base.to_dict()


# Experiment-level (the study driver end to end, ~45 s): bash scripts/test.sh -m slow
@pytest.mark.slow
def test_driver_trains_evaluates_and_writes_table(tmp_path):
    config = air_multi_mnist.get_config("bernoulli+quick")
    config.num_steps, config.eval_every, config.progress_bar = 4, 0, False
    air_estimators.run_study(
        config,
        str(tmp_path),
        estimators=["vimco", "ww"],
        particles=["2"],
        count_images=64,
        log_marginal_images=8,
        log_marginal_particles=16,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == ["vimco_K2", "ww_K2"]
    for r in results.values():
        assert r["step"] == 4 and r["count_images"] == 64 and r["log_marginal_images"] == 8
        assert 0.0 <= r["count_accuracy"] <= 1.0 and np.isfinite(r["log_marginal"])
        assert np.isclose(r["kl"], r["log_marginal"] - r["elbo"])
        assert np.sum(r["confusion"]) == 64
    assert (tmp_path / "air_estimators.png").stat().st_size > 1000

"""Checks of the study scripts: their building blocks, and the GMM study run whole at a tiny budget."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gmm_pruning, mnist_bounds, toy_gaussian_snr
from ocr_jax.configs import gmm_pruning as gmm_config
from ocr_jax.configs import mnist_bounds as mnist_config


def test_toy_log_probs_are_gaussian_densities_and_optimum_has_zero_vae_phi_gradient():
    x, point = toy_gaussian_snr.make_problem(jax.random.PRNGKey(0), 3, 50, 0.0)
    eps = jax.random.normal(jax.random.PRNGKey(1), (50, 4, 3))
    log_p, log_q = toy_gaussian_snr.log_probs(point, x, eps, 2.0 / 3.0)
    z = x @ point["A"].T + point["b"]
    z = z[:, None] + math.sqrt(2 / 3) * eps
    ref_p = jax.scipy.stats.norm.logpdf(z, point["mu"]).sum(-1) + jax.scipy.stats.norm.logpdf(x[:, None], z).sum(-1)
    np.testing.assert_allclose(log_p, ref_p, rtol=1e-5)
    np.testing.assert_allclose(log_q, jax.scipy.stats.norm.logpdf(eps).sum(-1) - 1.5 * math.log(2 / 3), rtol=1e-5)
    # At the exact optimum (offset 0) the expected gradient of the objective vanishes (thesis 7.B).
    g_theta, g_phi = toy_gaussian_snr.gradient_estimates(x, point, 2 / 3, 200, 1, jax.random.PRNGKey(2), 4, 4)
    assert np.max(np.abs(np.mean(g_theta, 0))) < 0.05 and np.max(np.abs(np.mean(g_phi, 0))) < 0.1


def test_gmm_losses_finite_for_every_method_and_posterior_normalised():
    phi = gmm_pruning.init_phi(jax.random.PRNGKey(0), 16, 20)
    theta = -jnp.arange(20.0)
    x = jnp.array([0.0, 55.0, 190.0])
    for method in ("ws", "ww", "dww", "vimco", "reinforce"):
        lt, lp = gmm_pruning.losses(method, theta, phi, x, jax.random.PRNGKey(1), 3, 0.2)
        g = jax.grad(lambda p: gmm_pruning.losses(method, theta, p, x, jax.random.PRNGKey(1), 3, 0.2)[1])(phi)
        assert np.isfinite(lt) and np.isfinite(lp) and all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
    post = gmm_pruning.posterior(jnp.log(gmm_pruning.true_probs(20)), x)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(gmm_pruning.true_probs(20)[0], 5 / sum(range(5, 25)), rtol=1e-6)


def _tiny_gmm_config(starts):
    cfg = gmm_config.get_config("quick")
    cfg.methods, cfg.num_particles, cfg.starts = ("dww",), (2,), tuple(starts)
    cfg.num_iterations, cfg.eval_every, cfg.num_seeds = 20, 10, 2
    return cfg


@pytest.mark.slow  # ≈ 50 s on 2 busy cores; experiment-level, outside the default suite
def test_gmm_study_runs_both_starts_in_one_program_and_resumes(tmp_path):
    results = gmm_pruning.run(_tiny_gmm_config(["adverse", "equal"]), str(tmp_path / "both"))
    assert results["iterations"] == [0, 10, 20]
    adverse, equal = results["runs"]["adverse/dww/K2"], results["runs"]["equal/dww/K2"]
    # the adverse start is the prior ∝ exp(−c), the equal start uniform (snapshot 0 = before any update)
    start = np.asarray(adverse["hinton_prior_seed0"][0])
    np.testing.assert_allclose(start, np.exp(-np.arange(20)) / np.exp(-np.arange(20)).sum(), rtol=1e-5)
    np.testing.assert_allclose(equal["hinton_prior_seed0"][0], np.full(20, 0.05), rtol=1e-6)
    q = np.asarray(adverse["hinton_q_seed0"])  # [3 stages, X, C], PMFs
    assert q.shape == (3, 10, 20)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-5)
    for r in (adverse, equal):
        assert np.all(np.asarray(r["phi_grad_std_quartiles"]) > 0)
        assert len(r["model_error_quartiles"][1]) == 3
    # vmapping the starts does not mix them: with the same seeds, the two starts' runs differ (θ's start differs) but
    # each start's inference network starts from the same φ (same keys), so the first inference error is shared
    assert adverse["inference_error_quartiles"][1][0] == equal["inference_error_quartiles"][1][0]
    assert adverse["model_error_quartiles"][1][0] != equal["model_error_quartiles"][1][0]
    assert all(os.path.exists(p) for p in results["plots"]) and len(results["plots"]) == 5
    # resume: a second run reads the finished (method, K) instead of training it again
    again = gmm_pruning.run(_tiny_gmm_config(["adverse", "equal"]), str(tmp_path / "both"))
    assert again["runs"]["adverse/dww/K2"] == adverse
    with pytest.raises(ValueError, match="another config"):
        gmm_pruning.run(_tiny_gmm_config(["equal"]), str(tmp_path / "both"))


def test_mnist_schedule_and_model_shapes():
    cfg = mnist_config.get_config()
    _, total = mnist_bounds.schedule(cfg, 3000)
    assert total == 3280 * 3000  # Σ_{i<8} 3^i = 3280 epochs
    params = mnist_bounds.init_params(jax.random.PRNGKey(0), 200, 50)
    x = jnp.ones((2, 784))
    lp, lq = mnist_bounds.log_weights(params, x, jax.random.PRNGKey(1), 64)
    assert lp.shape == lq.shape == (2, 64)
    for name, (kind, arg) in cfg.methods.items():
        assert np.isfinite(mnist_bounds.surrogates(kind, arg, lp, lq).theta), name


@pytest.mark.slow  # ≈ 65 s on 2 busy cores; experiment-level, outside the default suite
def test_mnist_study_runs_two_seeds_resumes_and_tests_significance(tmp_path):
    cfg = mnist_config.get_config("quick")
    cfg.hidden, cfg.latent, cfg.run_methods = 16, 4, ("PIWAE(8,8)", "VAE")
    rng = np.random.default_rng(0)
    x_train = rng.uniform(size=(200, 784))
    x_train[:, :100] = 0.0  # blank pixels, as MNIST's border: weights on them have no gradient, hence no SNR
    data = (jnp.asarray(x_train, jnp.float32), jnp.asarray(rng.integers(0, 2, (40, 784)), jnp.float32))
    results = mnist_bounds.run(cfg, str(tmp_path), data)
    assert set(results["runs"]) == {"PIWAE(8,8)/seed0", "PIWAE(8,8)/seed1", "VAE/seed0", "VAE/seed1"}
    run = results["runs"]["VAE/seed1"]
    assert len(run["ess_fraction"]) == 40 and all(1 / 200 <= e <= 1 + 1e-5 for e in run["ess_fraction"])
    assert [s for s, _ in run["snr_curve"]] == [0, 10, 20]
    snr = np.array([row for _, row in run["snr_curve"]])  # [points, layers, (mean, std)]
    assert snr.shape == (3, 3, 2) and np.all(np.isfinite(snr)) and np.all(snr[..., 0] > 0)
    for k in mnist_bounds.METRICS:  # the table: mean over the two seeds; exactly one best; Welch's test ran
        cells = [results["table"][m][k] for m in cfg.run_methods]
        assert sum(c["best"] for c in cells) == 1 and all(c["not_significantly_worse"] is not None for c in cells)
        np.testing.assert_allclose(
            results["table"]["VAE"][k]["mean"], np.mean([results["runs"][f"VAE/seed{s}"][k] for s in (0, 1)])
        )
    assert "± " in results["table_markdown"] and all(os.path.exists(p) for p in results["plots"])
    again = mnist_bounds.run(cfg, str(tmp_path), data)  # resumes: nothing is trained again
    assert again["runs"]["VAE/seed1"]["train_seconds"] == run["train_seconds"]


def test_snr_weights_of_the_first_layer_sit_on_pixels_that_are_not_blank():
    params = {"encoder": [{"w": np.zeros((6, 5))}, {"w": np.zeros((5, 4))}]}
    x = np.zeros((3, 6))
    x[1, 2] = x[2, 4] = 1.0  # only pixels 2 and 4 are ever nonzero
    first, second = mnist_bounds.snr_weight_indices(params, 10, x)
    assert sorted(first) == sorted([2 * 5 + c for c in range(5)] + [4 * 5 + c for c in range(5)])
    assert len(set(second)) == 10 and all(0 <= i < 20 for i in second)
    with pytest.raises(ValueError, match="layer 1 has 10 weights"):
        mnist_bounds.snr_weight_indices(params, 11, x)


def test_welch_table_marks_ties_and_significant_differences():
    runs = {f"A/seed{s}": {k: v for k in mnist_bounds.METRICS} for s, v in enumerate([1.0, 1.1, 0.9, 1.0])}
    runs |= {f"B/seed{s}": {k: v for k in mnist_bounds.METRICS} for s, v in enumerate([0.95, 1.05, 1.0, 0.9])}
    runs |= {f"C/seed{s}": {k: v for k in mnist_bounds.METRICS} for s, v in enumerate([0.0, 0.1, -0.1, 0.0])}
    table = mnist_bounds.summarise({"runs": runs}, ["A", "B", "C"], [0, 1, 2, 3])
    cell = table["A"]["IWAE-64"]
    assert (
        cell["best"]
        and cell["mean"] == pytest.approx(1.0)
        and cell["std"] == pytest.approx(np.std([1, 1.1, 0.9, 1], ddof=1))
    )
    assert table["B"]["IWAE-64"]["not_significantly_worse"] and not table["C"]["IWAE-64"]["not_significantly_worse"]

"""experiments/toy_gaussian_convergence.py: the closed forms it measures against, and its quick run end to end."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import toy_gaussian_convergence as conv
from experiments import toy_gaussian_snr

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_target_gradient_is_autodiff_of_the_exact_marginal_and_the_limit_of_iwae():
    x, point = toy_gaussian_snr.make_problem(jax.random.PRNGKey(0), 3, 16, 0.1)
    # log_likelihood is the marginal N(x; μ, 2I) of Eq. 7.11, averaged over the data ...
    ref = jnp.mean(jax.scipy.stats.norm.logpdf(x, point["mu"], math.sqrt(2.0)).sum(-1))
    np.testing.assert_allclose(conv.log_likelihood(point["mu"], x), ref, rtol=1e-6)
    # ... true_theta_gradient is its gradient, and vanishes at 7.B's optimum.
    np.testing.assert_allclose(
        conv.true_theta_gradient(point["mu"], x), jax.grad(conv.log_likelihood)(point["mu"], x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(conv.true_theta_gradient(conv.optimum(x)["mu"], x), 0.0, atol=1e-6)
    # IWAE's θ-gradient tends to it as K grows (bias O(1/K)): R = 64 estimates at K = 2000 agree within 4 standard
    # errors (+ 1e-3 for what is left of the bias).
    neg = np.asarray(toy_gaussian_snr.gradient_estimates(x, point, 2 / 3, 1, 2000, jax.random.PRNGKey(1), 64, 16)[0])
    mean, se = -neg.mean(0), neg.std(0, ddof=1) / math.sqrt(neg.shape[0])
    target = np.asarray(conv.true_theta_gradient(point["mu"], x))
    assert np.all(np.abs(mean - target) < 4 * se + 1e-3), (mean, target, se)
    # The VAE's expected θ-gradient is A x̄ + b − μ instead: a bias of several standard errors at this point.
    vae_rmse, vae_bias = conv.vae_theta_rmse(point, x, 2 / 3, 1)
    assert vae_bias > 10 * np.linalg.norm(se) and vae_rmse > vae_bias


def test_rmse_summary_on_a_case_with_known_answer():
    target = np.array([1.0, -2.0])
    bias, s = np.array([0.3, 0.4]), 0.6  # ‖bias‖ = 0.5
    noise = s * np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # mean 0, plug-in variances s²/2 each
    out = conv.rmse_summary(target + bias + noise, target)
    assert math.isclose(out["bias_norm"], 0.5, rel_tol=1e-12)
    assert math.isclose(out["bias_norm_debiased"], math.sqrt(0.25 - s**2 / 3), rel_tol=1e-12)  # R − 1 = 3
    assert math.isclose(out["sd"], s, rel_tol=1e-12)
    assert math.isclose(out["rmse"], math.sqrt(0.25 + s**2), rel_tol=1e-12)
    errors = np.sort(np.linalg.norm(bias + noise, axis=-1))
    np.testing.assert_allclose(out["error_quartiles"][1], np.median(errors))


def test_monte_carlo_rmse_of_the_vae_matches_its_closed_form():
    """Δ_{M,1}(μ) from autodiff of objectives.miwae: its MSE to ∇_μ log Z over R = 400 repeats equals the exact
    ‖A x̄ + b − μ − (x̄ − μ)/2‖² + D σ_q² / (N M) within 4 standard errors of the mean of the squared errors."""
    x, point = toy_gaussian_snr.make_problem(jax.random.PRNGKey(3), 5, 32, 0.05)
    target = np.asarray(conv.true_theta_gradient(point["mu"], x))
    for m in (1, 8):
        neg = np.asarray(toy_gaussian_snr.gradient_estimates(x, point, 2 / 3, m, 1, jax.random.PRNGKey(m), 400, 100)[0])
        sq = np.sum((-neg - target) ** 2, -1)
        exact, _ = conv.vae_theta_rmse(point, x, 2 / 3, m)
        assert abs(sq.mean() - exact**2) < 4 * sq.std() / math.sqrt(len(sq)), (m, sq.mean(), exact**2)


def test_init_and_distances():
    params = conv.init_params(jax.random.PRNGKey(0), 4, 1.5, 2.5)
    assert {k: v.shape for k, v in params.items()} == {"mu": (4,), "A": (4, 4), "b": (4,)}
    leaves = np.concatenate([np.ravel(v) for v in params.values()])
    assert leaves.min() >= 1.5 and leaves.max() <= 2.5 and leaves.std() > 0.1
    best = {"mu": jnp.zeros(4), "A": jnp.eye(4) / 2, "b": jnp.ones(4)}
    d_theta, d_phi = conv.distances(params, best)
    np.testing.assert_allclose(d_theta, np.linalg.norm(params["mu"]), rtol=1e-6)
    ref = math.sqrt(np.sum((params["A"] - jnp.eye(4) / 2) ** 2) + np.sum((params["b"] - 1.0) ** 2))
    np.testing.assert_allclose(d_phi, ref, rtol=1e-6)


@pytest.mark.slow  # ≈ 45 s on 2 busy cores; experiment-level, outside the default suite
def test_quick_run_from_the_command_line(tmp_path):
    """The quick variant as the config's docstring runs it: both studies, their figures, and what they measure."""
    workdir = tmp_path / "quick"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.toy_gaussian_convergence",
            "--config=toy_gaussian_convergence:quick",
            f"--workdir={workdir}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((workdir / "results.json").read_text())
    for name in ("estimators_toy_rmse.png", "estimators_toy_adam.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # RMSE: the VAE's measured RMSE is its closed form (R = 48: a few per cent) and flattens at its bias; IWAE's falls
    # with K, below the VAE's at the same budget.
    iwae, vae = res["rmse"]["sweeps"]["iwae_vs_K"], res["rmse"]["sweeps"]["vae_vs_M"]
    for row in vae:
        assert abs(row["rmse"] / row["rmse_exact"] - 1) < 0.1, row
    assert vae[-1]["rmse"] > vae[-1]["bias_norm_exact"] > 0.5 * vae[-1]["rmse"]
    rmse_k = [r["rmse"] for r in iwae]
    assert all(b < a for a, b in zip(rmse_k[:-1], rmse_k[1:])) and rmse_k[-1] < 0.5 * vae[-1]["rmse"]
    assert iwae[0]["rmse"] == vae[0]["rmse"]  # K = M = 1 is the same estimator with the same key

    # Adam: from the same U[1.5, 2.5] points for every (K, M), both distances and the bound improve a lot.
    adam = res["adam"]
    assert [[r["K"], r["M"]] for r in adam["settings"]] == [[1, 100], [100, 1]]
    starts = [(r["dist_theta"][0][0], r["dist_phi"][0][0]) for r in adam["settings"]]
    assert starts[0] == starts[1] and starts[0][1] > 20  # A's 400 entries start ≈ 2 away from I/2's
    for row in adam["settings"]:
        d_theta, d_phi, bound = (np.asarray(row[n]) for n in ("dist_theta", "dist_phi", "bound"))
        assert np.all(np.isfinite(d_theta)) and np.all(np.isfinite(d_phi)) and np.all(np.isfinite(bound[:, 1:]))
        assert np.all(d_theta[:, -1] < 0.2 * d_theta[:, 0]) and np.all(d_phi[:, -1] < 0.3 * d_phi[:, 0]), row["K"]
        assert np.all(bound[:, -1] > bound[:, 1] + 100)
        assert len(set(row["final"]["dist_phi"]["per_seed"])) == 2  # the seeds differ
    assert {"K", "M"} == set(adam["best_dist_phi"]) and adam["best_dist_phi"]["K"] in (1, 100)

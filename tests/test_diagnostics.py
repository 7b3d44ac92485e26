"""Tests for ocr_jax.diagnostics: SNR, DSNR, ESS and the chunked log-marginal estimator."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import diagnostics, objectives


def test_snr_matches_known_mean_and_std():
    key = jax.random.PRNGKey(0)
    g = {"a": 2.0 + 4.0 * jax.random.normal(key, (20000, 3)), "b": -1.0 + jax.random.normal(key, (20000,))}
    s = diagnostics.snr(g)
    np.testing.assert_allclose(s["a"], 0.5, atol=0.03)
    np.testing.assert_allclose(s["b"], 1.0, atol=0.03)
    # the floor-debiased SNR² is unbiased for a zero-mean gradient, where the plug-in SNR sits near 1/√R
    z = jax.random.normal(jax.random.PRNGKey(1), (100, 2000))
    assert abs(float(jnp.mean(diagnostics.snr_squared_debiased(z)))) < 0.003
    assert float(jnp.mean(diagnostics.snr(z))) > 0.05
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.snr(jnp.zeros((1, 3)))


def test_dsnr_definition():
    # Δ = u·a + noise ⊥ u: ratio |a| / ‖noise‖ exactly
    est = jnp.array([[3.0, 4.0, 0.0], [1.0, 0.0, 2.0]])
    val, ratios = diagnostics.dsnr(est, jnp.array([2.0, 0.0, 0.0]), return_ratios=True)
    np.testing.assert_allclose(ratios, [3.0 / 4.0, 1.0 / 2.0], rtol=1e-6)
    np.testing.assert_allclose(val, 0.625, rtol=1e-6)
    # default direction is the mean of the estimates; pytrees are flattened
    tree = {"x": est[:, :1], "y": est[:, 1:]}
    np.testing.assert_allclose(diagnostics.dsnr(tree), diagnostics.dsnr(est), rtol=1e-6)
    with pytest.raises(ValueError, match="direction"):
        diagnostics.dsnr(est, jnp.ones(2))


def test_ess_in_log_space():
    np.testing.assert_allclose(diagnostics.ess(jnp.zeros(7)), 7.0, rtol=1e-6)
    np.testing.assert_allclose(diagnostics.ess(jnp.array([0.0, -1e4, -1e4])), 1.0, rtol=1e-6)
    lw = jnp.array([1e4, 1e4 + math.log(3.0)])  # weights 1 : 3 -> ESS = 16 / 10
    np.testing.assert_allclose(diagnostics.ess(lw), 1.6, rtol=1e-3)
    w = np.exp(np.array([0.1, -0.5, 0.7]))
    np.testing.assert_allclose(diagnostics.ess(jnp.log(w)), w.sum() ** 2 / (w**2).sum(), rtol=1e-5)


@pytest.mark.parametrize("num,chunk", [(1000, 100), (1000, 300), (50, 64), (5000, 500)])
def test_log_marginal_chunked_equals_unchunked(num, chunk):
    offsets = jnp.array([0.0, 1e4])  # two "datapoints", one with huge log-weights

    def log_weight_fn(key, n):
        return offsets[:, None] + 3.0 * jax.random.normal(key, (2, n))

    key = jax.random.PRNGKey(3)
    got = jax.jit(lambda k: diagnostics.log_marginal_chunked(log_weight_fn, k, num, chunk))(key)
    c = min(chunk, num)
    full, rem = divmod(num, c)
    parts = [log_weight_fn(jax.random.fold_in(key, i), c) for i in range(full)]
    if rem:
        parts.append(log_weight_fn(jax.random.fold_in(key, full), rem))
    ref = objectives.log_mean_exp(jnp.concatenate(parts, -1))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)


def test_log_marginal_chunked_is_consistent_for_a_gaussian():
    """z ~ N(0,1), x | z ~ N(z, 1), q = prior: log p(x) = log N(x; 0, 2)."""
    x = 0.8

    def log_weight_fn(key, n):
        z = jax.random.normal(key, (n,))
        return -0.5 * (x - z) ** 2 - 0.5 * math.log(2 * math.pi)

    got = diagnostics.log_marginal_chunked(log_weight_fn, jax.random.PRNGKey(4), 20000, 2000)
    np.testing.assert_allclose(got, -0.5 * x**2 / 2 - 0.5 * math.log(4 * math.pi), atol=0.02)

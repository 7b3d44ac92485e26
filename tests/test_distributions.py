"""ocr_jax.distributions: the count distributions distrax lacks, against closed forms (and distrax's own Normal
against the Gaussian density written out)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import distributions as dist


def test_categorical_sample_frequencies_support_and_shapes():
    logits = jnp.log(jnp.array([[0.5, 0.0, 0.2, 0.3], [0.1, 0.1, 0.1, 0.7]]))  # category 1 of row 0 has p = 0
    n = 50000
    z = dist.categorical_sample(jax.random.PRNGKey(0), logits, (n, 2))
    assert z.shape == (n, 2) and z.dtype == jnp.int32
    assert z.shape == jax.random.categorical(jax.random.PRNGKey(0), logits, shape=(n, 2)).shape
    probs = np.exp(np.asarray(logits))
    for row in range(2):
        freq = np.bincount(np.asarray(z[:, row]), minlength=4) / n
        np.testing.assert_allclose(freq, probs[row], atol=5 * np.sqrt(0.25 / n))
    assert not np.any(np.asarray(z[:, 0]) == 1)  # probability 0 is never drawn
    assert dist.categorical_sample(jax.random.PRNGKey(1), logits).shape == (2,)  # default shape: the batch
    one_hot = jnp.array([-1e30, -1e30, 0.0])  # all mass on the last category, even at the cdf's rounding
    assert np.all(np.asarray(dist.categorical_sample(jax.random.PRNGKey(2), one_hot, (1000,))) == 2)
    first = jnp.array([0.0, -1e30, -1e30])
    assert np.all(np.asarray(dist.categorical_sample(jax.random.PRNGKey(3), first, (1000,))) == 0)


def test_diag_normal_log_prob_closed_form():
    rng = np.random.default_rng(0)
    x, loc = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    scale = rng.uniform(0.1, 2.0, size=(3, 4))
    expected = np.sum(-0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi), -1)
    np.testing.assert_allclose(dist.diag_normal_log_prob(x, loc, scale), expected, rtol=1e-5)
    np.testing.assert_allclose(  # scalar loc and scale broadcast
        dist.diag_normal_log_prob(x, 0.0, 1.0), np.sum(-0.5 * x**2 - 0.5 * math.log(2 * math.pi), -1), rtol=1e-5
    )


@pytest.mark.parametrize("rho", [0.5, 0.01, 0.999])
def test_count_log_prior_is_truncated_geometric(rho):
    N = 3
    expected = np.array([rho**n * (1 - rho) / (1 - rho ** (N + 1)) for n in range(N + 1)])
    np.testing.assert_allclose(np.exp(dist.count_log_prior(rho, N)), expected, rtol=1e-5)
    rhos = np.array([0.9, 0.5, 0.1])  # per-step continue probabilities: p(n) ∝ Π_{i≤n} ρ_i
    w = np.array([1.0, 0.9, 0.45, 0.045])
    np.testing.assert_allclose(np.exp(dist.count_log_prior(rhos, N)), w / w.sum(), rtol=1e-5)


def test_presence_steps_sum_to_the_count_prior():
    N, rho = 3, 0.3
    unary = jnp.asarray([[1.0] * n + [0.0] * (N - n) for n in range(N + 1)])
    steps = dist.presence_log_prior_steps(unary, rho, N)
    np.testing.assert_allclose(steps.sum(-1), dist.count_log_prior(rho, N), rtol=1e-5, atol=1e-6)
    assert float(steps[0, 1]) == 0.0 and float(steps[1, 2]) == 0.0  # nothing after the stop


def test_truncated_categorical_renormalises_over_its_support():
    logits = jnp.asarray([0.3, -1.0, 2.0, 0.5])
    for m in range(4):
        d = dist.truncated_categorical(logits, m)
        p = np.exp(np.asarray(logits[: m + 1], np.float64))
        p /= p.sum()
        for n in range(4):
            lp = float(d.log_prob(n))
            if n <= m:
                np.testing.assert_allclose(lp, math.log(p[n]), rtol=1e-5)
            else:
                assert lp == -math.inf
        np.testing.assert_allclose(np.asarray(d.probs)[: m + 1], p, rtol=1e-5)
    # batched support sizes; gradients stay finite where the value is in the support
    batched = dist.truncated_categorical(jnp.zeros((2, 4)), jnp.asarray([1, 3]))
    np.testing.assert_allclose(np.exp(batched.log_prob(jnp.asarray([0, 0]))), [0.5, 0.25], rtol=1e-6)
    grads = jax.grad(lambda z: dist.truncated_categorical(z, 1).log_prob(1))(logits)
    assert np.isfinite(grads).all()
    np.testing.assert_allclose(grads[2:], 0.0)


def test_truncated_categorical_samples_stay_in_the_support():
    d = dist.truncated_categorical(jnp.zeros(4), 2)
    samples = np.asarray(d.sample(seed=jax.random.key(0), sample_shape=(2000,)))
    counts = np.bincount(samples, minlength=4)
    assert counts[3] == 0 and all(abs(c / 2000 - 1 / 3) < 0.05 for c in counts[:3])


def test_count_prior_enumerates_every_presence_code():
    """Σ over all unary codes of exp(Σ_i step term) = 1 (non-unary codes are not in the support)."""
    N, rho = 3, 0.2
    codes = [c for c in itertools.product([0.0, 1.0], repeat=N) if list(c) == sorted(c, reverse=True)]
    total = sum(float(jnp.exp(dist.presence_log_prior_steps(jnp.asarray(c), rho, N).sum())) for c in codes)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)

"""FIVO (ocr_jax.estimators.fivo and the "fivo" estimator): the particle filter's bound against closed forms.

* state-independent incremental weights: log p̂ is Σ_t log mean_k α_t^k when resampling always, log mean_k Π_t α_t^k
  when never, and a float64 replay of the ESS rule otherwise;
* with resampling off the filter is IWAE over whole sequences: the same value and the same gradients as the "iwae"
  estimator on the same particles;
* on a linear-Gaussian state-space model E[log p̂] approaches the Kalman filter's log-likelihood as K grows, from
  below, and FIVO's gap is far smaller than IWAE's at the same K;
* the ESS trigger, ancestry (trace_lineage), the dropped resampling score term, and clear errors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import estimators
from ocr_jax.estimators import fivo


def lme(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.mean(np.exp(x - m), axis=axis))


def weights_only_step(state, log_alpha_t, key):
    """A model whose incremental weights do not depend on the particles' states: the inputs are the weights."""
    del key
    return state, log_alpha_t, ()


def run_weights_only(log_alpha, resampling, threshold=0.5, seed=0):
    T, B, K = log_alpha.shape
    return fivo.particle_filter(
        weights_only_step,
        jnp.zeros((B, K)),
        jnp.asarray(log_alpha, jnp.float32),
        jax.random.key(seed),
        K,
        resampling=resampling,
        ess_threshold=threshold,
    )


def reference_ess_filter(log_alpha, threshold):
    """Float64 replay: log p̂ and the resampling pattern of the ESS rule for state-independent weights."""
    T, B, K = log_alpha.shape
    acc, log_p, pattern = np.zeros((B, K)), np.zeros(B), np.zeros((T, B), bool)
    for t in range(T):
        acc = acc + log_alpha[t]
        ess = np.exp(2 * lme(acc) + 2 * np.log(K) - lme(2 * acc) - np.log(K))
        pattern[t] = ess < threshold * K
        log_p = log_p + np.where(pattern[t], lme(acc), 0.0)
        acc = np.where(pattern[t][:, None], 0.0, acc)
    return log_p + lme(acc), pattern


def test_bound_with_state_independent_weights_matches_the_closed_forms():
    log_alpha = 1.5 * np.random.default_rng(0).normal(size=(6, 5, 4))
    always = run_weights_only(log_alpha, "always")
    never = run_weights_only(log_alpha, "never")
    np.testing.assert_allclose(always.log_p_hat, lme(log_alpha).sum(0), rtol=1e-5)
    np.testing.assert_allclose(never.log_p_hat, lme(log_alpha.sum(0)), rtol=1e-5)
    np.testing.assert_allclose(never.log_weights, log_alpha.sum(0), rtol=1e-5)
    for threshold in (0.5,):
        ess = run_weights_only(log_alpha, "ess", threshold)
        value, pattern = reference_ess_filter(log_alpha, threshold)
        np.testing.assert_array_equal(ess.resampled, pattern)
        np.testing.assert_allclose(ess.log_p_hat, value, rtol=1e-5)
        assert 0 < pattern.sum() < pattern.size  # a mixed pattern: the check is not vacuous
    for result in (always, never, ess):  # the final weights carry the bound
        np.testing.assert_allclose(lme(np.asarray(result.log_weights)), result.log_p_hat, rtol=1e-5)
    assert np.all(always.resampled) and not np.any(never.resampled)


def test_ess_trigger_threshold_and_resampled_particles():
    K = 4
    log_alpha = np.zeros((3, 2, K))
    log_alpha[1, 0] = [30.0, 0.0, 0.0, 0.0]  # sequence 0: one particle dominates at t = 1 (ESS ≈ 1 < 2)
    log_alpha[1, 1] = [0.0, 0.0, 0.0, 0.1]  # sequence 1: ESS ≈ 4

    def step(state, a, key):  # the state remembers the particle's original index
        return state, a, state

    def run(resampling, threshold=0.5, alpha=log_alpha):
        return fivo.particle_filter(
            step,
            jnp.broadcast_to(jnp.arange(K, dtype=jnp.float32), (2, K)),
            jnp.asarray(alpha, jnp.float32),
            jax.random.key(3),
            K,
            resampling=resampling,
            ess_threshold=threshold,
        )

    ess = run("ess")
    np.testing.assert_array_equal(ess.resampled, [[False, False], [True, False], [False, False]])
    np.testing.assert_array_equal(ess.ancestors[1, 0], [0, 0, 0, 0])  # every particle copies the dominant one
    np.testing.assert_array_equal(ess.ancestors[1, 1], np.arange(K))
    np.testing.assert_array_equal(ess.final_state, [[0, 0, 0, 0], [0, 1, 2, 3]])
    np.testing.assert_allclose(np.exp(ess.log_ess[0]), K, rtol=1e-5)
    # weights (1, 1, 1, 3): ESS = 36 / 12 = 3, so 0.5·K = 2 keeps them and 0.8·K = 3.2 resamples
    alpha = np.zeros((1, 2, K))
    alpha[0, :] = np.log([1.0, 1.0, 1.0, 3.0])
    kept = run("ess", 0.5, alpha)
    np.testing.assert_allclose(np.exp(kept.log_ess), 3.0, rtol=1e-5)
    assert not np.any(kept.resampled) and np.all(run("ess", 0.8, alpha).resampled)


# ------------------------------------------------------------------------------------------------------------------
# a linear-Gaussian state-space model: z_1 ~ N(0, Q0), z_t = A z_{t-1} + N(0, Q), x_t = z_t + N(0, R)

A, Q0, Q, R = 0.9, 1.0, 1.0, 0.5


def log_normal(x, mean, var):
    return -0.5 * (jnp.log(2 * jnp.pi * var) + (x - mean) ** 2 / var)


def kalman_log_likelihood(x):
    """log p(x_{1:T}) of the model above, float64."""
    mean, var, total = 0.0, Q0, 0.0
    for t, xt in enumerate(x):
        if t:
            mean, var = A * mean, A * A * var + Q
        s = var + R
        total += -0.5 * (math.log(2 * math.pi * s) + (xt - mean) ** 2 / s)
        gain = var / s
        mean, var = mean + gain * (xt - mean), (1 - gain) * var
    return total


def simulate(T, seed):
    rng = np.random.default_rng(seed)
    z, xs = rng.normal(0, math.sqrt(Q0)), []
    for t in range(T):
        if t:
            z = A * z + rng.normal(0, math.sqrt(Q))
        xs.append(z + rng.normal(0, math.sqrt(R)))
    return np.asarray(xs)


def lgssm_step(params):
    """Proposal q(z_t | z_{t-1}, x_t) = N(a·(A z_{t-1}) + b·x_t, exp(2 c)) (params (a, b, c); the bootstrap proposal
    is (1, 0, log √Q) after the first step), reparameterised. State: (z_{t-1}, first-step flag)."""
    a, b, c = params

    def step(state, x_t, key):
        z_prev, first = state
        prior_mean, prior_var = jnp.where(first, 0.0, A * z_prev), jnp.where(first, Q0, Q)
        q_mean, q_std = a * prior_mean + b * x_t[:, None], jnp.exp(c)
        z = q_mean + q_std * jax.random.normal(key, z_prev.shape)
        log_alpha = (
            log_normal(z, prior_mean, prior_var) + log_normal(x_t[:, None], z, R) - log_normal(z, q_mean, q_std**2)
        )
        return (z, jnp.zeros_like(first)), log_alpha, z

    return step


def lgssm_filter(params, x, key, K, resampling, batch=1):
    x = jnp.broadcast_to(jnp.asarray(x, jnp.float32)[:, None], (len(x), batch))
    state = (jnp.zeros((batch, K)), jnp.ones((batch, K), bool))
    return fivo.particle_filter(lgssm_step(params), state, x, key, K, resampling=resampling)


BOOTSTRAP = (jnp.asarray(1.0), jnp.asarray(0.0), jnp.asarray(0.5 * math.log(Q)))
RESAMPLING = ("always", "never", "ess")


def test_without_resampling_the_filter_is_iwae_over_whole_sequences():
    """Same particles (the keys of fivo.step_keys), same value and same gradients as the "iwae" estimator on the
    whole-sequence log-weights computed independently of the filter."""
    x, K, key = simulate(4, seed=1), 4, jax.random.key(5)
    params = (jnp.asarray(0.7), jnp.asarray(0.3), jnp.asarray(-0.2))

    def fivo_loss(p):
        result = lgssm_filter(p, x, key, K, "never", batch=2)
        terms = estimators.LogWeightTerms(log_p=result.log_weights, log_p_hat=result.log_p_hat)
        return estimators.get("fivo", resampling="never").surrogates(terms, ())[0].theta

    def iwae_loss(p):  # the model's log p(x, z) and log q(z | x) per particle, summed over time
        a, b, c = p
        z_prev, log_p, log_q = jnp.zeros((2, K)), 0.0, 0.0
        for t, xt in enumerate(x):
            prior_mean, prior_var = (0.0, Q0) if t == 0 else (A * z_prev, Q)
            q_mean = a * prior_mean + b * xt
            z = q_mean + jnp.exp(c) * jax.random.normal(fivo.step_keys(key, t)[0], (2, K))
            log_p = log_p + log_normal(z, prior_mean, prior_var) + log_normal(xt, z, R)
            log_q = log_q + log_normal(z, q_mean, jnp.exp(2 * c))
            z_prev = z
        terms = estimators.LogWeightTerms(log_p=log_p, log_q_reparam=log_q)
        return estimators.get("iwae").surrogates(terms, ())[0].theta

    (v_fivo, g_fivo), (v_iwae, g_iwae) = (jax.jit(jax.value_and_grad(f))(params) for f in (fivo_loss, iwae_loss))
    np.testing.assert_allclose(v_fivo, v_iwae, rtol=1e-5)
    for a, b in zip(g_fivo, g_iwae):
        np.testing.assert_allclose(a, b, rtol=1e-4)
        assert abs(float(a)) > 1e-3


def test_expected_bound_approaches_the_kalman_log_likelihood_as_k_grows():
    """E[log p̂] ≤ log p(x), with a gap that shrinks roughly as 1/K (bootstrap proposal, ESS resampling; 400
    independent filters per K as the batch axis)."""
    x = simulate(20, seed=2)
    exact = kalman_log_likelihood(x)
    repeats, gaps, errors = 400, {}, {}
    run = jax.jit(lgssm_filter, static_argnums=(3, 4, 5))
    for K in (4, 32, 256):
        log_p_hat = np.asarray(run(BOOTSTRAP, x, jax.random.key(K), K, "ess", repeats).log_p_hat, np.float64)
        gaps[K], errors[K] = exact - log_p_hat.mean(), log_p_hat.std() / math.sqrt(repeats)
        assert gaps[K] > -3 * errors[K], (K, gaps[K], errors[K])  # a lower bound in expectation
    assert gaps[4] > gaps[32] + 3 * errors[4] and gaps[32] > gaps[256] + 3 * errors[32], gaps
    assert gaps[256] < 0.3 and gaps[4] > 1.0, gaps
    assert 0.5 < (256 * gaps[256]) / (32 * gaps[32]) < 2.0, gaps  # the O(1/K) rate of the bias


@pytest.mark.slow
def test_fivo_is_tighter_than_iwae_on_a_long_sequence():
    """With the same proposal and K, resampling keeps the bound close to log p(x); IWAE's gap is many times larger."""
    x = simulate(20, seed=2)
    exact = kalman_log_likelihood(x)
    run = jax.jit(lgssm_filter, static_argnums=(3, 4, 5))
    gap = {r: exact - float(np.mean(run(BOOTSTRAP, x, jax.random.key(1), 32, r, 400).log_p_hat)) for r in RESAMPLING}
    assert 0 < gap["ess"] < 2.0 and 0 < gap["always"] < 2.0 and gap["never"] > 5 * max(gap["ess"], gap["always"]), gap


@pytest.mark.slow
def test_gradient_treats_the_ancestors_as_constants():
    """The FIVO gradient drops the resampling score term: it equals the gradient of log p̂ recomputed with the
    filter's ancestors fixed (same particles), and it flows through the resampled particles' states."""
    x, K, key = simulate(4, seed=3), 5, jax.random.key(9)
    params = (jnp.asarray(0.8), jnp.asarray(0.4), jnp.asarray(-0.5))
    result = lgssm_filter(params, x, key, K, "always")
    ancestors = np.asarray(result.ancestors)
    assert not np.all(ancestors == np.arange(K))  # it did resample into other particles

    def replay(p):
        a, b, c = p
        z_prev, log_p_hat = jnp.zeros((1, K)), 0.0
        for t, xt in enumerate(x):
            prior_mean, prior_var = (0.0, Q0) if t == 0 else (A * z_prev, Q)
            q_mean = a * prior_mean + b * xt
            z = q_mean + jnp.exp(c) * jax.random.normal(fivo.step_keys(key, t)[0], (1, K))
            log_alpha = (
                log_normal(z, prior_mean, prior_var) + log_normal(xt, z, R) - log_normal(z, q_mean, jnp.exp(2 * c))
            )
            log_p_hat = log_p_hat + jax.nn.logsumexp(log_alpha) - math.log(K)
            z_prev = z[:, ancestors[t, 0]]
        return log_p_hat

    value, g_replay = jax.jit(jax.value_and_grad(replay))(params)
    np.testing.assert_allclose(result.log_p_hat[0], value, rtol=1e-5)
    g_filter = jax.jit(jax.grad(lambda p: lgssm_filter(p, x, key, K, "always").log_p_hat[0]))(params)
    for g, r in zip(g_filter, g_replay):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    assert abs(float(g_filter[0])) > 1e-3  # a depends on z_{t-1}: the gradient passes through the gathered states


def test_trace_lineage_follows_the_ancestors():
    ancestors = jnp.asarray([[[0, 1, 2]], [[2, 2, 0]], [[1, 0, 0]]], jnp.int32)  # [time, batch, particles]
    values = 10.0 * jnp.arange(3)[:, None, None] + jnp.arange(3)[None, None, :]
    np.testing.assert_array_equal(fivo.trace_lineage(values, ancestors)[:, 0], [[2, 2, 2], [12, 12, 12], [21, 20, 20]])
    identity = jnp.broadcast_to(jnp.arange(3), (3, 1, 3))
    np.testing.assert_array_equal(fivo.trace_lineage({"v": values}, identity)["v"], values)

    # against the filter's own copying: a state that sums the per-step draws equals the sum along the lineage
    def step(total, _, key):
        u = jax.random.normal(key, total.shape)
        return total + u, u - total, u  # the weight depends on the state, so resampling is not uniform

    result = fivo.particle_filter(step, jnp.zeros((2, 4)), jnp.zeros((7, 2)), jax.random.key(0), 4, resampling="always")
    traced = fivo.trace_lineage(result.outputs, result.ancestors)
    np.testing.assert_allclose(traced.sum(0), result.final_state, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(result.outputs).sum(0), result.final_state)


def test_bad_input_gives_clear_errors():
    step = weights_only_step
    alpha = jnp.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="needs num_particles >= 2"):
        fivo.particle_filter(step, jnp.zeros((2, 1)), alpha[..., :1], jax.random.key(0), 1, resampling="ess")
    with pytest.raises(ValueError, match="needs num_particles >= 2"):
        fivo.particle_filter(step, jnp.zeros((2, 1)), alpha[..., :1], jax.random.key(0), 1, resampling="always")
    ok = fivo.particle_filter(step, jnp.zeros((2, 1)), alpha[..., :1], jax.random.key(0), 1, resampling="never")
    np.testing.assert_allclose(ok.log_p_hat, 0.0)  # K = 1 without resampling is the ELBO
    with pytest.raises(ValueError, match="time axes differ"):
        fivo.particle_filter(
            lambda s, x, k: (s, x["a"], ()),
            jnp.zeros((2, 4)),
            {"a": alpha, "b": jnp.zeros((4, 2))},
            jax.random.key(0),
            4,
        )
    with pytest.raises(ValueError, match="batch axes"):
        fivo.particle_filter(step, jnp.zeros((2, 4)), (alpha, jnp.zeros((3, 5))), jax.random.key(0), 4)
    with pytest.raises(ValueError, match="resampling must be one of"):
        fivo.particle_filter(step, jnp.zeros((2, 4)), alpha, jax.random.key(0), 4, resampling="sometimes")
    with pytest.raises(ValueError, match="ess_threshold"):
        fivo.particle_filter(step, jnp.zeros((2, 4)), alpha, jax.random.key(0), 4, ess_threshold=1.5)
    with pytest.raises(ValueError, match=r"init_state: every leaf must be \[batch=2, particles=4"):
        fivo.particle_filter(step, jnp.zeros((2, 3)), alpha, jax.random.key(0), 4)
    with pytest.raises(ValueError, match=r"log_alpha \[batch=2, particles=4\]"):
        fivo.particle_filter(lambda s, x, k: (s, x[:, :3], ()), jnp.zeros((2, 4)), alpha, jax.random.key(0), 4)


def test_fivo_estimator_and_its_incompatibility_with_vimco():
    result = run_weights_only(np.random.default_rng(1).normal(size=(4, 3, 5)), "ess")
    terms = estimators.LogWeightTerms(log_p=result.log_weights, log_p_hat=result.log_p_hat)
    s, _ = estimators.get("fivo").surrogates(terms, ())
    np.testing.assert_allclose(s.bound, np.mean(result.log_p_hat), rtol=1e-6)
    assert s.theta is s.phi  # one backward pass serves θ and φ
    assert estimators.get("fivo", resampling="always", ess_threshold=0.3).particle_filter == fivo.FilterSettings(
        "always", 0.3
    )
    with_score = terms._replace(log_q_score=jnp.zeros_like(result.log_weights))
    with pytest.raises(ValueError, match="'fivo' cannot be combined with score-function terms"):
        estimators.get("fivo").surrogates(with_score, ())
    for name in ("vimco", "iwae", "nvil"):
        with pytest.raises(ValueError, match=f"'{name}' cannot be combined with FIVO"):
            estimators.get(name).surrogates(with_score._replace(baselines=jnp.zeros(3)), objectives_state(name))
    with pytest.raises(ValueError, match="FIVO cannot be combined with VIMCO"):
        estimators.check_applicable(estimators.get("vimco"), frozenset({"log_p_hat"}), 5, "VRNN")
    with pytest.raises(ValueError, match="needs num_particles >= 2"):
        estimators.check_applicable(estimators.get("fivo"), frozenset({"log_p_hat"}), 1, "VRNN")
    with pytest.raises(ValueError, match="needs LogWeightTerms.log_p_hat"):
        estimators.get("fivo").surrogates(estimators.LogWeightTerms(log_p=result.log_weights), ())
    with pytest.raises(ValueError, match="resampling must be one of"):
        estimators.get("fivo", resampling="sometimes")


def objectives_state(name):
    return estimators.get(name).init()

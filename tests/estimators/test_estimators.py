"""The estimator interface (ocr_jax.estimators): lookup, requirements, and every estimator's gradient on a model with
a closed-form answer.

The model: z ~ N(0, 1), x | z ~ N(z, 1), so p(x) = N(0, 2) and p(z | x) = N(x/2, 1/2); q_φ(z | x) = N(μ, σ²)
with φ = (μ, log σ), reparameterised; a second, discrete latent c ~ Bernoulli(1/2) with x independent of c and
q_φ(c) = Bernoulli(sigmoid(ℓ)) scored. At the exact posterior (μ = x/2, σ² = 1/2, ℓ = 0) every log-weight equals
log p(x), so every bound is optimal in φ there and every estimator's mean φ-gradient vanishes (DReG's for every
sample): a
check that fails for an estimator wired to the wrong terms.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import estimators, objectives

X = 1.3
K = 4


def _terms(phi, key, num_particles=K, discrete=True):
    mu, log_sigma, logit = phi
    k_z, k_c = jax.random.split(key)
    eps = jax.random.normal(k_z, (num_particles,))
    z = mu + jnp.exp(log_sigma) * eps
    log_norm = -0.5 * math.log(2 * math.pi)
    log_p = log_norm - 0.5 * z**2 + log_norm - 0.5 * (X - z) ** 2
    log_q = log_norm - log_sigma - 0.5 * eps**2
    # DReG's q with the density's parameters stopped, the sample path kept
    log_q_stopped = (
        log_norm
        - jax.lax.stop_gradient(log_sigma)
        - 0.5 * ((z - jax.lax.stop_gradient(mu)) / jnp.exp(jax.lax.stop_gradient(log_sigma))) ** 2
    )
    if not discrete:
        return estimators.LogWeightTerms(log_p=log_p, log_q_reparam=log_q, log_q_stopped=log_q_stopped)
    c = jax.random.bernoulli(k_c, 0.5, (num_particles,)).astype(jnp.float32)
    log_q_c = c * jax.nn.log_sigmoid(logit) + (1 - c) * jax.nn.log_sigmoid(-logit)
    return estimators.LogWeightTerms(
        log_p=log_p + math.log(0.5),
        log_q_reparam=log_q,
        log_q_score=log_q_c,
        baselines=jnp.zeros(()),
        log_proposal=jax.lax.stop_gradient(log_q_c),
        log_q_sleep=jnp.asarray(0.0) * logit,
    )


EXACT = (jnp.asarray(X / 2), jnp.asarray(0.5 * math.log(0.5)), jnp.asarray(0.0))


def test_every_estimator_is_registered_and_lookup_errors_are_clear():
    assert set(estimators.names()) == {
        "elbo",
        "iwae",
        "miwae",
        "ciwae",
        "piwae",
        "reinforce",
        "nvil",
        "vimco",
        "ws",
        "ww",
        "dww",
        "dreg",
        "fivo",
        "switch",
    }
    with pytest.raises(ValueError, match="unknown estimator 'vimcoo'.*vimco"):
        estimators.get("vimcoo")
    with pytest.raises(ValueError, match="'vimco' takes no hyperparameters"):
        estimators.get("vimco", decay=0.9)
    assert estimators.get("nvil", decay=0.5).trains_baseline


def _gradient_mean_and_se(estimator, phis, num_seeds=2000, discrete=True):
    """Mean and standard error over ``num_seeds`` samples of the estimator's φ-gradient at each of the points
    ``phis`` (a tuple of [points] arrays), ``[points, 3]`` each: one jitted function, vmapped over points and seeds."""

    def phi_loss(p, key):
        return estimator.surrogates(_terms(p, key, discrete=discrete), estimator.init())[0].phi

    keys = jax.random.split(jax.random.key(7), num_seeds)
    per_point = jax.vmap(jax.grad(phi_loss), in_axes=(None, 0))
    g = jax.jit(jax.vmap(per_point, in_axes=(0, None)))(phis, keys)
    g = np.stack([np.asarray(a) for a in g], -1)  # [points, seeds, 3]
    return g.mean(1), g.std(1) / np.sqrt(num_seeds)


@pytest.mark.parametrize(
    "name, args",
    [
        ("elbo", {}),
        ("iwae", {}),
        ("miwae", dict(num_repeats=2)),
        ("ciwae", dict(beta=0.3)),
        ("reinforce", {}),
        ("vimco", {}),
        ("nvil", {}),
        ("ww", {}),
        ("dww", {}),
    ],
)
def test_mean_phi_gradient_is_zero_at_the_exact_posterior_and_not_away(name, args):
    """At q = p(z, c | x) every bound (and wake-φ's KL(p‖q)) is optimal in φ: the mean φ-gradient is 0 within
    4 standard errors. Away from it (μ = 0, σ = 1, sigmoid(ℓ) = 0.95) it is not: the check is not vacuous."""
    estimator = estimators.get(name, **args)
    points = tuple(jnp.stack([e, jnp.asarray(a)]) for e, a in zip(EXACT, (0.0, 0.0, 3.0)))
    mean, se = _gradient_mean_and_se(estimator, points)
    assert np.all(np.abs(mean[0]) < 4 * se[0] + 1e-5), (name, mean[0], se[0])
    assert np.abs(mean[1, 0]) > 4 * se[1, 0] and np.abs(mean[1, 2]) > 4 * se[1, 2], (name, mean[1], se[1])


def test_interface_gives_the_objectives_values_and_dreg_on_reparameterised_models():
    terms = _terms((0.2, -0.3, 0.4), jax.random.key(1))
    s, _ = estimators.get("vimco").surrogates(terms, ())
    direct = objectives.vimco(terms.log_p, terms.log_q_reparam, terms.log_q_score)
    np.testing.assert_allclose([s.theta, s.bound], [direct.theta, direct.bound], rtol=1e-6)
    dreg = estimators.get("dreg")
    g = jax.grad(lambda p: dreg.surrogates(_terms(p, jax.random.key(2), discrete=False), ())[0].phi)(EXACT)
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=2e-5)
    with pytest.raises(ValueError, match="'dreg' does not apply to models with log_q_score"):
        dreg.surrogates(terms._replace(log_q_stopped=terms.log_q_reparam), ())


def test_missing_terms_and_too_few_particles_raise_naming_the_estimator():
    terms = _terms(EXACT, jax.random.key(0))
    with pytest.raises(ValueError, match="'nvil' needs LogWeightTerms.baselines"):
        estimators.get("nvil").surrogates(terms._replace(baselines=None), estimators.get("nvil").init())
    with pytest.raises(ValueError, match="'ws' needs LogWeightTerms.log_q_sleep"):
        estimators.get("ws").surrogates(terms._replace(log_q_sleep=None), ())
    with pytest.raises(ValueError, match="'vimco' needs at least 2 particles"):
        estimators.get("vimco").surrogates(_terms(EXACT, jax.random.key(0), num_particles=1), ())
    with pytest.raises(ValueError, match="'dww' needs log_proposal, which toy does not provide"):
        estimators.check_applicable(estimators.get("dww"), frozenset({"log_q_score"}), 4, "toy")
    with pytest.raises(ValueError, match="needs num_particles >= 2; got 1"):
        estimators.check_applicable(estimators.get("vimco"), frozenset({"log_q_score"}), 1, "toy")


def test_nvil_keeps_running_statistics_and_per_step_signals():
    nvil = estimators.get("nvil", decay=0.5)
    terms = _terms((0.2, -0.3, 0.4), jax.random.key(1))
    s, state = nvil.surrogates(terms, nvil.init())
    assert int(state.count) == 1 and float(s.baseline) > 0
    steps = estimators.LogWeightTerms(
        log_p=terms.log_p,
        log_q_score=terms.log_q_score,
        log_w_steps=jnp.stack([terms.log_p, -terms.log_q_score], -1),
        log_q_score_steps=jnp.stack([terms.log_q_score, 0 * terms.log_q_score], -1),
        baselines=jnp.zeros((K, 2)),
    )
    s2, state2 = nvil.surrogates(steps, nvil.init(2))
    assert state2.mean.shape == (2,)
    expected, _ = objectives.nvil_per_step(
        steps.log_w_steps, steps.log_q_score_steps, steps.baselines, objectives.nvil_init((2,)), decay=0.5
    )
    np.testing.assert_allclose(s2.phi, expected.phi, rtol=1e-6)


def test_estimators_compose_with_jit_and_vmap_over_seeds():
    """One jitted function, vmapped over 8 seeds: the mean φ-gradient of IWAE at a point away from the posterior
    agrees across estimators that share IWAE's expectation (IWAE and DReG on the reparameterised model)."""
    phi = (jnp.asarray(0.1), jnp.asarray(-0.2), jnp.asarray(0.0))

    def grad_fn(name):
        est = estimators.get(name)
        return jax.jit(
            jax.vmap(
                jax.grad(lambda p, k: est.surrogates(_terms(p, k, num_particles=8, discrete=False), ())[0].phi),
                in_axes=(None, 0),
            )
        )

    keys = jax.random.split(jax.random.key(3), 4000)
    g_iwae = np.stack([np.asarray(a) for a in grad_fn("iwae")(phi, keys)[:2]], -1)
    g_dreg = np.stack([np.asarray(a) for a in grad_fn("dreg")(phi, keys)[:2]], -1)
    se = np.sqrt(g_iwae.var(0) / len(keys) + g_dreg.var(0) / len(keys))
    assert np.all(np.abs(g_iwae.mean(0) - g_dreg.mean(0)) < 4 * se + 1e-4)
    assert g_dreg.var(0)[0] < g_iwae.var(0)[0]  # DReG's point: lower variance for μ


def test_switch_gives_the_first_estimators_gradients_then_the_seconds():
    """``switch``: VIMCO's θ- and φ-gradients (on the same samples) for the first ``steps`` calls, then PIWAE's with
    its leave-one-out baseline; the call count is its state, under jit; a bad step count or FIVO is refused."""
    then_args = dict(num_repeats=K, score_baseline="leave_one_out")
    sw = estimators.get("switch", first="vimco", then="piwae", steps=2, then_args=then_args)
    assert sw.requires == ("log_q_score",) and sw.min_particles == 2
    vimco, piwae = estimators.get("vimco"), estimators.get("piwae", **then_args)
    phi = (jnp.asarray(0.2), jnp.asarray(-0.3), jnp.asarray(0.4))

    def grads(est, state, key):
        return jax.grad(lambda p: est.surrogates(_terms(p, key), state)[0].phi)(phi)

    step = jax.jit(lambda state, key: (grads(sw, state, key), sw.surrogates(_terms(phi, key), state)[1]))
    state = sw.init()
    for call in range(4):
        key = jax.random.key(10 + call)
        g, state = step(state, key)
        expected = grads(vimco if call < 2 else piwae, (), key)
        other = grads(piwae if call < 2 else vimco, (), key)
        np.testing.assert_allclose(np.stack(g), np.stack(expected), rtol=1e-5, atol=1e-7)
        assert not np.allclose(np.stack(g), np.stack(other))  # the two estimators differ on these samples
    assert int(state[0]) == 4
    with pytest.raises(ValueError, match="steps >= 0"):
        estimators.get("switch", steps=-1)
    with pytest.raises(ValueError, match="cannot switch to or from 'fivo'"):
        estimators.get("switch", then="fivo")

"""Tests for ocr_jax.objectives: closed-form expected gradients, identities, invariants, numerics, errors.

Unbiasedness is checked against exact gradients computed by enumerating a small discrete latent space; the tolerance
is 4 standard errors of the Monte-Carlo mean (plus a float32 floor), with fixed seeds.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import objectives as obj

C = 3  # categories of the discrete toy latent
X = 1.3  # the fixed observation
R = 20000  # repeated estimates per unbiasedness check


# ---------------------------------------------------------------------------------------------------------------
# discrete toy model: z ~ Cat(softmax(θ.logits)), x | z ~ N(θ.mu_z, 1); q_φ(z) = Cat(softmax(φ))

THETA = {"logits": jnp.array([0.2, -0.4, 0.1]), "mu": jnp.array([-1.0, 0.5, 2.0])}
PHI = jnp.array([0.3, 0.1, -0.5])


def log_joint(theta, z):
    log_prior = jax.nn.log_softmax(theta["logits"])[z]
    return log_prior - 0.5 * (X - theta["mu"][z]) ** 2 - 0.5 * math.log(2 * math.pi)


def log_q(phi, z):
    return jax.nn.log_softmax(phi)[z]


def exact_iwae(theta, phi, k):
    """E_{z_1:K ~ q}[log (1/K) Σ w_k] by enumerating all C^K particle sets."""
    zs = jnp.array(list(itertools.product(range(C), repeat=k)))  # [C^K, K]
    log_w = log_joint(theta, zs) - log_q(phi, zs)
    log_prob = jnp.sum(log_q(phi, zs), axis=-1)
    return jnp.sum(jnp.exp(log_prob) * obj.log_mean_exp(log_w))


def exact_grads(fn):
    return jax.grad(fn, argnums=(0, 1))(THETA, PHI)


def sample_inputs(key, shape):
    z = jax.random.categorical(key, PHI, shape=shape)
    return z


def mc_grads(loss_fn, num_particles, *, group="both", key=jax.random.PRNGKey(0), num_repeats=R):
    """Per-repeat gradient estimates ``(dθ, dφ)`` of a surrogate, vmapped over R keys (one datapoint each)."""

    def one(key):
        z = sample_inputs(key, (num_particles,))

        def theta_loss(theta, phi):
            return loss_fn(log_joint(theta, z), log_q(phi, z)).theta

        def phi_loss(theta, phi):
            return loss_fn(log_joint(theta, z), log_q(phi, z)).phi

        g_theta = jax.grad(theta_loss, argnums=0)(THETA, PHI)
        g_phi = jax.grad(phi_loss, argnums=1)(THETA, PHI)
        return g_theta, g_phi

    return jax.jit(jax.vmap(one))(jax.random.split(key, num_repeats))


def assert_unbiased(samples, exact, name):
    """Mean of R samples within 4 standard errors of the exact value, per component."""
    for path, s, e in zip(
        jax.tree_util.tree_flatten_with_path(samples)[0], jax.tree.leaves(samples), jax.tree.leaves(exact)
    ):
        mean = np.mean(np.asarray(s), axis=0)
        se = np.std(np.asarray(s), axis=0, ddof=1) / math.sqrt(s.shape[0])
        err = np.abs(mean - np.asarray(e))
        assert np.all(err <= 4 * se + 1e-5), f"{name} {path[0]}: mean {mean} vs exact {e} (se {se})"


def neg(tree):
    return jax.tree.map(lambda x: -x, tree)


# Each case: (name, surrogate on (log_p, log_q_score) [K], particles used, exact objective for θ, exact for φ)
UNBIASED_CASES = [
    (
        "elbo",
        lambda lp, lq: obj.elbo(lp, None, lq),
        3,
        lambda t, p: exact_iwae(t, p, 1),
        lambda t, p: exact_iwae(t, p, 1),
    ),
    (
        "iwae",
        lambda lp, lq: obj.iwae(lp, None, lq),
        3,
        lambda t, p: exact_iwae(t, p, 3),
        lambda t, p: exact_iwae(t, p, 3),
    ),
    (
        "miwae(2,2)",
        lambda lp, lq: obj.miwae(lp, None, lq, num_repeats=2),
        4,
        lambda t, p: exact_iwae(t, p, 2),
        lambda t, p: exact_iwae(t, p, 2),
    ),
    (
        "ciwae(0.3)",
        lambda lp, lq: obj.ciwae(lp, None, lq, beta=0.3),
        3,
        lambda t, p: 0.3 * exact_iwae(t, p, 1) + 0.7 * exact_iwae(t, p, 3),
        lambda t, p: 0.3 * exact_iwae(t, p, 1) + 0.7 * exact_iwae(t, p, 3),
    ),
    (
        "piwae(2,2)",
        lambda lp, lq: obj.piwae(lp, None, lq, num_repeats=2),
        4,
        lambda t, p: exact_iwae(t, p, 4),
        lambda t, p: exact_iwae(t, p, 2),
    ),
    (
        "miwae(2,2) leave-one-out",
        lambda lp, lq: obj.miwae(lp, None, lq, num_repeats=2, score_baseline="leave_one_out"),
        4,
        lambda t, p: exact_iwae(t, p, 2),
        lambda t, p: exact_iwae(t, p, 2),
    ),
    (
        "ciwae(0.3) leave-one-out",
        lambda lp, lq: obj.ciwae(lp, None, lq, beta=0.3, score_baseline="leave_one_out"),
        3,
        lambda t, p: 0.3 * exact_iwae(t, p, 1) + 0.7 * exact_iwae(t, p, 3),
        lambda t, p: 0.3 * exact_iwae(t, p, 1) + 0.7 * exact_iwae(t, p, 3),
    ),
    (
        "piwae(4,1) leave-one-out",
        lambda lp, lq: obj.piwae(lp, None, lq, num_repeats=4, score_baseline="leave_one_out"),
        4,
        lambda t, p: exact_iwae(t, p, 4),
        lambda t, p: exact_iwae(t, p, 1),
    ),
    (
        "reinforce b=0",
        lambda lp, lq: obj.reinforce(lp, None, lq),
        3,
        lambda t, p: exact_iwae(t, p, 3),
        lambda t, p: exact_iwae(t, p, 3),
    ),
    (
        "reinforce b=-2",
        lambda lp, lq: obj.reinforce(lp, None, lq, baseline=-2.0),
        3,
        lambda t, p: exact_iwae(t, p, 3),
        lambda t, p: exact_iwae(t, p, 3),
    ),
    (
        "nvil",
        lambda lp, lq: obj.nvil(
            lp, None, lq, jnp.asarray(-0.7), obj.NVILState(jnp.asarray(-1.5), jnp.asarray(0.8), jnp.asarray(3))
        )[0],
        3,
        lambda t, p: exact_iwae(t, p, 3),
        lambda t, p: exact_iwae(t, p, 3),
    ),
    (
        "vimco",
        lambda lp, lq: obj.vimco(lp, None, lq),
        3,
        lambda t, p: exact_iwae(t, p, 3),
        lambda t, p: exact_iwae(t, p, 3),
    ),
    ("rws wake-theta", lambda lp, lq: obj.rws(lp, lq), 3, lambda t, p: exact_iwae(t, p, 3), None),
]


@pytest.mark.parametrize("name,loss_fn,k,exact_theta,exact_phi", UNBIASED_CASES, ids=[c[0] for c in UNBIASED_CASES])
def test_unbiased_against_enumeration(name, loss_fn, k, exact_theta, exact_phi):
    g_theta, g_phi = mc_grads(loss_fn, k)
    # Surrogates are losses: their gradients estimate −∇ objective.
    assert_unbiased(g_theta, neg(jax.grad(exact_theta, argnums=0)(THETA, PHI)), name + " theta")
    if exact_phi is not None:
        assert_unbiased(g_phi, neg(jax.grad(exact_phi, argnums=1)(THETA, PHI)), name + " phi")


def test_vimco_has_lower_variance_than_reinforce():
    _, g_r = mc_grads(lambda lp, lq: obj.reinforce(lp, None, lq), 5, num_repeats=4000)
    _, g_v = mc_grads(lambda lp, lq: obj.vimco(lp, None, lq), 5, num_repeats=4000)
    assert np.all(np.std(g_v, axis=0) < np.std(g_r, axis=0))


def test_wake_phi_is_consistent_self_normalised_estimator():
    """Wake-φ's expectation approaches −∇_φ KL(p(z|x) ‖ q) = −(p(z|x) − q) as K grows (thesis Eq. 8.6–8.7)."""
    log_post = jax.nn.log_softmax(jax.vmap(lambda z: log_joint(THETA, z))(jnp.arange(C)))
    target = jnp.exp(log_post) - jax.nn.softmax(PHI)  # ∇_φ of −E_post[log q] w.r.t. logits φ, negated loss sign
    _, g_phi = mc_grads(lambda lp, lq: obj.rws(lp, lq), 200, num_repeats=2000)
    assert_unbiased(g_phi, -target, "wake-phi K=200")  # the bias is O(1/K), below 4 SE here
    _, g_phi2 = mc_grads(lambda lp, lq: obj.rws(lp, lq), 2, num_repeats=20000)
    assert np.max(np.abs(np.mean(g_phi2, 0) + target)) > 0.02  # K = 2 is visibly biased


# ---------------------------------------------------------------------------------------------------------------
# identities on the same samples


def _random_inputs(key, shape):
    k1, k2, k3 = jax.random.split(key, 3)
    return jax.random.normal(k1, shape) * 3.0, jax.random.normal(k2, shape), jax.random.normal(k3, shape)


def _grads(fn, field, *args):
    return jax.grad(lambda a: getattr(fn(*a), field), argnums=0)(args)


def test_identities():
    args = _random_inputs(jax.random.PRNGKey(1), (5, 8))
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for field in ("theta", "phi"):
        # MIWAE(1, K) = IWAE(K)
        close(_grads(lambda *a: obj.miwae(*a, num_repeats=1), field, *args), _grads(obj.iwae, field, *args))
        # CIWAE(0) = IWAE, CIWAE(1) = ELBO
        close(_grads(lambda *a: obj.ciwae(*a, beta=0.0), field, *args), _grads(obj.iwae, field, *args))
        close(_grads(lambda *a: obj.ciwae(*a, beta=1.0), field, *args), _grads(obj.elbo, field, *args))
        # MIWAE(M, 1) = ELBO with M samples
        close(_grads(lambda *a: obj.miwae(*a, num_repeats=8), field, *args), _grads(obj.elbo, field, *args))
        # with the leave-one-out baselines: CIWAE(0) = VIMCO, CIWAE(1) = MIWAE(K, 1) with its leave-one-out baseline
        loo = dict(score_baseline="leave_one_out")
        close(_grads(lambda *a: obj.ciwae(*a, beta=0.0, **loo), field, *args), _grads(obj.vimco, field, *args))
        close(
            _grads(lambda *a: obj.ciwae(*a, beta=1.0, **loo), field, *args),
            _grads(lambda *a: obj.miwae(*a, num_repeats=8, **loo), field, *args),
        )
    # PIWAE θ-grad = IWAE(M·L) θ-grad; PIWAE φ-grad = MIWAE(M, L) φ-grad
    close(_grads(lambda *a: obj.piwae(*a, num_repeats=2), "theta", *args), _grads(obj.iwae, "theta", *args))
    close(
        _grads(lambda *a: obj.piwae(*a, num_repeats=2), "phi", *args),
        _grads(lambda *a: obj.miwae(*a, num_repeats=2), "phi", *args),
    )
    assert not np.allclose(
        _grads(lambda *a: obj.piwae(*a, num_repeats=2), "phi", *args)[0], _grads(obj.iwae, "phi", *args)[0]
    )
    # MIWAE splits repeat-major: [M·K] -> [M, K], normalising over K within each repeat.
    lp = args[0]
    np.testing.assert_allclose(
        obj.miwae(lp, num_repeats=2).bound, jnp.mean(obj.log_mean_exp(lp.reshape(5, 2, 4))), rtol=1e-6
    )
    # without score-function latents too
    lp, lqr = args[0], args[1]
    close(jax.grad(lambda a: obj.ciwae(a, lqr, beta=1.0).phi)(lp), jax.grad(lambda a: obj.elbo(a, lqr).phi)(lp))
    # bounds: ELBO ≤ CIWAE ≤ IWAE
    b = [obj.elbo(*args).bound, obj.ciwae(*args, beta=0.5).bound, obj.iwae(*args).bound]
    assert b[0] <= b[1] <= b[2]


def test_rws_wake_theta_equals_iwae_theta_grad():
    """On the discrete toy, wake-θ's θ-gradient equals IWAE's (sample by sample)."""
    z = sample_inputs(jax.random.PRNGKey(2), (4, 6))
    g_rws = jax.grad(lambda t: obj.rws(log_joint(t, z), log_q(PHI, z)).theta)(THETA)
    g_iwae = jax.grad(lambda t: obj.iwae(log_joint(t, z), None, log_q(PHI, z)).theta)(THETA)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_rws, g_iwae)
    # and its θ-loss carries no φ-gradient (proposal stopped)
    g_phi = jax.grad(lambda p: obj.rws(log_joint(THETA, z), log_q(p, z)).theta)(PHI)
    np.testing.assert_array_equal(g_phi, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# VIMCO


def test_vimco_leave_one_out_matches_definition_and_excludes_own_particle():
    log_w = jax.random.normal(jax.random.PRNGKey(3), (2, 5)) * 2.0
    loo = obj.vimco_leave_one_out(log_w)
    k = 5
    for b in range(2):
        for i in range(k):
            others = np.delete(np.asarray(log_w[b]), i)
            geo = others.mean()
            expected = math.log((math.exp(geo) + np.exp(others).sum()) / k)  # Eq. 8.3, −log K included
            np.testing.assert_allclose(loo[b, i], expected, rtol=1e-5)
    # perturbing log w_k leaves Υ_{−k} unchanged and changes every other Υ_{−j}
    jac = jax.jacfwd(obj.vimco_leave_one_out)(log_w[0])
    np.testing.assert_array_equal(np.diag(jac), 0.0)
    assert np.all(np.abs(jac[~np.eye(k, dtype=bool)]) > 1e-4)
    perturbed = log_w.at[0, 2].add(7.0)
    np.testing.assert_allclose(obj.vimco_leave_one_out(perturbed)[0, 2], loo[0, 2], rtol=1e-6)


def test_vimco_signal_uses_log_z_not_log_w():
    log_w = jnp.array([[0.1, -2.0, 1.5]])
    out = obj.vimco(log_w, None, jnp.zeros_like(log_w))
    expected = obj.log_mean_exp(log_w)[..., None] - obj.vimco_leave_one_out(log_w)
    np.testing.assert_allclose(out.aux["signals"], expected, rtol=1e-6)
    # The φ-gradient w.r.t. log q_score_k is −signal_k/B plus ∇ of log Ẑ (which is −w̃_k): check exactly.
    g = jax.grad(lambda lq: obj.vimco(log_w + 0.0, None, lq).phi)(jnp.zeros_like(log_w))
    w_tilde = jax.nn.softmax(log_w)
    np.testing.assert_allclose(g, -(expected - w_tilde), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# NVIL


def test_nvil_baseline_receives_gradients_and_learns():
    """A linear baseline b_ψ(x) = a·x + c regresses the learning signal; its loss falls."""
    key = jax.random.PRNGKey(4)
    xs = jax.random.normal(key, (64,))
    # learning signal depends on x: log p = 3x + noise
    noise = jax.random.normal(jax.random.PRNGKey(5), (64, 4)) * 0.1
    log_p = 3.0 * xs[:, None] + noise
    log_q_score = jnp.zeros((64, 4))

    def loss(psi, state):
        s, new_state = obj.nvil(log_p, None, log_q_score, psi["a"] * xs + psi["c"], state)
        return s.baseline, new_state

    psi = {"a": jnp.zeros(()), "c": jnp.zeros(())}
    state = obj.nvil_init()
    losses = []
    for _ in range(200):
        (value, new_state), g = jax.value_and_grad(loss, has_aux=True)(psi, state)
        assert all(np.abs(v) > 0 for v in jax.tree.leaves(g)) or losses
        psi = jax.tree.map(lambda p, gg: p - 0.1 * gg, psi, g)
        state = new_state
        losses.append(float(value))
    assert losses[-1] < 0.05 * losses[0]
    np.testing.assert_allclose(psi["a"], 3.0, atol=0.1)
    # the running mean tracks the signal's mean; the normalisation floor is 1
    assert abs(float(state.mean) - float(jnp.mean(obj.log_mean_exp(log_p)))) < 0.1


def test_nvil_normalises_score_term_by_running_std():
    """Term ① is divided by max(1, σ̂): with σ̂ = 2 its gradient w.r.t. log q_score halves; ∇ log Ẑ is unchanged."""
    log_p, _, lq = _random_inputs(jax.random.PRNGKey(15), (3, 4))

    def g(var):
        state = obj.NVILState(jnp.asarray(0.5), jnp.asarray(var), jnp.asarray(1))
        return jax.grad(lambda l: obj.nvil(log_p, None, l, jnp.zeros(3), state)[0].phi)(lq)

    w_tilde_term = jax.grad(
        lambda l: obj.iwae(log_p, None, jax.lax.stop_gradient(lq) + l - jax.lax.stop_gradient(l)).phi
    )(lq)
    w_tilde_term = jax.nn.softmax(log_p - lq) / 3.0  # −∇ log Ẑ w.r.t. log q_score, averaged over the batch of 3
    np.testing.assert_allclose(g(4.0) - w_tilde_term, 0.5 * (g(0.25) - w_tilde_term), rtol=1e-5, atol=1e-6)


def test_nvil_baseline_stopped_in_phi_surrogate():
    log_p, _, lq = _random_inputs(jax.random.PRNGKey(6), (3, 4))
    g = jax.grad(lambda b: obj.nvil(log_p, None, lq, b, obj.nvil_init())[0].phi)(jnp.zeros(3))
    np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# per-step (sequential) score-function signals

S = 3  # steps of the sequential binary toy


def seq_terms(theta, phi, z):
    """Per-step log p(z^i | z^{<i}) − log q(z^i | z^{<i}), the likelihood, and log q per step. z: [..., S] in {0,1}."""
    prev = jnp.concatenate([jnp.zeros(z.shape[:-1] + (1,)), jnp.cumsum(z, -1)[..., :-1]], -1)  # Σ z^{<i}

    def log_bern(logit, v):
        return v * jax.nn.log_sigmoid(logit) + (1 - v) * jax.nn.log_sigmoid(-logit)

    log_prior = log_bern(theta["a"] + theta["b"] * prev, z)
    log_q_steps = log_bern(phi["a"] + phi["b"] * prev, z)
    log_lik = -0.5 * (X - jnp.sum(theta["w"] * z, -1)) ** 2
    return log_prior - log_q_steps, log_q_steps, log_lik, prev


SEQ_THETA = {"a": jnp.array([0.5, -0.3, 0.2]), "b": jnp.array(0.4), "w": jnp.array([0.8, 1.1, -0.6])}
SEQ_PHI = {"a": jnp.array([-0.2, 0.6, 0.1]), "b": jnp.array(-0.5)}


def seq_exact_elbo(theta, phi):
    zs = jnp.array(list(itertools.product((0.0, 1.0), repeat=S)))
    terms, log_q_steps, log_lik, _ = seq_terms(theta, phi, zs)
    log_w = jnp.sum(terms, -1) + log_lik
    return jnp.sum(jnp.exp(jnp.sum(log_q_steps, -1)) * log_w)


def seq_sample(key, phi, shape):
    z = []
    total = jnp.zeros(shape)
    for i in range(S):
        key, sub = jax.random.split(key)
        zi = jax.random.bernoulli(sub, jax.nn.sigmoid(phi["a"][i] + phi["b"] * total)).astype(jnp.float32)
        z.append(zi)
        total = total + zi
    return jax.lax.stop_gradient(jnp.stack(z, -1))


def seq_mc_grads(baseline_fn, num_repeats=R):
    def one(key):
        z = seq_sample(key, SEQ_PHI, (2,))  # 2 particles

        def loss(theta, phi):
            terms, log_q_steps, log_lik, prev = seq_terms(theta, phi, z)
            s, _ = obj.nvil_per_step(
                terms,
                log_q_steps,
                baseline_fn(prev, z),
                obj.NVILState(jnp.array([0.3, -0.2, 0.1]), jnp.array([1.0, 0.5, 0.9]), jnp.asarray(5)),
                log_likelihood=log_lik,
            )
            return s.phi

        return jax.grad(loss, argnums=(0, 1))(SEQ_THETA, SEQ_PHI)

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(7), num_repeats))


def test_nvil_per_step_unbiased_with_causal_baseline():
    exact = neg(jax.grad(seq_exact_elbo, argnums=(0, 1))(SEQ_THETA, SEQ_PHI))
    # baseline for step i depends on z^{<i} only: unbiased
    g = seq_mc_grads(lambda prev, z: 0.7 - 1.3 * prev)
    assert_unbiased(g, exact, "nvil_per_step")


def test_nvil_per_step_baseline_that_sees_own_step_is_biased():
    """Negative control: the test above can detect a baseline that depends on z^i."""
    exact = neg(jax.grad(seq_exact_elbo, argnums=1)(SEQ_THETA, SEQ_PHI))
    g = seq_mc_grads(lambda prev, z: 3.0 * z)[1]
    mean = np.mean(g["a"], 0)
    se = np.std(g["a"], 0, ddof=1) / math.sqrt(R)
    assert np.max(np.abs(mean - exact["a"]) / se) > 10


def test_reward_to_go_covers_every_downstream_term():
    terms = jax.random.normal(jax.random.PRNGKey(8), (2, 4))
    log_lik = jnp.array([0.5, -1.0])
    signals = obj.reward_to_go(terms, log_lik)
    jac = jax.jacfwd(lambda t: obj.reward_to_go(t, log_lik))(terms)[0, :, 0, :]  # [step i, term j]
    np.testing.assert_array_equal(jac, np.triu(np.ones((4, 4))))  # signal_i depends on term_j iff j ≥ i
    jac_lik = jax.jacfwd(lambda l: obj.reward_to_go(terms, l))(log_lik)[0, :, 0]
    np.testing.assert_array_equal(jac_lik, 1.0)  # the likelihood is downstream of every step
    np.testing.assert_allclose(signals[:, 0], jnp.sum(terms, -1) + log_lik, rtol=1e-6)


def test_nvil_per_step_baseline_index_and_gradients():
    """Step i's signal uses baselines[..., i] only, the baselines are stopped in φ's loss, and they learn."""
    terms, lq, _ = _random_inputs(jax.random.PRNGKey(9), (4, 2, S))
    state = obj.nvil_init((S,))
    f = lambda b: obj.nvil_per_step(terms, lq, b, state)[0]
    g_phi = jax.grad(lambda b: f(b).phi)(jnp.zeros((4, 2, S)))
    np.testing.assert_array_equal(g_phi, 0.0)
    g_base = jax.grad(lambda b: f(b).baseline)(jnp.zeros((4, 2, S)))
    assert np.all(np.abs(g_base) > 0)
    # φ-gradient w.r.t. log q of step i is −signal_i/B: changing baseline i changes only that entry
    g0 = jax.grad(lambda l: obj.nvil_per_step(terms, l, jnp.zeros((4, 2, S)), state)[0].phi)(lq)
    b = jnp.zeros((4, 2, S)).at[..., 1].set(1.0)
    g1 = jax.grad(lambda l: obj.nvil_per_step(terms, l, b, state)[0].phi)(lq)
    changed = np.any(np.abs(np.asarray(g1 - g0)) > 1e-7, axis=(0, 1))
    np.testing.assert_array_equal(changed, [False, True, False])


# ---------------------------------------------------------------------------------------------------------------
# reparameterised estimators: Gaussian toy z ~ N(μ, 1), x | z ~ N(z, 1); q = N(a, s²), D = 2

XG = jnp.array([0.7, -1.2])


def gauss_inputs(mu, a, log_s, eps):
    z = a + jnp.exp(log_s) * eps
    log_p = -0.5 * jnp.sum((z - mu) ** 2 + (XG - z) ** 2, -1) - math.log(2 * math.pi) * 2

    def log_q_of(a_, log_s_):
        return jnp.sum(-0.5 * ((z - a_) / jnp.exp(log_s_)) ** 2 - log_s_ - 0.5 * math.log(2 * math.pi), -1)

    return log_p, log_q_of(a, log_s), log_q_of(jax.lax.stop_gradient(a), jax.lax.stop_gradient(log_s))


def test_elbo_reparam_matches_closed_form():
    mu, a, log_s = jnp.array([0.2, -0.1]), jnp.array([0.5, -0.4]), jnp.array([-0.3, 0.2])

    def exact(mu, a, log_s):
        s2 = jnp.exp(2 * log_s)
        e_log_p = -0.5 * jnp.sum((a - mu) ** 2 + s2 + (XG - a) ** 2 + s2) - math.log(2 * math.pi) * 2
        entropy = jnp.sum(log_s + 0.5 * math.log(2 * math.pi * math.e))
        return e_log_p + entropy

    eps = jax.random.normal(jax.random.PRNGKey(10), (R, 1, 2))
    g = jax.vmap(
        lambda e: jax.grad(lambda *p: obj.elbo(*gauss_inputs(*p, e)[:2]).phi, argnums=(0, 1, 2))(mu, a, log_s)
    )(eps)
    assert_unbiased(g, neg(jax.grad(exact, argnums=(0, 1, 2))(mu, a, log_s)), "elbo reparam")


def test_dreg_unbiased_for_iwae_and_keeps_theta_grads():
    mu, a, log_s = jnp.array([0.2, -0.1]), jnp.array([0.5, -0.4]), jnp.array([-0.3, 0.2])
    eps = jax.random.normal(jax.random.PRNGKey(11), (R, 8, 2))

    def both(e):
        g_iwae = jax.grad(lambda *p: obj.iwae(*gauss_inputs(*p, e)[:2]).phi, argnums=(1, 2))(mu, a, log_s)
        g_dreg = jax.grad(lambda *p: obj.dreg(*gauss_inputs(*p, e)).phi, argnums=(1, 2))(mu, a, log_s)
        t_iwae = jax.grad(lambda m: obj.iwae(*gauss_inputs(m, a, log_s, e)[:2]).theta)(mu)
        t_dreg = jax.grad(lambda m: obj.dreg(*gauss_inputs(m, a, log_s, e)).theta)(mu)
        return g_iwae, g_dreg, t_iwae, t_dreg

    g_iwae, g_dreg, t_iwae, t_dreg = jax.jit(jax.vmap(both))(eps)
    np.testing.assert_allclose(t_iwae, t_dreg, rtol=1e-6, atol=1e-7)  # θ-gradients unchanged, sample by sample
    diff = jax.tree.map(lambda x, y: x - y, g_dreg, g_iwae)  # same samples: difference has mean zero
    assert_unbiased(diff, jax.tree.map(jnp.zeros_like, (a, log_s)), "dreg - iwae")
    assert all(np.all(np.std(d, 0) < np.std(i, 0)) for d, i in zip(g_dreg, g_iwae))  # and lower variance here


# ---------------------------------------------------------------------------------------------------------------
# δ-WW defensive proposal


def test_defensive_sample_density_at_drawn_sample():
    logits = jnp.array([[5.0, -5.0, -5.0, 0.0]])
    delta = 0.2
    z, log_qd = obj.defensive_categorical_sample(jax.random.PRNGKey(12), logits, delta, (40000,))
    assert z.shape == (40000, 1)
    probs = (1 - delta) * jax.nn.softmax(logits[0]) + delta / 4
    np.testing.assert_allclose(log_qd[:, 0], jnp.log(probs)[z[:, 0]], rtol=1e-5)
    freq = np.bincount(np.asarray(z[:, 0]), minlength=4) / 40000
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs * (1 - probs) / 40000).max())
    assert freq[1] > 0.04  # unlikely categories are still proposed (q alone gives ~4e-5)
    # δ-WW weights use q_δ; the gradient is Σ w̃ ∇ log q (q itself, not q_δ)
    lp = jnp.zeros((1, 3))
    zz = jnp.array([[1, 0, 3]])
    log_q_z = jax.nn.log_softmax(logits)[0][zz]
    s = obj.rws(lp, log_q_z, obj.defensive_categorical_log_prob(logits, delta, zz))
    w = jax.nn.softmax(-jnp.log(probs)[zz])
    np.testing.assert_allclose(s.phi, -jnp.sum(w * log_q_z), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# numerics and errors


@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_large_log_weights(shift):
    lp, lqr, lqs = _random_inputs(jax.random.PRNGKey(13), (3, 6))
    state = obj.nvil_init()
    fns = {
        "iwae": lambda p, r, s: obj.iwae(p, r, s),
        "ciwae": lambda p, r, s: obj.ciwae(p, r, s, beta=0.5),
        "piwae": lambda p, r, s: obj.piwae(p, r, s, num_repeats=2),
        "piwae_loo": lambda p, r, s: obj.piwae(p, r, s, num_repeats=3, score_baseline="leave_one_out"),
        "vimco": lambda p, r, s: obj.vimco(p, r, s),
        "rws": lambda p, r, s: obj.rws(p, r + s),
    }
    for name, fn in fns.items():
        ref = jax.grad(lambda a: fn(*a).theta)((lp, lqr, lqs))
        big = jax.grad(lambda a: fn(*a).theta)((lp + shift, lqr, lqs))
        # Raw REINFORCE terms (log Ẑ ∇ log q) are not shift invariant; VIMCO's and wake-sleep's are.
        n_invariant = 3 if name in ("vimco", "rws") else 2
        for r_, b_ in zip(ref[:n_invariant], big[:n_invariant]):
            assert np.all(np.isfinite(b_)), name
            np.testing.assert_allclose(b_, r_, atol=1e-3, err_msg=name)  # gradients are shift invariant
        assert np.isfinite(fn(lp + shift, lqr, lqs).bound)
        np.testing.assert_allclose(fn(lp + shift, lqr, lqs).bound, fn(lp, lqr, lqs).bound + shift, rtol=1e-6)
    np.testing.assert_allclose(obj.vimco_leave_one_out(lp + shift) - shift, obj.vimco_leave_one_out(lp), atol=2e-3)
    s, _ = obj.nvil(lp + shift, lqr, lqs, jnp.zeros(3), state)
    assert np.isfinite(s.phi) and np.isfinite(s.baseline)


def test_bad_inputs_raise_clear_errors():
    lp = jnp.zeros((4, 6))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        obj.iwae(lp, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2 particles"):
        obj.vimco(jnp.zeros((4, 1)), None, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="num_repeats=4"):
        obj.piwae(lp, num_repeats=4)
    with pytest.raises(ValueError, match="num_repeats=5"):
        obj.miwae(lp, num_repeats=5)
    with pytest.raises(ValueError, match="score_baseline must be"):
        obj.miwae(lp, None, lp, num_repeats=2, score_baseline="mean")
    with pytest.raises(ValueError, match="num_repeats >= 2"):
        obj.piwae(lp, None, lp, num_repeats=1, score_baseline="leave_one_out")
    with pytest.raises(ValueError, match="baseline has shape"):
        obj.nvil(lp, None, lp, jnp.zeros(3), obj.nvil_init())
    with pytest.raises(ValueError, match="beta"):
        obj.ciwae(lp, beta=1.5)
    with pytest.raises(ValueError, match="log_q_score"):
        obj.reinforce(lp)
    with pytest.raises(ValueError, match="steps"):
        obj.nvil_per_step(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)), obj.nvil_init())
    with pytest.raises(ValueError, match="shape"):
        obj.nvil_per_step(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 3)), jnp.zeros((2, 3, 4)), obj.nvil_init((4,)))


def test_estimators_jit():
    lp, lqr, lqs = _random_inputs(jax.random.PRNGKey(14), (3, 4))
    out = jax.jit(lambda a, b, c: obj.vimco(a, b, c))(lp, lqr, lqs)
    np.testing.assert_allclose(out.theta, obj.vimco(lp, lqr, lqs).theta, rtol=1e-6)
    s, st = jax.jit(obj.nvil)(lp, lqr, lqs, jnp.zeros(3), obj.nvil_init())
    assert int(st.count) == 1


def test_vimco_leave_one_out_is_the_quadratic_definition_in_linear_memory():
    """The O(K) prefix/suffix form equals the [K, K] definition (float64, extreme weights included), and the jitted
    baseline at K = 1000 allocates no [B, K, K] array (memory grows linearly in K)."""

    def quadratic(log_w):
        k = log_w.shape[-1]
        geo = (jnp.sum(log_w, -1, keepdims=True) - log_w) / (k - 1)
        replaced = jnp.where(jnp.eye(k, dtype=bool), geo[..., :, None], log_w[..., None, :])
        return jax.nn.logsumexp(replaced, axis=-1) - np.log(k)

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for k in (2, 3, 7, 64):
            log_w = jnp.asarray(rng.normal(scale=30.0, size=(5, k)))
            log_w = log_w.at[0, 0].set(500.0)  # one particle dominates
            np.testing.assert_allclose(obj.vimco_leave_one_out(log_w), quadratic(log_w), rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(
                obj.log_sum_exp_of_others(log_w),
                [[jax.nn.logsumexp(np.delete(np.asarray(r), i)) for i in range(k)] for r in log_w],
                rtol=1e-12,
                atol=1e-9,
            )
    lowered = jax.jit(jax.grad(lambda lw: jnp.sum(obj.vimco_leave_one_out(lw)))).lower(jnp.zeros((256, 1000)))
    text = lowered.as_text()
    assert "256x1000x1000" not in text and "1000x1000" not in text

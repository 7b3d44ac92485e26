"""Variational bounds and gradient estimators as surrogate losses per parameter group.

Every estimator is a small pure function of per-particle log-probabilities and returns a :class:`Surrogates`
tuple of scalar *losses* (to be minimised):

* ``theta``: ``jax.grad(theta)`` w.r.t. the generative parameters θ is the estimator of ``−∇_θ objective``;
* ``phi``: ``jax.grad(phi)`` w.r.t. the inference parameters φ is the estimator of ``−∇_φ objective``;
* ``baseline``: regression loss for a learned baseline's own parameters (NVIL), 0 elsewhere;
* ``bound``: the value of the bound, stop-gradiented, for logging;
* ``aux``: a dict of extra stop-gradiented diagnostics.

The surrogates are built with ``stop_gradient`` so that a single forward pass serves all groups; PIWAE and RWS give
θ and φ different targets, so the two losses differ. A training step differentiates each loss only w.r.t. its own
parameter group (see ``docs/DESIGN.md``, ``Task.loss``).

Inputs (named axes; ``...`` are leading axes, e.g. ``batch``, averaged by every estimator):

* ``log_p`` ``[..., particles]``: log p_θ(x, z_k).
* ``log_q_reparam`` ``[..., particles]``: log q_φ of the reparameterised latents (differentiable through the
  sample path and the density parameters), or ``None``.
* ``log_q_score`` ``[..., particles]``: log q_φ of the score-function (non-reparameterised, e.g. discrete) latents,
  computed at samples that carry no gradient; its gradient w.r.t. φ is the score ∇_φ log q. ``None`` if there are
  none. When given, the IWAE-family estimators add the raw REINFORCE term (thesis Eq. 8.2) so that they stay
  unbiased (NumPyro's IWAE silently drops it).

The log-weight is ``log w_k = log_p − log_q_reparam − log_q_score`` (thesis Eq. 8.1). All reductions over particles
use ``logsumexp``, so log-weights of magnitude 1e4 do not overflow.

Equation numbers refer to the thesis (seed ``000_*``): chapter 7 (Rainforth et al. 2018, "Tighter variational
bounds are not necessarily better") and chapter 8 (Le et al. 2019, "Revisiting reweighted wake-sleep").
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ocr_jax import distributions

Array = jax.Array
sg = jax.lax.stop_gradient

__all__ = [
    "Surrogates",
    "NVILState",
    "log_weights",
    "log_mean_exp",
    "elbo",
    "iwae",
    "miwae",
    "ciwae",
    "piwae",
    "reinforce",
    "nvil_init",
    "nvil",
    "nvil_per_step",
    "reward_to_go",
    "vimco",
    "vimco_leave_one_out",
    "rws",
    "rws_wake_theta",
    "rws_wake_phi",
    "rws_sleep_phi",
    "defensive_categorical_sample",
    "defensive_categorical_log_prob",
    "dreg",
]


class Surrogates(NamedTuple):
    """Scalar surrogate losses per parameter group; see the module docstring."""

    theta: Array
    phi: Array
    bound: Array
    baseline: Array | float = 0.0
    aux: dict[str, Any] = {}


class NVILState(NamedTuple):
    """Running statistics of the NVIL learning signal (Mnih & Gregor 2014): an explicit pytree, passed in and out.

    ``mean``/``var`` have the shape of one learning signal per step (``[]`` for whole-particle-set signals,
    ``[steps]`` for :func:`nvil_per_step`); ``count`` counts updates (for bias-corrected first updates).
    """

    mean: Array
    var: Array
    count: Array


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _shape_error(name: str, shape, expected) -> ValueError:
    return ValueError(f"{name} has shape {tuple(shape)}, expected {expected}")


def _check_inputs(log_p, *others, names=("log_q_reparam", "log_q_score"), min_particles: int = 1, estimator: str = ""):
    log_p = jnp.asarray(log_p)
    if log_p.ndim < 1:
        raise ValueError(f"log_p must have a particle axis [..., particles]; got shape {tuple(log_p.shape)}")
    for name, a in zip(names, others):
        if a is not None and tuple(jnp.shape(a)) != tuple(log_p.shape):
            raise ValueError(
                f"{name} has shape {tuple(jnp.shape(a))} but log_p has shape {tuple(log_p.shape)}; "
                "all per-particle inputs must share the shape [..., particles]"
            )
    if log_p.shape[-1] < min_particles:
        plural = "s" if min_particles > 1 else ""
        raise ValueError(
            f"{estimator or 'this estimator'} needs at least {min_particles} particle{plural} on the last "
            f"axis (K >= {min_particles}); got shape {tuple(log_p.shape)}"
        )
    return log_p


def log_weights(log_p: Array, log_q_reparam: Array | None = None, log_q_score: Array | None = None) -> Array:
    """log w_k = log p(x, z_k) − log q(z_k | x) (thesis Eq. 8.1), ``[..., particles]``."""
    log_p = _check_inputs(log_p, log_q_reparam, log_q_score)
    log_w = log_p
    if log_q_reparam is not None:
        log_w = log_w - log_q_reparam
    if log_q_score is not None:
        log_w = log_w - log_q_score
    return log_w


def log_mean_exp(x: Array, axis: int = -1) -> Array:
    """log (1/K) Σ_k exp(x_k), stable for |x| ~ 1e4. K = ``x.shape[axis]`` must be >= 1."""
    if x.shape[axis] < 1:
        raise ValueError(f"log_mean_exp needs at least 1 particle (K >= 1) on axis {axis}; got shape {tuple(x.shape)}")
    return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _split(x: Array | None, num_groups: int, name: str) -> Array | None:
    """[..., G·L] -> [..., G, L]; ValueError when the particle axis is not a multiple of ``num_groups``."""
    if x is None:
        return None
    n = x.shape[-1]
    if num_groups < 1 or n % num_groups != 0:
        raise ValueError(
            f"{name} has {n} particles on its last axis (shape {tuple(x.shape)}), which is not "
            f"num_repeats={num_groups} times an integer number of particles per repeat"
        )
    return x.reshape(x.shape[:-1] + (num_groups, n // num_groups))


def _score_term(signal: Array, log_q_score: Array | None) -> Array:
    """Σ_k sg(signal_k) · log q(z_k): its φ-gradient is the score-function term ① of Eq. 8.2.

    ``signal`` is ``[...]`` (one signal for the whole particle set) or ``[..., particles]`` (one per particle).
    """
    if log_q_score is None:
        return jnp.zeros(())
    signal = sg(signal)
    if signal.ndim == log_q_score.ndim - 1:
        return signal * jnp.sum(log_q_score, axis=-1)
    return jnp.sum(signal * log_q_score, axis=-1)


def _one_target(value: Array, score: Array, **extra) -> Surrogates:
    """The surrogates of an estimator whose θ and φ follow one target: both losses are −mean(value + score), with
    ``value [...]`` the estimator's objective per example and ``score`` its score-function term (e.g.
    :func:`_score_term`; zero without score-function latents); ``bound`` is mean(value), stop-gradiented. ``extra``:
    the other :class:`Surrogates` fields (``baseline``, ``aux``)."""
    loss = -jnp.mean(value + score)
    return Surrogates(theta=loss, phi=loss, bound=sg(jnp.mean(value)), **extra)


def _check_score_baseline(score_baseline: str) -> None:
    """ValueError unless ``score_baseline`` is one that :func:`miwae` and :func:`ciwae` know."""
    if score_baseline not in ("none", "leave_one_out"):
        raise ValueError(f"score_baseline must be 'none' or 'leave_one_out'; got {score_baseline!r}")


# ----------------------------------------------------------------------------------------------------------------
# the IWAE family (thesis chapter 7)


def iwae(log_p: Array, log_q_reparam: Array | None = None, log_q_score: Array | None = None) -> Surrogates:
    """IWAE: objective E[log Ẑ_K], Ẑ_K = (1/K) Σ_k w_k (thesis Eq. 7.2 / 8.1); gradient Δ_{1,K} of Eq. 7.3.

    Inputs ``[..., particles]``; leading axes are averaged, so a leading ``repeats`` axis gives MIWAE (Eq. 7.3).
    With ``log_q_score`` the φ-loss adds the raw REINFORCE term log Ẑ_K ∇ log Q(z_{1:K}) (Eq. 8.2, no baseline).
    ``aux``: ``log_ess`` (Eq. 7.19).
    """
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    log_z = log_mean_exp(log_w)
    return _one_target(log_z, _score_term(log_z, log_q_score), aux={"log_ess": sg(jnp.mean(_log_ess(log_w)))})


def elbo(log_p: Array, log_q_reparam: Array | None = None, log_q_score: Array | None = None) -> Surrogates:
    """ELBO / VAE (thesis Eq. 7.1): mean over particles of log w_k, i.e. K independent single-sample ELBOs.

    ``[..., particles]``; with ``particles = M`` this is the VAE with M samples, MIWAE(M, 1). Score-function latents
    get the per-particle REINFORCE signal log w_k ∇ log q(z_k) (each sample is its own K = 1 bound).
    """
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    objective = jnp.mean(log_w + _per_particle_score(log_w, log_q_score), axis=-1)
    loss = -jnp.mean(objective)
    return Surrogates(theta=loss, phi=loss, bound=sg(jnp.mean(log_w)))


def _per_particle_score(signal: Array, log_q_score: Array | None) -> Array:
    if log_q_score is None:
        return jnp.zeros(())
    return sg(signal) * log_q_score


def miwae(
    log_p: Array,
    log_q_reparam: Array | None = None,
    log_q_score: Array | None = None,
    *,
    num_repeats: int,
    score_baseline: str = "none",
) -> Surrogates:
    """MIWAE(M, K): (1/M) Σ_m log Ẑ_K^{(m)} (thesis Eq. 7.3 with M > 1, K > 1); budget T = M·K.

    Inputs ``[..., M·K]``: the particle axis is split into ``[..., repeats=M, particles=K]`` (repeat-major); a
    ValueError names the shapes when it is not a multiple of M. MIWAE(1, K) = IWAE(K); MIWAE(M, 1) = ELBO with M
    samples. Normalisation is over K within each repeat, never over M.

    Score-function latents of repeat m get the learning signal log Ẑ_K^{(m)} (``score_baseline="none"``: raw
    REINFORCE, as :func:`iwae`) or, with ``score_baseline="leave_one_out"`` (M ≥ 2), log Ẑ_K^{(m)} minus the mean of
    the other repeats' log Ẑ_K^{(m')} — a baseline independent of repeat m's samples, so still unbiased (Kool et
    al. 2019's "REINFORCE samples with a baseline for free"; for K = 1 every particle is scored against the others
    by its own log-weight, the per-particle signal of the official SQAIR code).
    """
    _check_score_baseline(score_baseline)
    log_p = _check_inputs(log_p, log_q_reparam, log_q_score)
    parts = [
        _split(a, num_repeats, n)
        for a, n in ((log_p, "log_p"), (log_q_reparam, "log_q_reparam"), (log_q_score, "log_q_score"))
    ]
    if score_baseline == "none":
        return iwae(*parts)
    if num_repeats < 2:
        raise ValueError(f"score_baseline='leave_one_out' needs num_repeats >= 2 (to compare); got {num_repeats}")
    log_z = log_mean_exp(log_weights(*parts))  # [..., M]
    others = (jnp.sum(log_z, axis=-1, keepdims=True) - log_z) / (num_repeats - 1)
    return _one_target(log_z, _score_term(log_z - others, parts[2]))


def ciwae(
    log_p: Array,
    log_q_reparam: Array | None = None,
    log_q_score: Array | None = None,
    *,
    beta: float,
    score_baseline: str = "none",
) -> Surrogates:
    """CIWAE(β) = β·ELBO_VAE + (1 − β)·ELBO_IWAE on the same K weights (thesis Eq. 7.13, estimator Eq. 7.14).

    ``[..., particles]``. CIWAE(0) = IWAE(K), CIWAE(1) = ELBO with K samples. Score-function latents get the
    REINFORCE term Σ_k (β·(log w_k − b_k) / K + (1 − β)·(log Ẑ_K − c_k)) ∇ log q(z_k): with
    ``score_baseline="none"`` b_k = c_k = 0; with ``"leave_one_out"`` (K ≥ 2) b_k is the mean of the other particles'
    log-weights (as :func:`miwae`'s) and c_k VIMCO's Υ_{−k} (:func:`vimco_leave_one_out`). Both are independent of
    z_k, so the estimator stays unbiased; CIWAE(0) is then VIMCO and CIWAE(1) the ELBO with the leave-one-out
    baseline.
    """
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1]; got {beta}")
    _check_score_baseline(score_baseline)
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    log_z = log_mean_exp(log_w)
    value = beta * jnp.mean(log_w, axis=-1) + (1.0 - beta) * log_z
    elbo_signal, iwae_signal = log_w, log_z
    if score_baseline == "leave_one_out" and log_q_score is not None:
        k = log_w.shape[-1]
        if k < 2:
            raise ValueError(f"score_baseline='leave_one_out' needs at least 2 particles; got {k}")
        elbo_signal = log_w - (jnp.sum(log_w, axis=-1, keepdims=True) - log_w) / (k - 1)
        iwae_signal = log_z[..., None] - vimco_leave_one_out(log_w)
    # Score term: the ELBO part only needs particle k's own log w_k as its signal (the other particles' terms are
    # independent of z_k), which lowers variance and makes CIWAE(1) coincide with elbo() sample by sample.
    score = _score_term((1.0 - beta) * iwae_signal, log_q_score)
    if log_q_score is not None:
        score = score + jnp.mean(_per_particle_score(beta * elbo_signal, log_q_score), axis=-1)
    return _one_target(value, score)


def piwae(
    log_p: Array,
    log_q_reparam: Array | None = None,
    log_q_score: Array | None = None,
    *,
    num_repeats: int,
    score_baseline: str = "none",
) -> Surrogates:
    """PIWAE(M, L): θ follows IWAE with K = M·L, φ follows MIWAE(M, L), on the same M·L weights (thesis Eq. 7.15).

    Inputs ``[..., M·L]`` (split repeat-major into ``[..., M, L]`` for the φ target; ValueError if the particle
    axis is not a multiple of M). ``bound`` is the IWAE(M·L) value. ``score_baseline``: of the φ target's
    score-function term (:func:`miwae`); θ's target has no score-function term that reaches θ.
    """
    log_p = _check_inputs(log_p, log_q_reparam, log_q_score)
    theta_target = iwae(log_p, log_q_reparam, log_q_score)
    phi_target = miwae(log_p, log_q_reparam, log_q_score, num_repeats=num_repeats, score_baseline=score_baseline)
    return Surrogates(
        theta=theta_target.theta, phi=phi_target.phi, bound=theta_target.bound, aux={"miwae_bound": phi_target.bound}
    )


# ----------------------------------------------------------------------------------------------------------------
# score-function estimators with control variates (thesis chapter 8)


def reinforce(
    log_p: Array, log_q_reparam: Array | None = None, log_q_score: Array | None = None, *, baseline: Array | float = 0.0
) -> Surrogates:
    """REINFORCE for IWAE_K (thesis Eq. 8.2): (log Ẑ_K − b) ∇_φ log Q(z_{1:K} | x) + ∇ log Ẑ_K.

    ``[..., particles]``; ``baseline`` b (broadcastable to ``[...]``) must not depend on z; b = 0 is the raw
    estimator the studies compare against. Unbiased for any such b.
    """
    if log_q_score is None:
        raise ValueError("reinforce needs log_q_score (log q of the score-function latents)")
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    log_z = log_mean_exp(log_w)
    return _one_target(log_z, _score_term(log_z - baseline, log_q_score))


def nvil_init(shape: tuple[int, ...] = ()) -> NVILState:
    """Initial NVIL running statistics: mean 0, variance 1, one per learning signal (``shape``)."""
    return NVILState(mean=jnp.zeros(shape), var=jnp.ones(shape), count=jnp.zeros((), jnp.int32))


def _nvil_signal(signal: Array, baseline: Array, state: NVILState, decay: float, lead_ndim: int):
    """Centre, baseline-correct and normalise a learning signal; update the running statistics.

    signal, baseline: ``[lead..., *state.mean.shape]``. Statistics are averaged over the ``lead_ndim`` leading axes.
    Mnih & Gregor (2014): c = running mean of l, b_ψ(x) regresses l − c, and (l − c − b_ψ(x)) is divided by
    max(1, running std of l − c − b_ψ(x)).
    """
    axes = tuple(range(lead_ndim))
    signal = sg(signal)
    centred = signal - state.mean
    residual = centred - sg(baseline)
    # Bias-corrected exponential moving averages: the first update uses the batch statistics directly.
    first = state.count == 0
    batch_mean = jnp.mean(signal, axis=axes)
    new_mean = jnp.where(first, batch_mean, decay * state.mean + (1.0 - decay) * batch_mean)
    batch_var = jnp.mean(jnp.square(residual - jnp.mean(residual, axis=axes)), axis=axes)
    new_var = jnp.where(first, batch_var, decay * state.var + (1.0 - decay) * batch_var)
    normalised = residual / jnp.maximum(1.0, jnp.sqrt(state.var))
    baseline_loss = jnp.mean(jnp.square(sg(centred) - baseline))
    return normalised, baseline_loss, NVILState(new_mean, new_var, state.count + 1)


def nvil(
    log_p: Array,
    log_q_reparam: Array | None,
    log_q_score: Array,
    baseline: Array,
    state: NVILState,
    *,
    decay: float = 0.9,
) -> tuple[Surrogates, NVILState]:
    """NVIL for IWAE_K (Mnih & Gregor 2014; ESTIMATORS.md): Eq. 8.2 with term ① replaced by
    ((log Ẑ_K − c − b_ψ(x)) / max(1, σ̂)) ∇_φ log Q(z_{1:K} | x).

    Args:
      log_p, log_q_reparam, log_q_score: ``[..., particles]``.
      baseline: b_ψ(x) ``[...]``, the output of an input-dependent baseline network (it must not see z).
      state: :class:`NVILState` from :func:`nvil_init` (scalar statistics); the updated state is returned.
    Returns:
      ``(Surrogates, new_state)``; ``Surrogates.baseline`` is the regression loss mean (log Ẑ_K − c − b_ψ(x))²
      whose gradient w.r.t. ψ trains the baseline (its learning rate is its own optimiser setting).
    Normalisation uses the statistics of ``state`` from before this batch, so the centring keeps the estimator
    unbiased; dividing by max(1, σ̂) rescales term ① (an adaptive step size for the score part, as in Mnih & Gregor),
    so the expected gradient equals the IWAE gradient exactly only while σ̂ ≤ 1.
    """
    log_p = _check_inputs(log_p, log_q_reparam, log_q_score)
    if log_q_score is None:
        raise ValueError("nvil needs log_q_score (log q of the score-function latents)")
    if tuple(jnp.shape(baseline)) != tuple(log_p.shape[:-1]):
        raise ValueError(
            f"baseline has shape {tuple(jnp.shape(baseline))}, expected the leading shape "
            f"{tuple(log_p.shape[:-1])} of log_p {tuple(log_p.shape)}"
        )
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    log_z = log_mean_exp(log_w)
    signal, baseline_loss, new_state = _nvil_signal(log_z, baseline, state, decay, log_z.ndim)
    aux = {"signal_mean": new_state.mean, "signal_std": jnp.sqrt(new_state.var)}
    return _one_target(log_z, _score_term(signal, log_q_score), baseline=baseline_loss, aux=aux), new_state


def reward_to_go(log_w_terms: Array, log_likelihood: Array | None = None) -> Array:
    """Per-step learning signals of a sequential model: signal_i = Σ_{j ≥ i} term_j (+ log-likelihood).

    ``log_w_terms [..., steps]``: per-step contributions to one particle's log-weight in step order, i.e.
    log p(z^i | z^{<i}) − log q(z^i | x, z^{<i}) (thesis Eq. 5.3–5.4); ``log_likelihood [...]`` (optional) is
    log p(x | z) and is downstream of every step. Terms upstream of step i are dropped: they do not depend on z^i,
    so E[term_j ∇ log q(z^i | ·)] = 0 for j < i.
    """
    terms = log_w_terms
    if log_likelihood is not None:
        if tuple(jnp.shape(log_likelihood)) != tuple(terms.shape[:-1]):
            raise ValueError(
                f"log_likelihood has shape {tuple(jnp.shape(log_likelihood))}, expected {tuple(terms.shape[:-1])} "
                f"(log_w_terms {tuple(terms.shape)})"
            )
        terms = terms.at[..., -1].add(log_likelihood)
    return jnp.flip(jnp.cumsum(jnp.flip(terms, -1), axis=-1), -1)


def nvil_per_step(
    log_w_terms: Array,
    log_q_score_steps: Array,
    baselines: Array,
    state: NVILState,
    *,
    log_likelihood: Array | None = None,
    decay: float = 0.9,
) -> tuple[Surrogates, NVILState]:
    """NVIL with per-step learning signals for sequential models (AIR's z_pres, SQAIR); target: the ELBO.

    Objective per particle: Σ_i term_i (+ log-likelihood), averaged over particles and leading axes, i.e. the
    single-particle ELBO (each of the K particles is an independent K = 1 sample). The score term of the step-i
    score-function latent uses
        signal_i = (Σ_{j ≥ i} term_j + log p(x | z) − c_i − b_i) / max(1, σ̂_i),
    with b_i = ``baselines[..., i]`` a function of x and z^{<i} only (the caller's baseline network must not see
    z^i or later; then the estimator is unbiased), c_i, σ̂_i per-step running statistics.

    Args:
      log_w_terms: ``[..., particles, steps]`` per-step log p − log q, including the score-function latents' log q
        (and the reparameterised ones'), in step order; the likelihood may be folded into the last step or passed
        as ``log_likelihood [..., particles]``.
      log_q_score_steps: ``[..., particles, steps]`` log q(z^i | x, z^{<i}) of the step-i score-function latent.
      baselines: ``[..., particles, steps]`` b_i(x, z^{<i}).
      state: :class:`NVILState` with ``[steps]`` statistics (``nvil_init((steps,))``).
    Returns:
      ``(Surrogates, new_state)``; ``Surrogates.baseline`` regresses every b_i on its centred signal.
    """
    log_w_terms = jnp.asarray(log_w_terms)
    if log_w_terms.ndim < 2:
        raise ValueError(f"log_w_terms must be [..., particles, steps]; got shape {tuple(log_w_terms.shape)}")
    if log_w_terms.shape[-2] < 1 or log_w_terms.shape[-1] < 1:
        raise ValueError(
            f"NVIL needs at least 1 particle (K >= 1) and 1 step; got log_w_terms of shape "
            f"{tuple(log_w_terms.shape)} [..., particles, steps]"
        )
    for name, a in (("log_q_score_steps", log_q_score_steps), ("baselines", baselines)):
        if tuple(jnp.shape(a)) != tuple(log_w_terms.shape):
            raise ValueError(
                f"{name} has shape {tuple(jnp.shape(a))}, expected log_w_terms' shape {tuple(log_w_terms.shape)}"
            )
    if tuple(state.mean.shape) != (log_w_terms.shape[-1],):
        raise ValueError(
            f"state statistics have shape {tuple(state.mean.shape)}, expected ({log_w_terms.shape[-1]},); "
            "use nvil_init((steps,))"
        )
    returns = reward_to_go(log_w_terms, log_likelihood)
    signal, baseline_loss, new_state = _nvil_signal(returns, baselines, state, decay, returns.ndim - 1)
    log_w = returns[..., 0]  # the whole particle's log-weight
    score = jnp.sum(sg(signal) * log_q_score_steps, axis=-1)
    aux = {"signal_mean": new_state.mean, "signal_std": jnp.sqrt(new_state.var)}
    return _one_target(log_w, score, baseline=baseline_loss, aux=aux), new_state


def log_sum_exp_of_others(log_w: Array) -> Array:
    """``log Σ_{ℓ≠k} exp(log_w_ℓ)`` for every k, ``[..., K] -> [..., K]``, in O(K) time and memory: the log-sum-exp
    of the prefix before k and of the suffix after k (two cumulative log-add-exp scans), combined. Stable even when
    w_k dominates (no subtraction of exponentials). K = 1 gives −inf."""
    k, axis = log_w.shape[-1], log_w.ndim - 1
    prefix = jax.lax.associative_scan(jnp.logaddexp, log_w, axis=axis)  # log Σ_{ℓ≤k}
    suffix = jax.lax.associative_scan(jnp.logaddexp, log_w, axis=axis, reverse=True)  # log Σ_{ℓ≥k}
    empty = jnp.full(log_w.shape[:-1] + (1,), -jnp.inf, log_w.dtype)
    before = jnp.concatenate([empty, prefix[..., : k - 1]], axis=-1)
    after = jnp.concatenate([suffix[..., 1:], empty], axis=-1)
    return jnp.logaddexp(before, after)


def vimco_leave_one_out(log_w: Array) -> Array:
    """VIMCO's leave-one-out baselines Υ_{−k} ``[..., particles]`` (thesis Eq. 8.3, Mnih & Rezende 2016):

        Υ_{−k} = log (1/K) ( exp((1/(K−1)) Σ_{ℓ≠k} log w_ℓ) + Σ_{ℓ≠k} w_ℓ ),

    i.e. log Ẑ_K with w_k replaced by the geometric mean of the other K − 1 weights (−log K included). Υ_{−k}
    does not depend on w_k. Requires K ≥ 2. O(K) time and memory (:func:`log_sum_exp_of_others`), no ``[K, K]``
    array.
    """
    k = log_w.shape[-1]
    if k < 2:
        raise ValueError(f"VIMCO needs at least 2 particles (K >= 2); got log-weights of shape {tuple(log_w.shape)}")
    # Shift by the max for stability; the shift is a constant in each row and cancels exactly.
    shift = sg(jnp.max(log_w, axis=-1, keepdims=True))
    lw = log_w - shift
    geo_mean_others = (jnp.sum(lw, axis=-1, keepdims=True) - lw) / (k - 1)  # [..., K]
    return jnp.logaddexp(geo_mean_others, log_sum_exp_of_others(lw)) - math.log(k) + shift


def vimco(log_p: Array, log_q_reparam: Array | None, log_q_score: Array) -> Surrogates:
    """VIMCO (thesis Eq. 8.3): Σ_k (log Ẑ_K − Υ_{−k}) ∇_φ log q(z_k | x) + ∇ log Ẑ_K.

    ``[..., particles]``, K ≥ 2. The signal is log Ẑ_K − Υ_{−k}, *not* log w_k − Υ_{−k} (a public bug). For
    sequential models pass per-particle totals: ``log_q_score`` summed over steps (VIMCO uses the whole particle's
    signal for every step). ``aux``: ``signals [..., particles]``.
    """
    if log_q_score is None:
        raise ValueError("vimco needs log_q_score (log q of the score-function latents)")
    log_p = _check_inputs(log_p, log_q_reparam, log_q_score, min_particles=2, estimator="VIMCO")
    log_w = log_weights(log_p, log_q_reparam, log_q_score)
    log_z = log_mean_exp(log_w)
    signals = log_z[..., None] - vimco_leave_one_out(log_w)
    return _one_target(log_z, _score_term(signals, log_q_score), aux={"signals": sg(signals)})


# ----------------------------------------------------------------------------------------------------------------
# reweighted wake-sleep (thesis §8.3)


def rws_wake_theta(log_p: Array, log_q: Array | None = None, log_proposal: Array | None = None) -> Array:
    """Wake-phase θ loss: −log Ẑ_K with the proposal density stopped, so ∇_θ is IWAE's θ-gradient (thesis §8.3.1).

    ``[..., particles]``. ``log_proposal`` (default ``log_q``) is the density the particles were drawn from;
    δ-WW passes the defensive mixture's density here.
    """
    log_prop = log_q if log_proposal is None else log_proposal
    log_w = log_weights(log_p, None if log_prop is None else sg(log_prop))
    return -jnp.mean(log_mean_exp(log_w))


def rws_wake_phi(log_p: Array, log_q: Array, log_proposal: Array | None = None) -> Array:
    """Wake-phase φ loss: its gradient is Σ_k w̃_k (−∇_φ log q_φ(z_k | x)) (thesis Eq. 8.7).

    ``[..., particles]``. w̃_k = softmax_k(log p − log proposal), stop-gradiented (self-normalised importance
    sampling; biased, consistent). ``log_q`` must be log q_φ evaluated at *fixed* samples (stop the sample path of
    reparameterised latents: wake-φ treats samples as data). ``log_proposal`` defaults to ``log_q``; for δ-WW it is
    the density of the defensive mixture the particles were drawn from, evaluated at those particles.
    """
    log_p = _check_inputs(log_p, log_q, log_proposal, names=("log_q", "log_proposal"))
    log_prop = log_q if log_proposal is None else log_proposal
    weights = jax.nn.softmax(sg(log_p - log_prop), axis=-1)
    return -jnp.mean(jnp.sum(weights * log_q, axis=-1))


def rws_sleep_phi(log_q_of_model_samples: Array) -> Array:
    """Sleep-phase φ loss: −mean log q_φ(z | x) over (z, x) ~ p_θ (thesis Eq. 8.5); ``[...]`` any shape.

    Compute matching (thesis §8.4): a wake-φ update with batch B and K particles corresponds to K·B sleep samples.
    """
    return -jnp.mean(log_q_of_model_samples)


def rws(log_p: Array, log_q: Array, log_proposal: Array | None = None) -> Surrogates:
    """Reweighted wake-sleep with wake-θ and wake-φ updates ("WW", thesis §8.3); δ-WW with ``log_proposal``.

    ``[..., particles]``; ``log_q`` at fixed samples (see :func:`rws_wake_phi`). ``bound`` is the IWAE value under
    the proposal. For WS use ``theta`` from here (or :func:`rws_wake_theta`) and :func:`rws_sleep_phi` for φ.
    """
    log_p = _check_inputs(log_p, log_q, log_proposal, names=("log_q", "log_proposal"))
    log_prop = log_q if log_proposal is None else log_proposal
    log_w = sg(log_p - log_prop)
    return Surrogates(
        theta=rws_wake_theta(log_p, log_q, log_proposal),
        phi=rws_wake_phi(log_p, log_q, log_proposal),
        bound=jnp.mean(log_mean_exp(log_w)),
        aux={"log_ess": jnp.mean(_log_ess(log_w))},
    )


def defensive_categorical_log_prob(logits: Array, delta: float, z: Array) -> Array:
    """log q_δ(z) for q_δ = (1 − δ)·Categorical(softmax(logits)) + δ·Uniform over the last axis (thesis §8.4.3).

    ``logits [..., C]``, ``z`` integer ``[sample..., ...]`` broadcastable against ``logits[..., 0]``.
    """
    num = logits.shape[-1]
    log_q = jax.nn.log_softmax(logits, axis=-1)
    log_q_z = jnp.take_along_axis(jnp.broadcast_to(log_q, z.shape + (num,)), z[..., None], axis=-1)[..., 0]
    if delta == 0.0:
        return log_q_z
    return jnp.logaddexp(math.log1p(-delta) + log_q_z, math.log(delta) - math.log(num))


def defensive_categorical_sample(
    key: Array, logits: Array, delta: float, sample_shape: tuple[int, ...] = ()
) -> tuple[Array, Array]:
    """Draw z ~ q_δ = (1 − δ) q + δ·Uniform (δ-WW's defensive proposal) and return ``(z, log q_δ(z))``.

    ``logits [..., C]``; ``z`` has shape ``sample_shape + logits.shape[:-1]``. The density is evaluated at the
    sample actually drawn (from either mixture component), which is what the importance weights need. The
    returned density carries gradients w.r.t. ``logits``; importance weights should stop them.
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1); got {delta}")
    num = logits.shape[-1]
    shape = tuple(sample_shape) + logits.shape[:-1]
    k_choose, k_q, k_u = jax.random.split(key, 3)
    from_uniform = jax.random.bernoulli(k_choose, delta, shape)
    z_q = distributions.categorical_sample(k_q, logits, shape)
    z_u = jax.random.randint(k_u, shape, 0, num)
    z = jnp.where(from_uniform, z_u, z_q)
    return z, defensive_categorical_log_prob(logits, delta, z)


# ----------------------------------------------------------------------------------------------------------------
# doubly reparameterised gradients


def dreg(log_p: Array, log_q_reparam: Array, log_q_stopped_params: Array) -> Surrogates:
    """DReG for reparameterised φ (Tucker et al. 2019): ∇_φ IWAE ≈ Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ.

    Args (all ``[..., particles]``):
      log_p: log p_θ(x, z_k(φ)), with the sample path differentiable.
      log_q_reparam: log q_φ(z_k(φ)), fully differentiable (used only for the θ-loss and the bound).
      log_q_stopped_params: log q_{sg(φ)}(z_k(φ)): the density's parameters stopped, the sample path kept.
    θ-loss is IWAE's (unchanged: θ enters only through log p); φ-loss is −Σ_k sg(w̃_k²) log w̃'_k with
    log w̃'_k = log p − log q_{sg(φ)}, which has the DReG gradient and the same expectation as IWAE's φ-gradient.
    """
    log_p = _check_inputs(log_p, log_q_reparam, log_q_stopped_params, names=("log_q_reparam", "log_q_stopped_params"))
    log_w = log_p - log_q_reparam
    log_z = log_mean_exp(log_w)
    theta_loss = -jnp.mean(log_z)
    log_w_path = log_p - log_q_stopped_params
    sq_weights = jnp.square(jax.nn.softmax(sg(log_w), axis=-1))
    phi_loss = -jnp.mean(jnp.sum(sq_weights * log_w_path, axis=-1))
    return Surrogates(theta=theta_loss, phi=phi_loss, bound=sg(jnp.mean(log_z)))


def _log_ess(log_w: Array) -> Array:
    return 2.0 * jax.nn.logsumexp(log_w, axis=-1) - jax.nn.logsumexp(2.0 * log_w, axis=-1)

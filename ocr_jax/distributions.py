"""Probability distributions: distrax for the standard ones, and the two count distributions distrax lacks.

The models use ``distrax.Normal`` (factorised Gaussians of z_what, z_where and the Gaussian likelihood),
``distrax.Bernoulli`` (presence variables, the Bernoulli likelihood) and ``distrax.Categorical`` directly. This module
holds what distrax has no distribution for:

* AIR's **truncated geometric count prior** (Eslami et al. 2016; AIR.md "Count prior"): ``p(n) ∝ Π_{i≤n} ρ_i`` on
  {0..N}, and its per-step decomposition along a unary presence code (:func:`count_log_prior`,
  :func:`presence_log_prior_steps`);
* SQAIR's **truncated discovery categorical** (thesis Eq. 5.8): a categorical over {0..N} whose support is cut to
  {0..M}, M = N − P_t the free slots (:func:`truncated_categorical`);
* :func:`diag_normal_log_prob`, a factorised Gaussian's log-density summed over the event axis (``distrax.Normal``);
* :func:`categorical_sample`, a categorical sampler by inverse CDF: one uniform per draw instead of the C Gumbels of
  ``jax.random.categorical`` — 10–18× faster on CPU where sampling dominates (the GMM study's step).

Tests: tests/test_distributions.py (closed forms).
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "categorical_sample",
    "count_log_prior",
    "diag_normal_log_prob",
    "presence_log_prior_steps",
    "truncated_categorical",
]


def diag_normal_log_prob(x: Array, loc, scale) -> Array:
    """log N(x; loc, diag(scale²)) summed over the last axis: ``[..., D] -> [...]`` (loc, scale broadcast)."""
    return jnp.sum(distrax.Normal(loc, scale).log_prob(x), axis=-1)


def categorical_sample(key: Array, logits: Array, shape: tuple[int, ...] | None = None) -> Array:
    """z ~ Cat(softmax(logits)) by inverse CDF: z = #{c < C − 1 : u > F_c}, u ~ U(0, 1), F the cumulative PMF.

    ``logits [..., C]``; ``shape`` (default ``logits.shape[:-1]``) must broadcast against ``logits.shape[:-1]``, as
    in ``jax.random.categorical``; returns int32 ``z`` of ``shape``. A category of probability 0 is never drawn (u > 0
    strictly). Not differentiable (z is discrete); the logits' gradient is stopped.
    """
    logits = jax.lax.stop_gradient(logits)
    shape = logits.shape[:-1] if shape is None else tuple(shape)
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)[..., :-1]  # [..., C − 1]
    u = jax.random.uniform(key, shape + (1,), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return jnp.sum(u > cdf, axis=-1, dtype=jnp.int32)


def _cumulative_log_continue(continue_prob, max_steps: int) -> Array:
    """``c_m = Σ_{j≤m} log ρ_j`` for m = 0..N, ``[N + 1]``."""
    rho = jnp.broadcast_to(jnp.asarray(continue_prob, jnp.float32), (max_steps,))
    return jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.log(jnp.clip(rho, 1e-30, 1.0)))])


def count_log_prior(continue_prob, max_steps: int) -> Array:
    """log p(n) for n = 0..N ``[N + 1]``: geometric truncated at N, normalised over {0..N}.

    ``p(n) ∝ Π_{i≤n} ρ_i``; ``continue_prob`` is a scalar ρ or a ``[N]`` vector (ρ_1..ρ_N). For a scalar,
    ``p(n) = ρ^n (1 − ρ) / (1 − ρ^{N+1})``.
    """
    c = _cumulative_log_continue(continue_prob, max_steps)
    return c - jax.nn.logsumexp(c)


def presence_log_prior_steps(z_pres: Array, continue_prob, max_steps: int) -> Array:
    """Per-step prior terms of the presence path, ``z_pres [..., N] -> [..., N]``; their sum is log p(n).

    Step i (1-based) with z_pres^{i-1} = 1 contributes ``log S_i − log S_{i−1}`` if z_pres^i = 1 and
    ``c_{i−1} − log S_{i−1}`` if z_pres^i = 0, with ``c_m = Σ_{j≤m} log ρ_j`` and ``S_i = Σ_{m=i}^N exp(c_m)``;
    steps after the stop contribute 0. ``z_pres`` must be a unary code (ones then zeros).
    """
    c = _cumulative_log_continue(continue_prob, max_steps)  # [N+1]
    log_s = jax.lax.cumlogsumexp(c, reverse=True)  # log S_i, i = 0..N
    term_present = log_s[1:] - log_s[:-1]
    term_stop = c[:-1] - log_s[:-1]
    prev = jnp.concatenate([jnp.ones_like(z_pres[..., :1]), z_pres[..., :-1]], -1)
    term = jnp.where(z_pres > 0, term_present, term_stop)
    return jnp.where(prev > 0, term, 0.0)


def truncated_categorical(logits: Array, max_value) -> distrax.Categorical:
    """The categorical with ``logits [..., N + 1]`` over {0..N} conditioned on ``value ≤ max_value``: support
    {0..max_value} (``max_value`` an int or int array broadcasting against ``logits[..., 0]``), probabilities
    renormalised over it, log-probability −inf above it (thesis Eq. 5.8: D_t ∈ {0..N − P_t})."""
    logits = jnp.asarray(logits)
    allowed = jnp.arange(logits.shape[-1]) <= jnp.asarray(max_value)[..., None]
    return distrax.Categorical(logits=jnp.where(allowed, logits, -jnp.inf))

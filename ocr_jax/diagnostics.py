"""Diagnostics for gradient estimators and importance weights (thesis chapter 7).

* :func:`snr` — per-parameter signal-to-noise ratio over R repeated gradient estimates (Eq. 7.4).
* :func:`dsnr` — directional SNR (Eq. 7.12).
* :func:`log_ess` / :func:`ess` — effective sample size (Eq. 7.19), in log space.
* :func:`log_marginal_chunked` — log p̂(x) = IWAE with many particles, evaluated chunk by chunk with a running
  logsumexp so the particles are never all in memory (used for log p̂(x) = IWAE-5000, Eq. 7.16–7.18).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "snr",
    "snr_squared_debiased",
    "dsnr",
    "log_ess",
    "ess",
    "log_marginal_chunked",
    "log_weights_chunked",
    "flatten_repeats",
]


def snr(grads, axis: int = 0):
    """SNR = |E[Δ]| / σ[Δ] per parameter (thesis Eq. 7.4), estimated over the repeats axis of every leaf.

    ``grads``: a pytree whose leaves are ``[repeats, ...]`` (e.g. ``jax.vmap`` of ``jax.grad`` over R keys).
    Returns the same pytree without the repeats axis. Uses the unbiased (ddof = 1) standard deviation; the
    estimate has a noise floor of about 1/√R when the true SNR is small.
    """

    def leaf(g):
        if g.shape[axis] < 2:
            raise ValueError(f"need at least 2 repeated estimates on axis {axis}; got shape {tuple(g.shape)}")
        return jnp.abs(jnp.mean(g, axis=axis)) / jnp.std(g, axis=axis, ddof=1)

    return jax.tree.map(leaf, grads)


def snr_squared_debiased(grads, axis: int = 0):
    """Per-parameter (mean² − s²/R) / s²: SNR² with the 1/R noise-floor bias of the plug-in estimate removed.

    E[mean²] = E[Δ]² + σ²/R, so subtracting s²/R (s² the unbiased sample variance) removes the floor; the result
    can be negative for individual parameters and is meant to be averaged over many parameters before taking a
    square root (the group-RMS SNR used for slope fits when the true SNR approaches 1/√R).
    """

    def leaf(g):
        r = g.shape[axis]
        if r < 2:
            raise ValueError(f"need at least 2 repeated estimates on axis {axis}; got shape {tuple(g.shape)}")
        var = jnp.var(g, axis=axis, ddof=1)
        return (jnp.square(jnp.mean(g, axis=axis)) - var / r) / var

    return jax.tree.map(leaf, grads)


def flatten_repeats(grads) -> Array:
    """Pytree of ``[repeats, ...]`` leaves -> ``[repeats, dim]`` (all parameters concatenated)."""
    leaves = jax.tree.leaves(grads)
    r = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(x, (r, -1)) for x in leaves], axis=1)


def dsnr(estimates: Array, direction: Array | None = None, *, return_ratios: bool = False):
    """Directional SNR (thesis Eq. 7.12): E[‖Δ_∥‖ / ‖Δ_⊥‖] with Δ_∥ = (Δᵀu)u, Δ_⊥ = Δ − Δ_∥.

    Args:
      estimates: ``[repeats, dim]`` gradient estimates Δ (or a pytree of ``[repeats, ...]`` leaves).
      direction: ``[dim]`` target direction; default u = E[Δ]/‖E[Δ]‖ from the estimates themselves (Fig. 7.4.2);
        pass e.g. E[Δ_{1,1000}] for Fig. 7.4.3's variant. Normalised here.
      return_ratios: also return the ``[repeats]`` individual ratios (for interquartile ranges).
    """
    if not isinstance(estimates, jax.Array) or estimates.ndim != 2:
        estimates = flatten_repeats(estimates)
    u = jnp.mean(estimates, axis=0) if direction is None else jnp.ravel(direction)
    if u.shape[0] != estimates.shape[1]:
        raise ValueError(f"direction has {u.shape[0]} entries but estimates have shape {tuple(estimates.shape)}")
    u = u / jnp.linalg.norm(u)
    parallel = estimates @ u  # signed length of Δ_∥
    perpendicular = estimates - parallel[:, None] * u[None, :]
    ratios = jnp.abs(parallel) / jnp.linalg.norm(perpendicular, axis=1)
    value = jnp.mean(ratios)
    return (value, ratios) if return_ratios else value


def log_ess(log_w: Array, axis: int = -1) -> Array:
    """log ESS = 2·logsumexp(log w) − logsumexp(2·log w) (thesis Eq. 7.19), stable for |log w| ~ 1e4."""
    return 2.0 * jax.nn.logsumexp(log_w, axis=axis) - jax.nn.logsumexp(2.0 * log_w, axis=axis)


def ess(log_w: Array, axis: int = -1) -> Array:
    """ESS = (Σ w)² / Σ w² (thesis Eq. 7.19) from log-weights; in [1, K]."""
    return jnp.exp(log_ess(log_w, axis))


def log_marginal_chunked(
    log_weight_fn: Callable[[Array, int], Array], key: Array, num_particles: int, chunk_size: int
) -> Array:
    """log p̂(x) = log (1/K) Σ_k w_k with K = ``num_particles`` (IWAE-K, e.g. K = 5000), in chunks.

    Args:
      log_weight_fn: ``(key, n) -> log_w [..., n]``: draws n fresh particles and returns their log-weights
        (``n`` is a static Python int; it is called with ``chunk_size`` and, if K is not a multiple of it, once
        with the remainder).
      key: PRNG key; chunk c uses ``fold_in(key, c)``.
      num_particles: K.
      chunk_size: particles per chunk; at most this many are materialised at once.
    Returns:
      ``[...]`` the log marginal estimate. Chunks run sequentially under ``lax.scan`` with a running
      (max, sum-of-exp) pair, which is exactly logsumexp over all K.
    """
    if num_particles < 1 or chunk_size < 1:
        raise ValueError(f"num_particles and chunk_size must be positive; got {num_particles}, {chunk_size}")
    chunk_size = min(chunk_size, num_particles)
    num_full, remainder = divmod(num_particles, chunk_size)

    def combine(carry, log_w):
        m, s = carry  # running max and Σ exp(log w − m)
        m_new = jnp.maximum(m, jnp.max(log_w, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(log_w - m_new[..., None]), axis=-1)
        return m_new, s

    first = log_weight_fn(jax.random.fold_in(key, 0), chunk_size)
    carry = (jnp.max(first, axis=-1), jnp.sum(jnp.exp(first - jnp.max(first, axis=-1, keepdims=True)), axis=-1))

    def body(carry, c):
        return combine(carry, log_weight_fn(jax.random.fold_in(key, c), chunk_size)), None

    if num_full > 1:
        carry, _ = jax.lax.scan(body, carry, jnp.arange(1, num_full))
    if remainder:
        carry = combine(carry, log_weight_fn(jax.random.fold_in(key, num_full), remainder))
    m, s = carry
    return m + jnp.log(s) - math.log(num_particles)


def log_weights_chunked(log_weight_fn, key, num_particles, chunk_size):
    """All ``num_particles`` log-weights ``[..., S]`` that ``log_marginal_chunked(log_weight_fn, key,
    num_particles, chunk_size)`` reduces to log p̂ (the same keys: chunk c draws with ``fold_in(key, c)``), drawn
    ``chunk_size`` at a time; so log_mean_exp of them is that log p̂ and their mean is over the same particles."""
    chunk_size = min(chunk_size, num_particles)
    num_full, remainder = divmod(num_particles, chunk_size)
    full = jax.lax.map(lambda c: log_weight_fn(jax.random.fold_in(key, c), chunk_size), jnp.arange(num_full))
    log_w = jnp.moveaxis(full, 0, -2).reshape(*full.shape[1:-1], num_full * chunk_size)  # [..., S]
    if remainder:
        log_w = jnp.concatenate([log_w, log_weight_fn(jax.random.fold_in(key, num_full), remainder)], axis=-1)
    return log_w

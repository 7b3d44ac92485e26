"""FIVO: the filtering variational objective (Maddison et al. 2017, "Filtering Variational Objectives").

A particle filter with K particles runs over time; its estimate of the marginal likelihood is

    p̂(x_{1:T}) = Π_{r} (1/K) Σ_k W_r^k,         log p̂ = Σ_r log mean_k W_r^k        (FIVO paper, Eq. 5 / Alg. 1)

where r runs over the resampling times (and the final step), and W_r^k = Π_{t in (r_prev, r]} α_t^k is particle k's
weight accumulated since the last resampling, with the incremental weight

    α_t^k = p(x_t, z_t^k | x_{<t}, z_{<t}^k) / q(z_t^k | x_{≤t}, z_{<t}^k).

E[log p̂] ≤ log p(x_{1:T}) because E[p̂] = p(x_{1:T}) (an unbiased SMC estimate) and Jensen. Resampling draws the
ancestors a^k ~ Categorical(W^k / Σ_j W^j) (multinomial, :func:`multinomial_ancestors`) and resets the weights to 1
(log 0); it happens

* ``"always"``: after every step (the FIVO paper's bootstrap-style SMC),
* ``"never"``: never: then log p̂ = log mean_k Π_t α_t^k, exactly IWAE over whole sequences (K particles),
* ``"ess"``: when the effective sample size ESS = (Σ_k W^k)² / Σ_k (W^k)² of the accumulated weights falls below
  ``ess_threshold · K`` (FIVO's default, threshold 0.5), per sequence.

Gradients (the FIVO paper, §4 and its reference code): the latents are reparameterised, so ∇ log p̂ flows through the
proposals' sample paths, the incremental weights and the resampled particles' states (gathering a particle's state
is differentiable in that state); the ancestor indices are sampled without a gradient and **the score-function term
of the resampling step, Σ_r ∇ log P(a_r | W_r), is dropped**, as the FIVO paper does (it reports that the term has
high variance and that dropping it works better). The gradient is therefore biased whenever resampling happens; with
``resampling="never"`` it is IWAE's unbiased gradient of its bound.

FIVO cannot be combined with VIMCO or any other score-function estimator (seed ``001_*`` §6): VIMCO's leave-one-out
signals need K independent, exchangeable particles, and resampled particles are neither (they share ancestors, and
the ancestors depend on every particle's weight). Discrete latents need a continuous relaxation with FIVO.

Shapes (named axes): inputs ``[time, batch, ...]`` (time-major, as ``jax.lax.scan`` wants them); particle states,
incremental weights and step outputs ``[batch, particles, ...]``; filter results ``[time, batch, particles, ...]``.
Resampling is done by masking (``jnp.where``), never by ``lax.cond``, so every step has the same shapes and one
compiled scan serves all patterns of resampling.

Keys: step t uses ``k_step, k_resample = jax.random.split(jax.random.fold_in(key, t))``; ``step_fn`` receives
``k_step`` (so a model's samples at step t do not depend on whether earlier steps resampled).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ocr_jax.objectives import Surrogates

Array = jax.Array
PyTree = Any
sg = jax.lax.stop_gradient

__all__ = [
    "RESAMPLING",
    "FilterResult",
    "FilterSettings",
    "check_settings",
    "fivo_surrogates",
    "multinomial_ancestors",
    "particle_filter",
    "step_keys",
    "trace_lineage",
]

RESAMPLING = ("always", "never", "ess")


class FilterSettings(NamedTuple):
    """When the filter resamples (``resampling`` in :data:`RESAMPLING`; ``ess_threshold`` is the fraction of K below
    which the ESS triggers resampling, used by ``"ess"`` only)."""

    resampling: str = "ess"
    ess_threshold: float = 0.5


class FilterResult(NamedTuple):
    """What :func:`particle_filter` returns.

    * ``log_p_hat [batch]``: log p̂(x_{1:T}), the FIVO bound's estimate (differentiable);
    * ``log_weights [batch, particles]``: the final per-particle log-weights: log W_T^k plus the log p̂ accumulated up
      to the last resampling, so that ``log_mean_exp(log_weights) == log_p_hat``; with ``resampling="never"`` these
      are the whole-sequence importance weights Σ_t log α_t^k = log p(x, z^k) − log q(z^k | x);
    * ``log_alpha [time, batch, particles]``: the incremental log-weights log α_t^k (before resampling at t);
    * ``log_ess [time, batch]``: log ESS of the accumulated weights at step t, before resampling;
    * ``resampled [time, batch]`` bool: whether the filter resampled after step t;
    * ``ancestors [time, batch, particles]`` int32: particle k after step t is a copy of particle ``ancestors[t, b, k]``
      before resampling (k itself where nothing was resampled);
    * ``outputs``: the pytree of ``step_fn``'s per-step outputs, leaves ``[time, batch, particles, ...]``, as produced
      at step t (before resampling; :func:`trace_lineage` follows the final particles' ancestry through them);
    * ``final_state``: the particles' states after the last step (and its resampling).
    """

    log_p_hat: Array
    log_weights: Array
    log_alpha: Array
    log_ess: Array
    resampled: Array
    ancestors: Array
    outputs: PyTree
    final_state: PyTree


def check_settings(resampling: str, ess_threshold: float, num_particles: int) -> None:
    """ValueError for an unknown ``resampling``, a threshold outside (0, 1], K < 1, or K = 1 with resampling."""
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}; got {resampling!r}")
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be an int >= 1; got {num_particles!r}")
    if resampling == "ess" and not 0.0 < float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold is a fraction of K in (0, 1]; got {ess_threshold}")
    if resampling != "never" and num_particles < 2:
        raise ValueError(
            f"resampling={resampling!r} needs num_particles >= 2: resampling one particle only copies it, so the "
            "filter would be the ELBO; use resampling='never' with K = 1"
        )


def step_keys(key: Array, t) -> tuple[Array, Array]:
    """``(k_step, k_resample)`` of step ``t``: ``split(fold_in(key, t))``."""
    k_step, k_resample = jax.random.split(jax.random.fold_in(key, t))
    return k_step, k_resample


def _log_mean_exp(x: Array) -> Array:
    return jax.nn.logsumexp(x, axis=-1) - math.log(x.shape[-1])


def _time_length(inputs: PyTree) -> int:
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        raise ValueError("particle_filter needs inputs with a leading time axis [time, batch, ...]; got no arrays")
    shapes = [jnp.shape(a) for a in leaves]
    if any(len(s) < 2 for s in shapes):
        raise ValueError(f"every input must be [time, batch, ...]; got shapes {shapes}")
    times, batches = {s[0] for s in shapes}, {s[1] for s in shapes}
    if len(times) != 1:
        raise ValueError(
            f"the inputs' time axes differ: leading axes {sorted(times)} (shapes {shapes}); every input must be "
            "[time, batch, ...] with the same time length"
        )
    if len(batches) != 1:
        raise ValueError(f"the inputs' batch axes (axis 1) differ: {sorted(batches)} (shapes {shapes})")
    (num_steps,) = times
    if num_steps < 1:
        raise ValueError(f"particle_filter needs at least one time step; got shapes {shapes}")
    return int(num_steps)


def _check_state(state: PyTree, batch: int, num_particles: int, what: str) -> None:
    for leaf in jax.tree.leaves(state):
        if tuple(jnp.shape(leaf))[:2] != (batch, num_particles):
            raise ValueError(
                f"{what}: every leaf must be [batch={batch}, particles={num_particles}, ...]; got a leaf of shape "
                f"{tuple(jnp.shape(leaf))}"
            )


def _gather_particles(tree: PyTree, ancestors: Array) -> PyTree:
    """``tree`` leaves ``[batch, particles, ...]``, ``ancestors [batch, particles]`` -> leaf[b, ancestors[b, k]]."""

    def gather(leaf):
        idx = ancestors.reshape(ancestors.shape + (1,) * (leaf.ndim - 2))
        return jnp.take_along_axis(leaf, idx, axis=1)

    return jax.tree.map(gather, tree)


def multinomial_ancestors(key: Array, log_w: Array) -> Array:
    """Multinomial resampling: ``log_w [batch, particles]`` -> K ancestor indices per sequence, drawn i.i.d. from
    Categorical(softmax(log_w)) by inverting the cumulative weights at K uniforms (O(K log K), where Gumbel-max
    sampling costs O(K²)). ``[batch, particles]`` int32."""
    num_particles = log_w.shape[-1]
    cdf = jnp.cumsum(jax.nn.softmax(log_w, axis=-1), axis=-1)
    u = jax.random.uniform(key, log_w.shape, dtype=cdf.dtype) * cdf[..., -1:]
    index = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cdf, u)
    return jnp.minimum(index, num_particles - 1).astype(jnp.int32)


def particle_filter(
    step_fn: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array, PyTree]],
    init_state: PyTree,
    inputs: PyTree,
    key: Array,
    num_particles: int,
    *,
    resampling: str = "ess",
    ess_threshold: float = 0.5,
    unroll: int = 1,
) -> FilterResult:
    """Runs a particle filter (sequential Monte Carlo) and returns the FIVO bound's estimate and its bookkeeping.

    Args:
      step_fn: ``(state, inputs_t, key) -> (state, log_alpha, outputs)``, one step of the model's proposal and
        incremental weight for every particle: ``state`` leaves ``[batch, particles, ...]``, ``inputs_t`` the slice
        of ``inputs`` at step t (leaves ``[batch, ...]``), ``log_alpha [batch, particles]`` = log p(x_t, z_t | ·) −
        log q(z_t | ·), ``outputs`` any pytree of ``[batch, particles, ...]`` leaves (e.g. the sampled z_t), or ``()``.
        It must sample with ``key`` only (it is the step's ``k_step``, :func:`step_keys`).
      init_state: the particles' states before the first step, leaves ``[batch, particles, ...]``.
      inputs: pytree of ``[time, batch, ...]`` arrays (all with the same time and batch lengths).
      key: PRNG key.
      num_particles: K (a Python int).
      resampling: ``"always"``, ``"never"`` or ``"ess"`` (module docstring); ``ess_threshold``: resample when
        ESS < ess_threshold · K (``"ess"`` only).
      unroll: ``jax.lax.scan``'s ``unroll`` (same values, possibly faster).
    Returns:
      :class:`FilterResult`.
    Raises:
      ValueError for bad settings (:func:`check_settings`: e.g. K = 1 with resampling), inputs whose time (or batch)
      axes differ, and states or log-weights without the ``[batch, particles]`` leading axes.
    """
    check_settings(resampling, ess_threshold, num_particles)
    num_steps = _time_length(inputs)
    batch = int(jnp.shape(jax.tree.leaves(inputs)[0])[1])
    _check_state(init_state, batch, num_particles, "init_state")
    log_threshold = math.log(float(ess_threshold) * num_particles) if resampling == "ess" else 0.0
    particles = jnp.arange(num_particles, dtype=jnp.int32)

    def body(carry, scanned):
        state, log_w, log_p_hat = carry  # log_w [batch, particles]: accumulated since the last resampling
        t, x_t = scanned
        k_step, k_resample = step_keys(key, t)
        state, log_alpha, outputs = step_fn(state, x_t, k_step)
        if tuple(jnp.shape(log_alpha)) != (batch, num_particles):
            raise ValueError(
                f"step_fn must return log_alpha [batch={batch}, particles={num_particles}]; got shape "
                f"{tuple(jnp.shape(log_alpha))}"
            )
        _check_state(state, batch, num_particles, "the state returned by step_fn")
        log_w = log_w + log_alpha
        log_ess = 2.0 * jax.nn.logsumexp(log_w, axis=-1) - jax.nn.logsumexp(2.0 * log_w, axis=-1)  # [batch]
        ancestors = jnp.broadcast_to(particles, (batch, num_particles))
        if resampling == "never":
            resample = jnp.zeros((batch,), bool)
        else:
            resample = jnp.ones((batch,), bool) if resampling == "always" else log_ess < log_threshold
            # the indices carry no gradient (the resampling score term is dropped)
            drawn = multinomial_ancestors(k_resample, sg(log_w))
            ancestors = jnp.where(resample[:, None], drawn, ancestors)
            log_p_hat = log_p_hat + jnp.where(resample, _log_mean_exp(log_w), 0.0)
            log_w = jnp.where(resample[:, None], 0.0, log_w)
            state = _gather_particles(state, ancestors)
        return (state, log_w, log_p_hat), (log_alpha, log_ess, resample, ancestors, outputs)

    zeros = jnp.zeros((batch, num_particles), jnp.float32)
    carry = (init_state, zeros, jnp.zeros((batch,), jnp.float32))
    (state, log_w, log_p_hat), (log_alpha, log_ess, resampled, ancestors, outputs) = jax.lax.scan(
        body, carry, (jnp.arange(num_steps), inputs), unroll=unroll
    )
    return FilterResult(
        log_p_hat=log_p_hat + _log_mean_exp(log_w),
        log_weights=log_p_hat[:, None] + log_w,
        log_alpha=log_alpha,
        log_ess=log_ess,
        resampled=resampled,
        ancestors=ancestors,
        outputs=outputs,
        final_state=state,
    )


def trace_lineage(values: PyTree, ancestors: Array) -> PyTree:
    """The ancestral trajectories of the final particles.

    ``values`` leaves ``[time, batch, particles, ...]`` (e.g. :attr:`FilterResult.outputs`, produced at step t before
    resampling), ``ancestors [time, batch, particles]`` (:attr:`FilterResult.ancestors`) -> leaves of the same shape
    whose ``[t, b, k]`` entry is the value at step t of the particle that final particle k descends from. Without
    resampling this is the identity.
    """
    num_steps, batch, num_particles = ancestors.shape
    last = jnp.broadcast_to(jnp.arange(num_particles, dtype=jnp.int32), (batch, num_particles))

    def body(index, scanned):  # index [batch, particles]: which post-resampling particle of step t each final one is
        t_values, t_ancestors = scanned
        index = jnp.take_along_axis(t_ancestors, index, axis=1)  # the particle produced at step t
        return index, _gather_particles(t_values, index)

    _, traced = jax.lax.scan(body, last, (values, ancestors), reverse=True)
    return traced


def fivo_surrogates(log_p_hat: Array) -> Surrogates:
    """FIVO's surrogate losses: θ and φ both ascend log p̂ (``log_p_hat [...]``, averaged); one array for both
    groups, so the train step pulls back once. ``bound``: mean log p̂ (stop-gradiented)."""
    loss = -jnp.mean(log_p_hat)
    return Surrogates(theta=loss, phi=loss, bound=sg(jnp.mean(log_p_hat)))

"""Evaluation of VRNN (a task of ``ocr_jax.tasks.vrnn``; Table 5.4.1 rows 4–5, thesis §5.4.1, App. 5.D.3–5.D.4).

The functions take the task object: ``task.model`` (``ocr_jax.models.vrnn.VRNN``), ``task.config`` (its ``eval``
settings), ``task.run_filter`` (the particle filter over the model's steps) and ``task.filter_settings`` /
``task.estimator`` (the training objective's resampling).

Quantities (per sequence of T frames, averaged over sequences; the thesis' definitions, §5.4.1, as SQAIR's
``ocr_jax.evaluation.sqair.evaluate_sqair``):

* ``log_marginal``: log p(x_{1:T}) estimated as the thesis does for every model of Table 5.4.1, by IWAE with
  ``eval.log_marginal_particles`` (1000) independent particles (the filter without resampling), in chunks;
* ``fivo_log_marginal``: the FIVO bound with ``eval.fivo_particles`` particles (ESS resampling as trained; a second,
  usually tighter estimate, reported beside it and never in its place);
* ``iwae`` / ``elbo`` with ``eval.num_particles`` independent particles; ``log_likelihood`` = E_q[log p(x_{1:T} |
  z_{1:T})] (the mean over those particles: single-sample estimates averaged); ``kl`` = log_likelihood − elbo
  (= E_q[log q(z|x) − log p(z)], the KL of Table 5.4.1);
* ``bound``: the training objective (FIVO, or the IWAE-family bound) with ``eval.num_particles`` particles.

Addition (§5.D.4): the features of a frame are the whole 165-d latent z_t of the best of ``eval.num_particles``
independent particles (largest log-weight, as SQAIR's best particle), and the classifier, targets and protocol are
SQAIR's (``ocr_jax.evaluation.sqair.addition_on_features``: 2×256 ELU MLP, Adam, trained on the training sequences'
features, tested on the test sequences').

Conditional generation (:func:`conditional_generate`): a particle filter over the first frames, one final particle
drawn in proportion to its weight, its ancestral reconstructions, then frames simulated from the prior.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ocr_jax.data import to_unit_float
from ocr_jax.diagnostics import log_marginal_chunked
from ocr_jax.estimators import fivo
from ocr_jax.evaluation import sqair as sqair_eval

__all__ = [
    "EvalFunctions",
    "addition",
    "conditional_generate",
    "eval_functions",
    "evaluate_vrnn",
    "inference_batches",
    "latent_features",
]

NEVER = fivo.FilterSettings("never")


class EvalFunctions(NamedTuple):
    """Jitted functions of ``(params, frames [B, T, H, W] uint8 or float, key)`` (see :func:`eval_functions`)."""

    infer: Callable
    bound: Callable
    log_marginal: Callable
    fivo_log_marginal: Callable


_EVAL_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fivo_settings(task) -> fivo.FilterSettings:
    """The resampling of ``fivo_log_marginal``: the training estimator's if it is FIVO, else ESS < K/2."""
    return task.estimator.particle_filter or fivo.FilterSettings("ess", 0.5)


def eval_functions(task) -> EvalFunctions:
    """Built once per task:

    * ``infer`` -> ``log_w [B, K]`` (whole-sequence log-weights of K = ``eval.num_particles`` independent particles),
      ``log_likelihood [B, K]`` (Σ_t log p(x_t | ·)), and the best particle's ``z [B, T, D]`` and ``canvas [B, T, H,
      W]`` (likelihood means);
    * ``bound`` -> ``[B]``: the training objective's estimate (its own resampling) with ``eval.num_particles``;
    * ``log_marginal`` -> ``[B]``: IWAE with ``eval.log_marginal_particles`` in chunks of ``eval.log_marginal_chunk``;
    * ``fivo_log_marginal`` -> ``[B]``: FIVO with ``eval.fivo_particles`` (:func:`fivo_settings`).
    """
    if task not in _EVAL_FUNCTIONS:
        ev = task.config.eval

        @jax.jit
        def infer(params, frames, key):
            r = task.run_filter(params, frames, key, ev.num_particles, NEVER, with_canvas=True)
            best = jnp.argmax(r.log_weights, axis=-1)  # [B]

            def pick(a):  # [T, B, K, ...] -> [B, T, ...]
                a = jnp.swapaxes(a, 0, 1)
                return jnp.take_along_axis(a, best.reshape((-1, 1, 1) + (1,) * (a.ndim - 3)), axis=2)[:, :, 0]

            return {
                "log_w": r.log_weights,
                "log_likelihood": jnp.sum(r.outputs.log_likelihood, axis=0),
                "z": pick(r.outputs.z),
                "canvas": pick(r.outputs.canvas),
            }

        @jax.jit
        def bound(params, frames, key):
            return task.run_filter(params, frames, key, ev.num_particles).log_p_hat

        @jax.jit
        def log_marginal(params, frames, key):
            def log_weight_fn(k, num):
                return task.run_filter(params, frames, k, num, NEVER).log_weights

            return log_marginal_chunked(log_weight_fn, key, ev.log_marginal_particles, ev.log_marginal_chunk)

        @jax.jit
        def fivo_log_marginal(params, frames, key):
            return task.run_filter(params, frames, key, ev.fivo_particles, fivo_settings(task)).log_p_hat

        _EVAL_FUNCTIONS[task] = EvalFunctions(infer, bound, log_marginal, fivo_log_marginal)
    return _EVAL_FUNCTIONS[task]


def inference_batches(task, params, frames: np.ndarray, key: jax.Array):
    """``infer`` of :func:`eval_functions` over ``frames [n, T, H, W]`` in batches of ``eval.batch_size``, with key
    ``fold_in(key, start)`` for the batch starting at sequence ``start`` (the same particles for the same frames and
    key). Yields ``(start, host outputs)``."""
    infer = eval_functions(task).infer
    for start in range(0, len(frames), task.config.eval.batch_size):
        batch = frames[start : start + task.config.eval.batch_size]
        yield start, jax.device_get(infer(params, batch, jax.random.fold_in(key, start)))


def _log_mean_exp(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1)
    return m + np.log(np.mean(np.exp(x - m[..., None]), axis=-1))


def evaluate_vrnn(
    task,
    params,
    data: dict[str, np.ndarray],
    *,
    key: jax.Array,
    num_sequences: int | None = None,
    log_marginal_sequences: int | None = None,
    fivo_sequences: int | None = None,
) -> dict[str, Any]:
    """Test-set evaluation over all T frames of ``data["frames"] [n, T, H, W]`` (module docstring for the
    quantities). ``num_sequences`` (default all) sequences for the bounds, log p(x|z) and KL;
    ``log_marginal_sequences`` (default ``eval.log_marginal_sequences``) of them for IWAE-1000 and
    ``fivo_sequences`` (default the same) for the many-particle FIVO bound. Returns floats, the settings used, and
    ``example``: the first ``eval.num_pictures`` sequences with the best particle's ``canvas``.
    """
    ev = task.config.eval
    frames = data["frames"]
    n = min(num_sequences or len(frames), len(frames))
    if n < 1:
        raise ValueError("evaluate_vrnn needs at least one sequence")
    T = int(frames.shape[1])
    sums = dict(iwae=0.0, elbo=0.0, log_likelihood=0.0)
    example = None
    for start, out in inference_batches(task, params, frames[:n], key):
        log_w = np.asarray(out["log_w"], np.float64)
        sums["iwae"] += float(np.sum(_log_mean_exp(log_w)))
        sums["elbo"] += float(np.sum(np.mean(log_w, axis=1)))
        sums["log_likelihood"] += float(np.sum(np.mean(out["log_likelihood"], axis=1)))
        if example is None:
            j = slice(0, min(ev.num_pictures, len(log_w)))
            example = dict(frames=frames[start : start + len(log_w)][j], canvas=out["canvas"][j], z=out["z"][j])
    fns = eval_functions(task)
    bound = sqair_eval.per_sequence_estimates(fns.bound, params, frames[:n], key, ev.batch_size, 30_000)
    results = dict(
        num_sequences=int(n),
        num_frames=T,
        num_particles=int(ev.num_particles),
        iwae=sums["iwae"] / n,
        iwae_per_frame=sums["iwae"] / (n * T),
        elbo=sums["elbo"] / n,
        log_likelihood=sums["log_likelihood"] / n,
        bound_estimator=str(task.estimator.name),
        bound=float(np.mean(bound)),
        bound_per_frame=float(np.mean(bound)) / T,
    )
    results["kl"] = results["log_likelihood"] - results["elbo"]
    log_marginal_fields = sqair_eval.log_marginal_results(
        fns.log_marginal, params, frames[:n], key, ev, log_marginal_sequences
    )
    if log_marginal_fields:
        results.update(log_marginal_fields, log_marginal_estimator="iwae")
    f = min(ev.log_marginal_sequences if fivo_sequences is None else fivo_sequences, n)
    if f > 0:
        lf = sqair_eval.per_sequence_estimates(
            fns.fivo_log_marginal, params, frames[:f], key, ev.fivo_batch_size, 20_000
        )
        settings = fivo_settings(task)
        results.update(
            fivo_log_marginal=float(np.mean(lf)),
            fivo_sequences=int(f),
            fivo_particles=int(ev.fivo_particles),
            fivo_resampling=f"{settings.resampling} ({settings.ess_threshold})",
        )
    results["example"] = example
    return results


def latent_features(task, params, frames: np.ndarray, key) -> np.ndarray:
    """The best particle's latent ``z [n, T, D]`` of ``frames [n, T, H, W]`` (the batches and keys of
    :func:`evaluate_vrnn`, so the same ``key`` gives the particles it scored)."""
    return np.concatenate([out["z"] for _, out in inference_batches(task, params, frames, key)])


def addition(
    task,
    params,
    data: dict[str, np.ndarray],
    train_data: dict[str, np.ndarray],
    *,
    key: jax.Array,
    num_sequences: int | None = None,
    num_train_sequences: int | None = None,
    classifier_steps: int = 10_000,
    classifier_hidden: Sequence[int] = (256, 256),
    classifier_batch_size: int = 128,
    classifier_learning_rate: float = 1e-3,
    classifier_seed: int = 0,
) -> dict[str, Any]:
    """The addition experiment (§5.D.4) on VRNN's whole latent: :func:`latent_features` of ``train_data``'s first
    ``num_train_sequences`` sequences train SQAIR's classifier (``sqair_eval.addition_on_features``, the same
    defaults as ``sqair_eval.tracking_and_addition``), tested on ``data``'s first ``num_sequences``. ``key`` is used
    for the test sequences as :func:`evaluate_vrnn` uses it (``fold_in(key, 2**30)`` for the training ones, as
    SQAIR's)."""
    n = min(num_sequences or len(data["frames"]), len(data["frames"]))
    m = min(num_train_sequences or len(train_data["frames"]), len(train_data["frames"]))
    if n < 1 or m < 1:
        raise ValueError("the addition experiment needs at least one training and one test sequence")
    test = latent_features(task, params, data["frames"][:n], key)
    train = latent_features(task, params, train_data["frames"][:m], jax.random.fold_in(key, sqair_eval.TRAIN_KEY_FOLD))
    return sqair_eval.addition_on_features(
        train,
        {k: train_data[k][:m] for k in ("labels", "presence")},
        test,
        {k: data[k][:n] for k in ("labels", "presence")},
        hidden=classifier_hidden,
        steps=classifier_steps,
        batch_size=classifier_batch_size,
        learning_rate=classifier_learning_rate,
        seed=classifier_seed,
    )


def conditional_generate(
    task, params, frames, key: jax.Array, num_condition: int, num_particles: int | None = None
) -> dict[str, np.ndarray]:
    """Predicted rollouts: a particle filter (``num_particles``, default ``eval.num_particles``; the training
    resampling) over the first ``num_condition`` frames of ``frames [B, T, H, W]``; one final particle per sequence
    drawn in proportion to its weight; its ancestral ``reconstruction [B, num_condition, H, W]`` (likelihood means)
    and ``rollout [B, T − num_condition, H, W]`` simulated from the prior after it (``VRNN.rollout``, fed the means).
    """
    T = int(frames.shape[1])
    if not 1 <= num_condition < T:
        raise ValueError(f"num_condition must be in 1..T-1 = 1..{T - 1}; got {num_condition}")
    K = int(num_particles or task.config.eval.num_particles)
    settings = task.filter_settings if K >= 2 else NEVER
    k_filter, k_pick, k_roll = jax.random.split(key, 3)
    prefix = jnp.asarray(frames)[:, :num_condition]
    r = task.run_filter(params, prefix, k_filter, K, settings, with_canvas=True)
    chosen = jax.random.categorical(k_pick, r.log_weights, axis=-1)  # [B]
    canvas = fivo.trace_lineage(r.outputs.canvas, r.ancestors)  # [t, B, K, H, W]
    batch = jnp.arange(prefix.shape[0])
    reconstruction = jnp.swapaxes(canvas[:, batch, chosen], 0, 1)
    state = jax.tree.map(lambda a: a[batch, chosen], r.final_state)
    rollout = task.model.rollout(params, state, to_unit_float(prefix)[:, -1], k_roll, T - num_condition)
    return {"reconstruction": np.asarray(reconstruction), "rollout": np.asarray(rollout["frames"])}

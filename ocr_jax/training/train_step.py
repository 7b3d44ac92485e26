"""The training state and the pure, jit-compiled train step with one optimiser per parameter group."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training.tasks import Task

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs to continue bit-identically (the data position is `step`).

    step: int32 scalar, number of updates applied. params / opt_states: dicts keyed by parameter group.
    model_state: non-gradient state of the model (e.g. NVIL running moments). rng: the run's base PRNG key (raw
    uint32 [2]); step s uses ``jax.random.fold_in(rng, s)`` (see `step_key`).
    """

    step: jax.Array
    params: dict[str, PyTree]
    opt_states: dict[str, PyTree]
    model_state: PyTree
    rng: jax.Array

    def to_dict(self) -> dict[str, PyTree]:
        return dict(
            step=self.step, params=self.params, opt_states=self.opt_states, model_state=self.model_state, rng=self.rng
        )


def step_key(rng: jax.Array, step: jax.Array) -> jax.Array:
    """The PRNG key of step `step`: a pure function of the run key and the step, so resuming replays it exactly."""
    return jax.random.fold_in(rng, step)


def init_train_state(
    task: Task,
    optimizers: Mapping[str, optax.GradientTransformation],
    seed: int,
    local_batch: PyTree,
    mesh: Mesh | None = None,
) -> TrainState:
    """Initialises parameters and optimiser states directly replicated over the mesh (jit with out_shardings)."""
    mesh = mesh if mesh is not None else mesh_lib.make_data_mesh()

    def init(batch):
        init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
        params, model_state = task.init(init_key, batch)
        _check_groups(params, optimizers)
        opt_states = {g: optimizers[g].init(params[g]) for g in params}
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_states=opt_states, model_state=model_state, rng=run_key
        )

    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(local_batch)


def _check_groups(groups: Mapping[str, Any], optimizers: Mapping[str, Any], what: str = "params") -> None:
    if set(groups) != set(optimizers):
        raise ValueError(
            f"parameter groups of {what} {sorted(groups)} do not match the optimiser groups "
            f"{sorted(optimizers)}; configure one optimiser per group (config.optimizers)"
        )


def surrogate_partition(surrogates: Mapping[str, Any]) -> list[list[str]]:
    """Groups (sorted) partitioned by surrogate identity: groups whose surrogates are the same array share a list.

    >>> loss = jnp.ones(()); surrogate_partition({"inference": loss, "generative": loss, "baseline": loss * 2})
    [['baseline'], ['generative', 'inference']]
    """
    parts: list[tuple[Any, list[str]]] = []
    for g in sorted(surrogates):
        for s, gs in parts:
            if surrogates[g] is s:
                gs.append(g)
                break
        else:
            parts.append((surrogates[g], [g]))
    return [gs for _, gs in parts]


def make_train_step(
    task: Task,
    optimizers: Mapping[str, optax.GradientTransformation],
    *,
    mesh: Mesh | None = None,
    schedules: Mapping[str, optax.Schedule] | None = None,
    donate: bool = True,
) -> Callable[[TrainState, PyTree, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, batch, key) -> (state, metrics)``, jitted once.

    One forward pass of ``task.loss`` gives a dict of surrogates, one per group; the gradient for group g is
    ``d surrogates[g] / d params[g]``, obtained from the same forward pass by `jax.vjp` pull-backs with one-hot
    cotangents, keeping only the ``params[g]`` part. So a group's parameters never receive gradient from another
    group's objective (e.g. the NVIL baseline loss does not train the encoder). Groups whose surrogate is *the same
    array* (``surrogates["generative"] is surrogates["inference"]``, as for IWAE/VIMCO, where one scalar's gradient is
    both groups' estimator) share one pull-back: one backward pass serves them all. A task that wants separate
    estimators returns separate arrays. Each group is then updated by its own optax optimiser.

    Shardings: state, key and metrics replicated; every batch leaf split along its leading axis over ``data``. XLA
    inserts the all-reduce implied by batch means in ``task.loss``. The state argument is donated.

    If any surrogate or gradient is NaN/Inf, the returned state is the input state unchanged (the update is skipped)
    and ``metrics["finite"]`` is False, so the caller still holds the last good state although the input was donated.

    Args:
      task: the model (`ocr_jax.training.tasks.Task`).
      optimizers: one optax transformation per parameter group.
      mesh: the data mesh (default: all devices).
      schedules: optional learning-rate schedules per group, logged as ``lr/<group>``.
      donate: donate the state buffers (default True; tests that reuse a state pass False).
    """
    mesh = mesh if mesh is not None else mesh_lib.make_data_mesh()

    def train_step(state: TrainState, batch: PyTree, key: jax.Array):
        shared = []  # at trace time: the groups of each distinct surrogate array, in order

        def forward(params):
            surrogates, (metrics, model_state) = task.loss(params, state.model_state, batch, key, state.step)
            _check_groups(surrogates, optimizers, what="the surrogates returned by task.loss")
            shared[:] = surrogate_partition(surrogates)
            distinct = [surrogates[gs[0]] for gs in shared]
            return distinct, (metrics, model_state, surrogates)

        distinct, pullback, (metrics, model_state, surrogates) = jax.vjp(forward, state.params, has_aux=True)

        grads, metrics = {}, dict(metrics)
        finite = jnp.array(True)
        for i, gs in enumerate(shared):
            one_hot = [jnp.full_like(s, 1.0 if j == i else 0.0) for j, s in enumerate(distinct)]
            (grads_all,) = pullback(one_hot)
            for g in gs:
                grads[g] = grads_all[g]  # d surrogates[g] / d params[g]; the other groups' parts are discarded.
                grad_norm = optax.global_norm(grads[g])
                finite &= jnp.isfinite(surrogates[g]) & jnp.isfinite(grad_norm)
                metrics[f"surrogate/{g}"] = surrogates[g]
                metrics[f"grad_norm/{g}"] = grad_norm
                if schedules is not None and g in schedules:
                    metrics[f"lr/{g}"] = jnp.asarray(schedules[g](state.step), jnp.float32)

        def update(_):
            params, opt_states = {}, {}
            for g in grads:
                updates, opt_states[g] = optimizers[g].update(grads[g], state.opt_states[g], state.params[g])
                params[g] = optax.apply_updates(state.params[g], updates)
            return params, opt_states, model_state

        def skip(_):
            return dict(state.params), dict(state.opt_states), state.model_state

        # Skip a non-finite update entirely: the caller keeps a good state to checkpoint and stops (see train.py).
        # A conditional rather than an element-wise select of the old and new states: the optimiser runs only when
        # the update is applied, and no pass over every parameter and moment picks between the two (on a 2-core CPU
        # the select of AIR's 2500 × 1024 image projection and its Adam moments cost ≈ 8 % of the step).
        params, opt_states, new_model_state = jax.lax.cond(finite, update, skip, None)
        new_state = state.replace(
            step=state.step + finite.astype(state.step.dtype),
            params=params,
            opt_states=opt_states,
            model_state=new_model_state,
        )
        metrics["finite"] = finite
        return new_state, metrics

    repl = mesh_lib.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(repl, mesh_lib.batch_sharding(mesh), repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,) if donate else (),
    )

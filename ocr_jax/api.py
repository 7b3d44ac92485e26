"""Inference with trained runs: load a run directory, then count, locate and track objects in new images.

    import ocr_jax

    run = ocr_jax.load_run("runs/sqair")                     # config.json + the latest checkpoint
    out = ocr_jax.infer_sequences(run, frames)              # frames [B, T, H, W], float in [0, 1] or uint8
    out["counts"], out["boxes"], out["ids"]                 # [B, T], [B, T, N, 4], [B, T, N]

    run = ocr_jax.load_run("runs/air")
    out = ocr_jax.infer_images(run, images)                 # images [B, H, W]

`load_run` reads ``<workdir>/config.json`` (written by `ocr_jax.training.train.train_and_evaluate`), builds the model
of its task (``config.task``: ``"air"`` or ``"sqair"``) with the task classes of `ocr_jax.tasks.air` /
`ocr_jax.tasks.sqair`, and restores only the parameters of a checkpoint in ``<workdir>/checkpoints`` (Orbax
partial restore: no dataset is generated or read, no optimiser is built, the optimiser states are not read).

Conventions of both inference functions:

* Inputs: float in [0, 1] (any float dtype, used as float32), or uint8 in 0..255 (divided by 255 once). Anything else
  (other integer or bool dtypes, wrong rank, another frame size than the model's, NaN/inf, values outside [0, 1], an
  empty batch, more frames than the SQAIR model's ``max_seq_len``) raises ValueError before anything runs; a
  ``num_particles``/``batch_size`` that is not an int, or a key that is not an array, raises TypeError. The checks
  are `ocr_jax.validation`'s, the same the models' own ``infer`` runs (which, unlike this API, reject uint8).
* Particles: K = ``num_particles`` posterior samples per sequence/image; the one with the largest log importance
  weight is returned. Item i of the batch uses the key ``jax.random.fold_in(key, i)``, so its result does not depend
  on the batch size or on the other items. ``key``: a new-style ``jax.random.key``, an old-style
  ``jax.random.PRNGKey`` (uint32[2]; the same bits give the same results), an int seed, or None (seed 0, so results
  are reproducible).
* Boxes ``[..., 4]`` = (y_min, x_min, y_max, x_max) in pixel units of the frame, edges (docs/DESIGN.md). They are the
  model's *glimpse windows* (the attention window its decoder draws the object into), not tight bounding boxes of the
  object's pixels: a glimpse usually has a margin around the digit. Absent objects have a zero box.
* Latents, named as in both models' outputs: ``z_what``; ``z_where`` the spatial-transformer parameters
  (`ocr_jax.spatial_transformer` convention; the boxes are ``z_where_to_box`` of it) and ``z_where_raw`` the Gaussian
  latent it is a function of.
* Outputs are numpy arrays on the host. Inference is jitted per (model, batch shape, K): load a run once and call
  the functions many times.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import validation
from ocr_jax.training.tasks import upgraded_run_config

__all__ = ["Run", "load_config", "load_run", "infer_sequences", "infer_images", "TASKS"]

# Tasks load_run understands, and the inference function of each.
TASKS = {"air": "infer_images", "sqair": "infer_sequences"}


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A trained run ready for inference (see :func:`load_run`).

    config: the run's own config (``<workdir>/config.json``); task_name: ``"air"`` | ``"sqair"``; model: the
    `ocr_jax.models.air.AIR` / `ocr_jax.models.sqair.SQAIR` built from it; params: the checkpoint's parameters (jax
    arrays on the first local device, ``{"generative": ..., "inference": ...[, "baseline": ...]}``); step: the
    checkpoint's training step; task: the `AIRTask` / `SQAIRTask` that built ``model`` (its merged task config; it
    loads data only if asked to; optional: rebuilt from ``config`` when None). Compared and hashed by identity.
    """

    config: ml_collections.ConfigDict = dataclasses.field(repr=False)
    task_name: str
    model: Any
    params: Any = dataclasses.field(repr=False)
    step: int
    task: Any = dataclasses.field(default=None, repr=False)


def _make_task(task_name: str, task_config: ml_collections.ConfigDict):
    """The training task's object (only its model and merged config are used; its data are lazy and not touched)."""
    if task_name == "air":
        from ocr_jax.tasks import air

        return air.AIRTask(task_config)
    from ocr_jax.tasks import sqair

    return sqair.SQAIRTask(task_config)


def _task_of(run: "Run"):
    """``run.task``, or (for a Run built by hand without one) the task built from ``run.config``."""
    if run.task is not None:
        return run.task
    return _make_task(run.task_name, run.config.get("task_config") or ml_collections.ConfigDict())


def _abstract_params(task_name: str, model) -> Any:
    """Shapes and dtypes of the model's parameters, by tracing its init (nothing is computed)."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    if task_name == "air":
        images = jax.ShapeDtypeStruct((1, *model.config.canvas_shape), jnp.float32)
        return jax.eval_shape(model.init, key, images)
    return jax.eval_shape(model.init, key)


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run in ``workdir`` was launched with (its ``config.json``), as a ConfigDict, in the
    current layout (`ocr_jax.training.tasks.upgraded_run_config`: an older run's task module and task config under
    their current names).

    Raises FileNotFoundError if ``workdir`` or its ``config.json`` is missing, ValueError if the file is not a JSON
    object."""
    workdir = os.path.abspath(os.fspath(workdir))
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"run directory {workdir} does not exist (or is not a directory)")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: {workdir} is not a training run directory "
            "(python -m experiments.main --workdir=... writes config.json when it starts)"
        )
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path} does not hold a config (a JSON object); got {type(raw).__name__}")
    return ml_collections.ConfigDict(upgraded_run_config(raw))


def load_run(workdir: str | os.PathLike, *, step: int | None = None) -> Run:
    """Loads the run in ``workdir``: its config (``config.json``) and the parameters of the latest checkpoint (or of
    checkpoint ``step``) in ``<workdir>/checkpoints``.

    Raises FileNotFoundError if ``workdir`` or its ``config.json`` is missing, ValueError if the config's task is not
    one of `TASKS` or the file is not a config, and `ocr_jax.training.checkpoint.CheckpointError` if there is no
    (such) checkpoint or it does not fit the model built from the config.
    """
    from ocr_jax.training.checkpoint import Checkpointer, CheckpointError

    workdir = os.path.abspath(os.fspath(workdir))
    config = load_config(workdir)
    config_path = os.path.join(workdir, "config.json")
    task_name = config.get("task")
    if task_name not in TASKS:
        raise ValueError(f"{config_path}: task {task_name!r} has no inference API; load_run supports {sorted(TASKS)}")
    task = _make_task(task_name, config.get("task_config") or ml_collections.ConfigDict())
    model = task.model

    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise CheckpointError(f"{workdir} has no checkpoints directory: the run has not saved a checkpoint yet")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        "params": jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), _abstract_params(task_name, model)
        )
    }
    checkpointer = Checkpointer(checkpoints, must_exist=True)
    try:
        if checkpointer.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {checkpoints}: the run has not saved a checkpoint yet")
        step = checkpointer.latest_step() if step is None else int(step)
        try:
            params = checkpointer.restore_items(target, step)["params"]
        except CheckpointError as e:
            if step not in checkpointer.all_steps():
                raise
            raise CheckpointError(
                f"{e}\nThe checkpoint does not fit the {task_name} model built from {config_path}; "
                "was it written by another version of the model code?"
            ) from e.__cause__
    finally:
        checkpointer.close()
    return Run(config=config, task_name=task_name, model=model, params=params, step=step, task=task)


# ---- input checks -----------------------------------------------------------------------------------------------


def _check_run(run: Run, task_name: str, function: str) -> None:
    if not isinstance(run, Run):
        raise TypeError(f"{function} needs a Run from ocr_jax.load_run(workdir); got {type(run).__name__}")
    if run.task_name != task_name:
        other = TASKS.get(run.task_name)
        hint = f"; use ocr_jax.{other}(run, ...)" if other else f"; supported tasks: {sorted(TASKS)}"
        raise ValueError(
            f"{function} is for {task_name.upper()} runs, but this is a {str(run.task_name).upper()} run "
            f"(config.task = {run.task_name!r}){hint}"
        )


def _as_float32(
    x, *, name: str, axes: tuple[str, ...], image_shape: tuple[int, int], frame_source: str, max_time: int | None = None
) -> np.ndarray:
    """``x`` as a float32 numpy array in [0, 1] after the checks of the module docstring (rank, frame size, empty
    batch, sequence length, dtype, finite, range; `ocr_jax.validation.check_frames`, the models' own checks);
    uint8 is divided by 255."""
    return validation.check_frames(
        x, name=name, axes=axes, frame_shape=image_shape, frame_source=frame_source, max_time=max_time, uint8="convert"
    )


def _as_key(key) -> jax.Array:
    """A typed PRNG key from None (seed 0), an int seed, a typed key or a legacy uint32[2] key."""
    return validation.check_key(key, allow_seed=True)


def _check_positive(**values) -> None:
    for name, v in values.items():
        validation.check_count(v, name)


def _batched(fn, x: np.ndarray, key: jax.Array, batch_size: int) -> dict[str, np.ndarray]:
    """``fn(x_chunk, keys_chunk)`` over chunks of ``min(batch_size, len(x))`` items (the last one padded, so there is
    one compiled shape), with the key ``fold_in(key, i)`` for item i; host outputs concatenated."""
    n = len(x)
    size = min(batch_size, n)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(-(-n // size) * size))
    parts = []
    for start in range(0, n, size):
        chunk, chunk_keys = x[start : start + size], keys[start : start + size]
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out = jax.device_get(fn(jnp.asarray(chunk), chunk_keys))
        parts.append({k: v[: size - pad] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---- SQAIR --------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles", "posterior_means"))
def _sqair_best_particle(
    model, params, frames, keys, *, num_particles: int, posterior_means: bool = False
) -> dict[str, jax.Array]:
    """``frames [B, T, H, W]``, ``keys [B]`` -> the best of K particles per sequence."""
    # One sequence per vmapped call (its own key): the present-only decoder's switch would run every branch under
    # the vmap, so this path decodes every slot (the same values).
    model = type(model)(dataclasses.replace(model.config, decode_capacities=()))

    def one(x, key):
        # [1, K, T, ...]; log_weight [1, K]
        out = model.infer(params, x[None], key, num_particles, posterior_means=posterior_means)
        best = jnp.argmax(out["log_weight"][0])
        return {name: out[name][0, best] for name in ("z_pres", "z_what", "z_where_raw", "ids", "log_weight")}

    return jax.vmap(one)(frames, keys)


def infer_sequences(
    run: Run, frames, *, key=None, num_particles: int = 5, batch_size: int = 32, posterior_means: bool = False
) -> dict[str, np.ndarray]:
    """SQAIR inference on ``frames [B, T, H, W]`` (float in [0, 1] or uint8; ``T <= max_seq_len``, ``H, W`` the
    model's frame size): the best of ``num_particles`` particles per sequence (largest log-weight).

    Returns numpy arrays (N = the model's ``max_objects`` object slots):
      ``counts [B, T]`` int32: objects in view in each frame (Σ visible), against the digits visible in the frame;
      ``present_counts [B, T]`` int32: objects the model holds (Σ presence), in view or not — what the official
        per-sequence label counts (a model with ``shift_bound > 1`` may hold an object whose digit has left the frame);
      ``boxes [B, T, N, 4]`` float32: glimpse windows (y_min, x_min, y_max, x_max) in pixel edges, zero where absent
        (not tight boxes; module docstring);
      ``ids [B, T, N]`` int32: object identities, stable across frames while an object is tracked, −1 where absent;
      ``presence [B, T, N]`` bool; ``visible [B, T, N]`` bool: present and in view
        (``ocr_jax.evaluation.sqair.visible_objects``: the run's ``eval.visible_min_fraction`` of the glimpse window
        on the canvas and, where ``eval.visible_min_ink`` > 0, a brightest drawn pixel on it of at least that);
      ``z_what [B, T, N, D]``; ``z_where [B, T, N, 4]`` (spatial-transformer parameters (s_x, s_y, t_x, t_y),
        ocr_jax.spatial_transformer convention; boxes are ``z_where_to_box`` of it); ``z_where_raw [B, T, N, 4]``: the
        Gaussian latent ẑ_where, ``z_where = model.to_transform(z_where_raw)``: the latents, meaningful where present;
      ``log_weight [B]``: the chosen particle's log importance weight log p(x, z) − log q(z | x).
    Sequence i uses ``jax.random.fold_in(key, i)``; ``batch_size`` sequences run per jitted call.
    ``posterior_means=True``: every z_where and z_what at its posterior mean, the presences still sampled (a
    deterministic representation, e.g. for a classifier on z_what; ``log_weight`` is then no importance weight).
    """
    _check_run(run, "sqair", "infer_sequences")
    _check_positive(num_particles=num_particles, batch_size=batch_size)
    c = run.model.config
    x = _as_float32(
        frames,
        name="frames",
        axes=("batch", "time", "height", "width"),
        image_shape=c.image_shape,
        frame_source=f"image_shape={tuple(c.image_shape)}",
        max_time=c.max_seq_len,
    )
    out = _batched(
        functools.partial(
            _sqair_best_particle, run.model, run.params, num_particles=num_particles, posterior_means=posterior_means
        ),
        x,
        _as_key(key),
        batch_size,
    )
    from ocr_jax.evaluation import sqair as sqair_eval

    presence = out["z_pres"] > 0.5
    # The transform on the host, as the evaluation's boxes (ocr_jax.evaluation.sqair.boxes_of_raw): bit for bit the
    # same boxes (inside the jitted inference XLA's fusion may round its last bit differently).
    z_where = np.asarray(run.model.to_transform(jnp.asarray(out["z_where_raw"])))
    task = _task_of(run)
    boxes = np.asarray(sqair_eval.boxes_of(task, z_where), np.float32)
    visible = sqair_eval.task_visible_objects(task, run.params, out["z_what"], out["z_where_raw"], presence)
    return dict(
        counts=visible.sum(-1).astype(np.int32),
        present_counts=presence.sum(-1).astype(np.int32),
        visible=visible,
        boxes=np.where(presence[..., None], boxes, np.float32(0.0)),
        ids=np.where(presence, out["ids"], -1).astype(np.int32),
        presence=presence,
        z_what=out["z_what"],
        z_where=z_where,
        z_where_raw=out["z_where_raw"],
        log_weight=out["log_weight"],
    )


# ---- AIR ----------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles",))
def _air_best_particle(model, params, images, keys, continue_prob, *, num_particles: int) -> dict[str, jax.Array]:
    """``images [B, H, W]``, ``keys [B]`` -> the best of K particles per image."""

    def one(x, key):
        out = model.infer(params, x[None], key, num_particles=num_particles, continue_prob=continue_prob)
        best = jnp.argmax(out.log_weight[0])
        boxes = out.boxes(model.config.canvas_shape)
        return dict(
            z_pres=out.z_pres[0, best],
            z_what=out.z_what[0, best],
            z_where=out.z_where[0, best],
            z_where_raw=out.z_where_raw[0, best],
            boxes=boxes[0, best],
            log_weight=out.log_weight[0, best],
        )

    return jax.vmap(one)(images, keys)


def infer_images(run: Run, images, *, key=None, num_particles: int = 1, batch_size: int = 256) -> dict[str, np.ndarray]:
    """AIR inference on ``images [B, H, W]`` (float in [0, 1] or uint8; ``H, W`` the model's canvas): the best of
    ``num_particles`` particles per image (largest log-weight).

    Returns numpy arrays (N = the model's ``max_steps``):
      ``counts [B]`` int32; ``boxes [B, N, 4]`` float32: glimpse windows (y_min, x_min, y_max, x_max) in pixel edges,
      zero where absent (not tight boxes; module docstring); ``presence [B, N]`` bool (present steps come first);
      ``z_what [B, N, D]``; ``z_where [B, N, 3|4]`` (spatial-transformer parameters, ocr_jax.spatial_transformer
      convention; boxes are ``z_where_to_box`` of it); ``z_where_raw [B, N, 3|4]``: the Gaussian latent ẑ_where
      (``z_where = ocr_jax.models.air.where_transform(z_where_raw, config)``); ``log_weight [B]``: the chosen
      particle's log importance weight.
    The count prior's continue probability is the run's schedule at ``run.step`` (as in the training's evaluation);
    it enters the log-weights, so the choice among particles. Images are used as given, also for a run trained on
    stochastically binarised images. Image i uses ``jax.random.fold_in(key, i)``.
    """
    _check_run(run, "air", "infer_images")
    _check_positive(num_particles=num_particles, batch_size=batch_size)
    canvas = tuple(run.model.config.canvas_shape)
    x = _as_float32(
        images,
        name="images",
        axes=("batch", "height", "width"),
        image_shape=canvas,
        frame_source=f"canvas_shape={canvas}",
    )
    rho = jnp.asarray(_task_of(run).continue_prob(run.step), jnp.float32)
    out = _batched(
        lambda chunk, keys: _air_best_particle(run.model, run.params, chunk, keys, rho, num_particles=num_particles),
        x,
        _as_key(key),
        batch_size,
    )
    presence = out["z_pres"] > 0.5
    return dict(
        counts=presence.sum(-1).astype(np.int32),
        boxes=out["boxes"].astype(np.float32),
        presence=presence,
        z_what=out["z_what"],
        z_where=out["z_where"],
        z_where_raw=out["z_where_raw"],
        log_weight=out["log_weight"],
    )

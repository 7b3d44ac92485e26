"""`train_and_evaluate(config, workdir)`: the training loop, one linear function to read top to bottom.

Config fields used here (see experiments/configs/toy_vae.py for a complete example):

    task, task_module, task_config        which Task to build (ocr_jax.training.tasks)
    seed, global_batch_size, num_steps
    optimizers.<group>                    one optimiser config per parameter group (ocr_jax.training.optimizers)
    log_every, eval_every                 in steps; 0 disables evaluation
    checkpoint.every, checkpoint.max_to_keep, checkpoint.restore_from (optional: start from another run's dir)
    headline_metric (optional; default task.headline_metric), progress_bar (bool)
    stop_when (optional): {metric, at_least}: stop (after saving a checkpoint) at the first periodic evaluation whose
                          scalar ``metric`` (e.g. "eval/count_accuracy") is >= ``at_least``
    stop_after_seconds (optional): save a checkpoint and return once this much wall-clock time has passed in the
                          loop, so a long run is a sequence of bounded commands (rerun the same one to continue)
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging
import numpy as np
import tqdm

from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training import tasks
from ocr_jax.training.checkpoint import Checkpointer, CheckpointError
from ocr_jax.training.optimizers import make_optimizers
from ocr_jax.training.train_step import TrainState, init_train_state, make_train_step, step_key
from ocr_jax.training.writers import MetricWriter, StopRequest, local_copy, split_eval_results, to_host


class NonFiniteError(FloatingPointError):
  """Raised when a step produced NaN/Inf; the last good state and the offending batch have been saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config.task` for `config.num_steps` steps, resuming from ``<workdir>/checkpoints`` if present.

  Returns the final state. Raises KeyboardInterrupt after saving a checkpoint if stopped by SIGINT/SIGTERM, and
  NonFiniteError (after saving the last good checkpoint and the batch) if a step is not finite.
  """
  # ---- Where we are: processes, devices, the data mesh. ------------------------------------------------------
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_main = process_index == 0
  mesh = mesh_lib.make_data_mesh()
  batch_size = config.global_batch_size
  if batch_size % jax.device_count():
    raise ValueError(f"global_batch_size={batch_size} must be divisible by the {jax.device_count()} devices")
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---- The model (a Task) and its optimisers, one per parameter group. ---------------------------------------
  task = tasks.make_task(config)
  optimizers, schedules = make_optimizers(config.optimizers)
  headline = config.get("headline_metric") or getattr(task, "headline_metric", None)

  def batches_from(step: int):
    return task.train_batches(seed=config.seed, start_step=step, global_batch_size=batch_size,
                              process_index=process_index, process_count=process_count)

  # ---- State: initialise (already replicated over the mesh), then resume from the latest checkpoint. --------
  state = init_train_state(task, optimizers, config.seed, next(batches_from(0)), mesh)
  ckpt_cfg = config.checkpoint
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=ckpt_cfg.max_to_keep)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
  elif ckpt_cfg.get("restore_from"):
    # Warm start from another run; it must exist and be readable (CheckpointError otherwise).
    source = Checkpointer(ckpt_cfg.restore_from, must_exist=True)
    state = source.restore(state)
    source.close()
  start_step = int(to_host(state.step))

  # ---- The train step: compiled once per batch shape, batch sharded over "data", state donated. ---------------
  # Compiled ahead of time when a batch shape is first seen, so compile time is measured and logged. A task whose
  # batches change shape (SQAIR's curriculum slices sequences to the current length) gets one compiled step per shape.
  if start_step >= config.num_steps:
    logging.info("checkpoint step %d >= num_steps=%d: nothing to train", start_step, config.num_steps)
    checkpointer.close()
    return state
  batches = batches_from(start_step)
  next_key = jax.jit(step_key, out_shardings=mesh_lib.replicated(mesh))
  jitted_step = make_train_step(task, optimizers, mesh=mesh, schedules=schedules)
  compiled_steps: dict[Any, Any] = {}

  def train_step(state, sharded_batch, key):
    """The compiled step for this batch's shapes (compiled and its time logged the first time they are seen)."""
    shapes = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(sharded_batch))
    if shapes not in compiled_steps:
      t0 = time.perf_counter()
      compiled_steps[shapes] = jitted_step.lower(state, sharded_batch, key).compile()
      writer.write_scalars(int(to_host(state.step)), {"compile_seconds": time.perf_counter() - t0})
    return compiled_steps[shapes](state, sharded_batch, key)

  # ---- Writers: metrics.jsonl + TensorBoard on process 0, progress bar. ---------------------------------------
  writer = MetricWriter(workdir)  # also used by train_step above, which first runs in the loop below
  progress = tqdm.tqdm(total=config.num_steps, initial=start_step, disable=not (is_main and config.progress_bar),
                       dynamic_ncols=True, unit="step")
  evaluate = getattr(task, "evaluate", None)

  stop_when = config.get("stop_when")

  def run_eval(step: int) -> bool:
    """Runs the eval hook; True if ``stop_when`` is met."""
    if evaluate is None:
      return False
    scalars, images = split_eval_results(
        evaluate(local_copy(state.params), local_copy(state.model_state), step, workdir))
    writer.write_scalars(step, scalars)
    writer.write_images(step, images)
    if not stop_when:
      return False
    if stop_when.metric not in scalars:
      checkpointer.save(state)  # lose nothing: the error surfaces only at the first evaluation
      raise KeyError(f"stop_when.metric={stop_when.metric!r} is not an evaluation scalar; have {sorted(scalars)}")
    return scalars[stop_when.metric] >= stop_when.at_least

  # ---- The loop. ----------------------------------------------------------------------------------------------
  step = start_step
  last_log_time, last_log_step = time.perf_counter(), start_step
  loop_start, time_budget = time.perf_counter(), config.get("stop_after_seconds")
  try:
    with StopRequest().installed() as stop:
      while step < config.num_steps:
        if stop:  # Ctrl-C / SIGTERM arrived during the previous step: save, then exit.
          checkpointer.save(state)
          raise KeyboardInterrupt(f"{stop.signal_name} at step {step}; checkpoint saved to "
                                  f"{checkpointer.directory}. Rerun the same command to resume.")
        local_batch = next(batches)
        state, metrics = train_step(state, mesh_lib.shard_batch(local_batch, mesh), next_key(state.rng, state.step))

        # NaN/Inf: the step returned the unchanged (last good) state; keep it and the batch, then stop.
        if not bool(to_host(metrics["finite"])):
          saved = checkpointer.save(state)
          path = os.path.join(workdir, f"nonfinite_batch_step{step}_process{process_index}.npz")
          np.savez(path, **{k: np.asarray(v) for k, v in local_batch.items()})
          bad = sorted(k for k, v in to_host(metrics).items() if not np.all(np.isfinite(v)))
          raise NonFiniteError(f"non-finite values at step {step} in {bad}; the update was not applied. Saved the "
                               f"last good state as checkpoint {saved} and this process's batch to {path}.")
        step += 1
        progress.update(1)

        if step % config.log_every == 0 or step == config.num_steps:
          host = to_host(metrics)
          now = time.perf_counter()
          host["steps_per_sec"] = (step - last_log_step) / max(now - last_log_time, 1e-9)
          last_log_time, last_log_step = now, step
          writer.write_scalars(step, {k: v for k, v in host.items() if k != "finite"})
          if headline in host:
            progress.set_postfix({headline: f"{float(host[headline]):.4g}"})
        if config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
          if run_eval(step):
            logging.info("step %d: %s >= %s, stopping early", step, stop_when.metric, stop_when.at_least)
            writer.write_scalars(step, {"stopped_early": 1.0})
            break
        if step % ckpt_cfg.every == 0:
          checkpointer.save(state)
        if time_budget and time.perf_counter() - loop_start >= time_budget:
          logging.info("step %d: stop_after_seconds=%s reached; saving a checkpoint (rerun to continue)", step,
                       time_budget)
          writer.write_scalars(step, {"stopped_on_time": 1.0})
          break

      checkpointer.save(state)  # on normal or early exit (no-op if the last periodic save was this step).
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  return state


def restore_params(config: ml_collections.ConfigDict, workdir: str, task, example_batch) -> tuple[Any, int]:
  """The parameters of the latest checkpoint in ``<workdir>/checkpoints`` (on the host) and its step.

  ``example_batch`` (one global batch, numpy) gives the shapes the state is initialised with before restoring.
  Raises CheckpointError if the directory is missing or holds no readable checkpoint.
  """
  optimizers, _ = make_optimizers(config.optimizers)
  state = init_train_state(task, optimizers, config.seed, example_batch, mesh_lib.make_data_mesh())
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), must_exist=True)
  try:
    state = checkpointer.restore(state)
  finally:
    checkpointer.close()
  return jax.device_get(state.params), int(jax.device_get(state.step))

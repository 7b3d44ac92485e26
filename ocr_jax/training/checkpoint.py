"""Orbax checkpoints of the `TrainState`: periodic, keep-last-N, resume from the latest, refuse to touch bad ones.

Layout: ``<directory>/<step>/`` as written by `orbax.checkpoint.CheckpointManager` (one `StandardSave` item holding
step, params, opt_states, model_state, rng). The data position is the step itself (batches are a pure function of
(seed, step)), so nothing else is needed to continue bit-identically.

Saving is synchronous: the train step donates the state's buffers, so an asynchronous save could otherwise read
buffers that the next step has reused.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from ocr_jax.training.train_step import TrainState


class CheckpointError(RuntimeError):
  """A checkpoint directory that exists but cannot be used (corrupt, unfinished, not a directory) or is missing."""


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` that validates the directory before anything is written to it."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, must_exist: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"checkpoint path {self.directory} exists but is not a directory")
    if must_exist and not os.path.isdir(self.directory):
      raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not must_exist,
                                             enable_async_checkpointing=False))
    self._check_no_unfinished_steps()

  def _check_no_unfinished_steps(self) -> None:
    """A numbered step directory that orbax does not list as a finished checkpoint means a crash mid-save or a
    damaged copy; we stop rather than silently fall back to an older step or to scratch (which would later rotate
    the good checkpoints away under keep-last-N)."""
    if not os.path.isdir(self.directory):
      return
    # Orbax lists any numbered directory as a step; a finalised one also has its step metadata file.
    finished = {s for s in self._manager.all_steps()
                if os.path.exists(os.path.join(self.directory, str(s), "_CHECKPOINT_METADATA"))}
    numbered = {int(n) for n in os.listdir(self.directory) if n.isdigit()}
    unfinished = sorted(numbered - finished)
    if unfinished:
      raise CheckpointError(
          f"checkpoint directory {self.directory} has step directories {unfinished} that are not finished orbax "
          f"checkpoints (finished: {sorted(finished)}). Nothing was modified. Move them away (or restore them) and "
          "rerun.")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, *, force: bool = True) -> int:
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return step  # already saved (e.g. periodic save followed by the final save at the same step)
    self._manager.save(step, args=ocp.args.StandardSave(state.to_dict()), force=force)
    self._manager.wait_until_finished()
    return step

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """Restores `step` (default: latest) into the structure, shapes, dtypes and shardings of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint to restore in {self.directory}")

    def abstract(x):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    target = jax.tree.map(abstract, like.to_dict())
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types (FileNotFoundError, ValueError, tensorstore errors).
      detail = str(e) if len(str(e)) < 600 else str(e)[:600] + " ..."  # tensorstore errors embed whole specs
      raise CheckpointError(
          f"could not restore checkpoint step {step} from {self.directory}: {type(e).__name__}: {detail}\n"
          "The checkpoint directory was not modified. If this checkpoint is damaged, move it away to resume from "
          "an older step, or choose another --workdir.") from e
    return TrainState(**restored)

  def restore_items(self, target: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restores only the top-level items of the saved `TrainState` named in `target` (e.g. ``{"params": ...}``),
    into its structure, shapes, dtypes and shardings (arrays or `jax.ShapeDtypeStruct` with a sharding); the other
    items (optimiser states, ...) are not read, so no optimiser is needed. For inference (`ocr_jax.api.load_run`).

    Raises CheckpointError if there is no such step or the items do not match the checkpoint (missing keys, other
    shapes)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint to restore in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; steps saved: {self.all_steps()}")

    def abstract(x):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    target = jax.tree.map(abstract, dict(target))
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    try:
      return self._manager.restore(step, args=args)
    except Exception as e:  # orbax raises many types (KeyError, ValueError, tensorstore errors).
      detail = str(e) if len(str(e)) < 600 else str(e)[:600] + " ..."
      raise CheckpointError(f"could not restore {sorted(target)} of checkpoint step {step} from {self.directory}: "
                            f"{type(e).__name__}: {detail}") from e

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

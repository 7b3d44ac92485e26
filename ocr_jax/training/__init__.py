"""Training infrastructure: data mesh, per-group optimisers, the jitted train step, checkpoints, the loop.

See docs/training.md. Public API (attributes are imported lazily, so `from ocr_jax.training.tasks import register` in
a task module does not pull in orbax or tensorboardX; the tasks are in ocr_jax.tasks, their batches come from
ocr_jax.data.deterministic_batches):
  mesh:        maybe_initialize_distributed, make_data_mesh, shard_batch, replicated, batch_sharding, DATA_AXIS
  tasks:       Task, register, make_task, registered, task_module_name
  optimizers:  make_optimizer, make_optimizers, make_schedule
  train_step:  TrainState, init_train_state, make_train_step, step_key
  checkpoint:  Checkpointer, CheckpointError
  train:       train_and_evaluate, NonFiniteError
"""

import importlib

_EXPORTS = {
    "ocr_jax.training.mesh": (
        "maybe_initialize_distributed",
        "make_data_mesh",
        "shard_batch",
        "replicated",
        "batch_sharding",
        "DATA_AXIS",
    ),
    "ocr_jax.training.tasks": ("Task", "register", "make_task", "registered", "task_module_name"),
    "ocr_jax.training.optimizers": ("make_optimizer", "make_optimizers", "make_schedule"),
    "ocr_jax.training.train_step": ("TrainState", "init_train_state", "make_train_step", "step_key"),
    "ocr_jax.training.checkpoint": ("Checkpointer", "CheckpointError"),
    "ocr_jax.training.train": ("train_and_evaluate", "NonFiniteError"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ocr_jax.training' has no attribute {name!r}")

"""Training infrastructure: data mesh, per-group optimisers, the jitted train step, checkpoints, the loop.

See docs/training.md. Public API:
  mesh:        maybe_initialize_distributed, make_data_mesh, shard_batch, replicated, batch_sharding
  tasks:       Task, register, make_task, registered
  optimizers:  make_optimizer, make_optimizers, make_schedule
  train_step:  TrainState, init_train_state, make_train_step, step_key
  checkpoint:  Checkpointer, CheckpointError
  data:        deterministic_batches
  train:       train_and_evaluate, NonFiniteError
"""

from ocr_jax.training.checkpoint import CheckpointError, Checkpointer
from ocr_jax.training.data import deterministic_batches
from ocr_jax.training.mesh import (DATA_AXIS, batch_sharding, make_data_mesh, maybe_initialize_distributed,
                                   replicated, shard_batch)
from ocr_jax.training.optimizers import make_optimizer, make_optimizers, make_schedule
from ocr_jax.training.tasks import Task, make_task, register, registered
from ocr_jax.training.train import NonFiniteError, train_and_evaluate
from ocr_jax.training.train_step import TrainState, init_train_state, make_train_step, step_key

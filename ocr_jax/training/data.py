"""Deterministic, resumable batches: the batch of step s is a pure function of (seed, s)."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def deterministic_batches(arrays: dict[str, np.ndarray], global_batch_size: int, *, seed: int, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's share of the global batch for steps ``start_step, start_step + 1, ...`` forever.

  Epoch e visits the examples in the order ``np.random.default_rng([seed, e]).permutation(n)`` (the tail that does
  not fill a batch is dropped); step s is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``. Process p
  gets rows ``[p * B / P, (p + 1) * B / P)`` of each global batch, so the global batch does not depend on the number
  of processes, and resuming at `start_step` needs no replay.
  """
  n = len(next(iter(arrays.values())))
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} not divisible by {process_count} processes")
  steps_per_epoch = n // global_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"dataset of {n} examples is smaller than one global batch of {global_batch_size}")
  local = global_batch_size // process_count
  epoch, perm = None, None
  step = start_step
  while True:
    e, i = divmod(step, steps_per_epoch)
    if e != epoch:
      epoch, perm = e, np.random.default_rng([seed, e]).permutation(n)
    rows = perm[i * global_batch_size + process_index * local: i * global_batch_size + (process_index + 1) * local]
    yield {k: v[rows] for k, v in arrays.items()}
    step += 1

"""What the tasks do to arrays on their way to a model: deterministic, resumable batches sharded by process, and the
one uint8 -> float conversion.

Batches. The batch of step s is a pure function of (seed, s): every process computes the same global permutation of
each epoch and takes its own contiguous slice of each global batch (process p of P gets rows [p·B/P, (p+1)·B/P) of
the global batch of size B). So the union over processes is exactly the global batch, the shards are disjoint, no
communication is needed, and a run resumed at step s sees the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


def to_unit_float(x):
    """Pixels -> float32 ``jax.Array`` in [0, 1] (the models' input convention): integer pixels (uint8 in 0..255)
    divided by 255; floating pixels passed through (as float32). Works on numpy arrays and under ``jit``.

    The models themselves reject integer inputs (``ocr_jax.validation``); the tasks convert their uint8 data with
    this (AIR's optional stochastic binarisation is a separate step, ``ocr_jax.tasks.air``).
    """
    import jax.numpy as jnp  # here, so that the data package imports without jax

    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch`; identical on every process."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def deterministic_batches(
    arrays: Mapping[str, np.ndarray],
    global_batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's share of the global batch for steps ``start_step, start_step + 1, ...`` forever.

    Args:
      arrays: name -> array with a shared leading ``examples`` axis (n examples).
      global_batch_size: B; each process gets B // process_count rows.
      seed: epoch e visits the examples in the order ``np.random.default_rng([seed, e]).permutation(n)`` (the tail
        that does not fill a batch is dropped).
      start_step: step s is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so resuming at
        `start_step` needs no replay.
      process_index, process_count: this process and how many there are (e.g. ``jax.process_index()``); process p
        gets rows ``[p * B / P, (p + 1) * B / P)`` of each global batch, so the global batch does not depend on the
        number of processes.
    """
    if not arrays:
        raise ValueError("arrays is empty")
    sizes = {k: len(v) for k, v in arrays.items()}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError(f"arrays have different leading sizes: {sizes}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index/process_count: {process_index}/{process_count}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the number of "
            f"processes {process_count}"
        )
    steps_per_epoch = n // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"dataset of {n} examples is smaller than one global batch of {global_batch_size}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0; got {start_step}")
    local = global_batch_size // process_count
    epoch, perm = None, None
    step = start_step
    while True:
        e, i = divmod(step, steps_per_epoch)
        if e != epoch:
            epoch, perm = e, epoch_permutation(n, seed, e)
        start = i * global_batch_size + process_index * local
        rows = perm[start : start + local]
        yield {k: v[rows] for k, v in arrays.items()}
        step += 1

"""Numpy batch iterators, sharded by process for multi-host data parallelism.

Every process computes the same global permutation (a function of `seed` and the epoch only) and takes its own
contiguous slice of each global batch: process p of P gets rows [p·B/P, (p+1)·B/P) of the global batch of size B.
So the union over processes is exactly the global batch, the shards are disjoint, and no communication is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W] in 0..255 → float32 in [0, 1] (the models' input convention)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def epoch_permutation(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of examples in `epoch`; identical on every process."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_iterator(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    epochs: int | None = None,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's share of each global batch, as a dict of numpy arrays.

    Args:
      arrays: name → array with a shared leading `examples` axis.
      batch_size: the *global* batch size B; each process gets B // process_count rows.
      seed: the shuffle seed; epoch e uses the permutation of `np.random.default_rng([seed, e])`.
      shuffle: reshuffle every epoch (else the natural order).
      process_index, process_count: this process and how many there are (e.g. `jax.process_index()`).
      epochs: number of passes; None = forever.
      drop_remainder: drop the last incomplete global batch of each epoch. If False, the last batch is smaller and is
        split as evenly as possible across processes (shapes then differ between processes; avoid under `jit`).
    """
    if not arrays:
        raise ValueError("arrays is empty")
    sizes = {k: len(v) for k, v in arrays.items()}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError(f"arrays have different leading sizes: {sizes}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index/process_count: {process_index}/{process_count}")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
    if drop_remainder and n < batch_size:
        raise ValueError(f"{n} examples cannot fill one batch of {batch_size} with drop_remainder=True")
    epoch = 0
    while epochs is None or epoch < epochs:
        order = epoch_permutation(n, seed, epoch, shuffle)
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            global_rows = order[start : min(start + batch_size, stop)]
            local = np.array_split(global_rows, process_count)[process_index]
            yield {k: np.asarray(v[local]) for k, v in arrays.items()}
        epoch += 1

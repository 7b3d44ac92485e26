"""Device mesh, shardings and multi-process start-up for data-parallel training.

Data parallelism in ocr_jax is declared, not hand-rolled: one 1-D mesh axis named ``data`` spans every device of
every process; parameters and optimiser states are replicated over it and the batch is split along its leading
(``batch``) axis. ``jax.jit`` with these shardings inserts the cross-device all-reduce of the gradients itself.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several": JAX's own names, so a launcher that already
# sets them for `jax.distributed.initialize` needs nothing else.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when this process is part of a multi-process run.

    Must run before any other JAX call. Returns True if it initialised the distributed runtime.

    Multi-process is detected from (in order): explicit arguments; the environment variables
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``; ``auto=True`` or the environment variable
    ``OCR_JAX_DISTRIBUTED=1``, which call ``jax.distributed.initialize()`` with no arguments so JAX detects the
    cluster itself (Cloud TPU pods, SLURM, Open MPI). With none of these it does nothing (single process).
    On CPU, cross-process collectives use gloo (JAX's default ``jax_cpu_collectives_implementation``).
    """
    if jax.distributed.is_initialized():
        return False
    if auto is None:
        auto = os.environ.get("OCR_JAX_DISTRIBUTED", "0") not in ("", "0", "false", "False")
    env = {name: os.environ.get(name) for name in _DISTRIBUTED_ENV}
    num_processes = num_processes if num_processes is not None else _int_or_none(env["JAX_NUM_PROCESSES"])
    process_id = process_id if process_id is not None else _int_or_none(env["JAX_PROCESS_ID"])
    coordinator_address = coordinator_address or env["JAX_COORDINATOR_ADDRESS"]
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not (explicit or auto):
        return False
    if explicit and num_processes == 1:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def _int_or_none(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def make_data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over all devices of all processes (or over `devices`).

    The axis is of type ``Auto`` (sharding propagated by the compiler), so model code (vmaps over particles, scans over
    objects) needs no sharding annotations: only the batch's input sharding is declared.
    """
    auto = (jax.sharding.AxisType.Auto,)
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=auto)
    devices = np.asarray(devices).reshape(-1)
    return Mesh(devices, (DATA_AXIS,), axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimiser states, model state, keys and metrics: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of every batch array: split along its leading ``batch`` axis over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles the global batch from each process's share.

    Args:
      local_batch: pytree of numpy arrays ``[local_batch, ...]``; process p holds global rows
        ``[p * local_batch, (p + 1) * local_batch)`` (what `ocr_jax.data.deterministic_batches` yields).
      mesh: the data mesh.

    Returns:
      The same pytree of global `jax.Array`s ``[local_batch * process_count, ...]`` sharded over ``data``.
    """
    sharding = batch_sharding(mesh)
    num_shards = mesh.shape[DATA_AXIS]

    def put(x):
        x = np.asarray(x)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % num_shards:
            raise ValueError(
                f"global batch size {global_rows} is not divisible by the {num_shards} devices of the 'data' axis"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)

"""Run as a script in a subprocess with several simulated CPU devices (tests of AIR and SQAIR):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/sharded_step_check.py CONFIG_MODULE VARIANT

One train step of the config's task on the same global batch of 8, on 1 device and on all devices (the batch sharded
over the ``data`` mesh axis); the updated parameters must agree. Prints ``OK`` on success.
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ocr_jax.training import mesh as mesh_lib  # noqa: E402
from ocr_jax.training import tasks  # noqa: E402
from ocr_jax.training.optimizers import make_optimizers  # noqa: E402
from ocr_jax.training.train_step import init_train_state, make_train_step  # noqa: E402


def updated_params(config, task, devices, batch):
    optimizers, schedules = make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh(devices)
    state = init_train_state(task, optimizers, 0, batch, mesh)
    step = make_train_step(task, optimizers, mesh=mesh, schedules=schedules, donate=False)
    state, _ = step(state, mesh_lib.shard_batch(batch, mesh), jax.random.PRNGKey(7))
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])


def run_in_subprocess(config_module: str, variant: str, num_devices: int = 4) -> None:
    """Runs this script with ``num_devices`` simulated CPU devices; fails with its stderr if it does not print OK."""
    import subprocess

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), config_module, variant],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def main(config_module: str, variant: str) -> None:
    config = importlib.import_module(config_module).get_config(variant)
    task = tasks.make_task(config)
    batch = next(task.train_batches(seed=0, start_step=0, global_batch_size=8, process_index=0, process_count=1))
    assert jax.device_count() > 1, jax.device_count()
    one = updated_params(config, task, jax.devices()[:1], batch)
    many = updated_params(config, task, jax.devices(), batch)
    np.testing.assert_allclose(one, many, rtol=2e-4, atol=2e-6)
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])

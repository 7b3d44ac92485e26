"""Data parallelism: one global batch gives the same update on 1 device, on 8 simulated CPU devices, and on two
processes (jax.distributed over loopback, gloo collectives) with 2 devices each.

Each configuration runs in its own subprocess (the device count is fixed when JAX starts): this file doubles as the
worker, ``python tests/training/test_distributed.py worker OUT [COORDINATOR NUM_PROCESSES PROCESS_ID]``.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
GLOBAL_BATCH = 16
NUM_STEPS = 2


def worker(out, coordinator=None, num_processes=None, process_id=None):
    """Two train steps from the same init on the global batches of steps 0, 1; writes results to `out` (and, in a
    single-process run, also the same on a mesh of only the first device to `<out>.1dev.npz`)."""
    from ocr_jax.training import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed(
        coordinator,
        None if num_processes is None else int(num_processes),
        None if process_id is None else int(process_id),
    )
    import jax

    if jax.process_count() == 1 and jax.device_count() > 1:
        run(out.replace(".npz", ".1dev.npz"), jax.devices()[:1])
    run(out, None)


def run(out, devices):
    import jax

    from ocr_jax.configs import toy_vae as toy_vae_config
    from ocr_jax.tasks import toy_vae
    from ocr_jax.training import mesh as mesh_lib
    from ocr_jax.training import optimizers
    from ocr_jax.training import train_step as train_step_lib
    from ocr_jax.training.writers import to_host

    config = toy_vae_config.get_config("quick")
    config.task_config.hidden = 8
    task = toy_vae.ToyVAETask(config.task_config)
    opts, schedules = optimizers.make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh(devices)
    batches = task.train_batches(
        seed=0,
        start_step=0,
        global_batch_size=GLOBAL_BATCH,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    first = next(batches)
    state = train_step_lib.init_train_state(task, opts, 0, first, mesh)
    initial = to_host(state.params)
    step = train_step_lib.make_train_step(task, opts, mesh=mesh, schedules=schedules)
    next_key = jax.jit(train_step_lib.step_key, out_shardings=mesh_lib.replicated(mesh))
    local = first
    for _ in range(NUM_STEPS):
        batch = mesh_lib.shard_batch(local, mesh)
        assert batch["image"].shape[0] == GLOBAL_BATCH
        assert len(batch["image"].sharding.device_set) == mesh.size
        state, metrics = step(state, batch, next_key(state.rng, state.step))
        local = next(batches)
    result = {"device_count": mesh.size, "process_count": jax.process_count()}
    flat = lambda prefix, tree: {
        prefix + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    result.update(flat("params/", to_host(state.params)))
    result.update(flat("initial/", initial))
    result.update(flat("metrics/", to_host(metrics)))
    result.update(flat("model_state/", to_host(state.model_state)))
    if jax.process_index() == 0:
        np.savez(out, **result)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, devices_per_process, *distributed):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}", PYTHONPATH=REPO
    )
    return subprocess.Popen(
        [sys.executable, HERE, "worker", str(out), *map(str, distributed)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts every configuration at once (they are independent) and waits for all of them."""
    tmp = tmp_path_factory.mktemp("distributed")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = {
        "8dev": [launch(tmp / "8dev.npz", 8)],  # also writes 8dev.1dev.npz: the same on a 1-device mesh
        "2proc": [launch(tmp / "2proc.npz", 2, coordinator, 2, pid) for pid in range(2)],
    }
    results = {}
    for name, ps in procs.items():
        for p in ps:
            try:
                output, _ = p.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                for q in ps:
                    q.kill()
                pytest.fail(f"{name} worker timed out")
            assert p.returncode == 0, f"{name} worker failed:\n{output[-4000:]}"
        results[name] = dict(np.load(tmp / f"{name}.npz"))
    results["1dev"] = dict(np.load(tmp / "8dev.1dev.npz"))
    return results


def assert_same_update(a, b):
    keys = sorted(k for k in a if k.startswith(("params/", "metrics/", "model_state/")))
    assert keys == sorted(k for k in b if k.startswith(("params/", "metrics/", "model_state/")))
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_one_device_vs_eight_simulated_devices(runs):
    one, eight = runs["1dev"], runs["8dev"]
    assert int(one["device_count"]) == 1 and int(eight["device_count"]) == 8
    for k in one:
        if k.startswith("initial/"):
            np.testing.assert_array_equal(one[k], eight[k])  # same initialisation everywhere
            assert not np.allclose(one[k], one["params/" + k[len("initial/") :]])  # and the steps changed every param
    assert_same_update(one, eight)


def test_two_processes_on_loopback_vs_one_process(runs):
    one, two = runs["1dev"], runs["2proc"]
    assert int(two["process_count"]) == 2 and int(two["device_count"]) == 4
    assert_same_update(one, two)  # gradient norms per group (metrics/grad_norm/*) and updated params agree


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    worker(*sys.argv[2:])

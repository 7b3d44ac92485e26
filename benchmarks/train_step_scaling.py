r"""Steps/s and compile time of the train step on 1 vs N simulated CPU devices (not a test).

  python benchmarks/train_step_scaling.py [--config=toy_vae:quick] [--config.FIELD=VALUE ...] [--devices=1,8]
      [--steps=200] [--global_batch_size=64]

Each device count runs in a fresh subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N (the count is
fixed when JAX starts) and this command's flags (the same config and overrides). The same global batch size is used
for every N, so the ratio is strong scaling. On a CPU host the "devices" share the same cores, so N > 1 measures
sharding overhead, not a speed-up; the load average is recorded because other processes on the machine distort the
numbers. Any registered task works (via its config).
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from ocr_jax import cli, configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = configs.define_config_flag("config", "toy_vae:quick", "Config to measure")
flags.declare_key_flag("config")  # listed by --help with this script's flags (it is defined in ocr_jax.configs)
_DEVICES = flags.DEFINE_list("devices", ["1", "8"], "simulated CPU device counts, comma-separated")
_STEPS = flags.DEFINE_integer("steps", 200, "timed train steps per device count")
_GLOBAL_BATCH_SIZE = flags.DEFINE_integer("global_batch_size", 64, "the same for every device count")
_WORKER = flags.DEFINE_bool("worker", False, "internal: measure in this process (the parent starts one per count)")


def measure(config_arg, steps: int, global_batch_size: int, devices=None) -> dict:
    """Steps/s of the train step of ``config_arg`` (a config NAME[:VARIANT], FILE.py[:VARIANT] or a ConfigDict) with
    the batch sharded over ``devices`` (default: all)."""
    import jax

    from ocr_jax import configs
    from ocr_jax.training import mesh as mesh_lib
    from ocr_jax.training import optimizers, tasks
    from ocr_jax.training import train_step as ts

    config = configs.get_config(config_arg) if isinstance(config_arg, str) else config_arg
    task = tasks.make_task(config)
    opts, schedules = optimizers.make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh(devices)
    batches = task.train_batches(
        seed=0, start_step=0, global_batch_size=global_batch_size, process_index=0, process_count=1
    )
    local = [next(batches) for _ in range(8)]
    state = ts.init_train_state(task, opts, 0, local[0], mesh)
    sharded = [mesh_lib.shard_batch(b, mesh) for b in local]
    next_key = jax.jit(ts.step_key, out_shardings=mesh_lib.replicated(mesh))
    t0 = time.perf_counter()
    step = (
        ts.make_train_step(task, opts, mesh=mesh, schedules=schedules)
        .lower(state, sharded[0], next_key(state.rng, state.step))
        .compile()
    )
    compile_s = time.perf_counter() - t0
    for i in range(5):  # warm-up
        state, metrics = step(state, sharded[i % 8], next_key(state.rng, state.step))
    jax.block_until_ready(state)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, sharded[i % 8], next_key(state.rng, state.step))
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - t0
    return dict(
        devices=jax.device_count(),
        task=config.task,
        global_batch_size=global_batch_size,
        steps=steps,
        steps_per_s=steps / elapsed,
        compile_s=compile_s,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        cpu_count=os.cpu_count(),
    )


def main(argv):
    cli.start_script(argv)
    if _WORKER.value:
        print("RESULT " + json.dumps(measure(_CONFIG.value, _STEPS.value, _GLOBAL_BATCH_SIZE.value)))
        return

    results = []
    for n in [int(d) for d in _DEVICES.value]:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--worker"],  # the config and its overrides
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if out.returncode:
            sys.exit(f"worker with {n} devices failed:\n{out.stderr[-4000:]}")
        result = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT ") :])
        results.append(result)
        print(
            f"{n:2d} device(s): {result['steps_per_s']:8.1f} steps/s   compile {result['compile_s']:5.2f} s   "
            f"load avg {result['loadavg_before'][0]:.2f} -> {result['loadavg_after'][0]:.2f} "
            f"({result['cpu_count']} CPUs)"
        )
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['devices']} vs {base['devices']} device(s): "
            f"steps/s ratio {r['steps_per_s'] / base['steps_per_s']:.2f}, "
            f"compile-time ratio {r['compile_s'] / base['compile_s']:.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)

r"""AIR training throughput and achieved FLOP/s against this machine's matmul peak (not a test).

  python benchmarks/air_throughput.py [--steps=50] [--repeats=5] [--out=runs/bench/air_throughput.json] [--sweep]

Measures, in one process and one run:
  * the machine's float32 matmul peak (a 2048×2048 @ 2048×2048 product, best of several), the baseline of the ratio;
  * the AIR train step at the Pyro example's matched architecture (``air_multi_mnist.py:bench``: K = 1, NVIL
    per-step baselines, batch 64, 28×28 glimpse, 256-unit LSTM on raw pixels, 200-unit MLPs): images/s, steps/s,
    compile time, and FLOP/s from XLA's cost analysis of the compiled step;
  * the same at equal work with Pyro's example (``bench+pyro_baseline``: Pyro's NVIL baseline, an LSTM of 256 units
    plus a 200-unit head), each variant also with its step scan unrolled so that XLA counts every step's FLOPs;
  * with ``--sweep``: cost per step as the number of steps N and particles K vary (linear growth is the target).
Synthetic blob digits are used (data loading is not what is measured). The load average is recorded before and
after: other processes on these shared 2-core machines slow runs many times over, so run it alone.
The Pyro example's own speed (≈4.9 steps/s, ≈315 images/s, batch 64, on an earlier machine) is the anchor quoted in
../shared/spec/TARGETS.md. Pyro is not a dependency of this package, so it is not run from here: measure Pyro's
example on the same machine just before and after this script (docs/results.md says how it was done) and pass its
median images/s as ``--pyro_images_per_s``; every variant then prints its ratio to that figure, on the median and on
the best window.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ocr_jax import cli
from ocr_jax.configs import air_multi_mnist
from ocr_jax.tasks.air import AIRTask
from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training.optimizers import make_optimizers
from ocr_jax.training.train_step import init_train_state, make_train_step


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best observed float32 FLOP/s of an n×n matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def memory_of(compiled) -> dict:
    """XLA's buffer sizes of a compiled step in bytes ({} where the backend does not report them)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - optional information
        return {}
    names = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    return {n: int(getattr(m, n)) for n in names if m is not None and hasattr(m, n)}


def compile_train_step(task, config, *, devices=None, start_step: int = 0, num_batches: int = 8):
    """The train step exactly as training builds it, compiled on ``num_batches`` of the task's own batches from
    ``start_step`` (the state's step set to it, so step-dependent schedules are as in training), sharded over
    ``devices`` (default: all). Returns ``(compiled, state, batches, compile_seconds)``."""
    optimizers, schedules = make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh(devices)
    batches = task.train_batches(
        seed=0, start_step=start_step, global_batch_size=config.global_batch_size, process_index=0, process_count=1
    )
    local = [mesh_lib.shard_batch(next(batches), mesh) for _ in range(num_batches)]
    state = init_train_state(task, optimizers, 0, jax.device_get(local[0]), mesh)
    state = state.replace(step=jnp.full_like(state.step, start_step))
    t = time.perf_counter()
    compiled = (
        make_train_step(task, optimizers, mesh=mesh, schedules=schedules)
        .lower(state, local[0], jax.random.PRNGKey(0))
        .compile()
    )
    return compiled, state, local, time.perf_counter() - t


def with_params(state, params):
    """``state`` with its parameters replaced by host copies of ``params`` (e.g. a trained run's), placed as the
    state's own: the compiled step donates its state, so a caller's arrays must not be handed to it."""
    params = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new), old.sharding), params, state.params)
    return state.replace(params=params)


def measure(config, steps: int, repeats: int = 5, *, devices=None, num_batches: int = 8) -> dict:
    """Steps/s of the AIR train step of ``config`` on synthetic digits, its batch sharded over ``devices`` (default:
    all), cycling through ``num_batches`` distinct batches; also compile time, XLA FLOPs and buffer sizes."""
    config.task_config.data.update(
        synthetic_digits=True, num_train=max(4096, config.global_batch_size * num_batches), num_test=64
    )
    task = AIRTask(config.task_config)
    compiled, state, local, compile_s = compile_train_step(task, config, devices=devices, num_batches=num_batches)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    state, m = compiled(state, local[0], jax.random.PRNGKey(0))  # warm-up
    jax.block_until_ready(m)
    windows = []  # seconds per step in each window of `steps` steps; the best is reported, as for the matmul peak
    for w in range(repeats):
        t = time.perf_counter()
        for i in range(steps):
            state, m = compiled(state, local[i % len(local)], jax.random.PRNGKey(w * steps + i))
        jax.block_until_ready(m)
        windows.append((time.perf_counter() - t) / steps)
    dt = min(windows)
    B = config.global_batch_size
    return dict(
        batch=B,
        particles=config.task_config.num_particles,
        max_steps=task.model.config.max_steps,
        seconds_per_step=dt,
        median_seconds_per_step=float(np.median(windows)),
        steps_per_s=1 / dt,
        images_per_s=B / dt,
        compile_s=compile_s,
        flops_per_step=flops,
        flop_per_s=flops / dt,
        devices=int(mesh_lib.make_data_mesh(devices).size),
        memory=memory_of(compiled),
    )


def main(argv):
    cli.start_script(argv)
    steps, repeats, out = _STEPS.value, _REPEATS.value, _OUT.value
    load_before = os.getloadavg()
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s  (load average {load_before})", flush=True)
    results = {"device": str(jax.devices()[0]), "matmul_peak_flop_per_s": peak, "load_before": load_before}
    # Every variant: images/s, XLA GFLOP per step and the fraction of the matmul peak. A rolled scan's body is
    # counted once by XLA's cost analysis (CORRECTIONS.md), so the *_unrolled_scan rows (the same model and values,
    # the step scan unrolled) give the FLOPs a step really does.
    variants = (
        ("matched_architecture", "bench", False),
        ("matched_architecture_unrolled_scan", "bench", True),
        # Pyro's NVIL baseline (an LSTM of 256 units on [x, z^{i-1}] plus a 200-unit head): equal work with Pyro.
        ("equal_work_pyro_baseline", "bench+pyro_baseline", False),
        ("equal_work_pyro_baseline_unrolled_scan", "bench+pyro_baseline", True),
    )
    for name, variant, unroll in variants:
        config = air_multi_mnist.get_config(variant)
        config.task_config.model.scan_unroll = unroll
        row = measure(config, steps, repeats)
        row["variant"] = variant + (" (scan unrolled)" if unroll else "")
        row["fraction_of_peak"] = row["flop_per_s"] / peak
        row["ratio_to_pyro_anchor_315_images_per_s"] = row["images_per_s"] / 315.0
        row["median_images_per_s"] = row["batch"] / row["median_seconds_per_step"]
        ratio = ""
        if _PYRO.value:
            row["pyro_images_per_s"] = _PYRO.value
            row["ratio_to_pyro_median"] = row["median_images_per_s"] / _PYRO.value
            row["ratio_to_pyro_best_window"] = row["images_per_s"] / _PYRO.value
            ratio = f", {row['ratio_to_pyro_median']:.2f}x Pyro measured here on medians"
        results[name] = row
        print(
            f"{row['variant']:40s} {row['images_per_s']:7.0f} images/s (median window {row['median_images_per_s']:.0f})"
            f"  {row['flops_per_step'] / 1e9:6.2f} GFLOP/step  {row['fraction_of_peak']:6.1%} of the matmul peak"
            f"  ({row['ratio_to_pyro_anchor_315_images_per_s']:.2f}x the Pyro anchor{ratio})",
            flush=True,
        )
    if _SWEEP.value:
        sweep = []
        for n_steps in (1, 2, 3, 4, 6):
            cfg = air_multi_mnist.get_config("bench")
            cfg.task_config.model.max_steps = n_steps
            sweep.append(measure(cfg, steps, repeats))
            print(f"N={n_steps}: {sweep[-1]['seconds_per_step'] * 1e3:.1f} ms/step", flush=True)
        for k in (2, 4, 8):
            cfg = air_multi_mnist.get_config("bench")
            cfg.task_config.estimator = "vimco"
            cfg.task_config.num_particles = k
            sweep.append(measure(cfg, steps, repeats))
            print(f"K={k}: {sweep[-1]['seconds_per_step'] * 1e3:.1f} ms/step", flush=True)
        results["sweep"] = sweep
    results["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"load average after: {results['load_after']}; wrote {out}")


if __name__ == "__main__":
    # Flags are defined only when run as a script: benchmarks/gpu_check.py imports measure() next to its own flags.
    _STEPS = flags.DEFINE_integer("steps", 50, "train steps per timing window")
    _REPEATS = flags.DEFINE_integer("repeats", 5, "timing windows of --steps steps; the best is reported")
    _SWEEP = flags.DEFINE_bool("sweep", False, "also the cost per step as N (steps) and K (particles) vary")
    _OUT = flags.DEFINE_string("out", "runs/bench/air_throughput.json", "where the results go (JSON)")
    _PYRO = flags.DEFINE_float(
        "pyro_images_per_s", None, "Pyro's AIR example measured on this machine in the same session (median images/s)"
    )
    app.run(main)

r"""SQAIR train-step cost by curriculum length: steps/s and XLA FLOPs per step, the first implementation's step
against today's, side by side in one run (not a test).

  python benchmarks/sqair_step.py [--hidden=32,256] [--lengths=1,3,10] [--steps=5] [--time_unrolled]
      [--arch=mlp|conv] [--no_old] [--out=runs/bench/sqair_step.json]

For each width (MLP-SQAIR with ``hidden`` units, batch 32, K = 5, 50×50 frames, 10-frame sequences) and each
curriculum length L, two train steps are compiled and timed on the same batches:
  * ``old``: what the first implementation's step computed — all 10 frames whatever L (its curriculum masked the
    frames t ≥ L out of the log-weight) and one backward pass per parameter group (θ and φ had separate surrogates);
  * ``new``: the batch sliced to L frames (one compiled step per L) and one backward pass for both groups (VIMCO's
    θ and φ surrogates are one array).
Both use today's model code otherwise (frame 1 runs DISC only, DISC's image projection is hoisted out of the
particles and objects; these are small next to the two above).

FLOPs: XLA's cost analysis counts a ``lax.scan`` body once whatever its trip count (../shared/spec/CORRECTIONS.md),
so FLOPs are counted on a copy of the step with every inference scan unrolled (``SQAIRConfig.scan_unroll``), which
computes the same values; the timed step is the rolled one. The load average is recorded before and after: run it
alone — a second busy process slows a two-thread run many times over.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from ocr_jax import cli
from ocr_jax.configs import sqair_mnist
from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training import tasks
from ocr_jax.training.optimizers import make_optimizers
from ocr_jax.training.train_step import init_train_state, make_train_step

MAX_FRAMES = 10


class PerGroupSurrogates:
    """Wraps a task so that every group gets its own surrogate array (one pull-back per group), as the first
    implementation's step did."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, params, model_state, batch, key, step):
        surrogates, aux = self._task.loss(params, model_state, batch, key, step)
        return {g: s * 1.0 for g, s in surrogates.items()}, aux


def make_task(hidden: int, unroll: bool, arch: str = "mlp"):
    config = sqair_mnist.get_config("conv" if arch == "conv" else None)
    config.task_config.update(data="blobs", num_train=256, num_eval=8)
    config.task_config.model.update(hidden=hidden, scan_unroll=unroll)
    return tasks.make_task(config), config


def compile_step(task, config, frames):
    optimizers, schedules = make_optimizers(config.optimizers)
    mesh = mesh_lib.make_data_mesh()
    batch = mesh_lib.shard_batch({"frames": frames}, mesh)
    state = init_train_state(task, optimizers, 0, {"frames": frames}, mesh)
    t = time.perf_counter()
    compiled = (
        make_train_step(task, optimizers, mesh=mesh, schedules=schedules, donate=False)
        .lower(state, batch, jax.random.PRNGKey(0))
        .compile()
    )
    return compiled, state, batch, time.perf_counter() - t


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def seconds_per_step(compiled, state, batch, steps: int) -> float:
    """Mean wall-clock seconds of ``steps`` calls of a compiled train step from the same state, after one warm-up."""
    _, metrics = compiled(state, batch, jax.random.PRNGKey(0))
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for i in range(steps):
        _, metrics = compiled(state, batch, jax.random.PRNGKey(i + 1))
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t) / steps


def measure(
    hidden: int, length: int, variant: str, frames: np.ndarray, steps: int, count_flops: bool, arch: str = "mlp"
) -> dict:
    sliced = frames if variant == "old" else frames[:, :length]
    task, config = make_task(hidden, unroll=variant == "new_unrolled", arch=arch)
    if variant == "old":
        task = PerGroupSurrogates(task)
    compiled, state, batch, compile_s = compile_step(task, config, sliced)
    flops = float("nan")
    if variant == "new_unrolled":
        flops = flops_of(compiled)  # already unrolled: XLA counts every iteration
    elif count_flops:
        utask, _ = make_task(hidden, unroll=True, arch=arch)
        if variant == "old":
            utask = PerGroupSurrogates(utask)
        flops = flops_of(compile_step(utask, config, sliced)[0])
    dt = seconds_per_step(compiled, state, batch, steps)
    return dict(
        arch=arch,
        hidden=hidden,
        length=length,
        variant=variant,
        frames_computed=int(sliced.shape[1]),
        seconds_per_step=dt,
        steps_per_s=1.0 / dt,
        compile_s=compile_s,
        flops_per_step_unrolled=flops,
    )


def main(argv):
    cli.start_script(argv)
    steps, count_flops, out = _STEPS.value, not _NO_FLOPS.value, _OUT.value
    load_before = os.getloadavg()
    task, _ = make_task(32, unroll=False)
    frames = next(task.train_batches(seed=0, start_step=10**9, global_batch_size=32, process_index=0, process_count=1))[
        "frames"
    ]
    assert frames.shape[1] == MAX_FRAMES, frames.shape
    rows = []
    for hidden in [int(h) for h in _HIDDEN.value]:
        old = None  # the old step computes all 10 frames whatever L: measured once per width
        for length in [int(n) for n in _LENGTHS.value]:
            if not _NO_OLD.value:
                old = old or measure(hidden, length, "old", frames, steps, count_flops, _ARCH.value)
            variants = ("new", "new_unrolled") if _TIME_UNROLLED.value else ("new",)
            for row in (
                *([dict(old, length=length)] if old else []),
                *(measure(hidden, length, v, frames, steps, count_flops, _ARCH.value) for v in variants),
            ):
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\n{'hidden':>6} {'L':>3} | {'old steps/s':>11} {'new steps/s':>11} {'speed-up':>8} | "
        f"{'old GFLOP':>9} {'new GFLOP':>9} {'ratio':>6}"
    )
    by = {(r["hidden"], r["length"], r["variant"]): r for r in rows}
    for hidden in sorted({r["hidden"] for r in rows}):
        for length in sorted({r["length"] for r in rows}):
            n = by[hidden, length, "new"]
            o = by.get((hidden, length, "old"), dict(steps_per_s=float("nan"), flops_per_step_unrolled=float("nan")))
            print(
                f"{hidden:>6} {length:>3} | {o['steps_per_s']:>11.2f} {n['steps_per_s']:>11.2f} "
                f"{n['steps_per_s'] / o['steps_per_s']:>7.2f}x | {o['flops_per_step_unrolled'] / 1e9:>9.3f} "
                f"{n['flops_per_step_unrolled'] / 1e9:>9.3f} "
                f"{o['flops_per_step_unrolled'] / n['flops_per_step_unrolled']:>5.2f}x"
            )
            u = by.get((hidden, length, "new_unrolled"))
            if u is not None:
                print(
                    f"{hidden:>6} {length:>3} | the new step with its scans unrolled: {u['steps_per_s']:.2f} steps/s, "
                    f"{u['steps_per_s'] / n['steps_per_s']:.2f}x the rolled one (compiled in {u['compile_s']:.0f} s "
                    f"against {n['compile_s']:.0f} s)"
                )
        lengths = sorted({r["length"] for r in rows})
        if len(lengths) > 1:
            lo, hi = by[hidden, lengths[0], "new"], by[hidden, lengths[-1], "new"]
            print(
                f"{hidden:>6} new step: steps/s at L={lengths[0]} / L={lengths[-1]} = "
                f"{lo['steps_per_s'] / hi['steps_per_s']:.2f}"
            )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            dict(
                rows=rows,
                load_before=load_before,
                load_after=load_after,
                device=str(jax.devices()[0]),
                jax=jax.__version__,
            ),
            f,
            indent=1,
        )


if __name__ == "__main__":
    # Flags are defined only when run as a script: benchmarks/gpu_check.py imports measure() next to its own flags.
    _HIDDEN = flags.DEFINE_list("hidden", ["32", "256"], "MLP widths, comma-separated")
    _LENGTHS = flags.DEFINE_list("lengths", ["1", "3", "10"], "curriculum lengths L, comma-separated")
    _STEPS = flags.DEFINE_integer("steps", 5, "timed train steps per (width, length, step variant)")
    _TIME_UNROLLED = flags.DEFINE_bool(
        "time_unrolled",
        False,
        "also time the new step with its scans unrolled (SQAIRConfig.scan_unroll; slow to compile)",
    )
    _NO_FLOPS = flags.DEFINE_bool("no_flops", False, "skip the (slow to compile) unrolled FLOP count")
    _NO_OLD = flags.DEFINE_bool("no_old", False, "measure only today's step (not the first implementation's)")
    _ARCH = flags.DEFINE_enum("arch", "mlp", ["mlp", "conv"], "MLP-SQAIR or CONV-SQAIR (sqair_mnist:conv)")
    _OUT = flags.DEFINE_string("out", "runs/bench/sqair_step.json", "where the results go (JSON)")
    app.run(main)

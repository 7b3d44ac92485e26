r"""CONV-VRNN train-step cost: seconds per step and XLA FLOPs per step, side by side in one run on the same batch (not a
test), for the four combinations of
  * ψ^dec's transposed convolutions by flax's ``ConvTranspose`` (``deconv="lax"``: an input-dilated convolution) or
    by output phases (``deconv="phases"``: ``ocr_jax.models.modules.conv_transpose_phases``), and
  * the particle filter's scan over frames rolled (``filter_unroll=1``) or unrolled (``filter_unroll=10``): XLA:CPU
    runs the convolutions' gradients inside a rolled loop many times slower than the same ones unrolled.
The first row (lax, rolled) is the step before this benchmark existed; the ratios are against the first row measured
(``--variants`` picks rows; each row is printed as soon as it is measured).

  python -m benchmarks.vrnn_step [--batch=4] [--steps=3] [--arch=conv] [--variants=phases:unrolled,...]
      [--out=runs/bench/vrnn_step.json]

The step is ``vrnn_mnist:conv``'s (FIVO, K = 5, 10 frames of 50×50) at a small batch (``--batch``; the config trains
at 32). FLOPs are counted on a copy of the step with the particle filter's scan unrolled (``filter_unroll``: XLA's
cost analysis counts a scan body once, ../shared/spec/CORRECTIONS.md), the same function. The matmul
peak and the load average are recorded in the same run: run it alone — a second busy process slows a two-thread run
many times over.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags

from benchmarks.air_throughput import matmul_peak
from benchmarks.sqair_step import compile_step, flops_of, seconds_per_step
from ocr_jax import cli, configs
from ocr_jax.training import tasks

NUM_FRAMES = 10


VARIANTS = (("lax", False), ("phases", False), ("lax", True), ("phases", True))  # (deconv, filter unrolled)


def selected_variants(arch: str, names: list[str]) -> list[tuple[str, bool]]:
    """The (deconv, filter unrolled) pairs to measure, in VARIANTS' order: ``names`` as "lax:rolled", ... (all when
    empty); the MLP-VRNN has no ψ^dec CNN, so only "phases" (its decoder ignores ``deconv``)."""
    by_name = {f"{d}:{'unrolled' if u else 'rolled'}": (d, u) for d, u in VARIANTS}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choose from {sorted(by_name)}")
    chosen = [v for name, v in by_name.items() if not names or name in names]
    if arch != "conv":
        chosen = [(d, u) for d, u in chosen if d == "phases"]
    if not chosen:
        raise ValueError(f"--variants={','.join(names)} leaves nothing to measure for --arch={arch}")
    return chosen


def make_task(arch: str, deconv: str, unroll: bool):
    config = configs.get_config("vrnn_mnist:conv" if arch == "conv" else "vrnn_mnist")
    config.task_config.update(data="blobs", num_train=64, num_eval=8, filter_unroll=NUM_FRAMES if unroll else 1)
    config.task_config.model.deconv = deconv
    return tasks.make_task(config), config


def measure(arch: str, deconv: str, unroll: bool, frames, steps: int) -> dict:
    task, config = make_task(arch, deconv, unroll=unroll)
    compiled, state, batch, compile_s = compile_step(task, config, frames)
    if unroll:
        flops = flops_of(compiled)
    else:
        utask, _ = make_task(arch, deconv, unroll=True)
        flops = flops_of(compile_step(utask, config, frames)[0])
    dt = seconds_per_step(compiled, state, batch, steps)
    return dict(
        arch=arch,
        deconv=deconv,
        filter_unrolled=unroll,
        batch=int(frames.shape[0]),
        seconds_per_step=dt,
        compile_s=compile_s,
        flops_per_step=flops,
        gflop_per_s=flops / dt / 1e9,
    )


def main(argv):
    cli.start_script(argv)
    load_before = os.getloadavg()
    task, _ = make_task(_ARCH.value, "phases", unroll=False)
    frames = next(
        task.train_batches(seed=0, start_step=0, global_batch_size=_BATCH.value, process_index=0, process_count=1)
    )["frames"]
    assert frames.shape[1] == NUM_FRAMES, frames.shape
    peak_before = matmul_peak()
    variants = selected_variants(_ARCH.value, _VARIANTS.value)
    rows = []
    for deconv, unroll in variants:  # each row printed as it is measured: the slow ones take minutes at batch >= 8
        rows.append(measure(_ARCH.value, deconv, unroll, frames, _STEPS.value))
        print(json.dumps(rows[-1]), flush=True)
    peak_after = matmul_peak()
    old = rows[0]
    peak = max(peak_before, peak_after)
    print(f"\n{_ARCH.value.upper()}-VRNN, batch {old['batch']}, K = 5, {NUM_FRAMES} frames of 50x50:")
    for r in rows:
        print(
            f"  deconv={r['deconv']:<6} filter {'unrolled' if r['filter_unrolled'] else 'rolled  '} "
            f"{r['seconds_per_step']:7.2f} s/step ({old['seconds_per_step'] / r['seconds_per_step']:5.2f}x)  "
            f"{r['flops_per_step'] / 1e9:7.1f} GFLOP/step  "
            f"{r['gflop_per_s']:6.1f} GFLOP/s = {r['gflop_per_s'] * 1e9 / peak:.0%} of the matmul peak"
        )
    print(f"  matmul peak {peak_before / 1e9:.0f} / {peak_after / 1e9:.0f} GFLOP/s before / after")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(
            dict(
                rows=rows,
                load_before=load_before,
                load_after=load_after,
                matmul_peak=[peak_before, peak_after],
                device=str(jax.devices()[0]),
                jax=jax.__version__,
            ),
            f,
            indent=1,
        )


if __name__ == "__main__":
    _ARCH = flags.DEFINE_enum("arch", "conv", ["conv", "mlp"], "VRNN architecture")
    _BATCH = flags.DEFINE_integer("batch", 4, "sequences per step")
    _STEPS = flags.DEFINE_integer("steps", 3, "timed train steps per variant")
    _VARIANTS = flags.DEFINE_list(
        "variants", [], "only these of lax:rolled, phases:rolled, lax:unrolled, phases:unrolled (default: all)"
    )
    _OUT = flags.DEFINE_string("out", "runs/bench/vrnn_step.json", "where the results go (JSON)")
    app.run(main)

r"""A trained SQAIR run's train step five ways, side by side in one run (not a test): XLA's convolutions decoding
every slot (``xla_all``: the step before this benchmark), convolutions as patch matrix products
(``SQAIRConfig.conv_implementation="patches"``, ``modules.conv_patches``) decoding every slot (``patches_all``),
those decoding only the present glimpses (``SQAIRConfig.decode_capacities``; ``patches_present_plain_dot``), the
same with the patch products' backward pass materialising its cotangent once
(``modules.matmul_materialised_cotangent``; ``patches_present_stored``; the variants before it are built with a plain
``x @ w``), and that with the switch's decoder rematerialised in the backward pass instead of its activations stored
(``SQAIRConfig.decode_remat``; ``patches_present``, the default on CPU).

  python benchmarks/sqair_decode.py --workdir=runs/sqair_conv_short_seed0 [--step=N] [--pairs=3] [--steps=3]
      [--[no]scan_unroll] [--capacities=0.25,0.5] [--variants=xla_all,patches_present]
      [--out=runs/bench/sqair_decode.json]

Every step is built exactly as training builds it (``benchmarks.air_throughput.compile_train_step``) from the run's
own config.json (``--scan_unroll`` overrides its scan unrolling), at the checkpoint's step (so the curriculum length
and schedules are the run's), on the task's own training batches, with the checkpoint's parameters: presence decides
how many glimpses are decoded — at initialisation most slots are present, in a trained model about a third. The
variants are timed in ``--pairs`` interleaved windows of ``--steps`` steps; the best window of each is reported with
its ratio to the first variant run (``xla_all`` unless ``--variants`` leaves it out), the fraction of slots present
in the timed batches (inferred as the loss infers them) and the capacity that fraction selects. The load average is
recorded before and after: run it alone.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)  # benchmarks/ from the checkout when run as a script

from benchmarks.air_throughput import compile_train_step, with_params  # noqa: E402
from ocr_jax import api, cli  # noqa: E402
from ocr_jax.models import modules  # noqa: E402
from ocr_jax.training import tasks  # noqa: E402


def VARIANTS(capacities):  # noqa: N802
    """(name, model settings, whether the patch products materialise their cotangent) of the steps compared, in the
    order the changes came: XLA's convolutions decoding every slot, convolutions as patch matrix products, those
    decoding only the present glimpses, then with ``matmul_materialised_cotangent``, then also rematerialising the
    switch's decoder (``SQAIRConfig.decode_remat``)."""
    patches = dict(conv_implementation="patches", decode_capacities=capacities)
    return (
        ("xla_all", dict(conv_implementation="xla", decode_capacities=(), decode_remat=False), False),
        ("patches_all", dict(patches, decode_capacities=(), decode_remat=False), False),
        ("patches_present_plain_dot", dict(patches, decode_remat=False), False),
        ("patches_present_stored", dict(patches, decode_remat=False), True),
        ("patches_present", dict(patches, decode_remat=True), True),
    )


def build(config, params, step: int, materialise_cotangent: bool = True) -> dict:
    """The compiled step of ``config`` with the state's parameters replaced by ``params``; with
    ``materialise_cotangent=False`` the patch convolutions' dots are traced as a plain ``x @ w``."""
    task = tasks.make_task(config)
    kept = modules.matmul_materialised_cotangent
    if not materialise_cotangent:
        modules.matmul_materialised_cotangent = lambda x, w: x @ w  # read by conv_patches at trace time
    try:
        compiled, state, batches, compile_s = compile_train_step(task, config, start_step=step, num_batches=4)
    finally:
        modules.matmul_materialised_cotangent = kept
    # Host copies: the step donates its state, and every variant must keep its own buffers.
    state = with_params(state, params)
    return dict(task=task, compiled=compiled, state=state, batches=batches, compile_s=compile_s)


def window(built: dict, steps: int, seed: int) -> float:
    """Seconds per step over ``steps`` steps; the state carries on (the step donates it) from the checkpoint's
    parameters, a few training steps away from them by the end."""
    state, c, batches = built["state"], built["compiled"], built["batches"]
    t = time.perf_counter()
    for i in range(steps):
        state, metrics = c(state, batches[i % len(batches)], jax.random.PRNGKey(seed + i))
    jax.block_until_ready(metrics)
    built["state"] = state
    return (time.perf_counter() - t) / steps


def present_fraction(built: dict, step: int) -> float:
    """The fraction of the B·K·T·N slots present when the step's batches are inferred as the loss infers them."""
    task = built["task"]
    terms = jax.jit(lambda p, x, k: task.per_particle_terms(p, x, k, step)[-1].z_pres)
    fractions = [
        float(np.mean(jax.device_get(terms(built["state"].params, batch["frames"], jax.random.key(i)))))
        for i, batch in enumerate(built["batches"])
    ]
    return float(np.mean(fractions))


def main(argv):
    cli.start_script(argv)
    run = api.load_run(_WORKDIR.value, step=_STEP.value)
    if run.task_name != "sqair":
        raise ValueError(f"{_WORKDIR.value} is a {run.task_name} run; this benchmark needs a SQAIR run")
    load_before = os.getloadavg()
    from ocr_jax.models.sqair import SQAIRConfig

    capacities = tuple(float(f) for f in _CAPACITIES.value) if _CAPACITIES.value else SQAIRConfig().decode_capacities
    variants = {}
    chosen_variants = [
        v for v in VARIANTS(capacities) if not _VARIANTS.value or v[0] in (*_VARIANTS.value, "patches_present")
    ]
    for name, settings, materialise in chosen_variants:
        config = run.config.copy_and_resolve_references()
        config.task_config.model.update(**settings)
        if _SCAN_UNROLL.value is not None:
            config.task_config.model.scan_unroll = _SCAN_UNROLL.value
        variants[name] = build(config, run.params, run.step, materialise)
        print(f"{name}: compiled in {variants[name]['compile_s']:.1f} s", flush=True)
    present = variants["patches_present"]
    model, length = present["task"].model, present["task"].sequence_length(run.step)
    fraction = present_fraction(present, run.step)
    n = run.config.global_batch_size * present["task"].config.num_particles * length * model.config.max_objects
    capacities = model.decode_capacities(n)
    chosen = next(c for c in capacities if c >= round(fraction * n))
    times = {name: [] for name in variants}
    for p in range(_PAIRS.value):
        for name, built in variants.items():
            window(built, 1, 10_000 + p)  # warm-up (first call after the other variant)
            times[name].append(window(built, _STEPS.value, 1000 * p))
            print(f"pair {p}: {name} {times[name][-1]:.3f} s/step", flush=True)
    best = {name: min(t) for name, t in times.items()}
    baseline = next(iter(best))  # the first variant run
    speedups = {name: best[baseline] / t for name, t in best.items()}
    result = dict(
        workdir=_WORKDIR.value,
        step=run.step,
        curriculum_length=length,
        slots_per_step=n,
        present_fraction=fraction,
        capacities=capacities,
        capacity_about_selected=chosen,
        seconds_per_step=times,
        best_seconds_per_step=best,
        baseline=baseline,
        speedup_over_baseline=speedups,
        scan_unroll=bool(present["task"].model.config.scan_unroll),
        load_before=load_before,
        load_after=os.getloadavg(),
    )
    print(
        f"step {run.step} (L = {length}, scan_unroll={result['scan_unroll']}): {fraction:.1%} of {n} slots present "
        f"-> about {chosen} decoded of capacities {capacities}; load average {load_before[0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after"
    )
    for name, t in best.items():
        print(f"  {name:16s} {t:.3f} s/step  {speedups[name]:.2f}x")
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    _WORKDIR = flags.DEFINE_string("workdir", "runs/sqair_conv_short_seed0", "a trained SQAIR run")
    _STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
    _PAIRS = flags.DEFINE_integer("pairs", 3, "interleaved (full, present-only) windows")
    _STEPS = flags.DEFINE_integer("steps", 3, "timed steps per window")
    _SCAN_UNROLL = flags.DEFINE_bool("scan_unroll", None, "override the run's scan_unroll (default: the run's)")
    _CAPACITIES = flags.DEFINE_list(
        "capacities", None, "decode_capacities of the present-only step (default: SQAIRConfig's)"
    )
    _VARIANTS = flags.DEFINE_list(
        "variants",
        None,
        "which of " + ", ".join(v[0] for v in VARIANTS(())) + " to run (default: all; "
        "ratios are to the first run); patches_present is always built",
    )
    _OUT = flags.DEFINE_string("out", "runs/bench/sqair_decode.json", "where the result goes (JSON)")
    app.run(main)

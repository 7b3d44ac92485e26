r"""AIR over several seeds: how many reach a count-accuracy threshold, and how fast (issue #5, TARGETS.md).

  python -m experiments.air_seeds --config=air_multi_mnist --workdir=runs/air_seeds \
      --seeds=0,1,2,3,4,5,6,7,8,9 [--threshold=0.95] [--stop_at_threshold] [--config.eval_every=1000 ...]

Trains one run per seed in ``<workdir>/seed_<s>`` (each resumes if interrupted; finished seeds are skipped; with
``--stop_at_threshold`` a seed stops at its first evaluation at or above the threshold, and seeds that already
reached it are skipped), then
writes ``<workdir>/seeds.json`` and prints a markdown table. Per seed: the first periodic evaluation whose count
accuracy (on ``eval.periodic_images`` test images) reaches the threshold, the training time to it, and the last
evaluation. Training time = compile time + the sum over logged intervals of steps / (steps per second); evaluation
time is excluded. Only the training seed changes between runs (initialisation, sampling, batch order); the dataset is
the same.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from ocr_jax import configs

_CONFIG = configs.define_config_flag("config", None, "AIR config (air_multi_mnist[:VARIANT]) or config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "One subdirectory per seed is created here.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.95, "Count accuracy counted as success.")
_STOP = flags.DEFINE_bool("stop_at_threshold", False, "Stop each seed at its first evaluation >= threshold.")
flags.mark_flags_as_required(["config", "workdir"])


def training_curve(run_dir: str) -> list[dict]:
    """[{step, count_accuracy, train_seconds}] for each periodic evaluation of a run, in step order."""
    seconds, last_step, curve = 0.0, 0, []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "compile_seconds" in row:
                seconds += row["compile_seconds"]
            if "steps_per_sec" in row and row["step"] > last_step:
                seconds += (row["step"] - last_step) / row["steps_per_sec"]
                last_step = row["step"]
            if "eval/count_accuracy" in row:
                curve.append(
                    dict(step=int(row["step"]), count_accuracy=float(row["eval/count_accuracy"]), train_seconds=seconds)
                )
    return curve


def summarise(curve: list[dict], threshold: float) -> dict:
    """First evaluation at or above ``threshold`` (None if never) and the final one."""
    hit = next((c for c in curve if c["count_accuracy"] >= threshold), None)
    return dict(
        reached=hit is not None,
        first_step=hit and hit["step"],
        minutes_to_threshold=hit and round(hit["train_seconds"] / 60, 2),
        final_step=curve[-1]["step"] if curve else None,
        final_count_accuracy=curve[-1]["count_accuracy"] if curve else None,
        curve=curve,
    )


def main(argv):
    del argv
    from ocr_jax.training import train

    seeds = [int(s) for s in _SEEDS.value]
    results = {}
    for seed in seeds:
        config = _CONFIG.value.copy_and_resolve_references()
        config.seed = seed
        run_dir = os.path.join(_WORKDIR.value, f"seed_{seed}")
        if _STOP.value:
            with config.unlocked():  # config files are locked by config_flags; stop_when is an optional field
                config.stop_when = dict(metric="eval/count_accuracy", at_least=_THRESHOLD.value)
        already_reached = (
            _STOP.value
            and os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
            and summarise(training_curve(run_dir), _THRESHOLD.value)["reached"]
        )
        print(f"[air_seeds] seed {seed} -> {run_dir}", flush=True)
        if not already_reached:  # with --stop_at_threshold, a seed that already reached it is not trained further
            train.train_and_evaluate(config, run_dir)  # resumes from the latest checkpoint; returns at once if finished
        results[seed] = summarise(training_curve(run_dir), _THRESHOLD.value)

    reached = sum(r["reached"] for r in results.values())
    summary = dict(
        threshold=_THRESHOLD.value,
        seeds=seeds,
        reached=reached,
        num_seeds=len(seeds),
        per_seed={str(s): r for s, r in results.items()},
    )
    with open(os.path.join(_WORKDIR.value, "seeds.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"| seed | first step ≥ {_THRESHOLD.value:.0%} | training minutes to it | final step | final accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for s, r in results.items():
        print(
            f"| {s} | {r['first_step'] or 'not reached'} | {r['minutes_to_threshold'] or '—'} | {r['final_step']} | "
            f"{r['final_count_accuracy']:.4f} |"
        )
    print(f"{reached} of {len(seeds)} seeds reached {_THRESHOLD.value:.0%}")


if __name__ == "__main__":
    app.run(main)

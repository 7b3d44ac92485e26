r"""AIR train-step speed of this working tree against an earlier revision, measured side by side in one run (not a
test).

  python benchmarks/compare_revisions.py --base=af68a60 [--configs=air_multi_mnist:fast,air_multi_mnist:bench]
      [--pairs=3] [--steps=20] [--repeats=5] [--out=runs/bench/compare_revisions.json]

The base revision is checked out into a temporary ``git worktree``; then, for each config, ``--pairs`` interleaved
pairs of runs (base, current, base, current, …) each time in a fresh process that imports ``ocr_jax`` and
``benchmarks/air_throughput.py`` from its own tree and times the compiled train step with that tree's
``measure(config, steps, repeats)`` (synthetic digits; best of ``--repeats`` windows of ``--steps`` steps). The
matmul peak is measured in every process. Reported per config: the median over pairs of each side's ms per step
and of the per-pair ratio base / current, with XLA's FLOPs per step of both (equal FLOPs: the same model; fewer: less
work). Interleaving spreads a shared machine's drift over both sides; the load average is recorded before and after.
Run it alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

from ocr_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the tree being measured (its own ocr_jax and benchmarks come first on sys.path).
_CHILD = r"""
import json, os, sys
sys.path.insert(0, ".")
import ocr_jax
assert os.path.abspath(ocr_jax.__file__).startswith(os.getcwd()), f"imported {ocr_jax.__file__}, not this tree's"
from benchmarks.air_throughput import matmul_peak, measure
from ocr_jax.configs import air_multi_mnist
name, variant = sys.argv[1].split(":") if ":" in sys.argv[1] else (sys.argv[1], "")
assert name == "air_multi_mnist", "AIR configs only"
row = measure(air_multi_mnist.get_config(variant), int(sys.argv[2]), int(sys.argv[3]))
row["matmul_peak_flop_per_s"] = matmul_peak()
print("RESULT " + json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}))
"""


def run_in(tree: str, config: str, steps: int, repeats: int) -> dict:
    """One measurement in a fresh process in ``tree``."""
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, config, str(steps), str(repeats)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement in {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv):
    cli.start_script(argv)
    base = subprocess.run(
        ["git", "rev-parse", "--short", _BASE.value], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    current = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    load_before = os.getloadavg()
    results = dict(base=base, current=f"working tree at {current}", load_before=load_before, configs={})
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "base")
        subprocess.run(["git", "worktree", "add", "--detach", tree, base], cwd=REPO, check=True, capture_output=True)
        try:
            for config in _CONFIGS.value:
                pairs = []
                for p in range(_PAIRS.value):
                    old = run_in(tree, config, _STEPS.value, _REPEATS.value)
                    new = run_in(REPO, config, _STEPS.value, _REPEATS.value)
                    pairs.append(dict(base=old, current=new, ratio=old["seconds_per_step"] / new["seconds_per_step"]))
                    print(
                        f"{config} pair {p + 1}: base {old['seconds_per_step'] * 1e3:.1f} ms/step, current "
                        f"{new['seconds_per_step'] * 1e3:.1f} ms/step, ratio {pairs[-1]['ratio']:.2f}",
                        flush=True,
                    )
                summary = dict(
                    base_ms_per_step=float(np.median([q["base"]["seconds_per_step"] * 1e3 for q in pairs])),
                    current_ms_per_step=float(np.median([q["current"]["seconds_per_step"] * 1e3 for q in pairs])),
                    ratio_median=float(np.median([q["ratio"] for q in pairs])),
                    ratio_range=[min(q["ratio"] for q in pairs), max(q["ratio"] for q in pairs)],
                    base_gflop_per_step=pairs[0]["base"]["flops_per_step"] / 1e9,
                    current_gflop_per_step=pairs[0]["current"]["flops_per_step"] / 1e9,
                    current_fraction_of_peak=float(
                        np.median([q["current"]["flop_per_s"] / q["current"]["matmul_peak_flop_per_s"] for q in pairs])
                    ),
                    current_images_per_s=float(np.median([q["current"]["images_per_s"] for q in pairs])),
                )
                results["configs"][config] = dict(summary, pairs=pairs)
                print(
                    f"{config}: base {summary['base_ms_per_step']:.1f} ms/step, current "
                    f"{summary['current_ms_per_step']:.1f} ms/step: {summary['ratio_median']:.2f}x "
                    f"({summary['ratio_range'][0]:.2f}-{summary['ratio_range'][1]:.2f}); GFLOP/step "
                    f"{summary['base_gflop_per_step']:.2f} -> {summary['current_gflop_per_step']:.2f}; current "
                    f"{summary['current_images_per_s']:.0f} images/s, {summary['current_fraction_of_peak']:.1%} of the "
                    "matmul peak (XLA FLOPs, a scan body counted once)",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, check=False, capture_output=True)
    results["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=1)
    print(f"load average {load_before} before, {results['load_after']} after; wrote {_OUT.value}")


if __name__ == "__main__":
    _BASE = flags.DEFINE_string("base", "HEAD", "the revision to compare against (git rev)")
    _CONFIGS = flags.DEFINE_list("configs", ["air_multi_mnist:fast", "air_multi_mnist:bench"], "AIR configs")
    _PAIRS = flags.DEFINE_integer("pairs", 3, "interleaved base/current pairs per config")
    _STEPS = flags.DEFINE_integer("steps", 20, "train steps per timing window")
    _REPEATS = flags.DEFINE_integer("repeats", 5, "timing windows per run; the best is used")
    _OUT = flags.DEFINE_string("out", "runs/bench/compare_revisions.json", "where the results go (JSON)")
    app.run(main)

r"""Thesis Fig. 8.4.3 over several seeds: the AIR VIMCO vs wake-wake study (``experiments.air_estimators``) run once
per seed into its own results directory, tabulated and plotted together.

  python -m experiments.air_estimators_seeds docs/data/air_estimators docs/data/air_estimators_seed1 \
      [--out=docs/data/air_estimators_seeds.png]

Each argument is a results directory holding one seed's ``results.json``. Per (estimator, K), the table gives the
mean over the seeds that have the run and each seed's value (``—`` where a seed lacks the run) of the final count
accuracy, log p̂(x) and KL(q‖p_θ(z|x)); the figure draws each seed's values against K and the mean through them.
Runs of different step counts are refused (a study still training mixes only finished runs: a run enters a results
directory when it has finished).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments.air_estimators import finish_figure, load_results, particles_axis, run_name

METRICS = (("count_accuracy", "count accuracy", 4), ("log_marginal", "log p̂(x)", 2), ("kl", "KL(q‖p_θ(z|x))", 2))


def combine_seeds(per_seed: list[dict]) -> dict:
    """``{(estimator, K): {metric: [value or None per seed]}}`` over the studies ``per_seed`` (each a loaded
    ``results.json``), keys sorted by estimator then K. Raises ValueError if the studies' runs differ in steps."""
    steps = {r["step"] for results in per_seed for r in results.values()}
    if len(steps) > 1:
        raise ValueError(f"the results hold runs of different lengths {sorted(steps)}; compare studies of one length")
    keys = sorted({(r["estimator"], r["num_particles"]) for results in per_seed for r in results.values()})
    combined = {}
    for est, k in keys:
        runs = [results.get(run_name(est, k)) for results in per_seed]
        combined[est, k] = {name: [None if r is None else r[name] for r in runs] for name, _, _ in METRICS}
    return combined


def mean_over_seeds(values: list) -> float:
    """Mean of the values present (NaN if none)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


def seeds_table_markdown(combined: dict) -> str:
    """One row per (estimator, K): per metric the mean over seeds and, in brackets, each seed's value."""
    head = " | ".join(f"{label}: mean (per seed)" for _, label, _ in METRICS)
    lines = [f"| estimator | K | {head} |", "| --- | --- |" + " --- |" * len(METRICS)]
    for (est, k), row in combined.items():
        cells = []
        for name, _, digits in METRICS:
            per_seed = ", ".join("—" if v is None else f"{v:.{digits}f}" for v in row[name])
            cells.append(f"{mean_over_seeds(row[name]):.{digits}f} ({per_seed})")
        lines.append(f"| {est} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_seeds(combined: dict, path: str) -> str:
    """Log p̂(x), KL and count accuracy against K per estimator: each seed's values as points, their mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ocr_jax import plotting

    estimators = sorted({est for est, _ in combined})
    ks = sorted({k for _, k in combined})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, (name, label, _) in zip(axes, METRICS, strict=True):
        for i, est in enumerate(estimators):
            color = plotting.color_for(i)
            rows = [(k, combined[est, k][name]) for k in ks if (est, k) in combined]
            ax.plot([k for k, _ in rows], [mean_over_seeds(v) for _, v in rows], "-", color=color, label=est)
            for k, values in rows:
                present = [v for v in values if v is not None]
                ax.plot([k] * len(present), present, "o", color=color, ms=4, alpha=0.6)
        particles_axis(ax, ks)
        ax.set_ylabel(label)
    axes[0].legend()
    title = "AIR, Bernoulli multi-MNIST: VIMCO vs wake-wake per seed (points) and their mean (thesis Fig. 8.4.3)"
    return finish_figure(fig, title, path)


def main(argv) -> None:
    dirs = argv[1:]
    if not dirs:
        raise app.UsageError("give one results directory per seed")
    per_seed = []
    for d in dirs:
        results = load_results(d)
        if not results:
            raise ValueError(f"{os.path.join(d, 'results.json')} does not exist or holds no runs")
        per_seed.append(results)
    combined = combine_seeds(per_seed)
    print(seeds_table_markdown(combined))
    print(f"figure: {plot_seeds(combined, _OUT.value or os.path.join(dirs[0], 'air_estimators_seeds.png'))}")


if __name__ == "__main__":
    _OUT = flags.DEFINE_string(
        "out", None, "The figure's path (default: air_estimators_seeds.png in the first directory)."
    )
    app.run(main)

"""Learning curves of training runs from their periodic evaluations (``<workdir>/eval_step<step>.json``, written by
the AIR and SQAIR tasks), one line per run, and a markdown table of the same numbers.

    python -m experiments.eval_curves --runs=runs/sqair_cpu,runs/sqair_cpu_b,runs/air_moving \
        --labels="SQAIR A,SQAIR B,AIR frame-wise" --metric=count_accuracy --out=docs/img/sqair_counting_curves.png
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ocr_jax import plotting  # noqa: E402

_STEP = re.compile(r"eval_step(\d+)\.json$")


def read_eval_curve(workdir: str, metric: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` sorted by step, from every ``eval_step<step>.json`` in ``workdir`` that has ``metric``.

    Raises FileNotFoundError if ``workdir`` holds no evaluation at all.
    """
    paths = [p for p in glob.glob(os.path.join(workdir, "eval_step*.json")) if _STEP.search(p)]
    if not paths:
        raise FileNotFoundError(f"no eval_step<step>.json in {workdir!r}: has the run reached its first evaluation?")
    curve = []
    for path in paths:
        with open(path) as f:
            values = json.load(f)
        if metric in values:
            curve.append((int(_STEP.search(path).group(1)), float(values[metric])))
    return sorted(curve)


def markdown_curves(curves: dict[str, list[tuple[int, float]]], metric: str) -> str:
    """One row per evaluated step, one column per run (blank where a run has no evaluation at that step)."""
    steps = sorted({s for c in curves.values() for s, _ in c})
    lines = [
        "| step | " + " | ".join(f"{name}: {metric}" for name in curves) + " |",
        "| --- |" + " --- |" * len(curves),
    ]
    for step in steps:
        cells = [next((f"{v:.4g}" for s, v in c if s == step), "") for c in curves.values()]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[tuple[int, float]]], metric: str, title: str | None = None):
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for i, (name, curve) in enumerate(curves.items()):
        if curve:
            steps, values = zip(*curve)
            ax.plot(steps, values, "o-", color=plotting.color_for(i), label=name, markersize=3)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None):
    from absl import app, flags

    runs = flags.DEFINE_list("runs", None, "run directories")
    labels = flags.DEFINE_list("labels", None, "one label per run (default: the directory names)")
    metric = flags.DEFINE_string("metric", "count_accuracy", "the evaluation key to plot")
    out = flags.DEFINE_string("out", None, "PNG path")
    title = flags.DEFINE_string("title", None, "figure title")
    flags.mark_flags_as_required(["runs", "out"])

    def run(_):
        names = labels.value or [os.path.basename(os.path.normpath(r)) for r in runs.value]
        if len(names) != len(runs.value):
            raise app.UsageError(f"{len(runs.value)} runs but {len(names)} labels")
        curves = {n: read_eval_curve(r, metric.value) for n, r in zip(names, runs.value)}
        fig = plot_curves(curves, metric.value, title.value)
        print(plotting.save_figure(fig, out.value))
        print(markdown_curves(curves, metric.value))

    app.run(run, argv=[sys.argv[0], *(argv or sys.argv[1:])])


if __name__ == "__main__":
    main()

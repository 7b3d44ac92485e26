"""Where a trained AIR run's counting errors are: the confusion matrix on the test split, accuracy on two-digit images
by the gap between the digits, and what the one glimpse of each "two digits read as one" error does (covers both
digits, covers one and misses the other, or neither). Issue #15, item 4.

    python -m experiments.air_errors --workdir=runs/main/air
    python -m experiments.air_errors --workdir=runs/air --num_images=10000 --particles=1 --data_seed=7

Runs inference through the public API (``ocr_jax.api.load_run`` / ``infer_images``: the best of ``--particles``
posterior samples per image, one by default as in the training's evaluation) on the run's own test split, or on a
second test set made with another generator seed (``--data_seed``). Writes ``<workdir>/errors[_seedS].json``
(``ocr_jax.evaluation.air.two_digit_anatomy`` plus the confusion matrix) and ``errors[_seedS].png``: two-as-one errors
with the true tight boxes (dashed) and the inferred glimpse windows, and accuracy against the digit gap.
"""

from __future__ import annotations

import json
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ocr_jax import api, plotting  # noqa: E402
from ocr_jax.evaluation import air as air_eval  # noqa: E402
from ocr_jax.tasks.air import load_multi_mnist  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run of an air_multi_mnist config.", required=True)
_NUM = flags.DEFINE_integer("num_images", 10_000, "Test images to evaluate (the first ones of the split).")
_PARTICLES = flags.DEFINE_integer("particles", 1, "Posterior samples per image; the best (largest weight) is used.")
_DATA_SEED = flags.DEFINE_integer("data_seed", -1, "Generator seed of the test set (-1: the run's own test split).")
_EXAMPLES = flags.DEFINE_integer("examples", 12, "Two-as-one errors drawn in the picture.")
_SEED = flags.DEFINE_integer("seed", 0, "Inference key.")


def anatomy_of_run(run: api.Run, data: dict, *, num_particles: int, key: jax.Array) -> tuple[dict, dict]:
    """Inference on ``data`` (``images [n, H, W]`` uint8, ``counts [n]``, ``boxes [n, M, 4]``) -> (the JSON summary,
    the inference arrays)."""
    pred = api.infer_images(run, data["images"], key=key, num_particles=num_particles)
    n_max = run.model.config.max_steps
    confusion = np.zeros((n_max + 1, n_max + 1), np.int64)
    np.add.at(confusion, (np.minimum(data["counts"], n_max), pred["counts"]), 1)
    summary = dict(
        step=run.step,
        num_images=int(len(data["images"])),
        particles=num_particles,
        count_accuracy=float(np.trace(confusion) / confusion.sum()),
        confusion=confusion.tolist(),
        **air_eval.two_digit_anatomy(data["boxes"], data["counts"], pred["boxes"], pred["counts"]),
    )
    return summary, pred


def draw(data: dict, pred: dict, summary: dict, path: str, *, examples: int) -> None:
    """Two-as-one errors (true boxes dashed, glimpse windows coloured) and accuracy by digit gap."""
    err = np.flatnonzero((data["counts"] == 2) & (pred["counts"] == 1))[:examples]
    cols = max(len(err), 1)
    fig = plt.figure(figsize=(1.6 * cols, 4.2))
    for j, i in enumerate(err):
        ax = fig.add_subplot(2, cols, j + 1)
        ax.imshow(data["images"][i], cmap="gray", vmin=0, vmax=255)
        plotting.draw_boxes(ax, data["boxes"][i], data["boxes"][i, :, 2] > data["boxes"][i, :, 0], linestyle="--")
        steps = np.arange(1, 1 + pred["boxes"].shape[1])
        plotting.draw_boxes(ax, pred["boxes"][i], pred["presence"][i], color_ids=steps)
        ax.set_axis_off()
    ax = fig.add_subplot(2, 1, 2)
    rows = [r for r in summary["by_gap"] if r["images"]]
    ax.bar([r["gap_px"] for r in rows], [r["accuracy"] for r in rows], color="tab:blue")
    for k, r in enumerate(rows):
        ax.text(k, r["accuracy"], f"{r['right']}/{r['images']}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("gap between the two digits' tight boxes (px; ≤ 0: touching or overlapping)")
    ax.set_ylabel("two-digit images read right")
    fig.suptitle(f"two digits read as one (step {summary['step']}): {summary['two_as_one']['errors']} errors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    run = api.load_run(_WORKDIR.value)
    if run.task_name != "air":
        raise app.UsageError(f"{_WORKDIR.value} is a {run.task_name} run; air_errors needs an AIR run")
    data_cfg = run.config.task_config.data
    suffix = ""
    if _DATA_SEED.value >= 0:
        data_cfg = data_cfg.copy_and_resolve_references()
        data_cfg.seed = _DATA_SEED.value
        suffix = f"_seed{_DATA_SEED.value}"
    data = load_multi_mnist(data_cfg, "test")
    if "boxes" not in data:
        raise app.UsageError(f"the test data of {_WORKDIR.value} ({data_cfg.name}) has no digit boxes")
    n = min(_NUM.value, len(data["images"]))
    data = {k: v[:n] for k, v in data.items() if k in ("images", "counts", "boxes")}
    summary, pred = anatomy_of_run(run, data, num_particles=_PARTICLES.value, key=jax.random.PRNGKey(_SEED.value))
    summary["data_seed"] = int(data_cfg.seed)
    out = os.path.join(_WORKDIR.value, f"errors{suffix}")
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    draw(data, pred, summary, out + ".png", examples=_EXAMPLES.value)
    print(json.dumps({k: v for k, v in summary.items() if k != "by_gap"}, indent=1))
    for r in summary["by_gap"]:
        print(r)
    print(f"wrote {out}.json and {out}.png")


if __name__ == "__main__":
    app.run(main)

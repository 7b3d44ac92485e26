"""Where a trained AIR or SQAIR run's counting errors are: the confusion matrix on the test split, accuracy on
two-digit images by the gap between the digits and by the direction of the line joining them, what the one glimpse
of each "two digits read as one" error does (covers both digits, covers one and misses the other, or neither) and
where the extra glimpse of each "two read as three" error lies; for SQAIR also by frame index; for AIR also what it
does on blank canvases (how often a particle holds an object there, and what that costs it), and for SQAIR what
became of every visible digit no glimpse covers (never found, dropped, moved onto the other digit, astray:
``ocr_jax.evaluation.sqair.lost_digit_anatomy``) and the tracking errors of its identities (swaps, re-detections:
``tracking_errors`` under the run's ``eval.tracking_match``). Issues #13 and #15.

    python -m experiments.count_errors --workdir=runs/main/air
    python -m experiments.count_errors --workdir=runs/air --num_images=10000 --particles=1 --data_seed=7
    python -m experiments.count_errors --workdir=runs/sqair_cpu --num_images=200 --particles=5

Runs inference through the public API (``ocr_jax.api.load_run`` then ``infer_images`` for AIR, ``infer_sequences``
for SQAIR: the best of ``--particles`` posterior samples per image or sequence) on the run's own test split, or on a
second test set made with another generator seed (``--data_seed``). ``--num_images`` counts images for AIR and
sequences for SQAIR (every frame of a sequence is an image of the anatomy). Writes ``<workdir>/errors[_seedS].json``
(``ocr_jax.evaluation.air.two_digit_anatomy`` plus the confusion matrix) and ``errors[_seedS].png``: two-as-one
errors with the true tight boxes (dashed) and the inferred glimpse windows, and accuracy against the digit gap.
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

from ocr_jax import api, cli, plotting  # noqa: E402
from ocr_jax.evaluation import air as air_eval  # noqa: E402
from ocr_jax.evaluation import sqair as sqair_eval  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run of an AIR or SQAIR config.", required=True)
_NUM = flags.DEFINE_integer("num_images", 10_000, "Test images (AIR) or sequences (SQAIR) to evaluate, from the start.")
_PARTICLES = flags.DEFINE_integer("particles", 1, "Posterior samples per image / sequence; the best is used.")
_DATA_SEED = flags.DEFINE_integer("data_seed", -1, "Generator seed of the test set (-1: the run's own test split).")
_EXAMPLES = flags.DEFINE_integer("examples", 12, "Two-digit images read wrong drawn in the picture.")
_SEED = flags.DEFINE_integer("seed", 0, "Inference key.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")


def test_images(run: api.Run, num: int, data_seed: int) -> tuple[dict, int]:
    """The run's test data as images: ``images [n, H, W]`` uint8, ``counts [n]``, ``boxes [n, M, 4]`` (SQAIR: the
    frames of ``num`` sequences, sequence-major, with ``presence [n, D]`` of the true digits and
    ``frames_per_sequence``); and the generator seed used."""
    tc = run.config.task_config
    if run.task_name == "air":
        from ocr_jax.tasks.air import load_multi_mnist

        data_cfg = tc.data.copy_and_resolve_references()
        if data_seed >= 0:
            data_cfg.seed = data_seed
        data = load_multi_mnist(data_cfg, "test")
        if "boxes" not in data:
            raise app.UsageError(f"the test data of this run ({data_cfg.name}) has no digit boxes")
        n = min(num, len(data["images"]))
        return {k: data[k][:n] for k in ("images", "counts", "boxes")}, int(data_cfg.seed)
    from ocr_jax.tasks import sqair as sqair_task

    task_cfg = run.task.config
    seed = task_cfg.data_seed + 1 if data_seed < 0 else data_seed  # the training's own test split: data_seed + 1
    seqs = sqair_task.load_sequences(task_cfg, "test", min(num, task_cfg.num_eval) if data_seed < 0 else num, seed)
    n, t = seqs["counts"].shape
    return dict(
        images=seqs["frames"].reshape(n * t, *seqs["frames"].shape[2:]),
        counts=seqs["counts"].reshape(-1),
        boxes=seqs["boxes"].reshape(n * t, *seqs["boxes"].shape[2:]),
        presence=seqs["presence"].reshape(n * t, -1),
        sequence_counts=np.repeat(seqs["sequence_counts"], t),
        frames_per_sequence=t,
    ), seed


def anatomy_of_run(run: api.Run, data: dict, *, num_particles: int, key: jax.Array) -> tuple[dict, dict]:
    """Inference on ``data`` (as :func:`test_images`) -> (the JSON summary, per-image predictions ``counts [n]``,
    ``boxes [n, N, 4]``, ``presence [n, N]``)."""
    if run.task_name == "air":
        pred = api.infer_images(run, data["images"], key=key, num_particles=num_particles)
        n_max = run.model.config.max_steps
    else:
        t = data["frames_per_sequence"]
        frames = data["images"].reshape(-1, t, *data["images"].shape[1:])
        seq = api.infer_sequences(run, frames, key=key, num_particles=num_particles)
        keys = ("counts", "present_counts", "boxes", "presence", "visible", "ids")
        pred = {k: seq[k].reshape(-1, *seq[k].shape[2:]) for k in keys}
        n_max = run.model.config.max_objects
    true = np.minimum(data["counts"], n_max)
    confusion = np.zeros((n_max + 1, n_max + 1), np.int64)
    np.add.at(confusion, (true, pred["counts"]), 1)
    summary = dict(
        task=run.task_name,
        step=run.step,
        num_images=int(len(data["images"])),
        particles=num_particles,
        count_accuracy=float(np.trace(confusion) / confusion.sum()),
        confusion=confusion.tolist(),
    )
    if "frames_per_sequence" in data:
        right = (true == pred["counts"]).reshape(-1, data["frames_per_sequence"])
        summary["count_accuracy_by_frame"] = right.mean(0).round(4).tolist()
        seq_shape = (-1, data["frames_per_sequence"])
        summary["lost_digits"] = sqair_eval.lost_digit_anatomy(
            *(data[k].reshape(*seq_shape, *data[k].shape[1:]) for k in ("boxes", "presence")),
            *(pred[k].reshape(*seq_shape, *pred[k].shape[1:]) for k in ("boxes", "presence", "ids")),
        )
        summary["while_a_digit_is_wholly_outside"] = sqair_eval.held_objects(data, pred, run.model.config.image_shape)
        # identities against the digits (the objects in view, as the visible count), matched by the run's rule
        summary["tracking"] = sqair_eval.tracking_errors(
            *(data[k].reshape(*seq_shape, *data[k].shape[1:]) for k in ("boxes", "presence")),
            *(pred[k].reshape(*seq_shape, *pred[k].shape[1:]) for k in ("boxes", "visible", "ids")),
            **sqair_eval.tracking_match_options(run.task.config.eval),
        )
    summary.update(air_eval.two_digit_anatomy(data["boxes"], data["counts"], pred["boxes"], pred["counts"]))
    return summary, pred


def blank_canvas_check(run: api.Run, *, num_images: int = 200, num_particles: int = 5, key: jax.Array) -> dict:
    """AIR on blank canvases: how often the inference network places an object where there is nothing, and what
    such a particle costs — its log-weight minus the mean log-weight of the particles without one."""
    out = run.model.infer(
        run.params,
        jax.numpy.zeros((num_images, *run.model.config.canvas_shape)),
        key,
        num_particles=num_particles,
        continue_prob=run.task.continue_prob(run.step),
    )
    n = np.asarray(out.z_pres).sum(-1)
    log_w = np.asarray(out.log_weight)
    return dict(
        particles=int(n.size),
        fraction_with_an_object=float((n > 0).mean()),
        mean_presence_probability_step_1=float(np.asarray(jax.nn.sigmoid(out.presence_logits[..., 0])).mean()),
        log_weight_deficit_of_those=float(log_w[n == 0].mean() - log_w[n > 0].mean()) if (n > 0).any() else None,
    )


def draw(data: dict, pred: dict, summary: dict, path: str, *, examples: int) -> None:
    """Two-digit images read wrong — read as one and read as three, half each where both are there (true boxes
    dashed, glimpse windows coloured by step) — and accuracy on two-digit images by digit gap and by direction."""
    two = data["counts"] == 2
    as_one, as_three = (np.flatnonzero(two & (pred["counts"] == n)) for n in (1, 3))
    n_three = min(len(as_three), max(examples // 2, examples - len(as_one)))  # half each where both are there
    err = np.concatenate([as_one[: examples - n_three], as_three[:n_three]])
    cols = max(len(err), 1)
    fig = plt.figure(figsize=(max(1.6 * cols, 8.0), 4.6))
    for j, i in enumerate(err):
        ax = fig.add_subplot(2, cols, j + 1)
        ax.set_title(f"2 read as {pred['counts'][i]}", fontsize=7)
        ax.imshow(data["images"][i], cmap="gray", vmin=0, vmax=255)
        plotting.draw_boxes(ax, data["boxes"][i], data["boxes"][i, :, 2] > data["boxes"][i, :, 0], linestyle="--")
        steps = np.arange(1, 1 + pred["boxes"].shape[1])
        plotting.draw_boxes(ax, pred["boxes"][i], pred["presence"][i], color_ids=steps)
        ax.set_axis_off()
    for k, (key, label, xlabel) in enumerate(
        [
            ("by_gap", "gap_px", "gap between the two digits' tight boxes (px; ≤ 0: touching or overlapping)"),
            ("by_direction", "direction_deg", "direction of the line joining them (°; 0 side by side, 135 ↗↙)"),
        ]
    ):
        ax = fig.add_subplot(2, 2, 3 + k)
        rows = [r for r in summary[key] if r["images"]]
        ax.bar([r[label] for r in rows], [r["accuracy"] for r in rows], color="tab:blue")
        for j, r in enumerate(rows):
            ax.text(j, r["accuracy"], f"{r['right']}/{r['images']}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("two-digit images read right")
    title = (
        f"{summary['task']} step {summary['step']}: two-digit images read as one "
        f"{summary['two_as_one']['errors']}, as three {summary['two_as_three']['errors']}"
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    cli.start_script(argv)
    run = api.load_run(_WORKDIR.value, step=_STEP.value)
    data, seed = test_images(run, _NUM.value, _DATA_SEED.value)
    summary, pred = anatomy_of_run(run, data, num_particles=_PARTICLES.value, key=jax.random.PRNGKey(_SEED.value))
    summary["data_seed"] = seed
    if run.task_name == "air":
        summary["blank_canvas"] = blank_canvas_check(run, key=jax.random.PRNGKey(_SEED.value + 1))
    out = os.path.join(_WORKDIR.value, "errors" + (f"_seed{_DATA_SEED.value}" if _DATA_SEED.value >= 0 else ""))
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    draw(data, pred, summary, out + ".png", examples=_EXAMPLES.value)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("by_gap", "by_direction")}, indent=1))
    for r in summary["by_gap"] + summary["by_direction"]:
        print(r)
    print(f"wrote {out}.json and {out}.png")


if __name__ == "__main__":
    app.run(main)

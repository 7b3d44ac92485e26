"""Count with a trained AIR or SQAIR run on images or sequences from elsewhere — a file this repository did not make —
through the public inference API, against the labels the file brings (issues #13 and #15: "counting on held-out
data generated outside this repository, run through the public API").

    python -m experiments.count_external --workdir=runs/sqair_conv_short_seed2 --data=held_out.npz
    python -m experiments.count_external --workdir=runs/main/air --data=held_out_images.npz --particles=1

``--data`` is an ``.npz`` with, for a SQAIR run,
  ``frames [n, T, H, W]`` uint8 (0..255) or float in [0, 1], and at least one label:
  ``counts [n, T]`` int: the digits *visible* in each frame (at least one pixel on the canvas), compared with the
    objects the model has in view (``infer_sequences``' ``counts``), and/or
  ``sequence_counts [n]`` int: the digits of each sequence (the official per-sequence label of Table 5.4.1),
    compared in every frame with the objects the model holds (``present_counts``);
and for an AIR run ``images [n, H, W]`` and ``counts [n]``. These are the names of this package's own datasets
(docs/datasets.md), so its test split saved with ``numpy.savez`` is a valid file too.

Prints and writes ``--out`` (default ``<workdir>/external_<file stem>.json``): for each label, the accuracy over all
frames (images), in frame 1 and in later frames, per frame index, the confusion matrix (true × inferred count) and
the frames counted too high and too low; for SQAIR with both labels, the visible-count accuracy separately in the
frames where a digit of the sequence is wholly outside (``counts < sequence_counts``) and in the others. Inference is
``api.infer_sequences`` / ``api.infer_images`` with the best of ``--particles`` posterior samples and the key
``--seed`` (item i uses ``fold_in(key, i)``, so a result does not depend on ``--num`` or the batch size).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from ocr_jax import api, cli

# The arrays each task reads: the inputs, then the labels (at least one of them must be in the file).
INPUTS = {"sqair": "frames", "air": "images"}
LABELS = {"sqair": ("counts", "sequence_counts"), "air": ("counts",)}


def load_external(path: str, task: str, num: int | None = None) -> dict[str, np.ndarray]:
    """The inputs and labels of ``task`` from the ``.npz`` at ``path`` (first ``num`` items), with shapes and label
    values checked; ValueError names what is missing or wrong and the arrays the file has."""
    with np.load(path) as f:
        found = {k: f[k] for k in f.files}
    have = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in found.items()) or "no arrays"
    name = INPUTS[task]
    if name not in found:
        raise ValueError(f"{path}: a {task} run needs `{name}`; the file has {have}")
    labels = [k for k in LABELS[task] if k in found]
    if not labels:
        raise ValueError(f"{path}: a {task} run needs at least one label of {LABELS[task]}; the file has {have}")
    data = {k: found[k][:num] for k in (name, *labels)}
    lead = data[name].shape[: 2 if task == "sqair" else 1]
    expected = {"counts": lead, "sequence_counts": lead[:1]}
    for k in labels:
        v = data[k]
        if v.shape != expected[k]:
            raise ValueError(
                f"{path}: `{k}` has shape {v.shape}; with `{name}` {data[name].shape} it must be {expected[k]}"
            )
        if not np.issubdtype(v.dtype, np.integer) or (v < 0).any():
            raise ValueError(f"{path}: `{k}` must hold non-negative integer counts; got {v.dtype} from {v.min()}")
    return data


def count_scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy of the inferred counts ``pred`` against ``true`` (both ``[n]`` or ``[n, T]``, broadcast): overall, and
    for sequences in frame 1, later frames and each frame index; the confusion matrix ``[true][inferred]``; how many
    frames are counted too high and too low."""
    true, pred = np.broadcast_arrays(np.asarray(true), np.asarray(pred))
    right = true == pred
    size = int(max(true.max(), pred.max())) + 1
    confusion = np.zeros((size, size), np.int64)
    np.add.at(confusion, (true.ravel(), pred.ravel()), 1)
    out = dict(
        accuracy=float(right.mean()),
        frames=int(right.size),
        too_high=int((pred > true).sum()),
        too_low=int((pred < true).sum()),
        confusion=confusion.tolist(),
    )
    if right.ndim == 2:
        out.update(
            frame1=float(right[:, 0].mean()),
            later_frames=float(right[:, 1:].mean()) if right.shape[1] > 1 else None,
            by_frame=[round(float(a), 5) for a in right.mean(0)],
        )
    return out


def score_run(run: api.Run, data: dict, *, particles: int, seed: int) -> dict:
    """Infer with ``run`` on ``data`` (:func:`load_external`) through the public API and score every label."""
    start = time.perf_counter()
    if run.task_name == "sqair":
        out = api.infer_sequences(run, data["frames"], num_particles=particles, key=seed)
    else:
        out = api.infer_images(run, data["images"], num_particles=particles, key=seed)
    result = dict(
        task=run.task_name,
        step=int(run.step),
        items=len(data[INPUTS[run.task_name]]),
        particles=particles,
        seed=seed,
        inference_seconds=round(time.perf_counter() - start, 1),
    )
    if "counts" in data:
        result["visible_count" if run.task_name == "sqair" else "count"] = count_scores(data["counts"], out["counts"])
    if "sequence_counts" in data:
        result["sequence_label"] = count_scores(data["sequence_counts"][:, None], out["present_counts"])
    if "counts" in data and "sequence_counts" in data:
        departed = data["counts"] < data["sequence_counts"][:, None]
        right = out["counts"] == data["counts"]
        result["visible_count_by_frame_kind"] = {
            "a digit wholly outside": dict(frames=int(departed.sum()), accuracy=_mean(right[departed])),
            "every digit at least partly in view": dict(
                frames=int((~departed).sum()), accuracy=_mean(right[~departed])
            ),
        }
    return result


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def main(argv):
    cli.start_script(argv)
    run = api.load_run(_WORKDIR.value, step=_STEP.value)
    data = load_external(_DATA.value, run.task_name, _NUM.value)
    particles = _PARTICLES.value or (5 if run.task_name == "sqair" else 1)
    print(f"{run.task_name} run {_WORKDIR.value} (step {run.step}): inferring {len(data[INPUTS[run.task_name]])} items")
    result = dict(
        workdir=_WORKDIR.value,
        data=os.path.abspath(_DATA.value),
        **score_run(run, data, particles=particles, seed=_SEED.value),
    )
    stem = os.path.splitext(os.path.basename(_DATA.value))[0]
    path = _OUT.value or os.path.join(_WORKDIR.value, f"external_{stem}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    for label in ("count", "visible_count", "sequence_label"):
        if label in result:
            s = result[label]
            by = f"; frame 1 {s['frame1']:.4f}" if "frame1" in s else ""
            by += f", later frames {s['later_frames']:.4f}" if s.get("later_frames") is not None else ""
            print(
                f"{label}: {s['accuracy']:.4f} of {s['frames']}{by}; too high {s['too_high']}, too low {s['too_low']}"
            )
    for kind, s in result.get("visible_count_by_frame_kind", {}).items():
        print(f"  visible count, frames with {kind}: {s['accuracy']} of {s['frames']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _WORKDIR = flags.DEFINE_string(
        "workdir", None, "A trained AIR or SQAIR run (config.json + checkpoints).", required=True
    )
    _DATA = flags.DEFINE_string("data", None, "The .npz of frames or images and their count labels.", required=True)
    _PARTICLES = flags.DEFINE_integer(
        "particles", None, "Posterior samples per item, the best used (default SQAIR 5, AIR 1)."
    )
    _NUM = flags.DEFINE_integer("num", None, "Use the first NUM items only (default: all).")
    _SEED = flags.DEFINE_integer("seed", 0, "Inference key (an int seed of the API).")
    _STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
    _OUT = flags.DEFINE_string("out", None, "Output JSON (default: <workdir>/external_<data file stem>.json).")
    app.run(main)

"""Evaluation of SQAIR (a task of ``ocr_jax.tasks.sqair``, thesis §5.4.1, §5.D.4, §5.G): counting accuracy, bounds
and log p(x) over test sequences (:func:`evaluate_sqair`), tracking quality against the dataset's ground-truth
identities, and the addition experiment (:func:`tracking_and_addition`). The tracking and addition metrics take
arrays, so AIR's frame-wise evaluation (``ocr_jax.evaluation.air``) uses them too.

The functions that run the model take the task object: ``task.model`` (``ocr_jax.models.sqair.SQAIR``),
``task.config`` (its ``eval`` settings), ``task.eval_step`` and ``task.disc_later_bias(step)`` (DISC's suppression).

Axes: ``time`` (T), ``true`` (D, ground-truth identities = the moving-MNIST digit slots), ``slots`` (N, the model's
object slots), ``batch`` (B), ``features`` (F = N·Dw). Boxes are ``(y_min, x_min, y_max, x_max)`` in pixel edges.

Tracking (CLEAR-MOT conventions, Bernardin & Stiefelhagen 2008). Every frame, ground-truth objects are matched
one-to-one to present inferred objects with IoU ≥ ``iou_threshold`` — or, with ``coverage_threshold``, when at least
that fraction of the true (tight) box lies inside the inferred box (:func:`box_coverage`: the model's boxes are glimpse
windows, larger than the digits' tight boxes, so their IoU with them is low even when they hold the digit) — maximising
the total IoU (:func:`match_objects`;
in :func:`tracking_errors` a correspondence from the previous match is kept first while it is still valid, as in
CLEAR-MOT). Counted per sequence, then summed over sequences:

* ``matches`` (matched object-frames), ``misses`` (present true objects left unmatched), ``false_positives``
  (present inferred objects left unmatched);
* ``continuations``: matches of a true object that had already been matched in an earlier frame — the chances to
  keep or lose its identity;
* ``switches``: continuations whose inferred identity differs from the one the true object was last matched to,
  split into
  - ``redetections``: the new identity did not exist (in any slot) in the frame where the object was last matched,
    i.e. it was created after that frame — the model forgot the object and discovered it again (§5.G). For
    consecutive frames this is "the new identity did not exist in the previous frame". Identities are never re-used,
    so this is the same as "the identity is younger than the last match";
  - ``swaps``: the new identity already existed (it was tracking something else, or a duplicate); of these,
    ``exchanges``: the identity it left is matched to another true object in the same frame (two tracks traded
    objects, e.g. where two digits cross); and ``swaps_near_overlap``: the true object's box overlapped another
    true object's in this frame or one of the ``OVERLAP_WINDOW`` frames before it (a swap where objects cross);
* ``merged_misses``: misses whose true box lies at least ``MERGE_COVERAGE`` inside the window of an inferred object
  matched to another true object in that frame — one object that paints two digits (AIR's merged-object mode);
* ``redetections_at_t2`` / ``continuations_at_t2``: the same at frame index 1 (the "re-detected in the second frame"
  failure mode), ``redetections_late`` / ``continuations_late`` at frame indices ≥ 2.

Rates (:func:`summarise_tracking`) divide by ``continuations`` or by ``matched_tracks`` (true identities matched at
least once); undefined rates (zero denominators) are ``None`` so that the result stays JSON-able.

Addition (§5.D.4): features are the concatenated ``z_what · z_pres`` of the N slots (slots sorted by identity, which
in this model is the slot order already, see the "Slots" paragraph of ocr_jax.models.sqair), the target is the
per-frame sum of the visible digits' labels (0..9·D; an empty frame is 0), and the classifier is an MLP (2×256 ELU,
softmax over 9·D + 1 = 19 classes for D = 2) trained with Adam on the frozen model's features.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from ocr_jax import spatial_transformer as st
from ocr_jax.data import to_unit_float
from ocr_jax.diagnostics import log_marginal_chunked

__all__ = [
    "AdditionMLP",
    "COUNT_KEYS",
    "FAILURE_MODES",
    "FAILURE_THRESHOLDS",
    "MERGE_COVERAGE",
    "PERIODIC_TRACKING_KEYS",
    "add_counts",
    "addition_experiment",
    "addition_features",
    "addition_on_features",
    "addition_targets",
    "box_coverage",
    "box_iou",
    "boxes_of",
    "best_particle_outputs",
    "boxes_of_raw",
    "classify_failure_mode",
    "eval_functions",
    "evaluate_sqair",
    "inference_batches",
    "LOST_DIGIT_KINDS",
    "OVERLAP_WINDOW",
    "log_marginal_results",
    "lost_digit_anatomy",
    "match_objects",
    "matchable_pairs",
    "per_sequence_estimates",
    "summarise_tracking",
    "tracking_and_addition",
    "tracking_counts",
    "tracking_errors",
    "tracking_match_options",
    "train_addition_classifier",
    "task_object_ink",
    "task_visible_objects",
    "two_digit_overlap",
    "visible_objects",
    "window_fraction_on_canvas",
]

COUNT_KEYS = (
    "num_sequences",
    "total_frames",
    "num_true",
    "num_inferred",
    "num_tracks",
    "matched_tracks",
    "matches",
    "misses",
    "merged_misses",
    "false_positives",
    "continuations",
    "switches",
    "swaps",
    "exchanges",
    "swaps_near_overlap",
    "redetections",
    "redetections_at_t2",
    "continuations_at_t2",
    "redetections_late",
    "continuations_late",
)


# ----------------------------------------------------------------------------------------------------------------------
# Counting, bounds and log p(x) over sequences (Table 5.4.1)


# Tracking numbers added to the periodic evaluations (``eval.periodic_tracking``) as ``tracking_<key>``.
PERIODIC_TRACKING_KEYS = (
    "recall",
    "precision",
    "switch_rate",
    "redetection_rate",
    "redetection_rate_at_t2",
    "merged_miss_rate",
    "mota",
    "failure_mode",
)

# The jitted inference functions of each task (keyed weakly: they go with the task), built once per task so that
# periodic evaluations do not recompile.
_EVAL_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def eval_functions(task) -> tuple[Callable, Callable, Callable]:
    """Jitted ``infer(params, frames, key, disc_later_presence_bias, posterior_means=False)`` with
    ``eval.num_particles`` particles (``posterior_means`` static: ``SQAIR.infer``'s) and
    ``log_marginal(params, frames, key)`` (IWAE with ``eval.log_marginal_particles``, chunked) for ``task.model``;
    frames uint8 (``to_unit_float``) or float; and ``object_ink(params, z_what, z_where)`` (``SQAIR.object_ink``).
    Built once per task."""
    if task not in _EVAL_FUNCTIONS:
        model, ev = task.model, task.config.eval

        def infer(p, x, k, b, posterior_means=False):
            return model.infer(
                p, to_unit_float(x), k, ev.num_particles, disc_later_presence_bias=b, posterior_means=posterior_means
            )

        infer = jax.jit(infer, static_argnames="posterior_means")

        @jax.jit
        def log_marginal(p, x, k):
            def log_weight_fn(kk, num):
                return model.infer(p, to_unit_float(x), kk, num)["log_weight"]

            return log_marginal_chunked(log_weight_fn, k, ev.log_marginal_particles, ev.log_marginal_chunk)

        _EVAL_FUNCTIONS[task] = (infer, log_marginal, jax.jit(model.object_ink))
    return _EVAL_FUNCTIONS[task]


def boxes_of(task, z_where) -> np.ndarray:
    """The spatial-transformer ``z_where [..., 4]`` (the outputs' ``z_where``, (s_x, s_y, t_x, t_y)) -> boxes ``[...,
    4]`` in pixel edges (y_min, x_min, y_max, x_max): the glimpse windows."""
    return np.asarray(st.z_where_to_box(jnp.asarray(z_where), task.model.config.image_shape))


def boxes_of_raw(task, z_where_raw) -> np.ndarray:
    """The Gaussian latent ``z_where_raw [..., 4]`` (the outputs' ``z_where_raw``) -> boxes ``[..., 4]`` in pixel
    edges: :func:`boxes_of` of ``task.model.to_transform(z_where_raw)``, the transform computed here, op by op.

    The evaluation's boxes come from this (as they always did), not from the outputs' ``z_where``: a jitted
    ``model.infer`` computes that transform inside XLA's fusions, which can round the last bit differently.
    """
    return boxes_of(task, task.model.to_transform(jnp.asarray(z_where_raw)))


# A present object is in view when at least this fraction of its glimpse window lies on the canvas (eval config
# ``visible_min_fraction``). A glimpse window is the digit's tight box plus a margin of about an eighth of its side on
# each edge (median 26 px windows on 20 px digits in docs/results.md), so a digit with a sliver inside the frame — what
# the data's visible count counts — keeps about 0.1 of its window on the canvas. Under the official shift map
# (``shift_bound = 1``) a glimpse's centre never leaves the canvas, so at least a quarter of every window is on it
# and every present object is in view.
VISIBLE_MIN_FRACTION = 0.1
# ... and (eval config ``visible_min_ink``) when the brightest pixel it draws on the canvas (``SQAIR.object_ink``) is at
# least this; 0 (the default, and that of runs saved before the field) leaves the window rule alone.
VISIBLE_MIN_INK = 0.0


def visible_objects(
    boxes: np.ndarray,
    presence: np.ndarray,
    image_shape: Sequence[int],
    min_fraction: float = VISIBLE_MIN_FRACTION,
    *,
    ink: np.ndarray | None = None,
    min_ink: float = VISIBLE_MIN_INK,
) -> np.ndarray:
    """``[..., slots]`` bool: the present objects in view — ``presence [..., slots]``, at least ``min_fraction``
    of the glimpse window ``boxes [..., slots, 4]`` (pixel edges) on the ``(H, W) = image_shape`` canvas, and, when
    ``min_ink > 0``, a brightest drawn pixel ``ink [..., slots]`` (``SQAIR.object_ink``) of at least ``min_ink``.

    The visible count of a frame is the number of these; the number of present objects (in view or not) is what the
    official per-sequence label counts: a model may hold an object whose digit has left the frame wholly
    (``shift_bound > 1``) and draw it again when the digit comes back. Held at the edge, such an object can keep a
    good part of its window on the canvas while drawing nothing there: the ink tells the two apart."""
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1]; got {min_fraction!r}")
    if not 0.0 <= min_ink <= 1.0:
        raise ValueError(f"min_ink must be in [0, 1] (the decoder draws intensities in (0, 1)); got {min_ink!r}")
    boxes = np.asarray(boxes, np.float64)
    presence = np.asarray(presence).astype(bool)
    if boxes.shape != (*presence.shape, 4):
        raise ValueError(f"boxes {boxes.shape} must be presence's shape {presence.shape} plus (4,)")
    visible = presence & (window_fraction_on_canvas(boxes, image_shape) >= min_fraction)
    if min_ink > 0.0:
        if ink is None:
            raise ValueError(f"min_ink = {min_ink} needs the objects' ink (SQAIR.object_ink); got ink=None")
        ink = np.asarray(ink)
        if ink.shape != presence.shape:
            raise ValueError(f"ink {ink.shape} must have presence's shape {presence.shape}")
        visible &= ink >= min_ink
    return visible


# Sequences per call of the jitted ink: its [chunk, T, slots, H, W] pasted glimpses stay below ~50 MB.
_INK_CHUNK = 64


def task_object_ink(task, params, z_what: np.ndarray, z_where_raw: np.ndarray) -> np.ndarray:
    """``[..., slots]``: ``SQAIR.object_ink`` of a SQAIR task's outputs ``z_what [..., slots, D]`` and ``z_where_raw
    [..., slots, 4]`` (the Gaussian latent) on the host, jitted once per task (:func:`eval_functions`), in chunks
    along the first axis."""
    object_ink = eval_functions(task)[2]
    z_what = np.asarray(z_what)
    z_where = np.asarray(task.model.to_transform(jnp.asarray(z_where_raw)))
    chunks = [
        np.asarray(object_ink(params, z_what[s : s + _INK_CHUNK], z_where[s : s + _INK_CHUNK]))
        for s in range(0, max(len(z_what), 1), _INK_CHUNK)
    ]
    return np.concatenate(chunks).reshape(z_what.shape[:-1])


def task_visible_objects(task, params, z_what: np.ndarray, z_where_raw: np.ndarray, presence: np.ndarray) -> np.ndarray:
    """:func:`visible_objects` of a SQAIR task's outputs — ``z_what [..., slots, D]``, ``z_where_raw [..., slots, 4]``
    (the Gaussian latent) and ``presence [..., slots]`` — with its canvas and its ``eval.visible_min_fraction`` and
    ``eval.visible_min_ink`` (runs saved before these fields: :data:`VISIBLE_MIN_FRACTION`, :data:`VISIBLE_MIN_INK`).
    The ink (:func:`task_object_ink` with ``params``) is computed only when the rule reads it."""
    ev = task.config.eval
    min_fraction = ev.get("visible_min_fraction", VISIBLE_MIN_FRACTION)
    min_ink = ev.get("visible_min_ink", VISIBLE_MIN_INK)
    ink = task_object_ink(task, params, z_what, z_where_raw) if min_ink > 0.0 else None
    boxes = boxes_of_raw(task, z_where_raw)
    return visible_objects(boxes, presence, task.model.config.image_shape, min_fraction, ink=ink, min_ink=min_ink)


def window_fraction_on_canvas(boxes: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """``[...]``: the fraction of each window ``boxes [..., 4]`` (pixel edges) that lies on the ``(H, W)`` canvas; 0
    for an empty window."""
    boxes = np.asarray(boxes, np.float64)
    H, W = image_shape
    on_y = np.clip(np.minimum(boxes[..., 2], H) - np.maximum(boxes[..., 0], 0.0), 0.0, None)
    on_x = np.clip(np.minimum(boxes[..., 3], W) - np.maximum(boxes[..., 1], 0.0), 0.0, None)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return np.where(area > 0, on_y * on_x / np.where(area > 0, area, 1.0), 0.0)


def held_objects(data: dict, pred: dict, image_shape) -> dict:
    """Frames in which a digit of the sequence is wholly outside (visible count below the official
    per-sequence label): how many, how often the model's present objects still match the label, how often its objects
    in view match the visible count (and, for comparison, how often they do in all the other frames), and the
    fraction of the glimpse window on the canvas: its smallest value over the present objects, and the quantiles
    (10, 25, 50, 75, 90 %) over these frames of each frame's smallest value — the window of the object held for the
    digit that left (under the official shift map at least a quarter: the object is held at the edge). Such a digit
    touches the edge from outside (the official recipe bounds the corner to [0, 50]), so a glimpse that follows it
    exactly keeps only its margin on the canvas.

    ``data``: ``counts [n]`` (digits visible in each frame), ``sequence_counts [n]`` (the official per-sequence label
    of each frame's sequence); ``pred``: ``boxes [n, N, 4]`` (glimpse windows, pixel edges), ``presence [n, N]``,
    ``counts [n]`` (objects in view), ``present_counts [n]``; ``image_shape = (H, W)``."""
    frames = np.asarray(data["counts"]) < np.asarray(data["sequence_counts"])
    window = window_fraction_on_canvas(pred["boxes"][frames], image_shape)
    smallest = np.where(pred["presence"][frames], window, np.inf).min(-1)  # per frame, over its present objects
    smallest = smallest[np.isfinite(smallest)]
    in_view_right = pred["counts"] == data["counts"]

    def mean_or_none(x):
        return float(np.mean(x)) if x.size else None

    return dict(
        frames=int(frames.sum()),
        present_count_is_the_label=mean_or_none(pred["present_counts"][frames] == data["sequence_counts"][frames]),
        count_in_view_is_visible_count=mean_or_none(in_view_right[frames]),
        count_in_view_is_visible_count_in_the_other_frames=mean_or_none(in_view_right[~frames]),
        min_window_fraction_on_canvas=float(smallest.min()) if smallest.size else None,
        smallest_window_fraction_quantiles=np.quantile(smallest, [0.1, 0.25, 0.5, 0.75, 0.9]).round(4).tolist()
        if smallest.size
        else None,
    )


def inference_batches(task, params, frames: np.ndarray, key: jax.Array, posterior_means: bool = False):
    """Runs the jitted ``infer`` of :func:`eval_functions` (``eval.num_particles`` particles) over ``frames [n, T, H,
    W]`` in batches of ``eval.batch_size``, with key ``fold_in(key, start)`` for the batch starting at sequence
    ``start``, so that every evaluation of the same frames with the same key sees the same particles. Yields ``(start,
    out, pick)``: the host outputs ``[B, K, ...]`` and ``pick``, which selects the best particle (largest log-weight):
    ``[B, K, ...] -> [B, ...]``. DISC's suppression is that of training step ``task.eval_step`` (set by the periodic
    evaluation; default: after training, i.e. none). ``posterior_means``: z_where and z_what at their posterior
    means (``SQAIR.infer``)."""
    infer = eval_functions(task)[0]
    bias = task.disc_later_bias(task.eval_step)
    for start in range(0, len(frames), task.config.eval.batch_size):
        batch = frames[start : start + task.config.eval.batch_size]
        out = jax.device_get(
            infer(params, batch, jax.random.fold_in(key, start), bias, posterior_means=posterior_means)
        )
        best = np.argmax(out["log_weight"], axis=1)
        yield start, out, lambda a, best=best: np.asarray(a)[np.arange(len(best)), best]


def per_sequence_estimates(fn, params, frames: np.ndarray, key: jax.Array, batch_size: int, key_offset: int):
    """``fn(params, frames [B, T, H, W], key) -> [B]`` over ``frames [n, T, H, W]`` in batches of ``batch_size``,
    with key ``fold_in(key, key_offset + start)`` for the batch starting at sequence ``start``: ``[n]`` on the host.
    The offsets keep an evaluation's estimates apart from its inference batches (:func:`inference_batches`)."""
    return np.concatenate(
        [
            np.asarray(fn(params, frames[s : s + batch_size], jax.random.fold_in(key, key_offset + s)))
            for s in range(0, len(frames), batch_size)
        ]
    )


def log_marginal_results(
    log_marginal, params, frames: np.ndarray, key: jax.Array, ev, num_sequences: int | None = None
) -> dict:
    """log p(x_{1:T}) as the thesis measures it (§5.4.1) on the first ``num_sequences`` (default
    ``ev.log_marginal_sequences``) of ``frames [n, T, H, W]``: ``log_marginal`` (``(params, frames, key) -> [B]``,
    IWAE with ``ev.log_marginal_particles``) in batches of ``ev.batch_size`` with keys ``fold_in(key, 10_000 +
    start)``. Returns the mean ``log_marginal``, ``log_marginal_sequences`` and ``log_marginal_particles``; ``{}``
    for no sequences. SQAIR's and the VRNN's evaluations (``ocr_jax.evaluation.vrnn``)."""
    m = min(ev.log_marginal_sequences if num_sequences is None else num_sequences, len(frames))
    if m < 1:
        return {}
    estimates = per_sequence_estimates(log_marginal, params, frames[:m], key, ev.batch_size, 10_000)
    return dict(
        log_marginal=float(np.mean(estimates)),
        log_marginal_sequences=int(m),
        log_marginal_particles=int(ev.log_marginal_particles),
    )


def two_digit_overlap(data: dict[str, np.ndarray]) -> np.ndarray:
    """``[n, T]`` int8: 1 where a frame shows exactly two digits whose tight ``boxes`` (y_min, x_min, y_max, x_max)
    intersect, 0 where it shows two apart, −1 for every other frame."""
    boxes, presence = np.asarray(data["boxes"]), np.asarray(data["presence"], bool)
    out = np.full(presence.shape[:2], -1, np.int8)
    two = presence.sum(-1) == 2
    if boxes.shape[2] < 2 or not two.any():
        return out
    a, b = boxes[..., 0, :], boxes[..., 1, :]
    inter = (np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0])) & (
        np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1])
    )
    two_first = two & presence[..., 0] & presence[..., 1]
    out[two_first] = inter[two_first].astype(np.int8)
    return out


def evaluate_sqair(
    task,
    params,
    data: dict[str, np.ndarray],
    *,
    key: jax.Array,
    num_sequences: int | None = None,
    log_marginal_sequences: int | None = None,
) -> dict:
    """Test-set evaluation over all ``T`` frames (no curriculum mask).

    Per batch of sequences ``[B, T, H, W]``, K = ``eval.num_particles`` particles are drawn; the particle with the
    largest log-weight gives the inferred count of every frame — the present objects in view
    (:func:`visible_objects`, ``eval.visible_min_fraction``) — compared with the dataset's ``counts [B, T]`` (digits
    visible in the frame); the official per-sequence label is compared with the present objects, in view or not.
    Returns floats: ``count_accuracy`` (over frames), ``count_accuracy_first_frame`` and
    ``count_accuracy_later_frames`` (frame 1 is DISC alone; later frames need PROP), ``count_accuracy_by_frame`` (a
    list over frame indices), ``count_accuracy_official_label`` (against the official per-sequence label
    ``sequence_counts``, as Table 5.4.1, when the data has it), ``count_accuracy_two_digits_apart`` /
    ``_overlapping`` (two-digit frames whose tight boxes are apart / overlap), ``sequence_count_accuracy`` (all T
    frames right), ``iwae`` = mean_b log (1/K) Σ_k w_bk and ``iwae_per_frame``, ``elbo`` = mean log w,
    ``log_likelihood`` = mean log p(x|z), ``kl`` = log_likelihood − elbo, ``num_objects`` per frame (present),
    ``out_of_view_objects_per_frame`` (present, not in view); ``log_marginal`` (IWAE with
    ``eval.log_marginal_particles`` particles, chunked) on the first ``log_marginal_sequences`` (default
    ``eval.log_marginal_sequences``) sequences; ``confusion`` [true, inferred (in view)] counts; and ``example``: the
    first ``eval.num_pictures`` sequences with the best particle's ``canvas``, ``boxes`` (pixel edges), ``z_pres`` and
    ``ids``.
    """
    cfg = task.config
    ev = cfg.eval
    model = task.model
    n = min(num_sequences or len(data["frames"]), len(data["frames"]))
    if n < 1:
        raise ValueError("evaluate_sqair needs at least one sequence")
    K = ev.num_particles
    log_marginal = eval_functions(task)[1]
    max_count = model.config.max_objects
    sums = dict(
        correct=0.0,
        seq_correct=0.0,
        iwae=0.0,
        elbo=0.0,
        log_likelihood=0.0,
        num_objects=0.0,
        correct_official=0.0,
        num_out_of_view=0.0,
    )
    T = data["frames"].shape[1]
    correct_by_frame = np.zeros(T)
    overlap = two_digit_overlap(data) if "boxes" in data and "presence" in data else None  # [n, T] or None
    by_overlap = np.zeros((2, 2))  # [apart / overlapping two-digit frames, (correct, total)]
    confusion = np.zeros((max_count + 1, max_count + 1), np.int64)
    example = None
    T = data["frames"].shape[1]
    for start, out, pick in inference_batches(task, params, data["frames"][:n], key):
        log_w = out["log_weight"]  # [B, K]
        num = len(log_w)
        present = pick(out["z_pres"]) > 0.5  # [B, T, N]
        boxes = boxes_of_raw(task, pick(out["z_where_raw"]))
        visible = task_visible_objects(task, params, pick(out["z_what"]), pick(out["z_where_raw"]), present)
        counts = visible.sum(-1).astype(np.int64)  # [B, T]: objects in view, against the visible digits
        true = np.minimum(data["counts"][start : start + num], max_count)
        np.add.at(confusion, (true.ravel(), counts.ravel()), 1)
        sums["correct"] += float(np.sum(counts == true))
        correct_by_frame += np.sum(counts == true, axis=0)
        if overlap is not None:
            ov = overlap[start : start + num]  # -1: not a two-digit frame
            for o in (0, 1):
                by_overlap[o] += (np.sum((counts == true) & (ov == o)), np.sum(ov == o))
        if "sequence_counts" in data:  # the official per-sequence label (Table 5.4.1), repeated over frames
            label = np.minimum(data["sequence_counts"][start : start + num], max_count)[:, None]
            sums["correct_official"] += float(np.sum(present.sum(-1) == label))  # objects held, in view or not
        sums["seq_correct"] += float(np.sum(np.all(counts == true, axis=1)))
        m = np.max(log_w, axis=1, keepdims=True)
        sums["iwae"] += float(np.sum(m[:, 0] + np.log(np.mean(np.exp(log_w - m), axis=1))))
        sums["elbo"] += float(np.sum(np.mean(log_w, axis=1)))
        sums["log_likelihood"] += float(np.sum(np.mean(out["log_likelihood"].sum(-1), axis=1)))
        sums["num_objects"] += float(np.sum(out["z_pres"].sum(-1).mean(1)))
        sums["num_out_of_view"] += float(np.sum(present & ~visible))
        if example is None:
            j = slice(0, min(ev.num_pictures, num))
            example = dict(
                frames=data["frames"][start : start + num][j],
                canvas=pick(out["canvas"])[j],
                boxes=boxes[j],
                z_pres=pick(out["z_pres"])[j],
                ids=pick(out["ids"])[j],
                true_counts=true[j],
                counts=counts[j],
            )
    results = dict(
        num_sequences=int(n),
        num_frames=int(T),
        num_particles=int(K),
        count_accuracy=sums["correct"] / (n * T),
        sequence_count_accuracy=sums["seq_correct"] / n,
        count_accuracy_first_frame=float(correct_by_frame[0] / n),
        count_accuracy_later_frames=float(correct_by_frame[1:].sum() / (n * (T - 1))) if T > 1 else None,
        count_accuracy_by_frame=(correct_by_frame / n).tolist(),
        iwae=sums["iwae"] / n,
        iwae_per_frame=sums["iwae"] / (n * T),
        elbo=sums["elbo"] / n,
        log_likelihood=sums["log_likelihood"] / n,
        num_objects=sums["num_objects"] / (n * T),
        out_of_view_objects_per_frame=sums["num_out_of_view"] / (n * T),
    )
    results["kl"] = results["log_likelihood"] - results["elbo"]
    if overlap is not None:  # frames with two visible digits whose tight boxes are apart / overlap
        for o, name in ((0, "apart"), (1, "overlapping")):
            if by_overlap[o, 1]:
                results[f"count_accuracy_two_digits_{name}"] = float(by_overlap[o, 0] / by_overlap[o, 1])
    if "sequence_counts" in data:
        results["count_accuracy_official_label"] = sums["correct_official"] / (n * T)
    results.update(log_marginal_results(log_marginal, params, data["frames"][:n], key, ev, log_marginal_sequences))
    results["confusion"] = confusion.tolist()
    results["example"] = example
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Matching


def box_area(x: np.ndarray) -> np.ndarray:
    """Area of boxes ``[..., 4]`` (y_min, x_min, y_max, x_max); 0 for empty or inverted boxes."""
    x = np.asarray(x, np.float64)
    return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area of the intersection of boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    return h * w


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast); 0 where the union is empty."""
    inter = box_intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_coverage(true_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fraction of each true box ``[..., 4]`` that lies inside ``boxes [..., 4]`` (broadcast): intersection / true
    area; 0 where the true box is empty."""
    area = box_area(true_boxes)
    return np.where(area > 0, box_intersection(true_boxes, boxes) / np.where(area > 0, area, 1.0), 0.0)


def matchable_pairs(
    true_boxes, true_presence, boxes, presence, iou_threshold: float, coverage_threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """``true_boxes [..., true, 4]``, ``boxes [..., slots, 4]`` and their presences -> (``iou [..., true, slots]``,
    ``valid [..., true, slots]``): a pair of present objects can be matched when IoU ≥ ``iou_threshold`` or, if
    ``coverage_threshold`` is given, when at least that fraction of the true box lies inside the inferred box
    (:func:`box_coverage`; ``iou_threshold`` is then not used). Among valid pairs the matching maximises total IoU."""
    tb, bx = np.asarray(true_boxes)[..., :, None, :], np.asarray(boxes)[..., None, :, :]
    iou = box_iou(tb, bx)
    if coverage_threshold is None:
        close = iou >= iou_threshold
    else:
        if not 0 < coverage_threshold <= 1:
            raise ValueError(f"coverage_threshold must be in (0, 1] or None; got {coverage_threshold}")
        close = box_coverage(tb, bx) >= coverage_threshold
    valid = (np.asarray(true_presence) > 0)[..., :, None] & (np.asarray(presence) > 0)[..., None, :] & close
    return iou, valid


def _check_frames(true_boxes, true_presence, boxes, presence, ids=None):
    """Validates one sequence's arrays; returns them as numpy (presences as bool)."""
    true_boxes, boxes = np.asarray(true_boxes, np.float64), np.asarray(boxes, np.float64)
    true_presence, presence = np.asarray(true_presence) > 0, np.asarray(presence) > 0
    if true_boxes.ndim != 3 or true_boxes.shape[-1] != 4:
        raise ValueError(f"true_boxes must be [time, true, 4]; got shape {true_boxes.shape}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [time, slots, 4]; got shape {boxes.shape}")
    if true_presence.shape != true_boxes.shape[:2]:
        raise ValueError(
            f"true_presence must be [time, true] = {true_boxes.shape[:2]} to match true_boxes; got "
            f"{true_presence.shape}"
        )
    if presence.shape != boxes.shape[:2]:
        raise ValueError(f"presence must be [time, slots] = {boxes.shape[:2]} to match boxes; got {presence.shape}")
    if boxes.shape[0] != true_boxes.shape[0]:
        raise ValueError(f"boxes have {boxes.shape[0]} frames but true_boxes have {true_boxes.shape[0]}")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != presence.shape:
            raise ValueError(f"ids must be [time, slots] = {presence.shape} to match boxes; got {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers (-1 absent); got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if np.any(presence & (ids < 0)):
            raise ValueError("a present inferred object has a negative identity")
    return true_boxes, true_presence, boxes, presence, ids


def _best_assignment(iou: np.ndarray, valid: np.ndarray, fixed: dict[int, int] | None = None) -> np.ndarray:
    """Exact brute force: ``iou, valid [true, slots]`` -> ``assignment [true]`` (slot or -1), one-to-one over valid
    pairs, maximising (total IoU, number of matches); ties go to the first assignment in lexicographic slot order.
    ``fixed`` pairs (true -> slot) are kept as they are and their slots are not offered to the others."""
    D, N = iou.shape
    out = np.full(D, -1, np.int64)
    fixed = fixed or {}
    for j, s in fixed.items():
        out[j] = s
    free_true = [j for j in range(D) if j not in fixed and valid[j].any()]
    free_slots = [s for s in range(N) if s not in fixed.values()]
    if not free_true:
        return out
    best, best_score = None, (-1.0, -1)
    # each free true object takes one free slot or nothing (-1); at most (N + 1)^D candidates (D, N are small)
    for choice in itertools.product(*[[s for s in free_slots if valid[j, s]] + [-1] for j in free_true]):
        used = [s for s in choice if s >= 0]
        if len(used) != len(set(used)):
            continue
        score = (round(sum(iou[j, s] for j, s in zip(free_true, choice) if s >= 0), 12), len(used))
        if score > best_score:
            best, best_score = choice, score
    for j, s in zip(free_true, best):
        out[j] = s
    return out


def match_objects(
    true_boxes, true_presence, boxes, presence, iou_threshold: float = 0.5, *, coverage_threshold: float | None = None
) -> np.ndarray:
    """Per-frame one-to-one matching of ground-truth objects to inferred objects.

    Args:
      true_boxes [time, true, 4], true_presence [time, true]; boxes [time, slots, 4], presence [time, slots].
      iou_threshold, coverage_threshold: which pairs can be matched (:func:`matchable_pairs`).
    Returns:
      assignment [time, true] int: the inferred slot matched to each ground-truth object, or -1. Among the one-to-one
      assignments of matchable pairs, the one with the largest total IoU (then the most matches; exact brute force,
      fine for the handful of objects per frame here).
    """
    true_boxes, true_presence, boxes, presence, _ = _check_frames(true_boxes, true_presence, boxes, presence)
    iou, valid = matchable_pairs(true_boxes, true_presence, boxes, presence, iou_threshold, coverage_threshold)
    return np.stack([_best_assignment(iou[t], valid[t]) for t in range(iou.shape[0])]).reshape(true_presence.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Tracking errors


# A swap is "near an overlap" when its true object overlapped another in that frame or up to this many frames before.
OVERLAP_WINDOW = 3


def touching_true_objects(true_boxes, true_presence) -> np.ndarray:
    """``true_boxes [..., true, 4]``, ``true_presence [..., true]`` -> ``[..., true]`` bool: the true object's box
    overlaps another present true object's (IoU > 0) in that frame."""
    true_boxes, true_presence = np.asarray(true_boxes), np.asarray(true_presence) > 0
    pair_iou = box_iou(true_boxes[..., :, None, :], true_boxes[..., None, :, :])
    others = true_presence[..., :, None] & true_presence[..., None, :] & ~np.eye(true_presence.shape[-1], dtype=bool)
    return np.any(others & (pair_iou > 0), axis=-1)


def tracking_counts(
    true_boxes,
    true_presence,
    boxes,
    presence,
    ids,
    iou_threshold: float = 0.5,
    *,
    continuity: bool = True,
    coverage_threshold: float | None = None,
) -> dict[str, Any]:
    """Raw tracking counts (module docstring) of ONE sequence, or summed over a batch.

    Args:
      true_boxes [(batch,) time, true, 4], true_presence [(batch,) time, true]: ground truth; the ``true`` axis is the
        ground-truth identity.
      boxes [(batch,) time, slots, 4], presence [(batch,) time, slots], ids [(batch,) time, slots] int (-1 absent):
        the inferred objects.
      iou_threshold, coverage_threshold: which pairs can be matched (:func:`matchable_pairs`).
      continuity: CLEAR-MOT's rule — a true object keeps the inferred identity it was last matched to whenever that
        identity is present and still matchable, before the remaining objects are matched by :func:`match_objects`'s
        criterion. ``False`` matches every frame independently.
    Returns:
      dict of ints (``COUNT_KEYS``; beyond the module docstring's: ``num_sequences``, ``total_frames`` (summed over
      sequences), ``num_true`` / ``num_inferred`` (present true / inferred object-frames), ``num_tracks`` (true
      identities present in at least one frame), ``matched_tracks`` (... matched in at least one frame)) and
      ``iou_sum`` (float, total IoU of the matches).
    """
    if np.ndim(true_presence) == 3:
        if not (len(true_boxes) == len(true_presence) == len(boxes) == len(presence) == len(ids)):
            raise ValueError(
                "batched inputs need the same batch size; got "
                f"{[len(a) for a in (true_boxes, true_presence, boxes, presence, ids)]}"
            )
        total = _zero_counts()
        for b in range(len(true_presence)):
            total = add_counts(
                total,
                tracking_counts(
                    true_boxes[b],
                    true_presence[b],
                    boxes[b],
                    presence[b],
                    ids[b],
                    iou_threshold,
                    continuity=continuity,
                    coverage_threshold=coverage_threshold,
                ),
            )
        return total
    true_boxes, true_presence, boxes, presence, ids = _check_frames(true_boxes, true_presence, boxes, presence, ids)
    T, D = true_presence.shape
    # [time, true, slots]
    iou, valid = matchable_pairs(true_boxes, true_presence, boxes, presence, iou_threshold, coverage_threshold)
    c = _zero_counts()
    c.update(
        num_sequences=1,
        total_frames=T,
        num_true=int(true_presence.sum()),
        num_inferred=int(presence.sum()),
        num_tracks=int(true_presence.any(0).sum()),
    )
    touching = touching_true_objects(true_boxes, true_presence)  # [time, true]
    last_id = np.full(D, -1, np.int64)  # inferred identity each true object was last matched to
    last_t = np.full(D, -1, np.int64)  # ... and the frame of that match
    ever = np.zeros(D, bool)
    for t in range(T):
        fixed = {}
        if continuity:
            for j in range(D):
                if last_id[j] >= 0:
                    slot = np.nonzero(presence[t] & (ids[t] == last_id[j]))[0]
                    if slot.size and valid[t, j, slot[0]] and slot[0] not in fixed.values():
                        fixed[j] = int(slot[0])
        assign = _best_assignment(iou[t], valid[t], fixed)
        matched_slots = set(int(s) for s in assign if s >= 0)
        c["false_positives"] += int(presence[t].sum()) - len(matched_slots)
        for j in range(D):
            if not true_presence[t, j]:
                continue
            s = assign[j]
            if s < 0:
                c["misses"] += 1
                held = [
                    box_coverage(true_boxes[t, j], boxes[t, assign[k]]) for k in range(D) if k != j and assign[k] >= 0
                ]
                c["merged_misses"] += int(any(h >= MERGE_COVERAGE for h in held))
                continue
            c["matches"] += 1
            c["iou_sum"] += float(iou[t, j, s])
            ever[j] = True
            new_id = int(ids[t, s])
            if last_id[j] >= 0:
                c["continuations"] += 1
                c["continuations_at_t2" if t == 1 else "continuations_late"] += 1
                if new_id != last_id[j]:
                    c["switches"] += 1
                    existed = bool(np.any(presence[last_t[j]] & (ids[last_t[j]] == new_id)))
                    if existed:
                        c["swaps"] += 1
                        # the identity it leaves now follows another true object: the two tracks exchanged objects
                        left = presence[t] & (ids[t] == last_id[j])
                        c["exchanges"] += int(any(assign[k] >= 0 and left[assign[k]] for k in range(D) if k != j))
                        c["swaps_near_overlap"] += int(touching[max(0, t - OVERLAP_WINDOW) : t + 1, j].any())
                    else:
                        c["redetections"] += 1
                        c["redetections_at_t2" if t == 1 else "redetections_late"] += 1
            last_id[j], last_t[j] = new_id, t
    c["matched_tracks"] = int(ever.sum())
    return c


def _zero_counts() -> dict[str, Any]:
    return {**{k: 0 for k in COUNT_KEYS}, "iou_sum": 0.0}


def add_counts(a: dict, b: dict) -> dict:
    """Sum of two :func:`tracking_counts` dicts."""
    return {k: a[k] + b[k] for k in (*COUNT_KEYS, "iou_sum")}


def _ratio(num, den):
    return float(num) / float(den) if den else None


def summarise_tracking(counts: dict) -> dict[str, Any]:
    """Counts plus rates (``None`` where the denominator is 0):

    ``switches_per_track``, ``swaps_per_track``, ``redetections_per_track`` (per matched ground-truth track);
    ``exchange_rate`` (exchanges per continuation); ``swaps_near_overlap_fraction`` (of the swaps);
    ``switch_rate``, ``swap_rate``, ``redetection_rate`` (per continuation); ``redetection_rate_at_t2``
    (= redetections_at_t2 / continuations_at_t2), ``redetection_rate_late`` (frames ≥ 2); ``merged_miss_rate``
    (merged misses per true object-frame);
    ``recall`` = matches / num_true, ``precision`` = matches / num_inferred, ``mota`` = 1 − (misses +
    false_positives + switches) / num_true, ``motp`` = mean IoU of the matches; and ``failure_mode``
    (:func:`classify_failure_mode`).
    """
    c = {k: counts[k] for k in COUNT_KEYS}
    c["iou_sum"] = float(counts["iou_sum"])
    tracks, cont = c["matched_tracks"], c["continuations"]
    c.update(
        switches_per_track=_ratio(c["switches"], tracks),
        swaps_per_track=_ratio(c["swaps"], tracks),
        exchange_rate=_ratio(c["exchanges"], cont),
        swaps_near_overlap_fraction=_ratio(c["swaps_near_overlap"], c["swaps"]),
        redetections_per_track=_ratio(c["redetections"], tracks),
        switch_rate=_ratio(c["switches"], cont),
        swap_rate=_ratio(c["swaps"], cont),
        redetection_rate=_ratio(c["redetections"], cont),
        redetection_rate_at_t2=_ratio(c["redetections_at_t2"], c["continuations_at_t2"]),
        redetection_rate_late=_ratio(c["redetections_late"], c["continuations_late"]),
        merged_miss_rate=_ratio(c["merged_misses"], c["num_true"]),
        recall=_ratio(c["matches"], c["num_true"]),
        precision=_ratio(c["matches"], c["num_inferred"]),
        mota=(1.0 - (c["misses"] + c["false_positives"] + c["switches"]) / c["num_true"]) if c["num_true"] else None,
        motp=_ratio(c["iou_sum"], c["matches"]),
    )
    c["failure_mode"] = classify_failure_mode(c)
    return c


def tracking_errors(
    true_boxes,
    true_presence,
    boxes,
    presence,
    ids,
    iou_threshold: float = 0.5,
    *,
    continuity: bool = True,
    coverage_threshold: float | None = None,
) -> dict[str, Any]:
    """:func:`tracking_counts` (one sequence ``[time, ...]`` or a batch ``[batch, time, ...]``, summed) followed by
    :func:`summarise_tracking`: counts, rates and ``failure_mode``."""
    counts = tracking_counts(
        true_boxes,
        true_presence,
        boxes,
        presence,
        ids,
        iou_threshold,
        continuity=continuity,
        coverage_threshold=coverage_threshold,
    )
    return summarise_tracking(counts)


def tracking_match_options(eval_config) -> dict[str, Any]:
    """A task's ``eval`` settings -> the matching keywords of :func:`tracking_errors`: ``tracking_match``
    "coverage" (``tracking_coverage_threshold`` of the true box inside the glimpse window) or "iou"
    (``tracking_iou_threshold``)."""
    match = eval_config.tracking_match
    if match not in ("iou", "coverage"):
        raise ValueError(f"eval.tracking_match must be 'iou' or 'coverage'; got {match!r}")
    coverage = float(eval_config.tracking_coverage_threshold) if match == "coverage" else None
    return dict(iou_threshold=float(eval_config.tracking_iou_threshold), coverage_threshold=coverage)


# Thresholds of classify_failure_mode (fractions of the relevant continuations; merges: of the true object-frames).
FAILURE_THRESHOLDS = dict(disc_only=0.5, redetects_at_t2=0.5, merges=0.1, switches=0.1)
# Every label classify_failure_mode gives, in the order its rules are tried.
FAILURE_MODES = ("no_matches", "disc_only", "redetects_at_t2", "merges", "switches", "tracks")
# A missed true object this much inside the window of an object matched to another true object is a merged miss.
MERGE_COVERAGE = 0.5


def classify_failure_mode(summary: dict) -> str:
    """One label per run from tracking counts (first rule that applies; thresholds in ``FAILURE_THRESHOLDS``):

    * ``"no_matches"``: no continuations at all (nothing tracked over two frames, e.g. an untrained model);
    * ``"disc_only"``: re-detections in at least half of the continuations from frame index 2 on (all frames if the
      sequences have only 2): the objects are re-discovered in most frames instead of propagated;
    * ``"redetects_at_t2"``: at least half of the objects matched in frames 0 and 1 are re-detected at frame 1 (the
      §5.G failure mode: the first frame's discoveries are dropped and re-discovered once);
    * ``"merges"``: at least 10% of the true object-frames are merged misses (one window holds two digits and
      counts one: the second digit is never kept apart);
    * ``"switches"``: identity switches (swaps or re-detections) in at least 10% of the continuations;
    * ``"tracks"``: otherwise.
    """
    th = FAILURE_THRESHOLDS
    if not summary["continuations"]:
        return "no_matches"
    if summary["continuations_late"]:
        late = summary["redetections_late"] / summary["continuations_late"]
    else:
        late = summary["redetections"] / summary["continuations"]
    if late >= th["disc_only"]:
        return "disc_only"
    if summary["continuations_at_t2"] and (
        summary["redetections_at_t2"] / summary["continuations_at_t2"] >= th["redetects_at_t2"]
    ):
        return "redetects_at_t2"
    if summary["num_true"] and summary["merged_misses"] / summary["num_true"] >= th["merges"]:
        return "merges"
    if summary["switches"] / summary["continuations"] >= th["switches"]:
        return "switches"
    return "tracks"


LOST_DIGIT_KINDS = ("never_found", "dropped", "moved_to_other", "astray")


def lost_digit_anatomy(
    true_boxes, true_presence, boxes, presence, ids, *, coverage_threshold: float = 0.5, max_examples: int = 8
) -> dict[str, Any]:
    """What became of each visible digit that no inferred object covers, over sequences.

    A true digit is *covered* in a frame when a present inferred box holds at least ``coverage_threshold`` of its
    tight box (intersection / tight-box area; the glimpse windows are larger than the tight boxes, so IoU would not
    do). Each uncovered digit-frame is one of ``LOST_DIGIT_KINDS``:
      ``never_found``: no inferred object covered this digit in any earlier frame of the sequence;
      ``dropped``: the identity that last covered it is absent now (PROP switched it off);
      ``moved_to_other``: that identity is present and covers another visible digit now (the track was hijacked,
        e.g. when the digits crossed);
      ``astray``: that identity is present and covers no visible digit (it lost the digit).

    Args:
      true_boxes [seq, time, true, 4], true_presence [seq, time, true]: ground truth (tight boxes, visibility).
      boxes [seq, time, slots, 4], presence [seq, time, slots], ids [seq, time, slots] (-1 absent): inferred objects.
    Returns:
      dict: ``digit_frames`` (visible digit-frames), ``uncovered``, and per kind ``{total, in_undercounted_frames
      (frames with fewer inferred objects than visible digits), by_frame [time]}``, ``examples`` (kind -> up to
      ``max_examples`` ``[seq, frame, true]``) and ``coverage_threshold``.
    """
    tb, tp = np.asarray(true_boxes, np.float64), np.asarray(true_presence) > 0
    bx, pr, ids = np.asarray(boxes, np.float64), np.asarray(presence) > 0, np.asarray(ids)
    if tb.ndim != 4 or bx.ndim != 4 or tp.shape != tb.shape[:3] or pr.shape != bx.shape[:3] or ids.shape != pr.shape:
        raise ValueError(
            "need true_boxes [seq, time, true, 4], true_presence [seq, time, true], boxes [seq, time, slots, 4], "
            f"presence and ids [seq, time, slots]; got {tb.shape}, {tp.shape}, {bx.shape}, {pr.shape}, {ids.shape}"
        )
    if tb.shape[:2] != bx.shape[:2]:
        raise ValueError(f"true and inferred arrays cover different [seq, time]: {tb.shape[:2]} vs {bx.shape[:2]}")
    if not 0 < coverage_threshold <= 1:
        raise ValueError(f"coverage_threshold must be in (0, 1]; got {coverage_threshold}")
    n, T, D = tp.shape
    coverage = box_coverage(tb[:, :, :, None], bx[:, :, None, :])
    covered = (coverage >= coverage_threshold) & pr[:, :, None, :] & tp[..., None]  # [seq, time, true, slots]
    under = pr.sum(-1) < tp.sum(-1)  # [seq, time]
    result = {k: dict(total=0, in_undercounted_frames=0, by_frame=[0] * T) for k in LOST_DIGIT_KINDS}
    examples: dict[str, list] = {k: [] for k in LOST_DIGIT_KINDS}
    for b in range(n):
        last_id = np.full(D, -1, np.int64)  # identity that last covered each true digit
        for t in range(T):
            for j in np.flatnonzero(tp[b, t]):
                slots = np.flatnonzero(covered[b, t, j])
                if slots.size:
                    last_id[j] = ids[b, t, slots[np.argmax(coverage[b, t, j, slots])]]
                    continue
                alive = np.flatnonzero(pr[b, t] & (ids[b, t] == last_id[j])) if last_id[j] >= 0 else []
                if last_id[j] < 0:
                    kind = "never_found"
                elif not len(alive):
                    kind = "dropped"
                elif covered[b, t, np.arange(D) != j, alive[0]].any():
                    kind = "moved_to_other"
                else:
                    kind = "astray"
                r = result[kind]
                r["total"] += 1
                r["in_undercounted_frames"] += int(under[b, t])
                r["by_frame"][t] += 1
                if len(examples[kind]) < max_examples:
                    examples[kind].append([b, t, int(j)])
    return dict(
        coverage_threshold=float(coverage_threshold),
        digit_frames=int(tp.sum()),
        uncovered=int(sum(r["total"] for r in result.values())),
        **result,
        examples=examples,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Addition experiment


def addition_features(z_what, z_pres, ids) -> np.ndarray:
    """``z_what [..., slots, Dw]``, ``z_pres [..., slots]``, ``ids [..., slots]`` (-1 absent) -> ``[..., slots·Dw]``:
    ``z_what · z_pres`` of the slots concatenated in identity order (present slots by increasing identity, then the
    absent ones; a stable sort, so model outputs — already in that order — are unchanged)."""
    z_what, z_pres, ids = np.asarray(z_what, np.float32), np.asarray(z_pres, np.float32), np.asarray(ids)
    if z_what.ndim < 2 or z_pres.shape != z_what.shape[:-1] or ids.shape != z_pres.shape:
        raise ValueError(
            f"need z_what [..., slots, Dw], z_pres and ids [..., slots]; got {z_what.shape}, "
            f"{z_pres.shape}, {ids.shape}"
        )
    key = np.where((z_pres > 0) & (ids >= 0), ids.astype(np.int64), np.iinfo(np.int64).max)
    order = np.argsort(key, axis=-1, kind="stable")
    x = np.take_along_axis(z_what * z_pres[..., None], order[..., None], axis=-2)
    return x.reshape(*x.shape[:-2], -1)


def addition_targets(labels, presence) -> np.ndarray:
    """``labels [n, true]`` (-1 for identities that do not exist), ``presence [n, time, true]`` -> ``[n, time]`` int32:
    the sum of the labels of the digits visible in each frame (an empty frame is 0)."""
    labels, presence = np.asarray(labels), np.asarray(presence) > 0
    if labels.ndim != 2 or presence.ndim != 3 or presence.shape[::2] != labels.shape:
        raise ValueError(f"need labels [n, true] and presence [n, time, true]; got {labels.shape}, {presence.shape}")
    if np.any(presence & (labels[:, None, :] < 0)):
        raise ValueError("a present digit has label -1")
    return np.sum(np.where(presence, labels[:, None, :], 0), axis=-1).astype(np.int32)


def addition_experiment(
    train_outputs: dict, train_data: dict, test_outputs: dict, test_data: dict, **classifier_kw
) -> dict[str, Any]:
    """The addition experiment (§5.D.4) on a frozen model's outputs for training and test sequences.

    ``*_outputs``: ``z_what [n, T, N, Dw]``, ``z_pres [n, T, N]``, ``ids [n, T, N]`` (the slot order of the features,
    :func:`addition_features`); ``*_data``: the sequences' ``labels [n, D]`` and ``presence [n, T, D]``. Every frame is
    one example (target: :func:`addition_targets`; 9·D + 1 classes). ``classifier_kw`` go to
    :func:`train_addition_classifier`. Returns its result with ``num_train_sequences`` and ``num_test_sequences``.
    """
    train_features, test_features = (
        addition_features(o["z_what"], o["z_pres"], o["ids"]) for o in (train_outputs, test_outputs)
    )
    return addition_on_features(train_features, train_data, test_features, test_data, **classifier_kw)


def addition_on_features(
    train_features, train_data: dict, test_features, test_data: dict, **classifier_kw
) -> dict[str, Any]:
    """The addition experiment (§5.D.4) on any per-frame representation ``*_features [n, T, F]`` of training and test
    sequences: SQAIR's and AIR's ``z_what · z_pres`` (:func:`addition_experiment`) or a VRNN's whole latent
    (``ocr_jax.evaluation.vrnn``). ``*_data``: the sequences' ``labels [n, D]`` and ``presence [n, T, D]``. Every frame
    is one example (target: :func:`addition_targets`; 9·D + 1 classes); ``classifier_kw`` go to
    :func:`train_addition_classifier`. Returns its result with ``num_train_sequences`` and ``num_test_sequences``;
    its ``test_accuracy_by_group`` is keyed by the number of digits visible in the frame.
    """
    feats = [np.asarray(f, np.float32) for f in (train_features, test_features)]
    targets = [addition_targets(d["labels"], d["presence"]) for d in (train_data, test_data)]
    for f, y in zip(feats, targets):
        if f.ndim != 3 or f.shape[:2] != y.shape:
            raise ValueError(
                f"features cover {f.shape[:-1]} (sequences, frames) but the data {y.shape}; need [n, T, F]"
            )
    num_classes = 9 * train_data["labels"].shape[1] + 1
    result = train_addition_classifier(
        feats[0].reshape(-1, feats[0].shape[-1]),
        targets[0].reshape(-1),
        feats[1].reshape(-1, feats[1].shape[-1]),
        targets[1].reshape(-1),
        num_classes=num_classes,
        test_groups=np.sum(np.asarray(test_data["presence"]) > 0, axis=-1).reshape(-1),
        **classifier_kw,
    )
    result.update(num_train_sequences=int(len(feats[0])), num_test_sequences=int(len(feats[1])))
    return result


class AdditionMLP(nn.Module):
    """``[..., features] -> logits [..., num_classes]``: Dense + ELU per hidden layer, then a linear layer."""

    hidden: Sequence[int] = (256, 256)
    num_classes: int = 19

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.elu(nn.Dense(h)(x))
        return nn.Dense(self.num_classes)(x)


def train_addition_classifier(
    features_train,
    targets_train,
    features_test,
    targets_test,
    *,
    hidden: Sequence[int] = (256, 256),
    steps: int = 10_000,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    num_classes: int = 19,
    standardize: bool = True,
    steps_per_call: int = 1000,
    progress: bool | None = False,
    test_groups=None,
    return_predictor: bool = False,
) -> dict[str, Any]:
    """Trains :class:`AdditionMLP` (softmax cross-entropy, Adam, mini-batches drawn uniformly with replacement) on
    frozen features.

    The steps run ``steps_per_call`` at a time in one compiled ``lax.scan`` (the thesis trains for 10⁷ steps; one
    dispatch per step would cost more than the step). Step ``i`` draws its batch from ``fold_in(key, i)`` whatever
    the chunking, so the result does not depend on ``steps_per_call``. ``progress``: a progress bar (``None``: only on
    a terminal). ``test_groups [m]`` (optional, ints; e.g. the number of digits in each test frame): the test accuracy
    of each group as well, to say where the errors are. ``return_predictor``: the result also holds ``predict``, the
    trained classifier as a function ``features [k, features] -> classes [k]`` (not JSON-able; pop it before saving).

    Args:
      features_train [n, features], targets_train [n] int in 0..num_classes-1; features_test [m, features],
        targets_test [m].
      standardize: scale features by the training mean and standard deviation (constant features are only centred).
    Returns:
      dict: ``train_accuracy``, ``test_accuracy``, ``train_loss`` (mean over the last 10% of steps), ``test_loss``,
      ``majority_baseline`` (test accuracy of always predicting the most frequent training target), ``num_train``,
      ``num_test``, ``steps``, ``num_classes``; with ``test_groups`` also ``test_accuracy_by_group`` and
      ``test_frames_by_group`` (keyed by the group as a string).
    """
    xs, ys = np.asarray(features_train, np.float32), np.asarray(targets_train)
    xt, yt = np.asarray(features_test, np.float32), np.asarray(targets_test)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise ValueError(f"features must be [n, features] with the same width; got {xs.shape} and {xt.shape}")
    if ys.shape != xs.shape[:1] or yt.shape != xt.shape[:1]:
        raise ValueError(
            f"targets must be [n] matching the features; got {ys.shape} for {xs.shape}, {yt.shape} for {xt.shape}"
        )
    if len(xs) == 0 or len(xt) == 0:
        raise ValueError("train_addition_classifier needs at least one training and one test example")
    for name, y in (("targets_train", ys), ("targets_test", yt)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise ValueError(
                f"{name} must be integers in 0..{num_classes - 1}; got dtype {y.dtype}, range {y.min()}..{y.max()}"
            )
    if test_groups is not None and np.shape(test_groups) != yt.shape:
        raise ValueError(f"test_groups must be [m] like targets_test {yt.shape}; got {np.shape(test_groups)}")
    if steps < 1 or batch_size < 1 or steps_per_call < 1:
        raise ValueError(
            f"steps, batch_size and steps_per_call must be positive; got {steps}, {batch_size}, {steps_per_call}"
        )
    mean, std = np.zeros(xs.shape[1], np.float32), np.ones(xs.shape[1], np.float32)
    if standardize:
        mean, std = xs.mean(0), xs.std(0)
        std = np.where(std > 1e-6, std, 1.0)
        xs, xt = (xs - mean) / std, (xt - mean) / std

    model = AdditionMLP(tuple(hidden), num_classes)
    key_init, key_data = jax.random.split(jax.random.key(seed))
    params = model.init(key_init, jnp.zeros((1, xs.shape[1]), jnp.float32))
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)
    x_dev, y_dev = jnp.asarray(xs), jnp.asarray(ys, jnp.int32)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    def step(carry, i):
        p, s = carry
        idx = jax.random.randint(jax.random.fold_in(key_data, i), (batch_size,), 0, x_dev.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, x_dev[idx], y_dev[idx])
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    @functools.partial(jax.jit, static_argnums=3)
    def run_steps(p, s, first, n):
        return jax.lax.scan(step, (p, s), first + jnp.arange(n))

    @jax.jit
    def evaluate(p, x, y):
        logits = model.apply(p, x)
        correct = jnp.argmax(logits, -1) == y
        return correct, optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    steps = int(steps)
    tail = max(1, steps // 10)
    losses = []
    with tqdm.tqdm(
        total=steps, desc="addition classifier", unit="step", disable=None if progress is None else not progress
    ) as bar:
        for first in range(0, steps, steps_per_call):
            n = min(steps_per_call, steps - first)
            (params, opt_state), chunk_losses = run_steps(params, opt_state, first, n)
            if first + n > steps - tail:
                losses.append(chunk_losses[max(0, steps - tail - first) :])
            bar.update(n)
    losses = np.concatenate(jax.device_get(losses))
    train_correct, _ = evaluate(params, x_dev, y_dev)
    test_correct, test_loss = evaluate(params, jnp.asarray(xt), jnp.asarray(yt, jnp.int32))
    test_correct = np.asarray(test_correct)
    majority = np.bincount(ys, minlength=num_classes).argmax()
    extra = {}
    if test_groups is not None:
        groups = np.asarray(test_groups)
        extra = dict(
            test_accuracy_by_group={str(g): float(test_correct[groups == g].mean()) for g in np.unique(groups)},
            test_frames_by_group={str(g): int(np.sum(groups == g)) for g in np.unique(groups)},
        )
    if return_predictor:
        logits_of = jax.jit(model.apply)
        extra["predict"] = lambda x: np.asarray(
            jnp.argmax(logits_of(params, (np.asarray(x, np.float32) - mean) / std), -1)
        )
    return dict(
        train_accuracy=float(np.mean(train_correct)),
        test_accuracy=float(test_correct.mean()),
        train_loss=float(losses.mean()),
        test_loss=float(test_loss),
        majority_baseline=float(np.mean(yt == majority)),
        num_train=int(len(xs)),
        num_test=int(len(xt)),
        steps=int(steps),
        num_classes=int(num_classes),
        **extra,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Wiring: a SQAIR task's inference -> tracking errors and addition accuracy


# The training sequences of the addition experiment are inferred with fold_in(key, TRAIN_KEY_FOLD), the test
# sequences with key itself (as evaluate_sqair).
TRAIN_KEY_FOLD = 1 << 30


def best_particle_outputs(
    task, params, frames: np.ndarray, key, *, posterior_means: bool = False
) -> dict[str, np.ndarray]:
    """The best particle's (largest log-weight) ``z_what [n, T, N, Dw]``, ``z_pres [n, T, N]`` (1 for the present
    objects in view, :func:`visible_objects`: what tracking and addition score against the visible digits),
    ``ids [n, T, N]`` and ``boxes [n, T, N, 4]`` (pixel edges, clipped to the canvas, as the ground-truth boxes are)
    for ``frames [n, T, H, W]``, from the same batches and keys as :func:`evaluate_sqair`
    (:func:`inference_batches`; ``posterior_means``: the continuous latents at their posterior means)."""
    H, W = task.model.config.image_shape
    parts = {k: [] for k in ("z_what", "z_pres", "ids", "boxes")}
    for _, out, pick in inference_batches(task, params, frames, key, posterior_means):
        boxes = boxes_of_raw(task, pick(out["z_where_raw"]))
        visible = task_visible_objects(
            task, params, pick(out["z_what"]), pick(out["z_where_raw"]), pick(out["z_pres"]) > 0.5
        )
        parts["z_what"].append(pick(out["z_what"]))
        parts["z_pres"].append(visible.astype(np.float32))
        parts["ids"].append(pick(out["ids"]).astype(np.int64))
        parts["boxes"].append(np.clip(boxes, 0.0, np.array([H, W, H, W], np.float32)))
    return {k: np.concatenate(v) for k, v in parts.items()}


def tracking_and_addition(
    task,
    params,
    data: dict[str, np.ndarray],
    *,
    key: jax.Array,
    num_sequences: int | None = None,
    classifier_steps: int = 10_000,
    train_data: dict[str, np.ndarray] | None = None,
    num_train_sequences: int | None = None,
    train_fraction: float = 0.5,
    iou_threshold: float = 0.5,
    coverage_threshold: float | None = None,
    continuity: bool = True,
    classifier_hidden: Sequence[int] = (256, 256),
    classifier_batch_size: int = 128,
    classifier_learning_rate: float = 1e-3,
    classifier_seed: int = 0,
    addition_posterior_means: bool = True,
) -> dict[str, Any]:
    """Tracking errors and the addition experiment for a (frozen) SQAIR ``task`` with ``params``.

    The best particle (largest log-weight of ``eval.num_particles``) of every sequence gives boxes, presences and
    identities; they are scored against ``data``'s ground truth (``boxes``, ``presence``; moving-MNIST dict) with
    :func:`tracking_errors`. Addition features (:func:`addition_features`) and targets (:func:`addition_targets`)
    per frame train :func:`train_addition_classifier`: on ``train_data``'s first ``num_train_sequences`` sequences
    if given (e.g. the training set) and tested on all evaluated ``data`` sequences; otherwise the first
    ``train_fraction`` of the evaluated sequences train it and the rest test it (split by sequence, so that no
    sequence is in both). ``classifier_steps=0`` skips the addition experiment (``addition`` is ``None``).
    ``addition_posterior_means``: the addition features come from the best particle of a second inference pass at the
    posterior means of z_what and z_where (a deterministic representation; on maxscale seed 0's test split 0.644
    against 0.618 from samples with 2000 training sequences, docs/results.md); ``False``: from the tracking particles.

    ``key`` is used as ``evaluate_sqair`` uses it, so both see the same best particles of ``data``.

    Returns a JSON-able dict: ``num_sequences``, ``num_frames``, ``iou_threshold``, ``coverage_threshold`` (which
    pairs can be matched: :func:`matchable_pairs`), ``tracking`` (the
    :func:`tracking_errors` summary, with ``failure_mode``) and ``addition`` (the classifier's result, with
    ``num_train_sequences`` and ``num_test_sequences``).
    """
    n = min(num_sequences or len(data["frames"]), len(data["frames"]))
    if n < 1:
        raise ValueError("tracking_and_addition needs at least one sequence")
    # the same particle keys as evaluate_sqair(task, params, data, key=key): the same best particles
    out = best_particle_outputs(task, params, data["frames"][:n], key)
    tracking = tracking_errors(
        data["boxes"][:n],
        data["presence"][:n],
        out["boxes"],
        out["z_pres"],
        out["ids"],
        iou_threshold,
        continuity=continuity,
        coverage_threshold=coverage_threshold,
    )
    results = dict(
        num_sequences=int(n),
        num_frames=int(data["frames"].shape[1]),
        iou_threshold=float(iou_threshold),
        coverage_threshold=coverage_threshold,
        tracking=tracking,
        addition=None,
    )
    if classifier_steps <= 0:
        return results

    train_kw = dict(
        hidden=classifier_hidden,
        steps=classifier_steps,
        batch_size=classifier_batch_size,
        learning_rate=classifier_learning_rate,
        seed=classifier_seed,
    )
    test_data = {k: data[k][:n] for k in ("labels", "presence")}
    if addition_posterior_means:
        out = best_particle_outputs(task, params, data["frames"][:n], key, posterior_means=True)
    if train_data is not None:
        m = min(num_train_sequences or len(train_data["frames"]), len(train_data["frames"]))
        if m < 1:
            raise ValueError("train_data needs at least one sequence")
        tr = best_particle_outputs(
            task,
            params,
            train_data["frames"][:m],
            jax.random.fold_in(key, TRAIN_KEY_FOLD),
            posterior_means=addition_posterior_means,
        )
        addition = addition_experiment(
            tr, {k: train_data[k][:m] for k in ("labels", "presence")}, out, test_data, **train_kw
        )
    else:
        m = int(math.floor(train_fraction * n))
        if not 1 <= m < n:
            raise ValueError(
                f"train_fraction={train_fraction} of {n} sequences leaves no training or no test "
                "sequence; pass more sequences or train_data"
            )
        head, tail = slice(None, m), slice(m, None)
        addition = addition_experiment(
            {k: v[head] for k, v in out.items()},
            {k: v[head] for k, v in test_data.items()},
            {k: v[tail] for k, v in out.items()},
            {k: v[tail] for k, v in test_data.items()},
            **train_kw,
        )
    results["addition"] = dict(addition, posterior_means=bool(addition_posterior_means))
    return results

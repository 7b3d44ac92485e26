"""Evaluation of AIR (a task of ``ocr_jax.tasks.air``): count accuracy, confusion matrix, ELBO, log p(x|z), KL and the
IWAE-K estimate of log p(x) on test images (:func:`evaluate_air`), and AIR applied frame by frame to moving
multi-MNIST sequences in the units of SQAIR's evaluation (:func:`evaluate_air_on_sequences`, the MLP-AIR row of
thesis Table 5.4.1).

Every function takes the task object: ``task.model`` (``ocr_jax.models.air.AIR``), ``task.config`` (its ``eval``
settings), ``task.test_data``, ``task.continue_prob(step)`` and ``task.model_inputs(images_uint8, key)`` (uint8 ->
the model's float input, binarised as in training, and the inference key). The jitted functions take the task as a
static argument, so they compile once per task.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ocr_jax import objectives
from ocr_jax.diagnostics import log_marginal_chunked
from ocr_jax.evaluation import sqair as sqair_eval


@functools.partial(jax.jit, static_argnums=(0,))
def eval_batch(task, params, images_uint8, key, step) -> dict[str, jax.Array]:
    """One posterior sample per image of ``images_uint8 [B, H, W]``: counts [B], log-weights [B], log p(x|z) [B],
    canvas, boxes, z_pres."""
    images, k_infer = task.model_inputs(images_uint8, key)
    out = task.model.infer(params, images, k_infer, num_particles=1, continue_prob=task.continue_prob(step))
    return dict(
        counts=out.counts[:, 0],
        log_weight=out.log_weight[:, 0],
        log_likelihood=out.log_likelihood[:, 0],
        canvas=out.canvas[:, 0],
        boxes=out.boxes(task.model.config.canvas_shape)[:, 0],
        z_pres=out.z_pres[:, 0],
    )


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles", "chunk_size"))
def log_marginal(task, params, images_uint8, key, step, *, num_particles, chunk_size) -> jax.Array:
    """IWAE-K estimate of log p(x) ``[B]`` with at most ``chunk_size`` particles materialised at once."""
    x, k_particles = task.model_inputs(images_uint8, key)
    rho = task.continue_prob(step)

    def log_weight_fn(k, n):
        return task.model.infer(params, x, k, num_particles=n, continue_prob=rho).log_weight

    return log_marginal_chunked(log_weight_fn, k_particles, num_particles, chunk_size)


def log_marginal_of_images(
    task, params, images_uint8: np.ndarray, key: jax.Array, step: int, batch_size: int = 50
) -> np.ndarray:
    """IWAE-``eval.log_marginal_particles`` estimates of log p(x) ``[n]`` for ``images_uint8 [n, H, W]``, in batches of
    ``batch_size`` images (key ``fold_in(key, 10_000 + start)`` for the batch starting at ``start``) with at most
    ``eval.log_marginal_chunk`` particles materialised at once."""
    ev = task.config.eval
    chunk = min(ev.log_marginal_chunk, ev.log_marginal_particles)
    return np.concatenate(
        [
            np.asarray(
                log_marginal(
                    task,
                    params,
                    jnp.asarray(images_uint8[s : s + batch_size]),
                    jax.random.fold_in(key, 10_000 + s),
                    step,
                    num_particles=ev.log_marginal_particles,
                    chunk_size=chunk,
                )
            )
            for s in range(0, len(images_uint8), batch_size)
        ]
    )


def evaluate_air(
    task, params, step: int, *, num_images: int, log_marginal_images: int, seed: int = 1234
) -> dict[str, Any]:
    """Test-split metrics: count accuracy, confusion matrix [true, predicted], ELBO, log p(x|z), IWAE log p(x)."""
    cfg = task.config
    data = task.test_data
    n = min(num_images, len(data["images"]))
    bs = min(cfg.eval.batch_size, n)
    key = jax.random.PRNGKey(seed)
    N = task.model.config.max_steps
    confusion = np.zeros((N + 1, N + 1), np.int64)
    elbo, loglik, first = [], [], None
    for i, start in enumerate(range(0, n - n % bs if n >= bs else n, bs)):
        images = jnp.asarray(data["images"][start : start + bs])
        r = jax.device_get(eval_batch(task, params, images, jax.random.fold_in(key, i), step))
        np.add.at(confusion, (np.minimum(data["counts"][start : start + bs], N), r["counts"]), 1)
        elbo.append(r["log_weight"])
        loglik.append(r["log_likelihood"])
        if first is None:
            first = (np.asarray(images), r)
    total = confusion.sum()
    results: dict[str, Any] = {
        "step": step,
        "num_images": int(total),
        "count_accuracy": float(np.trace(confusion) / total),
        "elbo": float(np.mean(np.concatenate(elbo))),
        "log_likelihood": float(np.mean(np.concatenate(loglik))),
        "confusion": confusion,
    }
    results["kl"] = results["log_likelihood"] - results["elbo"]
    if log_marginal_images > 0:
        m = min(log_marginal_images, n)
        results["log_marginal"] = float(np.mean(log_marginal_of_images(task, params, data["images"][:m], key, step)))
        results["log_marginal_images"] = int(m)
        results["log_marginal_particles"] = int(cfg.eval.log_marginal_particles)
    images, r = first
    k = min(cfg.eval.num_pictures, len(images))
    top = np.concatenate(list(images[:k].astype(np.float32) / 255.0), axis=1)
    bottom = np.concatenate(list(np.clip(r["canvas"][:k], 0, 1)), axis=1)
    results["picture"] = np.concatenate([top, bottom], axis=0)
    results["example"] = {
        "images": images[:k],
        "canvas": r["canvas"][:k],
        "boxes": r["boxes"][:k],
        "z_pres": r["z_pres"][:k],
        "counts": r["counts"][:k],
        "true_counts": data["counts"][:k],
    }
    return results


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles",))
def infer_frames(task, params, images_uint8, key, step, *, num_particles: int) -> dict[str, jax.Array]:
    """K posterior samples per image ``[B, H, W]``: ``log_weight``, ``log_likelihood`` ``[B, K]``; ``z_pres [B, K, N]``,
    ``z_what [B, K, N, D]``, ``boxes [B, K, N, 4]``."""
    x, k_infer = task.model_inputs(images_uint8, key)
    out = task.model.infer(params, x, k_infer, num_particles=num_particles, continue_prob=task.continue_prob(step))
    return dict(
        log_weight=out.log_weight,
        log_likelihood=out.log_likelihood,
        z_pres=out.z_pres,
        z_what=out.z_what,
        boxes=out.boxes(task.model.config.canvas_shape),
    )


def evaluate_air_on_sequences(
    task,
    params,
    step: int,
    sequences: dict[str, np.ndarray],
    *,
    key: jax.Array,
    num_particles: int = 5,
    log_marginal_sequences: int = 0,
    train_sequences: dict[str, np.ndarray] | None = None,
    classifier_steps: int = 0,
    iou_threshold: float = 0.3,
    coverage_threshold: float | None = None,
) -> dict[str, Any]:
    """AIR applied frame by frame to moving multi-MNIST ``sequences`` (``frames [n, T, H, W]``, ``counts [n, T]``,
    ``boxes``, ``presence``, ``labels``): the MLP-AIR row of thesis Table 5.4.1, in the units of SQAIR's evaluation
    (``ocr_jax.evaluation.sqair``: ``evaluate_sqair``, ``tracking_and_addition``).

    AIR treats the frames as independent images, so its sequence terms are sums over frames: with K =
    ``num_particles`` posterior samples per frame, ``elbo`` = Σ_t mean_k log w_tk, ``log_likelihood`` = Σ_t mean_k
    log p(x_t | z_tk), ``kl`` = their difference, ``iwae`` = Σ_t log mean_k w_tk, and ``log_marginal`` = Σ_t of the
    IWAE-``eval.log_marginal_particles`` estimate of log p(x_t) on the first ``log_marginal_sequences`` sequences.
    Counting uses the best particle (largest log-weight) of each frame: ``count_accuracy`` over frames,
    ``sequence_count_accuracy`` (all T frames right), ``confusion [true, inferred]``. ``tracking``: AIR has no
    identities across frames; its step index is used as the identity (``sqair_eval.tracking_errors``, pairs matchable
    by ``iou_threshold`` or ``coverage_threshold`` as in ``sqair_eval.matchable_pairs``), so switches
    count how often AIR's object order changes between frames. ``addition`` (if ``train_sequences`` and
    ``classifier_steps > 0``): ``sqair_eval.addition_experiment`` on z_what·z_pres in step order.
    """
    frames = np.asarray(sequences["frames"])
    if frames.ndim != 4 or frames.shape[2:] != tuple(task.model.config.canvas_shape):
        raise ValueError(
            f"need frames [n, T, {task.model.config.canvas_shape[0]}, "
            f"{task.model.config.canvas_shape[1]}]; got {frames.shape}"
        )
    n, T = frames.shape[:2]
    N = task.model.config.max_steps
    ev = task.config.eval

    def best_particle_outputs(frames_nt, key):
        images = frames_nt.reshape(-1, *frames_nt.shape[2:])
        parts = []
        for i, start in enumerate(range(0, len(images), ev.batch_size)):
            r = jax.device_get(
                infer_frames(
                    task,
                    params,
                    jnp.asarray(images[start : start + ev.batch_size]),
                    jax.random.fold_in(key, i),
                    step,
                    num_particles=num_particles,
                )
            )
            best = np.argmax(r["log_weight"], axis=1)
            rows = np.arange(len(best))
            parts.append(
                dict(
                    iwae=np.asarray(objectives.log_mean_exp(r["log_weight"], axis=1)),
                    elbo=r["log_weight"].mean(1),
                    log_likelihood=r["log_likelihood"].mean(1),
                    z_pres=r["z_pres"][rows, best],
                    z_what=r["z_what"][rows, best],
                    boxes=r["boxes"][rows, best],
                )
            )
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out = {k: v.reshape(len(frames_nt), frames_nt.shape[1], *v.shape[1:]) for k, v in out.items()}
        out["ids"] = np.where(out["z_pres"] > 0, np.arange(N), -1)
        return out

    out = best_particle_outputs(frames, key)
    counts = out["z_pres"].sum(-1).astype(np.int64)
    true = np.minimum(sequences["counts"], N)
    confusion = np.zeros((N + 1, N + 1), np.int64)
    np.add.at(confusion, (true.ravel(), counts.ravel()), 1)
    results: dict[str, Any] = dict(
        step=int(step),
        num_sequences=int(n),
        num_frames=int(T),
        num_particles=int(num_particles),
        count_accuracy=float(np.mean(counts == true)),
        sequence_count_accuracy=float(np.mean(np.all(counts == true, axis=1))),
        iwae=float(out["iwae"].sum(1).mean()),
        elbo=float(out["elbo"].sum(1).mean()),
        log_likelihood=float(out["log_likelihood"].sum(1).mean()),
        num_objects=float(out["z_pres"].sum(-1).mean()),
        confusion=confusion.tolist(),
    )
    results["iwae_per_frame"] = results["iwae"] / T
    results["kl"] = results["log_likelihood"] - results["elbo"]
    m = min(log_marginal_sequences, n)
    if m > 0:
        lm = log_marginal_of_images(task, params, frames[:m].reshape(-1, *frames.shape[2:]), key, step)
        results.update(
            log_marginal=float(lm.reshape(m, T).sum(1).mean()),
            log_marginal_sequences=int(m),
            log_marginal_particles=int(ev.log_marginal_particles),
        )
    H, W = task.model.config.canvas_shape
    clipped = np.clip(out["boxes"], 0.0, np.array([H, W, H, W], np.float32))
    results["tracking"] = sqair_eval.tracking_errors(
        sequences["boxes"],
        sequences["presence"],
        clipped,
        out["z_pres"],
        out["ids"],
        iou_threshold,
        coverage_threshold=coverage_threshold,
    )
    results["iou_threshold"] = float(iou_threshold)
    results["coverage_threshold"] = coverage_threshold
    results["addition"] = None
    if train_sequences is not None and classifier_steps > 0:
        train_out = best_particle_outputs(
            np.asarray(train_sequences["frames"]), jax.random.fold_in(key, sqair_eval.TRAIN_KEY_FOLD)
        )
        results["addition"] = sqair_eval.addition_experiment(
            train_out, train_sequences, out, sequences, steps=classifier_steps
        )
    return results


def eval_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of :func:`evaluate_air`'s results (scalars and the confusion matrix)."""
    out = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    out["confusion"] = np.asarray(results["confusion"]).tolist()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Where the counting errors are: the anatomy of "two digits read as one" (issue #15, item 4).

GAP_BINS = (-np.inf, 0.0, 3.0, 6.0, 10.0, np.inf)  # signed gap between two digits' tight boxes, pixels
DIRECTION_BINS = tuple(np.arange(0.0, 180.1, 22.5))  # direction of the line joining two digits, degrees in [0, 180)


def signed_box_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed gap between boxes ``a, b [..., 4]`` (y_min, x_min, y_max, x_max, pixel edges) -> ``[...]``.

    ``max(gap_y, gap_x)`` with ``gap_y = max(a.y_min, b.y_min) − min(a.y_max, b.y_max)`` (likewise x): the number of
    empty pixels between the boxes along the axis that separates them (> 0), 0 when they touch, and < 0 when they
    overlap (then minus the smaller of the two overlaps' extents).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    gap_y = np.maximum(a[..., 0], b[..., 0]) - np.minimum(a[..., 2], b[..., 2])
    gap_x = np.maximum(a[..., 1], b[..., 1]) - np.minimum(a[..., 3], b[..., 3])
    return np.maximum(gap_y, gap_x)


def box_coverage(window: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Fraction of the area of ``box [..., 4]`` that lies inside ``window [..., 4]`` (both y_min, x_min, y_max,
    x_max) -> ``[...]`` in [0, 1]; 0 for an empty box."""
    area = sqair_eval.box_area(box)
    return np.where(area > 0, sqair_eval.box_intersection(window, box) / np.where(area > 0, area, 1.0), 0.0)


def box_centre(box: np.ndarray) -> np.ndarray:
    """``[..., 4]`` boxes (y_min, x_min, y_max, x_max) -> ``[..., 2]`` centres (y, x)."""
    box = np.asarray(box, np.float64)
    return (box[..., :2] + box[..., 2:]) / 2


def pair_direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Direction of the line joining the centres of boxes ``a, b [..., 4]`` -> ``[...]`` degrees in [0, 180), in
    image axes (x to the right, y down) and symmetric in ``a, b``: 0 side by side, 90 one above the other, 45
    upper-left and lower-right, 135 upper-right and lower-left."""
    dy, dx = np.moveaxis(box_centre(b) - box_centre(a), -1, 0)
    return np.degrees(np.arctan2(dy, dx)) % 180.0


def _present_first(boxes: np.ndarray) -> np.ndarray:
    """``[n, M, 4]`` boxes with the non-empty ones first in each row (stable order)."""
    boxes = np.asarray(boxes, np.float64)
    order = np.argsort(~(boxes[..., 2] > boxes[..., 0]), axis=1, kind="stable")
    return np.take_along_axis(boxes, order[..., None], axis=1)


def _accuracy_by_bin(
    values: np.ndarray, bins, selected: np.ndarray, right: np.ndarray, *, label: str, closed: str, **counts
) -> list[dict[str, Any]]:
    """One row per interval of ``bins`` (closed on the ``"right"`` or the ``"left"``): the ``selected`` items whose
    ``values`` fall in it, how many are ``right``, the accuracy (None for an empty bin), and for every named mask in
    ``counts`` how many of the bin's items it holds."""
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (values > lo) & (values <= hi) if closed == "right" else (values >= lo) & (values < hi)
        sel = selected & inside
        interval = f"({lo:g}, {hi:g}]" if closed == "right" else f"[{lo:g}, {hi:g})"
        row = {
            label: interval,
            "images": int(sel.sum()),
            "right": int((sel & right).sum()),
            "accuracy": float((sel & right).sum() / sel.sum()) if sel.any() else None,
        }
        rows.append(row | {name: int((sel & mask).sum()) for name, mask in counts.items()})
    return rows


def two_digit_anatomy(
    true_boxes: np.ndarray,
    true_counts: np.ndarray,
    pred_boxes: np.ndarray,
    pred_counts: np.ndarray,
    *,
    cover: float = 0.5,
) -> dict[str, Any]:
    """Why two digits are read as one: accuracy on two-digit images by the gap between the digits, and what the one
    glimpse of each two-as-one error does.

    Args:
      true_boxes: ``[n, M, 4]`` tight boxes of the digits, zero rows where absent (any order).
      true_counts: ``[n]`` number of digits.
      pred_boxes: ``[n, N, 4]`` inferred glimpse windows, zero rows where absent (any order; as ``ocr_jax.api``).
      pred_counts: ``[n]`` inferred counts.
      cover: a digit counts as inside the glimpse when at least this fraction of its box's area is.

    Returns a JSON-serialisable dict: ``by_gap`` (one row per ``GAP_BINS`` interval: images, right, accuracy);
    ``by_direction`` (one row per ``DIRECTION_BINS`` interval of :func:`pair_direction`: images, right, accuracy,
    read as one, read as three); ``two_as_one``: the number of such errors, the fractions whose one glimpse covers
    both digits ("one glimpse for two"), exactly one ("a digit missed") or neither, the median glimpse side (max of
    height and width, pixels) in those errors against the median in one-digit images read right, and the median
    digit gap in errors against two-digit images read right; ``two_as_three``: the number of such errors, which
    step's glimpse is the extra one (the present glimpse whose centre is farthest from both digits' centres; counts
    per step, in the order ``pred_boxes`` lists the present glimpses), and the median distance of the extra glimpse's
    centre from the midpoint of the two digits' centres and from the nearer digit's centre (pixels).
    """
    true_counts, pred_counts = np.asarray(true_counts), np.asarray(pred_counts)
    true_boxes, pred_boxes = _present_first(true_boxes), _present_first(pred_boxes)
    two = true_counts == 2
    right = pred_counts == true_counts
    gap = signed_box_gap(true_boxes[:, 0], true_boxes[:, 1])
    direction = pair_direction(true_boxes[:, 0], true_boxes[:, 1])
    by_gap = _accuracy_by_bin(gap, GAP_BINS, two, right, label="gap_px", closed="right")
    by_direction = _accuracy_by_bin(
        direction,
        DIRECTION_BINS,
        two,
        right,
        label="direction_deg",
        closed="left",
        read_as_one=pred_counts == 1,
        read_as_three=pred_counts == 3,
    )
    err = two & (pred_counts == 1)
    window = pred_boxes[:, 0]
    inside = np.stack([box_coverage(window, true_boxes[:, j]) >= cover for j in range(2)], -1)
    n_inside = inside.sum(-1)
    side = np.maximum(window[:, 2] - window[:, 0], window[:, 3] - window[:, 1])
    one_right = (true_counts == 1) & right
    n_err = int(err.sum())

    def frac(mask):
        return float((err & mask).sum() / n_err) if n_err else None

    def median(x, mask):
        return float(np.median(x[mask])) if mask.any() else None

    three = two & (pred_counts == 3)
    digit_centres = box_centre(true_boxes[three, :2])  # [e, 2, 2]
    glimpse_centres = box_centre(pred_boxes[three, :3])  # [e, 3, 2] (present glimpses first)
    to_digits = np.linalg.norm(glimpse_centres[:, :, None] - digit_centres[:, None], axis=-1)  # [e, 3, 2]
    extra = np.argmax(to_digits.min(-1), axis=-1)  # [e]: the glimpse farthest from both digits
    extra_centre = np.take_along_axis(glimpse_centres, extra[:, None, None], axis=1)[:, 0]
    from_midpoint = np.linalg.norm(extra_centre - digit_centres.mean(1), axis=-1)
    from_nearer_digit = np.take_along_axis(to_digits.min(-1), extra[:, None], axis=1)[:, 0]
    everywhere = np.ones(len(extra), bool)

    return dict(
        by_gap=by_gap,
        by_direction=by_direction,
        two_as_three=dict(
            errors=int(three.sum()),
            extra_glimpse_step=np.bincount(extra, minlength=3).tolist(),
            median_extra_from_midpoint_px=median(from_midpoint, everywhere),
            median_extra_from_nearer_digit_px=median(from_nearer_digit, everywhere),
        ),
        two_as_one=dict(
            errors=n_err,
            two_digit_images=int(two.sum()),
            glimpse_covers_both=frac(n_inside == 2),
            glimpse_covers_one=frac(n_inside == 1),
            glimpse_covers_neither=frac(n_inside == 0),
            median_glimpse_side_px=median(side, err),
            median_glimpse_side_one_digit_right_px=median(side, one_right),
            median_gap_px=median(gap, err),
            median_gap_two_digits_right_px=median(gap, two & right),
        ),
    )

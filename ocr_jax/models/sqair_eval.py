"""SQAIR evaluation beyond counting (thesis §5.4.1, §5.D.4, §5.G): tracking quality against the dataset's
ground-truth identities, and the addition experiment.

Axes: ``time`` (T), ``true`` (D, ground-truth identities = the moving-MNIST digit slots), ``slots`` (N, the model's
object slots), ``batch`` (B), ``features`` (F = N·Dw). Boxes are ``(y_min, x_min, y_max, x_max)`` in pixel edges.

Tracking (CLEAR-MOT conventions, Bernardin & Stiefelhagen 2008). Every frame, ground-truth objects are matched
one-to-one to present inferred objects with IoU ≥ ``iou_threshold``, maximising the total IoU (:func:`match_objects`;
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
  - ``swaps``: the new identity already existed (it was tracking something else, or a duplicate);
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

import itertools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "AdditionMLP",
    "COUNT_KEYS",
    "FAILURE_THRESHOLDS",
    "add_counts",
    "addition_experiment",
    "addition_features",
    "addition_targets",
    "box_iou",
    "classify_failure_mode",
    "match_objects",
    "summarise_tracking",
    "tracking_and_addition",
    "tracking_counts",
    "tracking_errors",
    "train_addition_classifier",
]

COUNT_KEYS = ("num_sequences", "total_frames", "num_true", "num_inferred", "num_tracks", "matched_tracks",
              "matches", "misses", "false_positives", "continuations", "switches", "swaps", "redetections",
              "redetections_at_t2", "continuations_at_t2", "redetections_late", "continuations_late")


# ----------------------------------------------------------------------------------------------------------------------
# Matching


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast); 0 where the union is empty."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = h * w
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _check_frames(true_boxes, true_presence, boxes, presence, ids=None):
    """Validates one sequence's arrays; returns them as numpy (presences as bool)."""
    true_boxes, boxes = np.asarray(true_boxes, np.float64), np.asarray(boxes, np.float64)
    true_presence, presence = np.asarray(true_presence) > 0, np.asarray(presence) > 0
    if true_boxes.ndim != 3 or true_boxes.shape[-1] != 4:
        raise ValueError(f"true_boxes must be [time, true, 4]; got shape {true_boxes.shape}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [time, slots, 4]; got shape {boxes.shape}")
    if true_presence.shape != true_boxes.shape[:2]:
        raise ValueError(f"true_presence must be [time, true] = {true_boxes.shape[:2]} to match true_boxes; got "
                         f"{true_presence.shape}")
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


def match_objects(true_boxes, true_presence, boxes, presence, iou_threshold: float = 0.5) -> np.ndarray:
    """Per-frame one-to-one matching of ground-truth objects to inferred objects.

    Args:
      true_boxes [time, true, 4], true_presence [time, true]; boxes [time, slots, 4], presence [time, slots].
      iou_threshold: a pair can be matched only when its IoU ≥ this.
    Returns:
      assignment [time, true] int: the inferred slot matched to each ground-truth object, or -1. Among the one-to-one
      assignments of present objects with IoU ≥ ``iou_threshold``, the one with the largest total IoU (then the most
      matches; exact brute force, fine for the handful of objects per frame here).
    """
    true_boxes, true_presence, boxes, presence, _ = _check_frames(true_boxes, true_presence, boxes, presence)
    iou = box_iou(true_boxes[:, :, None], boxes[:, None, :])  # [time, true, slots]
    valid = true_presence[:, :, None] & presence[:, None, :] & (iou >= iou_threshold)
    return np.stack([_best_assignment(iou[t], valid[t]) for t in range(iou.shape[0])]).reshape(true_presence.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Tracking errors


def tracking_counts(true_boxes, true_presence, boxes, presence, ids, iou_threshold: float = 0.5, *,
                    continuity: bool = True) -> dict[str, Any]:
    """Raw tracking counts (module docstring) of ONE sequence, or summed over a batch.

    Args:
      true_boxes [(batch,) time, true, 4], true_presence [(batch,) time, true]: ground truth; the ``true`` axis is the
        ground-truth identity.
      boxes [(batch,) time, slots, 4], presence [(batch,) time, slots], ids [(batch,) time, slots] int (-1 absent):
        the inferred objects.
      continuity: CLEAR-MOT's rule — a true object keeps the inferred identity it was last matched to whenever that
        identity is present with IoU ≥ threshold, before the remaining objects are matched by :func:`match_objects`'s
        criterion. ``False`` matches every frame independently.
    Returns:
      dict of ints (``COUNT_KEYS``; beyond the module docstring's: ``num_sequences``, ``total_frames`` (summed over
      sequences), ``num_true`` / ``num_inferred`` (present true / inferred object-frames), ``num_tracks`` (true
      identities present in at least one frame), ``matched_tracks`` (... matched in at least one frame)) and
      ``iou_sum`` (float, total IoU of the matches).
    """
    if np.ndim(true_presence) == 3:
        if not (len(true_boxes) == len(true_presence) == len(boxes) == len(presence) == len(ids)):
            raise ValueError("batched inputs need the same batch size; got "
                             f"{[len(a) for a in (true_boxes, true_presence, boxes, presence, ids)]}")
        total = _zero_counts()
        for b in range(len(true_presence)):
            total = add_counts(total, tracking_counts(true_boxes[b], true_presence[b], boxes[b], presence[b], ids[b],
                                                      iou_threshold, continuity=continuity))
        return total
    true_boxes, true_presence, boxes, presence, ids = _check_frames(true_boxes, true_presence, boxes, presence, ids)
    T, D = true_presence.shape
    iou = box_iou(true_boxes[:, :, None], boxes[:, None, :])  # [time, true, slots]
    valid = true_presence[:, :, None] & presence[:, None, :] & (iou >= iou_threshold)
    c = _zero_counts()
    c.update(num_sequences=1, total_frames=T, num_true=int(true_presence.sum()), num_inferred=int(presence.sum()),
             num_tracks=int(true_presence.any(0).sum()))
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
    ``switch_rate``, ``swap_rate``, ``redetection_rate`` (per continuation); ``redetection_rate_at_t2``
    (= redetections_at_t2 / continuations_at_t2), ``redetection_rate_late`` (frames ≥ 2);
    ``recall`` = matches / num_true, ``precision`` = matches / num_inferred, ``mota`` = 1 − (misses +
    false_positives + switches) / num_true, ``motp`` = mean IoU of the matches; and ``failure_mode``
    (:func:`classify_failure_mode`).
    """
    c = {k: counts[k] for k in COUNT_KEYS}
    c["iou_sum"] = float(counts["iou_sum"])
    tracks, cont = c["matched_tracks"], c["continuations"]
    c.update(
        switches_per_track=_ratio(c["switches"], tracks), swaps_per_track=_ratio(c["swaps"], tracks),
        redetections_per_track=_ratio(c["redetections"], tracks),
        switch_rate=_ratio(c["switches"], cont), swap_rate=_ratio(c["swaps"], cont),
        redetection_rate=_ratio(c["redetections"], cont),
        redetection_rate_at_t2=_ratio(c["redetections_at_t2"], c["continuations_at_t2"]),
        redetection_rate_late=_ratio(c["redetections_late"], c["continuations_late"]),
        recall=_ratio(c["matches"], c["num_true"]), precision=_ratio(c["matches"], c["num_inferred"]),
        mota=(1.0 - (c["misses"] + c["false_positives"] + c["switches"]) / c["num_true"]) if c["num_true"] else None,
        motp=_ratio(c["iou_sum"], c["matches"]))
    c["failure_mode"] = classify_failure_mode(c)
    return c


def tracking_errors(true_boxes, true_presence, boxes, presence, ids, iou_threshold: float = 0.5, *,
                    continuity: bool = True) -> dict[str, Any]:
    """:func:`tracking_counts` (one sequence ``[time, ...]`` or a batch ``[batch, time, ...]``, summed) followed by
    :func:`summarise_tracking`: counts, rates and ``failure_mode``."""
    return summarise_tracking(tracking_counts(true_boxes, true_presence, boxes, presence, ids, iou_threshold,
                                              continuity=continuity))


# Thresholds of classify_failure_mode (fractions of the relevant continuations).
FAILURE_THRESHOLDS = dict(disc_only=0.5, redetects_at_t2=0.5, switches=0.1)


def classify_failure_mode(summary: dict) -> str:
    """One label per run from tracking counts (first rule that applies; thresholds in ``FAILURE_THRESHOLDS``):

    * ``"no_matches"``: no continuations at all (nothing tracked over two frames, e.g. an untrained model);
    * ``"disc_only"``: re-detections in at least half of the continuations from frame index 2 on (all frames if the
      sequences have only 2): the objects are re-discovered in most frames instead of propagated;
    * ``"redetects_at_t2"``: at least half of the objects matched in frames 0 and 1 are re-detected at frame 1 (the
      §5.G failure mode: the first frame's discoveries are dropped and re-discovered once);
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
            summary["redetections_at_t2"] / summary["continuations_at_t2"] >= th["redetects_at_t2"]):
        return "redetects_at_t2"
    if summary["switches"] / summary["continuations"] >= th["switches"]:
        return "switches"
    return "tracks"


# ----------------------------------------------------------------------------------------------------------------------
# Addition experiment


def addition_features(z_what, z_pres, ids) -> np.ndarray:
    """``z_what [..., slots, Dw]``, ``z_pres [..., slots]``, ``ids [..., slots]`` (-1 absent) -> ``[..., slots·Dw]``:
    ``z_what · z_pres`` of the slots concatenated in identity order (present slots by increasing identity, then the
    absent ones; a stable sort, so model outputs — already in that order — are unchanged)."""
    z_what, z_pres, ids = np.asarray(z_what, np.float32), np.asarray(z_pres, np.float32), np.asarray(ids)
    if z_what.ndim < 2 or z_pres.shape != z_what.shape[:-1] or ids.shape != z_pres.shape:
        raise ValueError(f"need z_what [..., slots, Dw], z_pres and ids [..., slots]; got {z_what.shape}, "
                         f"{z_pres.shape}, {ids.shape}")
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


def addition_experiment(train_outputs: dict, train_data: dict, test_outputs: dict, test_data: dict,
                        **classifier_kw) -> dict[str, Any]:
    """The addition experiment (§5.D.4) on a frozen model's outputs for training and test sequences.

    ``*_outputs``: ``z_what [n, T, N, Dw]``, ``z_pres [n, T, N]``, ``ids [n, T, N]`` (the slot order of the features,
    :func:`addition_features`); ``*_data``: the sequences' ``labels [n, D]`` and ``presence [n, T, D]``. Every frame is
    one example (target: :func:`addition_targets`; 9·D + 1 classes). ``classifier_kw`` go to
    :func:`train_addition_classifier`. Returns its result with ``num_train_sequences`` and ``num_test_sequences``.
    """
    feats = [addition_features(o["z_what"], o["z_pres"], o["ids"]) for o in (train_outputs, test_outputs)]
    targets = [addition_targets(d["labels"], d["presence"]) for d in (train_data, test_data)]
    for f, y in zip(feats, targets):
        if f.shape[:2] != y.shape:
            raise ValueError(f"outputs cover {f.shape[:2]} (sequences, frames) but the data {y.shape}")
    num_classes = 9 * train_data["labels"].shape[1] + 1
    result = train_addition_classifier(feats[0].reshape(-1, feats[0].shape[-1]), targets[0].reshape(-1),
                                       feats[1].reshape(-1, feats[1].shape[-1]), targets[1].reshape(-1),
                                       num_classes=num_classes, **classifier_kw)
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


def train_addition_classifier(features_train, targets_train, features_test, targets_test, *,
                              hidden: Sequence[int] = (256, 256), steps: int = 10_000, batch_size: int = 128,
                              learning_rate: float = 1e-3, seed: int = 0, num_classes: int = 19,
                              standardize: bool = True) -> dict[str, Any]:
    """Trains :class:`AdditionMLP` (softmax cross-entropy, Adam, mini-batches drawn uniformly with replacement) on
    frozen features.

    Args:
      features_train [n, features], targets_train [n] int in 0..num_classes-1; features_test [m, features],
        targets_test [m].
      standardize: scale features by the training mean and standard deviation (constant features are only centred).
    Returns:
      dict: ``train_accuracy``, ``test_accuracy``, ``train_loss`` (mean over the last 10% of steps), ``test_loss``,
      ``majority_baseline`` (test accuracy of always predicting the most frequent training target), ``num_train``,
      ``num_test``, ``steps``, ``num_classes``.
    """
    xs, ys = np.asarray(features_train, np.float32), np.asarray(targets_train)
    xt, yt = np.asarray(features_test, np.float32), np.asarray(targets_test)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise ValueError(f"features must be [n, features] with the same width; got {xs.shape} and {xt.shape}")
    if ys.shape != xs.shape[:1] or yt.shape != xt.shape[:1]:
        raise ValueError(f"targets must be [n] matching the features; got {ys.shape} for {xs.shape}, {yt.shape} for "
                         f"{xt.shape}")
    if len(xs) == 0 or len(xt) == 0:
        raise ValueError("train_addition_classifier needs at least one training and one test example")
    for name, y in (("targets_train", ys), ("targets_test", yt)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} must be integers in 0..{num_classes - 1}; got dtype {y.dtype}, range "
                             f"{y.min()}..{y.max()}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
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

    @jax.jit
    def step(p, s, i):
        idx = jax.random.randint(jax.random.fold_in(key_data, i), (batch_size,), 0, x_dev.shape[0])
        loss, g = jax.value_and_grad(loss_fn)(p, x_dev[idx], y_dev[idx])
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def evaluate(p, x, y):
        logits = model.apply(p, x)
        return (jnp.mean(jnp.argmax(logits, -1) == y),
                optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

    steps = int(steps)
    tail = max(1, steps // 10)
    losses = []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        if i >= steps - tail:
            losses.append(loss)
    losses = np.asarray(jax.device_get(losses))
    train_acc, _ = evaluate(params, x_dev, y_dev)
    test_acc, test_loss = evaluate(params, jnp.asarray(xt), jnp.asarray(yt, jnp.int32))
    majority = np.bincount(ys, minlength=num_classes).argmax()
    return dict(train_accuracy=float(train_acc), test_accuracy=float(test_acc),
                train_loss=float(losses.mean()), test_loss=float(test_loss),
                majority_baseline=float(np.mean(yt == majority)), num_train=int(len(xs)), num_test=int(len(xt)),
                steps=int(steps), num_classes=int(num_classes))


# ----------------------------------------------------------------------------------------------------------------------
# Wiring: a SQAIR task's inference -> tracking errors and addition accuracy


def _best_particle_outputs(task, params, frames: np.ndarray, key) -> dict[str, np.ndarray]:
    """The best particle's (largest log-weight) ``z_what [n, T, N, Dw]``, ``z_pres [n, T, N]``, ``ids [n, T, N]`` and
    ``boxes [n, T, N, 4]`` (pixel edges, clipped to the canvas, as the ground-truth boxes are) for ``frames [n, T,
    H, W]``, from the same batches and keys as ``evaluate_sqair`` (``sqair_task.inference_batches``)."""
    from ocr_jax.models import sqair_task

    H, W = task.model.config.image_shape
    parts = {k: [] for k in ("z_what", "z_pres", "ids", "boxes")}
    for _, out, pick in sqair_task.inference_batches(task, params, frames, key):
        parts["z_what"].append(pick(out["z_what"]))
        parts["z_pres"].append(pick(out["z_pres"]))
        parts["ids"].append(pick(out["ids"]).astype(np.int64))
        parts["boxes"].append(np.clip(sqair_task.boxes_of(task, pick(out["z_where"])), 0.0,
                                      np.array([H, W, H, W], np.float32)))
    return {k: np.concatenate(v) for k, v in parts.items()}


def tracking_and_addition(task, params, data: dict[str, np.ndarray], *, key: jax.Array,
                          num_sequences: int | None = None, classifier_steps: int = 10_000,
                          train_data: dict[str, np.ndarray] | None = None, num_train_sequences: int | None = None,
                          train_fraction: float = 0.5, iou_threshold: float = 0.5, continuity: bool = True,
                          classifier_hidden: Sequence[int] = (256, 256), classifier_batch_size: int = 128,
                          classifier_learning_rate: float = 1e-3, classifier_seed: int = 0) -> dict[str, Any]:
    """Tracking errors and the addition experiment for a (frozen) SQAIR ``task`` with ``params``.

    The best particle (largest log-weight of ``eval.num_particles``) of every sequence gives boxes, presences and
    identities; they are scored against ``data``'s ground truth (``boxes``, ``presence``; moving-MNIST dict) with
    :func:`tracking_errors`. Addition features (:func:`addition_features`) and targets (:func:`addition_targets`)
    per frame train :func:`train_addition_classifier`: on ``train_data``'s first ``num_train_sequences`` sequences
    if given (e.g. the training set) and tested on all evaluated ``data`` sequences; otherwise the first
    ``train_fraction`` of the evaluated sequences train it and the rest test it (split by sequence, so that no
    sequence is in both). ``classifier_steps=0`` skips the addition experiment (``addition`` is ``None``).

    ``key`` is used as ``evaluate_sqair`` uses it, so both see the same best particles of ``data``.

    Returns a JSON-able dict: ``num_sequences``, ``num_frames``, ``iou_threshold``, ``tracking`` (the
    :func:`tracking_errors` summary, with ``failure_mode``) and ``addition`` (the classifier's result, with
    ``num_train_sequences`` and ``num_test_sequences``).
    """
    n = min(num_sequences or len(data["frames"]), len(data["frames"]))
    if n < 1:
        raise ValueError("tracking_and_addition needs at least one sequence")
    # the same particle keys as evaluate_sqair(task, params, data, key=key): the same best particles
    out = _best_particle_outputs(task, params, data["frames"][:n], key)
    tracking = tracking_errors(data["boxes"][:n], data["presence"][:n], out["boxes"], out["z_pres"], out["ids"],
                               iou_threshold, continuity=continuity)
    results = dict(num_sequences=int(n), num_frames=int(data["frames"].shape[1]),
                   iou_threshold=float(iou_threshold), tracking=tracking, addition=None)
    if classifier_steps <= 0:
        return results

    train_kw = dict(hidden=classifier_hidden, steps=classifier_steps, batch_size=classifier_batch_size,
                    learning_rate=classifier_learning_rate, seed=classifier_seed)
    test_data = {k: data[k][:n] for k in ("labels", "presence")}
    if train_data is not None:
        m = min(num_train_sequences or len(train_data["frames"]), len(train_data["frames"]))
        if m < 1:
            raise ValueError("train_data needs at least one sequence")
        tr = _best_particle_outputs(task, params, train_data["frames"][:m], jax.random.fold_in(key, 1 << 30))
        addition = addition_experiment(tr, {k: train_data[k][:m] for k in ("labels", "presence")}, out, test_data,
                                       **train_kw)
    else:
        m = int(math.floor(train_fraction * n))
        if not 1 <= m < n:
            raise ValueError(f"train_fraction={train_fraction} of {n} sequences leaves no training or no test "
                             "sequence; pass more sequences or train_data")
        head, tail = slice(None, m), slice(m, None)
        addition = addition_experiment({k: v[head] for k, v in out.items()},
                                       {k: v[head] for k, v in test_data.items()},
                                       {k: v[tail] for k, v in out.items()},
                                       {k: v[tail] for k, v in test_data.items()}, **train_kw)
    results["addition"] = addition
    return results

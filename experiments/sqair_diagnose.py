"""Per-frame anatomy of a trained SQAIR run: how many objects PROP keeps and DISC discovers, and each frame's terms
of the log-weight (thesis Eq. 5.3-5.4), on the first test sequences cut to ``--frames`` frames.

    python -m experiments.sqair_diagnose --workdir=runs/abl/l1_h256 --frames=2 [--sequences=64 --particles=5]

This is how the DISC-only failure mode was traced (docs/results.md, "SQAIR that learns"): a DISC trained on first
frames re-detects in frame 2 what PROP keeps, and the duplicates cost log p(x_2 | z_2).

With ``--worth``: what each object found in frame 1 is worth, on test sequences with one and with two digits: remove
its identity from every frame (every other latent unchanged) and recompute log p(x_t | z_t); the particles' spare
object (the one worth least) when they hold more objects than digits; and how saturated DISC's presence is (log q of
frame 1's presence path). This is how the spare-object failure mode was traced.

    python -m experiments.sqair_diagnose --workdir=runs/sqair_discpen --frames=5 --sequences=40 --particles=10 --worth

With ``--merges``: on the first ``--sequences`` test sequences (``--frames`` frames), the first frames with two
digits — how many objects the best particle reads, how often a lone object's window holds at least half of both
digits, the median window height — and the tracking summary's merged misses and failure-mode label. This is how
seed 2's `merges` mode was traced (docs/results.md, issue #13).

    python -m experiments.sqair_diagnose --workdir=runs/sqair_offcanvas_seed2 --sequences=200 --frames=3 --merges

With ``--edges``: the visible count by how much of the frame's least visible digit is on the canvas (``EDGE_CLASSES``:
one wholly outside, a sliver of less than a quarter of it in view, partly in view, all in view), under the run's own
rule of what is in view and under the window rule with ink thresholds (``eval.visible_min_ink``,
``SQAIR.object_ink``), and the ink of the present objects in each class. ``--split=train --data_seed=S`` reads new
sequences of training digits, so that a threshold is chosen without the test split.

    python -m experiments.sqair_diagnose --workdir=runs/sqair_maxscale_seed0 --sequences=200 --frames=10 --edges \
        --split=train --data_seed=12345

With ``--crossings``: identity exchanges against crossings (:func:`crossing_summary`) on the first ``--sequences``
test sequences, and ``crossings_step<N>.png`` in the run's directory: the first sequences with an exchange, the
inferred windows coloured by identity and the true boxes in grey. This is how the tracks of maxscale seed 0 were seen
to bounce off each other where two digits cross (docs/results.md, issue #13).

    python -m experiments.sqair_diagnose --workdir=runs/sqair_maxscale_seed0 --sequences=1000 --frames=10 --crossings

With ``--disc_later_bias=B`` (the default mode): the same per-frame anatomy with DISC's presence logit offset by B
after frame 1 — how large an offset closes discovery in later frames. This is how the `disc_only` of `+short` seed 2
was traced to DISC's unbounded logit outgrowing the −30 suppression (docs/results.md, issue #13).

    python -m experiments.sqair_diagnose --workdir=runs/sqair_short_velocity_seed2 --step=2500 --frames=2 \
        --disc_later_bias=-60

With ``--count_errors``: the frames counted wrong on the first ``--sequences`` test sequences, by the first cause that
applies to the frame (:data:`COUNT_ERROR_CAUSES`: a digit back in view after being wholly outside in an earlier frame,
two digits whose boxes share a pixel, a digit wholly outside, a digit partly outside, none of these), too few and too
many. This is how `+velocity`'s counting errors were split by cause (docs/results.md, issue #13).

    python -m experiments.sqair_diagnose --workdir=runs/sqair_velocity_seed0 --sequences=1000 --frames=10 --count_errors
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ocr_jax import api, cli
from ocr_jax.data import to_unit_float
from ocr_jax.data.canvas import any_pair_overlaps
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.tasks.sqair import load_sequences


def frame_terms(
    run: api.Run,
    frames: np.ndarray,
    *,
    num_particles: int = 5,
    seed: int = 0,
    disc_later_presence_bias: float | None = None,
) -> dict[str, list]:
    """Means over sequences and particles, per frame, of ``num_propagated``, ``num_discovered`` and the log-weight
    terms (``log_likelihood, log_p_disc, log_p_prop, log_q_disc, log_q_prop``) for ``frames [n, T, H, W]``;
    ``disc_later_presence_bias`` overrides DISC's presence-logit offset after frame 1 (``SQAIR.infer``)."""
    model = run.model
    bias = None if disc_later_presence_bias is None else jnp.float32(disc_later_presence_bias)
    infer = jax.jit(lambda p, x, k, b: model.infer(p, to_unit_float(x), k, num_particles, disc_later_presence_bias=b))
    out = jax.device_get(infer(run.params, frames, jax.random.key(seed), bias))
    keys = (
        "num_propagated",
        "num_discovered",
        "log_likelihood",
        "log_p_disc",
        "log_p_prop",
        "log_q_disc",
        "log_q_prop",
    )
    return {k: np.asarray(out[k], np.float64).mean(axis=(0, 1)).round(3).tolist() for k in keys}


def object_worth(model, params, frames, key, num_particles: int) -> dict[str, np.ndarray]:
    """Per particle, what each object present in frame 1 is worth to the likelihood of every frame.

    ``frames [n, T, H, W]`` in [0, 1]. Returns ``worth [n, particles, T, objects]``: log p(x_t | z_t) minus the same
    with frame 1's object in that slot (its identity, in every frame) removed, NaN for slots empty in frame 1;
    ``num_objects [n, particles, T]``; ``log_q_pres_first [n, particles]`` (log q of frame 1's presence path: ≈ 0 when
    DISC's presence is saturated).
    """
    out = model.infer(params, frames, key, num_particles)
    # _render takes the Gaussian latent z_where_raw (the outputs' z_where is its spatial transform).
    z_what, z_where_raw, z_pres, ids = out["z_what"], out["z_where_raw"], out["z_pres"], out["ids"]  # [n, K, T, N, ...]
    render = jax.vmap(jax.vmap(jax.vmap(lambda w, r, p: model._render(params, w, r, p))))
    log_lik = jax.vmap(jax.vmap(jax.vmap(model._log_likelihood)))
    x = jnp.broadcast_to(frames[:, None], z_pres.shape[:3] + frames.shape[-2:])
    full = log_lik(x, render(z_what, z_where_raw, z_pres))
    worth = []
    for slot in range(z_pres.shape[-1]):
        in_first = z_pres[:, :, 0, slot] > 0  # [n, K]
        same = (ids == ids[:, :, :1, slot, None]) & in_first[:, :, None, None]
        without = log_lik(x, render(z_what, z_where_raw, jnp.where(same, 0.0, z_pres)))
        worth.append(jnp.where(in_first[..., None], full - without, jnp.nan))
    return dict(worth=jnp.stack(worth, -1), num_objects=z_pres.sum(-1), log_q_pres_first=out["log_q_pres"][:, :, 0])


def spare_summary(result: dict[str, np.ndarray], num_digits: int) -> dict:
    """Summary of :func:`object_worth` on sequences with ``num_digits`` digits: how many objects frame 1 holds, how
    saturated DISC's presence is, and for particles with more objects than digits the spare object's worth (the
    identity whose removal costs least over all frames): total and per frame, medians (nats)."""
    worth, n_first = result["worth"], result["num_objects"][:, :, 0]
    summary = {
        f"particles_with_{n}_objects_in_frame_1": float(np.mean(n_first == n)) for n in range(worth.shape[-1] + 1)
    }
    summary["log_q_pres_first_frame_median"] = float(np.median(result["log_q_pres_first"]))
    extra = n_first > num_digits
    summary["particles_with_a_spare"] = float(np.mean(extra))
    if extra.any():
        w = worth[extra]  # [P, T, objects]
        total = np.where(np.isnan(w[:, 0]), np.inf, np.nansum(w, 1))  # [P, objects]
        spare = np.argmin(total, -1)
        rows = np.arange(len(w))
        summary["spare_worth_total_median"] = float(np.median(total[rows, spare]))
        summary["spare_worth_total_quartiles"] = np.percentile(total[rows, spare], [25, 75]).round(3).tolist()
        summary["spare_worth_per_frame_median"] = np.median(w[rows, :, spare], 0).round(3).tolist()
    return summary


def merged_windows(run: api.Run, *, sequences: int = 200, frames: int = 10, particles: int = 5) -> dict:
    """The merged-object anatomy of a run on its first ``sequences`` test sequences cut to ``frames`` frames (best of
    ``particles``, chosen on those frames). For the first frames with two digits, counting objects in view as the
    visible count does: ``objects_read`` (how many frames are read as 0, 1, 2, 3+ objects), ``lone_window_holds_both``
    (of the frames read as one object, the fraction whose window holds at least ``MERGE_COVERAGE`` of both digits'
    tight boxes), ``window_height_median_px`` (over those objects); and over all frames the tracking summary's
    ``merged_misses``, ``misses``, ``num_true``, ``merged_miss_rate`` and ``failure_mode``."""
    data = run.task.test_data
    n = min(sequences, len(data["frames"]))
    out = api.infer_sequences(run, data["frames"][:n, :frames], key=0, num_particles=particles)
    true_boxes, true_presence = data["boxes"][:n, :frames], data["presence"][:n, :frames] > 0
    two = true_presence[:, 0].sum(-1) == 2
    boxes, in_view = out["boxes"][two, 0], out["visible"][two, 0]  # [m, slots, ...]
    counts = in_view.sum(-1)
    cover = sqair_eval.box_coverage(true_boxes[two, 0][:, :, None], boxes[:, None])  # [m, true, slots]
    holds_both = ((cover >= sqair_eval.MERGE_COVERAGE) & in_view[:, None]).all(1).any(-1)
    heights = (boxes[..., 2] - boxes[..., 0])[in_view]
    tracking = sqair_eval.tracking_errors(
        true_boxes,
        true_presence,
        out["boxes"],
        out["presence"],
        out["ids"],
        **sqair_eval.tracking_match_options(run.task.config.eval),
    )
    return dict(
        step=run.step,
        two_digit_first_frames=int(two.sum()),
        objects_read=np.bincount(np.minimum(counts, 3), minlength=4).tolist(),
        lone_window_holds_both=float(holds_both[counts == 1].mean()) if (counts == 1).any() else None,
        window_height_median_px=float(np.median(heights)) if heights.size else None,
        **{k: tracking[k] for k in ("merged_misses", "misses", "num_true", "merged_miss_rate", "failure_mode")},
    )


def crossing_summary(true_boxes, true_presence, boxes, presence, ids, **match_options) -> dict:
    """Identity exchanges (two tracks trading digits, :func:`ocr_jax.evaluation.sqair.tracking_counts`) against
    crossings, per sequence.

    Args:
      true_boxes [n, T, D, 4], true_presence [n, T, D]; boxes [n, T, slots, 4], presence [n, T, slots], ids
        [n, T, slots]: as :func:`ocr_jax.evaluation.sqair.tracking_counts`, whose ``match_options`` are passed on.
    Returns:
      dict: ``two_digit_sequences`` (two digits present together in some frame); ``crossing_sequences`` (of those,
      the digits' boxes overlap in some frame); ``sequences_with_exchanges`` and ``crossing_sequences_with_exchanges``;
      ``exchanges`` and ``swaps`` (totals); ``exchange_sequence_indices`` (the sequences with an exchange, in order).
    """
    true_presence = np.asarray(true_presence) > 0
    together = true_presence.sum(-1) >= 2  # [n, T]
    crossing = sqair_eval.touching_true_objects(true_boxes, true_presence).any((1, 2))  # [n]
    exchanges, swaps = [], 0
    for b in range(len(true_presence)):
        c = sqair_eval.tracking_counts(true_boxes[b], true_presence[b], boxes[b], presence[b], ids[b], **match_options)
        exchanges.append(c["exchanges"])
        swaps += c["swaps"]
    exchanges = np.asarray(exchanges)
    return dict(
        two_digit_sequences=int(together.any(1).sum()),
        crossing_sequences=int(crossing.sum()),
        sequences_with_exchanges=int((exchanges > 0).sum()),
        crossing_sequences_with_exchanges=int(((exchanges > 0) & crossing).sum()),
        exchanges=int(exchanges.sum()),
        swaps=int(swaps),
        exchange_sequence_indices=np.nonzero(exchanges > 0)[0].tolist(),
    )


def crossings(run: api.Run, workdir: str, *, sequences: int = 1000, frames: int = 10, particles: int = 5) -> dict:
    """:func:`crossing_summary` of the best particles (of ``particles``) on the first ``sequences`` test sequences cut
    to ``frames`` frames, and a picture of the first six sequences with an exchange (``crossings_step<N>.png`` in
    ``workdir``; its path is returned as ``picture``, None where there is none)."""
    from ocr_jax import plotting

    data = run.task.test_data
    n = min(sequences, len(data["frames"]))
    out = api.infer_sequences(run, data["frames"][:n, :frames], key=0, num_particles=particles)
    true_boxes, true_presence = data["boxes"][:n, :frames], data["presence"][:n, :frames] > 0
    summary = crossing_summary(
        true_boxes,
        true_presence,
        out["boxes"],
        out["visible"],
        out["ids"],
        **sqair_eval.tracking_match_options(run.task.config.eval),
    )
    shown = summary["exchange_sequence_indices"][:6]
    picture = None
    if shown:
        truth_color = 7  # grey in plotting.PALETTE
        fig = plotting.plot_frame_strips(
            data["frames"][shown, :frames],
            np.concatenate([out["boxes"][shown], true_boxes[shown]], 2),
            np.concatenate([out["visible"][shown], true_presence[shown]], 2),
            color_ids=np.concatenate([out["ids"][shown], np.full(true_presence[shown].shape, truth_color)], 2),
            row_titles=[f"sequence {i}" for i in shown],
            title=f"identity exchanges, step {run.step}: windows by identity, true boxes grey",
        )
        picture = str(plotting.save_figure(fig, f"{workdir}/crossings_step{run.step}.png"))
    return dict(step=run.step, sequences=n, frames=frames, **summary, picture=picture)


# The classes of --edges, by the frame's least visible digit: one wholly outside (the visible count is below the
# sequence's), one with less than EDGE_SLIVER of its tight box in view, one partly in view, every digit wholly in view.
EDGE_CLASSES = ("wholly_outside", "sliver", "partly_in_view", "all_in_view")
EDGE_SLIVER = 0.25
EDGE_INK_THRESHOLDS = (0.1, 0.2, 0.3, 0.5)
_PER_FRAME = ("frames", "counts", "presence", "boxes", "full_boxes")  # [n, T, ...] fields --edges, --count_errors read


def shown_fraction(data: dict[str, np.ndarray]) -> np.ndarray:
    """``[n, T, k]``: the fraction of each digit's tight box on the canvas (``boxes``, the visible part, over
    ``full_boxes``); 1 where the digit is not in view (``presence`` false)."""
    visible_area = sqair_eval.box_area(data["boxes"])
    full_area = sqair_eval.box_area(data["full_boxes"])
    return np.where(data["presence"] > 0, visible_area / np.maximum(full_area, 1e-9), 1.0)


def edge_classes(data: dict[str, np.ndarray]) -> np.ndarray:
    """``[n, T]`` int: the index in :data:`EDGE_CLASSES` of every frame of moving multi-MNIST ``data`` (``counts [n,
    T]``, ``sequence_counts [n]``, ``presence [n, T, k]``, ``boxes`` (the visible part) and ``full_boxes [n, T, k,
    4]``); a frame with no digit is ``all_in_view``."""
    least = shown_fraction(data).min(-1)
    classes = np.full(least.shape, 3)
    classes[least < 1.0 - 1e-6] = 2
    classes[least < EDGE_SLIVER] = 1
    classes[data["counts"] < data["sequence_counts"][:, None]] = 0
    return classes


def edge_counts(
    run: api.Run,
    *,
    sequences: int = 200,
    frames: int = 10,
    particles: int = 5,
    split: str = "test",
    data_seed: int | None = None,
) -> dict:
    """The visible count near the canvas edge (module docstring, ``--edges``) on ``sequences`` sequences cut to
    ``frames`` frames: the run's test split (``split="test"``, ``data_seed`` None) or new ones of ``split``'s digits
    with generator seed ``data_seed``. Returns per class of :func:`edge_classes` its ``frames`` and ``ink_quantiles``
    (5/10/25/50/75/90 % of the present objects' ``SQAIR.object_ink``), and ``count_accuracy`` per class (``all``
    too) under ``"run"`` (the run's own ``eval`` rule, as ``api.infer_sequences``) and ``"ink_<τ>"`` (window rule
    and ink ≥ τ, for τ in :data:`EDGE_INK_THRESHOLDS`)."""
    cfg = run.task.config
    if data_seed is None:
        if split != "test":
            raise ValueError("--split=train needs --data_seed (a generator seed for new sequences)")
        data = _test_sequences(run, sequences, frames)
    else:
        data = _cut_to_frames(load_sequences(cfg, split, sequences, data_seed), frames)
    out = api.infer_sequences(run, data["frames"], key=0, num_particles=particles)
    ink = sqair_eval.task_object_ink(run.task, run.params, out["z_what"], out["z_where_raw"])
    classes = edge_classes(data)
    window = sqair_eval.visible_objects(
        out["boxes"], out["presence"], run.model.config.image_shape, cfg.eval.visible_min_fraction
    )
    rules = {"run": out["visible"], **{f"ink_{tau}": window & (ink >= tau) for tau in EDGE_INK_THRESHOLDS}}

    def accuracy(visible):
        right = visible.sum(-1) == data["counts"]
        per_class = {
            name: float(right[classes == i].mean()) if (classes == i).any() else None
            for i, name in enumerate(EDGE_CLASSES)
        }
        return dict(all=float(right.mean()), **per_class)

    quantiles = (5, 10, 25, 50, 75, 90)
    result = dict(step=run.step, split=split, data_seed=data_seed, sequences=len(data["frames"]), frames=frames)
    for i, name in enumerate(EDGE_CLASSES):
        present_ink = ink[out["presence"] & (classes == i)[..., None]]
        result[name] = dict(
            frames=int((classes == i).sum()),
            ink_quantiles=np.percentile(present_ink, quantiles).round(3).tolist() if present_ink.size else None,
        )
    result["count_accuracy"] = {rule: accuracy(visible) for rule, visible in rules.items()}
    return result


def _cut_to_frames(data: dict[str, np.ndarray], frames: int) -> dict[str, np.ndarray]:
    """The fields --edges and --count_errors read, per-frame ones cut to the first ``frames`` frames."""
    return {k: (data[k][:, :frames] if k in _PER_FRAME else data[k]) for k in (*_PER_FRAME, "sequence_counts")}


def _test_sequences(run: api.Run, sequences: int, frames: int) -> dict[str, np.ndarray]:
    """The run's first ``sequences`` test sequences, cut to ``frames`` frames (``_cut_to_frames``)."""
    return _cut_to_frames({k: v[:sequences] for k, v in run.task.test_data.items()}, frames)


# The causes of --count_errors, the first that applies to a frame: a digit in view that was wholly outside (or not yet
# in view) in an earlier frame of its sequence; two digits in view whose visible boxes share a pixel; a digit of the
# sequence wholly outside the canvas (the visible count below the sequence's); a digit partly outside; none of these.
COUNT_ERROR_CAUSES = ("came_back", "overlapping", "one_outside", "at_edge", "other")


def count_error_causes(data: dict[str, np.ndarray], inferred_counts: np.ndarray) -> dict[str, dict[str, int]]:
    """Frames counted wrong by cause. ``data``: moving multi-MNIST (``counts [n, T]``, ``sequence_counts [n]``,
    ``presence [n, T, k]``, ``boxes`` and ``full_boxes [n, T, k, 4]``); ``inferred_counts [n, T]``. Each frame gets
    the first of :data:`COUNT_ERROR_CAUSES` that applies; returns per cause its ``frames``, those counted too low
    (``under``) and too high (``over``)."""
    presence = np.asarray(data["presence"], bool)  # [n, T, k]
    n, T, k = presence.shape
    absent = (~presence).astype(np.int32)
    absent_before = (np.cumsum(absent, axis=1) - absent) > 0  # [n, T, k]: out of view in some earlier frame
    came_back = (presence & absent_before).any(-1)
    flat_boxes = np.asarray(data["boxes"]).reshape(n * T, k, 4)
    overlapping = any_pair_overlaps(flat_boxes, presence.reshape(n * T, k)).reshape(n, T)
    truth = np.asarray(data["counts"])
    one_outside = truth < np.asarray(data["sequence_counts"])[:, None]
    at_edge = (shown_fraction(data) < 1.0 - 1e-6).any(-1)
    cause = np.full((n, T), COUNT_ERROR_CAUSES.index("other"))
    applies = (came_back, overlapping, one_outside, at_edge)  # in the order of COUNT_ERROR_CAUSES
    for i in reversed(range(len(applies))):  # the first cause that applies is written last
        cause[applies[i]] = i
    inferred = np.asarray(inferred_counts)
    return {
        name: dict(
            frames=int((cause == i).sum()),
            under=int(((cause == i) & (inferred < truth)).sum()),
            over=int(((cause == i) & (inferred > truth)).sum()),
        )
        for i, name in enumerate(COUNT_ERROR_CAUSES)
    }


def count_errors(run: api.Run, *, sequences: int = 1000, frames: int = 10, particles: int = 5) -> dict:
    """:func:`count_error_causes` of the best particles (of ``particles``, the run's visible rule) on the first
    ``sequences`` test sequences cut to ``frames`` frames, with the count accuracy they give."""
    data = _test_sequences(run, sequences, frames)
    out = api.infer_sequences(run, data["frames"], key=0, num_particles=particles)
    inferred = out["visible"].sum(-1)
    return dict(
        step=run.step,
        sequences=len(data["frames"]),
        frames=frames,
        count_accuracy=float((inferred == data["counts"]).mean()),
        causes=count_error_causes(data, inferred),
    )


def diagnose(
    workdir: str,
    *,
    frames: int = 2,
    sequences: int = 64,
    particles: int = 5,
    worth: bool = False,
    merges: bool = False,
    edges: bool = False,
    crossings_: bool = False,
    count_errors_: bool = False,
    split: str = "test",
    data_seed: int | None = None,
    step: int | None = None,
    disc_later_bias: float | None = None,
) -> dict:
    """What the command line prints, as a dict: :func:`frame_terms` (with the true counts) on the first ``sequences``
    test sequences cut to ``frames`` frames, with ``worth`` :func:`spare_summary` on one- and two-digit ones, with
    ``merges`` :func:`merged_windows`, with ``crossings_`` :func:`crossings`, with ``count_errors_``
    :func:`count_errors`, or with ``edges`` :func:`edge_counts`
    (on ``split`` / ``data_seed``); at checkpoint ``step`` (the latest if None). ``disc_later_bias`` (frame_terms
    only) overrides DISC's presence-logit offset after frame 1."""
    run = api.load_run(workdir, step=step)
    if crossings_:
        return crossings(run, workdir, sequences=sequences, frames=frames, particles=particles)
    if count_errors_:
        return count_errors(run, sequences=sequences, frames=frames, particles=particles)
    if merges:
        return merged_windows(run, sequences=sequences, frames=frames, particles=particles)
    if edges:
        return edge_counts(
            run, sequences=sequences, frames=frames, particles=particles, split=split, data_seed=data_seed
        )
    cfg = run.task.config
    if worth:
        data = run.task.test_data
        num_digits = (data["labels"] >= 0).sum(-1)
        worth_fn = jax.jit(object_worth, static_argnums=(0, 4))
        result = {"step": run.step}
        for n in (1, 2):
            x = to_unit_float(data["frames"][num_digits == n][:sequences, :frames])
            result[f"{n}_digit_sequences"] = spare_summary(
                jax.device_get(worth_fn(run.model, run.params, x, jax.random.key(0), particles)), n
            )
        return result
    data = load_sequences(cfg, "test", sequences, cfg.data_seed + 1)
    result = frame_terms(
        run, data["frames"][:, :frames], num_particles=particles, disc_later_presence_bias=disc_later_bias
    )
    result["true_counts"] = data["counts"][:, :frames].mean(0).round(3).tolist()
    return dict(step=run.step, **result)


def main(argv):
    cli.start_script(argv)
    result = diagnose(
        _WORKDIR.value,
        frames=_FRAMES.value,
        sequences=_SEQUENCES.value,
        particles=_PARTICLES.value,
        worth=_WORTH.value,
        merges=_MERGES.value,
        edges=_EDGES.value,
        crossings_=_CROSSINGS.value,
        count_errors_=_COUNT_ERRORS.value,
        split=_SPLIT.value,
        data_seed=_DATA_SEED.value,
        step=_STEP.value,
        disc_later_bias=_DISC_LATER_BIAS.value,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _WORKDIR = flags.DEFINE_string("workdir", None, "a trained SQAIR run's directory", required=True)
    _FRAMES = flags.DEFINE_integer("frames", 2, "frames of each test sequence (the first ones)")
    _SEQUENCES = flags.DEFINE_integer("sequences", 64, "test sequences (with --worth: of each digit count)")
    _PARTICLES = flags.DEFINE_integer("particles", 5, "particles per sequence")
    _WORTH = flags.DEFINE_bool("worth", False, "what each object found in frame 1 is worth (see above)")
    _MERGES = flags.DEFINE_bool("merges", False, "one window over two digits: the merged-object anatomy (see above)")
    _EDGES = flags.DEFINE_bool("edges", False, "the visible count near the canvas edge, by rule (see above)")
    _CROSSINGS = flags.DEFINE_bool("crossings", False, "identity exchanges where digits cross, a picture (see above)")
    _COUNT_ERRORS = flags.DEFINE_bool("count_errors", False, "the frames counted wrong, by cause (see above)")
    _SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "--edges: whose digits the sequences use")
    _DATA_SEED = flags.DEFINE_integer("data_seed", None, "--edges: new sequences with this generator seed")
    _STEP = flags.DEFINE_integer("step", None, "checkpoint to load (default: the latest)")
    _DISC_LATER_BIAS = flags.DEFINE_float(
        "disc_later_bias", None, "DISC's presence-logit offset after frame 1 (default: the model's; -inf: closed)"
    )
    app.run(main)

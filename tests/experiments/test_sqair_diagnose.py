"""experiments/sqair_diagnose.py --worth: what each object of an inferred explanation is worth to the likelihood."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.sqair_diagnose import object_worth, spare_summary
from ocr_jax.models.sqair import SQAIR
from tests.models.test_sqair_startup import N, _config, _force, _images, _set_last

_object_worth = jax.jit(object_worth, static_argnums=(0, 4))


def test_object_worth_is_the_likelihood_an_identity_adds():
    """An object that paints nothing (decoder logits −50) is worth exactly 0 in every frame; one that paints is
    worth log p(x|z) − log p(x|z without it), which for a single object is the full likelihood minus the empty
    canvas'. The summary finds the spare object of particles holding more objects than digits."""
    model = SQAIR(_config())
    params = _force(model.init(jax.random.key(0)), "inference", "disc_pres", 50.0)  # every DISC step present
    frames = _images()
    decoder = _set_last(params["generative"]["glimpse_decoder"], ("MLP_0", "Dense_2"), -50.0)  # sigmoid ≈ 0
    blank = dict(params, generative=dict(params["generative"], glimpse_decoder=decoder))
    result = jax.device_get(_object_worth(model, blank, frames, jax.random.key(1), 3))
    assert result["worth"].shape == result["num_objects"].shape + (N,)
    np.testing.assert_allclose(result["worth"], 0.0, atol=1e-3)
    np.testing.assert_array_equal(result["num_objects"][:, :, 0], N)

    result = jax.device_get(_object_worth(model, params, frames, jax.random.key(1), 3))
    assert np.isfinite(result["worth"][:, :, 0]).all() and np.abs(result["worth"]).max() > 1.0
    out = jax.device_get(jax.jit(model.infer, static_argnums=3)(params, frames, jax.random.key(1), 3))
    canvas, sigma = np.asarray(out["canvas"][:, :, 0], np.float64), model.config.obs_std
    x = np.asarray(frames[:, None, 0], np.float64)
    render = jax.jit(jax.vmap(jax.vmap(lambda w, r, p: model._render(params, w, r, p))))
    for slot in range(N):  # Gaussian closed form in frame 1: Σ [(x − c + g)² − (x − c)²] / 2σ², g = the object's paste
        only = np.where(np.arange(N) == slot, out["z_pres"][:, :, 0], 0.0)
        paste = render(out["z_what"][:, :, 0], out["z_where_raw"][:, :, 0], jnp.asarray(only))
        g = np.asarray(paste, np.float64)
        expected = np.sum((x - canvas + g) ** 2 - (x - canvas) ** 2, axis=(-2, -1)) / (2 * sigma**2)
        np.testing.assert_allclose(result["worth"][:, :, 0, slot], expected, rtol=2e-3, atol=0.05)
    summary = spare_summary(result, num_digits=1)
    assert summary["particles_with_a_spare"] == 1.0 and summary["particles_with_3_objects_in_frame_1"] == 1.0
    assert len(summary["spare_worth_per_frame_median"]) == frames.shape[1]


def test_edge_classes_name_each_frame_by_its_least_visible_digit():
    """Four one-frame sequences of two 10x10 digits on a 50-px canvas: both inside; one with 4 of its 10 columns in
    view; one with 2 (a sliver); one wholly outside (the visible count below the sequence's); and a one-digit frame."""
    from experiments.sqair_diagnose import EDGE_CLASSES, edge_classes

    full = np.array(
        [
            [[5, 5, 15, 15], [20, 20, 30, 30]],
            [[5, 5, 15, 15], [20, 44, 30, 54]],
            [[5, 5, 15, 15], [20, 48, 30, 58]],
            [[5, 5, 15, 15], [20, 50, 30, 60]],
            [[5, 5, 15, 15], [0, 0, 0, 0]],
        ],
        np.float32,
    )[:, None]  # [n, T = 1, k = 2, 4]
    visible = full.copy()
    visible[..., 3] = np.minimum(visible[..., 3], 50)
    presence = visible[..., 3] > visible[..., 1]
    visible[~presence] = 0
    data = dict(
        boxes=visible,
        full_boxes=full,
        presence=presence,
        counts=presence.sum(-1),
        sequence_counts=np.array([2, 2, 2, 2, 1]),
    )
    classes = edge_classes(data)
    assert classes.shape == (5, 1)
    assert [EDGE_CLASSES[c] for c in classes[:, 0]] == [
        "all_in_view",
        "partly_in_view",
        "sliver",
        "wholly_outside",
        "all_in_view",
    ]


def test_crossing_summary_counts_exchanges_where_tracks_bounce_off_each_other():
    """Two 10-px digits crossing horizontally (they coincide at t = 2): windows that follow them exchange nothing;
    windows that keep their sides (identity 0 always on the left: the tracks bounce) exchange both digits at t = 3.
    A third sequence moves two digits in parallel (no crossing), a fourth has one digit."""
    from experiments.sqair_diagnose import crossing_summary

    T = 5
    x = np.linspace(5.0, 35.0, T)
    a = np.stack([np.full(T, 20.0), x, np.full(T, 30.0), x + 10], -1)  # [T, 4], moving right
    b = a.copy()
    b[:, 1], b[:, 3] = x[::-1], x[::-1] + 10  # moving left
    low = a + np.array([20.0, 0.0, 20.0, 0.0])  # parallel to a, 20 px lower
    true_boxes = np.stack([np.stack([a, b], 1), np.stack([a, b], 1), np.stack([a, low], 1), np.stack([a, 0 * a], 1)])
    true_presence = np.ones((4, T, 2), bool)
    true_presence[3, :, 1] = False
    ids = np.broadcast_to(np.array([0, 1]), (4, T, 2)).copy()
    ids[3, :, 1] = -1
    boxes = true_boxes.copy()
    left = np.where(a[:, 1:2] <= b[:, 1:2], a, b)  # bounce: identity 0 holds the left digit in every frame
    right = np.where(a[:, 1:2] <= b[:, 1:2], b, a)
    boxes[1] = np.stack([left, right], 1)
    result = crossing_summary(true_boxes, true_presence, boxes, true_presence, ids)
    assert result == dict(
        two_digit_sequences=3,
        crossing_sequences=2,
        sequences_with_exchanges=1,
        crossing_sequences_with_exchanges=1,
        exchanges=2,
        swaps=2,
        exchange_sequence_indices=[1],
    )


def test_count_error_causes_split_wrong_counts_by_the_first_cause_that_applies():
    """Two three-frame sequences of two 10x10 digits on a 50-px canvas. Sequence 0: B wholly outside (one outside),
    then back in view apart from A, then back in view overlapping A (came back wins over overlapping). Sequence 1: B
    partly outside, both apart in view, both overlapping."""
    from experiments.sqair_diagnose import count_error_causes

    a = [5, 5, 15, 15]
    full = np.array(
        [
            [[a, [20, 50, 30, 60]], [a, [20, 30, 30, 40]], [a, [10, 10, 20, 20]]],
            [[a, [20, 44, 30, 54]], [a, [20, 30, 30, 40]], [a, [10, 10, 20, 20]]],
        ],
        np.float32,
    )  # [n = 2, T = 3, k = 2, 4]
    visible = full.copy()
    visible[..., 3] = np.minimum(visible[..., 3], 50)
    presence = visible[..., 3] > visible[..., 1]
    visible[~presence] = 0
    data = dict(
        boxes=visible, full_boxes=full, presence=presence, counts=presence.sum(-1), sequence_counts=np.array([2, 2])
    )
    np.testing.assert_array_equal(data["counts"], [[1, 2, 2], [2, 2, 2]])
    inferred = np.array([[2, 1, 1], [1, 3, 1]])
    assert count_error_causes(data, inferred) == {
        "came_back": dict(frames=2, under=2, over=0),
        "overlapping": dict(frames=1, under=1, over=0),
        "one_outside": dict(frames=1, under=0, over=1),
        "at_edge": dict(frames=1, under=1, over=0),
        "other": dict(frames=1, under=0, over=1),
    }
    # Counted right everywhere: every cause keeps its frames and has no errors.
    right = count_error_causes(data, data["counts"])
    assert [c["frames"] for c in right.values()] == [2, 1, 1, 1, 1]
    assert all(c["under"] == c["over"] == 0 for c in right.values())

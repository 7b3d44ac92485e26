"""Moving multi-MNIST: the official SQAIR recipe (default) and the first generator ("bounce_patch"): dynamics,
rendering, frame-1 overlap, counts, hard variant, determinism, argument checks, overlap statistics."""

import hashlib

import numpy as np
import pytest

from ocr_jax.data.canvas import boxes_overlap, tight_boxes
from ocr_jax.data.moving_mnist import (
    make_moving_multi_mnist,
    motion_bounds,
    official_templates,
    official_trajectories,
    overlap_statistics,
)
from ocr_jax.data.synthetic import blob_digits

DIGITS, LABELS = blob_digits(100, seed=0)
SRC_BOXES = tight_boxes(DIGITS)
N, T = 600, 10


# ----------------------------------------------------------------------------------------------------------------------
# recipe="official" (the default)


@pytest.fixture(scope="module")
def official():
    return make_moving_multi_mnist(DIGITS, LABELS, N, seed=5)


def test_official_shapes(official):
    d = official
    assert d["frames"].shape == (N, T, 50, 50) and d["frames"].dtype == np.uint8
    assert d["counts"].shape == (N, T) and d["sequence_counts"].shape == (N,)
    assert d["boxes"].shape == d["full_boxes"].shape == (N, T, 2, 4) and d["presence"].shape == (N, T, 2)
    assert d["labels"].shape == (N, 2) and d["positions"].shape == d["velocities"].shape == (N, T, 2, 2)


def test_official_is_the_default_and_deterministic_given_seed():
    a = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, chunk_size=7)
    b = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, recipe="official")
    c = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=5)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["frames"], c["frames"])


def test_official_frame1_digits_inside_and_disjoint(official):
    d = official
    full0 = d["full_boxes"][:, 0]
    exists = d["labels"] >= 0
    # Frame 1: every digit wholly inside (data.py's fraction_outside_canvas = 0), so visible = sequence count.
    assert (full0[exists][:, :2] >= 0).all() and (full0[exists][:, 2:] <= 50).all()
    np.testing.assert_array_equal(d["boxes"][:, 0], full0)
    np.testing.assert_array_equal(d["counts"][:, 0], d["sequence_counts"])
    two = exists.all(-1)
    assert two.sum() > 100
    assert not boxes_overlap(full0[two, 0], full0[two, 1]).any()
    # ... while later frames do overlap sometimes.
    assert boxes_overlap(d["boxes"][two, 1:, 0], d["boxes"][two, 1:, 1]).any()


def test_official_digits_leave_through_bottom_right_and_come_back(official):
    d = official
    p, full, pres = d["positions"], d["full_boxes"], d["presence"]
    exists = np.broadcast_to((d["labels"] >= 0)[:, None, :], pres.shape)
    assert (p >= 0).all() and (p <= 50).all()  # the corner is bounded to [0, canvas]
    assert (p[exists] > 49).any()  # ... and reaches the far edge
    ex_full = full[exists]
    assert (ex_full[:, :2] >= 0).all()  # never out through the top or the left
    partly = pres & ((full[..., 2] > 50) | (full[..., 3] > 50))
    assert partly.mean() > 0.1
    gone = exists & ~pres  # wholly outside
    assert gone.any()
    # A digit that is wholly outside at some frame is visible at an earlier or later one: it comes back (or was in).
    seq, ident = np.nonzero(gone.any(1))
    assert pres[seq, :, ident].any(-1).all()
    came_back = [(np.nonzero(~row)[0][0] < np.nonzero(row)[0][-1]) for row in pres[seq, :, ident]]
    assert any(came_back)


def test_official_counts(official):
    d = official
    np.testing.assert_array_equal(d["counts"], d["presence"].sum(-1))
    np.testing.assert_array_equal(d["sequence_counts"], (d["labels"] >= 0).sum(-1))
    assert (d["counts"] <= d["sequence_counts"][:, None]).all()
    inside = ((d["full_boxes"][..., 2] <= 50) & (d["full_boxes"][..., 3] <= 50)).all(-1)  # absent: zero box, inside
    np.testing.assert_array_equal(d["counts"][inside], np.broadcast_to(d["sequence_counts"][:, None], (N, T))[inside])
    assert (d["counts"] < d["sequence_counts"][:, None]).any()
    observed = np.bincount(d["sequence_counts"], minlength=3)
    chi2 = ((observed - N / 3) ** 2 / (N / 3)).sum()
    assert chi2 < 13.8, observed
    # Boxes: tight around the frame's pixels when one digit is visible, and clipped to the canvas.
    one = d["counts"] == 1
    np.testing.assert_array_equal(d["boxes"][one].sum(axis=1), tight_boxes(d["frames"][one]))
    assert (d["boxes"][..., :2] >= 0).all() and (d["boxes"][..., 2:] <= 50).all()


def test_official_frames_are_the_per_pixel_maximum_of_the_templates():
    """Rebuild every frame by hand from the templates and the rounded positions: a per-pixel maximum, not a sum."""
    digits, _ = blob_digits(10, seed=3, min_extent=14, max_extent=24)
    digits[digits > 0] = np.maximum(digits[digits > 0], 160)  # bright: a sum would saturate where digits overlap
    labels = np.arange(10)  # a label identifies its digit
    d = make_moving_multi_mnist(digits, labels, 200, seed=7)
    templates, sizes = official_templates(digits)
    corners = np.round(d["positions"]).astype(int)
    overlapping_ink = 0
    for i in range(200):
        for t in range(T):
            big = np.zeros((2, 50 + 28, 50 + 28), np.uint8)
            for j in np.nonzero(d["labels"][i] >= 0)[0]:
                y, x = corners[i, t, j]
                big[j, y : y + 28, x : x + 28] = templates[d["labels"][i, j]]
            np.testing.assert_array_equal(d["frames"][i, t], big.max(0)[:50, :50])
            overlapping_ink += ((big[0, :50, :50] > 0) & (big[1, :50, :50] > 0)).sum()
    assert overlapping_ink > 100  # the test sees overlaps (where a clipped sum would give 255)
    # Distinct digits within a sequence (np.random.choice(..., replace=False) in the official code).
    two = (d["labels"] >= 0).all(-1)
    assert (d["labels"][two, 0] != d["labels"][two, 1]).all()


def test_official_templates_byte_scaling_and_dim_coords_crop():
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 4:9, 2] = 100  # a stroke at column 2, a gap at columns 3-4, then columns 5-7
    digit[0, 3:10, 5:8] = 254
    templates, sizes = official_templates(digit)
    # Rows 3..9 (7 rows, no gap). Columns: 4 nonzero (2, 5, 6, 7), the last is 7 → official start 7 - 4 + 1 = 4.
    np.testing.assert_array_equal(sizes, [[7, 4]])
    expected = np.zeros((28, 28), np.uint8)
    expected[:7, 1:4] = 255  # columns 5-7 stretched 254 → 255; column 4 (empty) first; column 2 cut off
    np.testing.assert_array_equal(templates[0], expected)
    # Byte-scaling: x · 255 / max, rounded half up (scipy.misc.bytescale on TF's float32 images).
    scaled = official_templates(np.array([[[0, 100], [50, 200]]], np.uint8))[0][0]
    np.testing.assert_array_equal(scaled, [[0, 128], [64, 255]])  # 127.5 → 128, 63.75 → 64


def test_official_trajectory_dynamics():
    """NoisyAccelerationTrajectory: a, drawn once in [-3, 3], drifts by N(0, 0.01²) per frame; v clipped to ±10;
    the corner reflects off 0 and 50, flipping v and a of that axis."""
    rng = np.random.default_rng(0)
    n = 4000
    p0 = np.round(rng.random((n, 2)) * 30)
    p, v, a = official_trajectories(p0, 10, rng, canvas_size=50)
    np.testing.assert_array_equal(p[0], p0)
    assert (p >= 0).all() and (p <= 50).all()
    assert (np.abs(v) <= 10).all() and (np.abs(a) <= 3).all()
    prop = p[:-1] + v[:-1]
    under, over = prop < 0, prop > 50
    assert under.sum() > 50 and over.sum() > 50
    np.testing.assert_allclose(p[1:], np.where(under, -prop, np.where(over, 100 - prop, prop)), atol=1e-9)
    sign = np.where(under | over, -1.0, 1.0)
    np.testing.assert_allclose(v[1:], np.clip(sign * (v[:-1] + a[:-1]), -10, 10), atol=1e-9)
    # Acceleration: one draw per trajectory, then tiny noise (std 0.01), flipped with the velocity on a bounce.
    unclipped = np.abs(a[1:]) < 2.999
    noise = (sign * a[1:] - a[:-1])[unclipped]
    assert abs(noise.std() - 0.01) < 0.001 and np.abs(noise).max() < 0.06
    a0 = a[0].ravel()
    assert a0.min() < -2.95 and a0.max() > 2.95
    assert abs(a0.mean()) < 4 * np.sqrt(3 / a0.size) and abs(a0.var() - 3) < 0.2
    # v_0 = clip(U[-10, 10] + U[-3, 3]): symmetric, with mass piled at ±10.
    v0 = v[0].ravel()
    assert abs(v0.mean()) < 4 * np.sqrt(35 / v0.size)
    assert 0.02 < (np.abs(v0) == 10).mean() < 0.1  # P(|U[-10,10] + U[-3,3]| > 10) = 0.075
    # The velocities the dataset stores obey the same bounds.
    d = make_moving_multi_mnist(DIGITS, LABELS, 100, seed=1)
    assert (np.abs(d["velocities"]) <= 10).all() and (np.abs(d["velocities"]) == 10).mean() > 0.2


def test_official_hard_variant():
    d = make_moving_multi_mnist(DIGITS, LABELS, 400, seed=3, hard=True)
    assert (d["sequence_counts"] == 2).all()
    pres = d["presence"]
    assert (~pres[:, 0] & pres.any(1)).any() and (~pres[:, -1] & pres.any(1)).any()
    assert set(np.unique(d["counts"])) == {0, 1, 2}
    assert (d["frames"][d["counts"] == 0] == 0).all()


# ----------------------------------------------------------------------------------------------------------------------
# recipe="bounce_patch" (the first generator)


def _digest(d):
    h = hashlib.sha256()
    for k in ("frames", "counts", "boxes", "presence", "labels", "positions", "velocities"):
        h.update(k.encode())
        h.update(np.ascontiguousarray(d[k]).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "kw, digest",
    [
        (dict(motion="bounce"), "c153a824150bc3c2046d5a4a1f27515a0e0380e69de448259328fa9bd752395b"),
        (dict(motion="leave_and_return"), "cdb458891db59b800f10c77a3f897c225f194393b5b730db6730c4b118539ba6"),
        (dict(motion="bounce", hard=True), "14a316c0217d627fb7bfdc648e7a5a19639292096eb2a0306e672a22fad5a6fe"),
        (dict(), "c153a824150bc3c2046d5a4a1f27515a0e0380e69de448259328fa9bd752395b"),  # motion defaults to "bounce"
    ],
)
def test_bounce_patch_gives_its_old_outputs(kw, digest):
    """Digests computed with the generator as it was before the official recipe was added (same seed, same digits)."""
    d = make_moving_multi_mnist(DIGITS[:100], LABELS[:100], 40, seed=11, recipe="bounce_patch", **kw)
    assert _digest(d) == digest
    np.testing.assert_array_equal(d["sequence_counts"], (d["labels"] >= 0).sum(-1))


@pytest.fixture(scope="module", params=["bounce", "leave_and_return"])
def data(request):
    return request.param, make_moving_multi_mnist(
        DIGITS, LABELS, N, seed=5, recipe="bounce_patch", motion=request.param
    )


def test_shapes(data):
    _, d = data
    assert d["frames"].shape == (N, T, 50, 50) and d["frames"].dtype == np.uint8
    assert d["counts"].shape == (N, T) and d["boxes"].shape == (N, T, 2, 4) and d["presence"].shape == (N, T, 2)
    assert d["labels"].shape == (N, 2) and d["positions"].shape == (N, T, 2, 2)


def test_dynamics_position_update_and_reflection(data):
    """p_{t+1} = reflect(p_t + v_t) into [lo, hi]; reflection flips the velocity."""
    motion, d = data
    lo, hi = motion_bounds(motion, 50)
    p, v = d["positions"].astype(np.float64), d["velocities"].astype(np.float64)
    assert (p >= lo - 1e-4).all() and (p <= hi + 1e-4).all()
    proposal = p[:, :-1] + v[:, :-1]
    over, under = proposal > hi, proposal < lo
    expected = np.where(over, 2 * hi - proposal, np.where(under, 2 * lo - proposal, proposal))
    np.testing.assert_allclose(p[:, 1:], expected, atol=1e-4)
    assert over.sum() > 20 and under.sum() > 20  # bounces on both sides do happen
    # Velocity: v_{t+1} = clip(±v_t + a_t, -10, 10), a_t ~ U[-3, 3] fresh every frame.
    sign = np.where(over | under, -1.0, 1.0)
    dv = v[:, 1:] - sign * v[:, :-1]
    assert (np.abs(v) <= 10 + 1e-5).all()
    assert (np.abs(dv) <= 3 + 1e-4).all()
    unclipped = np.abs(v[:, 1:]) < 9.999
    a = dv[unclipped]
    # U[-3, 3]: mean 0, variance 3; standard errors from the sample size.
    assert abs(a.mean()) < 4 * np.sqrt(3 / a.size)
    assert abs(a.var() - 3) < 4 * np.sqrt((81 / 5 - 9) / a.size) + 0.05  # sd of a sample variance
    assert a.min() < -2.9 and a.max() > 2.9


def test_initial_velocity_uniform(data):
    _, d = data
    v0 = d["velocities"][:, 0].ravel()
    assert v0.min() < -9.5 and v0.max() > 9.5 and (np.abs(v0) <= 10).all()
    assert abs(v0.mean()) < 4 * np.sqrt(100 / 3 / v0.size)


def test_boxes_follow_positions_and_velocity_is_recoverable_from_boxes():
    d = make_moving_multi_mnist(DIGITS, LABELS, 300, seed=1, recipe="bounce_patch", motion="bounce")
    # In bounce mode the digit never leaves the frame: box = source tight box + round(position).
    pres = d["presence"]
    np.testing.assert_array_equal(d["boxes"], d["full_boxes"])
    corner = np.round(d["positions"]).astype(int)
    offset = d["boxes"][..., :2] - corner
    # The offset of the box from the patch corner is constant per identity (the digit's own tight box).
    np.testing.assert_array_equal(np.where(pres[..., None], offset - offset[:, :1], 0), 0)
    # Recover the velocity from box positions: Δ(box corner) = v_t within rounding (±1), away from bounces.
    lo, hi = motion_bounds("bounce", 50)
    p, v = d["positions"], d["velocities"]
    no_bounce = ((p[:, :-1] + v[:, :-1]) <= hi) & ((p[:, :-1] + v[:, :-1]) >= lo) & pres[:, 1:, :, None]
    dbox = d["boxes"][:, 1:, :, :2] - d["boxes"][:, :-1, :, :2]
    assert (np.abs(dbox - v[:, :-1])[no_bounce] <= 1.0 + 1e-4).all()


def test_boxes_tight_around_visible_pixels(data):
    _, d = data
    one = d["counts"] == 1
    frames = d["frames"][one]
    boxes = d["boxes"][one].sum(axis=1)  # the absent slot's box is zero
    np.testing.assert_array_equal(boxes, tight_boxes(frames))
    assert (d["boxes"][..., :2] >= 0).all() and (d["boxes"][..., 2:] <= 50).all()


def test_leave_and_return_digits_partly_leave_the_frame():
    d = make_moving_multi_mnist(DIGITS, LABELS, 300, seed=2, recipe="bounce_patch", motion="leave_and_return")
    lo, hi = motion_bounds("leave_and_return", 50)
    assert (lo, hi) == (-14, 36)
    outside = (d["positions"] < 0) | (d["positions"] > 22)
    assert outside.any(axis=-1)[d["presence"]].mean() > 0.1
    # Clipped boxes: some visible parts are cut by the border, and the digit returns inside later.
    touching = (d["boxes"][..., 0] == 0) | (d["boxes"][..., 2] == 50)
    assert (touching & d["presence"]).any()


def test_first_frame_has_no_overlap_and_counts_are_uniform(data):
    _, d = data
    two = d["presence"][:, 0].all(-1)
    assert two.any()
    assert not boxes_overlap(d["boxes"][two, 0, 0], d["boxes"][two, 0, 1]).any()
    observed = np.bincount((d["labels"] >= 0).sum(-1), minlength=3)
    chi2 = ((observed - N / 3) ** 2 / (N / 3)).sum()
    assert chi2 < 13.8, observed
    # Non-hard: identities persist through the sequence.
    assert (d["labels"] >= 0).sum(-1).tolist() == d["presence"].any(1).sum(-1).tolist()


def test_hard_variant_digits_appear_and_disappear():
    d = make_moving_multi_mnist(DIGITS, LABELS, 400, seed=3, recipe="bounce_patch", hard=True)
    pres = d["presence"]
    appears_late = (~pres[:, 0] & pres.any(1)).any()
    disappears_early = (~pres[:, -1] & pres.any(1)).any()
    assert appears_late and disappears_early
    assert set(np.unique(d["counts"])) == {0, 1, 2}
    # Each identity is visible on one contiguous interval.
    changes = np.abs(np.diff(pres.astype(int), axis=1)).sum(1)
    starts_visible = pres[:, 0].astype(int)
    ends_visible = pres[:, -1].astype(int)
    assert (changes + starts_visible + ends_visible <= 2).all()
    # Pixels only from visible identities: frames with count 0 are blank.
    assert (d["frames"][d["counts"] == 0] == 0).all()


def test_deterministic_given_seed():
    a = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, recipe="bounce_patch", hard=True, chunk_size=7)
    b = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, recipe="bounce_patch", hard=True)
    c = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=5, recipe="bounce_patch", hard=True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["frames"], c["frames"])


# ----------------------------------------------------------------------------------------------------------------------
# Arguments and statistics


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(recipe="nope"), "recipe"),
        (dict(motion="bounce"), "motion"),  # motion belongs to recipe="bounce_patch"
        (dict(recipe="bounce_patch", motion="teleport"), "motion"),
        (dict(canvas_size=20), "canvas_size"),
        (dict(num_frames=0), "num_frames"),
        (dict(max_digits=-1), "max_digits"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        make_moving_multi_mnist(DIGITS, LABELS, 2, seed=0, **kw)


def test_official_needs_enough_distinct_digits():
    with pytest.raises(ValueError, match="distinct"):
        make_moving_multi_mnist(DIGITS[:2], LABELS[:2], 2, seed=0, max_digits=3)


def test_overlap_statistics_on_hand_made_boxes():
    n, t = 1, 4
    boxes = np.zeros((n, t, 2, 4), np.float32)
    boxes[0, 0] = [[0, 0, 10, 10], [20, 20, 30, 30]]  # disjoint
    boxes[0, 1] = [[0, 0, 10, 10], [8, 8, 18, 18]]  # overlap 4 px = 4 % of the smaller box
    boxes[0, 2] = [[0, 0, 10, 10], [2, 2, 12, 12]]  # overlap 64 %
    boxes[0, 3, 0] = [40, 40, 50, 50]  # one digit visible (partly outside), the other wholly outside
    full = boxes.copy()
    full[0, 3, 0] = [40, 40, 55, 50]
    full[0, 3, 1] = [50, 10, 60, 20]
    presence = boxes[..., 2] > boxes[..., 0]
    data = dict(
        frames=np.zeros((n, t, 50, 50), np.uint8),
        boxes=boxes,
        full_boxes=full,
        presence=presence,
        counts=presence.sum(-1),
        sequence_counts=np.array([2]),
    )
    s = overlap_statistics(data)
    assert s["num_multi_digit_frames"] == 3 and s["num_digit_frames"] == 8
    assert s["overlap"] == pytest.approx(2 / 3) and s["overlap_large"] == pytest.approx(1 / 3)
    assert s["overlap_of_multi_digit_sequence_frames"] == pytest.approx(2 / 4)
    assert s["partly_outside"] == pytest.approx(1 / 8) and s["wholly_outside"] == pytest.approx(1 / 8)
    assert s["count_below_sequence_count"] == pytest.approx(1 / 4)


def test_overlap_statistics_compare_recipes():
    """The official recipe is much less crowded than bounce_patch, and its digits leave the frame."""
    off = overlap_statistics(make_moving_multi_mnist(DIGITS, LABELS, 300, seed=8))
    old = overlap_statistics(make_moving_multi_mnist(DIGITS, LABELS, 300, seed=8, recipe="bounce_patch"))
    assert off["overlap"] < old["overlap"] - 0.2
    assert off["partly_outside"] > 0.2 and old["partly_outside"] == 0 and old["wholly_outside"] == 0

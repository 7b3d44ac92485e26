"""Moving multi-MNIST: stated dynamics (velocity, acceleration, reflection), boxes, frame-1 overlap, hard variant."""

import numpy as np
import pytest

from ocr_jax.data.moving_mnist import make_moving_multi_mnist, motion_bounds
from ocr_jax.data.multi_mnist import boxes_overlap, tight_boxes
from ocr_jax.data.synthetic import blob_digits

DIGITS, LABELS = blob_digits(100, seed=0)
SRC_BOXES = tight_boxes(DIGITS)
N, T = 600, 10


@pytest.fixture(scope="module", params=["bounce", "leave_and_return"])
def data(request):
    return request.param, make_moving_multi_mnist(DIGITS, LABELS, N, seed=5, motion=request.param)


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
    d = make_moving_multi_mnist(DIGITS, LABELS, 300, seed=1, motion="bounce")
    # In bounce mode the digit never leaves the frame: box = source tight box + round(position).
    pres = d["presence"]
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
    d = make_moving_multi_mnist(DIGITS, LABELS, 300, seed=2, motion="leave_and_return")
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
    d = make_moving_multi_mnist(DIGITS, LABELS, 400, seed=3, hard=True)
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
    a = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, hard=True, chunk_size=7)
    b = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=4, hard=True)
    c = make_moving_multi_mnist(DIGITS, LABELS, 50, seed=5, hard=True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["frames"], c["frames"])


def test_bad_motion_is_rejected():
    with pytest.raises(ValueError, match="motion"):
        make_moving_multi_mnist(DIGITS, LABELS, 2, seed=0, motion="teleport")

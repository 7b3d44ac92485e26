"""Multi-MNIST generator: count distribution, tight boxes, overlap rules, resize filter, determinism."""

import numpy as np
import pytest
from PIL import Image

from ocr_jax.data.canvas import boxes_overlap, resize_matrix, tight_boxes
from ocr_jax.data.multi_mnist import make_multi_mnist
from ocr_jax.data.synthetic import blob_digits

DIGITS, LABELS = blob_digits(200, seed=0)
N = 3000


@pytest.fixture(scope="module", params=["kosiorek", "official", "pyro"])
def data(request):
    return request.param, make_multi_mnist(DIGITS, LABELS, N, seed=7, recipe=request.param)


def test_shapes_and_dtypes(data):
    _, d = data
    assert d["images"].shape == (N, 50, 50) and d["images"].dtype == np.uint8
    assert d["counts"].shape == (N,) and d["counts"].dtype == np.int32
    assert d["labels"].shape == (N, 2) and d["labels"].dtype == np.int32
    assert d["boxes"].shape == (N, 2, 4) and d["boxes"].dtype == np.float32
    assert d["presence"].shape == (N, 2) and d["presence"].dtype == bool


def test_counts_uniform_chi_square(data):
    _, d = data
    observed = np.bincount(d["counts"], minlength=3)
    expected = N / 3
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 13.8, observed  # chi-square, 2 dof, p = 0.001


def test_presence_labels_and_absent_boxes(data):
    _, d = data
    np.testing.assert_array_equal(d["presence"], np.arange(2)[None] < d["counts"][:, None])
    assert (d["labels"][~d["presence"]] == -1).all()
    assert set(np.unique(d["labels"][d["presence"]])) <= set(LABELS.tolist())
    assert (d["boxes"][~d["presence"]] == 0).all()
    assert (d["images"][d["counts"] == 0] == 0).all()


def test_single_digit_box_is_tight_around_the_image(data):
    _, d = data
    one = d["counts"] == 1
    np.testing.assert_array_equal(d["boxes"][one, 0], tight_boxes(d["images"][one]))


def test_boxes_enclose_all_pixels_and_are_tight(data):
    recipe, d = data
    for i in np.nonzero(d["counts"] == 2)[0][:300]:
        inside = np.zeros((50, 50), bool)
        for y0, x0, y1, x1 in d["boxes"][i].astype(int):
            inside[y0:y1, x0:x1] = True
            block = d["images"][i, y0:y1, x0:x1]
            # Tight: every edge row/column of the box holds a nonzero pixel.
            assert block[0].any() and block[-1].any() and block[:, 0].any() and block[:, -1].any()
        assert not (d["images"][i][~inside]).any()
        if recipe in ("kosiorek", "official"):  # disjoint boxes: each box's own tight box is the digit's box
            for j, (y0, x0, y1, x1) in enumerate(d["boxes"][i].astype(int)):
                mask = np.zeros((50, 50), np.uint8)
                mask[y0:y1, x0:x1] = d["images"][i, y0:y1, x0:x1]
                np.testing.assert_array_equal(tight_boxes(mask), d["boxes"][i, j])


def test_kosiorek_no_box_overlap_and_unscaled_digits():
    d = make_multi_mnist(DIGITS, LABELS, N, seed=3, recipe="kosiorek")
    two = d["counts"] == 2
    assert not boxes_overlap(d["boxes"][two, 0], d["boxes"][two, 1]).any()
    # Unscaled: box sizes are exactly the source blobs' sizes.
    src = tight_boxes(DIGITS)
    src_sizes = {(int(b[2] - b[0]), int(b[3] - b[1])) for b in src}
    sizes = d["boxes"][d["presence"]]
    assert {(int(b[2] - b[0]), int(b[3] - b[1])) for b in sizes} <= src_sizes


def test_official_is_frame_one_of_the_official_sequences_and_reaches_the_edges():
    """recipe="official" is the published create_mnist: frame 1 of moving_mnist's official recipe, byte-scaled
    tight templates (every digit's brightest pixel 255), boxes not overlapping, placed so that the tight box — not a
    28×28 patch — stays inside: digits touch the canvas edges, which "kosiorek" never lets them."""
    from ocr_jax.data.moving_mnist import make_moving_multi_mnist

    d = make_multi_mnist(DIGITS, LABELS, N, seed=5, recipe="official")
    seqs = make_moving_multi_mnist(DIGITS, LABELS, N, seed=5, num_frames=1)
    np.testing.assert_array_equal(d["images"], seqs["frames"][:, 0])
    np.testing.assert_array_equal(d["boxes"], seqs["boxes"][:, 0])
    np.testing.assert_array_equal(d["labels"], seqs["labels"])
    two = d["counts"] == 2
    assert not boxes_overlap(d["boxes"][two, 0], d["boxes"][two, 1]).any()
    one = d["counts"] == 1
    assert (d["images"][one].reshape(one.sum(), -1).max(1) == 255).all()
    b, present = d["boxes"], d["presence"]
    edge_gap = np.minimum.reduce([b[..., 0], b[..., 1], 50 - b[..., 2], 50 - b[..., 3]])[present]
    kosiorek = make_multi_mnist(DIGITS, LABELS, N, seed=5, recipe="kosiorek")
    kb = kosiorek["boxes"][kosiorek["presence"]]
    kosiorek_gap = np.minimum.reduce([kb[:, 0], kb[:, 1], 50 - kb[:, 2], 50 - kb[:, 3]])
    assert edge_gap.min() == 0 and (edge_gap == 0).mean() > 0.02
    assert (edge_gap < 2).mean() > 2 * (kosiorek_gap < 2).mean()  # blob digits: 0.17 against 0.05


def test_pyro_digits_are_scaled_and_may_overlap():
    d = make_multi_mnist(DIGITS, LABELS, N, seed=3, recipe="pyro")
    two = d["counts"] == 2
    assert boxes_overlap(d["boxes"][two, 0], d["boxes"][two, 1]).any()
    # Box extents shrink by 1/s ≈ 1/1.3 relative to the source blobs (resizing can add a 1-px antialiasing rim).
    src = tight_boxes(DIGITS)
    src_extent = (src[:, 2:] - src[:, :2]).mean()
    extent = (d["boxes"][d["presence"]][:, 2:] - d["boxes"][d["presence"]][:, :2]).mean()
    assert 0.7 < extent / src_extent < 0.86, extent / src_extent


def test_resize_matrix_matches_pil_bilinear():
    for size in (18, 21, 24, 30):
        m = resize_matrix(28, size)
        ours = np.round(m @ DIGITS[:20].astype(float) @ m.T)
        pil = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR)) for x in DIGITS[:20]])
        assert np.abs(ours - pil).max() <= 1


def test_deterministic_given_seed():
    a = make_multi_mnist(DIGITS, LABELS, 200, seed=11, recipe="pyro")
    b = make_multi_mnist(DIGITS, LABELS, 200, seed=11, recipe="pyro")
    c = make_multi_mnist(DIGITS, LABELS, 200, seed=12, recipe="pyro")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["images"], c["images"])


def test_max_digits_and_canvas_size_options():
    d = make_multi_mnist(DIGITS, LABELS, 600, seed=0, canvas_size=64, max_digits=3)
    assert d["images"].shape == (600, 64, 64) and d["boxes"].shape == (600, 3, 4)
    assert set(np.unique(d["counts"])) == {0, 1, 2, 3}
    assert (d["boxes"][..., 2:] <= 64).all()


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        make_multi_mnist(DIGITS.astype(np.float32), LABELS, 4, seed=0)
    with pytest.raises(ValueError, match="recipe"):
        make_multi_mnist(DIGITS, LABELS, 4, seed=0, recipe="nope")
    with pytest.raises(ValueError, match=r"\[n, h, h\]"):
        make_multi_mnist(DIGITS[0], LABELS, 4, seed=0)

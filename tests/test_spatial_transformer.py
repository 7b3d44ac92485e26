"""Tests for ocr_jax.spatial_transformer: values, inverses, zeros outside, gradients, batching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import spatial_transformer as st


def _window_z_where(r0, c0, h, w, H, W):
    """z_where (s_x, s_y, t_x, t_y) of the integer-aligned window rows r0..r0+h-1, cols c0..c0+w-1."""
    return np.array([w / W, h / H, (2 * c0 + w) / W - 1.0, (2 * r0 + h) / H - 1.0], np.float32)


def test_integer_aligned_extraction_equals_slicing():
    rng = np.random.default_rng(0)
    H, W = 12, 10
    image = rng.random((H, W), dtype=np.float32)
    for r0, c0, h, w in [(0, 0, H, W), (2, 3, 5, 4), (7, 0, 5, 10), (1, 6, 3, 4)]:
        z = _window_z_where(r0, c0, h, w, H, W)
        g = st.extract_glimpse(image, z, (h, w))
        np.testing.assert_allclose(g, image[r0 : r0 + h, c0 : c0 + w], atol=1e-5)


def test_isotropic_z_where_equals_anisotropic():
    rng = np.random.default_rng(1)
    image = rng.random((9, 9), dtype=np.float32)
    z3 = jnp.array([0.4, 0.1, -0.2])
    z4 = jnp.array([0.4, 0.4, 0.1, -0.2])
    np.testing.assert_allclose(st.extract_glimpse(image, z3, (5, 5)), st.extract_glimpse(image, z4, (5, 5)), atol=1e-6)
    g = rng.random((5, 5), dtype=np.float32)
    np.testing.assert_allclose(st.paste_glimpse(g, z3, (9, 9)), st.paste_glimpse(g, z4, (9, 9)), atol=1e-6)


def test_paste_of_extract_reproduces_in_frame_window():
    rng = np.random.default_rng(2)
    H, W = 11, 13
    image = rng.random((H, W), dtype=np.float32)
    r0, c0, h, w = 3, 4, 6, 5
    z = _window_z_where(r0, c0, h, w, H, W)
    canvas = st.paste_glimpse(st.extract_glimpse(image, z, (h, w)), z, (H, W))
    expected = np.zeros_like(image)
    expected[r0 : r0 + h, c0 : c0 + w] = image[r0 : r0 + h, c0 : c0 + w]
    np.testing.assert_allclose(canvas, expected, atol=1e-5)


def test_paste_is_zero_outside_glimpse_and_known_at_half_scale():
    # A 2x2 glimpse of ones pasted with s = 0.5 into a 4x4 canvas centred covers exactly the central 2x2 pixels.
    canvas = st.paste_glimpse(jnp.ones((2, 2)), jnp.array([0.5, 0.0, 0.0]), (4, 4))
    expected = np.zeros((4, 4), np.float32)
    expected[1:3, 1:3] = 1.0
    np.testing.assert_allclose(canvas, expected, atol=1e-6)


def test_out_of_frame_reads_zeros():
    image = jnp.ones((8, 8))
    # Entirely outside: shifted by more than 1 + s.
    g = st.extract_glimpse(image, jnp.array([0.25, 2.0, 0.0]), (4, 4))
    np.testing.assert_array_equal(g, 0.0)
    # Half outside to the right: columns whose centres map beyond the right edge + half a pixel read 0, inside read 1.
    H = W = 8
    z = _window_z_where(2, 6, 4, 4, H, W)  # window columns 6..9, of which 8 and 9 are outside
    g = np.asarray(st.extract_glimpse(image, z, (4, 4)))
    np.testing.assert_allclose(g[:, :2], 1.0, atol=1e-6)
    np.testing.assert_allclose(g[:, 2:], 0.0, atol=1e-6)
    # Sampling half a pixel beyond the edge interpolates with the zero padding: 0.5.
    z_half = np.array([1.0, 1.0, 1.0 / W, 0.0], np.float32)  # shift right by half a pixel
    g = np.asarray(st.extract_glimpse(image, z_half, (H, W)))
    np.testing.assert_allclose(g[:, -1], 0.5, atol=1e-6)
    np.testing.assert_allclose(g[:, :-1], 1.0, atol=1e-6)


def test_bilinear_value_at_fractional_position():
    rng = np.random.default_rng(3)
    image = rng.random((6, 7), dtype=np.float32)
    # A 1x1 glimpse samples the single point (t_x, t_y).
    tx, ty = 0.13, -0.31
    g = st.extract_glimpse(image, jnp.array([0.3, 0.3, tx, ty]), (1, 1))[0, 0]
    px, py = ((tx + 1) * 7 - 1) / 2, ((ty + 1) * 6 - 1) / 2
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    fx, fy = px - x0, py - y0
    ref = (
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x0 + 1] * fx * (1 - fy)
        + image[y0 + 1, x0] * (1 - fx) * fy
        + image[y0 + 1, x0 + 1] * fx * fy
    )
    np.testing.assert_allclose(g, ref, rtol=1e-5)


def test_gradients_match_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        image = jnp.asarray(rng.random((7, 8)))
        glimpse = jnp.asarray(rng.random((4, 5)))
        # Non-aligned z_where (away from the tent kernel's kinks), partly out of frame.
        z = jnp.asarray([0.47, 0.61, 0.23, -0.37])
        probe_g = jnp.asarray(rng.standard_normal((4, 5)))
        probe_c = jnp.asarray(rng.standard_normal((7, 8)))

        def f_ext(img, zw):
            return jnp.sum(st.extract_glimpse(img, zw, (4, 5)) * probe_g)

        def f_paste(gl, zw):
            return jnp.sum(st.paste_glimpse(gl, zw, (7, 8)) * probe_c)

        eps = 1e-6
        for f, x in [(f_ext, image), (f_paste, glimpse)]:
            gx, gz = jax.grad(f, argnums=(0, 1))(x, z)
            # Linear in the image/glimpse: check a few coordinates and a random direction.
            d = jnp.asarray(rng.standard_normal(x.shape))
            fd = (f(x + eps * d, z) - f(x - eps * d, z)) / (2 * eps)
            np.testing.assert_allclose(jnp.sum(gx * d), fd, rtol=1e-6)
            for i in range(4):
                e = jnp.zeros(4).at[i].set(1.0)
                fd = (f(x, z + eps * e) - f(x, z - eps * e)) / (2 * eps)
                np.testing.assert_allclose(gz[i], fd, rtol=1e-5, atol=1e-8)
            assert np.all(np.isfinite(gz)) and np.any(gz != 0)


def test_batching_over_leading_axes_equals_loop_and_broadcasts():
    rng = np.random.default_rng(5)
    B, K, N, H, W, h, w = 2, 3, 2, 9, 10, 4, 3
    images = jnp.asarray(rng.random((B, H, W), dtype=np.float32))
    z = jnp.asarray(
        np.concatenate([rng.uniform(0.2, 0.8, (B, K, N, 1)), rng.uniform(-0.5, 0.5, (B, K, N, 2))], axis=-1).astype(
            np.float32
        )
    )
    g = st.extract_glimpse(images[:, None, None], z, (h, w))  # broadcast image over particles, objects
    assert g.shape == (B, K, N, h, w)
    c = st.paste_glimpse(g, z, (H, W))
    assert c.shape == (B, K, N, H, W)
    for b in range(B):
        for k in range(K):
            for n in range(N):
                np.testing.assert_allclose(g[b, k, n], st.extract_glimpse(images[b], z[b, k, n], (h, w)), atol=1e-6)
                np.testing.assert_allclose(c[b, k, n], st.paste_glimpse(g[b, k, n], z[b, k, n], (H, W)), atol=1e-6)
    # jit + vmap agree with the broadcast call.
    g_vmap = jax.jit(
        jax.vmap(jax.vmap(jax.vmap(lambda zz, im: st.extract_glimpse(im, zz, (h, w)), (0, None)), (0, None)))
    )(z, images)
    np.testing.assert_allclose(g_vmap, g, atol=1e-6)


def test_composite_equals_the_weighted_sum_of_pasted_glimpses_in_value_and_gradient():
    rng = np.random.default_rng(7)
    B, K, N, H, W, h, w = 2, 3, 4, 11, 13, 5, 4
    g = jnp.asarray(rng.random((B, K, N, h, w), dtype=np.float32))
    z = jnp.asarray(
        np.concatenate([rng.uniform(0.2, 0.9, (B, K, N, 2)), rng.uniform(-1.2, 1.2, (B, K, N, 2))], -1), jnp.float32
    )
    weights = jnp.asarray(rng.random((B, K, N)) * (rng.random((B, K, N)) > 0.3), jnp.float32)

    def summed(g, z, weights):
        return jnp.sum(weights[..., None, None] * st.paste_glimpse(g, z, (H, W)), axis=-3)

    canvas = st.composite_glimpses(g, z, weights, (H, W))
    assert canvas.shape == (B, K, H, W)
    np.testing.assert_allclose(canvas, summed(g, z, weights), rtol=1e-5, atol=1e-6)
    # An object of weight 0 adds exactly zero: only the weighted objects' pastes remain.
    one = jnp.zeros((B, K, N)).at[..., 1].set(1.0)
    np.testing.assert_array_equal(
        st.composite_glimpses(g, z, one, (H, W)),
        st.composite_glimpses(g[..., 1:2, :, :], z[..., 1:2, :], one[..., 1:2], (H, W)),
    )
    # Gradients in every input, through a nonlinear function of the canvas.
    target = jnp.asarray(rng.random((B, K, H, W)), jnp.float32)
    grads = jax.grad(lambda *a: jnp.sum(jnp.sin(st.composite_glimpses(*a, (H, W)) - target)), (0, 1, 2))(g, z, weights)
    expected = jax.grad(lambda *a: jnp.sum(jnp.sin(summed(*a) - target)), (0, 1, 2))(g, z, weights)
    for a, e in zip(grads, expected):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
    # Leading axes broadcast: one set of glimpses shared by every particle.
    shared = st.composite_glimpses(g[:, :1], z, weights, (H, W))
    np.testing.assert_allclose(shared, summed(g[:, :1], z, weights), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="objects"):
        st.composite_glimpses(g, z[..., :2, :], weights, (H, W))
    with pytest.raises(ValueError, match="objects"):
        st.composite_glimpses(g, z, weights[..., :2], (H, W))


def test_box_roundtrip():
    rng = np.random.default_rng(6)
    H, W = 50, 40
    y0 = rng.uniform(-5, 30, (3, 2))
    x0 = rng.uniform(-5, 30, (3, 2))
    box = np.stack([y0, x0, y0 + rng.uniform(1, 20, (3, 2)), x0 + rng.uniform(1, 20, (3, 2))], -1).astype(np.float32)
    z = st.box_to_z_where(box, (H, W))
    np.testing.assert_allclose(st.z_where_to_box(z, (H, W)), box, atol=1e-4)
    z3 = jnp.array([0.3, 0.1, -0.2])
    np.testing.assert_allclose(st.box_to_z_where(st.z_where_to_box(z3, (H, H)), (H, H), num_params=3), z3, atol=1e-6)
    # Whole canvas.
    np.testing.assert_allclose(st.z_where_to_box(jnp.array([1.0, 0.0, 0.0]), (H, W)), [0, 0, H, W], atol=1e-5)
    # The box of an aligned window is its pixel edges.
    np.testing.assert_allclose(st.z_where_to_box(_window_z_where(3, 4, 6, 5, H, W), (H, W)), [3, 4, 9, 9], atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    img = jnp.ones((8, 8))
    z = jnp.array([0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="rank >= 2"):
        st.extract_glimpse(jnp.ones(8), z, (4, 4))
    with pytest.raises(ValueError, match="floating"):
        st.extract_glimpse(jnp.ones((8, 8), jnp.uint8), z, (4, 4))
    with pytest.raises(ValueError, match="floating"):
        st.extract_glimpse(np.ones((8, 8), np.int32), z, (4, 4))
    with pytest.raises(ValueError, match="last axis of size 3"):
        st.extract_glimpse(img, jnp.ones(5), (4, 4))
    with pytest.raises(ValueError, match="last axis of size 3"):
        st.paste_glimpse(img, jnp.ones((2, 2)), (4, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        st.extract_glimpse(jnp.ones((3, 8, 8)), jnp.full((2, 3), 0.5), (4, 4))
    with pytest.raises(ValueError, match="> 0"):
        st.extract_glimpse(img, jnp.array([0.0, 0.0, 0.0]), (4, 4))
    with pytest.raises(ValueError, match="> 0"):
        st.paste_glimpse(img, jnp.array([0.5, -0.1, 0.0, 0.0]), (4, 4))
    with pytest.raises(ValueError, match="positive ints"):
        st.extract_glimpse(img, z, (4, 0))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        st.box_to_z_where(jnp.ones(3), (8, 8))
    # Under jit the scale is a tracer and is not checked (documented): no error, finite extraction.
    out = jax.jit(lambda zz: st.extract_glimpse(img, zz, (4, 4)))(jnp.array([-0.5, 0.0, 0.0]))
    assert np.all(np.isfinite(out))

"""Differentiable spatial transformer for axis-aligned glimpses (AIR, SQAIR).

Coordinate convention (docs/DESIGN.md). Normalised coordinates run over the canvas *edges*: x = -1 is the left edge
of pixel 0 and x = +1 the right edge of pixel W-1, so the centre of pixel j lies at (2j + 1)/W - 1
("align_corners=False"). The same holds for a glimpse of h x w pixels in its own coordinates (u, v) in [-1, 1]^2.

``z_where`` has a last axis of size 3, ``(s, t_x, t_y)``, or 4, ``(s_x, s_y, t_x, t_y)``. A glimpse point (u, v)
maps to the canvas point ``(s_x * u + t_x, s_y * v + t_y)``: a glimpse covering the whole canvas has s = 1, t = 0, and
one half the canvas size has s = 0.5. ``u``/``x`` index width (columns), ``v``/``y`` index height (rows).

* Extraction samples the image bilinearly at the mapped glimpse pixel centres, reading zeros outside the image.
* Pasting samples the glimpse bilinearly at the inverse-mapped canvas pixel centres, reading zeros outside it.

Implementation. Because the sampling grid is axis-aligned, bilinear sampling with zero padding factorises over the
two axes: sampling position p (in continuous pixel-index units) gets the weight ``max(0, 1 - |p - j|)`` from pixel j,
which is exactly the bilinear "tent" kernel, and positions outside the image automatically lose the weight of the
missing (zero) neighbours. Hence ``extract = A_y @ image @ A_x^T`` with interpolation matrices ``A_y [h, H]`` and
``A_x [w, W]`` built from ``z_where``, and similarly for pasting. This is two small matmuls per glimpse (no gather),
fast on CPU and accelerators, and differentiable in the image/glimpse and (almost everywhere) in ``z_where``.

Batching. ``image``/``glimpse`` ``[..., H, W]`` and ``z_where`` ``[..., 3|4]`` may carry any leading axes; they are
broadcast against each other with NumPy rules (right-aligned), so e.g. an image ``[batch, 1, 1, H, W]`` combines with
``z_where [batch, particles, objects, 3]`` without copying the image.

Validation. Shapes and dtypes are checked at trace time (ValueError with the shapes). ``scale > 0`` is checked only
when ``z_where`` is a concrete array (eager calls); under ``jit``/``vmap``/``grad`` it is a tracer and is not checked:
a negative scale then mirrors the glimpse (a valid reflection), and a zero scale makes extraction sample a single
point and makes pasting divide by zero (non-finite canvas).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "extract_glimpse",
    "paste_glimpse",
    "composite_glimpses",
    "z_where_to_box",
    "box_to_z_where",
    "split_z_where",
]


def _check_float(name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype (got {x.dtype} with shape {x.shape}); "
            "convert integer images with e.g. `image.astype(jnp.float32) / 255`."
        )


def _check_hw(name: str, hw: Sequence[int]) -> tuple[int, int]:
    hw = tuple(hw)
    if len(hw) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in hw):
        raise ValueError(f"{name} must be a pair of positive ints (height, width), got {hw!r}")
    return int(hw[0]), int(hw[1])


def split_z_where(z_where: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``z_where [..., 3|4] -> (s_x, s_y, t_x, t_y)``, each ``[...]``."""
    z_where = jnp.asarray(z_where)
    if z_where.ndim < 1 or z_where.shape[-1] not in (3, 4):
        raise ValueError(
            "z_where must have a last axis of size 3 (s, t_x, t_y) or 4 (s_x, s_y, t_x, t_y); "
            f"got shape {z_where.shape}"
        )
    if z_where.shape[-1] == 3:
        s, tx, ty = z_where[..., 0], z_where[..., 1], z_where[..., 2]
        return s, s, tx, ty
    return z_where[..., 0], z_where[..., 1], z_where[..., 2], z_where[..., 3]


def _check_scale_if_concrete(z_where: jax.Array) -> None:
    """Raise on non-positive scales when z_where is concrete (not traced); see module docstring."""
    if isinstance(z_where, jax.core.Tracer):
        return
    n_scales = 1 if z_where.shape[-1] == 3 else 2
    scales = np.asarray(z_where[..., :n_scales])
    if scales.size and not np.all(scales > 0):
        raise ValueError(
            f"z_where scales must be > 0; got min scale {scales.min()} in z_where of shape {z_where.shape}"
        )


def _leading_shape(a_name: str, a_lead: tuple, z_lead: tuple) -> tuple:
    try:
        return tuple(np.broadcast_shapes(a_lead, z_lead))
    except ValueError:
        raise ValueError(
            f"leading axes of {a_name} {a_lead} and z_where {z_lead} do not broadcast "
            "(NumPy rules, right-aligned); add singleton axes, e.g. image[:, None] for a particles axis"
        ) from None


def _interp_matrix(positions: jax.Array, size: int, transposed: bool = False) -> jax.Array:
    """Bilinear (tent) weights with zero padding, ``max(0, 1 - |p - j|)``: ``positions [..., n]`` (pixel-index units)
    -> ``[..., n, size]``, or ``[..., size, n]`` when ``transposed`` (built in that layout, so that a product with it
    needs no transpose)."""
    idx = jnp.arange(size, dtype=positions.dtype)
    offsets = positions[..., None, :] - idx[:, None] if transposed else positions[..., :, None] - idx
    return jax.nn.relu(1.0 - jnp.abs(offsets))


def _centres(n: int, dtype) -> jax.Array:
    """Normalised coordinates of the n pixel centres: (2i + 1)/n - 1."""
    return (2.0 * jnp.arange(n, dtype=dtype) + 1.0) / n - 1.0


def _to_index(coord: jax.Array, n: int) -> jax.Array:
    """Normalised coordinate -> continuous pixel index (pixel i has its centre at index i)."""
    return ((coord + 1.0) * n - 1.0) / 2.0


def _paste_positions(z_where, canvas_hw: tuple[int, int], glimpse_hw: tuple[int, int], dtype):
    """Continuous glimpse pixel indices of the canvas pixel centres under the inverse of ``z_where``:
    ``(rows [..., H], cols [..., W])``."""
    (H, W), (h, w) = canvas_hw, glimpse_hw
    sx, sy, tx, ty = split_z_where(z_where)
    rows = _to_index((_centres(H, dtype) - ty[..., None]) / sy[..., None], h)
    cols = _to_index((_centres(W, dtype) - tx[..., None]) / sx[..., None], w)
    return rows, cols


def _prepare(name: str, array, z_where, shape_name: str, out_hw):
    array = jnp.asarray(array)
    z_where = jnp.asarray(z_where)
    if array.ndim < 2:
        raise ValueError(f"{name} must have shape [..., height, width] (rank >= 2); got shape {array.shape}")
    _check_float(name, array)
    _check_float("z_where", z_where)
    split_z_where(z_where)  # shape check
    out_hw = _check_hw(shape_name, out_hw)
    lead = _leading_shape(name, array.shape[:-2], z_where.shape[:-1])
    _check_scale_if_concrete(z_where)
    dtype = jnp.result_type(array.dtype, z_where.dtype)
    return array.astype(dtype), z_where.astype(dtype), out_hw, lead, dtype


@jax.named_scope("extract_glimpse")
def extract_glimpse(image: jax.Array, z_where: jax.Array, glimpse_shape: Sequence[int]) -> jax.Array:
    """Bilinearly sample an ``h x w`` glimpse from ``image`` at ``z_where`` (zeros outside the image).

    Args:
      image: ``[..., H, W]`` floating.
      z_where: ``[..., 3|4]``; leading axes broadcast with the image's.
      glimpse_shape: ``(h, w)``.

    Returns:
      ``[..., h, w]`` with the broadcast leading axes.
    """
    image, z_where, (h, w), lead, dtype = _prepare("image", image, z_where, "glimpse_shape", glimpse_shape)
    H, W = image.shape[-2:]
    sx, sy, tx, ty = split_z_where(z_where)
    # Canvas coordinates of the glimpse pixel centres, then continuous canvas pixel indices.
    ys = _to_index(sy[..., None] * _centres(h, dtype) + ty[..., None], H)  # [..., h]
    xs = _to_index(sx[..., None] * _centres(w, dtype) + tx[..., None], W)  # [..., w]
    a_y = _interp_matrix(ys, H)  # [..., h, H]
    a_x_t = _interp_matrix(xs, W, True)  # [..., W, w]
    out = jnp.matmul(jnp.matmul(a_y, image), a_x_t)
    return jnp.broadcast_to(out, lead + (h, w))


@jax.named_scope("paste_glimpse")
def paste_glimpse(glimpse: jax.Array, z_where: jax.Array, canvas_shape: Sequence[int]) -> jax.Array:
    """Paste ``glimpse`` into an ``H x W`` canvas with the inverse transform of ``z_where`` (zeros outside it).

    Each canvas pixel centre (x, y) is mapped to glimpse coordinates ``((x - t_x)/s_x, (y - t_y)/s_y)`` and the
    glimpse is sampled there bilinearly. For a glimpse whose resolution equals that of the canvas window it covers,
    ``paste_glimpse(extract_glimpse(image, z, (h, w)), z, (H, W))`` reproduces the window (and zeros elsewhere).

    Args:
      glimpse: ``[..., h, w]`` floating.
      z_where: ``[..., 3|4]``; leading axes broadcast with the glimpse's.
      canvas_shape: ``(H, W)``.

    Returns:
      ``[..., H, W]`` with the broadcast leading axes.
    """
    glimpse, z_where, (H, W), lead, dtype = _prepare("glimpse", glimpse, z_where, "canvas_shape", canvas_shape)
    h, w = glimpse.shape[-2:]
    vs, us = _paste_positions(z_where, (H, W), (h, w), dtype)  # [..., H], [..., W]
    b_y = _interp_matrix(vs, h)  # [..., H, h]
    b_x_t = _interp_matrix(us, w, True)  # [..., w, W]
    out = jnp.matmul(jnp.matmul(b_y, glimpse), b_x_t)
    return jnp.broadcast_to(out, lead + (H, W))


@jax.named_scope("composite_glimpses")
def composite_glimpses(
    glimpses: jax.Array, z_where: jax.Array, weights: jax.Array, canvas_shape: Sequence[int]
) -> jax.Array:
    """The weighted sum of pasted glimpses, ``Σ_n weights_n · paste_glimpse(glimpses_n, z_where_n)`` (AIR's and
    SQAIR's canvas, Algorithm 1 of the thesis), computed without the ``N`` pasted canvases.

    Pasting glimpse n is ``B_y^n G^n (B_x^n)^T`` (module docstring), so the sum over objects is one contraction over
    the object and glimpse-row axes together: ``Σ_n B_y^n ((w_n G^n) (B_x^n)^T)``. Equal to summing
    :func:`paste_glimpse` up to float rounding, with no ``[..., N, H, W]`` intermediate and no separate reduction
    (on a 2-core CPU the pasted canvases and their sum were ≈ a quarter of AIR's train step).

    Args:
      glimpses: ``[..., N, h, w]`` floating (N objects).
      z_where: ``[..., N, 3|4]``.
      weights: ``[..., N]``, e.g. the presences z_pres; an object of weight 0 adds exactly zero (finite glimpses).
      canvas_shape: ``(H, W)``.

    Returns:
      ``[..., H, W]`` with the leading axes of the three inputs broadcast.
    """
    shapes = [jnp.shape(glimpses), jnp.shape(z_where), jnp.shape(weights)]
    if (
        len(shapes[0]) < 3
        or len(shapes[1]) < 2
        or len(shapes[2]) < 1
        or len({s[i] for s, i in zip(shapes, (-3, -2, -1))}) != 1
    ):
        raise ValueError(
            f"glimpses {shapes[0]}, z_where {shapes[1]} and weights {shapes[2]} must share the objects axis N "
            "(glimpses [..., N, h, w], z_where [..., N, 3|4], weights [..., N])"
        )
    glimpses, z_where, (H, W), _, dtype = _prepare("glimpses", glimpses, z_where, "canvas_shape", canvas_shape)
    weights = jnp.asarray(weights, dtype)
    num = glimpses.shape[-3]
    lead = _leading_shape("glimpses", glimpses.shape[:-3], z_where.shape[:-2])
    lead = _leading_shape("weights", weights.shape[:-1], lead)
    h, w = glimpses.shape[-2:]
    vs, us = _paste_positions(z_where, (H, W), (h, w), dtype)  # [..., N, H], [..., N, W]
    # Canvas row y, object n, glimpse row i; rows of all objects side by side, so the sum over objects is one
    # product over (n, i): Σ_{n,i} B_y[y, (n, i)] C[(n, i), x] with C^n = (w_n G^n) (B_x^n)^T.
    b_y = _interp_matrix(jnp.swapaxes(vs, -1, -2), h)  # [..., H, N, h]
    b_x_t = _interp_matrix(us, w, True)  # [..., N, w, W]
    cols = jnp.matmul(glimpses * weights[..., None, None], b_x_t)  # [..., N, h, W]
    b_y = jnp.broadcast_to(b_y, lead + (H, num, h)).reshape(lead + (H, num * h))
    cols = jnp.broadcast_to(cols, lead + (num, h, W)).reshape(lead + (num * h, W))
    return jnp.matmul(b_y, cols)


def z_where_to_box(z_where: jax.Array, canvas_shape: Sequence[int]) -> jax.Array:
    """Glimpse extent in canvas pixel units: ``[..., 4] = (y_min, x_min, y_max, x_max)`` (pixel *edges*).

    The glimpse square u, v in [-1, 1] maps to x in [t_x - s_x, t_x + s_x]; the edge at normalised x lies at pixel
    coordinate (x + 1) * W / 2.
    """
    H, W = _check_hw("canvas_shape", canvas_shape)
    z_where = jnp.asarray(z_where)
    _check_float("z_where", z_where)
    sx, sy, tx, ty = split_z_where(z_where)
    y_min = (ty - sy + 1.0) * H / 2.0
    y_max = (ty + sy + 1.0) * H / 2.0
    x_min = (tx - sx + 1.0) * W / 2.0
    x_max = (tx + sx + 1.0) * W / 2.0
    return jnp.stack([y_min, x_min, y_max, x_max], axis=-1)


def box_to_z_where(box: jax.Array, canvas_shape: Sequence[int], num_params: int = 4) -> jax.Array:
    """Inverse of :func:`z_where_to_box`: ``box [..., 4] = (y_min, x_min, y_max, x_max)`` -> ``z_where``.

    With ``num_params=4`` returns ``(s_x, s_y, t_x, t_y)`` (exact inverse). With ``num_params=3`` returns
    ``(s, t_x, t_y)`` with ``s = max(s_x, s_y)``: the smallest isotropic glimpse centred on the box that encloses it
    (exact inverse when s_x == s_y, e.g. square boxes on a square canvas).
    """
    H, W = _check_hw("canvas_shape", canvas_shape)
    box = jnp.asarray(box)
    if box.ndim < 1 or box.shape[-1] != 4:
        raise ValueError(f"box must have shape [..., 4] = (y_min, x_min, y_max, x_max); got {box.shape}")
    if num_params not in (3, 4):
        raise ValueError(f"num_params must be 3 or 4, got {num_params}")
    box = box.astype(jnp.result_type(box.dtype, jnp.float32))
    y_min, x_min, y_max, x_max = (box[..., i] for i in range(4))
    sy = (y_max - y_min) / H
    sx = (x_max - x_min) / W
    ty = (y_min + y_max) / H - 1.0
    tx = (x_min + x_max) / W - 1.0
    if num_params == 4:
        return jnp.stack([sx, sy, tx, ty], axis=-1)
    return jnp.stack([jnp.maximum(sx, sy), tx, ty], axis=-1)

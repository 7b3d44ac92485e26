"""Multi-MNIST for AIR: 0..max_digits MNIST digits on a 50×50 canvas, with counts, labels and tight boxes.

Three recipes (see docs/datasets.md; report which one a number was measured on):

* ``"kosiorek"``: each digit is an unscaled 28×28 MNIST image placed at a uniform integer position with the whole
  28×28 patch inside the canvas. The *tight* boxes around the digits' nonzero pixels must not overlap (rejection
  sampling: positions are resampled for the offending image; every 10th rejection round the digits are resampled
  too, so that a pair that cannot fit side by side does not loop forever). Two 28×28 patches cannot be disjoint on a
  50×50 canvas, so "no overlap" is about the digits, not their padded patches.
* ``"official"``: the SQAIR authors' published code for static multi-MNIST, akosiorek/sqair
  ``sqair/data/data.py:create_mnist`` with ``obj_size = (28, 28)`` (no rescaling) — exactly frame 1 of
  ``moving_mnist``'s ``"official"`` recipe: each digit byte-scaled by its own maximum and cropped to its nonzero rows
  and columns (a *template*), its top-left corner ``round(U[0, 1) · (50 − size))``, so the *tight* box may touch any
  edge of the canvas; distinct digits per image; tight boxes not overlapping (a shared budget of 5 tries, then the
  whole image is redrawn). Unlike ``"kosiorek"``, which keeps the whole 28×28 patch inside and so the digits ≥ 2–6 px
  from the edges, a third of its images have a digit within 3 px of an edge — data that a model trained on
  ``"kosiorek"`` counts worse (docs/results.md, 2026-12-08).
* ``"pyro"`` (the "observations" recipe of Pyro's AIR example): each digit is resized to ``int(28 / s)`` pixels,
  ``s ~ N(1.3, 0.1)`` (≈21 px), with antialiased bilinear interpolation (PIL's BILINEAR filter, written as a matrix
  product so it runs batched), placed at a uniform integer position fully inside the canvas; digits may overlap, but
  an image whose summed pixels exceed 255 anywhere is rejected and redrawn entirely (digits, scales and positions),
  as Pyro does.

In every recipe the number of digits is uniform over ``0..max_digits``; ``"kosiorek"`` and ``"pyro"`` draw digits
uniformly with replacement from the given MNIST split. Slots ``0..count-1`` hold the present digits. Everything is
vectorised over images; all randomness comes from ``np.random.default_rng(seed)``, so the output is a deterministic
function of the arguments.
"""

from __future__ import annotations

import numpy as np

from ocr_jax.data.canvas import any_pair_overlaps, check_digits, paste_patches, resize_digits, tight_boxes

RECIPES = ("kosiorek", "official", "pyro")


# ----------------------------------------------------------------------------------------------------------------------


def make_multi_mnist(
    digits: np.ndarray,
    labels: np.ndarray,
    num_images: int,
    *,
    seed: int,
    canvas_size: int = 50,
    max_digits: int = 2,
    recipe: str = "kosiorek",
    scale_mean: float = 1.3,
    scale_std: float = 0.1,
) -> dict[str, np.ndarray]:
    """Generates multi-MNIST images.

    Args:
      digits: [m, 28, 28] uint8 MNIST images to draw from (with replacement).
      labels: [m] their classes.
      num_images: n.
      seed: all randomness derives from it.
      canvas_size: H = W.
      max_digits: counts are uniform over 0..max_digits.
      recipe: "kosiorek", "official" or "pyro" (module docstring).
      scale_mean, scale_std: the Pyro recipe's digit scale s ~ N(mean, std); size = int(28 / s).

    Returns:
      dict with images [n, H, W] uint8, counts [n] int32, labels [n, max_digits] int32 (-1 absent),
      boxes [n, max_digits, 4] float32 (y_min, x_min, y_max, x_max, pixel edges, tight around the digit's nonzero
      pixels; zero when absent), presence [n, max_digits] bool.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if recipe == "official":
        return _official_images(digits, labels, num_images, seed=seed, canvas_size=canvas_size, max_digits=max_digits)
    digits, labels = check_digits(digits, labels)
    m, h, _ = digits.shape
    if canvas_size < h and recipe == "kosiorek":
        raise ValueError(f"canvas_size {canvas_size} is smaller than the {h}×{h} digits")
    n, k = int(num_images), int(max_digits)
    rng = np.random.default_rng(seed)

    counts = rng.integers(0, k + 1, size=n).astype(np.int32)
    presence = np.arange(k)[None, :] < counts[:, None]
    idx = rng.integers(0, m, size=(n, k))

    if recipe == "kosiorek":
        digit_boxes = tight_boxes(digits)  # [m, 4] in digit coordinates
        span = canvas_size - h + 1
        tops = rng.integers(0, span, size=(n, k))
        lefts = rng.integers(0, span, size=(n, k))

        def boxes_of(rows):
            off = np.stack([tops[rows], lefts[rows], tops[rows], lefts[rows]], axis=-1)
            return digit_boxes[idx[rows]] + off

        todo = np.nonzero(any_pair_overlaps(boxes_of(slice(None)), presence))[0]
        rounds = 0
        while todo.size:
            rounds += 1
            if rounds % 10 == 0:
                idx[todo] = rng.integers(0, m, size=(todo.size, k))
            tops[todo] = rng.integers(0, span, size=(todo.size, k))
            lefts[todo] = rng.integers(0, span, size=(todo.size, k))
            todo = todo[any_pair_overlaps(boxes_of(todo), presence[todo])]
        patch = h
        patches = digits[idx]  # [n, k, h, h]
        boxes = boxes_of(slice(None))
    else:

        def draw(rows):
            r = rows.size
            scale = rng.normal(scale_mean, scale_std, size=(r, k))
            sizes = np.clip((h / np.maximum(scale, 1e-3)).astype(np.int64), 1, canvas_size)
            t = rng.integers(0, canvas_size - sizes + 1)
            l_ = rng.integers(0, canvas_size - sizes + 1)
            return sizes, t, l_

        sizes, tops, lefts = draw(np.arange(n))
        patch = int(sizes.max())
        patches = resize_digits(digits[idx.reshape(-1)], sizes.reshape(-1), patch).reshape(n, k, patch, patch)

        def exceeds(rows):
            canvas = _compose(patches[rows], tops[rows], lefts[rows], presence[rows], canvas_size)
            return canvas.reshape(rows.size, -1).max(axis=1) > 255

        todo = np.arange(n)
        todo = todo[exceeds(todo)]
        while todo.size:
            idx[todo] = rng.integers(0, m, size=(todo.size, k))
            new_sizes, tops[todo], lefts[todo] = draw(todo)
            if new_sizes.max() > patch:  # grow the patch array (rare: a scale below 28 / patch)
                grown = np.zeros((n, k, int(new_sizes.max()), int(new_sizes.max())), np.uint8)
                grown[:, :, :patch, :patch] = patches
                patches, patch = grown, int(new_sizes.max())
            sizes[todo] = new_sizes
            patches[todo] = resize_digits(digits[idx[todo].reshape(-1)], new_sizes.reshape(-1), patch).reshape(
                todo.size, k, patch, patch
            )
            todo = todo[exceeds(todo)]
        off = np.stack([tops, lefts, tops, lefts], axis=-1)
        boxes = tight_boxes(patches) + off

    images = np.minimum(_compose(patches, tops, lefts, presence, canvas_size), 255).astype(np.uint8)
    nonempty = (boxes[..., 2] > boxes[..., 0]) & presence
    return {
        "images": images,
        "counts": counts,
        "labels": np.where(presence, labels[idx], -1).astype(np.int32),
        "boxes": np.where(nonempty[..., None], boxes, 0).astype(np.float32),
        "presence": presence,
    }


def _official_images(digits, labels, num_images, *, seed, canvas_size, max_digits) -> dict[str, np.ndarray]:
    """Recipe ``"official"``: frame 1 of ``moving_mnist.make_moving_multi_mnist(recipe="official")``, which is the
    official ``create_mnist`` (module docstring); the same keys as :func:`make_multi_mnist`."""
    from ocr_jax.data.moving_mnist import make_moving_multi_mnist  # a heavy module: only for this recipe

    seqs = make_moving_multi_mnist(
        digits, labels, num_images, seed=seed, num_frames=1, canvas_size=canvas_size, max_digits=max_digits
    )
    return {
        "images": seqs["frames"][:, 0],
        "counts": seqs["counts"][:, 0],
        "labels": seqs["labels"],
        "boxes": seqs["boxes"][:, 0],
        "presence": seqs["presence"][:, 0],
    }


def _compose(patches, tops, lefts, presence, canvas_size):
    """Sums the present patches [n, k, P, P] at (tops, lefts) [n, k] into uint16 canvases [n, H, W]."""
    n, k, p, _ = patches.shape
    pad = p
    canvas = np.zeros((n, canvas_size + 2 * pad, canvas_size + 2 * pad), np.uint16)
    for j in range(k):
        paste_patches(canvas, patches[:, j] * presence[:, j, None, None], tops[:, j], lefts[:, j], pad)
    return canvas[:, pad : pad + canvas_size, pad : pad + canvas_size]

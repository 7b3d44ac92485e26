"""Batch iterator: process shards are disjoint and union to the global batch; determinism per seed and epoch."""

import numpy as np
import pytest

from ocr_jax.data.iterators import batch_iterator, images_to_float


def _arrays(n=103):
    return {"x": np.arange(n), "y": np.arange(n) * 10, "img": np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)}


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_shards_disjoint_and_union_is_the_global_batch(process_count):
    arrays = _arrays()
    glob = list(batch_iterator(arrays, 16, seed=3, epochs=2))
    shards = [list(batch_iterator(arrays, 16, seed=3, epochs=2, process_index=p, process_count=process_count))
              for p in range(process_count)]
    assert len(glob) == 2 * (103 // 16)
    for b, g in enumerate(glob):
        parts = [s[b]["x"] for s in shards]
        assert all(len(p) == 16 // process_count for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), g["x"])  # in order: process p holds slice p
        assert len(set(np.concatenate(parts).tolist())) == 16
        for s in shards:
            np.testing.assert_array_equal(s[b]["y"], s[b]["x"] * 10)  # rows stay aligned across arrays


def test_epochs_cover_all_examples_once_and_reshuffle():
    arrays = _arrays(64)
    batches = list(batch_iterator(arrays, 16, seed=0, epochs=2))
    e0 = np.concatenate([b["x"] for b in batches[:4]])
    e1 = np.concatenate([b["x"] for b in batches[4:]])
    assert sorted(e0) == list(range(64)) and sorted(e1) == list(range(64))
    assert not np.array_equal(e0, e1)


def test_deterministic_per_seed():
    a = [b["x"] for b in batch_iterator(_arrays(), 8, seed=1, epochs=1)]
    b = [b["x"] for b in batch_iterator(_arrays(), 8, seed=1, epochs=1)]
    c = [b["x"] for b in batch_iterator(_arrays(), 8, seed=2, epochs=1)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))


def test_no_shuffle_remainder_and_forever():
    batches = list(batch_iterator(_arrays(10), 4, seed=0, shuffle=False, epochs=1, drop_remainder=False))
    assert [b["x"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    it = batch_iterator(_arrays(10), 4, seed=0)
    assert len([next(it) for _ in range(50)]) == 50


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of process_count"):
        next(batch_iterator(_arrays(), 10, seed=0, process_count=4))
    with pytest.raises(ValueError, match="different leading sizes"):
        next(batch_iterator({"a": np.zeros(3), "b": np.zeros(4)}, 1, seed=0))
    with pytest.raises(ValueError, match="process_index"):
        next(batch_iterator(_arrays(), 8, seed=0, process_index=2, process_count=2))


def test_images_to_float():
    x = np.array([[0, 51, 255]], np.uint8)
    f = images_to_float(x)
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [[0.0, 0.2, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        images_to_float(f)

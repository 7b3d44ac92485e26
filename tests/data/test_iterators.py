"""Deterministic batches: process shards are disjoint and union to the global batch; each step's batch is a function of
(seed, step), so a resumed run sees the batches of an uninterrupted one. The uint8 -> float conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax.data import deterministic_batches, to_unit_float


def _arrays(n=103):
    return {"x": np.arange(n), "y": np.arange(n) * 10, "img": np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)}


def _take(iterator, num):
    return [next(iterator) for _ in range(num)]


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_shards_disjoint_and_union_is_the_global_batch(process_count):
    arrays = _arrays()
    steps = 2 * (103 // 16)  # two epochs
    glob = _take(deterministic_batches(arrays, 16, seed=3), steps)
    shards = [
        _take(deterministic_batches(arrays, 16, seed=3, process_index=p, process_count=process_count), steps)
        for p in range(process_count)
    ]
    for b, g in enumerate(glob):
        parts = [s[b]["x"] for s in shards]
        assert all(len(p) == 16 // process_count for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), g["x"])  # in order: process p holds slice p
        assert len(set(np.concatenate(parts).tolist())) == 16
        for s in shards:
            np.testing.assert_array_equal(s[b]["y"], s[b]["x"] * 10)  # rows stay aligned across arrays


def test_epochs_cover_all_examples_once_and_reshuffle():
    batches = _take(deterministic_batches(_arrays(70), 16, seed=0), 8)  # 4 steps per epoch, 6 examples dropped
    e0 = np.concatenate([b["x"] for b in batches[:4]])
    e1 = np.concatenate([b["x"] for b in batches[4:]])
    assert len(set(e0.tolist())) == len(set(e1.tolist())) == 64
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e1, np.random.default_rng([0, 1]).permutation(70)[:64])  # epoch e: rng([seed, e])


def test_deterministic_per_seed_and_resumable_at_any_step():
    a = np.stack([b["x"] for b in _take(deterministic_batches(_arrays(), 8, seed=1), 30)])
    b = np.stack([b["x"] for b in _take(deterministic_batches(_arrays(), 8, seed=1), 30)])
    c = np.stack([b["x"] for b in _take(deterministic_batches(_arrays(), 8, seed=2), 30)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for start in (1, 12, 13, 29):  # 12 steps per epoch: within, at and across epoch boundaries
        np.testing.assert_array_equal(
            next(deterministic_batches(_arrays(), 8, seed=1, start_step=start))["x"], a[start]
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        next(deterministic_batches(_arrays(), 10, seed=0, process_count=4))
    with pytest.raises(ValueError, match="different leading sizes"):
        next(deterministic_batches({"a": np.zeros(3), "b": np.zeros(4)}, 1, seed=0))
    with pytest.raises(ValueError, match="process_index"):
        next(deterministic_batches(_arrays(), 8, seed=0, process_index=2, process_count=2))
    with pytest.raises(ValueError, match="smaller than one global batch"):
        next(deterministic_batches(_arrays(10), 16, seed=0))
    with pytest.raises(ValueError, match="empty"):
        next(deterministic_batches({}, 1, seed=0))


def test_to_unit_float_divides_integers_by_255_and_passes_floats_through():
    x = np.array([[0, 51, 255]], np.uint8)
    f = to_unit_float(x)
    assert isinstance(f, jax.Array) and f.dtype == jnp.float32
    # XLA divides by 255 through its reciprocal: within one float32 ulp of numpy's division, exact at 0 and 255.
    np.testing.assert_allclose(f, np.array([[0, 51, 255]], np.float32) / np.float32(255), rtol=1.2e-7, atol=0)
    assert f[0, 0] == 0.0 and f[0, 2] == 1.0
    np.testing.assert_array_equal(to_unit_float(np.array([0.25, 1.0], np.float64)), np.array([0.25, 1.0], np.float32))
    # The same under jit (the tasks' loss), to the same one ulp: XLA may divide eagerly and multiply by the reciprocal
    # under jit, and which it does differs between machines (a CI run saw 0.20000001788 jitted, 0.20000000298 eager).
    np.testing.assert_allclose(jax.jit(to_unit_float)(x), f, rtol=1.2e-7, atol=0)

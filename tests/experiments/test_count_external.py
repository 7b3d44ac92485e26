"""experiments/count_external: the scores against hand-counted values, and the file checks' errors."""

import numpy as np
import pytest

from experiments.count_external import count_scores, load_external


def test_count_scores_by_frame_and_confusion():
    true = np.array([[1, 1, 2], [0, 2, 2]])
    pred = np.array([[1, 2, 2], [0, 1, 0]])
    s = count_scores(true, pred)
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert (s["frame1"], s["later_frames"], s["by_frame"]) == (1.0, 0.25, [1.0, 0.0, 0.5])
    assert (s["too_high"], s["too_low"], s["frames"]) == (1, 2, 6)
    assert s["confusion"] == [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    per_sequence = count_scores(np.array([2, 0])[:, None], pred)  # one label per sequence, broadcast over frames
    assert per_sequence["accuracy"] == pytest.approx(4 / 6) and per_sequence["by_frame"] == [0.5, 0.5, 1.0]
    assert "frame1" not in count_scores(np.array([1, 2]), np.array([1, 1]))  # images: no frames


def _save(tmp_path, **arrays):
    path = str(tmp_path / "d.npz")
    np.savez(path, **arrays)
    return path


def test_load_external_errors_name_what_is_missing_or_wrong(tmp_path):
    frames = np.zeros((2, 3, 50, 50), np.uint8)
    with pytest.raises(ValueError, match=r"needs `frames`; the file has images \(2, 50, 50\)"):
        load_external(_save(tmp_path, images=frames[:, 0], counts=np.zeros(2, int)), "sqair")
    with pytest.raises(ValueError, match="at least one label of"):
        load_external(_save(tmp_path, frames=frames), "sqair")
    with pytest.raises(ValueError, match=r"`counts` has shape \(2,\); .* must be \(2, 3\)"):
        load_external(_save(tmp_path, frames=frames, counts=np.zeros(2, int)), "sqair")
    with pytest.raises(ValueError, match="non-negative integer counts"):
        load_external(_save(tmp_path, frames=frames, sequence_counts=np.array([1.0, 2.0])), "sqair")
    with pytest.raises(ValueError, match="non-negative integer counts"):
        load_external(_save(tmp_path, images=frames[:, 0], counts=np.array([1, -1])), "air")
    data = load_external(_save(tmp_path, frames=frames, sequence_counts=np.array([1, 2]), other=np.ones(3)), "sqair", 1)
    assert sorted(data) == ["frames", "sequence_counts"] and len(data["frames"]) == 1

"""Moving multi-MNIST for SQAIR: sequences of 0..max_digits moving 28×28 MNIST digits on a 50×50 canvas.

Dynamics (per digit identity j, per axis independently; p is the top-left corner of the digit's 28×28 patch in
canvas pixels, a real number; the digit is drawn at round(p)):

* p_0 ~ U[0, H − 28] (the whole patch inside frame 1), v_0 ~ U[−10, 10] px/frame.
* for t = 0 .. T−2:   p̃ = p_t + v_t;   reflect p̃ into [lo, hi] (if p̃ > hi: p̃ ← 2·hi − p̃ and v_t ← −v_t; if p̃ < lo:
  p̃ ← 2·lo − p̃ and v_t ← −v_t);   p_{t+1} = p̃;   v_{t+1} = clip(v_t + a_t, −10, 10) with a *fresh* acceleration
  a_t ~ U[−3, 3] every frame (so velocities wander but stay in the range they started in).
* motion="bounce" (the official SQAIR generator): [lo, hi] = [0, H − 28], the patch bounces inside the frame.
* motion="leave_and_return" (the SQAIR paper's text): [lo, hi] = [−14, H − 14], i.e. the patch *centre* bounces off the
  canvas edges, so up to half of the patch leaves the frame and always comes back.

Frame 1 has no overlap: the tight boxes of all the sequence's digits at t = 0 are disjoint (positions are resampled
for offending sequences; every 10th round the digits too). Later frames may overlap; pixels are summed and clipped to
255. The number of identities is uniform over 0..max_digits (except hard=True, below).

hard=True: all max_digits identities exist, and identity j is visible only on a random interval [start_j, end_j) of
length L_j ~ U{1..T} with start_j ~ U{0..T−L_j}; it moves (invisibly) outside the interval. Per-frame counts therefore
take any value in 0..max_digits (for T = 10, max_digits = 2: 22% / 45% / 33% of the 600k train frames hold
0 / 1 / 2 digits).
The frame-1 no-overlap rule applies to the t = 0 positions of all identities, visible or not, so two digits may
overlap at the frame where one appears.

Per frame: presence[t, j] = identity j exists, is visible at t and has at least one nonzero pixel inside the frame;
boxes[t, j] = tight box around the nonzero pixels of digit j that lie inside the frame (zero when absent);
counts[t] = Σ_j presence[t, j]. Per sequence: labels[j] (−1 for identities that do not exist).
"""

from __future__ import annotations

import numpy as np

from ocr_jax.data.multi_mnist import _check_digits, any_pair_overlaps, paste_patches, tight_boxes

MOTIONS = ("bounce", "leave_and_return")
MAX_SPEED = 10.0
MAX_ACCELERATION = 3.0


def motion_bounds(motion: str, canvas_size: int, digit_size: int = 28) -> tuple[float, float]:
    """[lo, hi] for the patch's top-left coordinate under `motion` (module docstring)."""
    if motion == "bounce":
        return 0.0, float(canvas_size - digit_size)
    if motion == "leave_and_return":
        return -digit_size / 2, canvas_size - digit_size / 2
    raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")


def reflect(p: np.ndarray, v: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Reflects positions p into [lo, hi], flipping the matching velocity components (repeats if needed)."""
    p, v = p.copy(), v.copy()
    while True:
        over, under = p > hi, p < lo
        if not (over.any() or under.any()):
            return p, v
        p = np.where(over, 2 * hi - p, np.where(under, 2 * lo - p, p))
        v = np.where(over | under, -v, v)


def simulate_motion(p0, v0, accelerations, lo, hi):
    """Runs the dynamics. p0, v0 [..., 2]; accelerations [T-1, ..., 2] → positions, velocities [T, ..., 2].

    velocities[t] is the velocity used to go from frame t to t + 1 (before any reflection); the last one is unused.
    """
    positions, velocities = [p0], [v0]
    p, v = p0, v0
    for a in accelerations:
        p, v = reflect(p + v, v, lo, hi)
        v = np.clip(v + a, -MAX_SPEED, MAX_SPEED)
        positions.append(p)
        velocities.append(v)
    return np.stack(positions), np.stack(velocities)


def make_moving_multi_mnist(
    digits: np.ndarray,
    labels: np.ndarray,
    num_sequences: int,
    *,
    seed: int,
    num_frames: int = 10,
    canvas_size: int = 50,
    max_digits: int = 2,
    motion: str = "bounce",
    hard: bool = False,
    chunk_size: int = 2000,
) -> dict[str, np.ndarray]:
    """Generates moving multi-MNIST sequences (module docstring for the dynamics).

    Returns a dict:
      frames [n, T, H, W] uint8; counts [n, T] int32; boxes [n, T, max_digits, 4] float32 (y_min, x_min, y_max,
      x_max; pixel edges; visible part only; zero when absent); presence [n, T, max_digits] bool; labels
      [n, max_digits] int32 (−1 when the identity does not exist); positions [n, T, max_digits, 2] float32 (the
      patch's real-valued top-left (y, x)); velocities [n, T, max_digits, 2] float32 (module docstring).
    `chunk_size` only bounds memory while rendering; it does not change the output.
    """
    digits, labels = _check_digits(digits, labels)
    m, d, _ = digits.shape
    if canvas_size < d:
        raise ValueError(f"canvas_size {canvas_size} is smaller than the {d}×{d} digits")
    lo, hi = motion_bounds(motion, canvas_size, d)
    n, k, T = int(num_sequences), int(max_digits), int(num_frames)
    rng = np.random.default_rng(seed)

    num_ids = np.full(n, k) if hard else rng.integers(0, k + 1, size=n)
    exists = np.arange(k)[None, :] < num_ids[:, None]  # [n, k]
    idx = rng.integers(0, m, size=(n, k))
    span = canvas_size - d
    p0 = rng.uniform(0, span, size=(n, k, 2))
    digit_boxes = tight_boxes(digits)  # [m, 4]

    def frame1_boxes(rows):
        off = np.round(p0[rows]).astype(np.int32)
        return digit_boxes[idx[rows]] + np.concatenate([off, off], axis=-1)

    todo = np.nonzero(any_pair_overlaps(frame1_boxes(slice(None)), exists))[0]
    rounds = 0
    while todo.size:
        rounds += 1
        if rounds % 10 == 0:
            idx[todo] = rng.integers(0, m, size=(todo.size, k))
        p0[todo] = rng.uniform(0, span, size=(todo.size, k, 2))
        todo = todo[any_pair_overlaps(frame1_boxes(todo), exists[todo])]

    v0 = rng.uniform(-MAX_SPEED, MAX_SPEED, size=(n, k, 2))
    acc = rng.uniform(-MAX_ACCELERATION, MAX_ACCELERATION, size=(T - 1, n, k, 2))
    positions, velocities = simulate_motion(p0, v0, acc, lo, hi)  # [T, n, k, 2]
    positions = positions.transpose(1, 0, 2, 3)
    velocities = velocities.transpose(1, 0, 2, 3)

    if hard:
        length = rng.integers(1, T + 1, size=(n, k))
        start = rng.integers(0, T - length + 1)
        end = start + length
        t = np.arange(T)[None, :, None]
        visible = exists[:, None, :] & (t >= start[:, None, :]) & (t < end[:, None, :])
    else:
        visible = np.broadcast_to(exists[:, None, :], (n, T, k))

    frames = np.empty((n, T, canvas_size, canvas_size), np.uint8)
    boxes = np.zeros((n, T, k, 4), np.int32)
    corners = np.round(positions).astype(np.int64)  # [n, T, k, 2]
    pad = d
    ar = np.arange(d)
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        c = e - s
        tops = corners[s:e, ..., 0].reshape(c * T, k)
        lefts = corners[s:e, ..., 1].reshape(c * T, k)
        vis = visible[s:e].reshape(c * T, k)
        patches = np.repeat(digits[idx[s:e]], T, axis=0) * vis[..., None, None]  # [c*T, k, d, d]
        # Keep only the pixels that land inside the frame, for tight boxes of the visible part.
        row_in = ((tops[..., None] + ar) >= 0) & ((tops[..., None] + ar) < canvas_size)  # [c*T, k, d]
        col_in = ((lefts[..., None] + ar) >= 0) & ((lefts[..., None] + ar) < canvas_size)
        inside = patches * (row_in[..., :, None] & col_in[..., None, :])
        b = tight_boxes(inside)
        nonempty = b[..., 2] > b[..., 0]
        b = b + np.stack([tops, lefts, tops, lefts], axis=-1)
        boxes[s:e] = np.where(nonempty[..., None], b, 0).reshape(c, T, k, 4)
        canvas = np.zeros((c * T, canvas_size + 2 * pad, canvas_size + 2 * pad), np.uint16)
        for j in range(k):
            paste_patches(canvas, patches[:, j], tops[:, j], lefts[:, j], pad)
        frames[s:e] = np.minimum(canvas[:, pad:-pad, pad:-pad], 255).reshape(c, T, canvas_size, canvas_size)

    presence = boxes[..., 2] > boxes[..., 0]
    return {
        "frames": frames,
        "counts": presence.sum(-1).astype(np.int32),
        "boxes": boxes.astype(np.float32),
        "presence": presence,
        "labels": np.where(exists, labels[idx], -1).astype(np.int32),
        "positions": positions.astype(np.float32),
        "velocities": velocities.astype(np.float32),
    }


def load_moving_multi_mnist(split: str, num_sequences: int, *, seed: int, digits: str = "mnist",
                            digit_size: int = 28, **kw) -> dict[str, np.ndarray]:
    """``num_sequences`` moving multi-MNIST sequences built from the ``split`` ("train" | "test") digits.

    ``digits="mnist"`` uses the MNIST split (``ocr_jax.data.load_mnist``); ``digits="blobs"`` uses synthetic blob
    digits of ``digit_size`` pixels (no download; for tests). ``**kw`` go to :func:`make_moving_multi_mnist`
    (``num_frames``, ``canvas_size``, ``max_digits``, ``motion``, ``hard``). SQAIR and the frame-wise AIR baseline
    both read their sequences from here, so with the same arguments they see the same frames.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if digits == "mnist":
        from ocr_jax.data.mnist import load_mnist

        images, labels = load_mnist(split)
    elif digits == "blobs":
        from ocr_jax.data.synthetic import blob_digits

        images, labels = blob_digits(2000, seed=seed + (split == "test"), size=digit_size,
                                     min_extent=max(2, digit_size // 3), max_extent=max(3, (3 * digit_size) // 4))
    else:
        raise ValueError(f"digits must be 'mnist' or 'blobs'; got {digits!r}")
    return make_moving_multi_mnist(images, labels, num_sequences, seed=seed, **kw)


def frames_as_images(sequences: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sequences ``frames [n, T, H, W]``, ``counts [n, T]`` -> independent images ``[n·T, H, W]``, ``counts [n·T]``
    (sequence-major: image ``i·T + t`` is frame t of sequence i), for models trained frame-wise (AIR)."""
    frames, counts = sequences["frames"], sequences["counts"]
    if frames.ndim != 4 or counts.shape != frames.shape[:2]:
        raise ValueError(f"need frames [n, T, H, W] and counts [n, T]; got {frames.shape} and {counts.shape}")
    return {"images": frames.reshape(-1, *frames.shape[2:]), "counts": counts.reshape(-1)}

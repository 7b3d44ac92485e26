"""Moving multi-MNIST for SQAIR: sequences of 0..max_digits moving MNIST digits on a 50×50 canvas.

Two recipes (``recipe=``); say which one a number was measured on.

recipe="official" (the default): the SQAIR authors' generator, akosiorek/sqair ``sqair/data/create_seq_mnist.py``
(``__main__``: lines 89-131; ``trajectory_from_coords``: lines 35-62), ``sqair/data/data.py`` (``create_mnist``:
lines 64-186; ``dim_coords`` / ``template_dimensions``: lines 49-61), ``sqair/data/trajectory.py``
(``NoisyAccelerationTrajectory``: lines 109-143; ``Trajectory._init`` / ``create``: lines 54-106) and
``sqair/data/template.py`` (``TemplateDataset``: lines 58-104). Per sequence:

* the number of digits is uniform over 0..max_digits (data.py:84); the digits are distinct MNIST images
  (``np.random.choice(..., replace=False)``, data.py:128);
* each digit is a *template*: the image byte-scaled to 0..255 by its own maximum (``scipy.misc.imresize`` to the same
  28×28 size, data.py:87, 136: only the byte-scaling acts) and cropped to its nonzero rows and columns with the
  official ``dim_coords`` (data.py:49-61), which takes the *last* nonzero row (column) and the *number* of nonzero
  rows (columns): for a digit whose projection has a gap (≈1.3 % of MNIST) the crop is shifted by the gap and cuts a
  sliver off the top (left) — reproduced here;
* frame 1: the template's top-left corner is ``round(U[0, 1) · (50 − size))`` per axis, so every digit is wholly
  inside (``fraction_outside_canvas = 0``, data.py:90-107); the template boxes must not overlap: the second digit
  gets up to 5 positions (a try budget shared by the sequence's digits), and if none fits the whole sequence is
  redrawn with new digits (data.py:114-169);
* motion: ``NoisyAccelerationTrajectory(noise_std=.01, max_speed=10, max_acc=3, bounce=True)`` with the corner
  bounded to [0, 50] on both axes (``overlap = 0``: create_seq_mnist.py:44-56, 98). The state (p, v, a) is first
  drawn uniformly in its bounds (p ∈ [0, 50]², v ∈ [−10, 10]², a ∈ [−3, 3]²) and stepped once; then p is replaced
  by the frame-1 corner (trajectory.py:90-95). A step (trajectory.py:118-143) is

      p ← p + v;  v ← v + a;  a ← a + N(0, 0.01²);
      where p left [0, 50]: p ← −p (or 100 − p), and v, a of that axis ← −v, −a;
      clip p to [0, 50], v to [−10, 10], a to [−3, 3].

  So the acceleration is drawn once per trajectory (a slow random walk after that) and the speed soon saturates at
  10 px/frame; the digit leaves the frame through the bottom and right edges (the corner can reach 50: wholly
  outside) and always comes back, and never leaves through the top or left;
* frame t is drawn at ``round(p_t)`` (numpy's half-to-even, of the float32 trajectory) and digits are combined by a
  per-pixel maximum (template.py:69-104).

recipe="bounce_patch" (this package's first generator, kept for comparison; ≈74 % of two-digit frames overlap versus
≈27 % for the official recipe, so it is a harder, different task). Per digit identity j, per axis independently, p
is the top-left corner of the digit's whole 28×28 patch, drawn at round(p):

* p_0 ~ U[0, H − 28] (the whole patch inside frame 1), v_0 ~ U[−10, 10] px/frame.
* for t = 0 .. T−2:   p̃ = p_t + v_t;   reflect p̃ into [lo, hi] (if p̃ > hi: p̃ ← 2·hi − p̃ and v_t ← −v_t; if p̃ < lo:
  p̃ ← 2·lo − p̃ and v_t ← −v_t);   p_{t+1} = p̃;   v_{t+1} = clip(v_t + a_t, −10, 10) with a *fresh* acceleration
  a_t ~ U[−3, 3] every frame (so velocities wander but stay in the range they started in).
* motion="bounce" (default): [lo, hi] = [0, H − 28], the patch bounces inside the frame.
* motion="leave_and_return": [lo, hi] = [−14, H − 14], i.e. the patch *centre* bounces off the canvas edges, so up to
  half of the patch leaves the frame and always comes back.
* Frame 1 has no overlap of the digits' tight boxes (positions resampled for offending sequences; every 10th round
  the digits too); digits are drawn with replacement; pixels are summed and clipped to 255.

hard=True (both recipes): all max_digits identities exist, and identity j is visible only on a random interval
[start_j, end_j) of length L_j ~ U{1..T} with start_j ~ U{0..T−L_j}; it moves (invisibly) outside the interval.
Per-frame counts therefore take any value in 0..max_digits (bounce_patch, T = 10, max_digits = 2: 22% / 45% / 33% of
the 600k train frames hold 0 / 1 / 2 digits). The frame-1 no-overlap rule applies to the t = 0 positions of all
identities, visible or not, so two digits may overlap at the frame where one appears.

Counts — two different labels:
* ``sequence_counts[i]``: the number of digits in sequence i (identities that exist). This is the official data's
  count label (``nums``, one per sequence, tiled over time by ``sqair/data/mnist_tools.py:80-82``), the label the
  counting accuracy of thesis Table 5.4.1 is measured against.
* ``counts[i, t]``: the number of digits *visible* in frame t (at least one nonzero pixel inside the frame). With the
  official recipe a digit can be wholly outside, so ``counts <= sequence_counts`` with equality when every digit is
  (partly) in the frame.

Per frame: presence[t, j] = identity j exists, is visible at t and has at least one nonzero pixel inside the frame;
boxes[t, j] = tight box around the nonzero pixels of digit j that lie inside the frame (zero when absent);
full_boxes[t, j] = tight box around all of digit j's nonzero pixels, which may reach beyond the canvas (zero when the
identity does not exist or is not scheduled visible). Per sequence: labels[j] (−1 for identities that do not exist).
"""

from __future__ import annotations

import numpy as np

from ocr_jax.data.canvas import any_pair_overlaps, boxes_overlap, check_digits, paste_patches, tight_boxes

RECIPES = ("official", "bounce_patch")
MOTIONS = ("bounce", "leave_and_return")
MAX_SPEED = 10.0
MAX_ACCELERATION = 3.0
ACCELERATION_NOISE_STD = 0.01  # official: NoisyAccelerationTrajectory(noise_std=.01), create_seq_mnist.py:50
PLACEMENT_TRIES = 5  # official: n_tries = 5, data.py:115
_MAX_LAYOUT_ROUNDS = 10_000


# ----------------------------------------------------------------------------------------------------------------------
# recipe="bounce_patch"


def motion_bounds(motion: str, canvas_size: int, digit_size: int = 28) -> tuple[float, float]:
    """[lo, hi] for the patch's top-left coordinate under `motion` (recipe="bounce_patch"; module docstring)."""
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
    """Runs the bounce_patch dynamics. p0, v0 [..., 2]; accelerations [T-1, ..., 2] → positions, velocities [T, ..., 2].

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


def _bounce_patch_layout(rng, digits, n, k, T, canvas_size, motion, hard):
    """The first generator's identities, digit indices and trajectories (module docstring); unchanged draws."""
    m, d, _ = digits.shape
    lo, hi = motion_bounds(motion, canvas_size, d)
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
    return exists, idx, positions.transpose(1, 0, 2, 3), velocities.transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------------------------------------------------
# recipe="official"


def official_templates(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official templates of MNIST images (data.py:86-87, 136-138): byte-scaled, then cropped by ``dim_coords``.

    digits [m, d, d] uint8 → templates [m, d, d] uint8 (the crop, moved to the top-left corner, zero elsewhere) and
    sizes [m, 2] int64 (the crop's (height, width)).

    Byte-scaling is what ``scipy.misc.imresize(img, (28, 28))`` does to a float image before PIL's same-size resize
    (a copy): ``uint8((x − min) · 255 / (max − min) + 0.5)`` in float32, on TF's ``mnist`` images ``x = byte / 255``.
    It stretches the ≈10 % of MNIST digits whose brightest pixel is 254 to 255. The crop follows ``dim_coords``
    (data.py:49-53): along each axis, ``size`` = the number of nonzero rows (columns) and ``start`` = last nonzero
    index − size + 1, which equals the tight crop unless the projection has a gap.
    """
    digits = np.asarray(digits)
    m, d, _ = digits.shape
    x = digits.astype(np.float32) * np.float32(1.0 / 255.0)  # TF's DataSet: images * (1.0 / 255.0) in float32
    x_min = x.min(axis=(1, 2), keepdims=True)
    scale = np.float32(255.0) / np.where(
        x.max(axis=(1, 2), keepdims=True) > x_min, x.max(axis=(1, 2), keepdims=True) - x_min, np.float32(1.0)
    )
    scaled = ((x - x_min) * scale.astype(np.float32)).clip(0, 255) + np.float32(0.5)
    scaled = scaled.astype(np.uint8)

    ar = np.arange(d)

    def dim_coords(proj):  # proj [m, d] bool
        size = proj.sum(axis=1)
        start = (ar * proj).argmax(axis=1) - size + 1
        return start, size

    y0, h = dim_coords(scaled.any(axis=2))
    x0, w = dim_coords(scaled.any(axis=1))
    # Gather the crop into the top-left corner: row r of the template is row y0 + r of the image (r < h).
    rows = np.clip(y0[:, None] + ar, 0, d - 1)  # [m, d]
    cols = np.clip(x0[:, None] + ar, 0, d - 1)
    crop = scaled[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]]
    keep = (ar[None, :, None] < h[:, None, None]) & (ar[None, None, :] < w[:, None, None])
    templates = np.where(keep, crop, 0).astype(np.uint8)
    return templates, np.stack([h, w], axis=-1).astype(np.int64)


def _distinct_indices(rng, m: int, r: int, k: int) -> np.ndarray:
    """[r, k] indices into m items, distinct within each row, each row uniform over such tuples."""
    idx = rng.integers(0, m, size=(r, k))
    while True:
        dup = np.zeros(r, bool)
        for i in range(k):
            for j in range(i + 1, k):
                dup |= idx[:, i] == idx[:, j]
        if not dup.any():
            return idx
        idx[dup] = rng.integers(0, m, size=(int(dup.sum()), k))


def _official_placement(rng, sizes: np.ndarray, exists: np.ndarray, m: int, canvas_size: int):
    """Digits and frame-1 corners as ``create_mnist`` draws them (data.py:114-169), vectorised over sequences.

    sizes [m, 2] template sizes; exists [n, k]. Returns idx [n, k] and integer corners p0 [n, k, 2] (float64).
    Digit j > 0 is tried at up to PLACEMENT_TRIES fresh positions (one budget per sequence) until its template box is
    disjoint from the earlier digits' boxes; when the budget runs out — even if the last try fitted, as in the
    official loop — the whole sequence is redrawn with new digits.
    """
    n, k = exists.shape
    idx = np.zeros((n, k), np.int64)
    p0 = np.zeros((n, k, 2))
    todo = np.arange(n)
    for _ in range(_MAX_LAYOUT_ROUNDS):
        if not todo.size:
            return idx, p0
        r = todo.size
        ix = _distinct_indices(rng, m, r, k)
        size = sizes[ix]  # [r, k, 2]
        pos = np.round(rng.random((r, k, 2)) * (canvas_size - size))
        ex = exists[todo]
        tries = np.zeros(r, np.int64)
        failed = np.zeros(r, bool)

        def clashes(j, rows):
            box_j = np.concatenate([pos[rows, j], pos[rows, j] + size[rows, j]], axis=-1)
            bad = np.zeros(rows.size, bool)
            for i in range(j):
                box_i = np.concatenate([pos[rows, i], pos[rows, i] + size[rows, i]], axis=-1)
                bad |= ex[rows, i] & boxes_overlap(box_i, box_j)
            return bad

        for j in range(1, k):
            active = ex[:, j] & ~failed
            bad = active & clashes(j, np.arange(r))
            while True:
                redo = np.nonzero(bad & (tries < PLACEMENT_TRIES))[0]
                if not redo.size:
                    break
                pos[redo, j] = np.round(rng.random((redo.size, 2)) * (canvas_size - size[redo, j]))
                tries[redo] += 1
                bad[redo] = clashes(j, redo)
            failed |= active & (tries == PLACEMENT_TRIES)
        idx[todo], p0[todo] = ix, pos
        todo = todo[failed]
    raise RuntimeError(f"could not place {k} non-overlapping digits on a {canvas_size}×{canvas_size} canvas")


def _official_step(rng, pos, vel, acc, canvas_size):
    """One official step: ``NoisyAccelerationTrajectory._forward`` (bounce=True), then ``Trajectory._clip``
    (trajectory.py:75-80, 118-143)."""
    noise = rng.normal(0.0, ACCELERATION_NOISE_STD, size=acc.shape)
    pos, vel, acc = pos + vel, vel + acc, acc + noise
    under, over = pos < 0, pos > canvas_size
    pos = np.where(under, -pos, np.where(over, 2.0 * canvas_size - pos, pos))
    flip = np.where(under | over, -1.0, 1.0)
    vel, acc = vel * flip, acc * flip
    return (
        np.clip(pos, 0.0, canvas_size),
        np.clip(vel, -MAX_SPEED, MAX_SPEED),
        np.clip(acc, -MAX_ACCELERATION, MAX_ACCELERATION),
    )


def official_trajectories(p0: np.ndarray, num_frames: int, rng: np.random.Generator, canvas_size: int = 50):
    """The official ``NoisyAccelerationTrajectory.create(T, n, init_from=p0)`` (trajectory.py:82-106) for corners
    p0 [..., 2] bounded to [0, canvas_size].

    Returns positions, velocities, accelerations [T, ..., 2] float64: the state (p_t, v_t, a_t) at frame t, so that
    p_{t+1} = p_t + v_t and v_{t+1} = v_t + a_t before reflection and clipping. The initial state is drawn uniformly
    in the bounds and stepped once, then its position is replaced by p0 (trajectory.py:63-73, 91-95); v_0 is
    therefore clip(U[−10, 10] + U[−3, 3]), not uniform.
    """
    p0 = np.asarray(p0, np.float64)
    pos = rng.uniform(0.0, canvas_size, size=p0.shape)
    vel = rng.uniform(-MAX_SPEED, MAX_SPEED, size=p0.shape)
    acc = rng.uniform(-MAX_ACCELERATION, MAX_ACCELERATION, size=p0.shape)
    _, vel, acc = _official_step(rng, pos, vel, acc, canvas_size)
    pos = p0
    positions, velocities, accelerations = [pos], [vel], [acc]
    for _ in range(num_frames - 1):
        pos, vel, acc = _official_step(rng, pos, vel, acc, canvas_size)
        positions.append(pos)
        velocities.append(vel)
        accelerations.append(acc)
    return np.stack(positions), np.stack(velocities), np.stack(accelerations)


def _official_layout(rng, digits, n, k, T, canvas_size, hard):
    templates, sizes = official_templates(digits)
    num_ids = np.full(n, k) if hard else rng.integers(0, k + 1, size=n)
    exists = np.arange(k)[None, :] < num_ids[:, None]
    idx, p0 = _official_placement(rng, sizes, exists, len(digits), canvas_size)
    positions, velocities, _ = official_trajectories(p0, T, rng, canvas_size)  # [T, n, k, 2]
    return templates, exists, idx, positions.transpose(1, 0, 2, 3), velocities.transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------------------------------------------------


def _render(templates, idx, corners, visible, canvas_size, combine, chunk_size):
    """Draws templates[idx] [n, k] at integer corners [n, T, k, 2] where visible [n, T, k].

    combine="sum": pixels added and clipped to 255; "max": per-pixel maximum. Returns frames [n, T, H, W] uint8,
    boxes [n, T, k, 4] int32 of the visible pixels inside the frame, full_boxes [n, T, k, 4] int32 of all the digit's
    pixels (canvas coordinates, may exceed it).
    """
    n, T, k = visible.shape
    d = templates.shape[-1]
    frames = np.empty((n, T, canvas_size, canvas_size), np.uint8)
    boxes = np.zeros((n, T, k, 4), np.int32)
    full_boxes = np.zeros((n, T, k, 4), np.int32)
    pad = d
    ar = np.arange(d)
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        c = e - s
        tops = corners[s:e, ..., 0].reshape(c * T, k)
        lefts = corners[s:e, ..., 1].reshape(c * T, k)
        vis = visible[s:e].reshape(c * T, k)
        patches = np.repeat(templates[idx[s:e]], T, axis=0) * vis[..., None, None]  # [c*T, k, d, d]
        offset = np.stack([tops, lefts, tops, lefts], axis=-1)
        full = tight_boxes(patches)
        full_boxes[s:e] = np.where((full[..., 2] > full[..., 0])[..., None], full + offset, 0).reshape(c, T, k, 4)
        # Keep only the pixels that land inside the frame, for tight boxes of the visible part.
        row_in = ((tops[..., None] + ar) >= 0) & ((tops[..., None] + ar) < canvas_size)  # [c*T, k, d]
        col_in = ((lefts[..., None] + ar) >= 0) & ((lefts[..., None] + ar) < canvas_size)
        inside = patches * (row_in[..., :, None] & col_in[..., None, :])
        b = tight_boxes(inside)
        nonempty = b[..., 2] > b[..., 0]
        boxes[s:e] = np.where(nonempty[..., None], b + offset, 0).reshape(c, T, k, 4)
        if combine == "sum":
            canvas = np.zeros((c * T, canvas_size + 2 * pad, canvas_size + 2 * pad), np.uint16)
            for j in range(k):
                paste_patches(canvas, patches[:, j], tops[:, j], lefts[:, j], pad)
            canvas = np.minimum(canvas, 255)
        else:
            canvas = np.zeros((c * T, canvas_size + 2 * pad, canvas_size + 2 * pad), np.uint8)
            for j in range(k):
                _max_paste(canvas, patches[:, j], tops[:, j], lefts[:, j], pad)
        frames[s:e] = canvas[:, pad:-pad, pad:-pad].reshape(c, T, canvas_size, canvas_size)
    return frames, boxes, full_boxes


def _max_paste(canvas, patches, tops, lefts, pad):
    """Like multi_mnist.paste_patches, with a per-pixel maximum instead of a sum (template.py:93-104)."""
    n, s, _ = canvas.shape
    p = patches.shape[-1]
    windows = np.lib.stride_tricks.as_strided(
        canvas, shape=(n, s - p + 1, s - p + 1, p, p), strides=canvas.strides + canvas.strides[1:], writeable=True
    )
    ii = np.arange(n)  # one patch per canvas per call: no repeated index in the scatter
    windows[ii, tops + pad, lefts + pad] = np.maximum(windows[ii, tops + pad, lefts + pad], patches)


def make_moving_multi_mnist(
    digits: np.ndarray,
    labels: np.ndarray,
    num_sequences: int,
    *,
    seed,
    num_frames: int = 10,
    canvas_size: int = 50,
    max_digits: int = 2,
    recipe: str = "official",
    motion: str | None = None,
    hard: bool = False,
    chunk_size: int = 2000,
) -> dict[str, np.ndarray]:
    """Generates moving multi-MNIST sequences (module docstring for both recipes).

    Args:
      digits, labels: [m, d, d] uint8 images and [m] classes to draw from.
      num_sequences: n. seed: anything ``np.random.default_rng`` takes; the output is a function of the arguments.
      recipe: "official" (default; the SQAIR authors' generator) or "bounce_patch" (the first generator here).
      motion: recipe="bounce_patch" only: "bounce" (default) or "leave_and_return".
      hard: identities appear and disappear at random frames (both recipes).
      chunk_size: only bounds memory while rendering; it does not change the output.

    Returns a dict:
      frames [n, T, H, W] uint8; counts [n, T] int32 (digits *visible* in the frame); sequence_counts [n] int32
      (digits in the sequence: the official count label); boxes [n, T, k, 4] float32 (y_min, x_min, y_max, x_max;
      pixel edges; visible part only; zero when absent); full_boxes [n, T, k, 4] float32 (the whole digit's tight box,
      possibly beyond the canvas; zero when the identity does not exist or is not scheduled visible); presence
      [n, T, k] bool; labels [n, k] int32 (−1 when the identity does not exist); positions [n, T, k, 2] float32
      (real-valued top-left (y, x): of the cropped template for "official", of the 28×28 patch for "bounce_patch");
      velocities [n, T, k, 2] float32 (the velocity used from frame t to t+1, before any reflection).
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if recipe == "official" and motion is not None:
        raise ValueError(
            f"motion={motion!r} is an option of recipe='bounce_patch' only; the official recipe has "
            "its own motion (module docstring)"
        )
    motion = "bounce" if motion is None else motion
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    digits, labels = check_digits(digits, labels)
    m, d, _ = digits.shape
    n, k, T = int(num_sequences), int(max_digits), int(num_frames)
    if n < 0 or k < 0 or T < 1:
        raise ValueError(f"need num_sequences >= 0, max_digits >= 0, num_frames >= 1; got {n}, {k}, {T}")
    if canvas_size < d:
        raise ValueError(f"canvas_size {canvas_size} is smaller than the {d}×{d} digits")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if recipe == "official" and m < k:
        raise ValueError(f"the official recipe draws {k} distinct digits per sequence; only {m} given")
    rng = np.random.default_rng(seed)

    if recipe == "official":
        templates, exists, idx, positions, velocities = _official_layout(rng, digits, n, k, T, canvas_size, hard)
        # The official trajectories are stored as float32 and rounded from there (trajectory.py:90, template.py:80).
        corners = np.round(positions.astype(np.float32)).astype(np.int64)
    else:
        templates = digits
        exists, idx, positions, velocities = _bounce_patch_layout(rng, digits, n, k, T, canvas_size, motion, hard)
        corners = np.round(positions).astype(np.int64)  # [n, T, k, 2]

    if hard:
        length = rng.integers(1, T + 1, size=(n, k))
        start = rng.integers(0, T - length + 1)
        end = start + length
        t = np.arange(T)[None, :, None]
        visible = exists[:, None, :] & (t >= start[:, None, :]) & (t < end[:, None, :])
    else:
        visible = np.broadcast_to(exists[:, None, :], (n, T, k))

    frames, boxes, full_boxes = _render(
        templates, idx, corners, visible, canvas_size, "max" if recipe == "official" else "sum", chunk_size
    )
    presence = boxes[..., 2] > boxes[..., 0]
    return {
        "frames": frames,
        "counts": presence.sum(-1).astype(np.int32),
        "sequence_counts": exists.sum(-1).astype(np.int32),
        "boxes": boxes.astype(np.float32),
        "full_boxes": full_boxes.astype(np.float32),
        "presence": presence,
        "labels": np.where(exists, labels[idx], -1).astype(np.int32),
        "positions": positions.astype(np.float32),
        "velocities": velocities.astype(np.float32),
    }


def overlap_statistics(data: dict[str, np.ndarray], *, large_overlap: float = 0.3) -> dict[str, float]:
    """How crowded and how clipped a moving multi-MNIST set is (from ``make_moving_multi_mnist``'s arrays).

    Returns fractions:
      overlap: of frames with two or more visible digits, those where two visible tight boxes overlap;
      overlap_large: ... where two overlap by more than ``large_overlap`` of the smaller box's area;
      overlap_of_multi_digit_sequence_frames: of all frames of sequences with two or more digits, those where two
        visible boxes overlap (a digit wholly outside overlaps nothing);
      partly_outside / wholly_outside: of digit-frames (an identity that exists and is scheduled visible, i.e. has a
        full box), those with some but not all / none of the digit's nonzero pixels inside the canvas;
      count_below_sequence_count: of frames, those whose visible count is below the sequence count;
    and the denominators (num_multi_digit_frames, num_digit_frames, num_frames).
    """
    boxes, presence, full = data["boxes"], data["presence"], data["full_boxes"]
    n, T, k, _ = boxes.shape
    h, w = data["frames"].shape[-2:]
    any_overlap = np.zeros((n, T), bool)
    large = np.zeros((n, T), bool)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    for i in range(k):
        for j in range(i + 1, k):
            a, b = boxes[..., i, :], boxes[..., j, :]
            both = presence[..., i] & presence[..., j]
            inter = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None) * np.clip(
                np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None
            )
            any_overlap |= both & (inter > 0)
            large |= both & (inter > large_overlap * np.minimum(area[..., i], area[..., j]))
    multi = presence.sum(-1) >= 2
    multi_seq = np.broadcast_to((data["sequence_counts"] >= 2)[:, None], (n, T))
    in_scene = full[..., 2] > full[..., 0]
    beyond = (full[..., 0] < 0) | (full[..., 1] < 0) | (full[..., 2] > h) | (full[..., 3] > w)

    def frac(num, den):
        return float(num.sum() / den.sum()) if den.sum() else float("nan")

    return {
        "overlap": frac(any_overlap & multi, multi),
        "overlap_large": frac(large & multi, multi),
        "overlap_of_multi_digit_sequence_frames": frac(any_overlap & multi_seq, multi_seq),
        "partly_outside": frac(in_scene & presence & beyond, in_scene),
        "wholly_outside": frac(in_scene & ~presence, in_scene),
        "count_below_sequence_count": frac(data["counts"] < data["sequence_counts"][:, None], np.ones((n, T), bool)),
        "num_multi_digit_frames": int(multi.sum()),
        "num_digit_frames": int(in_scene.sum()),
        "num_frames": int(n * T),
    }


def load_moving_multi_mnist(
    split: str, num_sequences: int, *, seed: int, digits: str = "mnist", digit_size: int = 28, **kw
) -> dict[str, np.ndarray]:
    """``num_sequences`` moving multi-MNIST sequences built from the ``split`` ("train" | "test") digits.

    ``digits="mnist"`` uses the MNIST split (``ocr_jax.data.load_mnist``); ``digits="blobs"`` uses synthetic blob
    digits of ``digit_size`` pixels (no download; for tests). ``**kw`` go to :func:`make_moving_multi_mnist`
    (``num_frames``, ``canvas_size``, ``max_digits``, ``recipe`` — default "official" —, ``motion``, ``hard``). SQAIR
    and the frame-wise AIR baseline both read their sequences from here, so with the same arguments they see the same
    frames.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if digits == "mnist":
        from ocr_jax.data.mnist import load_mnist

        images, labels = load_mnist(split)
    elif digits == "blobs":
        from ocr_jax.data.synthetic import blob_digits

        images, labels = blob_digits(
            2000,
            seed=seed + (split == "test"),
            size=digit_size,
            min_extent=max(2, digit_size // 3),
            max_extent=max(3, (3 * digit_size) // 4),
        )
    else:
        raise ValueError(f"digits must be 'mnist' or 'blobs'; got {digits!r}")
    return make_moving_multi_mnist(images, labels, num_sequences, seed=seed, **kw)


def frames_as_images(sequences: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sequences ``frames [n, T, H, W]``, ``counts [n, T]`` -> independent images ``[n·T, H, W]``, ``counts [n·T]``
    (sequence-major: image ``i·T + t`` is frame t of sequence i), for models trained frame-wise (AIR); the visible
    tight ``boxes [n·T, M, 4]`` too when the sequences have them."""
    frames, counts = sequences["frames"], sequences["counts"]
    if frames.ndim != 4 or counts.shape != frames.shape[:2]:
        raise ValueError(f"need frames [n, T, H, W] and counts [n, T]; got {frames.shape} and {counts.shape}")
    images = {"images": frames.reshape(-1, *frames.shape[2:]), "counts": counts.reshape(-1)}
    if "boxes" in sequences:
        images["boxes"] = sequences["boxes"].reshape(-1, *sequences["boxes"].shape[2:])
    return images

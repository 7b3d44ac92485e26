"""Input checks shared by the public entry points of the models (`ocr_jax.models.air.AIR`,
`ocr_jax.models.sqair.SQAIR`) and of `ocr_jax.api`, so that every entry point rejects the same bad input with the same
message (issue #18).

Conventions:

* ``TypeError`` when an argument is not the kind of object expected (a count that is not an int, a key that is not an
  array); ``ValueError`` when it is the right kind with the wrong shape, dtype or values. Every message says what was
  received and what to pass.
* Images/frames: float in [0, 1] (any float dtype), shape ``[batch, (time,) height, width]`` with the model's frame
  size, batch ≥ 1. The models reject integer dtypes (uint8 included, with a message saying to divide by 255); the
  convenience API (`ocr_jax.api`) converts uint8 by dividing by 255 once (``uint8="convert"``).
* Shapes, dtypes and counts are static and always checked, also under ``jit``/``vmap``/``grad``. Values (finite, in
  range) are checked only on concrete arrays: on a tracer (``isinstance(x, jax.core.Tracer)``) they are skipped,
  since they are not known at trace time; check them before the jitted call.
* PRNG keys: a typed key (``jax.random.key(seed)``) or an old-style raw key (``jax.random.PRNGKey(seed)``: uint32
  ``[2]`` for the default threefry implementation); both come back as a typed key
  (``jax.random.wrap_key_data``), with the same bits, so both give the same results.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_traced",
    "check_count",
    "check_frames",
    "check_values",
    "check_key",
    "ConfigCheck",
]


def is_traced(x) -> bool:
    """True if ``x`` is a JAX tracer (inside ``jit``, ``vmap``, ``grad``, ``eval_shape``...): its values are unknown."""
    return isinstance(x, jax.core.Tracer)


def _describe(x) -> str:
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(x).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(x).__name__} {x!r}"


# ---- counts ---------------------------------------------------------------------------------------------------------


def check_count(value, name: str, *, minimum: int = 1, hint: str = "") -> int:
    """``value`` as a Python int ≥ ``minimum`` (a static count: particles, samples, steps, batch size).

    TypeError if it is not an integer (bool, float, array, tracer); ValueError if it is below ``minimum``.
    ``hint`` is appended to the ValueError's message.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a Python int >= {minimum}; got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}{hint}")
    return int(value)


# ---- arrays of values -----------------------------------------------------------------------------------------------


def check_values(x, name: str, *, low: float = 0.0, high: float = 1.0, above_hint: str = "") -> None:
    """ValueError if concrete ``x`` has NaN/inf entries or entries outside ``[low, high]``; nothing on a tracer.
    ``above_hint`` is appended to the message when the largest value exceeds ``high``."""
    if is_traced(x):
        return
    arr = np.asarray(x)
    if arr.size == 0:
        return
    if arr.dtype.kind not in "fiub":  # bfloat16 and other extension floats: compare in float32
        arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(
            f"{name} contain {int(np.sum(~finite))} NaN/inf values; pass finite values in [{low:g}, {high:g}]"
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < low or hi > high:
        raise ValueError(
            f"{name} must lie in [{low:g}, {high:g}]; got values in [{lo:g}, {hi:g}]"
            + (above_hint if hi > high else "")
        )


def check_frames(
    x,
    *,
    name: str,
    axes: Sequence[str],
    frame_shape: Sequence[int],
    frame_source: str,
    max_time: int | None = None,
    uint8: str = "reject",
):
    """Checks images ``[batch, height, width]`` or sequences ``[batch, time, height, width]`` (``axes`` names them).

    Args:
      x: the array (numpy, jax or a tracer); other array-likes are converted with ``np.asarray``.
      name: what the caller calls it (``"images"``, ``"frames"``), used in the messages.
      frame_shape: the model's ``(height, width)``; ``frame_source`` names the config field it comes from.
      max_time: the most time steps allowed (SQAIR's ``max_seq_len``), when ``axes`` has ``"time"``.
      uint8: ``"reject"`` (the models: ValueError saying to divide by 255) or ``"convert"`` (the API: uint8 becomes
        float32 / 255; the result is a float32 numpy array).
    Returns:
      ``x`` unchanged (``uint8="reject"``; converted to an array if it was not one), or a float32 numpy array in
      [0, 1] (``uint8="convert"``).
    Raises ValueError for: another rank, another frame size, batch size 0, 0 or more than ``max_time`` time steps,
    a dtype other than float (or uint8 when converting), and, on concrete arrays only, NaN/inf or values outside
    [0, 1]. TypeError if ``x`` is not array-like.
    """
    if uint8 not in ("reject", "convert"):
        raise ValueError(f"uint8 must be 'reject' or 'convert'; got {uint8!r}")
    if not (is_traced(x) or isinstance(x, (np.ndarray, jax.Array))):
        given = type(x).__name__
        try:
            x = np.asarray(x)
        except Exception as e:  # noqa: BLE001  (any failure means "not array-like")
            raise TypeError(f"{name} must be an array [{', '.join(axes)}]; got {given}") from e
        if x.dtype.kind in "OSUV":
            raise TypeError(
                f"{name} must be a numeric array [{', '.join(axes)}]; got {given} of dtype "
                f"{x.dtype} (strings or ragged nested lists?)"
            )
    shape = tuple(x.shape)
    layout = ", ".join(axes)
    if len(shape) != len(axes):
        raise ValueError(f"{name} must have shape [{layout}] (rank {len(axes)}); got shape {shape}")
    h, w = (int(v) for v in frame_shape)
    if shape[-2:] != (h, w):
        raise ValueError(
            f"{name} must be {h}x{w} pixels (the model's frame size, {frame_source}); got "
            f"{shape[-2]}x{shape[-1]} (shape {shape})"
        )
    if "batch" in axes and shape[list(axes).index("batch")] < 1:
        raise ValueError(f"got an empty batch of {name} (batch size 0, shape {shape}); pass at least one")
    if "time" in axes:
        t = shape[list(axes).index("time")]
        if t < 1:
            raise ValueError(f"{name} have no time steps (shape {shape}); pass at least one frame")
        if max_time is not None and t > max_time:
            raise ValueError(
                f"{name} have {t} time steps but this model handles at most max_seq_len={max_time}; "
                "split longer sequences"
            )
    dtype = x.dtype
    if uint8 == "convert" and dtype == np.uint8:
        return np.asarray(x).astype(np.float32) / np.float32(255.0)
    if not jnp.issubdtype(dtype, jnp.floating):
        accepted = "floating point in [0, 1] or uint8 in 0..255" if uint8 == "convert" else "floating point in [0, 1]"
        hint = ""
        if uint8 == "reject" and jnp.issubdtype(dtype, jnp.integer):
            hint = (
                f": divide 0..255 {name} by 255 (x.astype(np.float32) / 255); ocr_jax.infer_images / "
                "infer_sequences accept uint8 and do it for you"
            )
        raise ValueError(f"{name} must be {accepted}; got dtype {dtype}{hint}")
    as_uint8 = ", or pass them as uint8" if uint8 == "convert" else ""
    check_values(x, name, above_hint=f" (divide 0..255 values by 255{as_uint8})")
    if uint8 == "convert":
        return np.asarray(x, np.float32)
    return x


# ---- PRNG keys ------------------------------------------------------------------------------------------------------


def _raw_key_shape() -> tuple[int, ...]:
    """Shape of the default implementation's raw key data (``(2,)`` for threefry)."""
    return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def check_key(key, *, name: str = "key", batch_shape: Sequence[int] = (), allow_seed: bool = False) -> jax.Array:
    """A typed PRNG key (array) of shape ``batch_shape`` from a typed key or an old-style raw key.

    Accepts ``jax.random.key(seed)`` (typed; returned as is) and ``jax.random.PRNGKey(seed)`` (uint32
    ``[*batch_shape, 2]``; wrapped with ``jax.random.wrap_key_data``, same bits, so the same results), concrete or
    traced; with ``allow_seed`` also None (seed 0) and an int seed. TypeError for anything that is not an array,
    ValueError for an array of another shape or dtype.
    """
    batch_shape = tuple(int(v) for v in batch_shape)
    accepted = "jax.random.key(seed) or jax.random.PRNGKey(seed) (uint32[2])"
    if allow_seed:
        accepted = "jax.random.key(seed), jax.random.PRNGKey(seed) (uint32[2]), an int seed or None"
        if key is None:
            key = jax.random.key(0)
        elif isinstance(key, numbers.Integral) and not isinstance(key, bool):
            key = jax.random.key(int(key))
    if batch_shape:
        accepted = f"a key array of shape {batch_shape} (jax.random.split(key, {batch_shape}))"
    dtype = getattr(key, "dtype", None)
    if dtype is None or not hasattr(key, "shape"):
        raise TypeError(f"{name} must be {accepted}; got {_describe(key)}")
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if tuple(key.shape) != batch_shape:
            raise ValueError(f"{name} must be {accepted}; got a typed key array of shape {tuple(key.shape)}")
        return key
    raw_shape = batch_shape + _raw_key_shape()
    if dtype != np.uint32 or tuple(key.shape) != raw_shape:
        raise ValueError(
            f"{name} must be {accepted}; got an array of shape {tuple(key.shape)} and dtype {dtype} "
            f"(an old-style key here has shape {raw_shape} and dtype uint32)"
        )
    return jax.random.wrap_key_data(jnp.asarray(key))


# ---- configs --------------------------------------------------------------------------------------------------------


class ConfigCheck:
    """Collects range errors of a config's fields and raises them together (``ValueError: invalid <Config>: ...``).

    Usage in a dataclass's ``__post_init__``::

        check = ConfigCheck(self)
        check.positive("obs_std")
        check.int_at_least(1, "max_steps", "z_what_dim")
        check.require(cond, "message")
        check.done()
    """

    def __init__(self, config: Any):
        self.config = config
        self.errors: list[str] = []

    def _get(self, name):
        return getattr(self.config, name)

    def require(self, condition: bool, message: str) -> bool:
        if not condition:
            self.errors.append(message)
        return bool(condition)

    @staticmethod
    def _is_number(v) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    def number(self, name: str, test, what: str) -> bool:
        """A finite number with ``test(value)`` true; ``what`` describes the range in the message."""
        v = self._get(name)
        ok = self._is_number(v) and math.isfinite(float(v)) and test(float(v))
        return self.require(ok, f"{name} must be {what}; got {v!r}")

    def positive(self, *names: str) -> None:
        """Finite numbers > 0."""
        for n in names:
            self.number(n, lambda v: v > 0, "a finite number > 0")

    def non_negative(self, *names: str) -> None:
        """Finite numbers ≥ 0."""
        for n in names:
            self.number(n, lambda v: v >= 0, "a finite number >= 0")

    def finite(self, *names: str) -> None:
        for n in names:
            self.number(n, lambda v: True, "a finite number")

    def open_unit(self, *names: str) -> None:
        """Probabilities strictly inside (0, 1)."""
        for n in names:
            self.number(n, lambda v: 0 < v < 1, "a probability in (0, 1)")

    def int_at_least(self, minimum: int, *names: str) -> None:
        for n in names:
            v = self._get(n)
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum
            self.require(ok, f"{n} must be an int >= {minimum}; got {v!r}")

    def ints_at_least(self, minimum: int, *names: str, length: int | None = None, nonempty: bool = False) -> None:
        """Sequences of ints ≥ ``minimum`` (layer sizes, channels, strides, shapes); ``length`` fixes their length."""
        for n in names:
            v = self._get(n)
            ok = isinstance(v, (tuple, list)) and all(
                isinstance(e, numbers.Integral) and not isinstance(e, bool) and e >= minimum for e in v
            )
            if length is not None:
                ok = ok and len(v) == length
            if nonempty:
                ok = ok and len(v) > 0
            what = (
                f"{length} ints"
                if length is not None
                else ("a non-empty tuple of ints" if nonempty else "a tuple of ints")
            )
            self.require(ok, f"{n} must be {what} >= {minimum}; got {v!r}")

    def number_tuple(self, name: str, *, length: int, positive: bool = False) -> None:
        """A sequence of ``length`` finite numbers (> 0 with ``positive``)."""
        v = self._get(name)
        ok = (
            isinstance(v, (tuple, list))
            and len(v) == length
            and all(self._is_number(e) and math.isfinite(float(e)) and (not positive or e > 0) for e in v)
        )
        self.require(ok, f"{name} must be {length} finite numbers{' > 0' if positive else ''}; got {v!r}")

    def one_of(self, name: str, options: Sequence[Any]) -> None:
        v = self._get(name)
        self.require(v in tuple(options), f"{name} must be one of {tuple(options)}; got {v!r}")

    def glimpse_fits(self, glimpse: str, frame: str) -> None:
        """The glimpse (in pixels) is no larger than the frame in either dimension."""
        g, f = self._get(glimpse), self._get(frame)
        try:
            ok = len(g) == len(f) == 2 and all(int(a) <= int(b) for a, b in zip(g, f))
        except (TypeError, ValueError):
            return  # malformed shapes are reported by ints_at_least
        self.require(ok, f"{glimpse} {tuple(g)} must not exceed {frame} {tuple(f)} in either dimension")

    def done(self) -> None:
        if self.errors:
            raise ValueError(f"invalid {type(self.config).__name__}: " + "; ".join(self.errors))

"""Metric writers (JSONL + TensorBoard on process 0), the progress bar, and Ctrl-C / SIGTERM handling."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from typing import Any, Iterator, Mapping

import jax
import numpy as np


def to_host(tree: Any) -> Any:
  """Numpy copy of a pytree of replicated (possibly multi-process) arrays: every process reads its local copy."""
  def get(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def local_copy(tree: Any) -> Any:
  """Single-device copy of a pytree of replicated arrays, usable by code jitted outside the mesh (eval hooks)."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` lines to ``<workdir>/metrics.jsonl`` and writes TensorBoard scalars and
  images to ``<workdir>/tensorboard``. Does nothing on processes other than 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self.jsonl_path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: optional at runtime, slow to import.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else repr(v)  # JSON has no NaN/Inf; keep them readable as strings.
      if self._tb is not None:
        self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: name -> ``[H, W]`` (grey) or ``[H, W, 3]`` float in [0, 1]."""
    if not self.enabled or self._tb is None:
      return
    for k, img in images.items():
      img = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
      self._tb.add_image(k, img, int(step), dataformats="HW" if img.ndim == 2 else "HWC")
    self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def split_eval_results(results: Mapping[str, Any] | None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Eval hook results -> (scalars, images): 0-d values are scalars, 2-d/3-d arrays are images."""
  scalars, images = {}, {}
  for k, v in (results or {}).items():
    arr = np.asarray(v)
    if arr.ndim == 0:
      scalars[k] = float(arr)
    elif arr.ndim in (2, 3):
      images[k] = arr
    else:
      raise ValueError(f"eval result {k!r} has shape {arr.shape}; expected a scalar or an [H, W(, C)] image")
  return scalars, images


class StopRequest:
  """Set by SIGINT/SIGTERM; the loop checks it between steps, saves a checkpoint and exits.

  A second Ctrl-C raises KeyboardInterrupt immediately (no save).
  """

  def __init__(self):
    self.signal_name: str | None = None

  def __bool__(self) -> bool:
    return self.signal_name is not None

  @contextlib.contextmanager
  def installed(self) -> Iterator["StopRequest"]:
    if threading.current_thread() is not threading.main_thread():
      yield self  # signal handlers can only be set from the main thread; run without graceful stop.
      return

    def handler(signum, frame):
      if self.signal_name is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # second Ctrl-C: stop now.
      self.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield self
    finally:
      for s, h in previous.items():
        signal.signal(s, h)

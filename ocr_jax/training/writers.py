"""Metric writers (JSONL + TensorBoard on process 0), the progress bar, Ctrl-C / SIGTERM handling, and the workdir
lock that keeps a second training process out of a live run."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from absl import logging

from ocr_jax.training.checkpoint import RunSafetyError

LOCK_NAME = "run.lock"


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


# ---- The workdir lock: one training run per workdir. ------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: str) -> dict[str, Any] | None:
    """The holder ``{"pid", "host", "since"}`` written in lock file ``path``; None if it is empty or unreadable."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"pid {holder['pid']} on host {holder.get('host')!r} (since {holder.get('since')})"


def _create_lock(path: str) -> bool:
    """Creates lock file ``path`` holding this process's pid and host; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
    except BaseException:
        os.remove(path)
        raise
    return True


def acquire_lock(path: str) -> None:
    """Takes lock file ``path`` (``O_CREAT | O_EXCL``) for this process.

    A lock whose holder is a process of this host that no longer exists (killed without releasing it) is taken over
    with a warning. Raises RunSafetyError naming the holder if it is alive, on another host (whose processes we cannot
    see), or unknown."""
    if _create_lock(path):
        return
    holder = read_lock(path)
    stale = holder is not None and holder.get("host") == socket.gethostname() and not pid_alive(holder["pid"])
    if stale:
        # Move the stale file aside (atomic) and check we moved the file we judged, not a lock just taken by another
        # process starting at the same moment; if we did, put it back.
        aside = f"{path}.stale.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            if read_lock(aside) != holder:
                os.rename(aside, path)
            else:
                os.remove(aside)
                logging.warning("%s: taking over the lock of %s, which no longer runs", path, _describe(holder))
                if _create_lock(path):
                    return
        holder = read_lock(path)
    raise RunSafetyError(
        f"{os.path.dirname(path)} is in use by {_describe(holder)}: another training process is writing this run. "
        f"Nothing was changed. Wait for it to finish or stop it, or choose another --workdir; if no process is using "
        f"the run any more, delete {path}."
    )


def release_lock(path: str) -> None:
    """Removes lock file ``path`` if this process holds it."""
    holder = read_lock(path)
    if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
        os.remove(path)


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str]:
    """Holds ``<workdir>/run.lock`` (created with ``workdir``) while the block runs; yields its path.

    In a multi-process run process 0 takes the lock for all: the others learn whether it succeeded (a broadcast), so
    every process raises RunSafetyError together instead of waiting forever at the next collective."""
    path = os.path.join(workdir, LOCK_NAME)
    error = None
    if jax.process_index() == 0:
        try:
            os.makedirs(workdir, exist_ok=True)
            acquire_lock(path)
        except (RunSafetyError, OSError) as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        locked = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not locked and error is None:
            error = RunSafetyError(f"process 0 could not lock {path} (see its error); nothing was changed")
    if error is not None:
        raise error
    try:
        yield path
    finally:
        if jax.process_index() == 0:
            release_lock(path)

"""Orbax checkpoints of the `TrainState`: periodic, keep-last-N, resume from the latest good one, never lose one.

Layout: ``<directory>/<step>/`` as written by `orbax.checkpoint.CheckpointManager` (one `StandardSave` item holding
step, params, opt_states, model_state, rng), plus ``<step>/ocr_jax_sha256.json``: the size and sha256 of every file
of the step, written by process 0 once orbax has finished the step. The data position is the step itself (batches
are a pure function of (seed, step)), so nothing else is needed to continue bit-identically.

Integrity: a step is checked against its manifest before it is restored (cached per step, so each is read once). A
corrupt step (a file changed, truncated or missing) is never restored: a `Checkpointer` that trains (``must_exist``
False) moves the corrupt steps newer than the newest good one aside to ``<step>.corrupt`` (orbax lists only
``<digits>`` directories as steps, so they leave rotation and are never deleted) and resumes from the good one; a
reader (``must_exist=True``: warm starts, reports, `ocr_jax.load_run`) skips them without touching anything. A step
without a manifest (saved before manifests existed) is used unverified, with a warning.

Saving is synchronous: the train step donates the state's buffers, so an asynchronous save could otherwise read
buffers that the next step has reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from ocr_jax.training.train_step import TrainState

MANIFEST = "ocr_jax_sha256.json"
CORRUPT_SUFFIX = ".corrupt"


class RunSafetyError(RuntimeError):
    """A run refused to start or to go on because it would lose work or give a wrong answer (an invalid config, a
    workdir another process is training in, a config that no longer describes the run's checkpoints, an unusable
    checkpoint). The message says what happened and what to do."""


class CheckpointError(RunSafetyError):
    """A checkpoint directory that exists but cannot be used (corrupt, unfinished, not a directory) or is missing."""


# ---- Integrity manifests: sha256 of every file of a finished step. ----------------------------------------------
def file_digests(directory: str) -> dict[str, dict[str, Any]]:
    """``{path relative to directory: {"size": bytes, "sha256": hex}}`` of every file under ``directory`` except the
    manifest (and its temporary file)."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative.startswith(MANIFEST):  # the manifest and its temporary file
                continue
            with open(path, "rb") as f:
                digests[relative] = {
                    "size": os.fstat(f.fileno()).st_size,
                    "sha256": hashlib.file_digest(f, "sha256").hexdigest(),
                }
    return dict(sorted(digests.items()))


def write_manifest(step_dir: str) -> None:
    """Writes ``<step_dir>/ocr_jax_sha256.json`` (atomically: a temporary file renamed into place)."""
    path = os.path.join(step_dir, MANIFEST)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump({"format": 1, "files": file_digests(step_dir)}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def manifest_problem(step_dir: str) -> str | None:
    """What is wrong with the files of ``step_dir`` according to its manifest (the first file that is missing or whose
    size or sha256 differs), None if they all match. Raises FileNotFoundError if there is no manifest."""
    try:
        with open(os.path.join(step_dir, MANIFEST)) as f:
            expected = json.load(f)["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for relative, want in expected.items():
        path = os.path.join(step_dir, relative)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != want["size"]:
                    return f"{relative} has {size} bytes, its manifest says {want['size']}"
                if hashlib.file_digest(f, "sha256").hexdigest() != want["sha256"]:
                    return f"{relative} does not match its sha256 in the manifest"
        except FileNotFoundError:
            return f"{relative} is missing"
    return None


def _set_aside_path(directory: str, step: int) -> str:
    """``<directory>/<step>.corrupt`` (or ``.corrupt2``, ... if taken): a name orbax does not take for a step."""
    path, n = os.path.join(directory, f"{step}{CORRUPT_SUFFIX}"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{step}{CORRUPT_SUFFIX}{n}")
    return path


def _detail(e: Exception) -> str:
    """An exception as one readable line (tensorstore errors embed whole specs)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text if len(text) < 600 else text[:600] + ' ...'}"


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` that validates the directory before anything is written to it and
    verifies each step's files before restoring it.

    ``must_exist=True`` opens an existing directory for reading (warm start, reports, `ocr_jax.load_run`): corrupt
    steps are skipped, nothing is moved. Otherwise (the training run's own directory) corrupt steps newer than the
    newest good one are moved aside to ``<step>.corrupt`` when it is opened, with one warning line each.
    """

    def __init__(self, directory: str, *, max_to_keep: int | None = 3, must_exist: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint path {self.directory} exists but is not a directory")
        if must_exist and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not must_exist, enable_async_checkpointing=False
            ),
        )
        self._problems: dict[int, str | None] = {}  # step -> why it is corrupt (None: good or unverified)
        self._warned: set[int] = set()
        self._check_no_unfinished_steps()
        if not must_exist:
            self._set_aside_corrupt_steps()

    def _check_no_unfinished_steps(self) -> None:
        """A numbered step directory that orbax does not list as a finished checkpoint means a crash mid-save or a
        damaged copy; we stop rather than silently fall back to an older step or to scratch (which would later rotate
        the good checkpoints away under keep-last-N)."""
        if not os.path.isdir(self.directory):
            return
        # Orbax lists any numbered directory as a step; a finalised one also has its step metadata file.
        finished = {
            s
            for s in self._manager.all_steps()
            if os.path.exists(os.path.join(self.directory, str(s), "_CHECKPOINT_METADATA"))
        }
        numbered = {int(n) for n in os.listdir(self.directory) if n.isdigit()}
        unfinished = sorted(numbered - finished)
        if unfinished:
            raise CheckpointError(
                f"checkpoint directory {self.directory} has step directories {unfinished} that are not finished orbax "
                f"checkpoints (finished: {sorted(finished)}). Nothing was modified. "
                "Move them away (or restore them) and "
                "rerun."
            )

    def _problem(self, step: int) -> str | None:
        """Why step ``step`` is corrupt, or None if its files match its manifest (or it has none: a warning). Cached."""
        if step not in self._problems:
            step_dir = os.path.join(self.directory, str(step))
            try:
                self._problems[step] = manifest_problem(step_dir)
            except FileNotFoundError:
                self._problems[step] = None
                logging.warning(
                    "checkpoint step %d in %s has no %s (saved before integrity manifests, or interrupted just "
                    "after saving); using it unverified",
                    step,
                    self.directory,
                    MANIFEST,
                )
        return self._problems[step]

    def _newest_good_step(self) -> tuple[int | None, list[int]]:
        """(the newest step that is not corrupt, the corrupt steps newer than it). Raises CheckpointError if there are
        steps but every one is corrupt."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            if self._problem(step) is None:
                return step, steps[:i]
        if steps:
            details = "; ".join(f"step {s}: {self._problems[s]}" for s in steps)
            raise CheckpointError(f"every checkpoint in {self.directory} is corrupt ({details}). Nothing was modified.")
        return None, []

    def _set_aside_corrupt_steps(self) -> None:
        """Moves the corrupt steps newer than the newest good one to ``<step>.corrupt``. Process 0 decides and moves;
        the other processes wait for it, then list the steps again (all see the same files)."""
        error = None
        if jax.process_index() == 0:
            try:
                good, corrupt = self._newest_good_step()
            except CheckpointError as e:  # every step corrupt: nothing is moved; every process raises it below
                error, corrupt = e, []
            for step in corrupt:
                aside = _set_aside_path(self.directory, step)
                os.rename(os.path.join(self.directory, str(step)), aside)
                self._warned.add(step)
                logging.warning(
                    "checkpoint step %d in %s is corrupt (%s); moved it to %s, resuming from step %d",
                    step,
                    self.directory,
                    self._problems[step],
                    os.path.basename(aside),
                    good,
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ocr_jax_set_aside_corrupt_steps:{self.directory}")
        if error is not None:
            raise error
        self._manager.reload()

    def latest_step(self) -> int | None:
        """The newest step that is not corrupt (newer corrupt ones are skipped with one warning each); None if there are
        no steps. Raises CheckpointError if every step is corrupt."""
        good, corrupt = self._newest_good_step()
        for step in corrupt:
            if step not in self._warned:
                self._warned.add(step)
                logging.warning(
                    "checkpoint step %d in %s is corrupt (%s); using step %d",
                    step,
                    self.directory,
                    self._problems[step],
                    good,
                )
        return good

    def all_steps(self) -> list[int]:
        """The steps that can be restored: finished and not corrupt (each verified once)."""
        return [s for s in self._manager.all_steps() if self._problem(s) is None]

    def _check_step(self, step: int | None) -> int:
        """``step`` (default: the latest good one), checked to exist and not to be corrupt (CheckpointError)."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise CheckpointError(f"no checkpoint to restore in {self.directory}")
        if step in self._manager.all_steps() and self._problem(step) is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupt ({self._problems[step]}); "
                f"good steps: {self.all_steps()}. Nothing was modified."
            )
        return step

    def _verified(self, step: int) -> bool:
        """True if step ``step`` has a manifest its files match (so a failed restore cannot be a damaged file)."""
        return self._problem(step) is None and os.path.exists(os.path.join(self.directory, str(step), MANIFEST))

    def save(self, state: TrainState, *, force: bool = True) -> int:
        """Saves ``state`` as step ``state.step`` (rotating out old steps) and writes its manifest; returns the step.

        Raises OSError (e.g. disk full) or CheckpointError; the steps saved before are left as they were."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step  # already saved (e.g. periodic save followed by the final save at the same step)
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state.to_dict()), force=force)
            self._manager.wait_until_finished()
        except OSError:
            raise
        except Exception as e:  # orbax and tensorstore raise many types, e.g. ValueError for a full disk.
            raise CheckpointError(
                f"could not save checkpoint step {step} to {self.directory}: {_detail(e)}. The steps "
                f"saved before ({self._manager.all_steps()}) were not modified."
            ) from e
        if jax.process_index() == 0:
            write_manifest(os.path.join(self.directory, str(step)))
        self._problems[step] = None
        return step

    def restore(self, like: TrainState, step: int | None = None) -> TrainState:
        """Restores ``step`` (default: the latest good one) into the structure, shapes, dtypes and shardings of
        ``like``. Raises CheckpointError if it is corrupt or does not fit ``like``."""
        step = self._check_step(step)

        def abstract(x):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

        target = jax.tree.map(abstract, like.to_dict())
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many types (FileNotFoundError, ValueError, tensorstore errors).
            if self._verified(step):
                hint = (
                    "Its files match their sha256 manifest, so the checkpoint is intact but does not fit the state "
                    "this config builds (another model size or structure?)."
                )
            else:
                hint = (
                    "If this checkpoint is damaged, move it away to resume from an older step, or choose another "
                    "--workdir."
                )
            raise CheckpointError(
                f"could not restore checkpoint step {step} from {self.directory}: {_detail(e)}\n"
                f"The checkpoint directory was not modified. {hint}"
            ) from e
        return TrainState(**restored)

    def restore_items(self, target: dict[str, Any], step: int | None = None) -> dict[str, Any]:
        """Restores only the top-level items of the saved `TrainState` named in `target` (e.g. ``{"params": ...}``),
        into its structure, shapes, dtypes and shardings (arrays or `jax.ShapeDtypeStruct` with a sharding); the other
        items (optimiser states, ...) are not read, so no optimiser is needed. For inference (`ocr_jax.api.load_run`).

        Raises CheckpointError if there is no such step, it is corrupt, or the items do not match the checkpoint
        (missing keys, other shapes)."""
        step = self._check_step(step)
        if step not in self.all_steps():
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; steps saved: {self.all_steps()}")

        def abstract(x):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

        target = jax.tree.map(abstract, dict(target))
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
        try:
            return self._manager.restore(step, args=args)
        except Exception as e:  # orbax raises many types (KeyError, ValueError, tensorstore errors).
            raise CheckpointError(
                f"could not restore {sorted(target)} of checkpoint step {step} from {self.directory}: {_detail(e)}"
            ) from e

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

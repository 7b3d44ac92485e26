"""`train_and_evaluate(config, workdir)`: the training loop, one linear function to read top to bottom.

Config fields used here (see ocr_jax/configs/toy_vae.py for a complete example):

    task, task_module, task_config        which Task to build (ocr_jax.training.tasks; the tasks are in ocr_jax.tasks)
    seed, global_batch_size, num_steps
    optimizers.<group>                    one optimiser config per parameter group (ocr_jax.training.optimizers)
    log_every, eval_every                 in steps; 0 disables evaluation
    checkpoint.every, checkpoint.max_to_keep, checkpoint.restore_from (optional: start from another run's dir or its
                          checkpoints/ dir)
    headline_metric (optional; default task.headline_metric), progress_bar (bool)
    stop_when (optional): {metric, at_least}: stop (after saving a checkpoint) at the first periodic evaluation whose
                          scalar ``metric`` (e.g. "eval/count_accuracy") is >= ``at_least``
    stop_after_seconds (optional): save a checkpoint and return once this much wall-clock time has passed in the
                          loop, so a long run is a sequence of bounded commands (rerun the same one to continue)
    allow_config_change (optional, default False): resume although fields outside `RESUMABLE_FIELDS` differ from the
                          run's config.json

What protects a run (docs/training.md): the config is checked before anything is written; one process trains in a
workdir at a time (`writers.workdir_lock`); a resumed run must have the config its checkpoints were trained with,
up to `RESUMABLE_FIELDS` and task-config fields added since the run started that keep their task default
(`is_added_default`); checkpoints are verified against their sha256 manifests before they are restored
(`checkpoint.Checkpointer`); config.json is written only once the launch has restored its state.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import sys
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from ocr_jax.training import mesh as mesh_lib
from ocr_jax.training import tasks
from ocr_jax.training.checkpoint import Checkpointer, CheckpointError, RunSafetyError
from ocr_jax.training.optimizers import make_optimizers
from ocr_jax.training.train_step import TrainState, init_train_state, make_train_step, step_key
from ocr_jax.training.writers import MetricWriter, StopRequest, local_copy, split_eval_results, to_host, workdir_lock

# Fields that may differ between a run's config.json and the config that resumes it: they decide how long to train,
# what to log and how often to save or evaluate, not what the checkpoints hold or how the next step computes.
RESUMABLE_FIELDS = (
    "num_steps",
    "stop_after_seconds",
    "stop_when",
    "progress_bar",
    "headline_metric",
    "log_every",
    "eval_every",
    "checkpoint.every",
    "checkpoint.max_to_keep",
    "checkpoint.restore_from",
    "allow_config_change",
    # Computation only (the same values): unrolling a model's scans trades compile time for speed; decoding only the
    # present glimpses skips work whose result is multiplied by zero.
    "task_config.model.scan_unroll",
    "task_config.model.decode_capacities",
    "task_config.model.decode_remat",
    "task_config.model.conv_implementation",
)


class NonFiniteError(FloatingPointError):
    """Raised when a step produced NaN/Inf; the last good state and the offending batch have been saved."""


# ---- Run safety: pure checks made before a launch writes anything. ----------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def config_problems(config: ml_collections.ConfigDict, device_count: int) -> list[str]:
    """What is wrong with the loop's fields of ``config`` (empty if nothing): each a ``field=value: requirement``."""
    ckpt = config.get("checkpoint") or {}
    problems = []

    def need(ok: bool, field: str, value: Any, requirement: str) -> None:
        if not ok:
            problems.append(f"{field}={value!r}: {requirement}")

    batch = config.get("global_batch_size")
    need(
        _is_int(batch) and batch >= 1 and batch % device_count == 0,
        "global_batch_size",
        batch,
        f"must be an integer >= 1 divisible by the {device_count} devices",
    )
    num_steps = config.get("num_steps")
    need(_is_int(num_steps) and num_steps >= 0, "num_steps", num_steps, "must be an integer >= 0")
    log_every = config.get("log_every")
    need(_is_int(log_every) and log_every >= 1, "log_every", log_every, "must be an integer >= 1")
    eval_every = config.get("eval_every")
    need(
        _is_int(eval_every) and eval_every >= 0, "eval_every", eval_every, "must be an integer >= 0 (0: no evaluation)"
    )
    every = ckpt.get("every")
    need(_is_int(every) and every >= 1, "checkpoint.every", every, "must be an integer >= 1")
    keep = ckpt.get("max_to_keep")
    need(
        keep is None or (_is_int(keep) and keep >= 1),
        "checkpoint.max_to_keep",
        keep,
        "must be an integer >= 1 (or None: keep every checkpoint)",
    )
    seconds = config.get("stop_after_seconds")
    need(
        seconds is None or (_is_number(seconds) and seconds >= 0),
        "stop_after_seconds",
        seconds,
        "must be a number >= 0 (0 or None: no time limit)",
    )
    stop_when = config.get("stop_when")
    if stop_when:
        need(
            isinstance(stop_when.get("metric"), str) and _is_number(stop_when.get("at_least")),
            "stop_when",
            stop_when,
            "needs metric (an evaluation scalar's name) and at_least (a number)",
        )
        need(
            _is_int(eval_every) and eval_every >= 1,
            "eval_every",
            eval_every,
            "must be >= 1 with stop_when (it is checked at the periodic evaluations)",
        )
    return problems


_ABSENT = object()


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted path, old value, new value)`` for every leaf that differs between two JSON-like nested dicts, sorted;
    a field present in only one of them has the value ``_ABSENT`` in the other. A group present in only one is
    compared leaf by leaf with an empty one (so an added empty group is no change)."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        a_group, b_group = isinstance(a, Mapping), isinstance(b, Mapping)
        if (a_group or b_group) and (a_group or a is _ABSENT) and (b_group or b is _ABSENT):
            changes += config_changes(a if a_group else {}, b if b_group else {}, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def is_resumable_field(path: str) -> bool:
    """Whether the field at dotted ``path`` may change when a run resumes (it or a parent is in RESUMABLE_FIELDS)."""
    return any(path == f or path.startswith(f + ".") for f in RESUMABLE_FIELDS)


def task_defaults(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """The task config defaults of the run's task module (its ``default_task_config()``, JSON-like), or {} if the
    module has none or cannot be imported."""
    module = tasks.task_module_name(config_json.get("task_module"))
    if not module:
        return {}
    try:
        defaults = getattr(importlib.import_module(module), "default_task_config", None)
    except ImportError:
        return {}
    return json.loads(defaults().to_json_best_effort()) if defaults else {}


def is_added_default(change: tuple[str, Any, Any], defaults: Mapping[str, Any]) -> bool:
    """Whether a change is a task-config field that the run's config.json lacks (it did not exist when the run
    started) and that now has its task default: the run was trained with that default, so it is no change."""
    path, old, new = change
    if old is not _ABSENT or not path.startswith("task_config."):
        return False
    value: Any = defaults
    for key in path.removeprefix("task_config.").split("."):
        if not isinstance(value, Mapping) or key not in value:
            return False
        value = value[key]
    return value == new


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """``"a.b: 1 -> 2, c: (absent) -> 'x'"``, each value cut to 60 characters."""

    def show(v):
        text = "(absent)" if v is _ABSENT else json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(f"{path}: {show(a)} -> {show(b)}" for path, a, b in changes)


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as config.json holds it (so the two compare field by field)."""
    return json.loads(config.to_json_best_effort())


def read_run_config(workdir: str) -> dict[str, Any] | None:
    """The run's ``config.json``, None if there is none. Raises RunSafetyError if it is unreadable."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise RunSafetyError(
            f"{path} is not valid JSON ({e}), so this launch cannot check that its config is the "
            "run's. Nothing was changed. Restore the file, or set config.allow_config_change=True to "
            "overwrite it."
        ) from e
    return config if isinstance(config, dict) else {}


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``<workdir>/config.json`` atomically (a temporary file renamed into place)."""
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)


def error_line(e: BaseException) -> str:
    """An error as the one line a command prints: its message and notes, with line breaks and runs of spaces made one
    space (for RunSafetyError, NonFiniteError and OSError, whose messages say what happened and what to do)."""
    return " ".join(" ".join([str(e), *getattr(e, "__notes__", ())]).split())


def _resume_note(checkpointer: Checkpointer) -> str:
    """Where a run that stopped on an I/O error can resume from (for the error message)."""
    try:
        latest = checkpointer.latest_step()
    except Exception as e:  # reporting must not hide the original error
        return f"Could not list the checkpoints in {checkpointer.directory} either ({type(e).__name__}: {e})."
    if latest is None:
        return "No checkpoint had been saved yet."
    return (
        f"The checkpoints saved so far were not modified; the latest is step {latest} in {checkpointer.directory}: "
        "rerun to resume from it."
    )


def checkpoints_dir_of(path: str) -> str:
    """A run directory's ``checkpoints/`` if it has one, else ``path`` itself (already a checkpoints directory, or a
    path that the Checkpointer reports as missing)."""
    inner = os.path.join(path, "checkpoints")
    return inner if os.path.isdir(inner) else path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains `config.task` for `config.num_steps` steps, resuming from ``<workdir>/checkpoints`` if present.

    Returns the final state. Raises KeyboardInterrupt after saving a checkpoint if stopped by SIGINT/SIGTERM, and
    NonFiniteError (after saving the last good checkpoint and the batch) if a step is not finite. Raises RunSafetyError
    (CheckpointError is one) without writing anything if the config is invalid, another process holds the workdir,
    the config differs from the run's config.json or no checkpoint can be restored; an OSError (e.g. a full disk)
    carries a note naming the latest checkpoint.
    """
    workdir = os.path.abspath(workdir)
    problems = config_problems(config, jax.device_count())
    if problems:
        raise RunSafetyError(f"invalid config: {'; '.join(problems)}. Nothing was written to {workdir}.")
    with workdir_lock(workdir):
        checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.checkpoint.max_to_keep)
        try:
            return _train_and_evaluate(config, workdir, checkpointer)
        except OSError as e:
            e.add_note(_resume_note(checkpointer))
            raise
        finally:
            checkpointer.close()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, checkpointer: Checkpointer) -> TrainState:
    """The loop of `train_and_evaluate`, with the config checked, the workdir locked and its checkpoints open."""
    # ---- Where we are: processes, devices, the data mesh. ------------------------------------------------------
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    mesh = mesh_lib.make_data_mesh()
    batch_size = config.global_batch_size

    # ---- May this launch continue the run's checkpoints? Only with the config they were trained with. ----------
    resume_step = checkpointer.latest_step()  # the newest good one (corrupt newer ones were moved aside)
    changes = []
    if resume_step is not None:
        run_config = read_run_config(workdir)
        if run_config is None:
            logging.warning(
                "%s has checkpoints but no config.json: cannot check that this config is the run's", workdir
            )
        else:
            defaults = task_defaults(config_as_json(config))
            changes = [
                c
                for c in config_changes(
                    tasks.upgraded_run_config(run_config), tasks.upgraded_run_config(config_as_json(config))
                )
                if not is_resumable_field(c[0]) and not is_added_default(c, defaults)
            ]
    if changes:
        if resume_step >= config.num_steps:
            logging.warning(
                "this config differs from %s/config.json in %s; nothing to train, so nothing is changed",
                workdir,
                describe_changes(changes),
            )
        elif config.get("allow_config_change", False):
            logging.warning(
                "resuming %s at step %d with config changes (allow_config_change=True): %s",
                workdir,
                resume_step,
                describe_changes(changes),
            )
        else:
            raise RunSafetyError(
                f"refusing to resume {workdir} at step {resume_step}: "
                "this config differs from the run's config.json in "
                f"{describe_changes(changes)}. Nothing was changed. Resume with the run's config (config.json), choose "
                "another --workdir, or set config.allow_config_change=True to continue the run with the new values."
            )

    # ---- The model (a Task) and its optimisers, one per parameter group. ---------------------------------------
    task = tasks.make_task(config)
    optimizers, schedules = make_optimizers(config.optimizers)
    headline = config.get("headline_metric") or getattr(task, "headline_metric", None)

    def batches_from(step: int):
        return task.train_batches(
            seed=config.seed,
            start_step=step,
            global_batch_size=batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    # ---- State: initialise (already replicated over the mesh), then resume from the latest checkpoint. --------
    state = init_train_state(task, optimizers, config.seed, next(batches_from(0)), mesh)
    ckpt_cfg = config.checkpoint
    if resume_step is not None:
        try:
            state = checkpointer.restore(state, resume_step)
        except CheckpointError as e:
            if not changes:
                raise
            raise CheckpointError(
                f"{e} This config differs from the run's config.json in {describe_changes(changes)}."
            ) from e.__cause__
    elif ckpt_cfg.get("restore_from"):
        # Warm start from another run; it must exist and be readable (CheckpointError otherwise).
        source = Checkpointer(checkpoints_dir_of(ckpt_cfg.restore_from), must_exist=True)
        try:
            state = source.restore(state)
        finally:
            source.close()
    start_step = int(to_host(state.step))
    if start_step >= config.num_steps:
        if is_main:
            print(
                f"{workdir} is already at step {start_step} (num_steps={config.num_steps}): nothing to train",
                file=sys.stderr,
            )
        return state
    if is_main:  # only now: config.json describes the checkpoints this launch continues
        write_run_config(workdir, config)

    # ---- The train step: compiled once per batch shape, batch sharded over "data", state donated. ---------------
    # Compiled ahead of time when a batch shape is first seen, so compile time is measured and logged. A task whose
    # batches change shape (SQAIR's curriculum slices sequences to the current length) gets one compiled step per shape.
    batches = batches_from(start_step)
    next_key = jax.jit(step_key, out_shardings=mesh_lib.replicated(mesh))
    jitted_step = make_train_step(task, optimizers, mesh=mesh, schedules=schedules)
    compiled_steps: dict[Any, Any] = {}
    # Seconds of compilation, evaluation and checkpointing since the last log: not training, so kept out of the
    # logged steps_per_sec (compile time is logged on its own as compile_seconds).
    paused = [0.0]

    def train_step(state, sharded_batch, key):
        """The compiled step for this batch's shapes (compiled and its time logged the first time they are seen)."""
        shapes = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(sharded_batch))
        if shapes not in compiled_steps:
            t0 = time.perf_counter()
            compiled_steps[shapes] = jitted_step.lower(state, sharded_batch, key).compile()
            seconds = time.perf_counter() - t0
            paused[0] += seconds
            writer.write_scalars(int(to_host(state.step)), {"compile_seconds": seconds})
        return compiled_steps[shapes](state, sharded_batch, key)

    def outside_training(fn, *args):
        """``fn(*args)`` with its time (after the pending steps finish) kept out of steps_per_sec."""
        jax.block_until_ready(state.params)
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            paused[0] += time.perf_counter() - t0

    # ---- Writers: metrics.jsonl + TensorBoard on process 0, progress bar. ---------------------------------------
    writer = MetricWriter(workdir)  # also used by train_step above, which first runs in the loop below
    progress = tqdm.tqdm(
        total=config.num_steps,
        initial=start_step,
        disable=not (is_main and config.progress_bar),
        dynamic_ncols=True,
        unit="step",
    )
    evaluate = getattr(task, "evaluate", None)

    stop_when = config.get("stop_when")

    def run_eval(step: int) -> bool:
        """Runs the eval hook; True if ``stop_when`` is met."""
        if evaluate is None:
            return False
        scalars, images = split_eval_results(
            evaluate(local_copy(state.params), local_copy(state.model_state), step, workdir)
        )
        writer.write_scalars(step, scalars)
        writer.write_images(step, images)
        if not stop_when:
            return False
        if stop_when.metric not in scalars:
            checkpointer.save(state)  # lose nothing: the error surfaces only at the first evaluation
            raise KeyError(f"stop_when.metric={stop_when.metric!r} is not an evaluation scalar; have {sorted(scalars)}")
        return scalars[stop_when.metric] >= stop_when.at_least

    # ---- The loop. ----------------------------------------------------------------------------------------------
    step = start_step
    last_log_time, last_log_step = time.perf_counter(), start_step
    loop_start, time_budget = time.perf_counter(), config.get("stop_after_seconds")
    try:
        with StopRequest().installed() as stop:
            while step < config.num_steps:
                if stop:  # Ctrl-C / SIGTERM arrived during the previous step: save, then exit.
                    checkpointer.save(state)
                    raise KeyboardInterrupt(
                        f"{stop.signal_name} at step {step}; checkpoint saved to "
                        f"{checkpointer.directory}. Rerun the same command to resume."
                    )
                local_batch = next(batches)
                state, metrics = train_step(
                    state, mesh_lib.shard_batch(local_batch, mesh), next_key(state.rng, state.step)
                )

                # NaN/Inf: the step returned the unchanged (last good) state; keep it and the batch, then stop.
                if not bool(to_host(metrics["finite"])):
                    saved = checkpointer.save(state)
                    path = os.path.join(workdir, f"nonfinite_batch_step{step}_process{process_index}.npz")
                    np.savez(path, **{k: np.asarray(v) for k, v in local_batch.items()})
                    bad = sorted(k for k, v in to_host(metrics).items() if not np.all(np.isfinite(v)))
                    raise NonFiniteError(
                        f"non-finite values at step {step} in {bad}; the update was not applied. Saved the "
                        f"last good state as checkpoint {saved} and this process's batch to {path}."
                    )
                step += 1
                progress.update(1)

                if step % config.log_every == 0 or step == config.num_steps:
                    host = to_host(metrics)
                    now = time.perf_counter()
                    host["steps_per_sec"] = (step - last_log_step) / max(now - last_log_time - paused[0], 1e-9)
                    last_log_time, last_log_step, paused[0] = now, step, 0.0
                    writer.write_scalars(step, {k: v for k, v in host.items() if k != "finite"})
                    if headline in host:
                        progress.set_postfix({headline: f"{float(host[headline]):.4g}"})
                if config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
                    if outside_training(run_eval, step):
                        logging.info("step %d: %s >= %s, stopping early", step, stop_when.metric, stop_when.at_least)
                        writer.write_scalars(step, {"stopped_early": 1.0})
                        break
                if step % ckpt_cfg.every == 0:
                    outside_training(checkpointer.save, state)
                if time_budget and time.perf_counter() - loop_start >= time_budget:
                    logging.info(
                        "step %d: stop_after_seconds=%s reached; saving a checkpoint (rerun to continue)",
                        step,
                        time_budget,
                    )
                    writer.write_scalars(step, {"stopped_on_time": 1.0})
                    break

            checkpointer.save(state)  # on normal or early exit (no-op if the last periodic save was this step).
    finally:
        progress.close()
        writer.close()
    return state


def restore_params(config: ml_collections.ConfigDict, workdir: str, task, example_batch) -> tuple[Any, int]:
    """The parameters of the latest checkpoint in ``<workdir>/checkpoints`` (on the host) and its step.

    ``example_batch`` (one global batch, numpy) gives the shapes the state is initialised with before restoring.
    Raises CheckpointError if the directory is missing or holds no readable checkpoint.
    """
    optimizers, _ = make_optimizers(config.optimizers)
    state = init_train_state(task, optimizers, config.seed, example_batch, mesh_lib.make_data_mesh())
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), must_exist=True)
    try:
        state = checkpointer.restore(state)
    finally:
        checkpointer.close()
    return jax.device_get(state.params), int(jax.device_get(state.step))

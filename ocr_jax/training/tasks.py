"""The Task interface between a model and the training loop, and the registry of tasks by name.

A task module (ocr_jax/tasks/) plugs a model into `train_and_evaluate` by registering a factory::

    # ocr_jax/tasks/air.py
    from ocr_jax.training.tasks import register
    class AIRTask: ...  # init, loss, train_batches (and an evaluate hook)
    register("air", AIRTask)

and a config names it (the module is imported lazily, so the training package never imports the tasks)::

    config.task = "air"
    config.task_module = "ocr_jax.tasks.air"
    config.task_config = ml_collections.ConfigDict({...})  # passed to the factory

Task modules that moved keep working under their old names in the configs of existing runs (`RENAMED_TASK_MODULES`),
and a task module whose config layout changed may define ``upgrade_task_config(task_config: dict) -> dict``, which
`upgraded_run_config` applies to an existing run's config.json (so the run resumes and loads under the new layout).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import jax
import ml_collections

PyTree = Any
Scalar = Any  # a 0-d jax.Array


@runtime_checkable
class Task(Protocol):
    """What the training loop needs from a model (docs/DESIGN.md, "Training interface").

    Required: `init`, `loss`, `train_batches`. Optional: `evaluate(params, model_state, step, workdir) -> dict | None`
    (see `evaluate_hook`) and the attribute `headline_metric` (name of the metric shown in the progress bar).
    """

    def init(self, key: jax.Array, batch: PyTree) -> tuple[dict[str, PyTree], PyTree]:
        """Returns ``(params, model_state)``; params is a dict of parameter groups ({"generative": ..., ...}).

        `batch` is a process-local numpy batch (for shapes only). model_state may be ``{}``.
        """
        ...

    def loss(
        self, params: dict[str, PyTree], model_state: PyTree, batch: PyTree, key: jax.Array, step: jax.Array
    ) -> tuple[dict[str, Scalar], tuple[dict[str, Scalar], PyTree]]:
        """Returns ``(surrogates, (metrics, new_model_state))``.

        ``surrogates[g]`` is a scalar surrogate loss whose gradient w.r.t. ``params[g]`` is the gradient estimator for
        group g (its gradient w.r.t. other groups is ignored). `batch` is the global batch (sharded over devices);
        reduce over it with means so the result does not depend on the device count. metrics: dict of scalars.
        """
        ...

    def train_batches(
        self, *, seed: int, start_step: int, global_batch_size: int, process_index: int, process_count: int
    ) -> Iterator[PyTree]:
        """Yields this process's share (``global_batch_size // process_count`` rows) of the global batches for steps
        ``start_step, start_step + 1, ...``. Must be a deterministic function of (seed, step) so that a resumed run sees
        the same data as an uninterrupted one; `ocr_jax.data.deterministic_batches` does this for arrays."""
        ...


# Task modules that were moved, old name -> new name. The config.json of a run names the task module it was trained
# with, so runs made before a move (e.g. runs/sqair_pen, issue #14: the tasks left ocr_jax/models and
# ocr_jax/training for ocr_jax/tasks) still load and resume. Only ever add to this table.
RENAMED_TASK_MODULES = {
    "ocr_jax.models.air_task": "ocr_jax.tasks.air",
    "ocr_jax.models.sqair_task": "ocr_jax.tasks.sqair",
    "ocr_jax.training.toy_vae": "ocr_jax.tasks.toy_vae",
}


def task_module_name(module: str | None) -> str | None:
    """The current name of task module `module` (`RENAMED_TASK_MODULES`); other names (and None) unchanged."""
    return RENAMED_TASK_MODULES.get(module, module)


def upgraded_run_config(config_json: dict[str, Any]) -> dict[str, Any]:
    """An existing run's config.json (JSON-like) as the current code names it: ``task_module`` under its current name
    (`task_module_name`) and ``task_config`` through the task module's ``upgrade_task_config`` if it defines one (a
    module that cannot be imported leaves the task config as it is)."""
    if config_json.get("task_module") is None:
        return config_json
    module = task_module_name(config_json["task_module"])
    out = {**config_json, "task_module": module}
    try:
        upgrade = getattr(importlib.import_module(module), "upgrade_task_config", None)
    except ImportError:
        upgrade = None
    if upgrade is not None and isinstance(out.get("task_config"), dict):
        out["task_config"] = upgrade(out["task_config"])
    return out


TaskFactory = Callable[[ml_collections.ConfigDict], Task]
_REGISTRY: dict[str, TaskFactory] = {}


def register(name: str, factory: TaskFactory, *, overwrite: bool = False) -> TaskFactory:
    """Registers `factory(task_config) -> Task` under `name`. Re-registering the same factory is a no-op."""
    if name in _REGISTRY and _REGISTRY[name] is not factory and not overwrite:
        raise ValueError(f"task {name!r} is already registered to {_REGISTRY[name]!r}")
    _REGISTRY[name] = factory
    return factory


def registered() -> list[str]:
    return sorted(_REGISTRY)


def make_task(config: ml_collections.ConfigDict) -> Task:
    """Builds the task named by ``config.task``, importing ``config.task_module`` (its current name,
    `task_module_name`) first if given."""
    module = task_module_name(config.get("task_module"))
    if module:
        importlib.import_module(module)
    name = config.task
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown task {name!r}; registered tasks: {registered()}. Set config.task_module to the module "
            "that calls ocr_jax.training.tasks.register for it."
        )
    task = _REGISTRY[name](config.get("task_config", ml_collections.ConfigDict()))
    missing = [m for m in ("init", "loss", "train_batches") if not callable(getattr(task, m, None))]
    if missing:
        raise TypeError(f"task {name!r} ({type(task).__name__}) lacks required method(s) {missing}")
    return task

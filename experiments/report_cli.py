"""What the report scripts share. The command line (:func:`run_report`): ``--workdir=DIR [--config=NAME[:variant]]``
(plus optional string flags) -> ``report(config, workdir, **optional)``, whose JSON-able result is printed. Without
``--config`` the run's own config (``<workdir>/config.json``) is used; with it, the given config (e.g. to score a run
with other evaluation settings: ``--config=sqair_mnist:cpu --config.task_config.eval.batch_size=100``). And for the
sequence tasks' reports (SQAIR, VRNN): the run's parameters (:func:`restore_sequence_params`) and the training
sequences of the addition experiment (:func:`addition_train_data`)."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


def run_report(
    report: Callable[..., dict],
    *,
    config_help: str,
    argv=None,
    optional_flags: dict[str, str] | None = None,
    hidden_keys=("confusion",),
    text_key: str | None = None,
) -> None:
    """Parses the flags, runs ``report`` and prints its result as JSON without ``hidden_keys``; the string under
    ``text_key`` (e.g. a markdown table) is printed as it is after the JSON."""
    from absl import app, flags, logging

    from ocr_jax import configs

    config_flag = configs.define_config_flag("config", None, config_help)
    workdir_flag = flags.DEFINE_string("workdir", None, "the run's directory")
    extra = {name: flags.DEFINE_string(name, None, help) for name, help in (optional_flags or {}).items()}
    flags.mark_flags_as_required(["workdir"])
    hidden = set(hidden_keys) | ({text_key} if text_key else set())

    def run(_):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
        config = config_flag.value
        if config is None:  # the run describes itself
            from ocr_jax.api import load_config

            config = load_config(workdir_flag.value)
        results = report(config, workdir_flag.value, **{k: f.value for k, f in extra.items()})
        print(json.dumps({k: v for k, v in results.items() if k not in hidden}, indent=1))
        if text_key:
            print(results[text_key])

    app.run(run, argv=[sys.argv[0], *(argv or sys.argv[1:])])


def restore_sequence_params(config, workdir: str, task) -> tuple[Any, int]:
    """The parameters of the latest checkpoint of a sequence task's run (``ocr_jax.tasks.sqair.SequenceTask``), on
    the device, and its step; the state is initialised with the first global batch of the task's test sequences."""
    import jax

    from ocr_jax.training import train

    example_batch = {"frames": task.test_data["frames"][: config.global_batch_size]}
    params, step = train.restore_params(config, workdir, task, example_batch)
    return jax.device_put(params), step  # host (numpy) -> device arrays, once


def addition_train_data(task) -> dict:
    """The training sequences of the addition experiment (§5.D.4): the first ``eval.addition_train_sequences`` of the
    task's training split (``ocr_jax.tasks.sqair.load_sequences``, seed ``data_seed``)."""
    from ocr_jax.tasks.sqair import load_sequences

    cfg = task.config
    return load_sequences(cfg, "train", cfg.eval.addition_train_sequences, cfg.data_seed)

"""The command line shared by the report scripts: ``--config=FILE[:variant] --workdir=DIR`` (plus optional string
flags) -> ``report(config, workdir, **optional)``, whose JSON-able result is printed."""

from __future__ import annotations

import json
import sys
from typing import Callable


def run_report(report: Callable[..., dict], *, config_help: str, argv=None,
               optional_flags: dict[str, str] | None = None, hidden_keys=("confusion",),
               text_key: str | None = None) -> None:
    """Parses the flags, runs ``report`` and prints its result as JSON without ``hidden_keys``; the string under
    ``text_key`` (e.g. a markdown table) is printed as it is after the JSON."""
    from absl import app, flags, logging
    from ocr_jax import configs

    config_flag = configs.define_config_flag("config", None, config_help)
    workdir_flag = flags.DEFINE_string("workdir", None, "the run's directory")
    extra = {name: flags.DEFINE_string(name, None, help) for name, help in (optional_flags or {}).items()}
    flags.mark_flags_as_required(["config", "workdir"])
    hidden = set(hidden_keys) | ({text_key} if text_key else set())

    def run(_):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
        results = report(config_flag.value, workdir_flag.value, **{k: f.value for k, f in extra.items()})
        print(json.dumps({k: v for k, v in results.items() if k not in hidden}, indent=1))
        if text_key:
            print(results[text_key])

    app.run(run, argv=[sys.argv[0], *(argv or sys.argv[1:])])

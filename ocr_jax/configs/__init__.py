"""The experiment configs, one module per experiment, each with ``get_config(variant)`` and a ``VARIANTS`` tuple.

A config is named on the command line as ``NAME[:VARIANT]`` (``air_multi_mnist``, ``air_multi_mnist:quick``,
``air_multi_mnist:nvil+quick``) or, as before, by the path of a config file (``path/to/my_config.py[:VARIANT]``), so
a config of one's own needs no change to the package. ``resolve`` turns either into a file path for
``ml_collections.config_flags``; ``define_config_flag`` defines a ``--config`` flag that accepts both and lists the
configs and their variants in its help; ``get_config`` loads one in Python.

Old paths ``experiments/configs/NAME.py`` (where these modules lived before they moved into the package) resolve
to the packaged ``NAME``, so commands written before the move keep working.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import types

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LEGACY_DIR = os.path.join("experiments", "configs")


def names() -> list[str]:
    """The packaged configs, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([_PACKAGE_DIR]) if not m.name.startswith("_"))


def module(name: str) -> types.ModuleType:
    """The packaged config module ``name`` (ValueError naming the available ones if there is none)."""
    if name not in names():
        raise ValueError(f"unknown config {name!r}; available: {', '.join(names())} (or give a path to a .py file)")
    return importlib.import_module(f"{__name__}.{name}")


def variants(name: str) -> tuple[str, ...]:
    """The named variants of a packaged config (its ``VARIANTS``), without the default (no variant)."""
    return tuple(module(name).VARIANTS)


def combinable(name: str) -> bool:
    """Whether the config's variants combine with '+' (its ``COMBINABLE_VARIANTS``)."""
    return bool(getattr(module(name), "COMBINABLE_VARIANTS", False))


def optimizer(
    name: str, learning_rate: float, boundaries_and_scales: dict | None = None, **kw
) -> ml_collections.ConfigDict:
    """An optimiser group's config (``ocr_jax.training.optimizers``): ``name`` ("adam", "rmsprop" with TF1 semantics,
    as the reference AIR/SQAIR code: decay 0.9, momentum 0.9, eps 1e-10, mean-square accumulator initialised to 1;
    "sgd"), a constant learning rate or ``piecewise_constant`` with ``boundaries_and_scales`` ({step: multiplier}),
    no gradient clipping unless ``clip_global_norm`` is set (a float placeholder, so that the command line can set
    it), and any other field in ``kw``."""
    cfg = dict(
        optimizer=name,
        learning_rate=learning_rate,
        schedule="constant",
        clip_global_norm=config_dict.placeholder(float),
    )
    if name == "rmsprop":
        cfg.update(decay=0.9, eps=1e-10, momentum=0.9, initial_scale=1.0)
    if boundaries_and_scales is not None:
        cfg.update(schedule="piecewise_constant", boundaries_and_scales=dict(boundaries_and_scales))
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def rmsprop(learning_rate: float, boundaries_and_scales: dict | None = None) -> ml_collections.ConfigDict:
    """:func:`optimizer` ``"rmsprop"`` (TF1 semantics, as the reference AIR/SQAIR code)."""
    return optimizer("rmsprop", learning_rate, boundaries_and_scales)


def quick_sequences(config: ml_collections.ConfigDict, num_steps: int) -> None:
    """The ``quick`` variant shared by the moving multi-MNIST sequence configs (``sqair_mnist``, ``vrnn_mnist``), in
    place: synthetic blob digits (no download) of 12 pixels on 24×24 canvases, 3 frames, 256 training and 32 test
    sequences, a small evaluation, batch 16, learning rate 1e-3 for θ and φ, and ``num_steps`` steps with frequent
    logs, evaluations and checkpoints. The config adds its model and its own fields."""
    config.task_config.update(
        dict(
            canvas_size=24,
            data="blobs",
            digit_size=12,
            num_frames=3,
            num_train=256,
            num_eval=32,
            eval=dict(
                batch_size=16,
                num_particles=3,
                log_marginal_sequences=8,
                log_marginal_particles=20,
                log_marginal_chunk=10,
                num_pictures=2,
                addition_steps=200,
            ),
        )
    )
    config.global_batch_size = 16
    config.num_steps = num_steps
    config.log_every = 20
    config.eval_every = 100
    config.checkpoint.every = 100
    for group in ("generative", "inference"):
        config.optimizers[group].learning_rate = 1e-3


def check_variant(arg: str | None, known: tuple[str, ...], *, config: str, combine: bool = False) -> set[str]:
    """The set of variants named by ``arg`` ('' or None: none), for a config's ``get_config``; ValueError naming the
    known ones if ``arg`` names another (or combines variants of a config that does not allow it)."""
    chosen = set(filter(None, (arg or "").split("+"))) if combine else ({arg} if arg else set())
    unknown = sorted(chosen - set(known))
    if unknown:
        how = " (combine them with '+')" if combine else ""
        raise ValueError(
            f"unknown variant(s) {unknown} of config {config!r}; variants: {', '.join(known)}{how}, "
            "or none for the default"
        )
    return chosen


def resolve(spec: str) -> str:
    """``NAME[:VARIANT]`` or ``PATH[:VARIANT]`` -> ``FILE[:VARIANT]`` with FILE an existing config file.

    An existing file wins over a packaged name; ``NAME.py`` and the old ``experiments/configs/NAME.py`` name the
    packaged ``NAME``. Anything else is a ValueError that lists the packaged configs.
    """
    path, sep, variant = spec.partition(":")
    if os.path.isfile(path):
        return spec
    name = path[:-3] if path.endswith(".py") else path
    head, base = os.path.split(os.path.normpath(name))
    if head.endswith(_LEGACY_DIR) and base in names():
        name = base  # experiments/configs/NAME.py, from anywhere
    if name in names():
        return os.path.join(_PACKAGE_DIR, f"{name}.py") + sep + variant
    raise ValueError(f"no config file or packaged config {path!r}; packaged configs: {', '.join(names())}")


def get_config(spec: str):
    """Loads ``NAME[:VARIANT]`` (or ``PATH[:VARIANT]``) as ``--config`` would, without command-line overrides."""
    path, _, variant = resolve(spec).partition(":")
    if os.path.dirname(os.path.abspath(path)) == _PACKAGE_DIR:
        return importlib.import_module(f"{__name__}.{os.path.basename(path)[:-3]}").get_config(variant or None)
    file_spec = importlib.util.spec_from_file_location("ocr_jax_config_file", path)
    config_module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(config_module)
    return config_module.get_config(variant or None)


def describe() -> str:
    """One line per packaged config: its name and variants (for --help), and the script that runs it if it is not a
    training-loop config (its ``RUN_WITH``)."""
    lines = []
    for name in names():
        plus = " (combine with '+')" if combinable(name) else ""
        run_with = getattr(module(name), "RUN_WITH", None)
        where = f" [for {run_with}]" if run_with else ""
        lines.append(f"  {name}: {', '.join(variants(name)) or '(no variants)'}{plus}{where}")
    return "\n".join(lines)


def config_help(what: str = "Config") -> str:
    return (
        f"{what}: a packaged config NAME[:VARIANT] or a path to a config file FILE.py[:VARIANT]. Packaged configs "
        f"and their variants (none = the default):\n{describe()}"
    )


def define_config_flag(
    name: str = "config",
    default: str | None = None,
    help_string: str | None = None,
    *,
    lock_config: bool = True,
    flag_values=None,
):
    """``config_flags.DEFINE_config_file`` whose value may also be a packaged config's name (see ``resolve``); its
    help lists the packaged configs and their variants. ``--config.FIELD=VALUE`` overrides work as usual."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    holder = config_flags.DEFINE_config_file(
        name,
        resolve(default) if default else None,
        config_help(help_string or "Config"),
        flag_values=flag_values,
        lock_config=lock_config,
    )
    flag = flag_values[name]
    flag.parser = _ResolvingParser(flag.parser)
    return holder


# Fields of every training config that the training loop reads with these defaults (ocr_jax.training.train), added
# to a packaged or file config that does not set them, so that e.g. ``--config.allow_config_change=True`` or
# ``--config.stop_after_seconds=540`` work from the command line for every config.
RUN_CONTROL_DEFAULTS = {"allow_config_change": False, "stop_after_seconds": 0.0}


class _ResolvingParser(flags.ArgumentParser):
    """Wraps ml_collections' config-file parser: resolves a packaged config's name to its file first."""

    def __init__(self, file_parser: flags.ArgumentParser):
        self._file_parser = file_parser

    def parse(self, argument):
        config = self._file_parser.parse(resolve(argument))
        if isinstance(config, ml_collections.ConfigDict) and "task" in config:  # a training config: run controls
            with config.unlocked():
                for field, default in RUN_CONTROL_DEFAULTS.items():
                    if field not in config:
                        config[field] = default
        return config

    def flag_type(self):
        return self._file_parser.flag_type()

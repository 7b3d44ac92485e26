"""The configs moved into the package: ``ocr_jax/configs/`` (``ocr_jax.configs``). This alias keeps code written
before the move working: ``from experiments.configs import air_multi_mnist`` and
``importlib.import_module("experiments.configs.air_multi_mnist")`` give the packaged modules. New code imports
``ocr_jax.configs``; on the command line a config is named (``--config=air_multi_mnist:quick``)."""

import sys

from ocr_jax import configs as _configs

for _name in _configs.names():
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = _configs.module(_name)

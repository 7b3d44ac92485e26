r"""Command line entry point for training any registered task.

  python -m experiments.main --config=experiments/configs/toy_vae.py:quick --workdir=/tmp/toy_vae \
      [--config.num_steps=1000 --config.optimizers.generative.learning_rate=3e-4 ...]

Multi-process (GPU hosts / TPU pod): run the same command on every host. On Cloud TPU pods and SLURM add
`--multihost` (jax.distributed.initialize() detects the cluster); elsewhere set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID. See docs/training.md.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally with ':variant'.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 brings it back.
  # Before any other JAX call: join the other processes, if any.
  from ocr_jax.training import mesh
  mesh.maybe_initialize_distributed(auto=_MULTIHOST.value or None)

  import jax
  from ocr_jax.training import train
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt as e:
    print(f"\nInterrupted: {e}", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)

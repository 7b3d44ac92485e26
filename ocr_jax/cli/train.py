r"""Trains any registered task from a config: ``ocr-jax-train`` (installed with the package), or from a checkout
``python -m experiments.main`` (the same command).

  ocr-jax-train --config=toy_vae:quick --workdir=/tmp/toy_vae \
      [--config.num_steps=1000 --config.optimizers.generative.learning_rate=3e-4 ...]

--config is a packaged config NAME[:VARIANT] (the list is under --config below) or the path of a config file
FILE.py[:VARIANT]. Rerunning the same command resumes from the latest checkpoint in <workdir>/checkpoints; compiled
train steps are kept in a persistent cache (--compilation_cache), so the resumed run does not compile them again.
TensorBoard logs go to <workdir>/tensorboard (view them with `tensorboard --logdir <workdir>/tensorboard`, from
`pip install 'ocr_jax[tensorboard]'`).

Multi-process (GPU hosts / TPU pod): run the same command on every host. On Cloud TPU pods and SLURM add
--multihost (jax.distributed.initialize() detects the cluster); elsewhere set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID. See docs/training.md.
"""

import sys

from absl import app, flags, logging

from ocr_jax import configs

_CONFIG = configs.define_config_flag("config", None, "Config to train", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard logs.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with cluster auto-detection.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    None,
    "Directory of the persistent XLA compilation cache (a resumed run or another seed of the same config loads its "
    "compiled steps instead of compiling them again); '' or 'none' turns it off. Default: $JAX_COMPILATION_CACHE_DIR "
    "if set, else ~/.cache/ocr_jax/xla (ocr_jax/training/compile_cache.py).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; -v 0 brings it back.
    # Before any other JAX call: join the other processes, if any.
    from ocr_jax.training import mesh

    mesh.maybe_initialize_distributed(auto=_MULTIHOST.value or None)

    import jax

    from ocr_jax.training import compile_cache, train

    cache_dir = compile_cache.enable_for_cli(_COMPILATION_CACHE.value)
    logging.info("compilation cache: %s", cache_dir or "off")

    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except KeyboardInterrupt as e:
        print(f"\nInterrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except (train.RunSafetyError, train.NonFiniteError, OSError) as e:
        # Refused launches, bad checkpoints, NaN/Inf, full disks: one line (the traceback with -v 0).
        logging.info("%s", type(e).__name__, exc_info=True)
        print(f"error: {train.error_line(e)}", file=sys.stderr)
        sys.exit(1)


def run(argv=None) -> None:
    """The console entry point. absl's --help shows the docstring of ``__main__`` and the flags of the script being
    run, which here are neither this module's (a console-script stub or experiments/main.py runs it), so both are
    handed over first."""
    sys.modules["__main__"].__doc__ = __doc__
    for name in ("config", "workdir", "multihost", "compilation_cache"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()

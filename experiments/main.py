r"""Training from a checkout: the same command as the installed ``ocr-jax-train`` (ocr_jax/cli/train.py, where the
flags and main() live, so that a non-editable install has them).

  python -m experiments.main --config=toy_vae:quick --workdir=/tmp/toy_vae \
      [--config.num_steps=1000 --config.optimizers.generative.learning_rate=3e-4 ...]

--config is a packaged config NAME[:VARIANT] or a config file FILE.py[:VARIANT]; --help lists the configs and their
variants. See ocr_jax/cli/train.py and docs/training.md.
"""

from ocr_jax.cli.train import main, run  # noqa: F401  (main: for code that ran experiments.main.main)

if __name__ == "__main__":
    run()

"""Toy VAE with a discrete presence latent (ocr_jax.tasks.toy_vae): a demo and test config for the training loop.

Train (CPU, about a minute for the quick variant):

  ocr-jax-train --config=toy_vae:quick --workdir=/tmp/toy_vae

Full run with an override:

  ocr-jax-train --config=toy_vae --workdir=/tmp/toy_vae_full \
      --config.optimizers.inference.learning_rate=3e-4

Rerunning the same command resumes from the latest checkpoint in <workdir>/checkpoints.
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("quick",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="toy_vae")
    config = ml_collections.ConfigDict()
    config.task = "toy_vae"
    config.task_module = "ocr_jax.tasks.toy_vae"
    config.task_config = ml_collections.ConfigDict(
        dict(image_size=8, hidden=32, latent=4, num_train=1024, num_eval=256, data_seed=0, nvil_decay=0.9)
    )

    config.seed = 0
    config.global_batch_size = 64
    config.num_steps = 5000

    config.optimizers = ml_collections.ConfigDict()
    config.optimizers.generative = configs.rmsprop(1e-3, {3000: 0.3})
    config.optimizers.inference = configs.rmsprop(1e-3, {3000: 0.3})
    # The NVIL baseline has its own objective and a larger, exponentially decayed learning rate.
    config.optimizers.baseline = ml_collections.ConfigDict(
        dict(
            optimizer="adam",
            learning_rate=3e-3,
            schedule="exponential",
            decay_steps=1000,
            decay_rate=0.5,
            clip_global_norm=10.0,
        )
    )

    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, max_to_keep=3, restore_from=""))
    config.headline_metric = "elbo"
    config.progress_bar = True

    if arg == "quick":
        config.num_steps = 300
        config.log_every = 20
        config.eval_every = 100
        config.checkpoint.every = 100
    return config

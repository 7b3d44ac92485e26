"""VRNN on moving multi-MNIST (thesis §5.4.1, App. 5.D.3; Table 5.4.1 rows 4–5): MLP-VRNN by default (H = H′ = J =
256, L = L′ = 3, 165 latent dimensions, Gaussian likelihood σ = 0.3, ELU), trained with the FIVO bound (K = 5
particles, resampling when ESS < K/2) by RMSProp 1e-5 with momentum 0.9, batch 32, on the same sequences as SQAIR
(the official recipe: ``ocr_jax.tasks.sqair.load_sequences``). The thesis trains "until convergence of the test FIVO
bound" and gives neither K nor the number of steps; this config stops at 2M steps (SQAIR's budget).

Full runs (paper settings; days of compute, see docs/vrnn.md for the measured cost):

  ocr-jax-train --config=vrnn_mnist --workdir=runs/vrnn_mlp
  ocr-jax-train --config=vrnn_mnist:conv --workdir=runs/vrnn_conv

What a 2-core CPU affords (``cpu``: Adam 3e-4 as SQAIR's ``cpu`` variant, 20k steps, periodic evaluations):

  ocr-jax-train --config=vrnn_mnist:cpu --workdir=runs/vrnn_cpu

Quick smoke run on synthetic blob digits (no download; a tiny VRNN on 24×24 canvases, seconds):

  ocr-jax-train --config=vrnn_mnist:quick --workdir=/tmp/vrnn_quick

``conv`` also unrolls the particle filter over the 10 frames (``task_config.filter_unroll``) and computes ψ^dec's
strided transposed convolutions by output phase (``model.deconv="phases"``, the default): 8.3x faster per step on
XLA:CPU than rolled with flax's ConvTranspose (``python -m benchmarks.vrnn_step``, docs/vrnn.md).

``iwae``: train with IWAE over whole sequences instead of FIVO (the filter never resamples; the same K). Variants
combine with '+', e.g. ``vrnn_mnist:conv+cpu``. Report: ``python -m experiments.vrnn_report --workdir=DIR``.
"""

import ml_collections

from ocr_jax import configs
from ocr_jax.tasks import vrnn as vrnn_task

VARIANTS = ("conv", "cpu", "quick", "iwae")
COMBINABLE_VARIANTS = True


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = configs.check_variant(arg, VARIANTS, config="vrnn_mnist", combine=COMBINABLE_VARIANTS)
    config = ml_collections.ConfigDict()
    config.task = "vrnn"
    config.task_module = "ocr_jax.tasks.vrnn"
    # The task's own defaults are the paper's settings (ocr_jax.tasks.vrnn.default_task_config, where every field is
    # explained): this config names only what its variants change.
    config.task_config = vrnn_task.default_task_config()

    config.seed = 0
    config.global_batch_size = 32
    config.num_steps = 2_000_000
    config.optimizers = ml_collections.ConfigDict()
    config.optimizers.generative = configs.rmsprop(1e-5)
    config.optimizers.inference = configs.rmsprop(1e-5)

    config.log_every = 100
    config.eval_every = 10_000
    config.checkpoint = ml_collections.ConfigDict(dict(every=10_000, max_to_keep=3, restore_from=""))
    config.headline_metric = "bound_per_frame"
    config.progress_bar = True
    config.stop_after_seconds = 0

    if "conv" in variants:
        # CONV-VRNN (App. 5.D.3): CNN ψ^x with feature maps [32, 32, 32, 64, 64, 64], strides [1, 2, 1, 2, 1, 2], 3×3
        # filters, a mirrored transposed CNN ψ^dec, H = J = 256, L = 1
        config.task_config.model.arch = "conv"
        config.task_config.model.num_layers = 1
        # the particle filter unrolled over the 10 frames: XLA:CPU runs the convolutions' gradients inside a rolled loop
        # many times slower (batch 4: 9.0 -> 2.6 s per step, 1.1 with model.deconv="phases"; benchmarks/vrnn_step.py)
        config.task_config.filter_unroll = 10
    if "cpu" in variants:
        config.num_steps = 20_000
        for group in ("generative", "inference"):
            config.optimizers[group] = configs.optimizer("adam", 3e-4)
        config.log_every = 50
        config.eval_every = 2_000
        config.checkpoint.every = 500
    if "quick" in variants:
        configs.quick_sequences(config, num_steps=200)
        config.task_config.update(
            dict(
                model=dict(
                    hidden=32,
                    num_layers=1,
                    data_hidden=32,
                    data_layers=1,
                    rnn_hidden=32,
                    latent_dim=8,
                    encoded_data_dim=16,
                    encoded_latent_dim=16,
                    conv_channels=(8, 8),
                    conv_strides=(2, 2),
                ),
                start_length=3,
                num_particles=3,
                eval=dict(
                    fivo_particles=10,
                    fivo_batch_size=8,
                    condition_frames=2,
                    periodic_sequences=32,
                    periodic_log_marginal_sequences=8,
                    addition_train_sequences=32,
                ),
            )
        )
    if "iwae" in variants:
        config.task_config.estimator = "iwae"
    return config

"""Config for the sigmoid-belief-net study (thesis appendix 8.D, Fig. 8.D.1): WW vs VIMCO on binarised MNIST.

Three stochastic layers of 200 binary units (Mnih & Rezende 2016), linear layers, batch 24, Adam; one run per
(method, K, seed), resumable (``experiments/sbn_study.py``).
Default (what 2 CPU cores afford in about 1–2 hours; the step times below were measured on them):
  python -m experiments.sbn_study --config=sbn --workdir=runs/sbn
The thesis' particle counts up to K = 5000, the full test set and 100k steps (a GPU job):
  python -m experiments.sbn_study --config=sbn:gpu --workdir=runs/sbn_gpu
Quick smoke run (seconds; the tests run it on synthetic data):
  python -m experiments.sbn_study --config=sbn:quick --workdir=runs/sbn_quick
The step times in the comments below (a short run on 50 test images; the fields override as usual):
  python -m experiments.sbn_study --config=sbn --config.num_particles='(2, 5, 10, 50)' --config.num_steps=300 \\
      --config.eval_every=300 --config.num_test=50 --config.curve_num_test=50 --workdir=runs/sbn_timing_small
  python -m experiments.sbn_study --config=sbn --config.num_particles='(500,)' --config.num_steps=300 \\
      --config.eval_every=300 --config.num_test=50 --config.curve_num_test=50 --workdir=runs/sbn_timing_500
  python -m experiments.sbn_study --config=sbn --config.num_particles='(5000,)' --config.num_steps=20 \\
      --config.log_every=5 --config.eval_every=20 --config.num_test=50 --config.curve_num_test=50 \\
      --workdir=runs/sbn_timing_5000
(``seconds_per_step`` in results.json: blocks after the first, which includes compiling.)
A workdir resumes: finished runs are kept, and adding K or seeds to the lists trains only the new runs (any other
changed field is refused). `--report` trains nothing: it summarises and plots the runs already in the workdir (each
row over the seeds that have finished), e.g. while the rest of a grown study is still to be trained:
  python -m experiments.sbn_study --config=sbn --config.num_particles='(2, 5, 10, 50, 500)' \\
      --config.seeds='(0, 1)' --workdir=docs/data/sbn --report
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("gpu", "quick")
# A study script's config (not a training-loop task): run from a checkout.
RUN_WITH = "python -m experiments.sbn_study"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="sbn")
    c = ml_collections.ConfigDict()
    c.methods = ("ww", "vimco")
    # K; tuples, so that --config.num_particles='(2, 500)' overrides them. Training step time measured here (2 CPU
    # cores, otherwise idle, batch 24, WW / VIMCO, ms): K = 2: 0.9 / 0.8; 5: 1.5 / 2.1; 10: 2.4 / 2.8; 50: 11.4 /
    # 12.7; 500: 148 / 156; 5000: 1723 / 2130 (docs/results.md). At 10k steps the default's ten runs take ≈ 57 min of
    # training (K = 500: 51 of them), ≈ 50 s each for the final evaluation (1000 images × 5000 particles) and ≈ 10 s
    # each for the test curve: ≈ 67 min in all.
    c.num_particles = (2, 5, 10, 50, 500)
    c.seeds = (0,)  # each seed: its own initial parameters, minibatch order and evaluation particles
    c.latent_sizes = (200, 200, 200)  # |z_1|, |z_2|, |z_3| (z_1 next to x): Mnih & Rezende 2016's SBN
    c.batch_size = 24  # the thesis authors' public code (below)
    # Adam at 1e-3 (default betas): the thesis authors' public code for this experiment (tuananhle7/rrws,
    # discrete-vae/run.py: batch 24, lr 1e-3, 100k iterations). The VIMCO paper's own rate could not be checked here.
    c.learning_rate = 1e-3
    c.num_steps = 10_000
    c.log_every = 100  # steps per compiled block; the training curve is the IWAE_K bound averaged over a block
    c.eval_every = 1000  # test curve (Fig. 8.D.1 left): log p̂ and KL on curve_num_test images
    c.curve_num_test = 100
    c.curve_particles = 1000
    c.num_test = 1000  # first test images, stochastically binarised once (fixed seed)
    c.log_marginal_particles = 5000  # final log p̂(x) = IWAE-5000 and KL over the same 5000 particles
    c.log_marginal_chunk = 500
    c.eval_batch = 50  # test images per evaluation batch (num_test and curve_num_test are multiples of it)
    if arg == "gpu":  # its cost is not measured (no GPU was lent); on the 2 CPU cores K = 5000 takes 1.7–2.1 s a step
        c.num_particles = (2, 5, 10, 50, 100, 500, 1000, 5000)
        c.seeds = (0, 1, 2)
        c.num_steps = 100_000
        c.eval_every = 5000
        c.num_test = 10_000
        c.curve_num_test = 1000
        c.eval_batch = 100
    elif arg == "quick":
        c.num_particles = (2, 5)
        c.seeds = (0, 1)
        c.latent_sizes = (12, 8, 4)
        c.num_steps = 20
        c.log_every = 5
        c.eval_every = 10
        c.num_test = 20
        c.curve_num_test = 10
        c.curve_particles = 20
        c.log_marginal_particles = 100
        c.log_marginal_chunk = 40
        c.eval_batch = 10
    return c

"""Config for the GMM branch-pruning study (thesis §8.4.3, Fig. 8.4.4 and 8.C.2).

Run (full: the paper's 10^5 iterations, both starts, five methods, four K, 10 seeds; resumable per (method, K)):
  python -m experiments.gmm_pruning --config=gmm_pruning --workdir=runs/gmm_pruning
Reduced run (adverse start, K ∈ {2, 20}, 5 seeds, 2000 iterations):
  python -m experiments.gmm_pruning --config=gmm_pruning:reduced --workdir=runs/gmm_reduced
The equal start at the reduced budget (the other half of thesis Fig. 8.C.2):
  python -m experiments.gmm_pruning --config=gmm_pruning:reduced_equal --workdir=runs/gmm_equal
Quick smoke run:
  python -m experiments.gmm_pruning --config=gmm_pruning:quick --workdir=runs/gmm_quick
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("reduced", "reduced_equal", "quick")
# A study script's config (not a training-loop task): run from a checkout.
RUN_WITH = "python -m experiments.gmm_pruning"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="gmm_pruning")
    c = ml_collections.ConfigDict()
    c.num_clusters = 20  # C; μ_c = 10c, σ_c = 5 fixed; true π_c ∝ c + 5 over c = 0..C−1
    c.hidden = 16  # inference network 1-16-C, tanh
    c.batch_size = 100  # fresh samples from the true model per iteration
    c.methods = ("ws", "ww", "dww", "vimco", "reinforce")
    c.num_particles = (2, 5, 10, 20)
    c.delta = 0.2  # δ-WW defensive mixture weight
    # Starts: "adverse" = prior probabilities ∝ exp(−c) (logits −c, the rate of a public implementation matching
    # the paper: logits 2(C−1−c) times a softmax multiplier 0.5); "equal" = uniform prior (thesis Fig. 8.C.2).
    c.starts = ("adverse", "equal")
    c.adverse_rate = 1.0
    c.learning_rate = 1e-3  # Adam with default parameters (thesis §8.4.3)
    c.num_iterations = 100_000  # the paper's public code's budget
    c.eval_every = 1000  # metrics, the φ-gradient's std (10 draws) and Hinton snapshots
    c.num_seeds = 10  # repeats, vmapped; median and IQR reported
    c.num_test = 100  # fixed test x for the inference error
    c.seed = 0
    if arg in ("reduced", "reduced_equal"):  # a few minutes
        c.num_particles = (2, 20)
        c.num_seeds = 5
        c.num_iterations = 2000
        c.eval_every = 100
    if arg == "reduced":
        c.starts = ("adverse",)
    if arg == "reduced_equal":
        c.starts = ("equal",)
    if arg == "quick":
        c.num_particles = (2, 20)
        c.num_iterations = 200
        c.eval_every = 50
        c.num_seeds = 2
    return c

"""Config for the toy Gaussian SNR study (thesis §7.4, Fig. 7.4.1–7.4.3, appendix 7.C.3).

Run (full, about 10 minutes on 2 shared CPU cores):
  python -m experiments.toy_gaussian_snr --config=toy_gaussian_snr --workdir=runs/toy_gaussian_snr
Quick smoke run (seconds):
  python -m experiments.toy_gaussian_snr --config=toy_gaussian_snr:quick --workdir=runs/toy_snr_quick
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("quick",)
# A study script's config (not a training-loop task): run from a checkout.
RUN_WITH = "python -m experiments.toy_gaussian_snr"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="toy_gaussian_snr")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dim = 20  # D
    c.num_data = 1024  # N: the gradient is of the objective averaged over all N points (thesis §7.3)
    # K sweep (IWAE, M = 1) and M sweep (VAE, K = 1); the paper goes to 1000 with 10^4 repeats.
    c.k_values = [1, 3, 10, 30, 100, 1000]
    c.m_values = [1, 3, 10, 30, 100, 1000]
    # R gradient estimates per setting (paper: 10^4). Cost is R·N·(Σ K)·D normal draws, which on 2 shared CPU cores
    # allows only a few hundred; the near-optimum K sweep (whose SNR falls toward the ≈1/√R floor) gets the most.
    c.num_repeats = ml_collections.ConfigDict({"near_K": 200, "near_M": 50, "far_K": 50, "far_M": 50})
    c.repeat_chunk = 8  # repeats evaluated together (memory: chunk·N·M·K·D floats)
    # Regimes: near the optimum (§7.4) and far from it (appendix 7.C.3).
    c.regimes = ml_collections.ConfigDict(
        {
            "near": {"offset_std": 0.01, "q_var": 2.0 / 3.0},
            "far": {"offset_std": 0.5, "q_var": 1.0},
        }
    )
    # Slopes of log SNR vs log K / log M are fitted over this range; θ vs K is also fitted on the tail (K ≥ 100).
    c.fit_min, c.fit_max = 1, 1000
    c.theta_tail_min = 100
    if arg == "quick":
        c.num_data = 64
        c.k_values = [1, 10, 100]
        c.m_values = [1, 10, 100]
        c.num_repeats = ml_collections.ConfigDict({"near_K": 40, "near_M": 40, "far_K": 40, "far_M": 40})
        c.repeat_chunk = 20
        c.theta_tail_min = 10
    return c

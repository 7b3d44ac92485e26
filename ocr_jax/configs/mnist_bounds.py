"""Config for MNIST Table 7.5.1 (thesis §7.5.1): IWAE, PIWAE, MIWAE, CIWAE and VAE at budget T = 64.

Full reproduction (Burda et al. schedule: stages i = 0..7 of 3^i epochs at lr 1e-3·10^(−i/7), 3280 epochs, batch 20;
×8 methods ×4 seeds in the paper):
  python -m experiments.mnist_bounds --config=mnist_bounds --workdir=runs/mnist_bounds
Small budgets (a fixed number of steps per method, test subset; ``medium``: all 8 methods, 10k steps ≈ 3.3 epochs):
  python -m experiments.mnist_bounds --config=mnist_bounds:small --workdir=runs/mnist_small
  python -m experiments.mnist_bounds --config=mnist_bounds:medium --workdir=runs/mnist_medium
At 10k steps: Table 7.5.1 with 4 seeds (Welch's t-test), and Fig. 7.5.2's sweeps over M and β (one seed):
  python -m experiments.mnist_bounds --config=mnist_bounds:seeds --workdir=runs/mnist_seeds
  python -m experiments.mnist_bounds --config=mnist_bounds:sweep --workdir=runs/mnist_sweep
Every run also records the per-image ESS (Fig. 7.5.3) and the encoder weights' SNR during training (Fig. 7.5.4);
a run resumes after the last finished (method, seed).
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("small", "medium", "seeds", "sweep", "quick")
# A study script's config (not a training-loop task): run from a checkout.
RUN_WITH = "python -m experiments.mnist_bounds"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="mnist_bounds")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.hidden = 200  # one stochastic layer: 784-200-200-50 (tanh), Bernoulli decoder (Burda et al. 2016)
    c.latent = 50
    c.budget = 64  # T = M·K particles per datapoint
    # name -> (objective, parameter): parameter is M for miwae/piwae and β for ciwae.
    # (ConfigDict keys may not contain dots: CIWAE(b=0_05) is CIWAE with β = 0.05.)
    c.methods = ml_collections.ConfigDict(
        {
            "IWAE": ("iwae", 0),
            "PIWAE(4,16)": ("piwae", 4),
            "PIWAE(8,8)": ("piwae", 8),
            "MIWAE(4,16)": ("miwae", 4),
            "MIWAE(8,8)": ("miwae", 8),
            "CIWAE(b=0_05)": ("ciwae", 0.05),
            "CIWAE(b=0_5)": ("ciwae", 0.5),
            "VAE": ("miwae", 64),
        }
    )
    table = ("IWAE", "PIWAE(4,16)", "PIWAE(8,8)", "MIWAE(4,16)", "MIWAE(8,8)", "CIWAE(b=0_05)", "CIWAE(b=0_5)", "VAE")
    # Tuples, not lists, so that the command line can set them: --config.seeds="(0, 1, 2)".
    c.run_methods = table  # Table 7.5.1's eight, in its order
    # Fig. 7.5.2's sweeps over M (MIWAE, PIWAE with K = 64/M) and β (CIWAE); run with the ``sweep`` variant.
    sweep = {f"MIWAE({m},{64 // m})": ("miwae", m) for m in (2, 16, 32)}
    sweep |= {f"PIWAE({m},{64 // m})": ("piwae", m) for m in (2, 16, 32)}
    sweep |= {f"CIWAE(b=0_{b})": ("ciwae", float(f"0.{b}")) for b in (1, 2, 3, 7, 9)}
    for name, method in sweep.items():
        c.methods[name] = method
    c.seeds = (0,)  # Table 7.5.1: 4 seeds, mean ± std and Welch's t-test at 5 %
    c.snr_every = 1000  # Fig. 7.5.4: encoder weights' SNR every this many steps (0: never)
    c.snr_weights = 20  # randomly chosen weights per encoder layer
    c.snr_repeats = 100  # gradient draws on one fixed batch per SNR estimate
    c.batch_size = 20
    c.num_stages = 8  # stage i: 3^i epochs at learning rate base_lr·10^(−i/7)
    c.base_lr = 1e-3
    c.max_steps = -1  # cap on training steps per method (−1: the full schedule)
    c.num_test = 10000  # test images (stochastically binarised once, seed fixed)
    c.eval_particles = 64  # IWAE-64
    c.log_marginal_particles = 5000  # log p̂(x) = IWAE-5000, evaluated in chunks
    c.log_marginal_chunk = 500
    c.eval_batch = 100
    if arg == "small":
        c.run_methods = ("IWAE", "PIWAE(8,8)", "MIWAE(8,8)", "VAE")
        c.max_steps = 1500
        c.num_test = 500
    elif arg in ("medium", "seeds", "sweep"):
        c.max_steps = 10_000
        c.num_test = 1000
    if arg == "seeds":
        c.seeds = (0, 1, 2, 3)
    if arg == "sweep":
        c.run_methods = table + tuple(sweep)  # Table 7.5.1's methods and the sweeps
    elif arg == "quick":
        c.run_methods = ("IWAE", "VAE")
        c.max_steps = 20
        c.num_test = 40
        c.log_marginal_particles = 200
        c.log_marginal_chunk = 100
        c.eval_batch = 20
        c.snr_every = 10
        c.snr_repeats = 4
        c.seeds = (0, 1)
    return c

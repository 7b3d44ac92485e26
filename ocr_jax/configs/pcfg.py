"""Config for the PCFG study (thesis §8.4.1, Fig. 8.4.1; appendix 8.A): WS, WW, VIMCO, REINFORCE, K ∈ {2, 5, 10, 20}.

Run (the paper's budget: 2000 iterations, as the public plotting code; 88 min on 2 CPU cores, docs/pcfg.md):
  python -m experiments.pcfg_study --config=pcfg --workdir=docs/data/pcfg [--report: table and figures, no training]
(resumable: results.json is written after every (method group, K), and a rerun trains only those not in it yet)
Reduced run (what 2 shared CPU cores afford in under 10 minutes):
  python -m experiments.pcfg_study --config=pcfg:reduced --workdir=runs/pcfg_reduced
Quick smoke run:
  python -m experiments.pcfg_study --config=pcfg:quick --workdir=runs/pcfg_quick
"""

import ml_collections

from ocr_jax import configs

VARIANTS = ("reduced", "quick")
# A study script's config (not a training-loop task): run from a checkout.
RUN_WITH = "python -m experiments.pcfg_study"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    configs.check_variant(arg, VARIANTS, config="pcfg")
    c = ml_collections.ConfigDict()
    c.grammar = "astronomers"  # ocr_jax.models.pcfg.ASTRONOMERS (thesis Fig. 8.A.1)
    # Cap on the number of expansions of a derivation (fixed shapes). A derivation still unfinished after it keeps
    # its pending non-terminals unexpanded (they enter the yield as one "unexpanded" token that matches no word);
    # the capped model stays normalised. Under the true grammar 9.3% of derivations reach 64 expansions (median 13).
    c.max_expansions = 64
    c.methods = ("ws", "ww", "vimco", "reinforce")
    c.num_particles = (2, 5, 10, 20)
    c.batch_size = 2  # fresh sentences from the true PCFG per iteration (thesis §8.4.1)
    c.learning_rate = 1e-3  # Adam with default hyperparameters
    # Inference network sizes (the public code): sentence GRU 100, expansion GRU 100, per-non-terminal heads 50-25.
    c.sentence_features = 100
    c.hidden_features = 100
    c.head_features = (50, 25)
    c.num_iterations = 2000  # the public code's plotted runs (the thesis states only a 100-hour cap)
    c.eval_every = 10
    c.num_eval = 100  # derivations from the true PCFG for the sleep-φ metric (fixed, shared by all runs)
    c.num_runs = 10  # repeats, vmapped; median and IQR reported
    # One compiled program for the methods needing the sleep pass (ws) and one for the rest (vmapped over methods):
    # fewer compiles (each takes ~25 s on 2 busy cores); False: one program per method.
    c.group_methods = True
    c.test_sentence = "astronomers saw stars with telescopes"  # thesis Fig. 8.4.2 / 8.A.2
    c.num_test_samples = 200  # q samples per run for the test sentence's exact-match rate
    c.seed = 0
    if arg == "reduced":  # what 2 shared CPU cores afford in about 10 minutes (4 compiles of ~30 s included)
        c.num_particles = (2, 20)
        c.num_runs = 3
        c.num_iterations = 200
        c.eval_every = 20
        c.num_eval = 50
    if arg == "quick":
        c.methods = ("ws", "vimco")
        c.num_particles = (2,)
        c.max_expansions = 16
        c.num_iterations = 4
        c.eval_every = 2
        c.num_eval = 8
        c.num_runs = 2
        c.sentence_features = c.hidden_features = 16
        c.head_features = (8, 8)
        c.num_test_samples = 8
    return c

"""Per-frame anatomy of a trained SQAIR run: how many objects PROP keeps and DISC discovers, and each frame's terms
of the log-weight (thesis Eq. 5.3-5.4), on the first test sequences cut to ``--frames`` frames.

    python -m experiments.sqair_diagnose --workdir=runs/abl/l1_h256 --frames=2 [--sequences=64 --particles=5]

This is how the DISC-only failure mode was traced (docs/results.md, "SQAIR that learns"): a DISC trained on first
frames re-detects in frame 2 what PROP keeps, and the duplicates cost log p(x_2 | z_2).
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from ocr_jax import api
from ocr_jax.data import to_unit_float
from ocr_jax.tasks.sqair import load_sequences


def frame_terms(run: api.Run, frames: np.ndarray, *, num_particles: int = 5, seed: int = 0) -> dict[str, list]:
    """Means over sequences and particles, per frame, of ``num_propagated``, ``num_discovered`` and the log-weight
    terms (``log_likelihood, log_p_disc, log_p_prop, log_q_disc, log_q_prop``) for ``frames [n, T, H, W]``."""
    model = run.model
    infer = jax.jit(lambda p, x, k: model.infer(p, to_unit_float(x), k, num_particles))
    out = jax.device_get(infer(run.params, frames, jax.random.key(seed)))
    keys = (
        "num_propagated",
        "num_discovered",
        "log_likelihood",
        "log_p_disc",
        "log_p_prop",
        "log_q_disc",
        "log_q_prop",
    )
    return {k: np.asarray(out[k], np.float64).mean(axis=(0, 1)).round(3).tolist() for k in keys}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--particles", type=int, default=5)
    args = p.parse_args()
    run = api.load_run(args.workdir)
    cfg = run.task.config
    data = load_sequences(cfg, "test", args.sequences, cfg.data_seed + 1)
    result = frame_terms(run, data["frames"][:, : args.frames], num_particles=args.particles)
    result["true_counts"] = data["counts"][:, : args.frames].mean(0).round(3).tolist()
    print(json.dumps(dict(step=run.step, **result), indent=1))


if __name__ == "__main__":
    main()

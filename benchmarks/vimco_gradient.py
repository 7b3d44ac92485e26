r"""VIMCO's jitted gradient: ocr_jax (O(K) leave-one-out), the previous [K, K] form, and TensorFlow Probability's
``csiszar_vimco`` side by side in one run (not a test).

  python benchmarks/vimco_gradient.py [--ks=10,100,1000] [--batch=256] [--repeats=20]

The problem is the same for all three: a factorised Gaussian q_φ(z) over 10 dimensions (φ = loc, log-scale;
``batch`` independent copies), p = N(0, I), K particles, the score-function VIMCO gradient w.r.t. φ (samples are
stopped, as in csiszar_vimco). Reported: the best wall-clock of ``repeats`` calls of the compiled gradient, and
XLA's temporary memory of each compiled program (``memory_analysis``), whose growth with K shows O(K) vs O(K²).
The load average is recorded: run it alone.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from tensorflow_probability.substrates import jax as tfp

from ocr_jax import cli
from ocr_jax import objectives as obj

tfd = tfp.distributions
DIM = 10

_KS = flags.DEFINE_list("ks", ["10", "100", "1000"], "particle counts K, comma-separated")
_BATCH = flags.DEFINE_integer("batch", 256, "independent copies of the problem")
_REPEATS = flags.DEFINE_integer("repeats", 20, "calls of each compiled gradient; the best is reported")
_OUT = flags.DEFINE_string("out", "runs/bench/vimco_gradient.json", "where the results go (JSON)")


def quadratic_leave_one_out(log_w):
    """The previous implementation: a [..., K, K] array of log-weights with entry k replaced."""
    k = log_w.shape[-1]
    shift = jax.lax.stop_gradient(jnp.max(log_w, axis=-1, keepdims=True))
    lw = log_w - shift
    geo = (jnp.sum(lw, axis=-1, keepdims=True) - lw) / (k - 1)
    replaced = jnp.where(jnp.eye(k, dtype=bool), geo[..., :, None], lw[..., None, :])
    return jax.nn.logsumexp(replaced, axis=-1) - math.log(k) + shift


def ours_loss(phi, key, k, loo):
    loc, log_scale = phi
    q = tfd.Normal(loc, jnp.exp(log_scale))
    z = jax.lax.stop_gradient(q.sample(k, seed=key))  # [K, B, D]
    log_q = jnp.sum(q.log_prob(z), -1).T  # [B, K]
    log_p = jnp.sum(tfd.Normal(0.0, 1.0).log_prob(z), -1).T
    log_w = log_p - log_q
    log_z = obj.log_mean_exp(log_w)
    signals = jax.lax.stop_gradient(log_z[..., None] - loo(log_w))
    return -jnp.mean(log_z + jnp.sum(signals * log_q, -1))


def tfp_loss(phi, key, k):
    loc, log_scale = phi
    q = tfd.Independent(tfd.Normal(loc, jnp.exp(log_scale)), 1)
    p_log_prob = lambda z: jnp.sum(tfd.Normal(0.0, 1.0).log_prob(z), -1)  # noqa: E731
    return -jnp.mean(tfp.vi.csiszar_vimco(lambda u: u, p_log_prob, q, num_draws=k, seed=key))


def measure(fn, phi, key, repeats):
    """(best seconds, XLA temporary bytes, mode): the jitted gradient, or — where the function does not trace under
    jit (TFP nightly's ``log_soomean_exp`` builds shapes from traced values on jax 0.12) — the eager gradient."""
    try:
        compiled = jax.jit(jax.grad(fn)).lower(phi, key).compile()
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
        mode = "jit"
    except TypeError:
        compiled, temp, mode = jax.grad(fn), float("nan"), "eager"
    jax.block_until_ready(compiled(phi, key))
    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(phi, jax.random.fold_in(key, i)))
        best = min(best, time.perf_counter() - t)
    return best, temp, mode


def main(argv):
    cli.start_script(argv)
    batch, repeats, out = _BATCH.value, _REPEATS.value, _OUT.value
    load_before = os.getloadavg()
    phi = (jnp.zeros((batch, DIM)) + 0.3, jnp.zeros((batch, DIM)) - 0.2)
    key = jax.random.PRNGKey(0)  # raw uint32[2]: the seed form TFP expects
    rows = []
    print(
        f"{'K':>5} | {'ours ms':>8} {'[K,K] ms':>9} {'TFP ms':>8} | {'ours/TFP':>8} | "
        f"{'ours MB':>8} {'[K,K] MB':>9} {'TFP MB':>8}"
    )
    for k in [int(x) for x in _KS.value]:
        t_ours, m_ours, _ = measure(lambda f, s: ours_loss(f, s, k, obj.vimco_leave_one_out), phi, key, repeats)
        t_quad, m_quad, _ = measure(lambda f, s: ours_loss(f, s, k, quadratic_leave_one_out), phi, key, repeats)
        t_tfp, m_tfp, tfp_mode = measure(lambda f, s: tfp_loss(f, s, k), phi, key, repeats)
        rows.append(
            dict(
                K=k,
                batch=batch,
                ours_s=t_ours,
                quadratic_s=t_quad,
                tfp_s=t_tfp,
                tfp_mode=tfp_mode,
                ours_temp_bytes=m_ours,
                quadratic_temp_bytes=m_quad,
                tfp_temp_bytes=m_tfp,
            )
        )
        print(
            f"{k:>5} | {t_ours * 1e3:>8.2f} {t_quad * 1e3:>9.2f} {t_tfp * 1e3:>8.2f} | {t_ours / t_tfp:>8.2f} | "
            f"{m_ours / 2**20:>8.1f} {m_quad / 2**20:>9.1f} {m_tfp / 2**20:>8.1f}  (TFP {tfp_mode})",
            flush=True,
        )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(dict(rows=rows, load_before=load_before, load_after=load_after, jax=jax.__version__), f, indent=1)


if __name__ == "__main__":
    app.run(main)

"""Toy Gaussian SNR study (thesis §7.4, Fig. 7.4.1–7.4.3; appendix 7.C.3).

Model (Eq. 7.11): z ~ N(μ, I), x | z ~ N(z, I), D = 20; inference network q(z | x) = N(Ax + b, σ_q² I) with
σ_q² = 2/3 (near the optimum) or 1 (far from it). Data: N = 1024 points from μ_true ~ N(0, I). Optimum (thesis 7.B):
μ* = mean(x), A* = I/2, b* = μ*/2. Gradients are evaluated at the optimum offset by offset_std·N(0, 1) per parameter.

For each setting (IWAE: M = 1, K varies; VAE: K = 1, M varies) we draw R gradient estimates of the *dataset-average*
objective (1/N) Σ_n MIWAE_{M,K}(x_n) — computed by ``jax.grad`` of ``ocr_jax.objectives.miwae`` — and report the
per-parameter SNR (Eq. 7.4, ``diagnostics.snr``) and the DSNR (Eq. 7.12, ``diagnostics.dsnr``). Slopes of log SNR
against log K / log M are fitted by least squares on the per-parameter mean of log SNR.

Usage: see ocr_jax/configs/toy_gaussian_snr.py. Writes ``results.json`` and ``estimators_toy_*.png`` into the
workdir.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.study_results import finish_study, save_study_figure
from ocr_jax import configs, diagnostics, objectives


def make_problem(key, dim, num_data, offset_std):
    """Data, optimum, and the perturbed evaluation point ``(theta, phi)``."""
    k_mu, k_z, k_x, k_off = jax.random.split(key, 4)
    mu_true = jax.random.normal(k_mu, (dim,))
    z = mu_true + jax.random.normal(k_z, (num_data, dim))
    x = z + jax.random.normal(k_x, (num_data, dim))
    mu_star = jnp.mean(x, axis=0)
    optimum = {"mu": mu_star, "A": jnp.eye(dim) / 2.0, "b": mu_star / 2.0}
    leaves, tree = jax.tree.flatten(optimum)
    keys = jax.random.split(k_off, len(leaves))
    point = jax.tree.unflatten(tree, [p + offset_std * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return x, point


def log_probs(params, x, eps, q_var):
    """Per-particle log p(x, z) and log q(z | x) for reparameterised z = Ax + b + σ_q ε; eps [N, P, D]."""
    mean = x @ params["A"].T + params["b"]  # [N, D]
    z = mean[:, None, :] + math.sqrt(q_var) * eps
    log_norm = -0.5 * x.shape[-1] * math.log(2 * math.pi)
    log_prior = log_norm - 0.5 * jnp.sum((z - params["mu"]) ** 2, -1)
    log_lik = log_norm - 0.5 * jnp.sum((x[:, None, :] - z) ** 2, -1)
    log_q = log_norm - 0.5 * x.shape[-1] * math.log(q_var) - 0.5 * jnp.sum((z - mean[:, None, :]) ** 2, -1) / q_var
    return log_prior + log_lik, log_q


def gradient_estimates(x, point, q_var, m, k, key, num_repeats, chunk):
    """``[R, dim_θ]`` and ``[R, dim_φ]`` estimates of −∇(1/N Σ_n MIWAE_{M,K}(x_n)) (sign irrelevant for SNR)."""

    def one(key):
        eps = jax.random.normal(key, (x.shape[0], m * k, x.shape[1]))

        def loss(params):
            log_p, log_q = log_probs(params, x, eps, q_var)
            return objectives.miwae(log_p, log_q, num_repeats=m).theta  # θ and φ share the MIWAE surrogate

        g = jax.grad(loss)(point)
        return g["mu"], jnp.concatenate([g["A"].ravel(), g["b"]])

    keys = jax.random.split(key, num_repeats)
    return jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=chunk))(keys)


def fit_slope(xs, snrs, lo, hi):
    """Least-squares slope of mean_p log SNR_p against log x over lo ≤ x ≤ hi."""
    xs = np.asarray(xs, float)
    y = np.array([np.mean(np.log(s)) for s in snrs])
    sel = (xs >= lo) & (xs <= hi)
    return float(np.polyfit(np.log(xs[sel]), y[sel], 1)[0])


def rms_slope(xs, values, lo=0):
    """Slope of log(group-RMS debiased SNR) vs log x, over points with x ≥ lo and a positive debiased estimate."""
    xs, values = np.asarray(xs, float), np.asarray(values, float)
    sel = (values > 0) & (xs >= lo)
    if sel.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs[sel]), np.log(values[sel]), 1)[0])


def random_dsnr(dim, key, n=20000):
    """DSNR of isotropic Gaussian vectors in ``dim`` dimensions (the reference line of Fig. 7.4.2)."""
    v = jax.random.normal(key, (n, dim))
    return float(diagnostics.dsnr(v, jnp.eye(dim)[0]))


def run_regime(cfg, name, regime, key):
    x, point = make_problem(jax.random.fold_in(key, 0), cfg.dim, cfg.num_data, regime.offset_std)
    out = {"offset_std": regime.offset_std, "q_var": regime.q_var, "sweeps": {}}
    stored = {}
    for sweep, values in (("iwae_vs_K", cfg.k_values), ("vae_vs_M", cfg.m_values)):
        rows = []
        for v in values:
            m, k = (1, v) if sweep == "iwae_vs_K" else (v, 1)
            t0 = time.time()
            num_repeats = cfg.num_repeats[f"{name}_{sweep[-1]}"]
            g_theta, g_phi = gradient_estimates(
                x, point, regime.q_var, m, k, jax.random.fold_in(key, 1000 * m + k), num_repeats, cfg.repeat_chunk
            )
            snr2_theta = np.asarray(diagnostics.snr_squared_debiased(g_theta))
            snr2_phi = np.asarray(diagnostics.snr_squared_debiased(g_phi))
            snr_theta = np.asarray(diagnostics.snr(g_theta))
            snr_phi = np.asarray(diagnostics.snr(g_phi))
            dsnr_theta, r_theta = diagnostics.dsnr(g_theta, return_ratios=True)
            dsnr_phi, r_phi = diagnostics.dsnr(g_phi, return_ratios=True)
            stored[(sweep, v)] = (g_theta, g_phi)
            rows.append(
                {
                    "M": m,
                    "K": k,
                    "R": num_repeats,
                    # group-RMS SNR with the 1/R floor bias removed (diagnostics.snr_squared_debiased)
                    "snr_theta_rms_debiased": float(np.sqrt(max(snr2_theta.mean(), 0.0))),
                    "snr_phi_rms_debiased": float(np.sqrt(max(snr2_phi.mean(), 0.0))),
                    "snr_phi_rms": float(np.sqrt(np.mean(snr_phi**2))),
                    "snr_theta_rms": float(np.sqrt(np.mean(snr_theta**2))),
                    "snr_theta_mean": float(snr_theta.mean()),
                    "snr_theta": snr_theta.tolist(),
                    "snr_phi_mean": float(snr_phi.mean()),
                    "snr_phi_quartiles": np.percentile(snr_phi, [25, 50, 75]).tolist(),
                    "snr_A_mean": float(snr_phi[: cfg.dim**2].mean()),
                    "snr_b": snr_phi[cfg.dim**2 :].tolist(),
                    "dsnr_theta": float(dsnr_theta),
                    "dsnr_theta_iqr": np.percentile(r_theta, [25, 75]).tolist(),
                    "dsnr_phi": float(dsnr_phi),
                    "dsnr_phi_iqr": np.percentile(r_phi, [25, 75]).tolist(),
                    "seconds": time.time() - t0,
                }
            )
            print(
                f"[{name}] {sweep} M={m} K={k}: SNR θ {snr_theta.mean():.3g} φ {snr_phi.mean():.3g} "
                f"DSNR θ {float(dsnr_theta):.3g} φ {float(dsnr_phi):.3g} ({time.time() - t0:.1f}s)",
                flush=True,
            )
        out["sweeps"][sweep] = rows
    # Fig. 7.4.3: DSNR against the K = max direction of the IWAE sweep.
    kmax = max(cfg.k_values)
    u_theta = jnp.mean(stored[("iwae_vs_K", kmax)][0], 0)
    u_phi = jnp.mean(stored[("iwae_vs_K", kmax)][1], 0)
    for (sweep, v), (gt, gp) in stored.items():
        row = next(r for r in out["sweeps"][sweep] if (r["K"] if sweep == "iwae_vs_K" else r["M"]) == v)
        row["dsnr_theta_vs_Kmax"] = float(diagnostics.dsnr(gt, u_theta))
        row["dsnr_phi_vs_Kmax"] = float(diagnostics.dsnr(gp, u_phi))
    # Slopes.
    ks = out["sweeps"]["iwae_vs_K"]
    ms = out["sweeps"]["vae_vs_M"]
    sel = lambda rows, f: [np.asarray(r[f]) for r in rows]
    phi_snr = lambda rows: [np.concatenate([[r["snr_A_mean"]], r["snr_b"]]) for r in rows]  # avoid 400-vs-20 weighting
    out["slopes"] = {
        "phi_vs_K": fit_slope(cfg.k_values, [np.asarray(r["snr_b"]) for r in ks], cfg.fit_min, cfg.fit_max),
        "phi_A_vs_K": fit_slope(cfg.k_values, [np.asarray([r["snr_A_mean"]]) for r in ks], cfg.fit_min, cfg.fit_max),
        "theta_vs_K": fit_slope(cfg.k_values, sel(ks, "snr_theta"), cfg.fit_min, cfg.fit_max),
        "theta_vs_K_tail": fit_slope(cfg.k_values, sel(ks, "snr_theta"), cfg.theta_tail_min, cfg.fit_max),
        "theta_vs_M": fit_slope(cfg.m_values, sel(ms, "snr_theta"), cfg.fit_min, cfg.fit_max),
        "phi_vs_M": fit_slope(cfg.m_values, [np.asarray(r["snr_b"]) for r in ms], cfg.fit_min, cfg.fit_max),
        "phi_A_vs_M": fit_slope(cfg.m_values, [np.asarray([r["snr_A_mean"]]) for r in ms], cfg.fit_min, cfg.fit_max),
        "phi_rms_debiased_vs_K": rms_slope(cfg.k_values, [r["snr_phi_rms_debiased"] for r in ks]),
        "theta_rms_debiased_vs_K_tail": rms_slope(
            cfg.k_values, [r["snr_theta_rms_debiased"] for r in ks], cfg.theta_tail_min
        ),
        "phi_rms_debiased_vs_M": rms_slope(cfg.m_values, [r["snr_phi_rms_debiased"] for r in ms]),
        "theta_rms_debiased_vs_M": rms_slope(cfg.m_values, [r["snr_theta_rms_debiased"] for r in ms]),
        "dsnr_phi_vs_K": float(np.polyfit(np.log(cfg.k_values), np.log([r["dsnr_phi"] for r in ks]), 1)[0]),
        "dsnr_phi_vs_M": float(np.polyfit(np.log(cfg.m_values), np.log([r["dsnr_phi"] for r in ms]), 1)[0]),
    }
    del phi_snr
    out["random_dsnr"] = {
        "theta": random_dsnr(cfg.dim, jax.random.PRNGKey(1)),
        "phi": random_dsnr(cfg.dim**2 + cfg.dim, jax.random.PRNGKey(2)),
    }
    return out


def plot(results, cfg, workdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, res in results["regimes"].items():
        fig, axes = plt.subplots(2, 2, figsize=(10, 8))
        ks, ms = res["sweeps"]["iwae_vs_K"], res["sweeps"]["vae_vs_M"]
        for col, (label, key_b, key_t) in enumerate((("φ (b)", "snr_b", None), ("θ (μ)", None, "snr_theta"))):
            ax = axes[0, col]
            field = key_b or key_t
            for rows, xs, color, lab in (
                (ks, cfg.k_values, "tab:blue", "IWAE (M=1), vs K"),
                (ms, cfg.m_values, "tab:red", "VAE (K=1), vs M"),
            ):
                vals = np.array([r[field] for r in rows])  # [settings, dims]
                ax.plot(xs, vals, color=color, alpha=0.25, lw=0.8)
                ax.plot(xs, np.exp(np.mean(np.log(vals), 1)), color=color, lw=2.5, label=lab)
            x0 = np.array([min(cfg.k_values), max(cfg.k_values)], float)
            ref = np.exp(np.mean(np.log(np.array(ks[0][field]))))
            ax.plot(x0, ref * (x0 / x0[0]) ** 0.5, "k--", label="slope +1/2")
            ax.plot(x0, ref * (x0 / x0[0]) ** -0.5, "g--", label="slope −1/2")
            ax.axhline(1 / math.sqrt(cfg.num_repeats[f"{name}_K"]), color="gray", ls=":", label="≈1/√R floor (K sweep)")
            rms = "snr_phi_rms_debiased" if key_b else "snr_theta_rms_debiased"
            for rows, xs, color in ((ks, cfg.k_values, "tab:blue"), (ms, cfg.m_values, "tab:red")):
                ax.plot(
                    xs,
                    [max(r[rms], 1e-4) for r in rows],
                    color=color,
                    ls="-.",
                    marker="o",
                    ms=3,
                    lw=1.2,
                    label="group RMS, floor-debiased",
                )
            ax.set(xscale="log", yscale="log", xlabel="K or M", ylabel="SNR", title=f"{name}: SNR {label}")
            ax.legend(fontsize=7)
        for col, grp in enumerate(("phi", "theta")):
            ax = axes[1, col]
            for rows, xs, color, lab in (
                (ks, cfg.k_values, "tab:blue", "IWAE vs K"),
                (ms, cfg.m_values, "tab:red", "VAE vs M"),
            ):
                d = np.array([r[f"dsnr_{grp}"] for r in rows])
                iqr = np.array([r[f"dsnr_{grp}_iqr"] for r in rows])
                ax.plot(xs, d, color=color, lw=2, label=lab)
                ax.fill_between(xs, iqr[:, 0], iqr[:, 1], color=color, alpha=0.2)
                ax.plot(
                    xs,
                    [r[f"dsnr_{grp}_vs_Kmax"] for r in rows],
                    color=color,
                    ls="--",
                    lw=1,
                    label=lab + " (u = E[Δ_{1,Kmax}])",
                )
            ax.axhline(res["random_dsnr"][grp], color="k", ls=":", label="random vector")
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="K or M",
                ylabel="DSNR",
                title=f"{name}: DSNR {'φ (A, b)' if grp == 'phi' else 'θ'}",
            )
            ax.legend(fontsize=7)
        paths.append(save_study_figure(fig, workdir, f"estimators_toy_snr_{name}.png", dpi=110))
    return paths


def run(cfg, workdir):
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    key = jax.random.PRNGKey(cfg.seed)
    results = {"config": cfg.to_dict(), "regimes": {}}
    for i, (name, regime) in enumerate(cfg.regimes.items()):
        results["regimes"][name] = run_regime(cfg, name, regime, jax.random.fold_in(key, i))
        print(f"[{name}] slopes: {json.dumps(results['regimes'][name]['slopes'], indent=None)}", flush=True)
    return finish_study(results, cfg, workdir, plot, t0)


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "toy_gaussian_snr")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/toy_gaussian_snr", "output directory")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value) and None)

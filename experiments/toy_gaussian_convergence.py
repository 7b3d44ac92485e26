"""Toy Gaussian convergence studies (thesis appendix 7.C.2, Fig. 7.C.2, and appendix 7.E, Fig. 7.E.1).

Model, data and inference network are built as in ``experiments.toy_gaussian_snr`` (thesis §7.4, Eq. 7.11): z ~ N(μ, I),
x | z ~ N(z, I), q(z | x) = N(Ax + b, σ_q² I), D = 20, N = 1024 points from μ_true ~ N(0, I). The marginal is
p_μ(x) = N(x; μ, 2I), so the target of the generative network has a closed form:

    ∇_μ log Z := ∇_μ (1/N) Σ_n log p_μ(x_n) = (x̄ − μ) / 2,

and the joint optimum is μ* = x̄, A* = I/2, b* = x̄/2 for every K and M (thesis 7.B).

* RMSE (7.C.2): at the near-optimum point of §7.4 (every parameter offset by 0.01·N(0, 1)), R estimates Δ_{M,K}(μ)
  of the gradient of the dataset-average objective (1/N) Σ_n MIWAE_{M,K}(x_n) (``toy_gaussian_snr.
  gradient_estimates``, i.e. ``jax.grad`` of ``objectives.miwae``), for IWAE (M = 1, K varies) and VAE (K = 1, M
  varies). RMSE = √(mean_r ‖Δ_r − ∇_μ log Z‖²) (the thesis' √E‖Δ_{M,K} − ∇_μ log Z‖²); the band is the interquartile
  range of the individual errors ‖Δ_r − ∇_μ log Z‖, as in Fig. 7.C.2. For the VAE the RMSE is also known exactly
  (:func:`vae_theta_rmse`): E[Δ_{M,1}(μ)] = A x̄ + b − μ and the variance is D σ_q² / (N M).
* Adam (7.E): μ, A, b all drawn from U[1.5, 2.5], then Adam on −MIWAE(M, K) (θ and φ on the same surrogate) for each
  (K, M) pair at the budget K·M = 1000, over seeds vmapped together (the seeds share their initial points across
  pairs). Logged per chunk of steps: the chunk's mean training bound (ELBO_IS, a different quantity for each K, as
  the thesis notes), ‖μ − μ*‖₂ and ‖(A, b) − (A*, b*)‖₂.

Usage: see ocr_jax/configs/toy_gaussian_convergence.py. Writes ``results.json``, ``estimators_toy_rmse.png`` and
``estimators_toy_adam.png`` into the workdir.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments import toy_gaussian_snr
from experiments.study_results import write_results
from ocr_jax import configs, objectives, plotting

# ---------------------------------------------------------------------------------------------------------------------
# Closed forms.


def log_likelihood(mu, x):
    """(1/N) Σ_n log p_μ(x_n) with p_μ(x) = N(x; μ, 2I), the marginal of Eq. 7.11; x [N, D]."""
    dim = x.shape[-1]
    return jnp.mean(-0.5 * dim * math.log(4 * math.pi) - 0.25 * jnp.sum((x - mu) ** 2, -1))


def true_theta_gradient(mu, x):
    """∇_μ of :func:`log_likelihood`: (x̄ − μ)/2 (the thesis' ∇_μ log Z for the dataset-average objective)."""
    return (jnp.mean(x, 0) - mu) / 2.0


def optimum(x):
    """The joint maximiser for every K and M (thesis 7.B): μ* = x̄, A* = I/2, b* = x̄/2."""
    x_bar = jnp.mean(x, 0)
    return {"mu": x_bar, "A": jnp.eye(x.shape[-1]) / 2.0, "b": x_bar / 2.0}


def vae_theta_rmse(params, x, q_var, m):
    """Exact RMSE of the VAE (K = 1, M samples) estimate of ∇_μ log Z for the dataset-average objective.

    Δ_{M,1}(μ) = (1/(NM)) Σ_{n,m} (z_nm − μ) with z_nm = A x_n + b + σ_q ε_nm, so E[Δ] = A x̄ + b − μ and
    tr Var[Δ] = D σ_q² / (N M). Returns ``(rmse, ‖bias‖)``.
    """
    bias = jnp.mean(x, 0) @ params["A"].T + params["b"] - params["mu"] - true_theta_gradient(params["mu"], x)
    var = x.shape[1] * q_var / (x.shape[0] * m)
    bias_sq = float(jnp.sum(bias**2))
    return math.sqrt(bias_sq + var), math.sqrt(bias_sq)


def rmse_summary(estimates, target) -> dict:
    """RMSE of ``estimates`` [R, D] to ``target`` [D], its bias/variance split, and the individual errors' quartiles.

    ``rmse² = bias_norm² + sd²`` exactly (``sd²``: the plug-in variance, 1/R). ``bias_norm`` itself carries the
    estimate's noise, E‖mean − target‖² = ‖bias‖² + tr Var/R; ``bias_norm_debiased`` removes it (0 if negative).
    """
    estimates, target = np.asarray(estimates, np.float64), np.asarray(target, np.float64)
    errors = np.linalg.norm(estimates - target, axis=-1)
    mean = estimates.mean(0)
    bias_sq, var = float(np.sum((mean - target) ** 2)), float(np.sum(estimates.var(0)))
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "bias_norm": math.sqrt(bias_sq),
        "bias_norm_debiased": math.sqrt(max(bias_sq - var / (len(estimates) - 1), 0.0)),
        "sd": math.sqrt(var),
        "error_quartiles": np.percentile(errors, [25, 50, 75]).tolist(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Study 1: RMSE of the θ-gradient estimate vs K and M (appendix 7.C.2).


def run_rmse(cfg, key):
    rc = cfg.rmse
    x, point = toy_gaussian_snr.make_problem(jax.random.fold_in(key, 0), cfg.dim, cfg.num_data, rc.offset_std)
    target = true_theta_gradient(point["mu"], x)
    out = {"true_gradient_norm": float(jnp.linalg.norm(target)), "R": rc.num_repeats, "sweeps": {}}
    for sweep, values in (("iwae_vs_K", rc.k_values), ("vae_vs_M", rc.m_values)):
        rows = []
        for v in values:
            m, k = (1, v) if sweep == "iwae_vs_K" else (v, 1)
            t0 = time.time()
            neg_grads, _ = toy_gaussian_snr.gradient_estimates(
                x, point, cfg.q_var, m, k, jax.random.fold_in(key, 1000 * m + k), rc.num_repeats, rc.repeat_chunk
            )
            row = {"M": m, "K": k, **rmse_summary(-neg_grads, target)}  # the surrogate is a loss: Δ = −∇ loss
            if k == 1:
                row["rmse_exact"], row["bias_norm_exact"] = vae_theta_rmse(point, x, cfg.q_var, m)
            row["seconds"] = time.time() - t0
            rows.append(row)
            exact = f" (exact {row['rmse_exact']:.4g})" if k == 1 else ""
            print(
                f"[rmse] {sweep} M={m} K={k}: RMSE {row['rmse']:.4g}{exact}, ‖bias‖ {row['bias_norm_debiased']:.4g}, "
                f"sd {row['sd']:.4g} ({row['seconds']:.1f}s)",
                flush=True,
            )
        out["sweeps"][sweep] = rows
    # Local log-log slopes between consecutive settings (thesis: −1 while the bias dominates, then −1/2).
    for sweep, field in (("iwae_vs_K", "K"), ("vae_vs_M", "M")):
        rows = out["sweeps"][sweep]
        out[f"local_slopes_{sweep}"] = [
            float(np.log(b["rmse"] / a["rmse"]) / np.log(b[field] / a[field])) for a, b in zip(rows[:-1], rows[1:])
        ]
    return out


def plot_rmse(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for sweep, field, color, label in (
        ("iwae_vs_K", "K", "tab:blue", "IWAE (M = 1), vs K"),
        ("vae_vs_M", "M", "tab:red", "VAE (K = 1), vs M"),
    ):
        rows = res["sweeps"][sweep]
        xs = np.array([r[field] for r in rows], float)
        q = np.array([r["error_quartiles"] for r in rows])
        ax.plot(xs, [r["rmse"] for r in rows], color=color, lw=2, marker="o", ms=3, label=label)
        ax.fill_between(xs, q[:, 0], q[:, 2], color=color, alpha=0.2)
        if sweep == "vae_vs_M":
            ax.plot(xs, [r["rmse_exact"] for r in rows], "k:", lw=1.2, label="VAE, exact RMSE")
        else:  # the bias part of IWAE's RMSE (noise-corrected), which falls as 1/K
            bias = [max(r["bias_norm_debiased"], 1e-6) for r in rows]
            ax.plot(xs, bias, color=color, ls=":", lw=1.2, marker="x", ms=4, label="IWAE, ‖bias‖ only")
    rows = res["sweeps"]["iwae_vs_K"]
    xs = np.array([r["K"] for r in rows], float)
    for slope, style in ((-1.0, "--"), (-0.5, "-.")):
        anchor = rows[0]["rmse"] if slope == -1.0 else rows[-1]["rmse"] * xs[-1] ** 0.5
        ax.plot(xs, anchor * xs**slope, color="gray", ls=style, lw=1, label=f"slope {slope:g}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="K or M",
        ylabel="RMSE to ∇_μ log Z",
        title=f"θ-gradient RMSE (R = {res['R']}; IQR of individual errors shaded)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    plotting.save_figure(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Study 2: Adam from U[1.5, 2.5] (appendix 7.E).


def init_params(key, dim, low, high):
    """μ, A, b with every entry drawn from U[low, high] (thesis Fig. 7.E.1)."""
    k_mu, k_a, k_b = jax.random.split(key, 3)
    u = lambda k, shape: jax.random.uniform(k, shape, minval=low, maxval=high)
    return {"mu": u(k_mu, (dim,)), "A": u(k_a, (dim, dim)), "b": u(k_b, (dim,))}


def distances(params, best):
    """‖μ − μ*‖₂ (generative network) and ‖(A, b) − (A*, b*)‖₂ (inference network)."""
    d_theta = jnp.linalg.norm(params["mu"] - best["mu"])
    d_phi = jnp.sqrt(jnp.sum((params["A"] - best["A"]) ** 2) + jnp.sum((params["b"] - best["b"]) ** 2))
    return d_theta, d_phi


def make_train_chunk(x, best, q_var, m, k, batch_size, learning_rate):
    """A jitted ``(params, opt_state, keys [seeds, steps, 2]) -> (params, opt_state, metrics)``, vmapped over seeds.

    Each step draws ``batch_size`` data points with replacement and ``M·K`` reparameterised particles per point, and
    takes one Adam step on −(1/B) Σ_b MIWAE_{M,K}(x_b) for θ and φ together. Metrics: the mean bound over the chunk's
    steps and the two distances after it.
    """
    opt = optax.adam(learning_rate)

    def step(carry, key):
        params, opt_state = carry
        k_idx, k_eps = jax.random.split(key)
        xb = x[jax.random.randint(k_idx, (batch_size,), 0, x.shape[0])]
        eps = jax.random.normal(k_eps, (batch_size, m * k, x.shape[1]))

        def loss(p):
            log_p, log_q = toy_gaussian_snr.log_probs(p, xb, eps, q_var)
            s = objectives.miwae(log_p, log_q, num_repeats=m)  # θ and φ share the surrogate (s.phi == s.theta)
            return s.theta, s.bound

        (_, bound), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), bound

    def chunk(params, opt_state, keys):
        (params, opt_state), bounds = jax.lax.scan(step, (params, opt_state), keys)
        d_theta, d_phi = distances(params, best)
        return params, opt_state, {"bound": jnp.mean(bounds), "dist_theta": d_theta, "dist_phi": d_phi}

    return opt, jax.jit(jax.vmap(chunk))


def run_adam(cfg, key):
    ac = cfg.adam
    x, best = toy_gaussian_snr.make_problem(jax.random.fold_in(key, 0), cfg.dim, cfg.num_data, 0.0)
    np.testing.assert_allclose(best["b"], optimum(x)["b"], rtol=1e-6)  # make_problem's point at offset 0 is 7.B's
    init_keys = jax.random.split(jax.random.fold_in(key, 1), ac.num_seeds)
    params0 = jax.vmap(lambda k: init_params(k, cfg.dim, ac.init_low, ac.init_high))(init_keys)
    d0_theta, d0_phi = jax.vmap(distances, in_axes=(0, None))(params0, best)
    num_chunks = ac.num_steps // ac.log_every
    steps = [0] + [(c + 1) * ac.log_every for c in range(num_chunks)]
    out = {"steps": steps, "settings": []}
    for K, M in ac.settings:
        t0 = time.time()
        opt, train_chunk = make_train_chunk(x, best, cfg.q_var, M, K, ac.batch_size, ac.learning_rate)
        params, opt_state = params0, jax.vmap(opt.init)(params0)
        trace = {"bound": [[np.nan] * ac.num_seeds], "dist_theta": [d0_theta.tolist()], "dist_phi": [d0_phi.tolist()]}
        run_key = jax.random.fold_in(key, 1000 * M + K)
        for c in range(num_chunks):
            keys = jax.random.split(jax.random.fold_in(run_key, c), ac.num_seeds * ac.log_every)
            params, opt_state, metrics = train_chunk(params, opt_state, keys.reshape(ac.num_seeds, ac.log_every, -1))
            for name, value in metrics.items():
                trace[name].append(np.asarray(value).tolist())
            if (c + 1) % max(1, num_chunks // 5) == 0 or c + 1 == num_chunks:
                print(
                    f"[adam] K={K} M={M} step {steps[c + 1]}: bound {np.mean(metrics['bound']):.4g}, "
                    f"‖μ−μ*‖ {np.mean(metrics['dist_theta']):.4g}, ‖φ−φ*‖ {np.mean(metrics['dist_phi']):.4g} "
                    f"({time.time() - t0:.0f}s)",
                    flush=True,
                )
        # [points, seeds] -> [seeds, points]
        trace = {name: np.asarray(v, np.float64).T for name, v in trace.items()}
        tail = max(1, int(round(ac.final_fraction * num_chunks)))
        final = {}
        for name, v in trace.items():
            per_seed = v[:, -tail:].mean(1)
            final[name] = {"mean": float(per_seed.mean()), "std": float(per_seed.std()), "per_seed": per_seed.tolist()}
            final[name + "_last"] = {"mean": float(v[:, -1].mean()), "std": float(v[:, -1].std())}
        out["settings"].append(
            {"K": K, "M": M, **{name: v.tolist() for name, v in trace.items()}, "final": final,
             "seconds": time.time() - t0}
        )  # fmt: skip
    for name in ("dist_theta", "dist_phi"):
        best_row = min(out["settings"], key=lambda r: r["final"][name]["mean"])
        out[f"best_{name}"] = {"K": best_row["K"], "M": best_row["M"]}
    return out


def plot_adam(res, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(res["steps"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("bound", "training bound (ELBO_IS, chunk mean)", "linear"),
        ("dist_theta", "‖μ − μ*‖₂ (generative network)", "log"),
        ("dist_phi", "‖(A, b) − (A*, b*)‖₂ (inference network)", "log"),
    )
    for i, row in enumerate(res["settings"]):
        color = plotting.color_for(i)
        for ax, (name, _, _) in zip(axes, panels):
            v = np.asarray(row[name])
            mean, std = v.mean(0), v.std(0)
            ax.plot(steps, mean, color=color, lw=1.5, label=f"K = {row['K']}, M = {row['M']}")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    lows = [np.nanmin(np.asarray(r["bound"])[:, 1:].mean(0)) for r in res["settings"]]
    for ax, (name, title, scale) in zip(axes, panels):
        ax.set(xlabel="iteration", title=title, yscale=scale)
        if name == "bound":  # the first chunks' bounds are thousands of nats below; show the end
            highs = [np.nanmax(np.asarray(r["bound"]).mean(0)) for r in res["settings"]]
            ax.set_ylim(max(min(lows), max(highs) - 20), max(highs) + 2)
        ax.legend(fontsize=8)
    ac = cfg.adam
    fig.suptitle(
        f"Adam (lr {ac.learning_rate:g}, batch {ac.batch_size}) from U[{ac.init_low}, {ac.init_high}]: "
        f"mean ± std over {ac.num_seeds} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    plotting.save_figure(fig, path)
    plt.close(fig)
    return path


THETA_THRESHOLD, PHI_THRESHOLD = 0.15, 1.0  # distances for the "first step below" columns of the Adam table


def first_step_below(steps, values, threshold):
    """The first logged step at which the mean over seeds of ``values`` [seeds, points] is below ``threshold``."""
    below = np.nonzero(np.asarray(values, np.float64).mean(0) < threshold)[0]
    return int(steps[below[0]]) if len(below) else None


def tables(results) -> str:
    """The measured numbers of ``results.json`` as the markdown tables of docs/results.md."""
    lines = []
    if "rmse" in results:
        res = results["rmse"]
        lines += [
            f"θ-gradient RMSE to ∇_μ log Z (R = {res['R']}; ‖∇_μ log Z‖ = {res['true_gradient_norm']:.4f}):",
            "",
            "| K or M | IWAE RMSE | IWAE ‖bias‖ | IWAE sd | VAE RMSE | VAE RMSE exact | VAE ‖bias‖ exact |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for a, b in zip(res["sweeps"]["iwae_vs_K"], res["sweeps"]["vae_vs_M"]):
            lines.append(
                f"| {a['K']} / {b['M']} | {a['rmse']:.4g} | {a['bias_norm_debiased']:.3g} | {a['sd']:.3g} | "
                f"{b['rmse']:.4g} | {b['rmse_exact']:.4g} | {b['bias_norm_exact']:.4g} |"
            )
        for sweep in ("iwae_vs_K", "vae_vs_M"):
            slopes = ", ".join(f"{v:+.2f}" for v in res[f"local_slopes_{sweep}"])
            lines.append(f"\nlocal log-log slopes of the RMSE, {sweep}: {slopes}")
        lines.append("")
    if "adam" in results:
        res, frac = results["adam"], results["config"]["adam"]["final_fraction"]
        lines += [
            f"Adam, final values (mean over the last {frac:.0%} of the logged points, then mean ± std over seeds):",
            "",
            "| K | M | ‖μ − μ*‖₂ | ‖(A, b) − (A*, b*)‖₂ | bound (ELBO_IS) | ‖μ − μ*‖₂ last | ‖φ − φ*‖₂ last "
            f"| first step ‖μ − μ*‖₂ < {THETA_THRESHOLD} | first step ‖φ − φ*‖₂ < {PHI_THRESHOLD} |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in res["settings"]:
            f = row["final"]
            reached = [
                first_step_below(res["steps"], row[name], threshold)
                for name, threshold in (("dist_theta", THETA_THRESHOLD), ("dist_phi", PHI_THRESHOLD))
            ]
            lines.append(
                f"| {row['K']} | {row['M']} | {f['dist_theta']['mean']:.4f} ± {f['dist_theta']['std']:.4f} | "
                f"{f['dist_phi']['mean']:.4f} ± {f['dist_phi']['std']:.4f} | {f['bound']['mean']:.3f} | "
                f"{f['dist_theta_last']['mean']:.4f} | {f['dist_phi_last']['mean']:.4f} | "
                + " | ".join("—" if r is None else str(r) for r in reached)
                + " |"
            )
        lines.append(
            f"\nbest θ: K = {res['best_dist_theta']['K']}, M = {res['best_dist_theta']['M']}; "
            f"best φ: K = {res['best_dist_phi']['K']}, M = {res['best_dist_phi']['M']}"
        )
    return "\n".join(lines)


def run(cfg, workdir):
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    key = jax.random.PRNGKey(cfg.seed)
    results = {"config": cfg.to_dict(), "plots": []}
    if cfg.run_rmse:
        results["rmse"] = run_rmse(cfg, key)
        print(f"[rmse] local slopes: {json.dumps({k: v for k, v in results['rmse'].items() if 'slopes' in k})}")
    if cfg.run_adam:
        results["adam"] = run_adam(cfg, key)
        for row in results["adam"]["settings"]:
            f = row["final"]
            print(
                f"[adam] final (mean of the last {cfg.adam.final_fraction:.0%}) K={row['K']} M={row['M']}: "
                f"‖μ−μ*‖ {f['dist_theta']['mean']:.4g} ± {f['dist_theta']['std']:.2g}, "
                f"‖φ−φ*‖ {f['dist_phi']['mean']:.4g} ± {f['dist_phi']['std']:.2g}, bound {f['bound']['mean']:.4g}",
                flush=True,
            )
    results["seconds"] = time.time() - t0
    if cfg.run_rmse:
        results["plots"].append(plot_rmse(results["rmse"], os.path.join(workdir, "estimators_toy_rmse.png")))
    if cfg.run_adam:
        results["plots"].append(plot_adam(results["adam"], cfg, os.path.join(workdir, "estimators_toy_adam.png")))
    results["plots"] = [str(p) for p in results["plots"]]
    path = write_results(results, workdir)
    print(tables(results))
    print(f"done in {results['seconds']:.0f}s; wrote {path} and {results['plots']}")
    return results


def main(config, workdir, report):
    if report:  # the tables of a finished run, without running anything
        with open(os.path.join(workdir, "results.json")) as f:
            print(tables(json.load(f)))
    else:
        run(config, workdir)


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "toy_gaussian_convergence")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/toy_gaussian_convergence", "output directory")
    _REPORT = flags.DEFINE_bool("report", False, "print the tables of <workdir>/results.json instead of running")
    app.run(lambda argv: main(_CONFIG.value, _WORKDIR.value, _REPORT.value))

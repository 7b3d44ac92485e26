"""MNIST Table 7.5.1 (thesis §7.5.1): one-stochastic-layer VAE trained with IWAE / PIWAE / MIWAE / CIWAE / VAE.

Architecture (Burda et al. 2016, one stochastic layer): encoder 784-200-200-(50 mean, 50 log-std), decoder
50-200-200-784 Bernoulli logits, tanh, prior N(0, I); dynamic binarisation of training images; the test images are
stochastically binarised once (fixed seed). Every method uses a budget of T = 64 particles per datapoint; the particle
axis of 64 is split into (M, K) by ``ocr_jax.objectives`` (MIWAE/PIWAE: ``num_repeats = M``; VAE = MIWAE(64, 1)).
Test metrics: IWAE-64, log p̂(x) = IWAE-5000 (``diagnostics.log_marginal_chunked``) and
−KL(Q‖P) = IWAE-64 − log p̂(x) (Eq. 7.16–7.18).
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app, flags

from experiments.study_results import load_resumable_results, save_study_figure, write_results
from ocr_jax import configs, diagnostics, estimators, objectives


def init_params(key, hidden, latent):
    sizes_enc = [784, hidden, hidden, 2 * latent]
    sizes_dec = [latent, hidden, hidden, 784]

    def mlp(key, sizes):
        keys = jax.random.split(key, len(sizes) - 1)
        return [
            {"w": jax.random.normal(k, (a, b)) * math.sqrt(1.0 / a), "b": jnp.zeros(b)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:])
        ]

    k1, k2 = jax.random.split(key)
    return {"encoder": mlp(k1, sizes_enc), "decoder": mlp(k2, sizes_dec)}


def apply_mlp(layers, h):
    for i, layer in enumerate(layers):
        h = h @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            h = jnp.tanh(h)
    return h


def log_weights(params, x, key, num_particles):
    """x ``[B, 784]`` binary -> (log p(x, z) ``[B, P]``, log q(z | x) ``[B, P]``) with reparameterised z."""
    out = apply_mlp(params["encoder"], x)
    mean, log_std = jnp.split(out, 2, axis=-1)
    eps = jax.random.normal(key, (x.shape[0], num_particles, mean.shape[-1]))
    z = mean[:, None] + jnp.exp(log_std)[:, None] * eps
    log_norm = -0.5 * math.log(2 * math.pi) * mean.shape[-1]
    log_q = log_norm - jnp.sum(log_std, -1)[:, None] - 0.5 * jnp.sum(eps**2, -1)
    log_prior = log_norm - 0.5 * jnp.sum(z**2, -1)
    logits = apply_mlp(params["decoder"], z)
    log_lik = jnp.sum(x[:, None] * logits - jax.nn.softplus(logits), -1)
    return log_prior + log_lik, log_q


def surrogates(kind, arg, log_p, log_q):
    """The objective ``kind`` (iwae, miwae, piwae, ciwae; ``arg`` its M or β) from ocr_jax.estimators on a VAE whose
    latent is reparameterised."""
    hyper = {"miwae": {"num_repeats": int(arg)}, "piwae": {"num_repeats": int(arg)}, "ciwae": {"beta": float(arg)}}.get(
        kind, {}
    )
    estimator = estimators.get(kind, **hyper)
    return estimator.surrogates(estimators.LogWeightTerms(log_p=log_p, log_q_reparam=log_q), ())[0]


def schedule(cfg, steps_per_epoch):
    """Burda et al.: stage i runs 3^i epochs at lr base·10^(−i/7). Returns (optax schedule, total steps)."""
    boundaries, values, total = {}, [], 0
    for i in range(cfg.num_stages):
        values.append(cfg.base_lr * 10 ** (-i / 7))
        total += 3**i * steps_per_epoch
        boundaries[total] = 10 ** (-1 / 7)
    del boundaries[total]
    return optax.piecewise_constant_schedule(cfg.base_lr, boundaries), total


def method_grads(kind, arg, params, x, key, budget):
    """The method's parameter update direction on a binary batch x ``[B, 784]``: the gradient of its surrogate
    (one for both networks), or for PIWAE each group's own surrogate (θ = decoder: the IWAE-style bound of Eq.
    7.15a; φ = encoder: Eq. 7.15b). Returns (gradients like ``params``, the θ-loss)."""

    def loss(params):
        if kind != "piwae":  # one surrogate serves both groups
            value = surrogates(kind, arg, *log_weights(params, x, key, budget)).theta
            return value, value
        sg = jax.lax.stop_gradient
        decoder_only = {"encoder": sg(params["encoder"]), "decoder": params["decoder"]}
        encoder_only = {"encoder": params["encoder"], "decoder": sg(params["decoder"])}
        theta_loss = surrogates(kind, arg, *log_weights(decoder_only, x, key, budget)).theta
        phi_loss = surrogates(kind, arg, *log_weights(encoder_only, x, key, budget)).phi
        return theta_loss + phi_loss, theta_loss

    (_, value), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, value


def snr_weight_indices(params, count, x, seed=0):
    """``count`` randomly chosen weights of each encoder layer (thesis Fig. 7.5.4: 20 per layer), as flat indices
    into each layer's ``w [in, out]`` ``[layers][count]``; fixed by ``seed`` so that every method tracks the same
    weights. The first layer's are drawn from the rows of pixels that are nonzero in some image of ``x [B, 784]``,
    the batch the SNR is measured on: a weight on a pixel blank in all of them has a gradient of exactly zero in
    every draw, hence no SNR (0/0)."""
    rng = np.random.default_rng(seed)
    indices = []
    for i, layer in enumerate(params["encoder"]):
        rows, cols = layer["w"].shape
        live = np.flatnonzero(np.asarray(x).any(0)) if i == 0 else np.arange(rows)
        if live.size * cols < count:
            raise ValueError(f"encoder layer {i + 1} has {live.size * cols} weights with a gradient; need {count}")
        flat = (live[:, None] * cols + np.arange(cols)).reshape(-1)
        indices.append(rng.choice(flat, size=count, replace=False))
    return indices


def encoder_weight_snr(kind, arg, params, x, key, cfg, indices):
    """SNR = |mean| / std (ddof 1) of the method's gradient for the chosen encoder weights over
    ``cfg.snr_repeats`` draws of the particles on one fixed batch x; returns ``[layers, 2]`` (mean and std of the
    SNR over the chosen weights of each layer), thesis Fig. 7.5.4."""
    grads = jax.lax.map(  # in groups of 10 draws: the memory of 10 training steps, not of snr_repeats
        lambda k: method_grads(kind, arg, params, x, k, cfg.budget)[0],
        jax.random.split(key, cfg.snr_repeats),
        batch_size=10,
    )
    snrs = diagnostics.snr(
        [layer["w"].reshape(cfg.snr_repeats, -1)[:, jnp.asarray(i)] for layer, i in zip(grads["encoder"], indices)]
    )
    return jnp.stack([jnp.stack([jnp.mean(v), jnp.std(v)]) for v in snrs])


def evaluate(params, x_test, key, cfg):
    """Test metrics: mean IWAE-64, log p̂(x) (IWAE with ``log_marginal_particles``), −KL(Q‖P) = their
    difference, and per image the ESS of the log p̂ particles divided by their number (Eq. 7.19, Fig. 7.5.3)."""

    def batch_metrics(x, key):
        k1, k2 = jax.random.split(key)
        lp, lq = log_weights(params, x, k1, cfg.eval_particles)
        iwae64 = objectives.log_mean_exp(lp - lq)
        lw_fn = lambda k, n: jnp.subtract(*log_weights(params, x, k, n))
        n = cfg.log_marginal_particles
        log_w = diagnostics.log_weights_chunked(lw_fn, k2, n, cfg.log_marginal_chunk)  # [B, n], drawn once
        log_phat = objectives.log_mean_exp(log_w)
        ess_fraction = diagnostics.ess(log_w) / n  # Eq. 7.19 over the log p̂ particles
        return iwae64, log_phat, ess_fraction

    xs = x_test.reshape(-1, cfg.eval_batch, 784)
    keys = jax.random.split(key, xs.shape[0])
    iwae64, log_phat, ess_fraction = jax.jit(lambda xs, ks: jax.lax.map(lambda a: batch_metrics(*a), (xs, ks)))(
        xs, keys
    )
    iwae64, log_phat = float(jnp.mean(iwae64)), float(jnp.mean(log_phat))
    return {
        "IWAE-64": iwae64,
        "log p_hat": log_phat,
        "-KL(Q||P)": iwae64 - log_phat,
        "ess_fraction": np.asarray(ess_fraction).ravel().tolist(),
    }


def train_method(name, cfg, seed, x_train, x_test):
    """Trains method ``name`` from seed ``seed`` and returns its test metrics, training curve and, every
    ``cfg.snr_every`` steps, the encoder weights' SNR (``snr_curve``: [(step, [layers][mean, std])])."""
    kind, arg = cfg.methods[name]
    key = jax.random.PRNGKey(seed)
    params = init_params(jax.random.fold_in(key, 1), cfg.hidden, cfg.latent)
    steps_per_epoch = x_train.shape[0] // cfg.batch_size
    lr, total = schedule(cfg, steps_per_epoch)
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    opt = optax.adam(lr, eps=1e-4)  # Burda et al. use ε = 1e-4
    opt_state = opt.init(params)
    snr_key = jax.random.fold_in(key, 2)  # the SNR's particle draws, apart from training's keys (10 + step)
    # one fixed batch, binarised once, for the SNR (the same images for every method and step)
    x_snr = jax.random.bernoulli(jax.random.PRNGKey(4321), x_train[: cfg.batch_size]).astype(jnp.float32)
    indices = snr_weight_indices(params, cfg.snr_weights, x_snr)
    snr_fn = jax.jit(lambda params, key: encoder_weight_snr(kind, arg, params, x_snr, key, cfg, indices))

    @jax.jit
    def step(params, opt_state, idx, key):
        k_bin, k_z = jax.random.split(key)
        x = jax.random.bernoulli(k_bin, x_train[idx]).astype(jnp.float32)  # dynamic binarisation
        grads, value = method_grads(kind, arg, params, x, k_z, cfg.budget)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(seed)
    t0 = time.time()
    losses, snr_curve = [], []
    for s in tqdm.trange(total, desc=f"{name} seed {seed}", disable=None, mininterval=5):
        if cfg.snr_every > 0 and (s % cfg.snr_every == 0):
            snr_curve.append((s, np.asarray(snr_fn(params, jax.random.fold_in(snr_key, s))).tolist()))
        if s % steps_per_epoch == 0:
            perm = rng.permutation(x_train.shape[0])
        idx = perm[(s % steps_per_epoch) * cfg.batch_size : (s % steps_per_epoch + 1) * cfg.batch_size]
        params, opt_state, value = step(params, opt_state, jnp.asarray(idx), jax.random.fold_in(key, 10 + s))
        if s % 500 == 0 or s == total - 1:
            losses.append((s, float(value)))
    if cfg.snr_every > 0:
        snr_curve.append((total, np.asarray(snr_fn(params, jax.random.fold_in(snr_key, total))).tolist()))
    train_seconds = time.time() - t0
    metrics = evaluate(params, x_test, jax.random.PRNGKey(seed + 7), cfg)
    metrics.update(
        {
            "steps": total,
            "epochs": total / steps_per_epoch,
            "train_seconds": train_seconds,
            "eval_seconds": time.time() - t0 - train_seconds,
            "train_curve": losses,
            "snr_curve": snr_curve,
        }
    )
    summary = {k: round(v, 3) for k, v in metrics.items() if k in METRICS}
    tqdm.tqdm.write(f"{name} seed {seed}: {summary} ({train_seconds:.0f}s training)")
    return metrics


METRICS = ("IWAE-64", "log p_hat", "-KL(Q||P)")
# Config fields that only choose which runs to do: a workdir resumes when only these grow.
RUN_SELECTORS = ("run_methods", "seeds")


def summarise(results, methods, seeds):
    """Per method and metric: mean, std (ddof 1 when ≥ 2 seeds) over seeds, whether it is the best mean, and
    whether it is *not* significantly different from the best at the 5 % level of Welch's t-test (Table 7.5.1's
    bold; ``None`` with fewer than 2 seeds)."""
    from scipy import stats

    values = {m: {k: np.array([results["runs"][f"{m}/seed{s}"][k] for s in seeds]) for k in METRICS} for m in methods}
    table = {m: {} for m in methods}
    for k in METRICS:
        best = max(methods, key=lambda m: values[m][k].mean())
        for m in methods:
            v, b = values[m][k], values[best][k]
            tied = None
            if len(seeds) >= 2:
                tied = bool(m == best or stats.ttest_ind(v, b, equal_var=False).pvalue >= 0.05)
            table[m][k] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "best": m == best,
                "not_significantly_worse": tied,
            }
    return table


def table_markdown(table):
    """Table 7.5.1 as markdown: mean ± std; **bold** = best or not significantly worse (Welch, 5 %)."""
    lines = ["| method | " + " | ".join(METRICS) + " |", "| --- |" + " --- |" * len(METRICS)]
    for m, row in table.items():
        cells = []
        for k in METRICS:
            c = row[k]
            text = f"{c['mean']:.2f} ± {c['std']:.2f}"
            cells.append(f"**{text}**" if c["best"] or c["not_significantly_worse"] else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_data(cfg):
    """MNIST as (training images ``[60000, 784]`` in [0, 1], the first ``cfg.num_test`` test images stochastically
    binarised once with a fixed seed ``[num_test, 784]``)."""
    from ocr_jax.data.mnist import load_mnist

    x_train = jnp.asarray(load_mnist("train", as_float=True)[0].reshape(-1, 784))
    x_test_gray = load_mnist("test", as_float=True)[0].reshape(-1, 784)[: cfg.num_test]
    x_test = jax.random.bernoulli(jax.random.PRNGKey(12345), x_test_gray).astype(jnp.float32)  # stochastic, fixed
    return x_train, x_test


def run(cfg, workdir, data=None):
    """Trains every (method, seed) not yet in ``<workdir>/results.json`` (resumable), then summarises and plots.
    ``data``: (x_train, x_test) as :func:`load_data` returns them; default MNIST."""
    os.makedirs(workdir, exist_ok=True)
    x_train, x_test = load_data(cfg) if data is None else data
    results = load_resumable_results(cfg, workdir, RUN_SELECTORS)
    for seed in cfg.seeds:
        for name in cfg.run_methods:
            if f"{name}/seed{seed}" in results["runs"]:
                continue
            results["runs"][f"{name}/seed{seed}"] = train_method(name, cfg, seed, x_train, x_test)
            write_results(results, workdir)
    results["table"] = summarise(results, list(cfg.run_methods), list(cfg.seeds))
    results["table_markdown"] = table_markdown(results["table"])
    path = write_results(results, workdir)
    print(results["table_markdown"])
    results["plots"] = plot(results, cfg, workdir)
    print(f"wrote {path} and {results['plots']}")
    return results


def plot(results, cfg, workdir):
    """Fig. 7.5.3 (per-image ESS / samples, violins), Fig. 7.5.4 (encoder weights' SNR during training, mean ± std
    over the chosen weights, seed 0 of the run) and, when the sweep's methods ran, Fig. 7.5.2 (metrics minus
    IWAE's against M and β)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, seed = list(cfg.run_methods), cfg.seeds[0]
    runs = {m: results["runs"][f"{m}/seed{seed}"] for m in methods}
    paths = []
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 4))
    ax.violinplot([runs[m]["ess_fraction"] for m in methods], showmedians=True)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=f"ESS / {cfg.log_marginal_particles}", yscale="log", title=f"Per-image ESS (Fig. 7.5.3), seed {seed}")
    paths.append(save_study_figure(fig, workdir, "mnist_ess_violins.png"))
    if cfg.snr_every > 0:
        layers = len(runs[methods[0]]["snr_curve"][0][1])
        fig, axes = plt.subplots(1, layers, figsize=(4.5 * layers, 3.8), squeeze=False)
        for m in methods:
            steps = [s for s, _ in runs[m]["snr_curve"]]
            v = np.array([row for _, row in runs[m]["snr_curve"]])  # [points, layers, (mean, std)]
            for j in range(layers):
                axes[0, j].plot(steps, v[:, j, 0], label=m)
                axes[0, j].fill_between(steps, v[:, j, 0] - v[:, j, 1], v[:, j, 0] + v[:, j, 1], alpha=0.15)
        for j in range(layers):
            axes[0, j].set(yscale="log", xlabel="step", title=f"encoder layer {j + 1}", ylabel="SNR")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"SNR of {cfg.snr_weights} encoder weights per layer (Fig. 7.5.4), seed {seed}")
        paths.append(save_study_figure(fig, workdir, "mnist_encoder_snr.png"))
    sweeps = {  # IWAE is each sweep's origin: M = 1 (MIWAE, PIWAE) and β = 0 (CIWAE)
        kind: [(1 if kind != "ciwae" else 0, "IWAE")]
        + sorted((arg, m) for m, (k, arg) in cfg.methods.items() if k == kind and m in methods)
        for kind in ("miwae", "piwae", "ciwae")
    }
    if "IWAE" in methods and all(len(v) >= 3 for v in sweeps.values()):
        table = results["table"]
        fig, axes = plt.subplots(len(METRICS), 3, figsize=(12, 9), squeeze=False)
        for j, kind in enumerate(("miwae", "piwae", "ciwae")):
            for i, k in enumerate(METRICS):
                ax = axes[i, j]
                args = [a for a, _ in sweeps[kind]]
                diffs = [table[m][k]["mean"] - table["IWAE"][k]["mean"] for _, m in sweeps[kind]]
                ax.plot(args, diffs, "o-")
                ax.axhline(0.0, ls=":", color="k")
                ax.set(xlabel="β" if kind == "ciwae" else "M", ylabel=f"{k} − IWAE", title=kind.upper())
                if kind != "ciwae":
                    ax.set_xscale("log", base=2)
        fig.suptitle("Fig. 7.5.2: test metrics relative to IWAE")
        paths.append(save_study_figure(fig, workdir, "mnist_sweep_vs_iwae.png"))
    return paths


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "mnist_bounds")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_bounds", "output directory")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value) and None)

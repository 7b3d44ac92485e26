"""MNIST Table 7.5.1 (thesis §7.5.1): one-stochastic-layer VAE trained with IWAE / PIWAE / MIWAE / CIWAE / VAE.

Architecture (Burda et al. 2016, one stochastic layer): encoder 784-200-200-(50 mean, 50 log-std), decoder
50-200-200-784 Bernoulli logits, tanh, prior N(0, I); dynamic binarisation of training images; the test images are
stochastically binarised once (fixed seed). Every method uses a budget of T = 64 particles per datapoint; the particle
axis of 64 is split into (M, K) by ``ocr_jax.objectives`` (MIWAE/PIWAE: ``num_repeats = M``; VAE = MIWAE(64, 1)).
Test metrics: IWAE-64, log p̂(x) = IWAE-5000 (``diagnostics.log_marginal_chunked``) and
−KL(Q‖P) = IWAE-64 − log p̂(x) (Eq. 7.16–7.18).
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


def evaluate(params, x_test, key, cfg):
    def batch_metrics(x, key):
        k1, k2 = jax.random.split(key)
        lp, lq = log_weights(params, x, k1, cfg.eval_particles)
        iwae64 = objectives.log_mean_exp(lp - lq)
        lw_fn = lambda k, n: jnp.subtract(*log_weights(params, x, k, n))
        log_phat = diagnostics.log_marginal_chunked(lw_fn, k2, cfg.log_marginal_particles, cfg.log_marginal_chunk)
        return iwae64, log_phat

    xs = x_test.reshape(-1, cfg.eval_batch, 784)
    keys = jax.random.split(key, xs.shape[0])
    iwae64, log_phat = jax.jit(lambda xs, ks: jax.lax.map(lambda a: batch_metrics(*a), (xs, ks)))(xs, keys)
    iwae64, log_phat = float(jnp.mean(iwae64)), float(jnp.mean(log_phat))
    return {"IWAE-64": iwae64, "log p_hat": log_phat, "-KL(Q||P)": iwae64 - log_phat}


def train_method(name, cfg, x_train, x_test):
    kind, arg = cfg.methods[name]
    key = jax.random.PRNGKey(cfg.seed)
    params = init_params(jax.random.fold_in(key, 1), cfg.hidden, cfg.latent)
    steps_per_epoch = x_train.shape[0] // cfg.batch_size
    lr, total = schedule(cfg, steps_per_epoch)
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    opt = optax.adam(lr, eps=1e-4)  # Burda et al. use ε = 1e-4
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, idx, key):
        k_bin, k_z = jax.random.split(key)
        x = jax.random.bernoulli(k_bin, x_train[idx]).astype(jnp.float32)  # dynamic binarisation

        def loss(params):
            if kind != "piwae":  # one surrogate serves both groups
                value = surrogates(kind, arg, *log_weights(params, x, k_z, cfg.budget)).theta
                return value, value
            # PIWAE: θ = decoder, φ = encoder, each group takes the gradient of its own surrogate.
            theta_loss = surrogates(
                kind,
                arg,
                *log_weights(
                    {"encoder": jax.lax.stop_gradient(params["encoder"]), "decoder": params["decoder"]},
                    x,
                    k_z,
                    cfg.budget,
                ),
            ).theta
            phi_loss = surrogates(
                kind,
                arg,
                *log_weights(
                    {"encoder": params["encoder"], "decoder": jax.lax.stop_gradient(params["decoder"])},
                    x,
                    k_z,
                    cfg.budget,
                ),
            ).phi
            return theta_loss + phi_loss, theta_loss

        (_, value), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    losses = []
    for s in range(total):
        if s % steps_per_epoch == 0:
            perm = rng.permutation(x_train.shape[0])
        idx = perm[(s % steps_per_epoch) * cfg.batch_size : (s % steps_per_epoch + 1) * cfg.batch_size]
        params, opt_state, value = step(params, opt_state, jnp.asarray(idx), jax.random.fold_in(key, 10 + s))
        if s % 500 == 0 or s == total - 1:
            losses.append((s, float(value)))
            print(f"{name} step {s}/{total} train bound {-float(value):.2f} ({time.time() - t0:.0f}s)", flush=True)
    train_seconds = time.time() - t0
    metrics = evaluate(params, x_test, jax.random.PRNGKey(cfg.seed + 7), cfg)
    metrics.update(
        {
            "steps": total,
            "epochs": total / steps_per_epoch,
            "train_seconds": train_seconds,
            "eval_seconds": time.time() - t0 - train_seconds,
            "train_curve": losses,
        }
    )
    print(f"{name}: {metrics}", flush=True)
    return metrics


def run(cfg, workdir):
    from ocr_jax.data.mnist import load_mnist

    os.makedirs(workdir, exist_ok=True)
    x_train = jnp.asarray(load_mnist("train", as_float=True)[0].reshape(-1, 784))
    x_test_gray = load_mnist("test", as_float=True)[0].reshape(-1, 784)[: cfg.num_test]
    x_test = jax.random.bernoulli(jax.random.PRNGKey(12345), x_test_gray).astype(jnp.float32)  # stochastic, fixed
    path = os.path.join(workdir, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results["config"] = cfg.to_dict()
    results.setdefault("methods", {})
    for name in cfg.run_methods:
        results["methods"][name] = train_method(name, cfg, x_train, x_test)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    # Flags are defined only when run as a script, so the module can be imported (tests) next to the others.
    _CONFIG = configs.define_config_flag("config", "mnist_bounds")
    _WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_bounds", "output directory")
    app.run(lambda argv: run(_CONFIG.value, _WORKDIR.value) and None)

"""A tiny VAE with a discrete "presence" latent: a real, fast Task for tests, demos and the loop benchmark.

It has the three parameter groups of AIR-like models, each with its own objective:

* ``generative`` (θ): decoder, background and presence prior; surrogate ``-ELBO``.
* ``inference`` (φ): encoder of q(z | x) (Gaussian, reparameterised) and q(pres | x) (Bernoulli, score function);
  surrogate ``-(ELBO + stop_grad(l̂) · log q(pres | x))`` with the NVIL-normalised learning signal
  ``l̂ = (ELBO − c − b(x)) / max(1, σ)`` (Mnih & Gregor 2014, eq. 8 and §3.3; c, σ are running moments kept in
  ``model_state``): ``ocr_jax.estimators.get("nvil")`` with one particle.
* ``baseline`` (ψ): input-dependent baseline b(x); surrogate ``mean((stop_grad(ELBO − c) − b(x))²)``.

Model: pres ~ Bernoulli(σ(prior_logit)), z ~ N(0, I)[latent], x[H, W] ~ Bernoulli(logits), with
``logits = pres · decoder(z) + (1 − pres) · background``. Data: synthetic 8×8 binary images that hold one
horizontal or vertical bar with probability 0.7 (so the presence latent has something to explain).
"""

from __future__ import annotations

from typing import Any

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import estimators
from ocr_jax.data import deterministic_batches
from ocr_jax.distributions import diag_normal_log_prob
from ocr_jax.training.tasks import register


def default_task_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(image_size=8, hidden=32, latent=4, num_train=1024, num_eval=256, data_seed=0, nvil_decay=0.9)
    )


def make_bars(num_images: int, image_size: int, seed: int) -> np.ndarray:
    """Binary float32 images ``[num_images, image_size, image_size]``; each has a full bar with probability 0.7."""
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, image_size, image_size), np.float32)
    present = rng.random(num_images) < 0.7
    vertical = rng.random(num_images) < 0.5
    where = rng.integers(0, image_size, num_images)
    for i in np.flatnonzero(present):
        if vertical[i]:
            images[i, :, where[i]] = 1.0
        else:
            images[i, where[i], :] = 1.0
    return images


class Encoder(nn.Module):
    hidden: int
    latent: int

    @nn.compact
    def __call__(self, x):  # x: [batch, H, W] -> (mu, log_std [batch, latent], pres_logit [batch])
        h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        out = nn.Dense(2 * self.latent + 1)(h)
        return out[:, : self.latent], out[:, self.latent : 2 * self.latent], out[:, -1]


class Decoder(nn.Module):
    hidden: int
    image_size: int

    @nn.compact
    def __call__(self, z, pres):  # z: [batch, latent], pres: [batch] -> (logits [batch, H, W], prior_logit [])
        size = self.image_size
        h = nn.relu(nn.Dense(self.hidden)(z))
        obj = nn.Dense(size * size)(h).reshape(-1, size, size)
        background = self.param("background", nn.initializers.constant(-2.0), (size, size))
        prior_logit = self.param("prior_logit", nn.initializers.zeros, ())
        return pres[:, None, None] * obj + (1.0 - pres[:, None, None]) * background, prior_logit


class Baseline(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):  # [batch, H, W] -> [batch]
        h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(1)(h)[:, 0]


class ToyVAETask:
    """`ocr_jax.training.tasks.Task` for the toy VAE (see module docstring)."""

    headline_metric = "elbo"

    def __init__(self, config: ml_collections.ConfigDict | None = None):
        cfg = default_task_config()
        if config:
            cfg.update(config)
        self.config = cfg
        self.encoder = Encoder(cfg.hidden, cfg.latent)
        self.decoder = Decoder(cfg.hidden, cfg.image_size)
        self.baseline = Baseline(cfg.hidden)
        self.estimator = estimators.get("nvil", decay=cfg.nvil_decay)
        self.train_images = make_bars(cfg.num_train, cfg.image_size, cfg.data_seed)
        self.eval_images = make_bars(cfg.num_eval, cfg.image_size, cfg.data_seed + 1)
        self._eval_fn = jax.jit(self._eval)

    # --- Task protocol ---------------------------------------------------------------------------------------
    def init(self, key, batch):
        x = jnp.asarray(batch["image"])
        k_enc, k_gen, k_base = jax.random.split(key, 3)
        z = jnp.zeros((x.shape[0], self.config.latent))
        params = {
            "inference": self.encoder.init(k_enc, x)["params"],
            "generative": self.decoder.init(k_gen, z, jnp.ones(x.shape[0]))["params"],
            "baseline": self.baseline.init(k_base, x)["params"],
        }
        return params, {"estimator": self.estimator.init()}

    def _elbo(self, params, x, key):
        """Per-example ELBO [batch] and log q(pres | x) [batch] for one sample of (z, pres)."""
        k_z, k_pres = jax.random.split(key)
        mu, log_std, pres_logit = self.encoder.apply({"params": params["inference"]}, x)
        z = mu + jnp.exp(log_std) * jax.random.normal(k_z, mu.shape)
        pres = jax.lax.stop_gradient(jax.random.bernoulli(k_pres, jax.nn.sigmoid(pres_logit)).astype(jnp.float32))
        logits, prior_logit = self.decoder.apply({"params": params["generative"]}, z, pres)
        log_lik = jnp.sum(distrax.Bernoulli(logits=logits).log_prob(x), axis=(-2, -1))
        log_pz = diag_normal_log_prob(z, 0.0, 1.0)
        log_qz = diag_normal_log_prob(z, mu, jnp.exp(log_std))
        log_q_pres = distrax.Bernoulli(logits=pres_logit).log_prob(pres)
        log_p_pres = distrax.Bernoulli(logits=prior_logit).log_prob(pres)
        elbo = log_lik + log_pz - log_qz + log_p_pres - log_q_pres
        return elbo, log_q_pres, log_lik, jax.nn.sigmoid(logits)

    def loss(self, params, model_state, batch, key, step):
        del step
        x = batch["image"]
        elbo, log_q_pres, log_lik, _ = self._elbo(params, x, key)
        b = self.baseline.apply({"params": params["baseline"]}, x)
        # One particle per image: log w = ELBO; its presence part is the score-function term.
        terms = estimators.LogWeightTerms(
            log_p=(elbo + log_q_pres)[:, None], log_q_score=log_q_pres[:, None], baselines=b
        )
        s, state = self.estimator.surrogates(terms, model_state["estimator"])
        metrics = {
            "elbo": jnp.mean(elbo),
            "log_likelihood": jnp.mean(log_lik),
            "baseline": jnp.mean(b),
            "signal_std": s.aux["signal_std"],
        }
        return estimators.losses_by_group(s), (metrics, {"estimator": state})

    def train_batches(self, *, seed, start_step, global_batch_size, process_index, process_count):
        return deterministic_batches(
            {"image": self.train_images},
            global_batch_size,
            seed=seed,
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )

    # --- optional hooks ----------------------------------------------------------------------------------------
    def _eval(self, params, x, key):
        elbo, _, _, probs = self._elbo(params, x, key)
        return jnp.mean(elbo), probs

    def evaluate(self, params, model_state, step, workdir) -> dict[str, Any]:
        """Held-out ELBO (one sample) and an image: 8 eval inputs (top row) above their reconstructions."""
        del model_state, workdir
        elbo, probs = self._eval_fn(params, jnp.asarray(self.eval_images), jax.random.PRNGKey(step))
        top = np.concatenate(list(self.eval_images[:8]), axis=1)
        bottom = np.concatenate(list(np.asarray(probs[:8])), axis=1)
        return {"eval/elbo": float(elbo), "images/reconstructions": np.concatenate([top, bottom], axis=0)}


register("toy_vae", ToyVAETask)

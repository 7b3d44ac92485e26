"""SQAIR as a training-loop Task (thesis §5.3, §5.D.1): IWAE over whole sequences with K particles, VIMCO for every
presence variable (discovery and propagation), reparameterisation for the continuous latents, and the
sequence-length curriculum.

Curriculum with a traced step. The train step is jitted once, so the sequence length cannot change the shapes:
the model always runs over all ``T`` frames of the batch and the per-step terms of frames ``t ≥ L(step)`` are
masked out of every particle's log-weight. Inference and the generative model are causal (frame t's latents
depend only on frames ≤ t), so the masked log-weight is exactly the log-weight of the first ``L`` frames and later
frames get zero gradient. (The cost is that of the full length from the start.)

The bound is divided by the number of frames used (as the official code does) for the surrogate losses; metrics
report it both per sequence and per frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import objectives
from ocr_jax.models.sqair import SQAIR, SQAIRConfig
from ocr_jax.training import tasks
from ocr_jax.training.data import deterministic_batches


def default_task_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        # model (§5.D.2)
        arch="mlp", hidden=256, z_what_dim=50, max_objects=3, canvas_size=50, glimpse_size=20,
        likelihood_sigma=0.3,
        # objective (§5.3)
        num_particles=5,
        # curriculum (§5.D.1): start_length frames, +1 every length_every steps, up to num_frames
        start_length=3, length_every=100_000,
        # data: "mnist" (moving multi-MNIST from the MNIST split) or "blobs" (synthetic digits, no download)
        data="mnist", num_frames=10, num_train=60_000, num_eval=1_000, max_digits=2, digit_size=28, data_seed=0,
    ))


def curriculum_length(step, start_length: int, length_every: int, max_length: int):
    """§5.D.1: ``min(start_length + step // length_every, max_length)`` (works on traced steps)."""
    return jnp.minimum(start_length + step // length_every, max_length)


def make_sequences(cfg: ml_collections.ConfigDict, split: str, num: int, seed: int) -> np.ndarray:
    """Moving multi-MNIST frames ``[num, T, H, W]`` uint8."""
    from ocr_jax.data.moving_mnist import make_moving_multi_mnist

    if cfg.data == "mnist":
        from ocr_jax.data.mnist import load_mnist

        digits, labels = load_mnist(split)
    elif cfg.data == "blobs":
        from ocr_jax.data.synthetic import blob_digits

        size = cfg.digit_size
        digits, labels = blob_digits(2000, seed=seed + (split == "test"), size=size, min_extent=max(2, size // 3),
                                     max_extent=max(3, (3 * size) // 4))
    else:
        raise ValueError(f"data must be 'mnist' or 'blobs'; got {cfg.data!r}")
    data = make_moving_multi_mnist(digits, labels, num, seed=seed, num_frames=cfg.num_frames,
                                   canvas_size=cfg.canvas_size, max_digits=cfg.max_digits)
    return data["frames"]


class SQAIRTask:
    """`ocr_jax.training.tasks.Task` for SQAIR. Parameter groups: ``generative`` (θ) and ``inference`` (φ)."""

    headline_metric = "iwae_per_frame"

    def __init__(self, config: ml_collections.ConfigDict | None = None, *, train_frames: np.ndarray | None = None):
        cfg = default_task_config()
        if config:
            cfg.update(config)
        self.config = cfg
        if cfg.num_particles < 2:
            raise ValueError("VIMCO needs num_particles >= 2")
        self.model = SQAIR(SQAIRConfig(
            image_shape=(cfg.canvas_size, cfg.canvas_size), glimpse_shape=(cfg.glimpse_size, cfg.glimpse_size),
            max_objects=cfg.max_objects, z_what_dim=cfg.z_what_dim, hidden=cfg.hidden, arch=cfg.arch,
            max_seq_len=cfg.num_frames, likelihood_sigma=cfg.likelihood_sigma))
        self._train_frames = train_frames

    @property
    def train_frames(self) -> np.ndarray:
        if self._train_frames is None:
            self._train_frames = make_sequences(self.config, "train", self.config.num_train, self.config.data_seed)
        return self._train_frames

    # --- Task protocol ----------------------------------------------------------------------------------------------

    def init(self, key, batch):
        del batch
        return self.model.init(key), {}

    def sequence_length(self, step):
        c = self.config
        return curriculum_length(step, c.start_length, c.length_every, c.num_frames)

    def per_particle_terms(self, params, frames, key, step):
        """Masked per-particle sums ``[batch, particles]``: (log p, log q of reparameterised latents, log q of the
        presence variables, log p(x|z)), and the number of frames used."""
        images = jnp.asarray(frames, jnp.float32)
        if jnp.issubdtype(jnp.asarray(frames).dtype, jnp.integer):
            images = images / 255.0
        out = self.model.infer(params, images, key, self.config.num_particles)
        length = self.sequence_length(step)
        mask = (jnp.arange(images.shape[1]) < length).astype(jnp.float32)  # [time]
        total = lambda x: jnp.sum(x * mask, axis=-1)  # noqa: E731  [batch, particles, time] -> [batch, particles]
        log_p = total(out["log_likelihood"] + out["log_p_disc"] + out["log_p_prop"])
        log_q_score = total(out["log_q_pres"])
        log_q_reparam = total(out["log_q_disc"] + out["log_q_prop"]) - log_q_score
        return log_p, log_q_reparam, log_q_score, total(out["log_likelihood"]), out, length

    def loss(self, params, model_state, batch, key, step):
        log_p, log_q_reparam, log_q_score, log_lik, out, length = self.per_particle_terms(
            params, batch["frames"], key, step)
        s = objectives.vimco(log_p, log_q_reparam, log_q_score)
        frames = length.astype(jnp.float32)
        surrogates = {"generative": s.theta / frames, "inference": s.phi / frames}
        sg = jax.lax.stop_gradient
        log_w = sg(log_p - log_q_reparam - log_q_score)
        mask = (jnp.arange(out["z_pres"].shape[2]) < length).astype(jnp.float32)
        metrics = {
            "iwae": s.bound,
            "iwae_per_frame": s.bound / frames,
            "elbo": jnp.mean(log_w),
            "log_likelihood": jnp.mean(sg(log_lik)),
            "kl": jnp.mean(sg(log_lik) - log_w),
            "num_objects": jnp.sum(jnp.mean(out["z_pres"].sum(-1), axis=(0, 1)) * mask) / frames,
            "num_discovered_after_first": jnp.sum(jnp.mean(out["num_discovered"], axis=(0, 1)) * mask
                                                  * (jnp.arange(mask.shape[0]) > 0)) / jnp.maximum(frames - 1, 1),
            "sequence_length": frames,
        }
        return surrogates, (metrics, model_state)

    def train_batches(self, *, seed, start_step, global_batch_size, process_index, process_count):
        return deterministic_batches({"frames": self.train_frames}, global_batch_size, seed=seed,
                                     start_step=start_step, process_index=process_index, process_count=process_count)


def make_sqair_task(config: ml_collections.ConfigDict) -> SQAIRTask:
    return SQAIRTask(config)


tasks.register("sqair", make_sqair_task)

__all__ = ["SQAIRTask", "curriculum_length", "default_task_config", "make_sequences", "make_sqair_task"]


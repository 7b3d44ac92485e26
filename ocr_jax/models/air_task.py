"""AIR on multi-MNIST as a training-loop Task (``ocr_jax.training.tasks``), with every estimator of AIR.md.

Estimators (``task_config.estimator``: any name of :mod:`ocr_jax.estimators` whose terms AIR provides, i.e. all but
``ws`` and ``dreg``; ``task_config.estimator_args``: its hyperparameters), all over K = ``num_particles`` particles
of the AIR posterior (:func:`log_weight_terms`). The ones studied here:

* ``"vimco"`` (default; the SQAIR paper's AIR setting, K = 5): IWAE bound; z_what/z_where reparameterised,
  z_pres by VIMCO's leave-one-out learning signal log Ẑ_K − Υ_{−k} (thesis Eq. 8.3) applied to log q of the whole
  presence path of particle k.
* ``"nvil"`` (the AIR paper, K = 1): ELBO; z_pres^i's learning signal is every downstream term
  (``air.downstream_learning_signal``) minus a per-step neural baseline b_ψ(x, z^{<i}) and a running mean, divided
  by a running std (Mnih & Gregor 2014). The baseline is its own parameter group with its own learning rate.
* ``"ww"`` (reweighted wake-wake, thesis §8.3): θ by wake-θ (= IWAE's θ-gradient). φ: wake-φ for z_pres
  (Σ_k w̃_k ∇ log q(z_pres,k), self-normalised weights) and the IWAE reparameterised gradient for z_what/z_where.
  This is the choice thesis §8.4.2 leaves open ("wake-φ treats samples as fixed"); we keep the reparameterised
  path for the continuous latents because it has far lower variance, and wake-φ only where no reparameterisation
  exists. ``tests/test_air_task.py`` checks both halves.
* ``"reinforce"``: IWAE bound with the raw score-function term (thesis Eq. 8.2, no baseline) — the failure case.

The count prior's per-step continue probability follows ``continue_prob_schedule`` (``count_prior`` config:
start, end, duration, kind); the value used is logged as ``continue_prob``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import estimators, objectives
from ocr_jax.diagnostics import log_marginal_chunked
from ocr_jax.models import air as air_lib
from ocr_jax.training import tasks
from ocr_jax.training.data import deterministic_batches



def default_task_config() -> ml_collections.ConfigDict:
    """Defaults for the AIR task (see ocr_jax/configs/air_multi_mnist.py for the tuned ones)."""
    return ml_collections.ConfigDict(
        dict(
            model=dict(),  # overrides of air_lib.AIRConfig fields
            estimator="vimco",  # any applicable name of ocr_jax.estimators
            estimator_args=dict(),  # its hyperparameters, e.g. dict(decay=0.9) for NVIL
            num_particles=5,
            count_prior=dict(start=0.5, end=0.5, duration=1, kind="constant"),
            data=dict(
                name="multi_mnist",
                recipe="kosiorek",
                max_digits=2,
                num_train=60_000,
                num_test=10_000,
                seed=0,
                method="generate",  # "builder" reads/writes the TFDS array_record copy
                num_frames=10,  # name="moving_multi_mnist" only: frames per sequence
                binarize=False,  # stochastic binarisation (Bernoulli likelihood, thesis §8.4.2)
                synthetic_digits=False,  # tests: random blobs instead of MNIST (no download)
            ),
            eval=dict(
                num_images=10_000,  # count accuracy / ELBO on this many test images
                batch_size=500,
                log_marginal_images=200,  # IWAE-K log p(x) on this many test images
                log_marginal_particles=1000,
                log_marginal_chunk=100,
                num_pictures=16,
                periodic_images=2_000,  # during training: count accuracy / ELBO on this many test images
                periodic_log_marginal_images=0,  # during training: no IWAE-K log p(x) (it is the costly part)
                # experiments/air_frames_report.py only (data.name = "moving_multi_mnist"): particles per frame, the
                # IoU of a tracking match, the addition classifier's steps and training sequences (as SQAIR's)
                sequence_particles=5, tracking_iou_threshold=0.3, addition_steps=10_000,
                addition_train_sequences=2_000,
            ),
        )
    )


def make_air_config(model_cfg: ml_collections.ConfigDict | dict) -> air_lib.AIRConfig:
    """AIRConfig from a (possibly nested) config dict; sequences become tuples so the config stays hashable."""
    fields = {f.name for f in dataclasses.fields(air_lib.AIRConfig)}
    values = dict(model_cfg)
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown AIR model options {sorted(unknown)}; valid: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    return air_lib.AIRConfig(**values)


def load_moving_sequences(data_cfg, split: str) -> dict[str, np.ndarray]:
    """For ``data.name = "moving_multi_mnist"``: the SQAIR task's moving multi-MNIST sequences (``num_train`` /
    ``num_test`` sequences of ``num_frames`` frames; train seed ``seed``, test seed ``seed + 1``, as
    ``sqair_task.SQAIRTask`` with ``data_seed = seed``), so that AIR trained frame-wise (the MLP-AIR row of thesis
    Table 5.4.1) sees exactly SQAIR's frames. Returns the ``make_moving_multi_mnist`` dict (``frames [n, T, H, W]``)."""
    from ocr_jax.data.moving_mnist import load_moving_multi_mnist

    num = data_cfg.num_train if split == "train" else data_cfg.num_test
    return load_moving_multi_mnist(split, num, seed=data_cfg.seed + (split == "test"),
                                   digits="blobs" if data_cfg.get("synthetic_digits", False) else "mnist",
                                   num_frames=data_cfg.num_frames, max_digits=data_cfg.max_digits)


def load_multi_mnist(data_cfg, split: str) -> dict[str, np.ndarray]:
    """The split named by ``data_cfg``: images uint8 [n, 50, 50] and counts [n] (multi-MNIST also has boxes and
    labels). ``data.name = "moving_multi_mnist"`` gives every frame of the moving sequences as an image
    (``load_moving_sequences``; ``num_train`` / ``num_test`` count sequences)."""
    if data_cfg.name == "moving_multi_mnist":
        from ocr_jax.data.moving_mnist import frames_as_images

        return frames_as_images(load_moving_sequences(data_cfg, split))
    num = data_cfg.num_train if split == "train" else data_cfg.num_test
    if data_cfg.get("synthetic_digits", False):
        from ocr_jax.data.multi_mnist import make_multi_mnist
        from ocr_jax.data.synthetic import blob_digits

        digits, labels = blob_digits(512, seed=data_cfg.seed + (split == "test"))
        return make_multi_mnist(digits, labels, num, seed=data_cfg.seed * 2 + (split == "test"),
                                max_digits=data_cfg.max_digits, recipe=data_cfg.recipe)
    from ocr_jax.data.builders import load_dataset

    return load_dataset(data_cfg.name, split, method=data_cfg.method, recipe=data_cfg.recipe,
                        max_digits=data_cfg.max_digits, num_train=data_cfg.num_train, num_test=data_cfg.num_test,
                        seed=data_cfg.seed)


def typed_key(key: jax.Array) -> jax.Array:
    """A typed PRNG key from either a typed key or a legacy ``uint32[2]`` key (the training loop's)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def to_float_images(images_uint8: jax.Array, key: jax.Array | None, binarize: bool) -> jax.Array:
    """uint8 ``[..., H, W]`` -> float32 in [0, 1]; with ``binarize``, a stochastic binarisation (x ~ Bernoulli)."""
    x = images_uint8.astype(jnp.float32) / 255.0
    if binarize:
        x = jax.random.bernoulli(key, x).astype(jnp.float32)
    return x


class AIRTask:
    """`ocr_jax.training.tasks.Task` for AIR on multi-MNIST (module docstring)."""

    headline_metric = "count_accuracy"

    def __init__(self, config: ml_collections.ConfigDict | None = None):
        cfg = default_task_config()
        if config:
            cfg.update(config)
        self.estimator = estimators.get(cfg.estimator, **cfg.estimator_args)
        estimators.check_applicable(self.estimator, PROVIDED_TERMS, cfg.num_particles, "AIR")
        self.config = cfg
        model_cfg = dict(cfg.model)
        if cfg.data.binarize:
            model_cfg.setdefault("likelihood", "bernoulli")
        model_cfg.setdefault("max_steps", cfg.data.max_digits + 1)
        self.model = air_lib.AIR(make_air_config(model_cfg))
        self._train = None
        self._test = None

    # -- data -----------------------------------------------------------------------------------------------------

    @property
    def train_data(self) -> dict[str, np.ndarray]:
        if self._train is None:
            self._train = load_multi_mnist(self.config.data, "train")
        return self._train

    @property
    def test_data(self) -> dict[str, np.ndarray]:
        if self._test is None:
            self._test = load_multi_mnist(self.config.data, "test")
        return self._test

    def train_batches(self, *, seed, start_step, global_batch_size, process_index, process_count):
        data = self.train_data
        arrays = {"images": data["images"], "counts": data["counts"].astype(np.int32)}
        return deterministic_batches(arrays, global_batch_size, seed=seed, start_step=start_step,
                                     process_index=process_index, process_count=process_count)

    # -- Task protocol --------------------------------------------------------------------------------------------

    def init(self, key, batch):
        images = to_float_images(jnp.asarray(batch["images"]), None, False)
        params = self.model.init(key, images)
        model_state = {"estimator": self.estimator.init(self.model.config.max_steps)}
        return params, model_state

    def continue_prob(self, step):
        p = self.config.count_prior
        return air_lib.continue_prob_schedule(step, start=p.start, end=p.end, duration=p.duration, kind=p.kind)

    def loss(self, params, model_state, batch, key, step):
        cfg = self.config
        k_bin, k_infer = jax.random.split(typed_key(key))
        images = to_float_images(batch["images"], k_bin, cfg.data.binarize)
        rho = self.continue_prob(step)
        out = self.model.infer(params, images, k_infer, num_particles=cfg.num_particles, continue_prob=rho)
        surrogates, estimator_state, bound = estimator_surrogates(self.estimator, self.model, params, out,
                                                                  model_state["estimator"])
        new_state = {**model_state, "estimator": estimator_state}
        counts = out.counts  # [B, K]
        metrics = {
            "bound": bound,
            "elbo": jnp.mean(out.log_weight),
            "log_likelihood": jnp.mean(out.log_likelihood),
            "kl": jnp.mean(jnp.sum(out.log_q_steps - out.log_p_steps, -1)),
            "count_accuracy": jnp.mean(counts[:, 0] == batch["counts"]),
            "mean_count": jnp.mean(counts.astype(jnp.float32)),
            "continue_prob": rho,
        }
        return surrogates, (metrics, new_state)

    # -- evaluation -------------------------------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnums=(0,))
    def _eval_batch(self, params, images_uint8, key, step):
        """One posterior sample per image: counts [B], log-weights [B], canvas, boxes, z_pres."""
        k_bin, k_infer = jax.random.split(typed_key(key))
        images = to_float_images(images_uint8, k_bin, self.config.data.binarize)
        out = self.model.infer(params, images, k_infer, num_particles=1, continue_prob=self.continue_prob(step))
        return dict(
            counts=out.counts[:, 0],
            log_weight=out.log_weight[:, 0],
            log_likelihood=out.log_likelihood[:, 0],
            canvas=out.canvas[:, 0],
            boxes=out.boxes(self.model.config.canvas_shape)[:, 0],
            z_pres=out.z_pres[:, 0],
        )

    @functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles", "chunk_size"))
    def log_marginal(self, params, images_uint8, key, step, *, num_particles, chunk_size):
        """IWAE-K estimate of log p(x) ``[B]`` with at most ``chunk_size`` particles materialised at once."""
        k_bin, k_particles = jax.random.split(typed_key(key))
        x = to_float_images(images_uint8, k_bin, self.config.data.binarize)
        rho = self.continue_prob(step)

        def log_weight_fn(k, n):
            return self.model.infer(params, x, k, num_particles=n, continue_prob=rho).log_weight

        return log_marginal_chunked(log_weight_fn, k_particles, num_particles, chunk_size)

    def evaluate(self, params, model_state, step, workdir) -> dict[str, Any]:
        """Count accuracy, ELBO, confusion matrix on the test split; log p(x) by IWAE-K on a subset; pictures."""
        del model_state
        # Periodic evaluation during training: count accuracy and ELBO on a test subset (cheap); the full test split
        # and IWAE-K log p(x) are computed once at the end by experiments/air_report.py.
        ev = self.config.eval
        results = evaluate_air(self, params, step, num_images=min(ev.periodic_images, ev.num_images),
                               log_marginal_images=min(ev.periodic_log_marginal_images, ev.log_marginal_images))
        scalars = {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        if workdir and jax.process_index() == 0:
            with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
                json.dump(eval_summary(results), f, indent=1)
        scalars["images/reconstructions"] = results["picture"]
        return scalars


def log_weight_terms(out: air_lib.AIROutput) -> estimators.LogWeightTerms:
    """AIR's per-particle log-weight terms ``[batch, particles(, steps)]`` (AIR.md Eq. 5): z_what/z_where
    reparameterised, z_pres score-function, per-step terms for NVIL's per-step signals."""
    return estimators.LogWeightTerms(
        log_p=out.log_likelihood + jnp.sum(out.log_p_steps, -1),
        log_q_reparam=jnp.sum(out.log_q_reparam, -1),
        log_q_score=jnp.sum(out.log_q_pres, -1),
        log_w_steps=out.log_p_steps - out.log_q_steps,
        log_q_score_steps=out.log_q_pres,
        log_likelihood=out.log_likelihood)


# The LogWeightTerms fields AIR provides (baselines: AIR.baseline_values, computed when an estimator needs them).
PROVIDED_TERMS = frozenset({"log_q_reparam", "log_q_score", "log_w_steps", "log_q_score_steps", "log_likelihood",
                            "baselines"})


def estimator_surrogates(estimator: estimators.Estimator, model: air_lib.AIR, params, out: air_lib.AIROutput,
                         estimator_state):
    """Surrogate losses per parameter group for one AIR forward pass ``out`` ([batch, particles, steps] terms).

    Returns ``(surrogates {"generative", "inference", "baseline"}, new_estimator_state, bound)``.
    """
    terms = log_weight_terms(out)
    if "baselines" in estimator.requires:
        terms = terms._replace(baselines=model.baseline_values(params, out))  # [B, K, N]: x and z^{<i} only
    s, new_state = estimator.surrogates(terms, estimator_state)
    return estimators.losses_by_group(s), new_state, s.bound


def log_marginal_of_images(task: AIRTask, params, images_uint8: np.ndarray, key: jax.Array, step: int,
                           batch_size: int = 50) -> np.ndarray:
    """IWAE-``eval.log_marginal_particles`` estimates of log p(x) ``[n]`` for ``images_uint8 [n, H, W]``, in batches of
    ``batch_size`` images (key ``fold_in(key, 10_000 + start)`` for the batch starting at ``start``) with at most
    ``eval.log_marginal_chunk`` particles materialised at once."""
    ev = task.config.eval
    chunk = min(ev.log_marginal_chunk, ev.log_marginal_particles)
    return np.concatenate([
        np.asarray(task.log_marginal(params, jnp.asarray(images_uint8[s:s + batch_size]),
                                     jax.random.fold_in(key, 10_000 + s), step,
                                     num_particles=ev.log_marginal_particles, chunk_size=chunk))
        for s in range(0, len(images_uint8), batch_size)])


def evaluate_air(task: AIRTask, params, step: int, *, num_images: int, log_marginal_images: int,
                 seed: int = 1234) -> dict[str, Any]:
    """Test-split metrics: count accuracy, confusion matrix [true, predicted], ELBO, log p(x|z), IWAE log p(x)."""
    cfg = task.config
    data = task.test_data
    n = min(num_images, len(data["images"]))
    bs = min(cfg.eval.batch_size, n)
    key = jax.random.PRNGKey(seed)
    N = task.model.config.max_steps
    confusion = np.zeros((N + 1, N + 1), np.int64)
    elbo, loglik, first = [], [], None
    for i, start in enumerate(range(0, n - n % bs if n >= bs else n, bs)):
        images = jnp.asarray(data["images"][start:start + bs])
        r = jax.device_get(task._eval_batch(params, images, jax.random.fold_in(key, i), step))
        np.add.at(confusion, (np.minimum(data["counts"][start:start + bs], N), r["counts"]), 1)
        elbo.append(r["log_weight"])
        loglik.append(r["log_likelihood"])
        if first is None:
            first = (np.asarray(images), r)
    total = confusion.sum()
    results: dict[str, Any] = {
        "step": step,
        "num_images": int(total),
        "count_accuracy": float(np.trace(confusion) / total),
        "elbo": float(np.mean(np.concatenate(elbo))),
        "log_likelihood": float(np.mean(np.concatenate(loglik))),
        "confusion": confusion,
    }
    results["kl"] = results["log_likelihood"] - results["elbo"]
    if log_marginal_images > 0:
        m = min(log_marginal_images, n)
        results["log_marginal"] = float(np.mean(log_marginal_of_images(task, params, data["images"][:m], key, step)))
        results["log_marginal_images"] = int(m)
        results["log_marginal_particles"] = int(cfg.eval.log_marginal_particles)
    images, r = first
    k = min(cfg.eval.num_pictures, len(images))
    top = np.concatenate(list(images[:k].astype(np.float32) / 255.0), axis=1)
    bottom = np.concatenate(list(np.clip(r["canvas"][:k], 0, 1)), axis=1)
    results["picture"] = np.concatenate([top, bottom], axis=0)
    results["example"] = {"images": images[:k], "canvas": r["canvas"][:k], "boxes": r["boxes"][:k],
                          "z_pres": r["z_pres"][:k], "counts": r["counts"][:k],
                          "true_counts": data["counts"][:k]}
    return results


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("num_particles",))
def _infer_frames(task: AIRTask, params, images_uint8, key, step, *, num_particles: int) -> dict[str, jax.Array]:
    """K posterior samples per image ``[B, H, W]``: ``log_weight``, ``log_likelihood`` ``[B, K]``; ``z_pres [B, K, N]``,
    ``z_what [B, K, N, D]``, ``boxes [B, K, N, 4]``."""
    k_bin, k_infer = jax.random.split(typed_key(key))
    x = to_float_images(images_uint8, k_bin, task.config.data.binarize)
    out = task.model.infer(params, x, k_infer, num_particles=num_particles, continue_prob=task.continue_prob(step))
    return dict(log_weight=out.log_weight, log_likelihood=out.log_likelihood, z_pres=out.z_pres, z_what=out.z_what,
                boxes=out.boxes(task.model.config.canvas_shape))


def evaluate_air_on_sequences(task: AIRTask, params, step: int, sequences: dict[str, np.ndarray], *, key: jax.Array,
                              num_particles: int = 5, log_marginal_sequences: int = 0,
                              train_sequences: dict[str, np.ndarray] | None = None, classifier_steps: int = 0,
                              iou_threshold: float = 0.3) -> dict[str, Any]:
    """AIR applied frame by frame to moving multi-MNIST ``sequences`` (``frames [n, T, H, W]``, ``counts [n, T]``,
    ``boxes``, ``presence``, ``labels``): the MLP-AIR row of thesis Table 5.4.1, in the units of SQAIR's evaluation
    (``sqair_task.evaluate_sqair``, ``sqair_eval.tracking_and_addition``).

    AIR treats the frames as independent images, so its sequence terms are sums over frames: with K =
    ``num_particles`` posterior samples per frame, ``elbo`` = Σ_t mean_k log w_tk, ``log_likelihood`` = Σ_t mean_k
    log p(x_t | z_tk), ``kl`` = their difference, ``iwae`` = Σ_t log mean_k w_tk, and ``log_marginal`` = Σ_t of the
    IWAE-``eval.log_marginal_particles`` estimate of log p(x_t) on the first ``log_marginal_sequences`` sequences.
    Counting uses the best particle (largest log-weight) of each frame: ``count_accuracy`` over frames,
    ``sequence_count_accuracy`` (all T frames right), ``confusion [true, inferred]``. ``tracking``: AIR has no
    identities across frames; its step index is used as the identity (``sqair_eval.tracking_errors``), so switches
    count how often AIR's object order changes between frames. ``addition`` (if ``train_sequences`` and
    ``classifier_steps > 0``): ``sqair_eval.addition_experiment`` on z_what·z_pres in step order.
    """
    from ocr_jax.models import sqair_eval

    frames = np.asarray(sequences["frames"])
    if frames.ndim != 4 or frames.shape[2:] != tuple(task.model.config.canvas_shape):
        raise ValueError(f"need frames [n, T, {task.model.config.canvas_shape[0]}, "
                         f"{task.model.config.canvas_shape[1]}]; got {frames.shape}")
    n, T = frames.shape[:2]
    N = task.model.config.max_steps
    ev = task.config.eval

    def best_particle_outputs(frames_nt, key):
        images = frames_nt.reshape(-1, *frames_nt.shape[2:])
        parts = []
        for i, start in enumerate(range(0, len(images), ev.batch_size)):
            r = jax.device_get(_infer_frames(task, params, jnp.asarray(images[start:start + ev.batch_size]),
                                             jax.random.fold_in(key, i), step, num_particles=num_particles))
            best = np.argmax(r["log_weight"], axis=1)
            rows = np.arange(len(best))
            parts.append(dict(
                iwae=np.asarray(objectives.log_mean_exp(r["log_weight"], axis=1)),
                elbo=r["log_weight"].mean(1), log_likelihood=r["log_likelihood"].mean(1),
                z_pres=r["z_pres"][rows, best], z_what=r["z_what"][rows, best], boxes=r["boxes"][rows, best]))
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out = {k: v.reshape(len(frames_nt), frames_nt.shape[1], *v.shape[1:]) for k, v in out.items()}
        out["ids"] = np.where(out["z_pres"] > 0, np.arange(N), -1)
        return out

    out = best_particle_outputs(frames, key)
    counts = out["z_pres"].sum(-1).astype(np.int64)
    true = np.minimum(sequences["counts"], N)
    confusion = np.zeros((N + 1, N + 1), np.int64)
    np.add.at(confusion, (true.ravel(), counts.ravel()), 1)
    results: dict[str, Any] = dict(
        step=int(step), num_sequences=int(n), num_frames=int(T), num_particles=int(num_particles),
        count_accuracy=float(np.mean(counts == true)),
        sequence_count_accuracy=float(np.mean(np.all(counts == true, axis=1))),
        iwae=float(out["iwae"].sum(1).mean()), elbo=float(out["elbo"].sum(1).mean()),
        log_likelihood=float(out["log_likelihood"].sum(1).mean()),
        num_objects=float(out["z_pres"].sum(-1).mean()), confusion=confusion.tolist())
    results["iwae_per_frame"] = results["iwae"] / T
    results["kl"] = results["log_likelihood"] - results["elbo"]
    m = min(log_marginal_sequences, n)
    if m > 0:
        lm = log_marginal_of_images(task, params, frames[:m].reshape(-1, *frames.shape[2:]), key, step)
        results.update(log_marginal=float(lm.reshape(m, T).sum(1).mean()),
                       log_marginal_sequences=int(m), log_marginal_particles=int(ev.log_marginal_particles))
    H, W = task.model.config.canvas_shape
    clipped = np.clip(out["boxes"], 0.0, np.array([H, W, H, W], np.float32))
    results["tracking"] = sqair_eval.tracking_errors(sequences["boxes"], sequences["presence"], clipped,
                                                     out["z_pres"], out["ids"], iou_threshold)
    results["iou_threshold"] = float(iou_threshold)
    results["addition"] = None
    if train_sequences is not None and classifier_steps > 0:
        train_out = best_particle_outputs(np.asarray(train_sequences["frames"]), jax.random.fold_in(key, 1 << 30))
        results["addition"] = sqair_eval.addition_experiment(train_out, train_sequences, out, sequences,
                                                             steps=classifier_steps)
    return results


def eval_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of :func:`evaluate_air`'s results (scalars and the confusion matrix)."""
    out = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    out["confusion"] = np.asarray(results["confusion"]).tolist()
    return out


tasks.register("air", AIRTask)

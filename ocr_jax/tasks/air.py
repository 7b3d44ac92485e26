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
  exists. ``tests/tasks/test_air.py`` checks both halves.
* ``"reinforce"``: IWAE bound with the raw score-function term (thesis Eq. 8.2, no baseline) — the failure case.

The count prior's per-step continue probability follows ``continue_prob_schedule`` (``count_prior`` config:
start, end, duration, kind); the value used is logged as ``continue_prob``. Evaluation: ``ocr_jax.evaluation.air``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import estimators
from ocr_jax.data import deterministic_batches, to_unit_float
from ocr_jax.evaluation import air as air_eval
from ocr_jax.models import air as air_lib
from ocr_jax.training.tasks import register


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
                # experiments/air_frames_report.py only (data.name = "moving_multi_mnist"): particles per frame, when
                # a tracking match counts (as SQAIR's: ocr_jax.tasks.sqair), the addition classifier's steps and
                # training sequences (as SQAIR's)
                sequence_particles=5,
                tracking_match="coverage",
                tracking_coverage_threshold=0.5,
                tracking_iou_threshold=0.3,
                addition_steps=10_000,
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
    ``ocr_jax.tasks.sqair.SQAIRTask`` with ``data_seed = seed``), so that AIR trained frame-wise (the MLP-AIR row of
    thesis Table 5.4.1) sees exactly SQAIR's frames. Returns the ``make_moving_multi_mnist`` dict (``frames [n, T, H,
    W]``)."""
    from ocr_jax.data.moving_mnist import load_moving_multi_mnist

    num = data_cfg.num_train if split == "train" else data_cfg.num_test
    return load_moving_multi_mnist(
        split,
        num,
        seed=data_cfg.seed + (split == "test"),
        digits="blobs" if data_cfg.get("synthetic_digits", False) else "mnist",
        num_frames=data_cfg.num_frames,
        max_digits=data_cfg.max_digits,
    )


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
        return make_multi_mnist(
            digits,
            labels,
            num,
            seed=data_cfg.seed * 2 + (split == "test"),
            max_digits=data_cfg.max_digits,
            recipe=data_cfg.recipe,
        )
    from ocr_jax.data.builders import load_dataset

    return load_dataset(
        data_cfg.name,
        split,
        method=data_cfg.method,
        recipe=data_cfg.recipe,
        max_digits=data_cfg.max_digits,
        num_train=data_cfg.num_train,
        num_test=data_cfg.num_test,
        seed=data_cfg.seed,
    )


def typed_key(key: jax.Array) -> jax.Array:
    """A typed PRNG key from either a typed key or a legacy ``uint32[2]`` key (the training loop's)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def binarize(key: jax.Array, images: jax.Array) -> jax.Array:
    """A stochastic binarisation of ``images`` in [0, 1] (each pixel ~ Bernoulli(its value)), float32."""
    return jax.random.bernoulli(key, images).astype(jnp.float32)


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
        return deterministic_batches(
            arrays,
            global_batch_size,
            seed=seed,
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )

    # -- Task protocol --------------------------------------------------------------------------------------------

    def init(self, key, batch):
        images = to_unit_float(batch["images"])
        params = self.model.init(key, images)
        model_state = {"estimator": self.estimator.init(self.model.config.max_steps)}
        return params, model_state

    def continue_prob(self, step):
        p = self.config.count_prior
        return air_lib.continue_prob_schedule(step, start=p.start, end=p.end, duration=p.duration, kind=p.kind)

    def model_inputs(self, images_uint8, key) -> tuple[jax.Array, jax.Array]:
        """``(images, key)`` for the model from uint8 images ``[..., H, W]`` and a key (typed or legacy): the images
        as float32 in [0, 1] (``to_unit_float``), binarised (``binarize``) with the first half of ``key`` when
        ``data.binarize``; the second half of ``key`` for inference. Training and evaluation prepare inputs alike."""
        k_bin, k_infer = jax.random.split(typed_key(key))
        images = to_unit_float(images_uint8)
        if self.config.data.binarize:
            images = binarize(k_bin, images)
        return images, k_infer

    def loss(self, params, model_state, batch, key, step):
        cfg = self.config
        images, k_infer = self.model_inputs(batch["images"], key)
        rho = self.continue_prob(step)
        out = self.model.infer(params, images, k_infer, num_particles=cfg.num_particles, continue_prob=rho)
        surrogates, estimator_state, bound = estimator_surrogates(
            self.estimator, self.model, params, out, model_state["estimator"]
        )
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

    # -- evaluation ----------------------------------------------------------------------------------------------

    def evaluate(self, params, model_state, step, workdir) -> dict[str, Any]:
        """Count accuracy, ELBO, confusion matrix on the test split; log p(x) by IWAE-K on a subset; pictures."""
        del model_state
        # Periodic evaluation during training: count accuracy and ELBO on a test subset (cheap); the full test split
        # and IWAE-K log p(x) are computed once at the end by experiments/air_report.py.
        ev = self.config.eval
        results = air_eval.evaluate_air(
            self,
            params,
            step,
            num_images=min(ev.periodic_images, ev.num_images),
            log_marginal_images=min(ev.periodic_log_marginal_images, ev.log_marginal_images),
        )
        scalars = {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}
        if workdir and jax.process_index() == 0:
            with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
                json.dump(air_eval.eval_summary(results), f, indent=1)
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
        log_likelihood=out.log_likelihood,
    )


# The LogWeightTerms fields AIR provides (baselines: AIR.baseline_values, computed when an estimator needs them).
PROVIDED_TERMS = frozenset(
    {"log_q_reparam", "log_q_score", "log_w_steps", "log_q_score_steps", "log_likelihood", "baselines"}
)


def estimator_surrogates(
    estimator: estimators.Estimator, model: air_lib.AIR, params, out: air_lib.AIROutput, estimator_state
):
    """Surrogate losses per parameter group for one AIR forward pass ``out`` ([batch, particles, steps] terms).

    Returns ``(surrogates {"generative", "inference", "baseline"}, new_estimator_state, bound)``.
    """
    terms = log_weight_terms(out)
    if "baselines" in estimator.requires:
        terms = terms._replace(baselines=model.baseline_values(params, out))  # [B, K, N]: x and z^{<i} only
    s, new_state = estimator.surrogates(terms, estimator_state)
    return estimators.losses_by_group(s), new_state, s.bound


register("air", AIRTask)

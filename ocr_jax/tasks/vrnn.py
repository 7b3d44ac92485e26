"""VRNN as a training-loop Task (thesis §5.4.1, App. 5.D.3): the VRNN baseline of Table 5.4.1 trained on SQAIR's
moving multi-MNIST with the FIVO bound (Maddison et al. 2017) — or, for comparison, with any estimator of the IWAE
family on whole sequences.

The model provides one step of a particle filter (``ocr_jax.models.vrnn.VRNN.step``); this task runs
``ocr_jax.estimators.fivo.particle_filter`` with it:

* estimator ``fivo`` (the thesis' choice; ``estimator_args``: ``resampling``, ``ess_threshold``): the filter resamples
  as configured and the terms are ``LogWeightTerms(log_p=final log-weights, log_p_hat=log p̂)``;
* any other applicable estimator (``iwae``, ``elbo``, ``miwae``, ``ciwae``, ``piwae``, ``ww``): the filter never
  resamples, so its K particles are independent whole-sequence importance samples, and the terms are
  ``log_p = Σ_t log p(z_t, x_t | ·)`` and ``log_q_reparam = Σ_t log q(z_t | ·)``.

Score-function estimators (VIMCO, NVIL, REINFORCE) have nothing to act on (every VRNN latent is reparameterised) and
are refused with a clear error, as is DReG (no stopped-density term) and wake-sleep (no sleep phase).

As for SQAIR, the surrogate losses are divided by the number of frames, the data are the same moving multi-MNIST
sequences (``ocr_jax.tasks.sqair.load_sequences``: the official recipe), and an optional curriculum cuts every batch
to ``min(start_length + step // length_every, num_frames)`` frames (the default starts at the full length: the thesis
trains VRNN without one). The model's options are ``task_config.model`` (every ``VRNNConfig`` field but image_shape,
as SQAIR's); the data, curriculum and common evaluation fields are SQAIR's (``ocr_jax.tasks.sqair.sequence_defaults``).
Evaluation: ``ocr_jax.evaluation.vrnn``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ocr_jax import estimators
from ocr_jax.data import to_unit_float
from ocr_jax.estimators import fivo
from ocr_jax.evaluation import vrnn as vrnn_eval
from ocr_jax.models.vrnn import VRNN, VRNNConfig, VRNNStep
from ocr_jax.tasks.sqair import (
    SequenceTask,
    model_kwargs,
    per_frame_losses,
    periodic_eval_metrics,
    sequence_defaults,
)
from ocr_jax.training.tasks import register

__all__ = [
    "PROVIDED_TERMS",
    "VRNNTask",
    "check_task_config_fields",
    "default_model_config",
    "default_task_config",
    "make_vrnn_task",
    "model_config",
    "upgrade_task_config",
]

# The LogWeightTerms fields the VRNN task provides: log_p_hat with FIVO, log_q_reparam with the others.
PROVIDED_TERMS = frozenset({"log_p_hat", "log_q_reparam"})


_DATA_FIELDS = ("image_shape",)  # VRNNConfig fields the task derives from its data
_RENAMED_FIELDS = {"likelihood_sigma": "obs_std"}  # old top-level name -> VRNNConfig field


def default_model_config() -> dict:
    """``task_config.model``'s defaults: every :class:`VRNNConfig` field but image_shape, with its default value."""
    return {f.name: f.default for f in dataclasses.fields(VRNNConfig) if f.name not in _DATA_FIELDS}


def upgrade_task_config(task_config: dict) -> dict:
    """A VRNN task config as config.json holds it (JSON-like), in the current layout: runs saved before the model's
    fields moved under ``model`` named them at the top level, and the likelihood's standard deviation
    ``likelihood_sigma`` (now ``obs_std``, VRNNConfig's name). Current configs are returned unchanged."""
    if "model" in task_config:
        return task_config
    fields = set(default_model_config()) | set(_RENAMED_FIELDS)
    model = {_RENAMED_FIELDS.get(k, k): v for k, v in task_config.items() if k in fields}
    return {**{k: v for k, v in task_config.items() if k not in fields}, "model": model}


def default_task_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # model (thesis App. 5.D.3): every VRNNConfig field by name (their defaults and meanings in
            # ocr_jax.models.vrnn.VRNNConfig: MLP-VRNN), but image_shape, which comes from the data's canvas_size
            model=default_model_config(),
            # objective: FIVO with K particles (the thesis does not give K; 5 as SQAIR's IWAE) and its defaults,
            # resampling when ESS < K/2 (the FIVO code's; estimator_args=dict(resampling=..., ess_threshold=...)); or
            # an estimator of the IWAE family
            estimator="fivo",
            estimator_args=dict(),
            num_particles=5,
            # the particle filter's lax.scan unroll over frames (same values): 1 keeps the loop; ≥ num_frames unrolls
            # it, which lets XLA's cost analysis count every frame (benchmarks/vrnn_step.py)
            filter_unroll=1,
            # the same data as SQAIR (ocr_jax.tasks.sqair.sequence_defaults, load_sequences), its optional curriculum
            # (start_length = num_frames: none) and evaluation fields
            **sequence_defaults(
                start_length=10,
                eval_fields=dict(
                    # and the FIVO bound with many particles, fivo_batch_size sequences at a time
                    fivo_particles=100,
                    fivo_batch_size=10,
                    # conditional generation: filter the first condition_frames frames, predict the rest
                    condition_frames=5,
                ),
            ),
        )
    )


def model_config(cfg: ml_collections.ConfigDict) -> VRNNConfig:
    """The :class:`VRNNConfig` a task config describes: ``cfg.model``'s fields, with image_shape from
    ``canvas_size``. Raises ValueError for a model field VRNNConfig lacks."""
    kw = model_kwargs(cfg.model, default_model_config(), model="VRNN")
    return VRNNConfig(image_shape=(cfg.canvas_size, cfg.canvas_size), **kw)


def check_task_config_fields(config, defaults: ml_collections.ConfigDict) -> None:
    """Raise ValueError for a top-level task-config field the task does not have (a model field at the top level is
    named as such: it belongs under ``model``), so that a misspelt or misplaced option is not silently ignored."""
    unknown = sorted(set(config) - set(defaults))
    if not unknown:
        return
    model_fields = [k for k in unknown if k in default_model_config() or k in _RENAMED_FIELDS]
    hint = (
        f" Model options go under task_config.model (e.g. task_config.model.{model_fields[0]}); likelihood_sigma is "
        "model.obs_std."
        if model_fields
        else ""
    )
    raise ValueError(f"unknown VRNN task options {unknown}; valid: {sorted(defaults)}.{hint}")


class VRNNTask(SequenceTask):
    """`ocr_jax.training.tasks.Task` for VRNN. Parameter groups: ``generative`` (θ) and ``inference`` (φ)."""

    model_name = "VRNN"
    provided_terms = PROVIDED_TERMS
    default_task_config = staticmethod(default_task_config)
    check_task_config_fields = staticmethod(check_task_config_fields)
    headline_metric = "bound_per_frame"

    def __init__(self, config: ml_collections.ConfigDict | None = None, *, train_frames: np.ndarray | None = None):
        super().__init__(config, train_frames=train_frames)
        if int(self.config.filter_unroll) < 1:
            raise ValueError(f"filter_unroll must be an integer >= 1; got {self.config.filter_unroll!r}")
        if self.estimator.trains_baseline:
            raise ValueError(f"estimator {self.config.estimator!r} trains a baseline, which VRNN has no use for")
        # FIVO resamples as configured; every other estimator needs independent particles
        self.filter_settings = self.estimator.particle_filter or fivo.FilterSettings("never")
        self.model = VRNN(model_config(self.config))

    # --- the particle filter ----------------------------------------------------------------------------------------

    def run_filter(
        self,
        params,
        frames,
        key,
        num_particles: int,
        settings: fivo.FilterSettings | None = None,
        *,
        with_canvas: bool = False,
    ) -> fivo.FilterResult:
        """``ocr_jax.estimators.fivo.particle_filter`` over ``frames [B, T, H, W]`` (uint8 or float in [0, 1]) with
        the model's step; ``settings`` default to the training estimator's (``filter_settings``). ``outputs`` is a
        :class:`~ocr_jax.models.vrnn.VRNNStep` ``[T, B, K, ...]`` (with the likelihood means if ``with_canvas``)."""
        settings = self.filter_settings if settings is None else settings
        frames = to_unit_float(frames)
        inputs = self.model.filter_inputs(params, frames)
        state = self.model.initial_state(frames.shape[0], num_particles)

        def step(state, inputs_t, key):
            return self.model.step(params, state, inputs_t, key, with_canvas=with_canvas)

        return fivo.particle_filter(
            step,
            state,
            inputs,
            key,
            num_particles,
            resampling=settings.resampling,
            ess_threshold=settings.ess_threshold,
            unroll=int(self.config.filter_unroll),
        )

    def log_weight_terms(self, result: fivo.FilterResult) -> estimators.LogWeightTerms:
        """The estimator's terms from a filter run with ``filter_settings`` (module docstring)."""
        out: VRNNStep = result.outputs
        if self.estimator.particle_filter is not None:
            return estimators.LogWeightTerms(log_p=result.log_weights, log_p_hat=result.log_p_hat)
        return estimators.LogWeightTerms(
            log_p=jnp.sum(out.log_p_z + out.log_likelihood, axis=0), log_q_reparam=jnp.sum(out.log_q_z, axis=0)
        )

    # --- Task protocol ----------------------------------------------------------------------------------------------

    def init(self, key, batch):
        del batch
        params = self.model.init(key)
        state = self.estimator.init()
        return params, ({"estimator": state} if jax.tree.leaves(state) else {})

    def loss(self, params, model_state, batch, key, step):
        del step  # the curriculum is in the batch's length (train_batches)
        result = self.run_filter(params, batch["frames"], key, self.config.num_particles)
        s, estimator_state = self.estimator.surrogates(self.log_weight_terms(result), model_state.get("estimator", ()))
        frames = float(batch["frames"].shape[1])
        surrogates = per_frame_losses(estimators.losses_by_group(s), frames, False)
        if "estimator" in model_state:
            model_state = {**model_state, "estimator": estimator_state}
        sg = jax.lax.stop_gradient
        out = result.outputs
        log_likelihood = jnp.mean(jnp.sum(sg(out.log_likelihood), axis=0))  # Σ_t, averaged over batch and particles
        kl = jnp.mean(jnp.sum(sg(out.log_q_z - out.log_p_z), axis=0))
        metrics = {
            "bound": s.bound,
            "bound_per_frame": s.bound / frames,
            "log_likelihood": log_likelihood,
            "kl": kl,
            "resampling_rate": jnp.mean(result.resampled.astype(jnp.float32)),
            "sequence_length": jnp.asarray(frames),
        }
        return surrogates, (metrics, model_state)

    def evaluate(self, params, model_state, step, workdir):
        """Bounds, log p(x|z) and KL on the first ``eval.periodic_sequences`` test sequences (all frames); log p(x) by
        IWAE-K on ``eval.periodic_log_marginal_sequences`` of them. Writes ``<workdir>/eval_step<step>.json``."""
        del model_state
        ev = self.config.eval
        results = vrnn_eval.evaluate_vrnn(
            self,
            params,
            self.test_data,
            key=jax.random.key(step),
            num_sequences=ev.periodic_sequences,
            log_marginal_sequences=ev.periodic_log_marginal_sequences,
            fivo_sequences=0,
        )
        return periodic_eval_metrics(results, step, workdir)


def make_vrnn_task(config: ml_collections.ConfigDict) -> VRNNTask:
    return VRNNTask(config)


register("vrnn", make_vrnn_task)

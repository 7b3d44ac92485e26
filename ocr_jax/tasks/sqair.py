"""SQAIR as a training-loop Task (thesis §5.3, §5.D.1): IWAE over whole sequences with K particles, VIMCO for every
presence variable (discovery and propagation), reparameterisation for the continuous latents, and the
sequence-length curriculum.

Curriculum by slicing. ``train_batches`` cuts every batch to the curriculum length ``L(step)`` (the official code
truncates the data the same way), so a step computes only the ``L`` frames it trains on; the training loop compiles
one step per length (at most ``num_frames``). Inference and the generative model are causal (frame t's latents
depend only on frames ≤ t), so this is exactly the bound of the first ``L`` frames.

The bound is divided by the number of frames used (as the official code does) for the surrogate losses; metrics
report it both per sequence and per frame. VIMCO's θ and φ surrogates are one array, so the train step's one
backward pass serves both groups. Evaluation: ``ocr_jax.evaluation.sqair``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ocr_jax import estimators, objectives
from ocr_jax.data import deterministic_batches, to_unit_float
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.models import modules
from ocr_jax.models.sqair import SQAIR, SQAIRConfig, later_bias_error
from ocr_jax.training.tasks import register

_DATA_FIELDS = ("image_shape", "max_seq_len")  # SQAIRConfig fields the task derives from its data


def default_model_config() -> dict:
    """``task_config.model``'s defaults: every :class:`SQAIRConfig` field but image_shape and max_seq_len, with its
    default value."""
    return {f.name: f.default for f in dataclasses.fields(SQAIRConfig) if f.name not in _DATA_FIELDS}


# Model fields renamed since runs were saved: old name -> current (AIR's and VRNN's name for the same quantity).
_RENAMED_MODEL_FIELDS = {"likelihood_sigma": "obs_std"}


def upgrade_task_config(task_config: dict) -> dict:
    """A SQAIR task config as config.json holds it (JSON-like), in the current layout: runs saved before the model's
    fields moved under ``model`` named them at the top level, and the glimpse as ``glimpse_size`` (its side in
    pixels); runs saved before the rename named the likelihood's standard deviation ``likelihood_sigma`` (now
    ``obs_std``, as AIR and VRNN). Current configs are returned unchanged."""
    if "model" in task_config:
        model = task_config["model"]
        if not any(old in model for old in _RENAMED_MODEL_FIELDS):
            return task_config
        return {**task_config, "model": {_RENAMED_MODEL_FIELDS.get(k, k): v for k, v in model.items()}}
    fields = set(default_model_config()) | {"glimpse_size"} | set(_RENAMED_MODEL_FIELDS)
    model = {_RENAMED_MODEL_FIELDS.get(k, k): v for k, v in task_config.items() if k in fields}
    if "glimpse_size" in model:
        side = model.pop("glimpse_size")
        model["glimpse_shape"] = [side, side]
    return {**{k: v for k, v in task_config.items() if k not in fields}, "model": model}


def default_task_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # model (§5.D.2): every SQAIRConfig field by name (their defaults and meanings in
            # ocr_jax.models.sqair.SQAIRConfig), but image_shape and max_seq_len, which come from the data's
            # canvas_size and num_frames. The first implementation's start-up: where_map "sigmoid_linear", std_floor
            # 1e-4, disc_head_kernel_scale 1.0, disc_init_scale None, presence_after_what False, prop_update_scale
            # 1.0, prop_what "direct" (and disc_presence_logit_init 1.0).
            model=default_model_config(),
            # DISC suppressed after frame 1 during the first disc_suppression_steps steps of training: its presence
            # logit gets disc_suppression_bias in frames t > 1, so PROP must learn to follow the objects DISC found in
            # frame 1 before DISC may re-detect them (0 steps: off). -inf closes discovery there exactly; a finite
            # bias (-30 before 2026-12-07) can be outgrown by DISC's unbounded logit, and then PROP learns to drop
            # every object (`disc_only`). Measured in docs/results.md.
            disc_suppression_steps=0,
            disc_suppression_bias=-math.inf,
            # A cost of count_penalty nats per present object per frame in the training objective (propagated and
            # discovered alike), reached linearly over count_penalty_ramp steps from step count_penalty_start: AIR's
            # annealed geometric count prior (ρ = exp(−penalty)) on top of SQAIR's learned count priors. Training only:
            # every reported bound is the model's own. 0: off (the official code).
            count_penalty=0.0,
            count_penalty_start=0,
            count_penalty_ramp=0,
            # Which objects pay it: "present" (every present object in every frame) or "discovered" (an object pays
            # once, in the frame DISC finds it: AIR's count prior applied to each frame's new objects).
            count_penalty_objects="present",
            # objective (§5.3): the paper's VIMCO, or any estimator of ocr_jax.estimators whose terms SQAIR provides
            # (all but ws, dreg and dww) with its hyperparameters; NVIL adds a "baseline" parameter group (b_ψ(x), an
            # MLP with baseline_hidden units per frame, summed over frames) that needs its own config.optimizers entry
            estimator="vimco",
            estimator_args=dict(),
            baseline_hidden=64,
            num_particles=5,
            # the data, the curriculum (§5.D.1: from 3 frames) and the evaluation's common fields (sequence_defaults)
            **sequence_defaults(
                start_length=3,
                eval_fields=dict(
                    # a present object counts as visible when this fraction of its glimpse window is on the canvas
                    # (ocr_jax.evaluation.sqair.visible_objects); the official label counts every present object
                    visible_min_fraction=0.1,
                    # ... and, when > 0, when the brightest pixel it draws on the canvas is at least this
                    # (SQAIR.object_ink): an object held at the edge while its digit is outside draws nothing there
                    visible_min_ink=0.0,
                    # during training: tracking on the periodic_sequences as well
                    periodic_tracking=True,
                    # tracking (periodic and experiments/sqair_report.py): an inferred glimpse window and a true
                    # digit can be matched when the window holds tracking_coverage_threshold of the digit's tight box
                    # (tracking_match "coverage": the windows are larger than the digits), or when their IoU is at
                    # least tracking_iou_threshold ("iou", CLEAR-MOT's usual rule; ocr_jax.evaluation.sqair.
                    # matchable_pairs). Either way the matching maximises total IoU.
                    tracking_match="coverage",
                    tracking_coverage_threshold=0.5,
                    tracking_iou_threshold=0.3,
                ),
            ),
        )
    )


def sequence_defaults(*, start_length: int, eval_fields: dict) -> dict:
    """The task-config fields every task on moving multi-MNIST sequences shares (SQAIR and the VRNN,
    ``ocr_jax.tasks.vrnn``), with their defaults: the data (``load_sequences``), the sequence-length curriculum from
    ``start_length`` frames, and the evaluation's common fields, to which ``eval_fields`` (the task's own) are
    added."""
    return dict(
        # curriculum (§5.D.1): start_length frames, +1 every length_every steps, up to num_frames
        start_length=start_length,
        length_every=100_000,
        # or, when not empty, the number of steps at each length from start_length on (the last length lasts to the
        # end): e.g. more steps at the cheap short lengths than at the long ones (sqair_mnist:cpu+short)
        length_steps=(),
        # data: "mnist" (moving multi-MNIST from the MNIST split) or "blobs" (synthetic digits, no download)
        data="mnist",
        canvas_size=50,
        num_frames=10,
        num_train=60_000,
        num_eval=1_000,
        max_digits=2,
        digit_size=28,
        data_seed=0,
        # evaluation on num_eval test sequences (built from the MNIST test split with seed data_seed + 1)
        eval=dict(
            batch_size=50,
            # IWAE particles for the bounds, log p(x|z), KL and the addition features
            num_particles=5,
            # log p(x_{1:T}) as the thesis measures it: IWAE with 1000 particles (§5.4.1), in chunks
            log_marginal_sequences=50,
            log_marginal_particles=1000,
            log_marginal_chunk=50,
            num_pictures=4,
            # during training: the first periodic_sequences test sequences, IWAE-K log p(x) on the first
            # periodic_log_marginal_sequences of them (0: none)
            periodic_sequences=200,
            periodic_log_marginal_sequences=0,
            # final report only: the addition classifier (§5.D.4) trained for addition_steps on
            # addition_train_sequences training sequences (the thesis trains on the training set: with 2000 the
            # classifier memorises them, 0.644 on the test split against 0.737 with 20000; docs/results.md)
            addition_steps=10_000,
            addition_train_sequences=20_000,
            **eval_fields,
        ),
    )


def curriculum_length(step, start_length: int, length_every: int, max_length: int, length_steps=()):
    """§5.D.1: ``min(start_length + step // length_every, max_length)``; with ``length_steps`` (the number of steps
    spent at each length from ``start_length`` on, e.g. ``(2000, 1500)``: lengths 1, 2, then 3 from step 3500 when
    ``start_length`` is 1) it is ``start_length`` plus the number of those phases complete by ``step``, again at most
    ``max_length``. A Python int for an int step (the training loop's), an array for an array step."""
    xp = np if isinstance(step, (int, np.integer)) else jnp
    if length_steps:
        done = xp.searchsorted(np.cumsum(length_steps), step, side="right")  # phases complete by ``step``
    else:
        done = xp.asarray(step) // length_every
    length = xp.minimum(start_length + done, max_length)
    return int(length) if xp is np else length


def curriculum_start(length: int, start_length: int, length_every: int, length_steps=()) -> int:
    """The first training step at which ``curriculum_length`` reaches ``length`` (0 for lengths up to
    ``start_length``): the step at which e.g. the ``anneal`` learning-rate cut or the end of DISC's suppression is
    placed. With ``length_steps``, a length beyond its phases is never reached: ValueError."""
    phases = max(0, length - start_length)
    if not length_steps:
        return phases * length_every
    if phases > len(length_steps):
        raise ValueError(
            f"length {length} is never reached: length_steps {tuple(length_steps)} from start_length {start_length} "
            f"end at length {start_length + len(length_steps)}"
        )
    return int(sum(length_steps[:phases]))


def curriculum_batches(
    frames: np.ndarray, length_of_step, *, seed, start_step, global_batch_size, process_index, process_count
):
    """Deterministic batches ``{"frames": [batch, L, H, W]}`` of ``frames [n, T, H, W]``, each cut to the curriculum
    length ``length_of_step(step)`` of its training step (one compiled step per length; SQAIR and the VRNN)."""
    batches = deterministic_batches(
        {"frames": frames},
        global_batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )
    for step, batch in enumerate(batches, start=start_step):
        yield {"frames": batch["frames"][:, : length_of_step(step)]}


def periodic_eval_metrics(results: dict, step, workdir) -> dict:
    """Writes a periodic evaluation's ``results`` to ``<workdir>/eval_step<step>.json`` (process 0; the pictures'
    ``example`` left out) and returns its numbers as ``eval/<name>`` metrics."""
    if workdir and jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
            json.dump({"step": int(step), **{k: v for k, v in results.items() if k != "example"}}, f, indent=1)
    return {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}


def make_sequences(cfg: ml_collections.ConfigDict, split: str, num: int, seed: int) -> np.ndarray:
    """Moving multi-MNIST frames ``[num, T, H, W]`` uint8."""
    return load_sequences(cfg, split, num, seed)["frames"]


def load_sequences(cfg: ml_collections.ConfigDict, split: str, num: int, seed: int) -> dict[str, np.ndarray]:
    """Moving multi-MNIST ``num`` sequences with ground truth: ``frames [n, T, H, W]`` uint8, ``counts [n, T]``,
    ``boxes [n, T, digits, 4]``, ``presence [n, T, digits]``, ``labels [n, digits]`` (see ocr_jax.data.moving_mnist)."""
    from ocr_jax.data.moving_mnist import load_moving_multi_mnist

    if cfg.data not in ("mnist", "blobs"):
        raise ValueError(f"data must be 'mnist' or 'blobs'; got {cfg.data!r}")
    return load_moving_multi_mnist(
        split,
        num,
        seed=seed,
        digits=cfg.data,
        digit_size=cfg.digit_size,
        num_frames=cfg.num_frames,
        canvas_size=cfg.canvas_size,
        max_digits=cfg.max_digits,
    )


COUNT_PENALTY_OBJECTS = ("present", "discovered")


def charged_objects(out: dict, which: str) -> jax.Array:
    """The number of objects the count penalty charges, ``[batch, particles]``, from the model's per-step outputs:
    Σ_t Σ_i z_pres (``"present"``: every object in every frame) or Σ_t D_t (``"discovered"``: each object once, in
    the frame DISC finds it)."""
    if which == "present":
        return jnp.sum(out["z_pres"], axis=(-2, -1))
    if which == "discovered":
        return jnp.sum(out["num_discovered"], axis=-1).astype(jnp.float32)
    raise ValueError(f"count_penalty_objects must be one of {COUNT_PENALTY_OBJECTS}; got {which!r}")


def model_config(cfg: ml_collections.ConfigDict) -> SQAIRConfig:
    """The :class:`SQAIRConfig` a task config describes: ``cfg.model``'s fields, with image_shape from
    ``canvas_size`` and max_seq_len from ``num_frames``. Raises ValueError for a model field SQAIRConfig lacks."""
    kw = model_kwargs(cfg.model, default_model_config(), model="SQAIR")
    return SQAIRConfig(image_shape=(cfg.canvas_size, cfg.canvas_size), max_seq_len=cfg.num_frames, **kw)


def model_kwargs(model_cfg, defaults, *, model: str) -> dict:
    """A task config's ``model`` block as keyword arguments of the model's config dataclass (lists as tuples), for
    every sequence task (SQAIR, VRNN). Raises ValueError naming ``model`` for a field ``defaults`` lacks."""
    values = dict(model_cfg)
    unknown = set(values) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown {model} model options {sorted(unknown)} in task_config.model; valid: {sorted(defaults)}"
        )
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()}


def check_task_config_fields(config, defaults: ml_collections.ConfigDict) -> None:
    """Raise ValueError for a top-level task-config field the task does not have (a model field at the top level is
    named as such: it belongs under ``model``), so that a misspelt or misplaced option is not silently ignored."""
    unknown = sorted(set(config) - set(defaults))
    if not unknown:
        return
    model_fields = [k for k in unknown if k in default_model_config() or k == "glimpse_size"]
    hint = (
        f" Model options go under task_config.model (e.g. task_config.model.{model_fields[0]}); the glimpse is "
        "model.glimpse_shape."
        if model_fields
        else ""
    )
    raise ValueError(f"unknown SQAIR task options {unknown}; valid: {sorted(defaults)}.{hint}")


class SequenceTask:
    """What the Tasks on moving multi-MNIST sequences share (``SQAIRTask``, ``ocr_jax.tasks.vrnn.VRNNTask``): the
    task config (the task's defaults updated by ``config``, unknown fields refused, the curriculum checked), the
    estimator (refused where it needs terms the model does not provide), the training and test sequences
    (``load_sequences``) and the curriculum's batches. A subclass names its ``model_name`` (for error messages) and
    ``provided_terms`` (the LogWeightTerms fields it provides), and gives its module's ``default_task_config`` and
    ``check_task_config_fields`` as static methods."""

    model_name: str
    provided_terms: frozenset[str]
    default_task_config: Callable[[], ml_collections.ConfigDict]
    check_task_config_fields: Callable[[Any, ml_collections.ConfigDict], None]

    def __init__(self, config: ml_collections.ConfigDict | None = None, *, train_frames: np.ndarray | None = None):
        cfg = self.default_task_config()
        if config:
            self.check_task_config_fields(config, cfg)
            cfg.update(config)
        self.config = cfg
        self.estimator = estimators.get(cfg.estimator, **cfg.estimator_args)
        estimators.check_applicable(self.estimator, self.provided_terms, cfg.num_particles, self.model_name)
        if not 1 <= cfg.start_length <= cfg.num_frames or cfg.length_every < 1:
            raise ValueError(
                f"need 1 <= start_length <= num_frames and length_every >= 1; got start_length="
                f"{cfg.start_length}, num_frames={cfg.num_frames}, length_every={cfg.length_every}"
            )
        if any(not isinstance(n, (int, np.integer)) or n < 1 for n in cfg.length_steps):
            raise ValueError(f"length_steps must be positive integers (steps per length); got {cfg.length_steps}")
        self._train_frames = train_frames

    @property
    def train_frames(self) -> np.ndarray:
        """The ``num_train`` training sequences' frames ``[n, T, H, W]`` uint8 (built on first use)."""
        if self._train_frames is None:
            self._train_frames = make_sequences(self.config, "train", self.config.num_train, self.config.data_seed)
        return self._train_frames

    @property
    def test_data(self) -> dict[str, np.ndarray]:
        """The ``num_eval`` test sequences with ground truth (``load_sequences``, seed ``data_seed + 1``)."""
        if getattr(self, "_test_data", None) is None:
            self._test_data = load_sequences(self.config, "test", self.config.num_eval, self.config.data_seed + 1)
        return self._test_data

    def sequence_length(self, step):
        """The curriculum length at training step ``step`` (``curriculum_length``)."""
        c = self.config
        return curriculum_length(step, c.start_length, c.length_every, c.num_frames, tuple(c.length_steps))

    def train_batches(self, *, seed, start_step, global_batch_size, process_index, process_count):
        """Deterministic batches of sequences cut to the curriculum length of their step (``sequence_length``)."""
        return curriculum_batches(
            self.train_frames,
            self.sequence_length,
            seed=seed,
            start_step=start_step,
            global_batch_size=global_batch_size,
            process_index=process_index,
            process_count=process_count,
        )


# The LogWeightTerms fields SQAIR provides (baselines: SequenceBaseline, when an estimator needs them).
PROVIDED_TERMS = frozenset({"log_q_reparam", "log_q_score", "baselines"})


class SQAIRTask(SequenceTask):
    """`ocr_jax.training.tasks.Task` for SQAIR. Parameter groups: ``generative`` (θ) and ``inference`` (φ)."""

    model_name = "SQAIR"
    provided_terms = PROVIDED_TERMS
    default_task_config = staticmethod(default_task_config)
    check_task_config_fields = staticmethod(check_task_config_fields)
    headline_metric = "iwae_per_frame"
    eval_step = 2**31 - 1  # the training step whose DISC suppression evaluation uses (default: none)

    def __init__(self, config: ml_collections.ConfigDict | None = None, *, train_frames: np.ndarray | None = None):
        super().__init__(config, train_frames=train_frames)
        cfg = self.config
        if cfg.count_penalty < 0 or cfg.count_penalty_start < 0 or cfg.count_penalty_ramp < 0:
            raise ValueError(
                f"count_penalty, count_penalty_start and count_penalty_ramp must be >= 0; got "
                f"{cfg.count_penalty}, {cfg.count_penalty_start}, {cfg.count_penalty_ramp}"
            )
        if error := later_bias_error(cfg.disc_suppression_bias, "disc_suppression_bias"):
            raise ValueError(error)
        if cfg.count_penalty_objects not in COUNT_PENALTY_OBJECTS:
            raise ValueError(
                f"count_penalty_objects must be one of {COUNT_PENALTY_OBJECTS}; got {cfg.count_penalty_objects!r}"
            )
        self.model = SQAIR(model_config(cfg))

    # --- Task protocol ----------------------------------------------------------------------------------------------

    def init(self, key, batch):
        del batch
        k_model, k_baseline = jax.random.split(key)
        params = self.model.init(k_model)
        if self.estimator.trains_baseline:
            frames = jnp.zeros((1, 1) + self.model.config.image_shape)
            params["baseline"] = self._baseline.init(k_baseline, frames)["params"]
        state = self.estimator.init()
        # Stateless estimators keep model_state empty (as runs saved before the estimator interface).
        return params, ({"estimator": state} if jax.tree.leaves(state) else {})

    @property
    def _baseline(self):
        return SequenceBaseline(self.config.baseline_hidden)

    def disc_later_bias(self, step):
        """DISC's presence-logit offset after frame 1 at training step ``step`` (int or traced): the suppression
        bias during the first ``disc_suppression_steps`` steps, the model's own ``disc_later_presence_bias`` after."""
        c = self.config
        return jnp.where(
            jnp.asarray(step) < c.disc_suppression_steps,
            c.disc_suppression_bias,
            self.model.config.disc_later_presence_bias,
        ).astype(jnp.float32)

    def count_penalty(self, step):
        """Nats charged per present object per frame at training step ``step`` (int or traced): 0 before
        ``count_penalty_start``, then rising linearly to ``count_penalty`` over ``count_penalty_ramp`` steps."""
        c = self.config
        elapsed = jnp.asarray(step, jnp.float32) - c.count_penalty_start
        fraction = jnp.clip(elapsed / c.count_penalty_ramp, 0.0, 1.0) if c.count_penalty_ramp else elapsed >= 0
        return (c.count_penalty * fraction).astype(jnp.float32)

    def per_particle_terms(self, params, frames, key, step=None):
        """Per-particle sums over the frames of ``frames [batch, time, H, W]`` (all of them: the batch is already cut
        to the curriculum length), each ``[batch, particles]``: (log p, log q of reparameterised latents, log q of
        the presence variables, log p(x|z)), and the per-step outputs."""
        bias = None if step is None else self.disc_later_bias(step)
        out = self.model.infer(
            params, to_unit_float(frames), key, self.config.num_particles, disc_later_presence_bias=bias
        )
        total = lambda x: jnp.sum(x, axis=-1)  # noqa: E731  [batch, particles, time] -> [batch, particles]
        log_p = total(out["log_likelihood"] + out["log_p_disc"] + out["log_p_prop"])
        log_q_score = total(out["log_q_pres"])
        log_q_reparam = total(out["log_q_disc"] + out["log_q_prop"]) - log_q_score
        return log_p, log_q_reparam, log_q_score, total(out["log_likelihood"]), out

    def loss(self, params, model_state, batch, key, step):
        # The curriculum is in the batch's length (train_batches); the step sets DISC's suppression.
        log_p, log_q_reparam, log_q_score, log_lik, out = self.per_particle_terms(params, batch["frames"], key, step)
        # The count penalty enters the training objective (and with it the learning signals) only.
        penalty = self.count_penalty(step)
        objects = charged_objects(out, self.config.count_penalty_objects)
        terms = estimators.LogWeightTerms(
            log_p=log_p - penalty * objects, log_q_reparam=log_q_reparam, log_q_score=log_q_score
        )
        if "baselines" in self.estimator.requires:  # b_ψ(x) [batch]: sees the frames only
            baselines = self._baseline.apply({"params": params["baseline"]}, to_unit_float(batch["frames"]))
            terms = terms._replace(baselines=baselines)
        s, estimator_state = self.estimator.surrogates(terms, model_state.get("estimator", ()))
        length = out["z_pres"].shape[2]
        frames = float(length)
        surrogates = per_frame_losses(estimators.losses_by_group(s), frames, self.estimator.trains_baseline)
        if "estimator" in model_state:
            model_state = {**model_state, "estimator": estimator_state}
        sg = jax.lax.stop_gradient
        log_w = sg(log_p - log_q_reparam - log_q_score)
        bound = jnp.mean(objectives.log_mean_exp(log_w))  # the model's IWAE bound, without the penalty
        metrics = {
            "iwae": bound,
            "iwae_per_frame": bound / frames,
            "count_penalty": penalty,
            "elbo": jnp.mean(log_w),
            "log_likelihood": jnp.mean(sg(log_lik)),
            "kl": jnp.mean(sg(log_lik) - log_w),
            "num_objects": jnp.mean(out["z_pres"].sum(-1)),
            "num_discovered_after_first": (jnp.mean(out["num_discovered"][:, :, 1:]) if length > 1 else jnp.zeros(())),
            "sequence_length": jnp.asarray(frames),
        }
        return surrogates, (metrics, model_state)

    def evaluate(self, params, model_state, step, workdir):
        """Counting accuracy, IWAE bound, ELBO and KL on the test sequences (all frames); log p(x) by IWAE-K on a
        subset. Writes ``<workdir>/eval_step<step>.json``."""
        del model_state
        ev = self.config.eval
        self.eval_step = step  # periodic evaluations see the model as trained at this step (DISC suppression)
        key = jax.random.key(step)
        results = sqair_eval.evaluate_sqair(
            self,
            params,
            self.test_data,
            key=key,
            num_sequences=ev.periodic_sequences,
            log_marginal_sequences=ev.periodic_log_marginal_sequences,
        )
        if ev.periodic_tracking:
            # Tracking on the same sequences and particles (no addition classifier): shows during training whether
            # the run tracks or falls into a failure mode (re-detections, DISC-only; §5.G).
            tracking = sqair_eval.tracking_and_addition(
                self,
                params,
                self.test_data,
                key=key,
                num_sequences=ev.periodic_sequences,
                classifier_steps=0,
                **sqair_eval.tracking_match_options(ev),
            )["tracking"]
            results.update({f"tracking_{k}": tracking[k] for k in sqair_eval.PERIODIC_TRACKING_KEYS})
        return periodic_eval_metrics(results, step, workdir)


class SequenceBaseline(nn.Module):
    """NVIL's input-dependent baseline for a whole sequence, b_ψ(x_{1:L}) = Σ_t MLP(x_t) (Mnih & Gregor 2014): a
    function of the frames only, so it leaves the estimator unbiased. ``frames [batch, time, H, W] -> [batch]``;
    the sum over frames follows the bound's growth with the curriculum length."""

    hidden: int

    @nn.compact
    def __call__(self, frames):
        x = jax.lax.stop_gradient(frames).reshape(frames.shape[:2] + (-1,))
        return jnp.sum(modules.MLP((self.hidden, 1), activation=nn.elu)(x)[..., 0], axis=-1)


def per_frame_losses(losses: dict, frames: float, with_baseline: bool) -> dict:
    """The surrogate losses divided by the number of frames (as the official code divides the bound); groups
    whose losses are one array keep sharing one array, so the train step pulls back once for them. The
    ``baseline`` group only when the estimator trains one."""
    scaled = {}  # id of a loss array -> that array per frame
    for v in losses.values():
        if id(v) not in scaled:
            scaled[id(v)] = v / frames
    out = {g: scaled[id(v)] for g, v in losses.items() if g != "baseline"}
    if with_baseline:
        out["baseline"] = losses["baseline"]
    return out


def make_sqair_task(config: ml_collections.ConfigDict) -> SQAIRTask:
    return SQAIRTask(config)


register("sqair", make_sqair_task)

__all__ = [
    "SQAIRTask",
    "SequenceBaseline",
    "SequenceTask",
    "curriculum_length",
    "curriculum_start",
    "default_task_config",
    "load_sequences",
    "make_sequences",
    "make_sqair_task",
    "model_config",
    "per_frame_losses",
    "sequence_defaults",
]

"""SQAIR as a training-loop Task (thesis §5.3, §5.D.1): IWAE over whole sequences with K particles, VIMCO for every
presence variable (discovery and propagation), reparameterisation for the continuous latents, and the
sequence-length curriculum.

Curriculum by slicing. ``train_batches`` cuts every batch to the curriculum length ``L(step)`` (the official code
truncates the data the same way), so a step computes only the ``L`` frames it trains on; the training loop compiles
one step per length (at most ``num_frames``). Inference and the generative model are causal (frame t's latents
depend only on frames ≤ t), so this is exactly the bound of the first ``L`` frames.

The bound is divided by the number of frames used (as the official code does) for the surrogate losses; metrics
report it both per sequence and per frame. VIMCO's θ and φ surrogates are one array, so the train step's one
backward pass serves both groups.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from ocr_jax import estimators, objectives
from ocr_jax.models import modules
from ocr_jax.models.sqair import SQAIR, SQAIRConfig
from ocr_jax.training import tasks
from ocr_jax.training.data import deterministic_batches


def default_task_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        # model (§5.D.2)
        arch="mlp", hidden=256, z_what_dim=50, max_objects=3, canvas_size=50, glimpse_size=20,
        likelihood_sigma=0.3, decoder_output_bias=0.0, prop_presence_logit_init=5.0, disc_presence_logit_init=1.386,
        where_prior_loc=(-2.0, -2.0, 0.0, 0.0), where_posterior_scale_bias=-3.0,
        # start-up (ocr_jax.models.sqair module docstring); the first implementation: "sigmoid_linear", 1e-4, 1.0,
        # None, False, 1.0, "direct" (and disc_presence_logit_init 1.0)
        where_map="sigmoid_tanh", std_floor=1e-2, disc_head_kernel_scale=0.1, disc_init_scale=0.4,
        presence_after_what=True, prop_update_scale=0.1, prop_what="gated",
        disc_later_presence_bias=0.0,
        first_frame_continue_prob=0.0,
        # DISC suppressed after frame 1 during the first disc_suppression_steps steps of training: its presence
        # logit gets disc_suppression_bias in frames t > 1, so PROP must learn to follow the objects DISC found in
        # frame 1 before DISC may re-detect them (0 steps: off). Measured in docs/results.md.
        disc_suppression_steps=0, disc_suppression_bias=-30.0,
        # A cost of count_penalty nats per present object per frame in the training objective (propagated and
        # discovered alike), reached linearly over count_penalty_ramp steps from step count_penalty_start: AIR's
        # annealed geometric count prior (ρ = exp(−penalty)) on top of SQAIR's learned count priors. Training only:
        # every reported bound is the model's own. 0: off (the official code).
        count_penalty=0.0, count_penalty_start=0, count_penalty_ramp=0,
        # objective (§5.3): the paper's VIMCO, or any estimator of ocr_jax.estimators whose terms SQAIR provides
        # (all but ws, dreg and dww) with its hyperparameters; NVIL adds a "baseline" parameter group (b_ψ(x), an
        # MLP with baseline_hidden units per frame, summed over frames) that needs its own config.optimizers entry
        estimator="vimco", estimator_args=dict(), baseline_hidden=64,
        num_particles=5,
        # curriculum (§5.D.1): start_length frames, +1 every length_every steps, up to num_frames
        start_length=3, length_every=100_000,
        # data: "mnist" (moving multi-MNIST from the MNIST split) or "blobs" (synthetic digits, no download)
        data="mnist", num_frames=10, num_train=60_000, num_eval=1_000, max_digits=2, digit_size=28, data_seed=0,
        # evaluation on num_eval test sequences (built from the MNIST test split with seed data_seed + 1)
        eval=dict(batch_size=50, num_particles=5, log_marginal_sequences=50, log_marginal_particles=1000,
                  log_marginal_chunk=50, num_pictures=4,
                  # during training: the first periodic_sequences test sequences, no IWAE-K log p(x)
                  periodic_sequences=200, periodic_log_marginal_sequences=0, periodic_tracking=True,
                  # final report only (experiments/sqair_report.py): tracking scored at this IoU between inferred
                  # glimpse boxes and the (tight) true digit boxes; the addition classifier (§5.D.4) trained for
                  # addition_steps on addition_train_sequences training sequences
                  tracking_iou_threshold=0.3, addition_steps=10_000, addition_train_sequences=2_000),
    ))


# Tracking numbers added to the periodic evaluations (``eval.periodic_tracking``) as ``tracking_<key>``.
PERIODIC_TRACKING_KEYS = ("recall", "precision", "switch_rate", "redetection_rate", "redetection_rate_at_t2",
                          "mota", "failure_mode")


def curriculum_length(step, start_length: int, length_every: int, max_length: int):
    """§5.D.1: ``min(start_length + step // length_every, max_length)``; a Python int for an int step (the
    training loop's), an array for an array step."""
    if isinstance(step, (int, np.integer)):
        return int(min(start_length + int(step) // length_every, max_length))
    return jnp.minimum(start_length + jnp.asarray(step) // length_every, max_length)


def make_sequences(cfg: ml_collections.ConfigDict, split: str, num: int, seed: int) -> np.ndarray:
    """Moving multi-MNIST frames ``[num, T, H, W]`` uint8."""
    return load_sequences(cfg, split, num, seed)["frames"]


def load_sequences(cfg: ml_collections.ConfigDict, split: str, num: int, seed: int) -> dict[str, np.ndarray]:
    """Moving multi-MNIST ``num`` sequences with ground truth: ``frames [n, T, H, W]`` uint8, ``counts [n, T]``,
    ``boxes [n, T, digits, 4]``, ``presence [n, T, digits]``, ``labels [n, digits]`` (see ocr_jax.data.moving_mnist)."""
    from ocr_jax.data.moving_mnist import load_moving_multi_mnist

    if cfg.data not in ("mnist", "blobs"):
        raise ValueError(f"data must be 'mnist' or 'blobs'; got {cfg.data!r}")
    return load_moving_multi_mnist(split, num, seed=seed, digits=cfg.data, digit_size=cfg.digit_size,
                                   num_frames=cfg.num_frames, canvas_size=cfg.canvas_size, max_digits=cfg.max_digits)


def model_config(cfg: ml_collections.ConfigDict) -> SQAIRConfig:
    """The :class:`SQAIRConfig` a task config describes: every SQAIRConfig field the task config names, plus
    ``canvas_size``, ``glimpse_size`` and ``num_frames`` (-> image_shape, glimpse_shape, max_seq_len)."""
    fields = {f.name for f in dataclasses.fields(SQAIRConfig)}
    kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items() if k in fields}
    return SQAIRConfig(image_shape=(cfg.canvas_size, cfg.canvas_size),
                       glimpse_shape=(cfg.glimpse_size, cfg.glimpse_size), max_seq_len=cfg.num_frames, **kw)


class SQAIRTask:
    """`ocr_jax.training.tasks.Task` for SQAIR. Parameter groups: ``generative`` (θ) and ``inference`` (φ)."""

    headline_metric = "iwae_per_frame"
    eval_step = 2**31 - 1  # the training step whose DISC suppression inference_batches uses (default: none)

    def __init__(self, config: ml_collections.ConfigDict | None = None, *, train_frames: np.ndarray | None = None):
        cfg = default_task_config()
        if config:
            cfg.update(config)
        self.config = cfg
        self.estimator = estimators.get(cfg.estimator, **cfg.estimator_args)
        estimators.check_applicable(self.estimator, PROVIDED_TERMS, cfg.num_particles, "SQAIR")
        if not 1 <= cfg.start_length <= cfg.num_frames or cfg.length_every < 1:
            raise ValueError(f"need 1 <= start_length <= num_frames and length_every >= 1; got start_length="
                             f"{cfg.start_length}, num_frames={cfg.num_frames}, length_every={cfg.length_every}")
        if cfg.count_penalty < 0 or cfg.count_penalty_start < 0 or cfg.count_penalty_ramp < 0:
            raise ValueError(f"count_penalty, count_penalty_start and count_penalty_ramp must be >= 0; got "
                             f"{cfg.count_penalty}, {cfg.count_penalty_start}, {cfg.count_penalty_ramp}")
        self.model = SQAIR(model_config(cfg))
        self._train_frames = train_frames

    @property
    def train_frames(self) -> np.ndarray:
        if self._train_frames is None:
            self._train_frames = make_sequences(self.config, "train", self.config.num_train, self.config.data_seed)
        return self._train_frames

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

    def sequence_length(self, step):
        c = self.config
        return curriculum_length(step, c.start_length, c.length_every, c.num_frames)

    def disc_later_bias(self, step):
        """DISC's presence-logit offset after frame 1 at training step ``step`` (int or traced): the suppression
        bias during the first ``disc_suppression_steps`` steps, the model's own ``disc_later_presence_bias`` after."""
        c = self.config
        return jnp.where(jnp.asarray(step) < c.disc_suppression_steps, c.disc_suppression_bias,
                         c.disc_later_presence_bias).astype(jnp.float32)

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
        out = self.model.infer(params, to_float_frames(frames), key, self.config.num_particles,
                               disc_later_presence_bias=bias)
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
        objects = jnp.sum(out["z_pres"], axis=(-2, -1))  # [batch, particles]: Σ_t Σ_i z_pres
        frames_float = to_float_frames(batch["frames"])
        terms = estimators.LogWeightTerms(log_p=log_p - penalty * objects, log_q_reparam=log_q_reparam,
                                          log_q_score=log_q_score)
        if "baselines" in self.estimator.requires:  # b_ψ(x) [batch]: sees the frames only
            terms = terms._replace(baselines=self._baseline.apply({"params": params["baseline"]}, frames_float))
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
            "num_discovered_after_first": (jnp.mean(out["num_discovered"][:, :, 1:]) if length > 1
                                           else jnp.zeros(())),
            "sequence_length": jnp.asarray(frames),
        }
        return surrogates, (metrics, model_state)

    def eval_functions(self):
        """Jitted ``infer(params, frames, key)`` with ``eval.num_particles`` particles and ``log_marginal(params,
        frames, key)`` (IWAE with ``eval.log_marginal_particles``, chunked), built once per task so that periodic
        evaluations do not recompile."""
        if getattr(self, "_eval_functions", None) is None:
            from ocr_jax.diagnostics import log_marginal_chunked

            model, ev = self.model, self.config.eval
            infer = jax.jit(lambda p, x, k, b: model.infer(p, to_float_frames(x), k, ev.num_particles,
                                                           disc_later_presence_bias=b))

            @jax.jit
            def log_marginal(p, x, k):
                def log_weight_fn(kk, num):
                    return model.infer(p, to_float_frames(x), kk, num)["log_weight"]

                return log_marginal_chunked(log_weight_fn, k, ev.log_marginal_particles, ev.log_marginal_chunk)

            self._eval_functions = (infer, log_marginal)
        return self._eval_functions

    @property
    def test_data(self) -> dict[str, np.ndarray]:
        if getattr(self, "_test_data", None) is None:
            self._test_data = load_sequences(self.config, "test", self.config.num_eval, self.config.data_seed + 1)
        return self._test_data

    def evaluate(self, params, model_state, step, workdir):
        """Counting accuracy, IWAE bound, ELBO and KL on the test sequences (all frames); log p(x) by IWAE-K on a
        subset. Writes ``<workdir>/eval_step<step>.json``."""
        del model_state
        ev = self.config.eval
        self.eval_step = step  # periodic evaluations see the model as trained at this step (DISC suppression)
        key = jax.random.key(step)
        results = evaluate_sqair(self, params, self.test_data, key=key, num_sequences=ev.periodic_sequences,
                                 log_marginal_sequences=ev.periodic_log_marginal_sequences)
        if ev.periodic_tracking:
            # Tracking on the same sequences and particles (no addition classifier): shows during training whether
            # the run tracks or falls into a failure mode (re-detections, DISC-only; §5.G).
            from ocr_jax.models import sqair_eval

            tracking = sqair_eval.tracking_and_addition(self, params, self.test_data, key=key,
                                                        num_sequences=ev.periodic_sequences, classifier_steps=0,
                                                        iou_threshold=ev.tracking_iou_threshold)["tracking"]
            results.update({f"tracking_{k}": tracking[k] for k in PERIODIC_TRACKING_KEYS})
        if workdir and jax.process_index() == 0:
            with open(os.path.join(workdir, f"eval_step{step}.json"), "w") as f:
                json.dump({"step": int(step), **{k: v for k, v in results.items() if k != "example"}}, f, indent=1)
        return {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}

    def train_batches(self, *, seed, start_step, global_batch_size, process_index, process_count):
        """Deterministic batches of sequences cut to the curriculum length of their step (``sequence_length``)."""
        batches = deterministic_batches({"frames": self.train_frames}, global_batch_size, seed=seed,
                                        start_step=start_step, process_index=process_index,
                                        process_count=process_count)
        for step, batch in enumerate(batches, start=start_step):
            yield {"frames": batch["frames"][:, :self.sequence_length(step)]}


# The LogWeightTerms fields SQAIR provides (baselines: SequenceBaseline, when an estimator needs them).
PROVIDED_TERMS = frozenset({"log_q_reparam", "log_q_score", "baselines"})


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
    scaled = {}
    out = {g: scaled.setdefault(id(v), v / frames) for g, v in losses.items() if g != "baseline"}
    if with_baseline:
        out["baseline"] = losses["baseline"]
    return out


def to_float_frames(frames) -> jax.Array:
    """uint8 frames -> float32 in [0, 1]; float frames are passed through."""
    frames = jnp.asarray(frames)
    if jnp.issubdtype(frames.dtype, jnp.integer):
        return frames.astype(jnp.float32) / 255.0
    return frames.astype(jnp.float32)


def boxes_of(task: SQAIRTask, z_where) -> np.ndarray:
    """Unconstrained ``z_where [..., 4]`` -> boxes ``[..., 4]`` in pixel edges (y_min, x_min, y_max, x_max)."""
    from ocr_jax import spatial_transformer as st

    return np.asarray(st.z_where_to_box(task.model.to_transform(jnp.asarray(z_where)), task.model.config.image_shape))


def inference_batches(task: SQAIRTask, params, frames: np.ndarray, key: jax.Array):
    """Runs the task's jitted ``infer`` (``eval.num_particles`` particles) over ``frames [n, T, H, W]`` in batches of
    ``eval.batch_size``, with key ``fold_in(key, start)`` for the batch starting at sequence ``start``, so that every
    evaluation of the same frames with the same key sees the same particles. Yields ``(start, out, pick)``: the host
    outputs ``[B, K, ...]`` and ``pick``, which selects the best particle (largest log-weight): ``[B, K, ...] ->
    [B, ...]``. DISC's suppression is that of training step ``task.eval_step`` (set by the periodic evaluation;
    default: after training, i.e. none)."""
    infer = task.eval_functions()[0]
    bias = task.disc_later_bias(task.eval_step)
    for start in range(0, len(frames), task.config.eval.batch_size):
        out = jax.device_get(infer(params, frames[start:start + task.config.eval.batch_size],
                                   jax.random.fold_in(key, start), bias))
        best = np.argmax(out["log_weight"], axis=1)
        yield start, out, lambda a, best=best: np.asarray(a)[np.arange(len(best)), best]


def two_digit_overlap(data: dict[str, np.ndarray]) -> np.ndarray:
    """``[n, T]`` int8: 1 where a frame shows exactly two digits whose tight ``boxes`` (y_min, x_min, y_max, x_max)
    intersect, 0 where it shows two apart, −1 for every other frame."""
    boxes, presence = np.asarray(data["boxes"]), np.asarray(data["presence"], bool)
    out = np.full(presence.shape[:2], -1, np.int8)
    two = presence.sum(-1) == 2
    if boxes.shape[2] < 2 or not two.any():
        return out
    a, b = boxes[..., 0, :], boxes[..., 1, :]
    inter = ((np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0]))
             & (np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1])))
    two_first = two & presence[..., 0] & presence[..., 1]
    out[two_first] = inter[two_first].astype(np.int8)
    return out


def evaluate_sqair(task: SQAIRTask, params, data: dict[str, np.ndarray], *, key: jax.Array,
                   num_sequences: int | None = None, log_marginal_sequences: int | None = None) -> dict:
    """Test-set evaluation over all ``T`` frames (no curriculum mask).

    Per batch of sequences ``[B, T, H, W]``, K = ``eval.num_particles`` particles are drawn; the particle with the
    largest log-weight gives the inferred count of every frame (Σ_objects z_pres), compared with the dataset's
    ``counts [B, T]`` (digits visible in the frame). Returns floats: ``count_accuracy`` (over frames),
    ``count_accuracy_first_frame`` and ``count_accuracy_later_frames`` (frame 1 is DISC alone; later frames need
    PROP), ``count_accuracy_by_frame`` (a list over frame indices), ``count_accuracy_official_label`` (against the
    official per-sequence label ``sequence_counts``, as Table 5.4.1, when the data has it),
    ``count_accuracy_two_digits_apart`` / ``_overlapping`` (two-digit frames whose tight boxes are apart / overlap),
    ``sequence_count_accuracy`` (all T frames right), ``iwae`` = mean_b log (1/K) Σ_k w_bk and ``iwae_per_frame``, ``elbo`` = mean log w, ``log_likelihood`` =
    mean log p(x|z), ``kl`` = log_likelihood − elbo, ``num_objects`` per frame; ``log_marginal`` (IWAE with
    ``eval.log_marginal_particles`` particles, chunked) on the first ``log_marginal_sequences`` (default
    ``eval.log_marginal_sequences``) sequences;
    ``confusion`` [true, inferred] counts; and ``example``: the first ``eval.num_pictures`` sequences with the best
    particle's ``canvas``, ``boxes`` (pixel edges), ``z_pres`` and ``ids``.
    """
    cfg = task.config
    ev = cfg.eval
    model = task.model
    n = min(num_sequences or len(data["frames"]), len(data["frames"]))
    if n < 1:
        raise ValueError("evaluate_sqair needs at least one sequence")
    K = ev.num_particles
    log_marginal = task.eval_functions()[1]
    max_count = model.config.max_objects
    sums = dict(correct=0.0, seq_correct=0.0, iwae=0.0, elbo=0.0, log_likelihood=0.0, num_objects=0.0,
                correct_official=0.0)
    T = data["frames"].shape[1]
    correct_by_frame = np.zeros(T)
    overlap = two_digit_overlap(data) if "boxes" in data and "presence" in data else None  # [n, T] or None
    by_overlap = np.zeros((2, 2))  # [apart / overlapping two-digit frames, (correct, total)]
    confusion = np.zeros((max_count + 1, max_count + 1), np.int64)
    example = None
    T = data["frames"].shape[1]
    for start, out, pick in inference_batches(task, params, data["frames"][:n], key):
        log_w = out["log_weight"]  # [B, K]
        num = len(log_w)
        counts = pick(out["z_pres"]).sum(-1).astype(np.int64)  # [B, T]
        true = np.minimum(data["counts"][start:start + num], max_count)
        np.add.at(confusion, (true.ravel(), counts.ravel()), 1)
        sums["correct"] += float(np.sum(counts == true))
        correct_by_frame += np.sum(counts == true, axis=0)
        if overlap is not None:
            ov = overlap[start:start + num]  # -1: not a two-digit frame
            for o in (0, 1):
                by_overlap[o] += (np.sum((counts == true) & (ov == o)), np.sum(ov == o))
        if "sequence_counts" in data:  # the official per-sequence label (Table 5.4.1), repeated over frames
            label = np.minimum(data["sequence_counts"][start:start + num], max_count)[:, None]
            sums["correct_official"] += float(np.sum(counts == label))
        sums["seq_correct"] += float(np.sum(np.all(counts == true, axis=1)))
        m = np.max(log_w, axis=1, keepdims=True)
        sums["iwae"] += float(np.sum(m[:, 0] + np.log(np.mean(np.exp(log_w - m), axis=1))))
        sums["elbo"] += float(np.sum(np.mean(log_w, axis=1)))
        sums["log_likelihood"] += float(np.sum(np.mean(out["log_likelihood"].sum(-1), axis=1)))
        sums["num_objects"] += float(np.sum(out["z_pres"].sum(-1).mean(1)))
        if example is None:
            j = slice(0, min(ev.num_pictures, num))
            boxes = boxes_of(task, pick(out["z_where"]))
            example = dict(frames=data["frames"][start:start + num][j], canvas=pick(out["canvas"])[j], boxes=boxes[j],
                           z_pres=pick(out["z_pres"])[j], ids=pick(out["ids"])[j], true_counts=true[j],
                           counts=counts[j])
    results = dict(num_sequences=int(n), num_frames=int(T), num_particles=int(K),
                   count_accuracy=sums["correct"] / (n * T), sequence_count_accuracy=sums["seq_correct"] / n,
                   count_accuracy_first_frame=float(correct_by_frame[0] / n),
                   count_accuracy_later_frames=float(correct_by_frame[1:].sum() / (n * (T - 1))) if T > 1 else None,
                   count_accuracy_by_frame=(correct_by_frame / n).tolist(),
                   iwae=sums["iwae"] / n, iwae_per_frame=sums["iwae"] / (n * T), elbo=sums["elbo"] / n,
                   log_likelihood=sums["log_likelihood"] / n, num_objects=sums["num_objects"] / (n * T))
    results["kl"] = results["log_likelihood"] - results["elbo"]
    if overlap is not None:  # frames with two visible digits whose tight boxes are apart / overlap
        for o, name in ((0, "apart"), (1, "overlapping")):
            if by_overlap[o, 1]:
                results[f"count_accuracy_two_digits_{name}"] = float(by_overlap[o, 0] / by_overlap[o, 1])
    if "sequence_counts" in data:
        results["count_accuracy_official_label"] = sums["correct_official"] / (n * T)
    m = min(ev.log_marginal_sequences if log_marginal_sequences is None else log_marginal_sequences, n)
    if m > 0:
        lms = [np.asarray(log_marginal(params, data["frames"][s:s + ev.batch_size][: m - s],
                                       jax.random.fold_in(key, 10_000 + s)))
               for s in range(0, m, ev.batch_size)]
        results.update(log_marginal=float(np.mean(np.concatenate(lms))), log_marginal_sequences=int(m),
                       log_marginal_particles=int(ev.log_marginal_particles))
    results["confusion"] = confusion.tolist()
    results["example"] = example
    return results


def make_sqair_task(config: ml_collections.ConfigDict) -> SQAIRTask:
    return SQAIRTask(config)


tasks.register("sqair", make_sqair_task)

__all__ = ["SQAIRTask", "boxes_of", "curriculum_length", "default_task_config", "evaluate_sqair", "inference_batches",
           "load_sequences", "make_sequences", "make_sqair_task", "to_float_frames"]

